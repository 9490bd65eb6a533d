"""prepare-data: evaluation prompts are refused (with the items they overlap), bad lines are reported with their
line numbers, every good line becomes a conversation answered by the target, and a rerun resumes."""

import json

import pytest
from transformers import AutoTokenizer

from prism_sglang.data.eval_sets import load_eval_set
from prism_sglang.target import TargetModel
from prism_sglang.train.prepare_data import DataPreparer, PrepareConfig


@pytest.fixture(scope="module")
def chat_target(tiny_chat_target_dir):
    return TargetModel.load(tiny_chat_target_dir), AutoTokenizer.from_pretrained(tiny_chat_target_dir)


def _lines():
    mt = load_eval_set("mt-bench")[0].turns[0]
    gsm = load_eval_set("gsm8k")[17].turns[0]
    good = [
        {"messages": [{"role": "user", "content": "Name three colours of the rainbow."}]},
        {"conversations": [{"from": "human", "value": "What is a prime number?"},
                           {"from": "gpt", "value": "old answer, regenerated"},
                           {"from": "human", "value": "Give an example."}]},
        {"messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": "Why is the sky blue?"}]},
    ]
    return [
        json.dumps(good[0]),
        "{not json",
        json.dumps(good[1]),
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}),
        json.dumps({"messages": [{"role": "user", "content": mt.upper()}]}),
        json.dumps({"messages": [{"role": "user", "content": "Please help: " + gsm + " Thanks!"}]}),
        json.dumps(good[2]),
    ]


def test_eval_prompts_and_bad_lines_are_refused_good_lines_kept(chat_target, tmp_path):
    target, tokenizer = chat_target
    lines = _lines()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    config = PrepareConfig(sources={}, prompts_file=str(prompts), max_new_tokens=6, batch_size=2,
                           heldout_fraction=0.0)
    messages = []
    manifest = DataPreparer(target, tokenizer, config, tmp_path / "out", log=messages.append, progress=False).run()

    reasons = {r["where"]: r["reason"] for r in manifest["rejected"]}
    assert "invalid JSON" in reasons[f"{prompts}:2"]
    assert "unknown role 'wizard'" in reasons[f"{prompts}:4"]
    assert "overlaps evaluation items mt-bench/81" in reasons["file/line5"]
    assert "overlaps evaluation items gsm8k/17" in reasons["file/line6"]
    assert any("gsm8k/17" in m for m in messages)  # and the user is told

    conversations = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert manifest["train"] == len(conversations) == 3 and manifest["heldout"] == 0
    users = sorted(tuple(m["content"] for m in c["messages"] if m["role"] == "user") for c in conversations)
    assert users == sorted([("Name three colours of the rainbow.",), ("What is a prime number?", "Give an example."),
                            ("Why is the sky blue?",)])
    for c in conversations:
        roles = [m["role"] for m in c["messages"] if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)  # every user turn answered by the target
        assert "old answer" not in json.dumps(c)

    # A rerun finds everything generated and writes the same files.
    before = (tmp_path / "out" / "train.jsonl").read_text()
    messages.clear()
    DataPreparer(target, tokenizer, config, tmp_path / "out", log=messages.append, progress=False).run()
    assert any("3 already generated, 0 to go" in m for m in messages)
    assert (tmp_path / "out" / "train.jsonl").read_text() == before


def test_keep_answers_writes_the_sources_own_turns_without_a_target(chat_target, tmp_path):
    _, tokenizer = chat_target
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(_lines()) + "\n")
    config = PrepareConfig(sources={}, prompts_file=str(prompts), heldout_fraction=0.0, keep_answers=True)
    messages = []
    manifest = DataPreparer(None, tokenizer, config, tmp_path / "out", log=messages.append, progress=False).run()
    # Only line 3 has an answer; the other good lines are rejected as such, the eval overlaps as before.
    reasons = {r["where"]: r["reason"] for r in manifest["rejected"]}
    assert reasons["file/line1"] == reasons["file/line7"] == "no assistant answer to keep"
    assert "overlaps evaluation items mt-bench/81" in reasons["file/line5"]
    [conversation] = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    # The answered turn with its own answer; "Give an example." has none, so it is not kept.
    assert conversation["messages"] == [{"role": "user", "content": "What is a prime number?"},
                                        {"role": "assistant", "content": "old answer, regenerated"}]
    assert manifest["train"] == 1 and manifest["config"]["keep_answers"]
