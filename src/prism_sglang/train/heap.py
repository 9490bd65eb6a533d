"""CPU training's C heap: glibc keeps the pages a step frees, and bf16 steps of ever-new shapes grow it.

The shapes change every step (the scored cells, batch lengths): a bf16 matmul of a new shape (oneDNN) and its
temporaries land in new places of glibc's heap, which keeps the pages they free. Measured on a 2-core AVX-512 BF16
EPYC: 300 autocast matmuls [1,500-2,500 x 576] @ [576 x 8,192] with backward grew a process to 3.8 GB, the same
in fp32 (MKL) to 0.44 GB, at one shape 0.43 GB; bf16 training's peak resident memory went 3.4 -> 5.7 GB in its
first 57 steps, and 2026-12-04's 800-step run 7.2 -> 12.7 GB. `malloc_trim` hands the free pages back; after every
step it held training at ~1.8 GB between steps, but the next step then faults its pages in again, so `HeapTrim`
trims only once memory has grown 1 GiB past a step's working set (3 trims in 61 steps, peak 4.6 GB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None (another C library; or not Linux, without /proc/self/statm either)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name and Path("/proc/self/statm").is_file() else None
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class HeapTrim:
    """Hands the C heap's free pages back to the kernel whenever resident memory has grown more than `slack_bytes`
    past a step's working set (the resident memory after the first step since the last trim); nothing off glibc."""

    def __init__(self, slack_bytes: int = 2**30) -> None:
        self.slack_bytes = slack_bytes
        self.baseline: int | None = None  # the working set: resident bytes after the first step since a trim
        self.trims = 0

    def after_step(self) -> bool:
        """Trim if resident memory grew past the slack; returns whether it did."""
        if MALLOC_TRIM is None:
            return False
        resident = resident_bytes()
        if self.baseline is None:
            self.baseline = resident
        if resident <= self.baseline + self.slack_bytes:
            return False
        MALLOC_TRIM(0)
        self.baseline = None
        self.trims += 1
        return True
