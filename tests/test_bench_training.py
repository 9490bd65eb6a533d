"""bench/train_speed.py and bench/learning_curve.py on a tiny chat target: the stage figures come from the real
Trainer's log, and the learning curve averages what the trainer logged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.learning_curve import main as learning_curve
from bench.learning_curve import read_runs, window_means
from bench.train_speed import end_to_end, measure_data, measure_training

pytestmark = pytest.mark.timeout(300)


def _conversations(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Count to {i}."}, {"role": "assistant", "content": " ".join(
        str(k) for k in range(i + 3))}] for i in range(n)]


def test_stage_figures_come_from_the_trainer(tiny_chat_target_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_target_dir)
    examples, data = measure_data(tokenizer, _conversations(12), max_length=64)
    assert data["tokens"] == sum(len(e.input_ids) for e in examples) > 0 and data["tokens_per_s"] > 0
    args = SimpleNamespace(draft_vocab_size=256, ttt_steps=2, batch_size=4, steps=2)
    target, draft = measure_training(tiny_chat_target_dir, examples, "fp32", "shuffled", args)
    # 2 timed steps of 4 conversations (the warm-up step is not counted).
    assert target["tokens"] == draft["tokens"] and 0 < target["tokens"] <= data["tokens"]
    assert target["padding"] == draft["padding"] > 0  # the conversations' lengths differ
    grouped, _ = measure_training(tiny_chat_target_dir, examples, "fp32", "grouped", args)
    assert grouped["padding"] < target["padding"]
    assert target["seconds"] > 0 and draft["seconds"] > 0
    rate = end_to_end(data, target, draft)
    assert rate < min(s["tokens_per_s"] for s in (data, target, draft))
    assert rate == pytest.approx(1 / sum(1 / s["tokens_per_s"] for s in (data, target, draft)))


def test_learning_curve_averages_the_log(tmp_path):
    rows = [{"step": i + 1, "tokens": 100 * (i + 1), "loss": float(10 - i), "acc_0": i / 10, "acc_1": i / 20}
            for i in range(6)]
    assert window_means(rows, 3) == [
        {"step": 3, "tokens": 300, "loss": 9.0, "acc_0": pytest.approx(0.1), "acc_1": pytest.approx(0.05)},
        {"step": 6, "tokens": 600, "loss": 6.0, "acc_0": pytest.approx(0.4), "acc_1": pytest.approx(0.2)},
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"all": {"tau": {"mean": 1.3, "ci95": [1.2, 1.4]},
                                          "per_position_acceptance": [0.3]}}))
    out = tmp_path / "curve.png"
    assert learning_curve([str(run), "--window", "3", "--eval", f"600={report}", "--out", str(out)]) == 0
    curve = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 0 and len(curve["points"]) == 2 and curve["evals"][0]["tau"] == 1.3
    assert learning_curve([str(tmp_path / "nowhere"), "--out", str(out)]) == 1


def test_learning_curve_joins_runs_that_continue_one_another(tmp_path):
    """A second run's tokens count on from the first's last, after what the first run's start had seen."""
    for name, steps in (("first", 4), ("second", 2)):
        (tmp_path / name).mkdir()
        rows = [{"step": i + 1, "tokens": 100 * (i + 1), "loss": 1.0, "acc_0": 0.5} for i in range(steps)]
        (tmp_path / name / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    joined = read_runs([tmp_path / "first", tmp_path / "second"], tokens_before=1000)
    assert [r["tokens"] for r in joined] == [1100, 1200, 1300, 1400, 1500, 1600]
    out = tmp_path / "curve.png"
    args = [str(tmp_path / "first"), str(tmp_path / "second"), "--tokens-before", "1000", "--window", "2"]
    assert learning_curve([*args, "--out", str(out)]) == 0
    assert [p["tokens"] for p in json.loads(out.with_suffix(".json").read_text())["points"]] == [1200, 1400, 1600]


def test_generation_batch_is_the_median_length_one(tiny_chat_target_dir):
    from transformers import AutoTokenizer

    from bench.train_speed import median_length_batch

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_target_dir)
    prompts = [[{"role": "user", "content": "word " * n}] for n in (50, 1, 9, 3, 7, 5, 2000)]
    batch = median_length_batch(tokenizer, prompts, 3, max_prompt_tokens=100)
    lengths = [len(ids) for ids in batch]
    assert lengths == sorted(lengths) and len(batch) == 3  # 2000 words dropped; of 1 3 5 7 9 50: 5 7 9
    assert tokenizer.decode(batch[0]).count("word") == 5 and tokenizer.decode(batch[-1]).count("word") == 9


def test_train_scale_measures_ranks_and_lengths(tiny_chat_target_dir, tmp_path):
    from bench.train_scale import measure_lengths, measure_ranks

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in _conversations(16)))
    args = SimpleNamespace(draft_vocab_size=256, ttt_steps=2, batch_per_rank=2, steps=2, max_length=64,
                           device="cpu", precision="fp32", threads_per_rank=1, seq_lens=[32, 16], repeats=1)
    one, two = (measure_ranks(tiny_chat_target_dir, data, n, args) for n in (1, 2))
    assert (one["ranks"], one["global_batch"], two["ranks"], two["global_batch"]) == (1, 2, 2, 4)
    assert one["steps"] == two["steps"] == 2  # the warm-up step is left out
    assert two["tokens_per_s"] == pytest.approx(2 * two["tokens_per_s_per_rank"])
    assert one["peak_mem_mib_rank0"] > 0 and one["tokens"] > 0
    sharded = measure_ranks(tiny_chat_target_dir, data, 2, args, fsdp=True)
    assert sharded["fsdp"] and not two["fsdp"] and sharded["tokens"] == two["tokens"]  # the same batches
    rows = measure_lengths(tiny_chat_target_dir, args)
    assert [r["seq_len"] for r in rows] == [16, 32]  # ascending: the peak only grows
    assert rows[0]["dense_scores_mib_per_step"] > 0
    assert rows[1]["dense_scores_mib_per_step"] == pytest.approx(4 * rows[0]["dense_scores_mib_per_step"])
    assert all(r["ttt_s"] > 0 and r["ttt_tokens_per_s"] > 0 for r in rows)


def _finished_run(directory, tokens: int, tau: float, accs: list[list[float]]) -> None:
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps(
        {"conversations": tokens // 100, "tokens": tokens, "steps": len(accs), "seconds": 12.5}))
    (directory / "train_log.jsonl").write_text("".join(json.dumps(
        {"step": i + 1, "tokens": (i + 1) * 100, **{f"acc_{j}": a for j, a in enumerate(row)}}) + "\n"
        for i, row in enumerate(accs)))
    (directory / "eval.json").write_text(json.dumps({"all": {
        "requests": 6, "tau": {"mean": tau, "ci95": [tau - 0.05, tau + 0.05]},
        "per_position_acceptance": [0.2, None]}}))


def test_arch_comparison_tabulates_and_plots_the_recipes_runs(tmp_path):
    from bench.arch_comparison import main as arch_comparison

    run = tmp_path / "run"
    # 8 logged steps: the last quarter is steps 7-8
    _finished_run(run / "prism-20", 2000, 1.3, [[0.1, 0.0]] * 6 + [[0.5, 0.2], [0.7, 0.4]])
    _finished_run(run / "prism-10", 1000, 1.2, [[0.1, 0.1]] * 4)
    _finished_run(run / "eagle3-10", 1000, 1.1, [[0.2, 0.1]] * 4)
    _finished_run(run / "prism-upcycled-10+10", 1000, 1.25, [[0.3, 0.2]] * 4)
    (run / "eagle3-20").mkdir()  # still training: left out
    out = tmp_path / "plots" / "arch.png"
    assert arch_comparison([str(run), "--plot", str(out)]) == 0
    lines = (run / "summary.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == ["eagle3-10", "prism-10", "prism-20", "prism-upcycled-10+10"]
    prism_20 = lines[3].split("\t")
    assert prism_20[1:6] == ["20", "2000", "8", "12.5", "1.300"] and prism_20[6:8] == ["1.250", "1.350"]
    assert prism_20[8:] == ["0.200 -", "0.600 0.300"]
    assert out.is_file() and len(json.loads(out.with_suffix(".json").read_text())) == 4
    assert arch_comparison([str(tmp_path / "empty")]) == 1
