"""Training prompt sources: real data from site-packages and the local stdlib, deduplicated and seeded."""

from __future__ import annotations

import importlib.util
import random

import pytest

from prism_sglang.data.decontaminate import default_decontaminator
from prism_sglang.data.prompt_sources import (
    EVALS_EXCLUDED,
    MAX_PROMPT_CHARS,
    PROMPT_SOURCES,
    TrainingPrompt,
    _chatterbot_records,
    _sample_eval,
    deduplicate,
    drop_contaminated,
    load_prompt_mix,
    load_prompts,
    normalise,
)
from prism_sglang.resources import MissingPackageError, package_dir

# Hits of the contamination check on the real sources, each inspected (notes/prompts.md lists the same one):
# a ShareGPT "act as a teacher" prompt shares the generic phrasing "...explain them in easy-to-understand terms.
# This could include providing step-by-step instructions for solving a problem..." with MT-bench 97.
KNOWN_HITS = {"sharegpt": {"BOBXj8f_0": ["mt-bench/97"]}}


@pytest.mark.parametrize("source", PROMPT_SOURCES)
def test_source_is_clean_deduplicated_and_bounded(source: str) -> None:
    prompts = load_prompts(source)
    assert len(prompts) > 500
    assert all(p.source == source for p in prompts)
    assert len({p.id for p in prompts}) == len(prompts)
    keys = [(normalise(p.system or ""), *map(normalise, p.user_turns)) for p in prompts]
    assert len(set(keys)) == len(keys)
    assert all(p.user_turns and all(t.strip() for t in p.user_turns) for p in prompts)
    assert all(len(t) <= MAX_PROMPT_CHARS for p in prompts for t in p.texts)
    _, dropped = drop_contaminated(prompts, default_decontaminator())
    assert {p.id: hits for p, hits in dropped} == KNOWN_HITS.get(source, {})


@pytest.mark.parametrize("source", PROMPT_SOURCES)
def test_seeded_sampling_is_deterministic(source: str) -> None:
    a, b = load_prompts(source, limit=200, seed=3), load_prompts(source, limit=200, seed=3)
    assert len(a) == 200
    assert [(p.id, p.user_turns) for p in a] == [(p.id, p.user_turns) for p in b]
    assert {p.id for p in a} != {p.id for p in load_prompts(source, limit=200, seed=4)}


def test_openai_evals_per_eval_sampling_is_seeded() -> None:
    root = package_dir("evals", "evals==3.0.1.post1") / "registry" / "data"
    eval_dir = root / "logic-statements"
    first = _sample_eval(root, eval_dir, random.Random("0/x"))
    assert first == _sample_eval(root, eval_dir, random.Random("0/x"))
    assert first != _sample_eval(root, eval_dir, random.Random("1/x"))


def test_source_specific_filters() -> None:
    sharegpt = load_prompts("sharegpt")
    assert not any("my multiple messages" in t for p in sharegpt for t in p.user_turns)
    assert any(len(p.user_turns) > 1 for p in sharegpt)
    evals = load_prompts("openai-evals")
    assert not {p.id.split("/")[0] for p in evals} & EVALS_EXCLUDED
    assert sum(p.system is not None for p in evals) > len(evals) // 2
    templates = {p.id.rsplit(":", 1)[1] for p in load_prompts("python-docs")}
    assert templates == {"explain-code", "explain-api", "write"}


def test_mix_respects_counts_and_order() -> None:
    spec = {"chatterbot": 50, "python-docs": 30, "sharegpt": 20}
    mix = load_prompt_mix(spec, seed=1)
    assert [p.source for p in mix] == ["chatterbot"] * 50 + ["python-docs"] * 30 + ["sharegpt"] * 20
    assert mix == load_prompt_mix(spec, seed=1)
    decon = default_decontaminator()
    assert not any(decon.matches(*p.texts) for p in mix)


def test_deduplicate_keeps_the_first_of_equal_prompts() -> None:
    a = TrainingPrompt("a", "1", None, ["Hello   World"])
    b = TrainingPrompt("b", "2", None, ["hello world"])
    c = TrainingPrompt("c", "3", "Be brief.", ["hello world"])
    assert deduplicate([a, b, c, b]) == [a, c]
    assert load_prompt_mix({"chatterbot": 0, "python-docs": 5}) == load_prompts("python-docs", limit=5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sharegpt, openai-evals, python-docs, chatterbot"):
        load_prompts("alpaca")
    with pytest.raises(ValueError, match=">= 0"):
        load_prompt_mix({"chatterbot": -1})


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "chatterbot_corpus" else real_find_spec(name, *a))
    _chatterbot_records.cache_clear()
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps 'chatterbot-corpus==1\.3\.3'"):
        load_prompts("chatterbot")


def test_sharegpt_answers_follow_their_turns() -> None:
    from prism_sglang.data.prompt_sources import _sharegpt_turns

    def turn(role, text):
        return {"from": role, "value": text}

    chat = [turn("system", "banner"), turn("human", "Q1"), turn("gpt", "A1"), turn("human", "Q2"),
            turn("human", "Q3"), turn("gpt", "A3")]
    # Q2 is left unanswered (another question follows), so the answers stop after A1.
    assert _sharegpt_turns(chat) == (("Q1", "Q2", "Q3"), ("A1",))
    assert _sharegpt_turns([turn("gpt", "orphan answer"), turn("human", "Q")]) == ((), ())
    long_chat = [turn("human", "Q1"), turn("gpt", "A1"), turn("human", "x" * 9000), turn("gpt", "A2")]
    assert _sharegpt_turns(long_chat) == (("Q1",), ("A1",))
    # The shipped ShareGPT data: most prompts carry their answers, each an answer to its own turn.
    prompts = load_prompts("sharegpt", limit=200)
    assert sum(bool(p.answers) for p in prompts) > 150
    assert all(len(p.answers) <= len(p.user_turns) for p in prompts)
