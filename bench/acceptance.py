"""Acceptance figures from SGLang's per-request `meta_info` (0.5.17 definitions, notes/sglang.md §6).

Per request SGLang reports `spec_accept_length = completion_tokens / spec_verify_ct` (bonus token included)
and `spec_correct_drafts_histogram[a]` = the number of verification cycles that accepted exactly `a` drafted
tokens (bonus not counted). /server_info's `avg_spec_accept_length` is cumulative since the server started,
warm-up included, and lags by up to --decode-log-interval iterations: it is never used for per-run numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestAcceptance:
    """What a throughput run keeps of one request: its output tokens and its accept length (0 = none)."""

    output_len: int
    spec_accept_length: float


def run_acceptance(requests: Iterable[RequestAcceptance]) -> dict[str, Any] | None:
    """The run's acceptance length, pooled over cycles:

        tau_run = sum_i output_len_i / sum_i verify_ct_i,  with  verify_ct_i = output_len_i / spec_accept_length_i

    i.e. all output tokens over all verification cycles of the run, exactly what SGLang's per-request figure
    is for one request (a plain mean of per-request figures would weight a 10-token request like a 1000-token
    one). Requests without speculation figures (failed, or a server without speculation) are left out;
    None when no request has them."""
    tokens = 0
    cycles = 0.0
    counted = 0
    for r in requests:
        if r.output_len > 0 and r.spec_accept_length > 0:
            tokens += r.output_len
            cycles += r.output_len / r.spec_accept_length
            counted += 1
    if not counted:
        return None
    return {"tau": tokens / cycles, "requests": counted, "output_tokens": tokens, "verify_cycles": round(cycles)}


def merge_histograms(histograms: Iterable[Sequence[int]]) -> list[int]:
    merged: list[int] = []
    for h in histograms:
        if len(h) > len(merged):
            merged += [0] * (len(h) - len(merged))
        for a, count in enumerate(h):
            merged[a] += count
    return merged


def conditional_acceptance(histogram: Sequence[int], depth: int) -> list[float | None]:
    """Position i = 1..depth: P(accepted >= i | accepted >= i - 1) over the cycles of `histogram`, the paper's
    "step-wise conditional acceptance rate" (Figure 1). None where no cycle reached position i - 1."""
    rates: list[float | None] = []
    for i in range(1, depth + 1):
        reached = sum(histogram[i - 1:])
        rates.append(sum(histogram[i:]) / reached if reached else None)
    return rates


def tau_from_histogram(histogram: Sequence[int]) -> float | None:
    """Mean accepted tokens per cycle, bonus included: sum_a (a + 1) h[a] / sum_a h[a]. Unlike SGLang's
    per-request figure it leaves out the first token (made by the prefill, not by a cycle)."""
    cycles = sum(histogram)
    return sum((a + 1) * n for a, n in enumerate(histogram)) / cycles if cycles else None
