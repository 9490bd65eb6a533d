"""The draft vocabulary: the most frequent target tokens of the training data (EAGLE-3's d2t / t2d)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch
from torch import Tensor


def build_draft_vocab(tokens: Iterable[int], draft_vocab_size: int, vocab_size: int) -> Tensor:
    """Sorted target ids of the `draft_vocab_size` most frequent tokens (ties: lower id first).

    If the data has fewer distinct tokens, the rest is filled with the lowest unused ids, so the map is always
    complete (SpecForge pads the same way).
    """
    if not 0 < draft_vocab_size <= vocab_size:
        raise ValueError(f"draft_vocab_size must be in 1..{vocab_size}, got {draft_vocab_size}")
    counts = Counter(tokens)
    ranked = sorted(counts, key=lambda token: (-counts[token], token))[:draft_vocab_size]
    chosen = set(ranked)
    filler = (i for i in range(vocab_size) if i not in chosen)
    while len(ranked) < draft_vocab_size:
        ranked.append(next(filler))
    return torch.tensor(sorted(ranked), dtype=torch.long)


def coverage(tokens: Iterable[int], draft_to_target: Tensor) -> float:
    """Fraction of `tokens` that the draft vocabulary contains."""
    vocab = set(draft_to_target.tolist())
    counts = Counter(tokens)
    total = sum(counts.values())
    return sum(n for token, n in counts.items() if token in vocab) / total if total else 0.0
