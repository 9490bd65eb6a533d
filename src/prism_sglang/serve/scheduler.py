"""One worker thread owns the engine and round-robins `Generation.step()` over the active requests.

The engine is single-threaded and not re-entrant, so HTTP handlers never touch it: they `submit()` a `Job` and
wait on it. The worker admits queued jobs up to `max_running`, then gives every active job one step (the prefill,
or one speculative cycle) per round, so concurrent clients all make progress and streams interleave. Between
steps it drops jobs whose client went away (`cancel()`) or whose deadline passed. A job's progress is published
as a snapshot (`Job.latest`) plus an asyncio.Event set on the handler's loop: a slow reader simply sees several
steps' tokens at once, and no update can be lost to a cancelled wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from prism_sglang.engine import Generation, SamplingParams, SpecStats, SpeculativeEngine
from prism_sglang.serve.errors import ServeError, internal_error, overloaded, shutting_down, timed_out

logger = logging.getLogger("prism_sglang.serve")


@dataclass(frozen=True)
class Update:
    """What a job has produced so far. `error` set: the job ended without a normal finish."""

    output_ids: tuple[int, ...]
    finished: bool = False
    error: ServeError | None = None


@dataclass(eq=False)
class Job:
    """One admitted request. The worker writes `generation`/`latest`; the handler reads them after `changed`."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    deadline: float | None  # time.monotonic() by which the job must end
    timeout: float | None
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    generation: Generation | None = None
    latest: Update = Update(())
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False

    async def next_update(self, poll_seconds: float | None = None) -> Update | None:
        """The newest snapshot once there is news; None if `poll_seconds` pass without any."""
        try:
            await asyncio.wait_for(self.changed.wait(), poll_seconds)
        except TimeoutError:
            return None
        self.changed.clear()
        return self.latest

    @property
    def stats(self) -> SpecStats:
        return self.generation.stats if self.generation is not None else SpecStats()

    def _publish(self, update: Update) -> None:
        """Called by the worker thread: hand the snapshot to the handler's event loop."""
        if update.output_ids and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.latest = update
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server stopped): nobody waits any more
            self.loop.call_soon_threadsafe(self.changed.set)


class Scheduler:
    """Bounded admission (`max_running` active + `max_queue` waiting) and the worker thread."""

    def __init__(self, engine: SpeculativeEngine, speculative: bool, max_running: int, max_queue: int) -> None:
        if max_running < 1 or max_queue < 0:
            raise ValueError("max_running must be >= 1 and max_queue >= 0")
        self.engine, self.speculative = engine, speculative
        self.max_running, self.max_queue = max_running, max_queue
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._accepting = True
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prism-engine", daemon=True)
        # Totals over all finished requests, for /server_info (SGLang's avg_spec_accept_length).
        self.spec_cycles = 0
        self.spec_accepted_tokens = 0  # accepted drafts + the bonus token, per cycle

    # -- called from the event loop -----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams,
               timeout: float | None) -> Job:
        """Queue a request, or raise 429 (full) / 503 (shutting down) at once: never block the caller."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout if timeout else None
        with self._cond:
            if not self._accepting:
                raise shutting_down()
            if len(self._waiting) + len(self._active) >= self.max_running + self.max_queue:
                raise overloaded()
            job = Job(request_id, list(prompt_ids), params, loop, deadline, timeout)
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: the worker drops the job before its next step."""
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def counts(self) -> tuple[int, int]:
        """(running, waiting)."""
        with self._cond:
            return len(self._active), len(self._waiting)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def avg_spec_accept_length(self) -> float | None:
        return self.spec_accepted_tokens / self.spec_cycles if self.spec_cycles else None

    def stop_accepting(self) -> None:
        """Graceful shutdown, phase 1: refuse new requests (503); admitted ones keep running."""
        with self._cond:
            self._accepting = False

    def abort_all(self) -> None:
        """Phase 2 (never blocks; any thread): end every admitted job with 503 and let the worker exit."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """`abort_all`, then wait for the worker (it finishes the step it is in)."""
        self.abort_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the worker thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.no_grad():  # grad mode is per thread: the engine's own no_grad scopes do not cover ours
            while True:
                jobs = self._next_round()
                if jobs is None:
                    return
                for job in jobs:
                    self._advance(job)

    def _next_round(self) -> list[Job] | None:
        """Admit waiting jobs and return the active ones; sleep while there are none; None = exit."""
        with self._cond:
            while True:
                if self._stopping:
                    for job in [*self._active, *self._waiting]:
                        self._end(job, shutting_down())
                    self._active.clear()
                    self._waiting.clear()
                    return None
                self._drop_dead_waiting()
                while self._waiting and len(self._active) < self.max_running:
                    self._active.append(self._waiting.popleft())
                if self._active:
                    return list(self._active)
                self._cond.wait()

    def _drop_dead_waiting(self) -> None:
        """Free queue slots of waiting jobs whose client left or whose deadline passed."""
        now = time.monotonic()
        for job in list(self._waiting):
            if job.cancelled or (job.deadline is not None and now > job.deadline):
                self._waiting.remove(job)
                self._end(job, timed_out(job.timeout or 0) if not job.cancelled else None)

    def _advance(self, job: Job) -> None:
        if job.cancelled:
            self._retire(job, None)
            return
        if job.deadline is not None and time.monotonic() > job.deadline:
            self._retire(job, timed_out(job.timeout or 0))
            return
        try:
            if job.generation is None:
                job.generation = self.engine.start(job.prompt_ids, job.params, speculative=self.speculative)
            emitted = job.generation.step()
        except Exception as e:  # one request's crash must not take the server down
            logger.exception("request %s failed inside the engine", job.id)
            self._retire(job, internal_error(e))
            return
        generation = job.generation
        if generation.finished:
            self._retire(job, None)
        elif emitted:
            job._publish(Update(tuple(generation.output_ids)))

    def _retire(self, job: Job, error: ServeError | None) -> None:
        with self._cond:
            if job in self._active:
                self._active.remove(job)
        self._end(job, error)

    def _end(self, job: Job, error: ServeError | None) -> None:
        stats = job.stats
        self.spec_cycles += stats.cycles
        self.spec_accepted_tokens += sum(stats.accept_lengths) + stats.cycles
        output = tuple(job.generation.output_ids) if job.generation is not None else ()
        job._publish(Update(output, finished=error is None and not job.cancelled, error=error))
