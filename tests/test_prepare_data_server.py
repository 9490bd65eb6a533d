"""prepare-data --server: answers through an OpenAI-compatible endpoint. Against our CPU server (started here):
answers written, a restarted run skips what is done. Against a test-only flaky endpoint: 500s and dropped
connections are retried and counted; a conversation that keeps failing is reported with its reason, not written,
and asked for again by the next run; an endpoint that is not one fails before any request."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from prism_sglang.cli import main
from tests.serve_support import make_fast_target, running_server

PROMPTS = [f"Write one sentence about the number {i}." for i in range(6)]


@pytest.fixture(scope="module")
def fast_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fast_target(tmp_path_factory.mktemp("answering-target"))


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "old"},
                          {"role": "user", "content": "And one more, shorter."}]} for p in PROMPTS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(target: Path, prompts: Path, out: Path, url: str, *extra: str) -> int:
    return main(["prepare-data", "--target", str(target), "--prompts", str(prompts), "--out", str(out),
                 "--server", url, "--max-new-tokens", "8", "--max-turns", "2", "--heldout", "0",
                 "--concurrency", "3", *extra])


def written(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generated.jsonl").read_text().splitlines()]


@pytest.mark.timeout(300)
def test_answers_through_our_cpu_server_and_a_rerun_skips_them(fast_target, prompts, tmp_path, capsys):
    with running_server(["--target", str(fast_target), "--no-draft", "--served-model-name", "fast"],
                        tmp_path / "server.log") as server:
        assert prepare(fast_target, prompts, tmp_path / "data", server.url) == 0
        records = written(tmp_path / "data")
        assert sorted(r["messages"][0]["content"] for r in records) == sorted(PROMPTS)
        for r in records:  # both user turns answered, the source's own answer replaced
            assert [m["role"] for m in r["messages"]] == ["user", "assistant", "user", "assistant"]
            assert r["messages"][1]["content"] != "old"
        manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
        assert manifest["train"] == len(PROMPTS) and manifest["failed"] == []
        assert "(model fast)" in capsys.readouterr().out
        assert prepare(fast_target, prompts, tmp_path / "data", server.url) == 0
    assert len(written(tmp_path / "data")) == len(PROMPTS)
    assert f"{len(PROMPTS)} already generated, 0 to go" in capsys.readouterr().out


class FlakyEndpoint(BaseHTTPRequestHandler):
    """Test-only OpenAI stand-in: each request's first attempt gets a 500, its second a dropped connection, its
    third an answer; requests whose prompt contains `doomed` always get a 500."""

    attempts: ClassVar[Counter] = Counter()
    doomed = "number 4"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._reply(200, {"object": "list", "data": [{"id": "flaky", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = json.dumps(body["messages"])
        self.attempts[key] += 1
        if self.doomed in key:
            self._reply(500, {"error": {"message": "internal error"}})
        elif self.attempts[key] == 1:
            self._reply(500, {"error": {"message": "try again"}})
        elif self.attempts[key] == 2:
            self.close_connection = True
            self.connection.shutdown(2)  # drop it: no status line at all
        else:
            turn = sum(m["role"] == "user" for m in body["messages"])
            self._reply(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": f"answer {turn}"}}],
                              "usage": {"completion_tokens": 2}})

    def _reply(self, status: int, data: dict) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # the dropped connections' broken pipes
        pass


@contextmanager
def flaky_endpoint() -> Iterator[str]:
    FlakyEndpoint.attempts = Counter()
    server = QuietServer(("127.0.0.1", 0), FlakyEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.timeout(120)
def test_failures_are_retried_reported_and_never_lost(fast_target, prompts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("prism_sglang.train.server_answers.FIRST_BACKOFF_S", 0.01)
    out = tmp_path / "data"
    with flaky_endpoint() as url:
        assert prepare(fast_target, prompts, out, url, "--retries", "3") == 1  # one conversation failed
    records = written(out)
    assert len(records) == len(PROMPTS) - 1 and all("number 4" not in r["messages"][0]["content"] for r in records)
    assert all(r["messages"][-1]["content"] == "answer 2" for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["retried_requests"] >= 2 * 2 * (len(PROMPTS) - 1)  # a 500 and a drop per request
    (failed,) = manifest["failed"]
    assert failed["key"] == "file/line5#0"  # prompts.jsonl's 5th line: "... the number 4."
    assert "HTTP 500" in failed["reason"] and "after 3 retries" in failed["reason"]
    assert [json.loads(x)["key"] for x in (out / "failed.jsonl").read_text().splitlines()] == [failed["key"]]
    assert "1 conversation(s) failed" in capsys.readouterr().out
    # the next run asks for that one alone
    FlakyEndpoint.doomed = "no such prompt"
    try:
        with flaky_endpoint() as url:
            assert prepare(fast_target, prompts, out, url, "--retries", "3") == 0
    finally:
        FlakyEndpoint.doomed = "number 4"
    assert len(written(out)) == len(PROMPTS)
    assert "5 already generated, 1 to go" in capsys.readouterr().out


def test_an_endpoint_that_is_not_one_fails_before_any_request(fast_target, prompts, tmp_path, capsys):
    assert prepare(fast_target, prompts, tmp_path / "data", "http://127.0.0.1:9") == 2
    assert "GET /v1/models failed" in capsys.readouterr().err
    generated = tmp_path / "data" / "generated.jsonl"
    assert not generated.is_file() or generated.read_text() == ""
