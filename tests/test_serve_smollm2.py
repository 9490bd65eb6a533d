"""`prism-sglang serve` as `make serve` runs it: SmolLM2-135M-Instruct and the shipped PRISM draft."""

from __future__ import annotations

import openai
import pytest

from prism_sglang.engine import SamplingParams
from prism_sglang.engine.loading import encode_chat, load_engine
from prism_sglang.prepare_model import prepare_smollm2
from tests.serve_support import running_server

pytestmark = pytest.mark.smollm2

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2_dir():
    return prepare_smollm2(log=lambda _: None)


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    with running_server(["--served-model-name", "smollm2"], tmp_path_factory.mktemp("logs") / "server.log") as s:
        yield s


def test_smollm2_greedy_chat_over_http_equals_the_engine(server, smollm2_dir):
    engine = load_engine(smollm2_dir)
    prompt = encode_chat(engine.tokenizer, MESSAGES)
    expected = engine.generate(prompt, SamplingParams(max_new_tokens=12), speculative=False)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    response = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=12, temperature=0)
    assert response.choices[0].message.content == expected.text
    assert "Paris" in response.choices[0].message.content
    assert response.usage.completion_tokens == len(expected.output_ids)
    assert response.usage.model_extra["spec_verify_ct"] >= 1
    # The trained draft gets tokens accepted: fewer verification cycles than tokens after the first.
    assert response.usage.model_extra["spec_verify_ct"] < response.usage.completion_tokens - 1
    streamed = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=12, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected.text


def test_make_serve_defaults_are_the_measured_fastest(server):
    """Chain 1/1 with adaptive speculation: bench/results/2026-12-04-cpu/cycle-cost.json chose them."""
    import httpx

    info = httpx.get(server.url + "/server_info", timeout=10).json()
    assert (info["speculative_num_steps"], info["speculative_eagle_topk"], info["speculative_num_draft_tokens"],
            info["speculation"]) == (1, 1, 2, "adaptive")
