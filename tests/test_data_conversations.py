"""Users' own chat data: OpenAI and ShareGPT JSONL, bad lines reported by number, no good line lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism_sglang.data.prompt_sources import ConversationError, iter_conversations, read_conversations

OPENAI = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello!"}]}
SHAREGPT = {"id": "x", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                         {"from": "gpt", "value": "Hello!"}]}
NORMALISED = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}]

BAD = [
    ('{"messages": [', "invalid JSON"),
    ('["user", "Hi"]', "expected a JSON object, got list"),
    ('{"text": "Hi"}', "no 'messages' (OpenAI format) or 'conversations' (ShareGPT format)"),
    ('{"messages": []}', "'messages' must be a non-empty list"),
    ('{"conversations": [{"from": "robot", "value": "Hi"}]}', "message 1 has unknown from 'robot'"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}',
     "message 2 has unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": ["Hi"]}]}', "message 1 'content' is not a string (got list)"),
    ('{"messages": [{"role": "user", "content": "  "}]}', "message 1 is empty"),
    ('{"messages": [{"role": "assistant", "content": "Hello"}]}', "no user message"),
    ('{"messages": ["Hi"]}', "message 1 is not a JSON object"),
]


def _write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def test_both_formats_normalise_to_the_same_messages(tmp_path: Path) -> None:
    path = _write(tmp_path / "chats.jsonl", [json.dumps(OPENAI), "", json.dumps(SHAREGPT)])
    assert list(read_conversations(path)) == [NORMALISED, NORMALISED]
    assert [n for n, _ in iter_conversations(path)] == [1, 3]


@pytest.mark.parametrize(("line", "problem"), BAD)
def test_bad_line_is_named_with_its_number(tmp_path: Path, line: str, problem: str) -> None:
    path = _write(tmp_path / "chats.jsonl", [json.dumps(OPENAI), line])
    reader = read_conversations(path)
    assert next(reader) == NORMALISED
    with pytest.raises(ConversationError) as info:
        next(reader)
    assert info.value.line_no == 2
    assert str(info.value).startswith(f"{path}:2: ")
    assert problem in str(info.value)


def test_iter_conversations_reports_every_bad_line_and_keeps_every_good_one(tmp_path: Path) -> None:
    lines: list[str | bytes] = []
    for line, _ in BAD:
        lines += [json.dumps(OPENAI), line]
    lines += [b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', json.dumps(SHAREGPT)]
    results = list(iter_conversations(_write(tmp_path / "mixed.jsonl", lines)))
    good = [(n, r) for n, r in results if not isinstance(r, ConversationError)]
    bad = [(n, r) for n, r in results if isinstance(r, ConversationError)]
    assert [n for n, _ in good] == [*range(1, 2 * len(BAD), 2), len(lines)]
    assert all(r == NORMALISED for _, r in good)
    assert [n for n, _ in bad] == [*range(2, 2 * len(BAD) + 1, 2), len(lines) - 1]
    assert all(e.line_no == n for n, e in bad)
    assert "not valid UTF-8" in bad[-1][1].problem
