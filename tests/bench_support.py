"""Helpers for the bench/ tests: running a benchmark script, finding processes a benchmark may have left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench.common import REPO


def processes_mentioning(text: str, settle: float = 0.5) -> list[str]:
    """Command lines of live processes (other than this one) that contain `text`, e.g. a test's tmp path that
    every server it started has on its command line. Orphans count too: they are found by name, not parentage."""
    time.sleep(settle)
    found = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            line = " ".join(p.info["cmdline"] or [])
            if p.pid != os.getpid() and text in line and p.status() != psutil.STATUS_ZOMBIE:
                found.append(line)
    return found


def run_bench_script(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`python SCRIPT ARGS` from the repository root, output captured; fails the test if it runs over `timeout`."""
    process = subprocess.Popen([sys.executable, script, *args], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Ctrl-C, not a kill: the script then stops its servers, which a killed one would leave running (and
        # every later test would count them as leftovers).
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=120)
        finally:
            process.kill()
        pytest.fail(f"{script} ran over {timeout} s and was interrupted:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
