"""Drive `sglang.benchmark.serving` (SGLang 0.5.17) in-process, one run at a time.

In-process rather than as a subprocess so that each request's acceptance can be kept: the module's request
function reads `meta_info.spec_accept_length` into its RequestFuncOutput but writes it to no output file.
`RequestRecorder` wraps the request function in `ASYNC_REQUEST_FUNCS` for the duration of a run and keeps
every output; nothing else of the module is changed, so throughput and latency are its own figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from argparse import Namespace
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.acceptance import RequestAcceptance
from bench.common import BenchError, add_torchvision_stub

BACKEND = "sglang"  # the native /generate API: the request function that sees meta_info
PERCENTILES = ("mean", "median", "p90", "p95", "p99")


def import_serving() -> ModuleType:
    add_torchvision_stub()
    try:
        import sglang.benchmark.serving as serving
    except ImportError as e:
        raise BenchError(f"cannot import sglang.benchmark.serving (needs sglang 0.5.17 and its benchmark "
                         f"dependencies: datasets, aiohttp): {e}") from e
    return serving


def parse_benchmark_args(serving: ModuleType, argv: list[str]) -> Namespace:
    """`argv` parsed by the module's own command line, so that every default and check is SGLang's: its
    `cli_main` runs with `run_benchmark` swapped for a function that only keeps the parsed arguments."""
    captured: list[Namespace] = []
    real_run, real_argv = serving.run_benchmark, sys.argv
    serving.run_benchmark = captured.append
    sys.argv = ["sglang.benchmark.serving", *argv]
    try:
        serving.cli_main()
    except SystemExit as e:
        raise BenchError(f"sglang.benchmark.serving rejected its arguments {argv}") from e
    finally:
        serving.run_benchmark, sys.argv = real_run, real_argv
    return captured[0]


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run: one server, one prompt file, one concurrency, one temperature."""

    base_url: str
    dataset: Path
    requests: int
    output_len: int
    concurrency: int
    temperature: float
    tokenizer: str
    seed: int
    warmup_requests: int
    raw_output: Path

    def argv(self) -> list[str]:
        return [
            "--backend", BACKEND, "--base-url", self.base_url, "--dataset-name", "custom",
            "--dataset-path", str(self.dataset), "--num-prompts", str(self.requests),
            "--sharegpt-output-len", str(self.output_len), "--max-concurrency", str(self.concurrency),
            "--request-rate", "inf", "--temperature", str(self.temperature), "--model", self.tokenizer,
            "--tokenizer", self.tokenizer, "--seed", str(self.seed), "--warmup-requests", str(self.warmup_requests),
            "--output-file", str(self.raw_output), "--disable-tqdm", "--ready-check-timeout-sec", "0",
        ]


class RequestRecorder:
    """Wraps a request function and keeps each output in the order the requests *started*: the module awaits
    all warm-up requests before it starts the measured ones, so the first `warmup` entries are the warm-up."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.outputs: list[Any] = []

    async def __call__(self, request_func_input: Any, pbar: Any = None) -> Any:
        slot = len(self.outputs)
        self.outputs.append(None)
        output = await self.inner(request_func_input=request_func_input, pbar=pbar)
        self.outputs[slot] = output
        return output


@contextlib.contextmanager
def recording(serving: ModuleType) -> Iterator[RequestRecorder]:
    funcs = serving.ASYNC_REQUEST_FUNCS
    recorder = RequestRecorder(funcs[BACKEND])
    funcs[BACKEND] = recorder
    try:
        yield recorder
    finally:
        funcs[BACKEND] = recorder.inner


def run(serving: ModuleType, spec: RunSpec, log: Path) -> tuple[dict[str, Any], list[Any]]:
    """Run the benchmark; its printout goes to `log`. Returns the module's result (metrics + per-request
    lists) and the measured requests' outputs (its RequestFuncOutput objects, in start order)."""
    args = parse_benchmark_args(serving, spec.argv())
    spec.raw_output.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
            recording(serving) as recorder:
        result = serving.run_benchmark(args)
    measured = recorder.outputs[spec.warmup_requests:]
    if len(measured) != spec.requests:
        raise BenchError(f"expected {spec.requests} measured requests, recorded {len(measured)} (see {log})")
    return result, measured


def acceptance_records(outputs: list[Any]) -> list[RequestAcceptance]:
    return [RequestAcceptance(o.output_len if o.success else 0, o.spec_accept_length or 0.0) for o in outputs]


def merge_rounds(serving: ModuleType, rounds: list[tuple[dict[str, Any], list[Any]]],
                 tokenizer: str) -> dict[str, Any]:
    """One result for a run measured in rounds (other servers ran between them): the module's own
    `calculate_metrics` over every round's requests, with the rounds' durations summed (the time between
    rounds belonged to other servers). A run of one round keeps the module's result as it is."""
    if len(rounds) == 1:
        return rounds[0][0]
    outputs = [o for _, measured in rounds for o in measured]
    duration = sum(result["duration"] for result, _ in rounds)
    metrics, _ = serving.calculate_metrics(None, outputs, duration, serving.get_tokenizer(tokenizer), BACKEND)
    return {**asdict(metrics), "duration": duration, "total_output_tokens": metrics.total_output,
            "errors": [o.error for o in outputs], "itls": [o.itl for o in outputs]}


def latency_summary(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """TTFT / TPOT / ITL / E2E percentiles in ms, as the module computed them; ITL also gets its maximum."""
    summary = {name: {p: result[f"{p}_{name}_ms"] for p in PERCENTILES} for name in ("ttft", "tpot", "itl")}
    summary["e2e_latency"] = {p: result[f"{p}_e2e_latency_ms"] for p in PERCENTILES}
    itls = [x for per_request in result.get("itls", []) for x in per_request]
    summary["itl"]["max"] = max(itls) * 1000 if itls else 0.0
    return summary


# -- does the request function send what we ask? --------------------------------------------------------------
class _CaptureHandler(BaseHTTPRequestHandler):
    """Answers one /generate like SGLang (one SSE event, then [DONE]) and keeps the request body."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.bodies.append(json.loads(body))  # type: ignore[attr-defined]
        event = {"text": "x", "output_ids": [0], "meta_info": {"completion_tokens": 1}}
        reply = f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def sent_sampling_params(serving: ModuleType, spec: RunSpec) -> dict[str, Any]:
    """Send one request through the module's request function to a local capture server and check that the
    body carries the temperature and output length asked for; returns the `sampling_params` it sent.
    The request function reads them from module globals, so a version that dropped or renamed one would
    otherwise go unnoticed and every temperature would silently be the server's default."""
    args = parse_benchmark_args(serving, spec.argv())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CaptureHandler)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        serving.set_global_args(args)
        request = serving.RequestFuncInput(
            prompt="probe", api_url=f"http://127.0.0.1:{server.server_port}/generate", prompt_len=1,
            output_len=spec.output_len, model=spec.tokenizer, lora_name=None, image_data=None, extra_request_body={})
        output = asyncio.run(serving.ASYNC_REQUEST_FUNCS[BACKEND](request_func_input=request))
    finally:
        server.shutdown()
        server.server_close()
    if not output.success or not server.bodies:  # type: ignore[attr-defined]
        raise BenchError(f"the request-function check failed: {output.error}")
    params = server.bodies[0].get("sampling_params", {})  # type: ignore[attr-defined]
    expected = {"temperature": spec.temperature, "max_new_tokens": spec.output_len}
    wrong = {k: params.get(k) for k, v in expected.items() if params.get(k) != v}
    if wrong:
        raise BenchError(f"sglang.benchmark.serving's request function sends {wrong}, not {expected}: the runs "
                         "would not measure what they claim")
    return params
