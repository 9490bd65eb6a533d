"""Training tokens per hour, stage by stage: where a draft's training time goes on this machine.

A draft learns from *fresh* tokens (each conversation seen once); a token costs, end to end,
  1. data:     either the target generating the answer (self-distillation, `prepare-data`), or nothing but
               tokenization when the dataset's own assistant turns are kept (`prepare-data --keep-answers`);
  2. target:   one target forward per training sequence (aux features + the target's distribution);
  3. draft:    the TTT unroll, the per-step soft cross-entropy, backward and the AdamW step.
This script measures each stage on real data (ShareGPT conversations, the real target), for each precision
asked, and the end-to-end rate 1 / (sum of seconds per token over the stages). Stages run one after another in
one process on an otherwise idle machine; run nothing else meanwhile.

    python bench/train_speed.py --out bench/results/<date>-cpu/train-speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

import torch
from transformers import AutoTokenizer

from bench.common import host_info, write_report
from prism_sglang.data.prompt_sources import load_prompts
from prism_sglang.engine.batch import generate_batch
from prism_sglang.engine.loading import encode_chat
from prism_sglang.engine.sampling import SamplingParams
from prism_sglang.prepare_model import prepare_smollm2
from prism_sglang.target import TargetModel
from prism_sglang.train.data import tokenize_conversation
from prism_sglang.train.trainer import TrainConfig, Trainer, new_draft
from prism_sglang.train.vocab import build_draft_vocab


def measure_data(tokenizer, conversations: list[list[dict]], max_length: int) -> tuple[list, dict[str, Any]]:
    start = time.perf_counter()
    examples = [e for e in (tokenize_conversation(tokenizer, m, max_length) for m in conversations) if e]
    seconds = time.perf_counter() - start
    tokens = sum(len(e.input_ids) for e in examples)
    return examples, {"stage": "data: dataset answers (tokenize)", "tokens": tokens, "seconds": seconds,
                      "tokens_per_s": tokens / seconds}


def median_length_batch(tokenizer, prompts: list[list[dict]], batch: int, max_prompt_tokens: int) -> list[list[int]]:
    """The batch `prepare-data` would form around the median prompt: prompts over max_prompt_tokens dropped,
    the rest sorted by length (prepare-data batches similar lengths together), `batch` taken at the middle."""
    ids = sorted((i for i in (encode_chat(tokenizer, p) for p in prompts) if len(i) <= max_prompt_tokens), key=len)
    start = max(0, len(ids) // 2 - batch // 2)
    return ids[start : start + batch]


def measure_generation(target: TargetModel, tokenizer, ids: list[list[int]], max_new_tokens: int) -> dict:
    """Self-distillation's cost: the target answering a batch of prompts (the sequence = prompt + answer)."""
    params = SamplingParams(temperature=0.8, max_new_tokens=max_new_tokens, eos_token_ids=(tokenizer.eos_token_id,))
    start = time.perf_counter()
    answers = generate_batch(target, ids, params, seeds=range(len(ids)), pad_id=tokenizer.pad_token_id or 0)
    seconds = time.perf_counter() - start
    answer_tokens = sum(len(a) for a in answers)
    sequence_tokens = answer_tokens + sum(len(i) for i in ids)
    return {"stage": "data: target generation (self-distillation)", "batch": len(ids),
            "prompt_tokens": [min(map(len, ids)), max(map(len, ids))], "tokens": sequence_tokens,
            "answer_tokens": answer_tokens, "seconds": seconds, "tokens_per_s": sequence_tokens / seconds,
            "answer_tokens_per_s": answer_tokens / seconds}


def measure_training(target_dir: Path, examples: list, precision: str, batching: str,
                     args: argparse.Namespace) -> list[dict]:
    """`args.steps` optimizer steps of the real Trainer (the first one, warm-up, not counted); the trainer's own
    log splits each step into the target forward and the draft's forward + backward + optimizer step. Padding:
    the share of the tokens computed that pad batches (both stages cost what a batch pads to)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    target = TargetModel.load(target_dir, dtype=dtype)
    vocab = build_draft_vocab((t for e in examples for t in e.input_ids), args.draft_vocab_size, target.vocab_size)
    draft = new_draft(target, 2, (0, 1), vocab)
    target.set_aux_layers(draft.config.resolved_aux_layer_ids(target.num_layers))
    config = TrainConfig(ttt_steps=args.ttt_steps, batch_size=args.batch_size, max_steps=args.steps + 1,
                         precision=precision, group_by_length=batching == "grouped")
    with tempfile.TemporaryDirectory() as out:
        Trainer(target, draft, examples, config, out, progress=False).run()
        log = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()][1:]
    tokens = sum(r["batch_tokens"] for r in log)
    padding = 1 - tokens / sum(r["batch_padded_tokens"] for r in log)
    stages = []
    for key, name in (("target_s", "target forward"), ("draft_s", "draft TTT fwd+bwd+AdamW")):
        seconds = sum(r[key] for r in log)
        stages.append({"stage": f"{name} ({precision}, {batching})", "tokens": tokens, "padding": padding,
                       "seconds": seconds, "tokens_per_s": tokens / seconds})
    return stages


def end_to_end(*stages: dict) -> float:
    return 1 / sum(1 / s["tokens_per_s"] for s in stages)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=96, help="ShareGPT conversations measured (default 96)")
    p.add_argument("--max-length", type=int, default=768, help="tokens per training sequence (default 768)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per precision (default 8)")
    p.add_argument("--ttt-steps", type=int, default=6)
    p.add_argument("--draft-vocab-size", type=int, default=8192)
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (default both)")
    p.add_argument("--batching", default="grouped",
                   help="comma-separated: grouped (by length, train's default), shuffled (default grouped)")
    p.add_argument("--generation-batch", type=int, default=32, help="prompts answered at once (default 32)")
    p.add_argument("--generation-tokens", type=int, default=160, help="answer length (default 160, the recipe's)")
    p.add_argument("--generation-pool", type=int, default=512,
                   help="ShareGPT first turns the generation batch is chosen from: the batch of median prompt "
                        "length, prompts over 1024 tokens dropped, as prepare-data does (default 512)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    batchings = args.batching.split(",")
    for batching in batchings:
        if batching not in ("grouped", "shuffled"):
            p.error(f"--batching: {batching!r} is neither grouped nor shuffled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    target_dir = prepare_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    prompts = [q for q in load_prompts("sharegpt") if q.answers][: max(args.conversations, args.generation_pool)]
    print(f"data: tokenizing {args.conversations} ShareGPT conversations", flush=True)
    examples, data = measure_data(tokenizer, [q.conversation(8) for q in prompts[: args.conversations]],
                                  args.max_length)
    stages = [data]
    target = TargetModel.load(target_dir)
    batch = median_length_batch(tokenizer, [[{"role": "user", "content": q.user_turns[0]}] for q in prompts],
                                args.generation_batch, max_prompt_tokens=1024)
    print(f"data: the target answers {len(batch)} prompts ({len(batch[0])}-{len(batch[-1])} tokens) with "
          f"{args.generation_tokens} tokens each", flush=True)
    generation = measure_generation(target, tokenizer, batch, args.generation_tokens)
    stages.append(generation)
    del target
    by_setting = {}
    for precision in args.precisions.split(","):
        for batching in batchings:
            print(f"training: {args.steps} optimizer steps in {precision}, batches {batching}", flush=True)
            by_setting[f"{precision}, {batching}"] = measure_training(target_dir, examples, precision, batching, args)
            stages += by_setting[f"{precision}, {batching}"]
    summary = {setting: {"dataset answers": end_to_end(data, *s), "self-distillation": end_to_end(generation, *s)}
               for setting, s in by_setting.items()}

    print(f"{'stage':58s} {'tokens':>8s} {'padding':>8s} {'seconds':>8s} {'tokens/s':>9s}")
    for s in stages:
        padding = f"{s['padding']:.1%}" if "padding" in s else ""
        print(f"{s['stage']:58s} {s['tokens']:8d} {padding:>8s} {s['seconds']:8.1f} {s['tokens_per_s']:9.1f}")
    print("\nend to end (fresh training tokens per hour):")
    for setting, rates in summary.items():
        for data_path, rate in rates.items():
            print(f"  {setting:16s} {data_path:18s} {rate:7.1f} tokens/s = {rate * 3600 / 1e6:5.2f} M tokens/h")
    report = {"settings": vars(args), "machine": host_info("cuda" if torch.cuda.is_available() else "cpu"),
              "stages": stages, "end_to_end_tokens_per_s": summary}
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
