"""Batched target-only generation (self-distillation data): left-padded rows, one KV cache, the shared sampler.

Each row samples with its own generator seeded from its `seed`, so a row's output does not depend on which
other prompts share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prism_sglang.engine.sampling import SamplingParams, make_generator, sample_token
from prism_sglang.target import TargetModel


@torch.no_grad()
def generate_batch(
    target: TargetModel,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    seeds: Sequence[int] | None = None,
    pad_id: int = 0,
) -> list[list[int]]:
    """Output ids per prompt (each ends at its first finish token, included, or at max_new_tokens)."""
    if not prompts:
        return []
    seeds = list(seeds) if seeds is not None else [params.seed or 0] * len(prompts)
    generators = [make_generator(s) for s in seeds]
    finish = params.finish_token_ids
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt))
        attention[row, width - len(prompt):] = 1
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    cache, step_ids = None, ids
    for _ in range(params.max_new_tokens):
        positions = (attention.cumsum(-1) - 1).clamp_min(0)[:, -step_ids.shape[1]:]
        out = target.forward(step_ids, cache, positions, attention, logits_to_keep=1)
        cache = out.past_key_values
        next_ids = torch.full((len(prompts), 1), pad_id, dtype=torch.long)
        for row in range(len(prompts)):
            if done[row]:
                continue
            token = sample_token(out.logits[row, -1], params, generators[row])
            outputs[row].append(token)
            next_ids[row, 0] = token
            done[row] = token in finish or len(outputs[row]) >= params.max_new_tokens
        if all(done):
            break
        step_ids = next_ids
        attention = torch.cat([attention, torch.ones(len(prompts), 1, dtype=torch.long)], dim=1)
    return outputs
