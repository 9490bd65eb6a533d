"""PRISM vs EAGLE-3 at several data sizes: the runs of `recipes/prism-vs-eagle3.sh` as one table and one figure.

Reads every `RUN/NAME/` that holds a finished training run (`summary.json`, `train_log.jsonl`) and its
`prism-sglang eval` report (`eval.json`), and writes
  * a TSV (default `RUN/summary.tsv`): per run its conversations, fresh tokens, optimizer steps, training seconds,
    tau with its 95% interval, per-position acceptance, and each TTT step's top-1 agreement with the target over
    the last quarter of its steps (every batch unseen when scored: a held-out measure on the training data);
  * with `--plot PNG`: tau (95% CI) against fresh tokens per architecture (runs named `ARCH-CONVERSATIONS`), and
    the per-step agreement of each architecture's largest run; a JSON with the same name beside it.

    python bench/arch_comparison.py runs/prism-vs-eagle3 --plot bench/results/DATE/prism-vs-eagle3.png
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.learning_curve import read_runs as read_logs

SERIES = re.compile(r"^(?P<arch>[a-z0-9]+)-(?P<size>\d+)$")  # eagle3-400, prism-1600; not prism-upcycled-800+800


def read_run(directory: Path) -> dict:
    summary = json.loads((directory / "summary.json").read_text())
    report = json.loads((directory / "eval.json").read_text())["all"]
    log = read_logs([directory], tokens_before=0)
    last = log[len(log) - max(1, len(log) // 4) :]
    steps = sorted((k for k in last[0] if k.startswith("acc_")), key=lambda k: int(k[4:]))
    return {
        "run": directory.name, "conversations": summary["conversations"], "tokens": summary["tokens"],
        "steps": summary["steps"], "train_s": summary["seconds"], "tau": report["tau"]["mean"],
        "ci95": report["tau"]["ci95"], "requests": report["requests"],
        "per_position_acceptance": report["per_position_acceptance"],
        "acc_last_quarter": [sum(r[k] for r in last) / len(last) for k in steps],
    }


def read_runs(run: Path) -> list[dict]:
    """Finished and evaluated runs under `run`, series first (by architecture, then size), then the others."""
    found = [read_run(d) for d in sorted(run.iterdir())
             if all((d / f).is_file() for f in ("summary.json", "eval.json", "train_log.jsonl"))]

    def order(row: dict) -> tuple:
        m = SERIES.match(row["run"])
        return (0, m["arch"], int(m["size"])) if m else (1, row["run"], 0)

    return sorted(found, key=order)


def table(rows: list[dict]) -> str:
    def numbers(values: list, digits: int = 3) -> str:
        return " ".join("-" if v is None else f"{v:.{digits}f}" for v in values)

    lines = ["run\tconversations\ttokens\tsteps\ttrain_s\ttau\tci95_low\tci95_high\tper_position\tacc_last_quarter"]
    lines += [f"{r['run']}\t{r['conversations']}\t{r['tokens']}\t{r['steps']}\t{r['train_s']}\t{r['tau']:.3f}\t"
              f"{r['ci95'][0]:.3f}\t{r['ci95'][1]:.3f}\t{numbers(r['per_position_acceptance'])}\t"
              f"{numbers(r['acc_last_quarter'])}" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for r in rows:
        m = SERIES.match(r["run"])
        if m:
            series.setdefault(m["arch"], []).append(r)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arch, runs in series.items():
        xs, taus = [r["tokens"] / 1e6 for r in runs], [r["tau"] for r in runs]
        errors = [[t - r["ci95"][0] for t, r in zip(taus, runs, strict=True)],
                  [r["ci95"][1] - t for t, r in zip(taus, runs, strict=True)]]
        left.errorbar(xs, taus, yerr=errors, marker="o", capsize=3, label=arch)
        largest = runs[-1]
        right.plot(range(len(largest["acc_last_quarter"])), largest["acc_last_quarter"], marker="o",
                   label=f"{arch}-{largest['conversations']} ({largest['tokens'] / 1e6:.2f}M tokens)")
    left.set(xlabel="fresh training tokens (M)", ylabel="tau (95% CI)", title="prism-sglang eval")
    right.set(xlabel="draft step (TTT)", ylabel="top-1 agreement with the target",
              title="last quarter of the largest runs")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the recipe's RUN folder (one sub-folder per training run)")
    p.add_argument("--tsv", default=None, help="table to write (default RUN/summary.tsv)")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw the figure (and its JSON) here")
    args = p.parse_args(argv)
    run = Path(args.run)
    rows = read_runs(run) if run.is_dir() else []
    if not rows:
        print(f"error: no evaluated training run under {run}", file=sys.stderr)
        return 1
    text = table(rows)
    Path(args.tsv or run / "summary.tsv").write_text(text)
    print(text, end="")
    if args.plot:
        plot(rows, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
