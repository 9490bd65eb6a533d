"""bench/cycle_cost.py on the tiny chat target: configurations parse, every speculative output equals the
target-only one, and a cycle's phases add up in decode-step units."""

from __future__ import annotations

import argparse
import json

import pytest

from bench.cycle_cost import main, parse_config
from prism_sglang.checkpoint import save_draft
from prism_sglang.engine.generate import TreeSettings
from prism_sglang.target import TargetModel
from tests.conftest import make_draft

pytestmark = pytest.mark.timeout(300)


def test_configurations_parse():
    assert parse_config("none") == (None, False)
    assert parse_config("3/1") == (TreeSettings(3, 1), False)
    assert parse_config("6/4/16+adaptive") == (TreeSettings(6, 4, 16), True)
    for bad, message in (("3/2", "a chain is STEPS/1"), ("x/1", "bad configuration"), ("2/1+fast", r"\+fast"),
                         ("none+adaptive", "no draft"), ("2/2/40", "2/2/40")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_config(bad)


def test_sweep_on_a_tiny_target(tiny_chat_target_dir, tmp_path):
    target = TargetModel.load(tiny_chat_target_dir)
    save_draft(make_draft(target, aux_layer_ids=(0, 1, 2)), tmp_path / "prism", dtype=None)
    out = tmp_path / "cycle-cost.json"
    assert main(["--target", str(tiny_chat_target_dir), "--draft", str(tmp_path / "prism"), "--configs", "none",
                 "2/1", "3/2/6", "2/1+adaptive", "--benches", "gsm8k", "--prompts-per-bench", "2",
                 "--max-tokens", "12", "--out", str(out)]) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    assert list(rows) == ["none", "2/1", "3/2/6", "2/1+adaptive"]
    assert rows["none"]["speedup"] == 1.0 and "cycle_decode_steps" not in rows["none"]
    for name in ("2/1", "3/2/6", "2/1+adaptive"):
        row = rows[name]
        assert row["identical_outputs"] == row["requests"] == 2 and row["tokens"] == 24
        steps = row["cycle_decode_steps"]
        assert steps["total"] == pytest.approx(sum(steps[p] for p in ("draft", "verify", "cache", "extend")))
        assert steps["verify"] > 0 and row["tau"] >= 1.0
    assert rows["2/1"]["decoded_tokens"] == 0  # always speculating: every step after the prefill is a cycle


def test_the_baseline_must_come_first(tmp_path):
    with pytest.raises(SystemExit):
        main(["--configs", "2/1", "none", "--out", str(tmp_path / "x.json")])
