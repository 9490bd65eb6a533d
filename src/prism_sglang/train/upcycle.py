"""Upcycling (the paper's initialisation): a trained EAGLE-3 (M = 1) or PRISM draft -> a PRISM draft with M
modules, each a copy of a source module. Before any fine-tuning the result drafts exactly like its source."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prism_sglang.modeling import PrismDraft


def upcycle(source: PrismDraft, num_modules: int, step_modules: Sequence[int]) -> PrismDraft:
    """New module m copies source module min(m, M_source - 1); fc, norm, lm_head and vocab maps are shared."""
    config = source.config.replace(num_modules=num_modules, step_modules=tuple(step_modules))
    draft = PrismDraft(config)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layers.")}
    for m in range(num_modules):
        origin = min(m, source.config.num_modules - 1)
        prefix = f"layers.{origin}."
        state.update({f"layers.{m}." + k[len(prefix):]: v.clone() for k, v in source.state_dict().items()
                      if k.startswith(prefix)})
    with torch.no_grad():
        draft.load_state_dict(state)
    return draft.to(source.fc.weight.dtype).eval()
