"""Build an engine from folders: the HF target, its tokenizer and (optionally) a draft checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer

from prism_sglang.checkpoint import load_draft
from prism_sglang.engine.generate import DEFAULT_TREE, SpeculativeEngine, TreeSettings
from prism_sglang.few_rows import use_few_row_linears
from prism_sglang.target import TargetModel


def load_engine(
    target_path: str | Path,
    draft_path: str | Path | None = None,
    tree: TreeSettings = DEFAULT_TREE,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    adaptive: bool = False,
) -> SpeculativeEngine:
    """Target (+ draft, validated against the target) + tokenizer. float32 on CPU keeps greedy decoding exact.
    `adaptive`: see SpeculativeEngine."""
    tokenizer = AutoTokenizer.from_pretrained(str(target_path))
    target = TargetModel.load(target_path, dtype=dtype, device=device)
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:
        target.prepare_for_decoding()
    draft = None
    if draft_path is not None:
        draft = load_draft(draft_path, target.config, target.embedding_weight(), dtype=dtype, device=device)
        if on_cpu:  # a draft step multiplies a few rows too; its lm_head, like the target's, stays with MKL
            use_few_row_linears(draft, one_row=(draft.lm_head,))
    return SpeculativeEngine(target, draft, tree, tokenizer, adaptive)


def encode_chat(tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of chat `messages` rendered with the target's chat template."""
    encoded = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])
