"""Prometheus metrics (GET /metrics), in a registry of the app's own so that several apps never collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from prism_sglang.engine import SpecStats

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/generate": "generate"}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class Metrics:
    """Where a figure means what one of SGLang 0.5.17's does, it has SGLang's name (`sglang:*`) and its
    `model_name` label, so a dashboard built for SGLang works on this server; `prism_*` only for what SGLang
    lacks (requests by endpoint and outcome, accepted tokens, the per-request acceptance-length histogram)."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, counts: Callable[[], tuple[int, int]], model_name: str) -> None:
        r = self.registry = CollectorRegistry()
        model = {"model_name": model_name}

        def labelled(metric_class: type, name: str, doc: str, **kw: object) -> object:
            return metric_class(name, doc, list(model), registry=r, **kw).labels(**model)

        self.requests = Counter("prism_requests", "HTTP generation requests by endpoint and outcome",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = labelled(Counter, "sglang:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = labelled(Counter, "sglang:generation_tokens",
                                          "Number of generation tokens processed.")
        self.e2e_latency = labelled(Histogram, "sglang:e2e_request_latency_seconds",
                                    "Histogram of End-to-end request latency in seconds", buckets=LATENCY_BUCKETS)
        self.ttft = labelled(Histogram, "sglang:time_to_first_token_seconds",
                             "Histogram of time to first token in seconds.", buckets=LATENCY_BUCKETS)
        self.spec_verify = labelled(Counter, "sglang:spec_verify_calls",
                                    "Number of speculative decoding verification calls.")
        self.last_accept_length = labelled(Gauge, "sglang:spec_accept_length",
                                           "Mean acceptance length (accepted drafts + bonus token per cycle) of "
                                           "the most recently finished speculative request.")
        self.spec_accepted = Counter("prism_spec_accepted_tokens",
                                     "tokens accepted per cycle, bonus included (sum; / verify = accept length)",
                                     registry=r)
        self.spec_accept_length = Histogram("prism_spec_accept_length", "per-request mean accept length (tau)",
                                            buckets=(1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8), registry=r)
        running = labelled(Gauge, "sglang:num_running_reqs", "The number of running requests.")
        waiting = labelled(Gauge, "sglang:num_queue_reqs", "The number of requests in the waiting queue.")
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
            self.last_accept_length.set(stats.tau)

    def refused(self, path: str, status: int) -> None:
        """A generation request answered with an error before it reached the engine."""
        endpoint = ENDPOINTS.get(path)
        if endpoint is not None:
            self.requests.labels(endpoint, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
