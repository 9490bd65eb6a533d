"""Real SGLang 0.5.17 servers on SGLang's own CPU engine, for tests/test_sglang_cpu_server.py (see README.md).

`sglang_cpu_server` starts `python -m sglang.launch_server` with bench/'s sglang-cpu flags and environment (the
test site with the plain-PyTorch sgl_kernel stand-ins on PYTHONPATH), on 127.0.0.1 and a free port, waits for
/health within a bounded time and stops it by PID (its whole process group) however the block ends. The log
stays in the given folder; a server that does not come up raises with the end of it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import free_port
from bench.launch import Config, Tree, sglang_cpu_command, sglang_cpu_env
from bench.server import ServerProcess, ServerSpec

HOST = "127.0.0.1"
CHAIN = Tree(num_steps=3, topk=1, num_draft_tokens=4)
STARTUP_TIMEOUT = 600.0  # imports and model loading on a busy 2-core machine; a healthy start takes ~30-60 s


def server_spec(name: str, target: Path, log_dir: Path, algorithm: str | None = None, draft: Path | None = None,
                tree: Tree = CHAIN, max_running: int = 8, extra: Sequence[str] = ()) -> ServerSpec:
    port = free_port(HOST)
    command = sglang_cpu_command(sys.executable, str(target), Config(name, name, algorithm, draft), tree, HOST,
                                 port, max_running, list(extra))
    env = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **sglang_cpu_env(threads=1)}
    return ServerSpec(name, command, HOST, port, log_dir / f"server-{name}.log", env, STARTUP_TIMEOUT)


@contextlib.contextmanager
def sglang_cpu_server(*args: Any, **kwargs: Any) -> Iterator[ServerProcess]:
    """`server_spec(...)`'s server, healthy, for the block."""
    with ServerProcess(server_spec(*args, **kwargs)) as server:
        yield server
