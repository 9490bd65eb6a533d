"""`prism-sglang serve` over real HTTP: OpenAI client, SGLang's /generate, errors, metrics, concurrency.

One server (tiny random Llama with SmolLM2's tokenizer + a random PRISM draft) for the whole module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from prism_sglang.engine import SamplingParams
from prism_sglang.engine.loading import encode_chat, load_engine
from tests.serve_support import make_fast_draft, make_fast_target, running_server, server_env
from tests.sglang_support import STUBS, sglang_package_dir

MODEL = "tiny-prism"
MESSAGES = [{"role": "user", "content": "Tell me about speculative decoding."}]


@pytest.fixture(scope="module")
def fast_target(tmp_path_factory):
    return make_fast_target(tmp_path_factory.mktemp("fast-target"))


@pytest.fixture(scope="module")
def server(fast_target, tmp_path_factory):
    draft = make_fast_draft(fast_target, tmp_path_factory.mktemp("fast-draft"))
    log = tmp_path_factory.mktemp("logs") / "server.log"
    args = ["--target", str(fast_target), "--draft", str(draft), "--served-model-name", MODEL, "--num-steps", "3",
            "--max-running", "4", "--max-queue", "32", "--max-request-bytes", "100000",
            "--speculation", "always"]  # every step a cycle: the spec_* figures below are exact counts
    with running_server(args, log) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(fast_target):
    """The engine in this process, target only: what greedy serving must reproduce token for token."""
    return load_engine(fast_target)


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_models_lists_the_served_name(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert models.data[0].model_extra["max_model_len"] == 1024


def test_chat_non_streaming_and_speculative_usage(client):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                              extra_body={"ignore_eos": True})
    choice = response.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant" and choice.message.content
    usage = response.usage
    assert usage.completion_tokens == 12 and usage.total_tokens == usage.prompt_tokens + 12
    extra = usage.model_extra  # SGLang's meta_info names
    assert extra["spec_verify_ct"] >= 1 and extra["spec_accept_length"] == 12 / extra["spec_verify_ct"]
    assert extra["spec_num_proposed_drafts"] == extra["spec_verify_ct"] * 3
    assert sum(extra["spec_correct_drafts_histogram"]) == extra["spec_verify_ct"]


def test_chat_streaming_adds_up_to_the_non_streaming_answer(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_completions_stream_and_not(client):
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0,
                  extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 10
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole.choices[0].text


def test_greedy_serving_equals_target_only_engine(client, server, reference):
    """Lossless: speculative greedy output over HTTP == the engine's target-only greedy output."""
    prompt = encode_chat(reference.tokenizer, MESSAGES)
    expected = reference.generate(prompt, SamplingParams(max_new_tokens=24, ignore_eos=True), speculative=False)
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}}
    out = httpx.post(server.url + "/generate", json=body, timeout=60).json()
    assert out["output_ids"] == expected.output_ids
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert chat.choices[0].message.content == expected.text


def test_stop_string_is_cut_in_both_modes(client, reference):
    prompt = encode_chat(reference.tokenizer, MESSAGES)
    full = reference.generate(prompt, SamplingParams(max_new_tokens=30, ignore_eos=True), speculative=False).text
    stop = full[len(full) // 2:][:3]
    assert stop.strip(), full
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, stop=[stop],
                  extra_body={"ignore_eos": True})
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["matched_stop"] == stop
    assert choice.message.content == full[:full.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
                       if c.choices)
    assert streamed == choice.message.content


def test_seeded_sampling_is_reproducible(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=1.0, top_p=0.9, seed=7,
                  extra_body={"top_k": 50, "ignore_eos": True})
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    assert client.chat.completions.create(**kwargs).choices[0].message.content == first


def test_native_generate_matches_sglang_shapes(server):
    body = {"text": "The capital of France", "sampling_params": {"max_new_tokens": 8, "temperature": 0,
                                                                   "ignore_eos": True}}
    out = httpx.post(server.url + "/generate", json=body, timeout=60).json()
    meta = out["meta_info"]
    assert len(out["output_ids"]) == 8 and isinstance(out["text"], str)
    assert meta["finish_reason"] == {"type": "length", "length": 8}
    assert meta["completion_tokens"] == 8 and meta["prompt_tokens"] > 0 and meta["e2e_latency"] > 0
    assert meta["spec_verify_ct"] >= 1 and meta["spec_accept_length"] >= 1

    with httpx.stream("POST", server.url + "/generate", json={**body, "stream": True}, timeout=60) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    counts = [c["meta_info"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 8  # cumulative, as SGLang streams
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["text"] == out["text"] and chunks[-1]["output_ids"] == out["output_ids"]
    assert chunks[-1]["meta_info"]["spec_accept_length"] >= 1


CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]
BAD_REQUESTS = [
    ("invalid JSON", CHAT, b'{"messages": [', 400, "invalid_json"),
    ("not an object", CHAT, [], 400, "invalid_json"),
    ("missing messages", CHAT, {"model": MODEL}, 400, "missing_field"),
    ("messages wrong type", CHAT, {"messages": "hi"}, 400, "invalid_value"),
    ("empty messages", CHAT, {"messages": []}, 400, "invalid_value"),
    ("unknown role", CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value"),
    ("max_tokens as string", CHAT, {"messages": USER, "max_tokens": "8"}, 400, "invalid_value"),
    ("negative max_tokens", CHAT, {"messages": USER, "max_tokens": -1}, 400, "invalid_value"),
    ("zero max_tokens", CHAT, {"messages": USER, "max_tokens": 0}, 400, "invalid_value"),
    ("huge max_tokens", CHAT, {"messages": USER, "max_tokens": 10**12}, 400, "context_length_exceeded"),
    ("max_tokens beyond int64", CHAT, {"messages": USER, "max_tokens": 10**30}, 400, "invalid_value"),
    ("negative temperature", CHAT, {"messages": USER, "temperature": -0.1}, 400, "invalid_value"),
    ("top_p zero", CHAT, {"messages": USER, "top_p": 0}, 400, "invalid_value"),
    ("n = 2", CHAT, {"messages": USER, "n": 2}, 400, "invalid_value"),
    ("tools", CHAT, {"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
     "invalid_value"),
    ("tool_choice", CHAT, {"messages": USER, "tool_choice": "required"}, 400, "invalid_value"),
    ("JSON mode", CHAT, {"messages": USER, "response_format": {"type": "json_object"}}, 400, "invalid_value"),
    ("top_logprobs without logprobs", CHAT, {"messages": USER, "top_logprobs": 2}, 400, "invalid_value"),
    ("too many top_logprobs", CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 21}, 400, "invalid_value"),
    ("prompt over the context", CHAT, {"messages": [{"role": "user", "content": "word " * 1500}]}, 400,
     "context_length_exceeded"),
    ("empty stop string", CHAT, {"messages": USER, "stop": [""]}, 400, "invalid_value"),
    ("completions batch prompt", "/v1/completions", {"prompt": ["a", "b"]}, 400, "invalid_value"),
    ("completions token out of vocab", "/v1/completions", {"prompt": [10**6]}, 400, "invalid_value"),
    ("generate without prompt", "/generate", {"sampling_params": {}}, 400, "invalid_value"),
    ("generate zero max_new_tokens", "/generate", {"text": "a", "sampling_params": {"max_new_tokens": 0}}, 400,
     "invalid_value"),
    ("oversized body", CHAT, {"messages": [{"role": "user", "content": "x" * 200_000}]}, 413, "request_too_large"),
]


@pytest.mark.parametrize(("path", "body", "status", "code"), [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_openai_errors(server, path, body, status, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"},
                          timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]


def test_server_keeps_serving_after_bad_requests(client, server):
    for raw in (b"{", b'{"messages": 5}', b"\xff\xfe"):
        assert httpx.post(server.url + CHAT, content=raw, timeout=30).status_code == 400
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert client.chat.completions.create(model=MODEL, messages=USER, max_tokens=3).choices[0].message.content


def test_any_model_name_is_served_and_echoed_as_by_sglang(client):
    """SGLang's server takes any `model` in a completion request and echoes it; only retrieving an unknown model
    by name is a 404. The same client code (e.g. model="default") must work here and there."""
    for name in ("default", "gpt-4"):
        reply = client.chat.completions.create(model=name, messages=USER, max_tokens=3)
        assert reply.model == name and reply.choices[0].message.content
    assert client.completions.create(model="default", prompt="Hello", max_tokens=2).model == "default"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_the_served_name_defaults_to_the_model_folders_name(fast_target):
    import argparse

    from prism_sglang.serve.options import add_serve_arguments, server_config

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--target", str(fast_target)])
    assert server_config(args, fast_target, None).served_model_name == fast_target.name
    assert fast_target.name.startswith("fast-target")  # the folder pytest made, e.g. fast-target0


def test_openai_client_sees_errors_as_exceptions(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=-5)
    assert err.value.body["param"] == "max_tokens"


def test_sixteen_concurrent_clients_all_complete(server):
    def one(i: int) -> tuple[int, int]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"request {i}"}], "max_tokens": 12,
                "ignore_eos": True, "stream": i % 2 == 0}
        with httpx.Client(base_url=server.url, timeout=300) as http:
            if body["stream"]:
                with http.stream("POST", CHAT, json=body) as response:
                    events = sse_events(response)
                assert events[-1] == "[DONE]"
                return response.status_code, sum(1 for e in events[:-1] if e["choices"][0]["finish_reason"])
            response = http.post(CHAT, json=body)
            return response.status_code, int(response.json()["usage"]["completion_tokens"] == 12)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert results == [(200, 1)] * 16


def test_client_disconnect_mid_stream_frees_the_slot(server):
    body = {"input_ids": [1, 2, 3], "stream": True,
            "sampling_params": {"max_new_tokens": 1000, "temperature": 0, "ignore_eos": True}}
    with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        seen = [line for line, _ in zip(lines, range(3), strict=False) if line]
        assert seen
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if httpx.get(server.url + "/server_info", timeout=10).json()["internal_states"][0]["num_running_reqs"] == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the disconnected request is still running")
    cancelled = [line for line in server.output().splitlines() if " generate status=cancelled " in line]
    assert cancelled and "completion=1000" not in cancelled[-1]


def test_metrics_and_server_info(client, server):
    client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, extra_body={"ignore_eos": True})
    text = httpx.get(server.url + "/metrics", timeout=10).text
    labels = f'{{model_name="{MODEL}"}}'
    for name in ('prism_requests_total{endpoint="chat",status="200"}', "sglang:generation_tokens_total" + labels,
                 "sglang:prompt_tokens_total" + labels, "sglang:e2e_request_latency_seconds_bucket",
                 "sglang:time_to_first_token_seconds_bucket", "sglang:spec_verify_calls_total" + labels,
                 "sglang:spec_accept_length" + labels, "sglang:num_running_reqs" + labels,
                 "sglang:num_queue_reqs" + labels, "prism_spec_accepted_tokens_total",
                 "prism_spec_accept_length_bucket",
                 'prism_requests_total{endpoint="chat",status="400"}'):
        assert name in text, name
    info = httpx.get(server.url + "/server_info", timeout=10).json()
    assert info["speculative_algorithm"] == "PRISM" and info["speculative_num_steps"] == 3
    assert info["speculation"] == "always"
    assert info["internal_states"][0]["avg_spec_accept_length"] >= 1.0
    assert httpx.get(server.url + "/model_info", timeout=10).json()["is_generation"] is True


def test_one_log_line_per_request(server):
    lines = [line for line in server.output().splitlines() if "prism_sglang.serve:" in line and " status=" in line]
    assert lines and all(f in lines[-1] for f in ("prompt=", "completion=", "tau=", "latency="))


@pytest.mark.sglang
def test_sglang_benchmark_serving_runs_against_the_server(server, tmp_path):
    """The harness drives `python -m sglang.benchmark.serving --backend sglang` (/generate, streamed) against
    both SGLang and this server; it must complete every request and read the acceptance figures."""
    sglang_package_dir()  # skip (or fail under PRISM_REQUIRE_SGLANG=1) without sglang
    port = server.url.rsplit(":", 1)[1]
    result = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang", "--host", "127.0.0.1",
           "--port", port, "--dataset-name", "random-ids", "--random-input-len", "24", "--random-output-len", "8",
           "--random-range-ratio", "1", "--num-prompts", "4", "--max-concurrency", "2", "--disable-tqdm",
           "--output-file", str(result)]
    env = server_env()
    env["PYTHONPATH"] = os.pathsep.join([str(STUBS), env["PYTHONPATH"]])  # sglang imports torchvision (CPU stub)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(result.read_text().splitlines()[-1])
    assert report["completed"] == 4 and report["total_output_tokens"] == 32
    assert report["accept_length"] >= 1.0  # from /server_info internal_states[0].avg_spec_accept_length


def test_logprobs_are_the_targets_probabilities(client, reference):
    """logprobs / top_logprobs (chat) and logprobs (completions): each output token's log-probability under the
    target, as a plain forward over prompt + output computes it; streamed chunks carry them all, in order."""
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2,
                  extra_body={"ignore_eos": True})
    content = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    prompt = encode_chat(reference.tokenizer, MESSAGES)
    ids = reference.generate(prompt, SamplingParams(max_new_tokens=10, ignore_eos=True), speculative=False).output_ids
    with torch.no_grad():
        logits = reference.target.forward(torch.tensor([prompt + ids])).logits[0].double()
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    assert [c.token for c in content] == [reference.tokenizer.decode([i]) for i in ids]
    torch.testing.assert_close(torch.tensor([c.logprob for c in content], dtype=torch.float64),
                               expected.gather(1, torch.tensor(ids)[:, None])[:, 0], atol=1e-4, rtol=0)
    for c, row in zip(content, expected, strict=True):
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(row.topk(2).values.tolist(), abs=1e-4)
        assert c.top_logprobs[0].token == c.token  # greedy: the chosen token is the most likely one
    streamed = [item for chunk in client.chat.completions.create(**kwargs, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for item in chunk.choices[0].logprobs.content]
    assert [(s.token, s.logprob) for s in streamed] == [(c.token, c.logprob) for c in content]
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0,
                                           logprobs=2, extra_body={"ignore_eos": True}).choices[0]
    assert len(completion.logprobs.token_logprobs) == 6 and all(lp <= 0 for lp in completion.logprobs.token_logprobs)
    assert "".join(completion.logprobs.tokens) == completion.text
    assert completion.logprobs.text_offset[0] == 0 and all(len(t) == 2 for t in completion.logprobs.top_logprobs)
