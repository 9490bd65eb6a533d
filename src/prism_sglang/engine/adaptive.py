"""Speculate only while it pays: a per-request switch between speculative cycles and plain decode steps.

A cycle pays when the tokens it emits per second beat a plain decode step's: tau * t_decode / t_cycle > 1, with
tau the request's recent tokens per cycle (up to `window` cycles) and t_decode, t_cycle the engine's running means
(one machine, one model: the cost ratio is shared; acceptance is the request's own). The verdict comes after every
`probe_cycles` cycles, not after each: a chain 1/1 emits 1 or 2 tokens a cycle, and judging each new cycle on a
short window backs off on noise (at a true 1.14x, with 8 cycles, about one verdict in five says "does not pay").
A request whose cycles stop paying decodes without the draft for `backoff` tokens, then probes `probe_cycles`
cycles again; each failed probe doubles the backoff (up to a limit), a probe that pays resets it. A new request
speculates at once while the engine's mean tokens per cycle (over ~50 cycles of all requests) pays; where it does
not (a machine or a draft on which cycles do not pay), it starts where the latest verdict left off: after a
failed probe it first decodes plainly for that probe's backoff, so that every request does not lose its first
probes again. (Per-cycle verdicts on 8 cycles and every failed probe carried over to the next request made
96-token requests at a true 1.14x decode 72% of their tokens plainly: 1.02x, measured 2026-12-07.) Both
paths are exact (greedy: the target's argmax; sampling: the target's distribution), so switching keeps
generation lossless; only the speed changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


def _running_mean(mean: float | None, sample: float, weight: float) -> float:
    """An exponential running mean; the first sample starts it."""
    return sample if mean is None else mean + weight * (sample - mean)


@dataclass
class StepCosts:
    """Engine-wide running means, in seconds, of a plain decode step and of a speculative cycle."""

    decode_s: float | None = None
    cycle_s: float | None = None
    weight: float = 0.1  # of the newest sample: a few dozen steps of memory, so context growth is followed
    backoff: int = 0  # the latest probe's verdict: plain decode steps a new request takes before its first probe
    tokens_per_cycle: float | None = None  # over all requests' cycles, ~50 cycles of memory (acceptance is noisy)
    tokens_weight: float = 0.02

    def observe(self, kind: str, seconds: float) -> None:
        setattr(self, f"{kind}_s", _running_mean(getattr(self, f"{kind}_s"), seconds, self.weight))

    def observe_cycle_tokens(self, tokens: int) -> None:
        self.tokens_per_cycle = _running_mean(self.tokens_per_cycle, tokens, self.tokens_weight)

    def cycles_pay(self) -> bool:
        """Whether the engine's cycles pay on average (True until measured)."""
        speedup = None if self.tokens_per_cycle is None else self.speedup(self.tokens_per_cycle)
        return speedup is None or speedup >= 1.0

    def speedup(self, tokens_per_cycle: float) -> float | None:
        """Estimated tokens/s of cycles over that of decode steps (None until both were measured)."""
        if self.decode_s is None or self.cycle_s is None:
            return None
        return tokens_per_cycle * self.decode_s / self.cycle_s


class AdaptiveSpeculation:
    """One request's switch. `speculate()` says what the next step is; `cycle_done` / `decode_done` report it."""

    def __init__(self, costs: StepCosts, probe_cycles: int = 4, window: int = 32, min_backoff: int = 16,
                 max_backoff: int = 256):
        self.costs, self.probe_cycles = costs, probe_cycles
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self._recent: deque[int] = deque(maxlen=window)  # tokens emitted by the latest cycles since a back-off
        self._cycles_since_probe = 0
        carried = 0 if costs.cycles_pay() else costs.backoff
        self._backoff = max(min_backoff, min(2 * carried, max_backoff))
        self._decode_left = carried  # plain decode steps before the next probe

    def speculate(self) -> bool:
        # Until the engine knows what a plain step costs, measure one (every request's first step after the
        # prefill while the engine is new; afterwards the running mean serves all requests).
        return self.costs.decode_s is not None and self._decode_left == 0

    def cycle_done(self, tokens: int, seconds: float) -> None:
        self.costs.observe("cycle", seconds)
        self.costs.observe_cycle_tokens(tokens)
        self._recent.append(tokens)
        self._cycles_since_probe += 1
        if self._cycles_since_probe % self.probe_cycles:
            return
        speedup = self.costs.speedup(sum(self._recent) / len(self._recent))
        if speedup is not None and speedup < 1.0:
            self._decode_left, self._backoff = self._backoff, min(2 * self._backoff, self.max_backoff)
            self.costs.backoff = self._decode_left
            self._recent.clear()
            self._cycles_since_probe = 0
        elif self._cycles_since_probe == self.probe_cycles:
            self._backoff = self.min_backoff  # this probe paid: a later drop starts from a short backoff
            self.costs.backoff = 0

    def decode_done(self, seconds: float) -> None:
        self.costs.observe("decode", seconds)
        self._decode_left = max(0, self._decode_left - 1)
