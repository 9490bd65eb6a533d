"""What every generation endpoint shares: model-name and length checks, admission, waiting, streaming
bookkeeping, metrics and the one log line per request."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from json import dumps
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse

from prism_sglang import __version__
from prism_sglang.engine import Generation, SamplingParams, SpeculativeEngine
from prism_sglang.serve.errors import ServeError, bad_request
from prism_sglang.serve.metrics import Metrics
from prism_sglang.serve.options import ServerConfig
from prism_sglang.serve.protocol import ErrorBody
from prism_sglang.serve.scheduler import Job, Scheduler, Update

logger = logging.getLogger("prism_sglang.serve")

DISCONNECT_POLL_SECONDS = 0.25  # how often a non-streaming handler checks whether its client is still there
GREEDY_BELOW_TEMPERATURE = 1e-6  # SGLang's _SAMPLING_EPS


def finish_reason(generation: Generation | None) -> str | None:
    return generation.finish_reason if generation is not None and generation.finished else None


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


@dataclass(frozen=True)
class Sampling:
    """Sampling fields as the API gave them (names differ per endpoint; meanings do not)."""

    max_new_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    stop: str | list[str] | None
    stop_token_ids: list[int] | None
    ignore_eos: bool
    seed: int | None
    logprobs: int | None = None  # record each output token's logprob and this many alternatives


@dataclass
class Call:
    """One request's bookkeeping on the HTTP side; `outcome` ends up in the metrics and the log line."""

    endpoint: str
    id: str
    job: Job
    start: float = field(default_factory=time.perf_counter)
    outcome: str = "cancelled"


class Service:
    def __init__(self, engine: SpeculativeEngine, config: ServerConfig) -> None:
        self.engine, self.config = engine, config
        # Shared with the worker thread: safe, because nothing ever changes the tokenizer's settings (padding,
        # truncation), the only operations that need exclusive access to a fast tokenizer.
        self.tokenizer = engine.tokenizer
        self.speculative = engine.draft is not None
        limit = engine.max_positions
        self.context_length = min(config.context_length or limit, limit)
        self.vocab_size = engine.target.vocab_size
        self.scheduler = Scheduler(engine, self.speculative, config.max_running, config.max_queue)
        self.metrics = Metrics(self.scheduler.counts, config.served_model_name)
        self.started = time.time()

    # -- checks -----------------------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.served_model_name:
            raise ServeError(404, f"the model '{model}' does not exist; this server serves "
                                  f"'{self.config.served_model_name}' (see GET /v1/models)",
                             param="model", code="model_not_found")

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        bad = next((i for i in ids if i >= self.vocab_size), None)
        if bad is not None:
            raise bad_request(f"token id {bad} is outside the vocabulary (size {self.vocab_size})", param)

    def sampling_params(self, prompt_len: int, s: Sampling, prompt_param: str, max_param: str) -> SamplingParams:
        """Engine parameters, after the length checks OpenAI makes (400 context_length_exceeded)."""
        if prompt_len == 0:
            raise bad_request("the prompt is empty", prompt_param)
        room = self.context_length - prompt_len
        if room < 1:
            raise bad_request(f"the prompt has {prompt_len} tokens; this model's context length is "
                              f"{self.context_length}, which leaves no room to generate", prompt_param,
                              code="context_length_exceeded")
        if s.max_new_tokens is not None and s.max_new_tokens > room:
            raise bad_request(f"this model's context length is {self.context_length} tokens; the request asks "
                              f"for {prompt_len + s.max_new_tokens} ({prompt_len} in the prompt, "
                              f"{s.max_new_tokens} to generate)", max_param, code="context_length_exceeded")
        if s.stop_token_ids:
            self.check_token_ids(s.stop_token_ids, "stop_token_ids")
        stop = (s.stop,) if isinstance(s.stop, str) else tuple(s.stop or ())
        # As SGLang: a temperature this close to 0 means greedy (dividing logits by it could overflow).
        temperature = s.temperature if s.temperature >= GREEDY_BELOW_TEMPERATURE else 0.0
        return SamplingParams(
            temperature=temperature, top_p=s.top_p, top_k=max(s.top_k, 0),
            max_new_tokens=s.max_new_tokens if s.max_new_tokens is not None else room, stop=stop,
            stop_token_ids=tuple(s.stop_token_ids or ()), ignore_eos=s.ignore_eos, seed=s.seed, logprobs=s.logprobs,
        )

    # -- a request's life -------------------------------------------------------------------------------
    def submit(self, endpoint: str, prefix: str, prompt_ids: list[int], params: SamplingParams,
               request_id: str | None = None) -> Call:
        call_id = request_id or f"{prefix}{uuid.uuid4().hex}"
        job = self.scheduler.submit(call_id, prompt_ids, params, self.config.request_timeout)
        return Call(endpoint, call_id, job)

    async def wait(self, call: Call, request: Request) -> Generation:
        """Until the job is done (non-streaming). Raises its ServeError, or ClientGone (job cancelled)."""
        while True:
            update = await call.job.next_update(DISCONNECT_POLL_SECONDS)
            if update is None:
                if await request.is_disconnected():
                    raise ClientGone
                continue
            if (done := self.outcome(call, update)) is not None:
                return done

    async def updates(self, call: Call):
        """Every snapshot of a streaming job up to and including the last one."""
        while True:
            update = await call.job.next_update()
            yield update
            if update.finished or update.error is not None:
                return

    def outcome(self, call: Call, update: Update) -> Generation | None:
        """The finished generation, or None while running; raises the job's error."""
        if update.error is not None:
            call.outcome = str(update.error.status)
            update.error.counted = True  # `close` records it
            raise update.error
        if update.finished:
            call.outcome = "200"
            return call.job.generation
        return None

    def close(self, call: Call) -> None:
        """Always called last: cancel the job if it is still running (client gone), record metrics, log."""
        job = call.job
        if not (job.latest.finished or job.latest.error is not None):
            self.scheduler.cancel(job)
        latency = time.perf_counter() - call.start
        ttft = job.first_token_at - job.created if job.first_token_at is not None else None
        stats = job.stats
        completion = len(job.latest.output_ids)
        self.metrics.observe(call.endpoint, call.outcome, len(job.prompt_ids), completion, latency, ttft, stats)
        finish = "abort" if job.latest.error is not None else finish_reason(job.generation) or "-"
        tau = f"{stats.tau:.2f}" if stats.cycles else "-"
        logger.info("%s %s status=%s prompt=%d completion=%d tau=%s latency=%.2fs ttft=%s finish=%s",
                    call.id, call.endpoint, call.outcome, len(job.prompt_ids), completion, tau, latency,
                    f"{ttft:.2f}s" if ttft is not None else "-", finish)

    # -- shared shapes ------------------------------------------------------------------------------------
    def spec_meta_info(self, generation: Generation) -> dict:
        """SGLang's per-request spec_* figures ({} without speculation or before the first cycle)."""
        return generation.stats.meta_info(self.engine.tree.draft_tokens) if self.speculative else {}

    def server_info(self) -> dict:
        """GET /server_info: SGLang's shape where a field exists there (flags + internal_states)."""
        running, waiting = self.scheduler.counts()
        state: dict = {"num_running_reqs": running, "num_waiting_reqs": waiting}
        if self.scheduler.avg_spec_accept_length is not None:
            state["avg_spec_accept_length"] = self.scheduler.avg_spec_accept_length
        c, tree = self.config, self.engine.tree
        return {
            "model_path": str(c.target_path), "tokenizer_path": str(c.target_path),
            "served_model_name": c.served_model_name, "context_length": self.context_length,
            "speculative_algorithm": "PRISM" if self.speculative else None,
            "speculative_draft_model_path": str(c.draft_path) if c.draft_path else None,
            "speculative_num_steps": tree.num_steps if self.speculative else None,
            "speculative_eagle_topk": tree.topk if self.speculative else None,
            "speculative_num_draft_tokens": tree.draft_tokens if self.speculative else None,
            "speculation": ("adaptive" if self.engine.adaptive else "always") if self.speculative else None,
            "max_running_requests": c.max_running, "max_queued_requests": c.max_queue,
            "request_timeout": c.request_timeout, "host": c.host, "port": c.port, "device": "cpu",
            "backend": "prism-sglang reference engine (PyTorch, CPU)", "version": __version__,
            "startup_time": self.started, "internal_states": [state],
        }


# -- HTTP plumbing shared by the endpoint modules ---------------------------------------------------------------
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 404, 413, 429, 500, 503, 504)}
SSE_DONE = "data: [DONE]\n\n"


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def sse(payload: dict[str, Any]) -> str:
    return f"data: {dumps(payload, ensure_ascii=False)}\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    # X-Accel-Buffering: proxies such as nginx would otherwise hold the tokens back.
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
