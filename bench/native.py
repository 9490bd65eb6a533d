"""Small clients of SGLang's native POST /generate: the acceptance probe (non-streaming, reads each request's
final `meta_info`), the greedy outputs of the lossless check, and the closed-loop streaming load of the
simulated benchmark (token ids in and out, so the server can run with --skip-tokenizer-init)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import BenchError

TIMEOUT = httpx.Timeout(connect=30.0, read=3600.0, write=60.0, pool=3600.0)


def sampling_params(temperature: float, max_tokens: int) -> dict[str, Any]:
    # ignore_eos: every request makes exactly max_tokens tokens, as in the throughput runs.
    return {"temperature": temperature, "max_new_tokens": max_tokens, "ignore_eos": True}


async def _bounded(concurrency: int, jobs: Sequence[Any]) -> list[Any]:
    """Run coroutines with at most `concurrency` in flight; results in input order."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(job: Any) -> Any:
        async with semaphore:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))


# -- non-streamed requests: acceptance probe, lossless check -----------------------------------------------
async def _generate_all(base_url: str, prompts: Sequence[str | list[int]], params: dict[str, Any],
                        concurrency: int) -> list[dict[str, Any]]:
    """A prompt is text, or token ids (then server and reference see exactly the same input)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        async def one(prompt: str | list[int]) -> dict[str, Any]:
            field = "text" if isinstance(prompt, str) else "input_ids"
            response = await client.post("/generate", json={field: prompt, "sampling_params": params})
            if response.status_code != 200:
                raise BenchError(f"/generate failed: HTTP {response.status_code}: {response.text[:300]}")
            return response.json()

        return await _bounded(concurrency, [one(p) for p in prompts])


def probe_meta_info(base_url: str, texts: Sequence[str], temperature: float, max_tokens: int,
                    concurrency: int) -> list[dict[str, Any]]:
    """Each prompt once through /generate (not streamed); the final meta_info of each request."""
    params = sampling_params(temperature, max_tokens)
    return [r["meta_info"] for r in asyncio.run(_generate_all(base_url, texts, params, concurrency))]


def generate_greedy(base_url: str, texts: Sequence[str | list[int]], max_tokens: int,
                    concurrency: int) -> list[dict[str, Any]]:
    """Each prompt once, temperature 0, EOS honoured (stopping must match too): {output_ids, meta_info} each, in
    prompt order."""
    params = {"temperature": 0.0, "max_new_tokens": max_tokens}
    responses = asyncio.run(_generate_all(base_url, texts, params, concurrency))
    return [{"output_ids": list(r["output_ids"]), "meta_info": r["meta_info"]} for r in responses]


# -- closed-loop streaming load (simulated benchmark) ---------------------------------------------------------
@dataclass(frozen=True)
class StreamedRequest:
    ok: bool
    ttft: float  # seconds to the first event that carries a token
    latency: float  # seconds to the end of the stream
    completion_tokens: int
    verify_ct: int | None  # speculative verification cycles (None without speculation)
    error: str = ""


async def _stream_one(client: httpx.AsyncClient, input_ids: list[int], max_tokens: int) -> StreamedRequest:
    body = {"input_ids": input_ids, "sampling_params": sampling_params(0.0, max_tokens), "stream": True}
    start = time.perf_counter()
    ttft = 0.0
    meta: dict[str, Any] = {}
    try:
        async with client.stream("POST", "/generate", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return StreamedRequest(False, 0.0, 0.0, 0, None, f"HTTP {response.status_code}: {text[:300]}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                meta = json.loads(line[len("data: "):]).get("meta_info") or meta
                if not ttft and meta.get("completion_tokens", 0) > 0:
                    ttft = time.perf_counter() - start
    except httpx.HTTPError as e:
        return StreamedRequest(False, 0.0, 0.0, 0, None, repr(e))
    return StreamedRequest(True, ttft, time.perf_counter() - start, int(meta.get("completion_tokens", 0)),
                           meta.get("spec_verify_ct"))


async def _closed_loop(base_url: str, prompts: Sequence[list[int]], max_tokens: int,
                       concurrency: int) -> tuple[list[StreamedRequest], float]:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, limits=limits) as client:
        start = time.perf_counter()
        results = await _bounded(concurrency, [_stream_one(client, p, max_tokens) for p in prompts])
        return results, time.perf_counter() - start


def closed_loop(base_url: str, prompts: Sequence[list[int]], max_tokens: int,
                concurrency: int) -> tuple[list[StreamedRequest], float]:
    """All prompts, at most `concurrency` in flight (a new one starts as one ends); (results, wall seconds)."""
    return asyncio.run(_closed_loop(base_url, prompts, max_tokens, concurrency))
