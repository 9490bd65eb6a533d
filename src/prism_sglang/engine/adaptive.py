"""Speculate only while it pays: a per-request switch between speculative cycles and plain decode steps.

A cycle pays when the tokens it emits per second beat a plain decode step's: tau * t_decode / t_cycle > 1, with
t_decode, t_cycle the engine's running means (one machine, one model: the cost ratio is shared) and tau the
request's recent tokens per cycle (up to `window` cycles) shrunk towards the engine's mean (as if `prior_cycles`
of the engine's cycles were in the window). The verdict comes after every `probe_cycles` cycles, and not before
the engine has `prior_cycles` cycles behind it. A request whose cycles stop paying decodes without the draft for
`backoff` tokens, then probes `probe_cycles` cycles again; each failed probe doubles the backoff (up to a
limit), a probe that pays resets it. A new request speculates at once while the engine's mean tokens per cycle
pays; where it does not (a machine or a draft on which cycles do not pay), it decodes plainly until the latest
failed probe's backoff has run out, counted in plain steps of any request, so that every request does not lose
its first probes again and short requests cannot keep the engine from ever probing. Every `refresh_cycles`
cycles in a row the engine takes one plain step, so t_decode follows the context's growth and the machine's
drift (20% within minutes on a shared host) while cycles run.

Measured 2026-12-07 (AVX2 EPYC, chain 1/1 at a true ~1.13x, 96-token requests), each rule against what it
replaced: judging each probe of 4 cycles on its own backed off after 4 rejections in a row (one probe in five at
0.33 acceptance); the engine's means started from their first sample (the first cycle pays one-time costs, the
first plain step runs at a short context) and read as "does not pay" for dozens of cycles; a failed probe
carried over to requests shorter than its backoff kept three requests in a row from speculating at all. Both
paths are exact (greedy: the target's argmax; sampling: the target's distribution), so switching keeps
generation lossless; only the speed changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RunningMean:
    """An exponential running mean of ~1/weight samples' memory; the plain mean until it has that many."""

    weight: float
    value: float | None = None
    count: int = 0

    def add(self, sample: float) -> None:
        self.count += 1
        step = max(self.weight, 1 / self.count)
        self.value = sample if self.value is None else self.value + step * (sample - self.value)


@dataclass
class StepCosts:
    """What all requests of one engine measured: seconds of a plain decode step and of a cycle, tokens per cycle."""

    decode: RunningMean = field(default_factory=lambda: RunningMean(0.1))  # follows context growth
    cycle: RunningMean = field(default_factory=lambda: RunningMean(0.1))
    tokens: RunningMean = field(default_factory=lambda: RunningMean(0.02))  # acceptance is noisy: ~50 cycles
    backoff_left: int = 0  # plain steps (of any request) before a request may probe again after a failed probe
    backoff: int = 0  # the latest failed probe's backoff (0 after one that paid)
    cycles_in_a_row: int = 0

    def speedup(self, tokens_per_cycle: float) -> float | None:
        """Estimated tokens/s of cycles over that of decode steps (None until both were measured)."""
        if self.decode.value is None or self.cycle.value is None:
            return None
        return tokens_per_cycle * self.decode.value / self.cycle.value

    def cycles_pay(self) -> bool:
        """Whether the engine's cycles pay on average (True until measured)."""
        speedup = None if self.tokens.value is None else self.speedup(self.tokens.value)
        return speedup is None or speedup >= 1.0


class AdaptiveSpeculation:
    """One request's switch. `speculate()` says what the next step is; `cycle_done` / `decode_done` report it."""

    def __init__(self, costs: StepCosts, probe_cycles: int = 4, window: int = 32, min_backoff: int = 16,
                 max_backoff: int = 256, prior_cycles: int = 16, refresh_cycles: int = 32):
        self.costs, self.probe_cycles, self.prior_cycles = costs, probe_cycles, prior_cycles
        self.min_backoff, self.max_backoff, self.refresh_cycles = min_backoff, max_backoff, refresh_cycles
        self._recent: deque[int] = deque(maxlen=window)  # tokens emitted by the latest cycles since a back-off
        self._cycles_since_probe = 0
        self._backoff = max(min_backoff, min(2 * costs.backoff, max_backoff))
        self._decode_left = 0 if costs.cycles_pay() else costs.backoff_left  # plain steps before the next probe

    def speculate(self) -> bool:
        costs = self.costs
        # Until the engine knows what a plain step costs, measure one (the first step after the prefill of a new
        # engine's first request); then one every `refresh_cycles` cycles, so that the ratio stays current.
        if costs.decode.value is None or costs.cycles_in_a_row >= self.refresh_cycles:
            return False
        return self._decode_left == 0

    def cycle_done(self, tokens: int, seconds: float) -> None:
        costs = self.costs
        costs.cycle.add(seconds)
        costs.tokens.add(tokens)
        costs.cycles_in_a_row += 1
        self._recent.append(tokens)
        self._cycles_since_probe += 1
        if self._cycles_since_probe % self.probe_cycles or costs.tokens.count < self.prior_cycles:
            return
        speedup = costs.speedup(self._tokens_per_cycle())
        if speedup is not None and speedup < 1.0:
            self._decode_left, self._backoff = self._backoff, min(2 * self._backoff, self.max_backoff)
            costs.backoff = costs.backoff_left = self._decode_left
            self._recent.clear()
            self._cycles_since_probe = 0
        elif self._cycles_since_probe == self.probe_cycles:
            self._backoff = self.min_backoff  # this probe paid: a later drop starts from a short backoff
            costs.backoff = costs.backoff_left = 0

    def decode_done(self, seconds: float) -> None:
        costs = self.costs
        costs.decode.add(seconds)
        costs.cycles_in_a_row = 0
        costs.backoff_left = max(0, costs.backoff_left - 1)
        self._decode_left = max(0, self._decode_left - 1)

    def _tokens_per_cycle(self) -> float:
        """The request's recent tokens per cycle, shrunk towards the engine's mean."""
        prior = self.costs.tokens.value
        assert prior is not None  # cycle_done observed a cycle first
        return (sum(self._recent) + self.prior_cycles * prior) / (len(self._recent) + self.prior_cycles)
