"""Helpers for the bench/ tests: finding processes a benchmark may have left behind."""

from __future__ import annotations

import contextlib
import os
import time

import psutil


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
