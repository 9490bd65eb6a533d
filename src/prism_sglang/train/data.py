"""Chat conversations -> token ids with the target's chat template and a loss mask on assistant tokens."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prism_sglang.engine.loading import encode_chat

Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]  # True where the token was written by the assistant


def tokenize_conversation(tokenizer, messages: Sequence[Message], max_length: int) -> Example | None:
    """Render a conversation; assistant turns (content and end-of-turn tokens) carry the loss.

    Each assistant span is found by rendering the prefix before it with the generation prompt, which works
    for any chat template whose renderings are prefix-stable. Returns None if nothing is left to learn.
    """
    ids = encode_chat(tokenizer, messages, add_generation_prompt=False)
    mask = [False] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(encode_chat(tokenizer, messages[:i], add_generation_prompt=True))
        if start >= max_length:  # later turns are cut off anyway: stop rendering ever longer prefixes
            break
        end = len(encode_chat(tokenizer, messages[: i + 1], add_generation_prompt=False))
        mask[start:end] = [True] * (end - start)
    ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask):
        return None
    return Example(tuple(ids), tuple(mask))


# Length grouping forms batches inside pools of this many batches, each pool sorted by length, and then shuffles
# the batches: on ShareGPT at 768 tokens, padding falls from ~17% of a batch's tokens (batches of 4-16 shuffled)
# to ~1%, and both the target forward and the draft's unroll cost what a batch pads to.
LENGTH_POOL_BATCHES = 64


def batches(examples: Sequence[Example], batch_size: int, seed: int, epoch: int,
            group_by_length: bool = True) -> list[list[int]]:
    """The batches of one epoch as example indices, from a seeded shuffle (a resumed run sees the same order);
    with `group_by_length`, batches of similar lengths, in shuffled order."""
    order = list(range(len(examples)))
    rng = random.Random(seed * 1_000_003 + epoch)
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = batch_size * LENGTH_POOL_BATCHES
    grouped = []
    for start in range(0, len(order), pool):
        ranked = sorted(order[start : start + pool], key=lambda i: len(examples[i].input_ids))
        grouped += [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]
    rng.shuffle(grouped)
    return grouped


def collate(examples: Sequence[Example], pad_id: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded (input_ids, attention_mask, loss_mask) tensors [B, T]."""
    t = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    attention = torch.zeros(len(examples), t, dtype=torch.bool)
    loss = torch.zeros(len(examples), t, dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = True
        loss[row, :n] = torch.tensor(e.loss_mask)
    return ids, attention, loss


def assistant_tokens(examples: Sequence[Example]) -> Iterator[int]:
    for e in examples:
        yield from (token for token, keep in zip(e.input_ids, e.loss_mask, strict=True) if keep)
