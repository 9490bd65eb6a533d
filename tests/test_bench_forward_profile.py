"""bench/forward_profile.py on a tiny target: every kind of module is timed and the table holds each token count."""

from __future__ import annotations

import json

import pytest

from bench.forward_profile import KINDS, main


def test_profile_of_a_tiny_target(tiny_target_dir, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["--target", str(tiny_target_dir), "--context", "9", "--tokens", "1", "2", "4", "--reps", "3",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["tokens"] for r in rows] == [1, 2, 4]
    assert rows[0]["decode_steps"] == 1.0
    for row in rows:
        assert set(row["kinds_ms"]) == set(KINDS)
        assert row["kinds_ms"]["attention linears"] > 0 and row["kinds_ms"]["mlp linears"] > 0
        assert all(value >= 0 for value in row["kinds_ms"].values())
    assert "attention linears" in capsys.readouterr().out


def test_a_decode_step_must_come_first(tiny_target_dir):
    with pytest.raises(SystemExit):
        main(["--target", str(tiny_target_dir), "--tokens", "2", "3"])
