"""`prepare-data --server URL`: the target's answers regenerated through any OpenAI-compatible endpoint (SGLang
on GPUs, `prism-sglang serve` here) instead of in-process decoding, with requests in flight, retries with
backoff, and every finished conversation appended at once (a killed run resumes where it stopped).

A request that fails for good (retries spent, or a 4xx other than 429) loses nothing: its conversation is not
written, is reported with the reason, and the next run asks for it again.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
from tqdm import tqdm

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
FIRST_BACKOFF_S = 1.0  # the first retry's wait; it doubles per retry, at most 60 s, with jitter


class ServerError(RuntimeError):
    """An endpoint that cannot be used at all (unreachable, no model): stops the run before any request."""


@dataclass(frozen=True)
class ServerSettings:
    url: str  # the server's root, e.g. http://127.0.0.1:30000 (the /v1 routes are appended)
    model: str | None = None  # None: the first of GET /v1/models
    concurrency: int = 16
    retries: int = 5
    timeout_s: float = 600.0


@dataclass(frozen=True)
class Job:
    """One conversation to answer: its key in generated.jsonl, its leading messages, its user turns."""

    key: str
    source: str
    id: str
    system: list[dict[str, str]]
    user_turns: list[str]
    seeds: list[int]  # one per turn: reproducible sampling where the server honours `seed`


@dataclass
class Failure:
    key: str
    reason: str


def v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def resolve_model(settings: ServerSettings) -> str:
    if settings.model:
        return settings.model
    try:
        response = httpx.get(f"{v1(settings.url)}/models", timeout=30)
        response.raise_for_status()
        models = [m["id"] for m in response.json()["data"]]
    except (httpx.HTTPError, KeyError, ValueError) as e:
        raise ServerError(f"{settings.url}: GET /v1/models failed ({e}); is it an OpenAI-compatible server? "
                          "(or give --server-model)") from e
    if not models:
        raise ServerError(f"{settings.url}: /v1/models lists no model")
    return models[0]


class ServerAnswerer:
    def __init__(self, settings: ServerSettings, sampling: dict[str, Any], log: Callable[[str], None] = print,
                 progress: bool = True) -> None:
        self.settings, self.sampling, self.log, self.progress = settings, sampling, log, progress
        self.model = resolve_model(settings)
        self.retried = 0
        self.completion_tokens = 0

    def run(self, jobs: Sequence[Job], out: TextIO) -> list[Failure]:
        """Answer every job, appending each finished conversation to `out`; returns the ones that failed."""
        return asyncio.run(self._run(list(jobs), out))

    async def _run(self, jobs: list[Job], out: TextIO) -> list[Failure]:
        failures: list[Failure] = []
        limit = asyncio.Semaphore(self.settings.concurrency)
        started = time.monotonic()
        limits = httpx.Limits(max_connections=self.settings.concurrency)
        with tqdm(total=len(jobs), disable=not self.progress, desc="answer", unit="conv", dynamic_ncols=True) as bar:
            async with httpx.AsyncClient(timeout=self.settings.timeout_s, limits=limits) as client:

                async def one(job: Job) -> None:
                    async with limit:
                        try:
                            record = await self._conversation(client, job)
                        except _Failed as e:
                            failures.append(Failure(job.key, str(e)))
                            self.log(f"failed {job.key}: {e}")
                        else:
                            out.write(json.dumps(record) + "\n")
                            out.flush()
                    bar.update(1)
                    elapsed = max(1e-6, time.monotonic() - started)
                    bar.set_postfix(req_s=f"{bar.n / elapsed:.2f}", tok_s=f"{self.completion_tokens / elapsed:.0f}",
                                    retried=self.retried, failed=len(failures))

                await asyncio.gather(*(one(job) for job in jobs))
        return failures

    async def _conversation(self, client: httpx.AsyncClient, job: Job) -> dict[str, Any]:
        messages = list(job.system)
        truncated = False
        for turn, (text, seed) in enumerate(zip(job.user_turns, job.seeds, strict=True)):
            messages.append({"role": "user", "content": text})
            body = {"model": self.model, "messages": messages, **self.sampling, "seed": seed}
            choice = await self._request(client, body, f"{job.key} turn {turn + 1}")
            truncated |= choice.get("finish_reason") == "length"
            messages = [*messages, {"role": "assistant", "content": choice["message"]["content"] or ""}]
        return {"key": job.key, "source": job.source, "id": job.id, "messages": messages, "truncated": truncated}

    async def _request(self, client: httpx.AsyncClient, body: dict[str, Any], what: str) -> dict[str, Any]:
        s = self.settings
        for attempt in range(s.retries + 1):
            try:
                response = await client.post(f"{v1(s.url)}/chat/completions", json=body)
                if response.status_code == 200:
                    data = response.json()
                    self.completion_tokens += int((data.get("usage") or {}).get("completion_tokens") or 0)
                    return data["choices"][0]
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRYABLE_STATUS:
                    raise _Failed(problem)
            except (httpx.TransportError, ValueError, KeyError, IndexError) as e:
                problem = f"{type(e).__name__}: {e}"
            if attempt == s.retries:
                raise _Failed(f"{problem} (after {s.retries} retries)")
            self.retried += 1
            await asyncio.sleep(min(60.0, FIRST_BACKOFF_S * 2**attempt) * (0.5 + random.random() / 2))
        raise _Failed("no attempt")  # retries >= 0 always makes one


class _Failed(Exception):
    """This conversation could not be answered (the reason is the message)."""


def write_failures(path: Path, failures: Sequence[Failure]) -> None:
    path.write_text("".join(json.dumps({"key": f.key, "reason": f.reason}) + "\n" for f in failures))
