"""The command line end to end on a tiny chat target (SmolLM2's tokenizer, random weights): train, upcycle,
generate, eval."""

import json

import pytest

from prism_sglang.checkpoint import load_draft
from prism_sglang.cli import main
from prism_sglang.data.eval_sets import load_eval_set


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"Tell me about the number {i}."},
                           {"role": "assistant", "content": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}."}]}
             for i in range(12)]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    return path


@pytest.fixture(scope="module")
def trained(tiny_chat_target_dir, chat_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--target", str(tiny_chat_target_dir), "--data", str(chat_data), "--out", str(out),
                 "--modules", "2", "--draft-vocab-size", "512", "--max-steps", "2", "--batch-size", "4",
                 "--ttt-steps", "3", "--aux-layers", "0,1,2", "--device", "cpu"])
    assert code == 0
    return out


def test_train_writes_a_loadable_draft(trained, tiny_chat_target_dir, capsys):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["conversations"] == 12
    assert summary["draft"] == {"modules": 2, "step_modules": [0, 1], "draft_vocab_size": 512}
    draft = load_draft(trained / "final")
    assert draft.config.aux_layer_ids == (0, 1, 2)
    assert [json.loads(x)["step"] for x in (trained / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def test_train_refuses_evaluation_prompts(tiny_chat_target_dir, chat_data, tmp_path):
    question = load_eval_set("gsm8k")[3].turns[0]
    data = tmp_path / "leaky.jsonl"
    data.write_text(chat_data.read_text() + json.dumps(
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "42"}]}) + "\n")
    args = ["train", "--target", str(tiny_chat_target_dir), "--data", str(data), "--out", str(tmp_path / "o"),
            "--max-steps", "1", "--ttt-steps", "2", "--aux-layers", "0,1,2", "--device", "cpu"]
    with pytest.raises(ValueError, match=r"contain evaluation prompts .*gsm8k/3.*--skip-contaminated"):
        main(args)
    assert main([*args, "--skip-contaminated"]) == 0


def test_cache_only_fills_the_feature_cache_that_training_then_reads(tiny_chat_target_dir, chat_data, tmp_path):
    cache = tmp_path / "features"
    args = ["train", "--target", str(tiny_chat_target_dir), "--data", str(chat_data), "--limit", "8",
            "--ttt-steps", "2", "--aux-layers", "0,1,2", "--device", "cpu", "--feature-cache", str(cache)]
    with pytest.raises(SystemExit, match="--cache-only fills a feature cache"):
        main([*args[:-2], "--out", str(tmp_path / "none"), "--cache-only"])
    assert main([*args, "--out", str(tmp_path / "build"), "--cache-only"]) == 0
    assert not (tmp_path / "build" / "summary.json").exists()  # nothing trained
    keys = json.loads((cache / "meta.json").read_text())["keys"]
    assert len(keys) == 8 and len(list(cache.glob("shard-*"))) == 1
    assert main([*args, "--out", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "4"]) == 0
    assert len(list(cache.glob("shard-*"))) == 1  # the run read the cache, built nothing
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 1


def test_upcycle_then_generate_and_eval(trained, tiny_chat_target_dir, tmp_path, capsys):
    eagle3 = tmp_path / "eagle3"
    assert main(["upcycle", "--from", str(trained / "final"), "--modules", "1", "--table", "0",
                 "--out", str(eagle3)]) == 0
    prism3 = tmp_path / "prism3"
    assert main(["upcycle", "--from", str(eagle3), "--modules", "3", "--table", "0,1,2", "--out", str(prism3)]) == 0
    assert load_draft(prism3).config.step_modules == (0, 1, 2)
    capsys.readouterr()

    assert main(["generate", "Hello there", "--target", str(tiny_chat_target_dir), "--draft", str(prism3),
                 "--max-new-tokens", "6", "--num-steps", "3", "--topk", "2", "--num-draft-tokens", "5"]) == 0
    out, err = capsys.readouterr()
    assert "tokens, finish_reason=" in err and "tau=" in err

    report_path = tmp_path / "eval.json"
    assert main(["eval", "--bench", "mt-bench,gsm8k", "--bench", "humaneval", "--limit", "2",
                 "--target", str(tiny_chat_target_dir), "--draft", str(prism3), "--max-new-tokens", "5",
                 "--temperature", "1.0", "--out", str(report_path)]) == 0
    out, _ = capsys.readouterr()
    report = json.loads(report_path.read_text())
    assert set(report["benches"]) == {"mt-bench", "gsm8k", "humaneval"}
    mt = report["benches"]["mt-bench"]
    assert mt["requests"] == 2 and mt["tau"]["mean"] >= 1.0 and mt["speedup"] > 0
    assert mt["speculative"]["tokens"] > 0 and mt["target_only"]["tokens"] > 0
    assert len(mt["per_position_acceptance"]) == 5
    assert report["settings"]["temperature"] == 1.0 and report["settings"]["draft_modules"] == 3
    assert "tau (95% CI)" in out and "mt-bench" in out


def test_eval_on_the_users_own_prompt_files(trained, tiny_chat_target_dir, tmp_path, capsys):
    chats = tmp_path / "traffic.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant",
                                                                                  "content": "ignored"},
                                              {"role": "user", "content": "And then?"}]}) + "\n\n"
                     + json.dumps({"conversations": [{"from": "human", "value": "Tell me a joke."}]}) + "\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("What is two plus two?\n\nName a colour.\nName a fruit.\n")
    report_path = tmp_path / "eval.json"
    assert main(["eval", "--prompts", str(chats), "--prompts", str(plain), "--limit", "2", "--target",
                 str(tiny_chat_target_dir), "--draft", str(trained / "final"), "--max-new-tokens", "4",
                 "--no-baseline", "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["benches"]) == {"traffic", "plain"}
    assert report["benches"]["traffic"]["requests"] == 2 and report["benches"]["plain"]["requests"] == 2
    assert report["all"]["requests"] == 4 and report["benches"]["traffic"]["cycles"] > 0
    assert "traffic" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "ok"}]}) + "\n{broken\n")
    for path, message in ((bad, r"bad.jsonl:2: invalid JSON"), (tmp_path / "missing.txt", "no such file")):
        with pytest.raises(SystemExit, match=message):
            main(["eval", "--prompts", str(path), "--target", str(tiny_chat_target_dir)])
    with pytest.raises(SystemExit, match="--bench NAME and/or --prompts FILE"):
        main(["eval", "--target", str(tiny_chat_target_dir)])
