"""Start a server as a subprocess, wait for it, watch its memory, stop it: always, on errors and Ctrl-C too.

The server runs in its own process group (session), so that stopping it reaches every process it started
(SGLang's scheduler and detokenizer, for one) and so that a Ctrl-C in the terminal reaches only the harness,
which then stops the server in order. Every process of the tree ever seen is remembered, and whatever
survives SIGTERM is killed, so that no benchmark leaves a server behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from bench.common import BenchError, gpu_names

LOG_TAIL_LINES = 40


class ServerStartError(BenchError):
    """The server did not become healthy; the message carries the end of its log."""


@dataclass
class ServerSpec:
    name: str
    command: list[str]
    host: str
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    startup_timeout: float = 600.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class MemoryMonitor:
    """Peak memory while a server runs, sampled in a thread: GPU memory in use (nvidia-smi, the whole device)
    on a GPU host, otherwise the resident set of the server's process tree (psutil). `kind` says which."""

    def __init__(self, root_pid: int, use_gpu: bool, interval: float = 0.5) -> None:
        self.kind = "gpu_memory_used_nvidia_smi" if use_gpu else "cpu_rss_server_process_tree"
        self._root_pid = root_pid
        self._interval = interval
        self._overall = 0.0
        self._window = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-monitor", daemon=True)
        self.seen: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def reset_window(self) -> None:
        """Start a new measuring window (one benchmark run); `window_peak_mib` is the peak since then. It
        starts from a sample taken now, so a run shorter than the interval still gets a figure."""
        value = self._sample()
        with self._lock:
            self._window = value
            self._overall = max(self._overall, value)

    @property
    def overall_peak_mib(self) -> float:
        return round(self._overall, 1)

    @property
    def window_peak_mib(self) -> float:
        return round(self._window, 1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self._sample()
            with self._lock:
                self._overall = max(self._overall, value)
                self._window = max(self._window, value)
            self._stop.wait(self._interval)

    def _sample(self) -> float:
        tree = self._tree()
        if self.kind.startswith("gpu"):
            return _gpu_memory_used_mib()
        total = 0
        for process in tree:
            with contextlib.suppress(psutil.Error):  # it ended between listing and reading
                total += process.memory_info().rss
        return total / 2**20

    def _tree(self) -> list[psutil.Process]:
        """The server and its descendants now; every one is also remembered for `ServerProcess.stop`."""
        try:
            root = psutil.Process(self._root_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        for process in tree:
            self.seen.setdefault(process.pid, process)
        return tree


def _gpu_memory_used_mib() -> float:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return float(sum(float(x) for x in out.split()))
    except (subprocess.SubprocessError, OSError, ValueError):
        return 0.0


class ServerProcess:
    """`with ServerProcess(spec) as server:` starts the server and waits for /health; leaving the block stops
    it (SIGTERM to its process group, SIGKILL for whatever remains after `stop_timeout`)."""

    def __init__(self, spec: ServerSpec, stop_timeout: float = 60.0) -> None:
        self.spec = spec
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.memory: MemoryMonitor | None = None
        self.startup_seconds: float | None = None
        self._started_at = 0.0

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        spec = self.spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with spec.log.open("wb") as log:
            log.write(("$ " + " ".join(spec.command) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(spec.command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **spec.env}, start_new_session=True)
        self._started_at = time.monotonic()
        self.memory = MemoryMonitor(self.process.pid, use_gpu=bool(gpu_names()))
        self.memory.start()

    def wait_healthy(self) -> None:
        """Poll GET /health until 200; fail early if the process exits, and after `startup_timeout` seconds."""
        assert self.process is not None
        spec = self.spec
        deadline = self._started_at + spec.startup_timeout
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerStartError(f"the '{spec.name}' server exited with status {self.process.returncode} "
                                           f"before it was ready. End of {spec.log}:\n{self.log_tail()}")
                try:
                    if client.get(spec.url + "/health").status_code == 200:
                        self.startup_seconds = round(time.monotonic() - self._started_at, 1)
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        raise ServerStartError(f"the '{spec.name}' server was not healthy within {spec.startup_timeout:.0f} s "
                               f"(--startup-timeout). End of {spec.log}:\n{self.log_tail()}")

    def server_info(self) -> dict[str, Any]:
        response = httpx.get(self.spec.url + "/server_info", timeout=30.0)
        response.raise_for_status()
        return response.json()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.spec.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("  | " + line for line in text.splitlines()[-lines:])

    def stop(self) -> None:
        """Idempotent. SIGTERM to the group, wait, SIGKILL to the group if it hangs; then SIGTERM/SIGKILL to
        every process ever seen in the tree that still runs (one that left the group, or outlived a leader
        that exited on its own). The group is signalled only while its leader lives, so never a reused id."""
        process = self.process
        if process is None:
            return
        known = list(self.memory.seen.values()) if self.memory else []
        if self.memory:
            self.memory.stop()
        with contextlib.suppress(psutil.Error):
            known += psutil.Process(process.pid).children(recursive=True)
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(30)
        _end_survivors([p for p in known if p.pid != process.pid], self.stop_timeout)
        self.process = None

def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _end_survivors(processes: list[psutil.Process], timeout: float) -> None:
    alive = [p for p in processes if _is_running(p)]
    for p in alive:
        _send(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(alive, timeout=min(timeout, 10))
    for p in alive:
        _send(p, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)


def _send(process: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        process.send_signal(sig)  # psutil checks the process is the one it saw (pid and start time)


def _is_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
