"""Prometheus metrics (GET /metrics), in a registry of the app's own so that several apps never collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from prism_sglang.engine import SpecStats

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/generate": "generate"}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class Metrics:
    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("prism_requests", "HTTP generation requests by endpoint and outcome",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("prism_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("prism_generation_tokens", "generated tokens (all requests)", registry=r)
        self.e2e_latency = Histogram("prism_e2e_request_latency_seconds", "arrival to last token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("prism_time_to_first_token_seconds", "arrival to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.spec_verify = Counter("prism_spec_verify", "speculative verification cycles", registry=r)
        self.spec_accepted = Counter("prism_spec_accepted_tokens",
                                     "tokens accepted per cycle, bonus included (sum; / verify = accept length)",
                                     registry=r)
        self.spec_accept_length = Histogram("prism_spec_accept_length", "per-request mean accept length (tau)",
                                            buckets=(1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8), registry=r)
        running = Gauge("prism_num_running_reqs", "requests being generated", registry=r)
        waiting = Gauge("prism_num_queue_reqs", "requests waiting for a running slot", registry=r)
        running.set_function(lambda: counts()[0])
        waiting.set_function(lambda: counts()[1])

    def observe(self, endpoint: str, status: str, prompt_tokens: int, completion_tokens: int,
                latency: float | None, ttft: float | None, stats: SpecStats) -> None:
        self.requests.labels(endpoint, status).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        if latency is not None:
            self.e2e_latency.observe(latency)
        if ttft is not None:
            self.ttft.observe(ttft)
        if stats.cycles:
            self.spec_verify.inc(stats.cycles)
            self.spec_accepted.inc(sum(stats.accept_lengths) + stats.cycles)
            self.spec_accept_length.observe(stats.tau)

    def refused(self, path: str, status: int) -> None:
        """A generation request answered with an error before it reached the engine."""
        endpoint = ENDPOINTS.get(path)
        if endpoint is not None:
            self.requests.labels(endpoint, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
