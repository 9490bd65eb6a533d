"""Speculative decoding statistics: cycles, tau, per-position conditional acceptance, time split."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PHASES = ("prefill", "draft", "verify", "cache", "extend", "decode")  # cache: trimming the target KV to the path


@dataclass
class SpecStats:
    """One request's (or, merged, a run's) figures.

    tau = mean over verification cycles of (accepted draft tokens + 1): the bonus token counts, as SGLang's
    accept length does. (SGLang's per-request `spec_accept_length` divides all completion tokens, the
    prefill's first token included, by the cycle count; ours leaves the prefill token out.)
    Position i's conditional acceptance is P(at least i drafts accepted | at least i-1 accepted).
    """

    accept_lengths: list[int] = field(default_factory=list)  # accepted draft tokens per cycle
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    output_tokens: int = 0
    decoded_tokens: int = 0  # of output_tokens, emitted by plain decode steps (adaptive speculation) not cycles

    def record_cycle(self, accepted: int) -> None:
        self.accept_lengths.append(accepted)

    def add_time(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    @property
    def cycles(self) -> int:
        return len(self.accept_lengths)

    @property
    def tau(self) -> float:
        return (sum(self.accept_lengths) + self.cycles) / self.cycles if self.cycles else 0.0

    def histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(self.accept_lengths).items()))

    def per_position(self, depth: int) -> list[float | None]:
        """Conditional acceptance at positions 1..depth (None where no cycle reached the position)."""
        rates: list[float | None] = []
        for i in range(1, depth + 1):
            reached = sum(1 for a in self.accept_lengths if a >= i - 1)
            rates.append(sum(1 for a in self.accept_lengths if a >= i) / reached if reached else None)
        return rates

    def meta_info(self, num_draft_tokens: int) -> dict[str, Any]:
        """Per-request figures under SGLang 0.5.17's `meta_info` names and definitions
        (tokenizer_manager._calculate_spec_decoding_metrics): accept length = completion tokens / verify count,
        leaving out the tokens of plain decode steps (adaptive speculation): no cycle verified them, and counting
        them would report an acceptance the draft never had."""
        if not self.cycles:
            return {}
        proposed = self.cycles * (num_draft_tokens - 1)
        correct = sum(self.accept_lengths)
        histogram = [0] * (max(self.accept_lengths) + 1)
        for a in self.accept_lengths:
            histogram[a] += 1
        return {
            "spec_verify_ct": self.cycles,
            "spec_accept_length": (self.output_tokens - self.decoded_tokens) / self.cycles,
            "spec_accept_rate": correct / proposed if proposed else 0.0,
            "spec_num_correct_drafts": correct,
            "spec_num_proposed_drafts": proposed,
            "spec_correct_drafts_histogram": histogram,
        }

    def merge(self, other: SpecStats) -> SpecStats:
        merged = SpecStats(self.accept_lengths + other.accept_lengths, dict(self.seconds),
                           self.output_tokens + other.output_tokens, self.decoded_tokens + other.decoded_tokens)
        for phase, s in other.seconds.items():
            merged.seconds[phase] += s
        return merged

    def to_dict(self, depth: int) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "tau": self.tau,
            "accept_histogram": self.histogram(),
            "per_position_acceptance": self.per_position(depth),
            "output_tokens": self.output_tokens,
            "decoded_tokens": self.decoded_tokens,
            "seconds": dict(self.seconds),
        }
