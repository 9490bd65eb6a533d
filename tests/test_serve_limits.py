"""Capacity, timeouts, disconnects, shutdown and start-up errors of `prism-sglang serve`.

The server here is target-only (--no-draft) with one running slot and one queue slot, so the limits are easy to
reach: its tiny target has a 32k context, and a 30000-token request occupies a slot for minutes.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from contextlib import ExitStack

import httpx
import openai
import pytest

from prism_sglang.serve import server as serve_server
from prism_sglang.serve.options import add_serve_arguments
from tests.serve_support import make_fast_target, running_server, start_server, stop_server

LONG = {"input_ids": [1, 2, 3], "stream": True,
        "sampling_params": {"max_new_tokens": 30000, "temperature": 0, "ignore_eos": True}}
TIMEOUT = 5


@pytest.fixture(scope="module")
def fast_target(tmp_path_factory):
    return make_fast_target(tmp_path_factory.mktemp("fast-target"), max_positions=32768)


@pytest.fixture(scope="module")
def server(fast_target, tmp_path_factory):
    args = ["--target", str(fast_target), "--no-draft", "--max-running", "1", "--max-queue", "1",
            "--request-timeout", str(TIMEOUT)]
    with running_server(args, tmp_path_factory.mktemp("logs") / "server.log") as s:
        yield s


def counts(server) -> tuple[int, int]:
    state = httpx.get(server.url + "/server_info", timeout=10).json()["internal_states"][0]
    return state["num_running_reqs"], state["num_waiting_reqs"]


def wait_for_counts(server, expected: tuple[int, int], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while counts(server) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"running/waiting never became {expected}: {counts(server)}")
        time.sleep(0.05)


def open_stream(stack: ExitStack, server, body: dict) -> httpx.Response:
    client = stack.enter_context(httpx.Client(base_url=server.url, timeout=60))
    response = stack.enter_context(client.stream("POST", "/generate", json=body))
    assert response.status_code == 200
    return response


def short_chat(server, timeout: float = 30) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=timeout,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0})


def test_target_only_server_has_no_spec_figures(server):
    response = short_chat(server)
    assert response.status_code == 200
    assert not any(k.startswith("spec_") for k in response.json()["usage"])
    info = httpx.get(server.url + "/server_info", timeout=10).json()
    assert info["speculative_algorithm"] is None and "avg_spec_accept_length" not in info["internal_states"][0]


def test_queue_overflow_answers_429_at_once(server):
    with ExitStack() as stack:
        open_stream(stack, server, LONG)
        wait_for_counts(server, (1, 0))
        open_stream(stack, server, LONG)
        wait_for_counts(server, (1, 1))
        start = time.monotonic()
        response = short_chat(server, timeout=10)
        assert time.monotonic() - start < 3
        assert response.status_code == 429 and response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "queue_full"
    wait_for_counts(server, (0, 0))  # both streams were dropped when their clients left
    assert short_chat(server).status_code == 200
    assert 'prism_requests_total{endpoint="chat",status="429"} 1.0' in httpx.get(server.url + "/metrics").text


def test_disconnect_frees_the_running_slot_for_the_next_request(server):
    with ExitStack() as stack:
        response = open_stream(stack, server, LONG)
        next(response.iter_lines())
    start = time.monotonic()
    assert short_chat(server, timeout=20).status_code == 200
    assert time.monotonic() - start < 10  # the 30000-token request did not keep the only slot


def test_request_timeout_non_streaming_is_504(server):
    body = {"prompt": [1, 2, 3], "max_tokens": 30000, "temperature": 0, "ignore_eos": True}
    start = time.monotonic()
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "request_timeout"
    assert TIMEOUT - 0.5 < time.monotonic() - start < TIMEOUT + 10


def test_request_timeout_in_a_stream_is_an_error_event(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model=client.models.list().data[0].id, stream=True, max_tokens=30000,
                                            messages=[{"role": "user", "content": "go"}], temperature=0,
                                            extra_body={"ignore_eos": True})
    with pytest.raises(openai.APIError, match="request timeout"):
        for _ in stream:
            pass
    assert short_chat(server).status_code == 200


def test_sigterm_drains_short_requests_aborts_long_ones_and_exits_0(fast_target, tmp_path):
    server = start_server(["--target", str(fast_target), "--no-draft", "--shutdown-timeout", "5"],
                          tmp_path / "server.log")
    results: dict[str, list] = {}

    def stream(name: str, max_new_tokens: int) -> None:
        body = {**LONG, "sampling_params": {**LONG["sampling_params"], "max_new_tokens": max_new_tokens}}
        with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as response:
            results[name] = [line.removeprefix("data: ") for line in response.iter_lines() if line]

    try:
        threads = [threading.Thread(target=stream, args=("short", 30)), threading.Thread(target=stream,
                                                                                          args=("long", 30000))]
        for t in threads:
            t.start()
        wait_for_counts(server, (2, 0))
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
        assert time.monotonic() - start < 15
        for t in threads:
            t.join(10)
    finally:
        stop_server(server)
    short, long = results["short"], results["long"]
    assert short[-1] == "[DONE]" and json.loads(short[-2])["meta_info"]["finish_reason"]["type"] == "length"
    assert long[-1] == "[DONE]" and json.loads(long[-2])["error"]["code"] == "shutting_down"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_missing_shipped_draft_says_how_to_proceed(monkeypatch, tmp_path):
    monkeypatch.setattr("prism_sglang.resources.DRAFTS_DIR", tmp_path)
    with pytest.raises(serve_server.ServeSetupError) as err:
        serve_server.resolve_models(parse())
    message = str(err.value)
    assert "smollm2-prism" in message and "--draft DIR" in message and "--no-draft" in message


def test_custom_target_needs_an_explicit_draft_choice(fast_target):
    with pytest.raises(serve_server.ServeSetupError, match="--no-draft"):
        serve_server.resolve_models(parse("--target", str(fast_target)))
    assert serve_server.resolve_models(parse("--target", str(fast_target), "--no-draft")) == (fast_target, None)


def test_cli_reports_setup_errors_with_status_2(tmp_path, capsys):
    from prism_sglang.cli import main

    assert main(["serve", "--target", str(tmp_path), "--no-draft"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["serve", "--num-steps", "0", "--no-draft"]) == 2
    assert "--num-steps must be >= 1" in capsys.readouterr().err
