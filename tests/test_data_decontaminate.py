"""The contamination check: evaluation prompts must never reach training, in any disguise."""

from __future__ import annotations

import re

import pytest

from prism_sglang.data.decontaminate import Decontaminator, default_decontaminator
from prism_sglang.data.eval_sets import EvalItem, load_eval_set, source_texts
from prism_sglang.data.prompt_sources import TrainingPrompt, drop_contaminated, load_prompts


def _disguise(text: str) -> str:
    """Upper-cased, whitespace doubled and punctuation swapped: what a careless copy-paste might produce."""
    return re.sub(r"[.,?!:;]", " - ", text.upper()).replace(" ", "  \n ")


def _samples() -> list[tuple[str, str]]:
    """(eval key, text) for a few items of every set, both MT-bench turns, HumanEval's raw code prompt too."""
    out = []
    for bench in ("mt-bench", "humaneval", "gsm8k"):
        items = load_eval_set(bench)
        for item in (items[0], items[len(items) // 2], items[-1]):
            out += [(item.key, t) for t in item.turns + source_texts(item) if len(t.split()) >= 8]
    return out


@pytest.mark.parametrize(("key", "text"), _samples())
def test_flags_verbatim_disguised_and_embedded(key: str, text: str) -> None:
    decon = default_decontaminator()
    assert key in decon.matches(text)
    assert key in decon.matches(_disguise(text))
    embedded = f"I found this task online and need help.\n\n{text}\n\nPlease answer it in detail, step by step."
    assert key in decon.matches(embedded)
    assert key in decon.matches("Here is some context first.", embedded)


def test_flags_short_turn_only_on_equality() -> None:
    decon = default_decontaminator()
    assert decon.matches("prove the pythagorean THEOREM!") == ["mt-bench/99"]
    assert decon.matches("Prove the Pythagorean theorem for right triangles drawn on a sphere.") == []


CLEAN = [
    "What is the capital of France?",
    "Write a Python function that reverses a linked list.",
    "Explain the difference between TCP and UDP in simple terms.",
    "Write a short story about a robot who learns to paint.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "A train leaves the station at 3 pm travelling at 60 miles per hour. When does it arrive 150 miles away?",
]


def test_does_not_flag_clean_prompts() -> None:
    decon = default_decontaminator()
    assert [t for t in CLEAN if decon.matches(t)] == []
    real = load_prompts("chatterbot", limit=100) + load_prompts("python-docs", limit=100)
    assert [p.id for p in real if decon.matches(*p.texts)] == []


def test_gram_rules_on_a_tiny_index() -> None:
    shared = "the quick brown fox jumps over the lazy sleeping dog"
    items = [EvalItem("toy", str(i), [f"Item {i} begins here. {shared}. It ends with number {i}."]) for i in range(4)]
    items.append(EvalItem("toy", "sums", ["Add 12 and 34 then 56 and 78 then 90 and 11 and report the total"]))
    decon = Decontaminator(items)
    # A gram found in more than 3 items is generic phrasing, not a leak.
    assert decon.matches(f"Tell me: {shared}!") == []
    # A gram with fewer than 6 alphabetic words of 3+ letters (here: numbers) does not count.
    assert decon.matches("add 12 and 34 then 56 and 78 then 90") == []
    # ... but the whole turn, contained verbatim, does.
    assert decon.matches("Please: add 12 and 34, then 56 and 78, then 90 and 11 and report the total.") == ["toy/sums"]
    assert decon.matches("Item 2 begins here. The quick brown fox jumps over") == ["toy/2"]


def test_drop_contaminated_splits_prompts() -> None:
    question = load_eval_set("gsm8k")[17].turns[0]
    leaked = TrainingPrompt("test", "leak", None, ["Hi there!", f"Solve: {question}"])
    clean = TrainingPrompt("test", "ok", "You are helpful.", ["What is the capital of France?"])
    kept, dropped = drop_contaminated([leaked, clean])
    assert kept == [clean]
    assert dropped == [(leaked, ["gsm8k/17"])]
