"""`prism-sglang serve`: resolve the models (preparing SmolLM2 on first use), load the engine, run uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from prism_sglang.serve.options import ServerConfig, check_serve_arguments, server_config

if TYPE_CHECKING:
    from prism_sglang.engine import SpeculativeEngine
    from prism_sglang.serve.scheduler import Scheduler

logger = logging.getLogger("prism_sglang.serve")
# After the drain window and the abort, handlers need a moment to send their error; past this uvicorn cancels them.
SHUTDOWN_BACKSTOP_SECONDS = 10.0


class ServeSetupError(RuntimeError):
    """The server cannot start as asked; the message says what to change."""


def resolve_models(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(target, draft) folders. The shipped draft is the default only for the default target."""
    if args.target is not None:
        target = Path(args.target)
        if not (target / "config.json").is_file():
            raise ServeSetupError(f"--target {target}: no config.json there (expected an HF model folder)")
    else:
        from prism_sglang.prepare_model import prepare_smollm2

        target = prepare_smollm2(log=lambda message: print(message, flush=True))
    if args.no_draft:
        return target, None
    if args.draft is not None:
        return target, Path(args.draft)
    if args.target is not None:
        raise ServeSetupError("--target is given without a draft: pass --draft DIR (a PRISM or EAGLE-3 draft "
                              "trained for that target) or --no-draft to serve it without speculation")
    return target, _shipped_draft()


def _shipped_draft() -> Path:
    from prism_sglang.resources import DEFAULT_DRAFT, shipped_draft_dir

    try:
        return shipped_draft_dir(DEFAULT_DRAFT)
    except FileNotFoundError as e:
        raise ServeSetupError(
            f"the default PRISM draft '{DEFAULT_DRAFT}' is not in this installation ({e}).\n"
            f"Pass a draft for SmolLM2-135M-Instruct with --draft DIR, or serve the target alone with --no-draft."
        ) from None


def load(config: ServerConfig) -> SpeculativeEngine:
    """The engine (float32 on CPU: greedy output then matches the engine's target-only decoding exactly)."""
    from prism_sglang.checkpoint import CheckpointError
    from prism_sglang.config import ConfigError
    from prism_sglang.engine.loading import load_engine

    print(f"loading target {config.target_path}" + (f" and draft {config.draft_path}" if config.draft_path else
                                                      " (no draft: target-only decoding)"), flush=True)
    try:
        return load_engine(config.target_path, config.draft_path, config.tree, adaptive=config.adaptive)
    except (CheckpointError, ConfigError, OSError) as e:
        raise ServeSetupError(str(e)) from e


def serve(args: argparse.Namespace) -> int:
    """Entry point of `prism-sglang serve`; returns the exit status."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        check_serve_arguments(args)
        config = server_config(args, *resolve_models(args))
        import torch

        torch.set_num_threads(args.num_threads)
        engine = load(config)
    except (ServeSetupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(engine, config, args.log_level)
    return 0


class GracefulServer(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT draining the scheduler first and a clean exit status afterwards."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, drain_seconds: float) -> None:
        super().__init__(config)
        self.scheduler, self.drain_seconds = scheduler, drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # First signal: refuse new requests at once (503, /health too) and give the admitted ones
        # --shutdown-timeout seconds; then abort the rest, whose clients get a 503 error (event), so uvicorn's
        # own wait for open connections ends by itself.
        if not self.should_exit:
            self.scheduler.stop_accepting()
            timer = threading.Timer(self.drain_seconds, self.scheduler.abort_all)
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn re-raises a handled SIGTERM/SIGINT after shutdown, which would end the process with a
                # signal status; the shutdown was clean, so exit 0 instead.
                self._captured_signals.clear()


def run(engine: SpeculativeEngine, config: ServerConfig, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT."""
    from prism_sglang.serve.app import create_app

    app = create_app(engine, config)
    mode = (f"PRISM draft, {config.tree.num_steps} steps x topk {config.tree.topk}, "
            f"{config.tree.draft_tokens} draft tokens, speculation {'adaptive' if engine.adaptive else 'always'}"
            if engine.draft is not None else "target only")
    logger.info("serving '%s' (%s) on http://%s:%d", config.served_model_name, mode, config.host, config.port)
    uvicorn_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, access_log=False,
                                    timeout_graceful_shutdown=config.shutdown_timeout + SHUTDOWN_BACKSTOP_SECONDS)
    GracefulServer(uvicorn_config, app.state.service.scheduler, config.shutdown_timeout).run()
