"""What a speculative cycle costs here, in target decode steps, and which tree the CPU server should default to.

For every configuration — `none` (target only), chains `k/1`, trees `S/K/N`, and the same with adaptive
speculation (`...+adaptive`, the CPU server's default switch) — the reference engine answers the same prompts
(first turns of MT-bench, HumanEval and GSM8K) greedily, one request at a time, in float32 with `--threads`
torch threads, as `prism-sglang serve` runs them. Configurations take turns prompt by prompt, so a slow minute
of the machine costs all of them alike. Per configuration it reports output tokens/s and its ratio to `none`,
tau, whether every output equals `none`'s token for token, and a cycle's cost split by phase (draft steps, the
verifying target forward with the tree mask and the acceptance, trimming the target KV cache to the accepted
path, the draft's extend over the accepted tokens) in units of the `none` run's mean decode step.

    python bench/cycle_cost.py --out bench/results/<date>-cpu/cycle-cost.json
Run nothing else meanwhile: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

import torch

from bench.common import host_info, resolve_target, write_report
from prism_sglang.data.eval_sets import load_eval_set
from prism_sglang.engine.generate import SpeculativeEngine, TreeSettings
from prism_sglang.engine.loading import encode_chat, load_engine
from prism_sglang.engine.sampling import SamplingParams
from prism_sglang.engine.stats import SpecStats

CYCLE_PHASES = ("draft", "verify", "cache", "extend")


def parse_config(text: str) -> tuple[TreeSettings | None, bool]:
    """'none', 'k/1', 'S/K/N', optionally with '+adaptive' -> (tree or None, adaptive)."""
    name, _, flag = text.partition("+")
    if flag not in ("", "adaptive"):
        raise argparse.ArgumentTypeError(f"unknown suffix '+{flag}' in {text!r} (only +adaptive)")
    if name == "none":
        if flag:
            raise argparse.ArgumentTypeError("'none' has no draft to adapt")
        return None, False
    try:
        numbers = [int(x) for x in name.split("/")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad configuration {text!r}: expected none, STEPS/1 or "
                                         "STEPS/TOPK/TOKENS, optionally +adaptive") from None
    if len(numbers) == 2 and numbers[1] == 1:
        tree = TreeSettings(numbers[0], 1)
    elif len(numbers) == 3:
        tree = TreeSettings(*numbers)
    else:
        raise argparse.ArgumentTypeError(f"bad configuration {text!r}: a chain is STEPS/1, a tree STEPS/TOPK/TOKENS")
    try:
        tree.check()
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text}: {e}") from None
    return tree, flag == "adaptive"


@dataclass
class ConfigRun:
    name: str
    engine: SpeculativeEngine
    speculative: bool
    tokens: int = 0
    seconds: float = 0.0
    stats: SpecStats = field(default_factory=SpecStats)
    outputs: list[list[int]] = field(default_factory=list)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        start = time.perf_counter()
        generation = self.engine.generate(prompt_ids, params, speculative=self.speculative)
        self.seconds += time.perf_counter() - start
        self.tokens += len(generation.output_ids)
        self.stats = self.stats.merge(generation.stats)
        self.outputs.append(generation.output_ids)


def summarise(run: ConfigRun, baseline: ConfigRun) -> dict[str, Any]:
    """Tokens/s vs the baseline and, for speculative runs, a cycle's phases in baseline decode steps."""
    rate = run.tokens / run.seconds
    row: dict[str, Any] = {"config": run.name, "tokens": run.tokens, "seconds": round(run.seconds, 3),
                           "tokens_per_s": rate, "speedup": rate / (baseline.tokens / baseline.seconds),
                           "identical_outputs": sum(a == b for a, b in zip(run.outputs, baseline.outputs,
                                                                           strict=True)),
                           "requests": len(run.outputs)}
    decode_step = baseline.stats.seconds["decode"] / baseline.stats.decoded_tokens
    row["decode_step_ms"] = 1000 * run.stats.seconds["decode"] / max(1, run.stats.decoded_tokens)
    if run.speculative and run.stats.cycles:
        cycles = run.stats.cycles
        phases = {p: run.stats.seconds[p] / cycles / decode_step for p in CYCLE_PHASES}
        row.update(tau=run.stats.tau, cycles=cycles, decoded_tokens=run.stats.decoded_tokens,
                   per_position_acceptance=run.stats.per_position(run.engine.tree.num_steps),
                   cycle_decode_steps={**phases, "total": sum(phases.values())})
    return row


def main(argv: list[str] | None = None) -> int:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=summary, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", type=parse_config, metavar="CONFIG",
                   default=[parse_config(c) for c in ("none", "1/1", "2/1", "3/1", "4/1", "1/1+adaptive",
                                                      "2/1+adaptive")],
                   help="none, STEPS/1 (chain), STEPS/TOPK/TOKENS (tree), each optionally +adaptive "
                        "(default: none 1/1 2/1 3/1 4/1 1/1+adaptive 2/1+adaptive)")
    p.add_argument("--draft", default=None, help="draft checkpoint (default: the shipped PRISM draft)")
    p.add_argument("--target", default=None, help="HF target folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--benches", default="mt-bench,humaneval,gsm8k")
    p.add_argument("--prompts-per-bench", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as `prism-sglang serve`)")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.configs[0][0] is not None:
        p.error("the first configuration must be 'none': it is the baseline")

    from prism_sglang.resources import shipped_draft_dir

    target_dir = resolve_target(args.target)
    draft_dir = Path(args.draft) if args.draft else shipped_draft_dir()
    base = load_engine(target_dir, draft_dir)
    runs = [ConfigRun(_name(tree, adaptive), SpeculativeEngine(base.target, base.draft, tree or base.tree,
                                                               base.tokenizer, adaptive), tree is not None)
            for tree, adaptive in args.configs]
    prompts = [encode_chat(base.tokenizer, [{"role": "user", "content": item.turns[0]}])
               for bench in args.benches.split(",") for item in load_eval_set(bench, args.prompts_per_bench)]
    params = SamplingParams(max_new_tokens=args.max_tokens, ignore_eos=True)
    runs[0].generate(prompts[0], params)  # warm-up (allocator, first-call costs), not counted
    runs[0] = ConfigRun(runs[0].name, runs[0].engine, False)
    for i, prompt in enumerate(prompts, 1):
        for run in runs:
            run.generate(prompt, params)
        print(f"prompt {i}/{len(prompts)}: " + ", ".join(f"{r.name} {r.tokens / r.seconds:.1f}" for r in runs)
              + " tok/s", flush=True)
    rows = [summarise(run, runs[0]) for run in runs]
    print(format_table(rows))
    report = {"settings": {**{k: v for k, v in vars(args).items() if k != "configs"},
                           "configs": [r.name for r in runs], "target": str(target_dir), "draft": str(draft_dir),
                           "dtype": "float32"},
              "machine": host_info("cpu"), "results": rows}
    write_report(args.out, report)
    return 0


def _name(tree: TreeSettings | None, adaptive: bool) -> str:
    if tree is None:
        return "none"
    name = f"{tree.num_steps}/1" if tree.topk == 1 else f"{tree.num_steps}/{tree.topk}/{tree.draft_tokens}"
    return name + ("+adaptive" if adaptive else "")


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'config':14s} {'tok/s':>6s} {'x none':>6s} {'same':>5s} {'tau':>5s} "
             f"{'cycle = draft + verify + cache + extend (decode steps)':>56s}"]
    for r in rows:
        line = (f"{r['config']:14s} {r['tokens_per_s']:6.2f} {r['speedup']:6.2f} "
                f"{r['identical_outputs']:2d}/{r['requests']:<2d}")
        if "cycle_decode_steps" in r:
            c = r["cycle_decode_steps"]
            line += (f" {r['tau']:5.2f}   {c['total']:.2f} = {c['draft']:.2f} + {c['verify']:.2f} + "
                     f"{c['cache']:.3f} + {c['extend']:.2f}")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
