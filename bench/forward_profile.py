"""Where a target forward's time goes on CPU: a decode step (1 token) against the verifying forwards of a cycle.

The CPU server's prepared target (`TargetModel.prepare_for_decoding`, float32, `--threads` torch threads) first
reads a prompt of `--context` tokens; then forwards of 1 token (a decode step) and of n tokens under a chain's
mask (what verifying n - 1 drafted tokens costs; the logits of the first row only, as acceptance reads a row at
a time) take turns, each cut back to the prompt afterwards. Forward hooks split each forward's wall-clock time by
kind of module: the attention's q/k/v/o linears, the rest of the attention (rotary embedding, KV cache update,
SDPA), the MLP's linears, the rest of the MLP (activation), the RMS norms, and the rest of the forward (embedding,
final norm, one lm_head row, HF's per-layer Python). Medians over `--reps` forwards, in ms and in decode steps
(each kind's median taken on its own: they add up to the forward's only roughly).

    python bench/forward_profile.py --out bench/results/<date>-cpu/forward-profile.json
Run nothing else meanwhile: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

import torch
from torch import nn

from bench.common import host_info, resolve_target, write_report
from prism_sglang.target import TargetModel

KINDS = ("attention linears", "attention rest", "mlp linears", "mlp rest", "norms", "rest of the forward")


class ModuleClock:
    """Wall-clock seconds spent inside modules, summed per label, through forward pre-/post-hooks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def watch(self, module: nn.Module, label: str) -> None:
        started: list[float] = []
        module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

        def stop(*_: Any) -> None:
            self.seconds[label] += time.perf_counter() - started.pop()

        module.register_forward_hook(stop)


def watch_layers(target: TargetModel, clock: ModuleClock) -> None:
    for layer in target.model.get_decoder().layers:
        attention, mlp = layer.self_attn, layer.mlp
        clock.watch(attention, "attention")
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            clock.watch(getattr(attention, name), "attention linears")
        clock.watch(mlp, "mlp")
        for name in ("gate_proj", "up_proj", "down_proj"):
            clock.watch(getattr(mlp, name), "mlp linears")
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            clock.watch(norm, "norms")


def by_kind(total: float, seconds: dict[str, float]) -> dict[str, float]:
    """One forward's seconds per KINDS entry (they add up to `total`)."""
    parts = {"attention linears": seconds["attention linears"],
             "attention rest": seconds["attention"] - seconds["attention linears"],
             "mlp linears": seconds["mlp linears"], "mlp rest": seconds["mlp"] - seconds["mlp linears"],
             "norms": seconds["norms"]}
    parts["rest of the forward"] = total - sum(parts.values())
    return parts


def profile(target: TargetModel, context: int, token_counts: list[int], reps: int) -> dict[int, dict[str, Any]]:
    """Per token count: the median forward and its median split by kind, in seconds."""
    clock = ModuleClock()
    watch_layers(target, clock)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, target.vocab_size, (1, context), generator=generator)
    cache = target.forward(prompt, logits_to_keep=1).past_key_values

    def forward(n: int) -> None:
        tokens = torch.randint(0, target.vocab_size, (1, n), generator=generator)
        if n == 1:
            target.forward(tokens, cache, logits_to_keep=1)
        else:
            positions = torch.arange(context, context + n).view(1, n)
            mask = torch.ones(1, 1, n, context + n, dtype=torch.bool)
            mask[0, 0, :, context:] = torch.ones(n, n, dtype=torch.bool).tril()
            target.forward(tokens, cache, positions, mask, lazy_logits=True).rows[0]
        cache.crop(context)

    samples: dict[int, list[tuple[float, dict[str, float]]]] = {n: [] for n in token_counts}
    for rep in range(reps + 2):  # two rounds of warm-up
        for n in token_counts:  # in turns, so a slow second of the machine costs every count alike
            clock.seconds.clear()
            start = time.perf_counter()
            forward(n)
            total = time.perf_counter() - start
            if rep >= 2:
                samples[n].append((total, by_kind(total, clock.seconds)))
    return {n: {"forward_s": statistics.median(t for t, _ in rows),
                "kinds_s": {k: statistics.median(parts[k] for _, parts in rows) for k in KINDS}}
            for n, rows in samples.items()}


def main(argv: list[str] | None = None) -> int:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=summary, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=None, help="HF target folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--context", type=int, default=300, help="prompt tokens before the profiled forwards")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 3, 4, 6],
                   help="tokens per profiled forward; 1 (a decode step) comes first (default: 1 2 3 4 6)")
    p.add_argument("--reps", type=int, default=20, help="forwards per token count (default: 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as `prism-sglang serve`)")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    if args.tokens[0] != 1 or min(args.tokens) < 1:
        p.error("--tokens starts with 1: a decode step is the unit")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    target_dir = resolve_target(args.target)
    target = TargetModel.load(target_dir)
    target.prepare_for_decoding()
    results = profile(target, args.context, args.tokens, args.reps)
    decode_s = results[1]["forward_s"]
    rows = [{"tokens": n, "forward_ms": r["forward_s"] * 1e3, "decode_steps": r["forward_s"] / decode_s,
             "kinds_ms": {k: v * 1e3 for k, v in r["kinds_s"].items()}} for n, r in results.items()]
    print(format_table(rows))
    report = {"settings": {**vars(args), "target": str(target_dir), "dtype": "float32"},
              "machine": host_info("cpu"), "results": rows}
    write_report(args.out, report)
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'tokens':>6s} {'ms':>6s} {'steps':>5s}  " + "  ".join(f"{k:>19s}" for k in KINDS)]
    for r in rows:
        lines.append(f"{r['tokens']:6d} {r['forward_ms']:6.1f} {r['decode_steps']:5.2f}  "
                     + "  ".join(f"{r['kinds_ms'][k]:19.2f}" for k in KINDS))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
