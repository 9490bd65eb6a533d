"""Prompt files for sglang.benchmark.serving's `custom` dataset, one per bench, from the evaluation sets.

Each line is {"conversations": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ...}]}:
the loader wants two turns; the assistant turn is never sent (the output length is fixed by
--sharegpt-output-len). PROMPT is the bench item's first user turn (MT-bench's second turn needs the model's
own first answer, which a fixed prompt file cannot hold) with the target's chat template already applied,
so the throughput runs and the acceptance probe send exactly the same text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHES = ("mt-bench", "gsm8k", "humaneval")
UNUSED_REPLY = "(not sent: the benchmark fixes the output length)"


@dataclass(frozen=True)
class BenchPrompts:
    bench: str
    ids: list[str]  # item ids in the evaluation set, e.g. "81" for MT-bench question 81
    texts: list[str]  # chat-templated prompts, ready for /generate's `text`


def chat_prompt(tokenizer: Any, user_turn: str) -> str:
    """The text a chat server would build for one user turn. A leading BOS is dropped when the tokenizer adds
    one itself on encoding (Llama 3), so that the server does not see it twice. (sglang.benchmark.serving's
    --apply-chat-template removes every occurrence of the BOS string, which breaks SmolLM2, whose BOS is
    <|im_start|>, the template's turn marker: one reason the harness formats prompts itself.)"""
    if not getattr(tokenizer, "chat_template", None):
        return user_turn
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_turn}], add_generation_prompt=True,
                                         tokenize=False)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    return text.removeprefix(bos) if adds_bos else text


def load_prompts(bench: str, count: int, tokenizer: Any) -> BenchPrompts:
    """The first `count` items of a bench (file order: deterministic), first turns, chat-templated."""
    from prism_sglang.data.eval_sets import load_eval_set

    items = load_eval_set(bench, limit=count)
    return BenchPrompts(bench, [item.id for item in items], [chat_prompt(tokenizer, item.turns[0]) for item in items])


def write_custom_dataset(prompts: BenchPrompts, requests: int, path: Path, start: int = 0) -> Path:
    """`requests` lines, cycling through the prompts when more requests than prompts are wanted (high
    concurrency needs enough requests to keep every slot busy); `start`: the first request's index in that
    cycle (a run measured in rounds writes one file per round)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(start, start + requests):
            text = prompts.texts[i % len(prompts.texts)]
            record = {"conversations": [{"role": "user", "content": text},
                                        {"role": "assistant", "content": UNUSED_REPLY}]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
