"""`prism-sglang serve` flags (argparse only, so `--help` stays fast) and the resolved `ServerConfig`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine imports torch: keep `prism-sglang --help` instant
    from prism_sglang.engine.generate import TreeSettings

DESCRIPTION = """\
Serve a target (by default SmolLM2-135M-Instruct, converted on first start) with a PRISM draft (by default
the one shipped in this package) on the CPU, behind an OpenAI-compatible API and SGLang's native /generate:
  POST /v1/chat/completions, POST /v1/completions, GET /v1/models, POST /generate,
  GET /health, GET /server_info, GET /metrics (Prometheus).
One engine thread runs all requests in turns (up to --max-running at once, --max-queue more waiting;
beyond that: HTTP 429 with Retry-After). A client that disconnects frees its slot at the next step.
A request still running --request-timeout seconds after it arrived is aborted: HTTP 504 with an OpenAI
error body (code "request_timeout"), or in a stream an `error` event then [DONE]; the log says finish=abort.
SIGTERM/SIGINT: stop accepting (503), let admitted requests finish for up to --shutdown-timeout seconds,
abort the rest (503, code "shutting_down"), exit 0."""

EXAMPLES = """\
examples:
  prism-sglang serve                                  # SmolLM2 + shipped PRISM draft on 127.0.0.1:30000
  prism-sglang serve --no-draft                       # target only (no speculation)
  prism-sglang serve --target DIR --draft DRAFT_DIR --num-steps 3 --port 8000
  curl http://127.0.0.1:30000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 32}'"""

DEFAULT_NUM_STEPS = 1  # fastest on this CPU: bench/results/2026-12-04-cpu/cycle-cost.json


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--target", metavar="DIR", default=None,
                       help="HF folder of the target model (default: SmolLM2-135M-Instruct, prepared on first use)")
    draft = model.add_mutually_exclusive_group()
    draft.add_argument("--draft", metavar="DIR", default=None,
                       help="PRISM (or EAGLE-3) draft checkpoint for the target (default with the default target: "
                            "the PRISM draft shipped in this package)")
    draft.add_argument("--no-draft", action="store_true", help="serve the target alone, without speculation")
    model.add_argument("--served-model-name", metavar="NAME", default=None,
                       help="model id in /v1/models, /server_info and in responses whose request names none "
                            "(default: the target folder's name, e.g. smollm2-135m-instruct); requests may name "
                            "any model, as with SGLang")
    model.add_argument("--context-length", metavar="N", type=int, default=None,
                       help="max prompt + completion tokens (default: the target's max_position_embeddings)")

    spec = parser.add_argument_group("speculative decoding (SGLang's flag meanings)")
    spec.add_argument("--num-steps", metavar="N", type=int, default=DEFAULT_NUM_STEPS,
                      help=f"draft steps per cycle = tree depth (default: {DEFAULT_NUM_STEPS})")
    spec.add_argument("--topk", metavar="K", type=int, default=1,
                      help="branching factor per draft step; 1 = a chain (default: 1)")
    spec.add_argument("--num-draft-tokens", metavar="N", type=int, default=None,
                      help="tokens verified per cycle, root included (default: num-steps + 1 for a chain; "
                           "required when --topk > 1)")
    spec.add_argument("--speculation", choices=["adaptive", "always"], default="adaptive",
                      help="adaptive: a request whose cycles do not pay (its recent tokens per cycle x a decode "
                           "step's time < a cycle's time, both measured as it runs) decodes without the draft "
                           "for 16..256 tokens, then tries cycles again; always: every step is a cycle "
                           "(default: adaptive; both lossless)")

    server = parser.add_argument_group("server")
    server.add_argument("--host", metavar="ADDRESS", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    server.add_argument("--port", metavar="PORT", type=int, default=30000, help="port (default: 30000, as SGLang)")
    server.add_argument("--max-running", metavar="N", type=int, default=4,
                        help="requests generated concurrently, in turns (default: 4)")
    server.add_argument("--max-queue", metavar="N", type=int, default=32,
                        help="requests waiting for a running slot before new ones get HTTP 429 (default: 32)")
    server.add_argument("--request-timeout", metavar="SECONDS", type=float, default=600.0,
                        help="seconds from arrival until a request is aborted; 0 = no limit (default: 600)")
    server.add_argument("--shutdown-timeout", metavar="SECONDS", type=float, default=30.0,
                        help="on SIGTERM/SIGINT, seconds to let admitted requests finish (default: 30)")
    server.add_argument("--max-request-bytes", metavar="BYTES", type=int, default=1 << 20,
                        help="largest accepted request body; larger ones get HTTP 413 (default: 1 MiB)")
    server.add_argument("--num-threads", metavar="N", type=int, default=1,
                        help="torch CPU threads (default: 1; for this 135M model, extra threads mostly add "
                             "synchronisation, and on a busy machine they are several times slower)")
    server.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log level (default: info; one line per request at info)")


@dataclass(frozen=True)
class ServerConfig:
    target_path: Path
    draft_path: Path | None
    served_model_name: str
    context_length: int | None
    tree: TreeSettings
    adaptive: bool = True
    host: str = "127.0.0.1"
    port: int = 30000
    max_running: int = 4
    max_queue: int = 32
    request_timeout: float | None = 600.0
    shutdown_timeout: float = 30.0
    max_request_bytes: int = 1 << 20


def check_serve_arguments(args: argparse.Namespace) -> None:
    """Reject nonsensical numbers before any model is loaded (ValueError with the flag's name)."""
    positive = {"--num-steps": args.num_steps, "--topk": args.topk, "--max-running": args.max_running,
                "--max-request-bytes": args.max_request_bytes, "--num-threads": args.num_threads}
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    optional_positive = {"--num-draft-tokens": args.num_draft_tokens, "--context-length": args.context_length}
    for flag, value in optional_positive.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    for flag, value in {"--max-queue": args.max_queue, "--request-timeout": args.request_timeout,
                        "--shutdown-timeout": args.shutdown_timeout}.items():
        if value < 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    tree_settings(args).check()


def tree_settings(args: argparse.Namespace) -> TreeSettings:
    from prism_sglang.engine.generate import TreeSettings

    return TreeSettings(num_steps=args.num_steps, topk=args.topk, num_draft_tokens=args.num_draft_tokens)


def server_config(args: argparse.Namespace, target: Path, draft: Path | None) -> ServerConfig:
    return ServerConfig(
        target_path=target, draft_path=draft, served_model_name=args.served_model_name or target.name,
        context_length=args.context_length, tree=tree_settings(args), adaptive=args.speculation == "adaptive",
        host=args.host, port=args.port,
        max_running=args.max_running, max_queue=args.max_queue, request_timeout=args.request_timeout or None,
        shutdown_timeout=args.shutdown_timeout, max_request_bytes=args.max_request_bytes,
    )
