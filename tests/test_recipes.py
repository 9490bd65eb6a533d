"""recipes/unused_conversations.py replays a training run's order: the conversations it reports as reached are
the ones `train` used (their tokens equal the run's), and the rest are written, none twice, none lost."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_unused_conversations_replays_what_a_run_reached(tiny_chat_target_dir, tmp_path):
    data = tmp_path / "chats.jsonl"
    chats = [[{"role": "user", "content": f"Count to {i}."},
              {"role": "assistant", "content": " ".join(str(k) for k in range(i + 3))}] for i in range(11)]
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    run = subprocess.run(
        [sys.executable, "-m", "prism_sglang.cli", "train", "--target", str(tiny_chat_target_dir), "--data", str(data),
         "--out", str(tmp_path / "run"), "--modules", "1", "--draft-vocab-size", "256", "--ttt-steps", "2",
         "--batch-size", "3", "--max-length", "96", "--max-steps", "2", "--device", "cpu", "--precision", "fp32"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    trained_tokens = json.loads((tmp_path / "run" / "summary.json").read_text())["tokens"]

    out = tmp_path / "unused.jsonl"
    replay = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "unused_conversations.py"), str(data), str(out), "--steps", "2",
         "--batch-size", "3", "--max-length", "96", "--target", str(tiny_chat_target_dir)],
        capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr[-2000:]
    # 2 steps of 3 reach 5 or 6 conversations (batches grouped by length: 11 = 3 + 3 + 3 + 2), exactly the run's tokens
    found = re.search(r"(\d+) conversations \((\d+) tokens\) were reached by 2 steps; (\d+) unused", replay.stdout)
    assert found, replay.stdout
    reached, tokens, left = map(int, found.groups())
    assert tokens == trained_tokens and reached in (5, 6) and reached + left == 11
    unused = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    assert len(unused) == left and all(m in chats for m in unused)
    assert len({json.dumps(m) for m in unused}) == left
