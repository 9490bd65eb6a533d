"""A training run's learning curve: draft quality against the fresh tokens it has seen.

Reads `RUN/train_log.jsonl` (written by `prism-sglang train`) and any `prism-sglang eval` reports given with
`--eval TOKENS=FILE`, and plots
  * per-step top-1 agreement with the target (acc_j: draft step j vs the target's argmax), averaged over a window
    of optimizer steps. In a one-epoch run every batch is new to the draft when it is scored, so this is a
    held-out measure (progressive validation), on the training distribution;
  * tau (with its 95% interval) of each eval report, at the token count it was taken.

    python bench/learning_curve.py runs/sharegpt/prism --eval 494790=eval-step200.json --out curve.png

A draft trained in several runs, each continuing (`train --init-from`) the last one's draft, is one curve: name
the runs in order, and `--tokens-before` for what the first run's starting draft had seen; a later run's tokens
count on from the earlier runs' last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def window_means(rows: list[dict], window: int) -> list[dict]:
    """Means of loss and every acc_j over consecutive windows of `window` steps, at each window's last token."""
    points = []
    for start in range(0, len(rows) - window + 1, window):
        chunk = rows[start : start + window]
        keys = [k for k in chunk[0] if k == "loss" or k.startswith("acc_")]
        points.append({"step": chunk[-1]["step"], "tokens": chunk[-1]["tokens"],
                       **{k: sum(r[k] for r in chunk) / len(chunk) for k in keys}})
    return points


def read_runs(runs: list[Path], tokens_before: int) -> list[dict]:
    """The runs' logs as one: each run's token counts shifted by everything trained before it."""
    rows: list[dict] = []
    offset = tokens_before
    for run in runs:
        log = run / "train_log.jsonl"
        if not log.is_file():
            raise FileNotFoundError(f"{log} not found (is {run} a training run?)")
        own = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        rows += [{**row, "tokens": row["tokens"] + offset} for row in own]
        offset += own[-1]["tokens"] if own else 0
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a `prism-sglang train` output folder (with train_log.jsonl); several: runs that continued "
                        "one another, in order")
    p.add_argument("--tokens-before", type=int, default=0,
                   help="fresh tokens the first run's starting draft had seen (default 0: trained from scratch)")
    p.add_argument("--eval", action="append", default=[], metavar="TOKENS=FILE",
                   help="an eval report (`prism-sglang eval --out`) of the checkpoint taken after TOKENS tokens")
    p.add_argument("--window", type=int, default=25, help="optimizer steps per averaged point (default 25)")
    p.add_argument("--out", required=True, help="PNG to write (a JSON with the same name is written beside it)")
    args = p.parse_args(argv)

    try:
        rows = read_runs([Path(run) for run in args.runs], args.tokens_before)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    points = window_means(rows, args.window)
    evals = []
    for spec in args.eval:
        tokens, _, path = spec.partition("=")
        report = json.loads(Path(path).read_text())["all"]
        evals.append({"tokens": int(tokens), "tau": report["tau"]["mean"], "ci95": report["tau"]["ci95"],
                      "per_position_acceptance": report["per_position_acceptance"], "report": path})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = sorted({k for point in points for k in point if k.startswith("acc_")}, key=lambda k: int(k[4:]))
    for key in steps:
        left.plot([q["tokens"] / 1e6 for q in points], [q[key] for q in points], label=f"step {key[4:]}")
    left.set(xlabel="fresh training tokens (M)", ylabel="top-1 agreement with the target",
             title=f"progressive validation ({args.window}-step means)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    if evals:
        xs = [e["tokens"] / 1e6 for e in evals]
        taus = [e["tau"] for e in evals]
        errors = [[t - e["ci95"][0] for t, e in zip(taus, evals, strict=True)],
                  [e["ci95"][1] - t for t, e in zip(taus, evals, strict=True)]]
        right.errorbar(xs, taus, yerr=errors, marker="o", capsize=3)
    right.set(xlabel="fresh training tokens (M)", ylabel="tau (95% CI)", title="prism-sglang eval")
    right.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    curve = {"runs": args.runs, "tokens_before": args.tokens_before, "points": points, "evals": evals}
    out.with_suffix(".json").write_text(json.dumps(curve, indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}: {len(points)} points, {len(evals)} evals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
