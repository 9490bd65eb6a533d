"""Training at our users' scale, measured here: tokens/s per rank and peak memory of data-parallel training
with 1..N ranks (`prism-sglang train --nproc N`: torchrun, gloo on CPU, NCCL on GPUs; the per-rank batch fixed,
so the global batch grows with the ranks), and the TTT unroll's time and peak memory against sequence length.

Real target (SmolLM2-135M-Instruct by default) and real data (ShareGPT's own answers); on an otherwise idle
machine, one measurement at a time. The first optimizer step of every run is warm-up and not counted.

    python bench/train_scale.py --ranks 1 2 --seq-lens 512 1024 2048 --out bench/results/<date>-cpu/train-scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

import torch

from bench.common import host_info, write_report
from prism_sglang.prepare_model import prepare_smollm2
from prism_sglang.train.trainer import resolve_precision


def measure_ranks(target: Path, data: Path, ranks: int, args: argparse.Namespace, fsdp: bool = False) -> dict[str, Any]:
    """`args.steps` + 1 optimizer steps with `ranks` processes (`fsdp`: the draft sharded over them); figures from
    rank 0's train log (every rank waits for the others at each step, so its step time is the job's)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "prism_sglang.cli", "train", "--target", str(target), "--data", str(data),
                   "--out", out, "--modules", "2", "--draft-vocab-size", str(args.draft_vocab_size),
                   "--ttt-steps", str(args.ttt_steps), "--batch-size", str(args.batch_per_rank * ranks),
                   "--max-length", str(args.max_length), "--max-steps", str(args.steps + 1),
                   "--device", args.device, "--precision", args.precision]
        if ranks > 1:
            command += ["--nproc", str(ranks)] + (["--fsdp"] if fsdp else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_rank)}
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{ranks} rank(s): train failed:\n{result.stderr[-3000:]}")
        log = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    timed = log[1:]
    seconds = sum(r["target_s"] + r["draft_s"] for r in timed)
    tokens = sum(r["batch_tokens"] for r in timed)
    return {"ranks": ranks, "fsdp": fsdp, "global_batch": args.batch_per_rank * ranks, "steps": len(timed),
            "tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": tokens / seconds, "tokens_per_s_per_rank": tokens / seconds
            / ranks, "target_s_per_step": sum(r["target_s"] for r in timed) / len(timed),
            "peak_mem_mib_rank0": max(r["peak_mem_mib"] for r in log), "wall_s": round(wall, 1)}


def measure_lengths(target_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One batch of `args.batch_per_rank` random sequences per length: the target's forward, then the draft's
    TTT unroll (forward, per-step loss, backward), timed (median of `args.repeats`); peak memory as the growth
    of this process's peak RSS (lengths ascending) or the CUDA allocator's peak."""
    from prism_sglang.target import TargetModel
    from prism_sglang.train.targets import online_batch
    from prism_sglang.train.trainer import TrainConfig, new_draft, ttt_loss

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    target = TargetModel.load(target_dir, dtype=dtype, device=args.device)
    draft = new_draft(target, 2, (0, 1), torch.arange(args.draft_vocab_size)).to(device)
    target.set_aux_layers(draft.config.resolved_aux_layer_ids(target.num_layers))
    config = TrainConfig(ttt_steps=args.ttt_steps, precision=args.precision)
    rows = []
    for length in sorted(args.seq_lens):
        ids = torch.randint(3, target.vocab_size, (args.batch_per_rank, length), device=device,
                            generator=torch.Generator(device).manual_seed(length))
        attention = torch.ones_like(ids, dtype=torch.bool)
        before = _peak(device)
        target_times, draft_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            targets = online_batch(target, draft, ids, attention)
            _sync(device)
            middle = time.perf_counter()
            loss, _ = ttt_loss(draft, targets, ids, attention, attention, config)
            loss.backward()
            draft.zero_grad(set_to_none=True)
            _sync(device)
            target_times.append(middle - start)
            draft_times.append(time.perf_counter() - middle)
        tokens = args.batch_per_rank * length
        heads = draft.config.num_attention_heads
        rows.append({"seq_len": length, "batch": args.batch_per_rank, "target_s": _median(target_times),
                     "ttt_s": _median(draft_times), "ttt_tokens_per_s": tokens / _median(draft_times),
                     "peak_mem_mib": _peak(device), "peak_growth_mib": round(_peak(device) - before, 1),
                     # the unroll's dense attention scores, [B, H, T, T] float32 per step (kept for backward)
                     "dense_scores_mib_per_step": args.batch_per_rank * heads * length**2 * 4 / 2**20})
        print(f"  T={length}: target {rows[-1]['target_s']:.2f} s, TTT {rows[-1]['ttt_s']:.2f} s "
              f"({rows[-1]['ttt_tokens_per_s']:.0f} tok/s), peak {rows[-1]['peak_mem_mib']:.0f} MiB", flush=True)
    return rows


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="world sizes (default: 1 2)")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--data", type=Path, default=None,
                   help="chat JSONL (default: ShareGPT's own answers via prepare-data --keep-answers, made once)")
    p.add_argument("--batch-per-rank", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per world size (default 4)")
    p.add_argument("--max-length", type=int, default=768)
    p.add_argument("--ttt-steps", type=int, default=6)
    p.add_argument("--draft-vocab-size", type=int, default=8192)
    p.add_argument("--threads-per-rank", type=int, default=1, help="torch threads per rank (default 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto (default): bf16 on CUDA and on CPUs with native bf16, else fp32 (as train)")
    p.add_argument("--fsdp", action="store_true", help="also measure every world size > 1 with --fsdp")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", choices=["ranks", "lengths"], default=None, help="leave one part out")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    args.precision = resolve_precision(args.precision, args.device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target_dir = prepare_smollm2()
    report: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "machine": host_info(args.device)}
    if args.skip != "ranks":
        data = args.data or _sharegpt(Path(tempfile.gettempdir()) / "prism-train-scale-data")
        report["ranks"] = []
        runs = [(n, False) for n in args.ranks] + [(n, True) for n in args.ranks if args.fsdp and n > 1]
        for n, fsdp in runs:
            print(f"ranks: {n} process(es){' with FSDP' if fsdp else ''}, {args.batch_per_rank} sequences each per "
                  "step", flush=True)
            report["ranks"].append(measure_ranks(target_dir, data, n, args, fsdp))
            r = report["ranks"][-1]
            print(f"  {r['tokens_per_s']:.0f} tok/s in all, {r['tokens_per_s_per_rank']:.0f} per rank, peak "
                  f"{r['peak_mem_mib_rank0']:.0f} MiB (rank 0)", flush=True)
    if args.skip != "lengths":
        torch.set_num_threads(args.threads_per_rank)
        print(f"lengths: TTT unroll of {args.ttt_steps} steps, batch {args.batch_per_rank}", flush=True)
        report["lengths"] = measure_lengths(target_dir, args)
    write_report(args.out, report)
    return 0


def _sharegpt(folder: Path) -> Path:
    if not (folder / "train.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "prism_sglang.cli", "prepare-data", "--out", str(folder), "--source",
                        "sharegpt=2000", "--keep-answers", "--max-turns", "8", "--max-prompt-tokens", "1024"],
                       check=True, capture_output=True)
    return folder / "train.jsonl"


if __name__ == "__main__":
    sys.exit(main())
