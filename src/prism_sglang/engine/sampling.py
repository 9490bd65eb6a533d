"""One sampler for everyone: logits -> processed distribution (temperature, top-k, top-p) -> token.

The same processing is applied to target and draft distributions, so the draft ranks its candidates under
the distribution the target will sample from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (OpenAI/SGLang meanings). temperature 0 = greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or < 0): no top-k truncation
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    # Record each output token's log-probability and this many alternatives (None: record nothing).
    logprobs: int | None = None
    eos_token_ids: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def with_eos(self, eos_token_ids: tuple[int, ...]) -> SamplingParams:
        return replace(self, eos_token_ids=tuple(eos_token_ids))

    @property
    def finish_token_ids(self) -> frozenset[int]:
        ids = set(self.stop_token_ids)
        if not self.ignore_eos:
            ids.update(self.eos_token_ids)
        return frozenset(ids)


def processed_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """The distribution a token is sampled from, in float64 (rows of `logits` are independent).

    Greedy requests get the plain softmax (used to rank draft candidates, as SGLang does).
    """
    logits = logits.double()
    if params.greedy:
        return torch.softmax(logits, dim=-1)
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses it stays).
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@dataclass(frozen=True)
class TokenLogprob:
    """An output token's log-probability under the target and the `top` most likely tokens at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def token_logprob(logits: Tensor, token: int, params: SamplingParams) -> TokenLogprob:
    """As SGLang reports them: the target's distribution after temperature (a greedy request: the plain
    softmax), before top-k / top-p truncation."""
    logits = logits.double()
    if not params.greedy:
        logits = logits / params.temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    values, ids = torch.topk(logprobs, params.logprobs or 0)
    return TokenLogprob(token, float(logprobs[token]), tuple(zip(ids.tolist(), values.tolist(), strict=True)))


def sample_token(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Next token from one row of logits: argmax if greedy, else a draw from `processed_probs`."""
    if params.greedy:
        return int(logits.argmax())
    return int(torch.multinomial(processed_probs(logits, params), 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
