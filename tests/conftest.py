"""Shared fixtures: tiny random HF targets and PRISM drafts (seconds, no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from prism_sglang.config import PrismConfig
from prism_sglang.modeling import PrismDraft
from prism_sglang.target import TargetModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rope_theta=10000.0)


def tiny_target_config(arch: str = "llama", **overrides) -> LlamaConfig | Qwen2Config:
    kw = {**TINY, **overrides}
    theta = kw.pop("rope_theta")
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    # Larger init than HF's default so the tiny targets have peaked, non-degenerate distributions.
    kw.setdefault("initializer_range", 0.3)
    kw.update(eos_token_id=1, bos_token_id=0, pad_token_id=2, tie_word_embeddings=False)
    return (LlamaConfig if arch == "llama" else Qwen2Config)(**kw)


def make_tiny_target_dir(directory: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_target_config(arch, **overrides))
    model.save_pretrained(directory)
    return directory


def draft_config_for(target: TargetModel, num_modules: int = 2, table: tuple[int, ...] = (0, 1),
                     draft_vocab_size: int | None = None, **overrides) -> PrismConfig:
    c = target.config
    kw = dict(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, vocab_size=c.vocab_size,
        draft_vocab_size=draft_vocab_size or c.vocab_size, target_hidden_size=c.hidden_size,
        rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
        rope_parameters=dict(c.rope_parameters), aux_layer_ids=(1, 3, 4), num_modules=num_modules,
        step_modules=table, torch_dtype="float32",
    )
    kw.update(overrides)
    return PrismConfig(**kw)


def make_draft(target: TargetModel, num_modules: int = 2, table: tuple[int, ...] = (0, 1), seed: int = 0,
               scale: float = 1.0, **overrides) -> PrismDraft:
    """A random draft for `target`; `scale` multiplies the init so outputs are not near-uniform."""
    torch.manual_seed(seed)
    draft = PrismDraft(draft_config_for(target, num_modules, table, **overrides))
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if name.endswith("proj.weight") or name in ("fc.weight", "lm_head.weight"):
                p.mul_(scale)
    if draft.config.draft_vocab_size < draft.config.vocab_size:
        draft.set_vocab_map(torch.arange(draft.config.draft_vocab_size) * 2 % draft.config.vocab_size)
    draft.attach_embedding(target.embedding_weight())
    return draft.eval()


@pytest.fixture(scope="session")
def tiny_target_dir(tmp_path_factory) -> Path:
    return make_tiny_target_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_target(tiny_target_dir) -> TargetModel:
    return TargetModel.load(tiny_target_dir, aux_layer_ids=[1, 3, 4])
