"""Offline acceptance evaluation (`prism-sglang eval`): MT-bench, HumanEval and GSM8K prompts, or the user's
own prompt files, through the reference engine, speculative and target-only decoding measured side by side in
one run.

Per bench: mean tau with a 95% interval (over requests), per-position conditional acceptance, the accept
histogram, the draft / verify / extend time split, and tokens/s of both decoders with their ratio. MT-bench's
second turn is asked after the model's own first answer. Speculative and target-only runs of a prompt are
interleaved, so machine load affects both alike.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from prism_sglang.data.eval_sets import EVAL_BENCHES, EvalItem, load_eval_set
from prism_sglang.data.prompt_sources import ConversationError, iter_conversations
from prism_sglang.engine import SamplingParams, SpecStats, SpeculativeEngine
from prism_sglang.engine.loading import encode_chat


@dataclass
class BenchResult:
    bench: str
    request_taus: list[float] = field(default_factory=list)
    stats: SpecStats = field(default_factory=SpecStats)
    spec_tokens: int = 0
    spec_seconds: float = 0.0
    plain_tokens: int = 0
    plain_seconds: float = 0.0

    def summary(self, depth: int) -> dict[str, Any]:
        taus = self.request_taus
        mean = statistics.fmean(taus) if taus else 0.0
        half = 1.96 * statistics.stdev(taus) / math.sqrt(len(taus)) if len(taus) > 1 else 0.0
        spec_rate = self.spec_tokens / self.spec_seconds if self.spec_seconds else 0.0
        plain_rate = self.plain_tokens / self.plain_seconds if self.plain_seconds else 0.0
        return {
            "requests": len(taus),
            "tau": {"mean": mean, "ci95": [mean - half, mean + half], "pooled": self.stats.tau},
            "per_position_acceptance": self.stats.per_position(depth),
            "accept_histogram": self.stats.histogram(),
            "cycles": self.stats.cycles,
            "time_split_seconds": {k: round(v, 3) for k, v in self.stats.seconds.items()},
            "speculative": {"tokens": self.spec_tokens, "seconds": round(self.spec_seconds, 3),
                            "tokens_per_s": spec_rate},
            "target_only": {"tokens": self.plain_tokens, "seconds": round(self.plain_seconds, 3),
                            "tokens_per_s": plain_rate},
            "speedup": spec_rate / plain_rate if plain_rate else None,
        }


def _run(engine: SpeculativeEngine, messages: list[dict], params: SamplingParams, speculative: bool):
    start = time.perf_counter()
    generation = engine.generate(encode_chat(engine.tokenizer, messages), params, speculative=speculative)
    return generation, time.perf_counter() - start


def evaluate_item(engine: SpeculativeEngine, item: EvalItem, params: SamplingParams, result: BenchResult,
                  baseline: bool) -> None:
    """Every turn of one item: speculative (its answer carries the conversation on), then target-only."""
    conversation: list[dict] = []
    stats = SpecStats()
    for turn in item.turns:
        conversation.append({"role": "user", "content": turn})
        spec, seconds = _run(engine, conversation, params, speculative=True)
        result.spec_tokens += len(spec.output_ids)
        result.spec_seconds += seconds
        stats = stats.merge(spec.stats)
        if baseline:
            plain, seconds = _run(engine, conversation, params, speculative=False)
            result.plain_tokens += len(plain.output_ids)
            result.plain_seconds += seconds
        conversation.append({"role": "assistant", "content": spec.text})
    if stats.cycles:
        result.request_taus.append(stats.tau)
    result.stats = result.stats.merge(stats)


class PromptFileError(ValueError):
    """A prompt file `eval --prompts` cannot use; the message names the file (and line)."""


def load_prompt_file(path: str | Path, limit: int | None = None) -> list[EvalItem]:
    """Prompts from the user's own file, as eval items named after the file: chat JSONL (OpenAI `messages` or
    ShareGPT `conversations`; each line's user turns are asked in order, its assistant turns ignored) or plain
    text with one prompt per line. A JSONL line that cannot be read is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise PromptFileError(f"{path}: no prompts (the file is empty)")
    name = path.stem
    if not lines[0].lstrip().startswith("{"):
        items = [EvalItem(name, str(i), [line.strip()]) for i, line in enumerate(lines, 1)]
    else:
        items = []
        for line_no, result in iter_conversations(path):
            if isinstance(result, ConversationError):
                raise PromptFileError(str(result))
            items.append(EvalItem(name, str(line_no), [m["content"] for m in result if m["role"] == "user"]))
    return items[:limit]


def evaluate(
    engine: SpeculativeEngine,
    benches: Sequence[str],
    params: SamplingParams,
    limit: int | None = None,
    baseline: bool = True,
    progress: bool = True,
    prompt_files: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Run the benches and prompt files; returns the JSON-able report (settings + one summary per bench or file
    + all pooled)."""
    for bench in benches:
        if bench not in EVAL_BENCHES:
            raise ValueError(f"unknown bench '{bench}'; choose from {', '.join(EVAL_BENCHES)}")
    item_sets = {bench: load_eval_set(bench, limit) for bench in benches}
    for path in prompt_files:
        items = load_prompt_file(path, limit)
        name = items[0].bench
        if name in item_sets:
            raise PromptFileError(f"{path}: another bench or prompt file is already named '{name}'; rename it")
        item_sets[name] = items
    depth = engine.tree.num_steps
    results = {}
    for bench, items in item_sets.items():
        result = BenchResult(bench)
        for i, item in enumerate(tqdm(items, desc=bench, unit="prompt", disable=not progress, dynamic_ncols=True)):
            seeded = SamplingParams(**{**params.__dict__, "seed": (params.seed or 0) + i})
            evaluate_item(engine, item, seeded, result, baseline)
        results[bench] = result
    pooled = BenchResult("all")
    for r in results.values():
        pooled.request_taus += r.request_taus
        pooled.stats = pooled.stats.merge(r.stats)
        pooled.spec_tokens += r.spec_tokens
        pooled.spec_seconds += r.spec_seconds
        pooled.plain_tokens += r.plain_tokens
        pooled.plain_seconds += r.plain_seconds
    return {
        "settings": _settings(engine, params, limit),
        "benches": {name: r.summary(depth) for name, r in results.items()},
        "all": pooled.summary(depth),
    }


def _settings(engine: SpeculativeEngine, params: SamplingParams, limit: int | None) -> dict[str, Any]:
    draft = engine.draft
    return {
        "num_steps": engine.tree.num_steps, "topk": engine.tree.topk, "num_draft_tokens": engine.tree.draft_tokens,
        "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
        "max_new_tokens": params.max_new_tokens, "limit": limit,
        "draft_modules": draft.config.num_modules if draft else None,
        "step_modules": list(draft.config.step_modules) if draft else None,
        "device": str(engine.target.device), "threads": torch.get_num_threads(), "machine": platform.machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def format_table(report: dict[str, Any]) -> str:
    """The printed summary: one row per bench plus the pooled row."""
    rows = [("bench", "n", "tau (95% CI)", "per-position acceptance", "spec tok/s", "target tok/s", "speedup")]
    for name, r in [*report["benches"].items(), ("all", report["all"])]:
        lo, hi = r["tau"]["ci95"]
        positions = " ".join("-" if p is None else f"{p:.2f}" for p in r["per_position_acceptance"])
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        rows.append((name, str(r["requests"]), f"{r['tau']['mean']:.2f} ({lo:.2f}-{hi:.2f})", positions,
                     f"{r['speculative']['tokens_per_s']:.1f}", f"{r['target_only']['tokens_per_s']:.1f}", speedup))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
