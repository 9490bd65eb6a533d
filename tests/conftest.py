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
# The tiny models are dominated by per-op overhead: one thread is faster and does not fight other processes.
torch.set_num_threads(1)

TINY = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rope_theta=10000.0)


def tiny_target_config(arch: str = "llama", **overrides) -> LlamaConfig | Qwen2Config:
    kw = {**TINY, **overrides}
    theta = kw.pop("rope_theta")
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    # Larger init than HF's default so the tiny targets have peaked, non-degenerate distributions.
    kw.setdefault("initializer_range", 0.3)
    kw.setdefault("eos_token_id", 1)
    kw.setdefault("bos_token_id", 0)
    kw.setdefault("pad_token_id", 2)
    kw["tie_word_embeddings"] = False
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


def make_predictable_target(directory: Path, sharpness: float = 4.0, **overrides) -> TargetModel:
    """A tiny target whose next token depends (almost) only on the current one: every decoder layer's output
    projections are zero, so the logits are lm_head(norm(embed(x))) scaled by `sharpness`. A short training
    run gives a draft that agrees with it often, which exercises long acceptances."""
    target = TargetModel.load(make_tiny_target_dir(directory, **overrides), aux_layer_ids=[1, 3, 4])
    with torch.no_grad():
        for layer in target.model.get_decoder().layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        target.model.get_output_embeddings().weight.mul_(sharpness)
    return target


def train_tiny_draft(target: TargetModel, num_modules: int = 2, table: tuple[int, ...] = (0, 1), steps: int = 200,
                     seed: int = 0, temperature: float = 0.0) -> PrismDraft:
    """Self-distil: target continuations of random prompts, then a short TTT run (seconds on a CPU)."""
    from prism_sglang.engine.batch import generate_batch
    from prism_sglang.engine.sampling import SamplingParams
    from prism_sglang.train.data import Example
    from prism_sglang.train.trainer import TrainConfig, Trainer, new_draft

    g = torch.Generator().manual_seed(seed)
    vocab = target.vocab_size
    prompts = [torch.randint(3, vocab, (4,), generator=g).tolist() for _ in range(256)]
    params = SamplingParams(max_new_tokens=44, ignore_eos=True, temperature=temperature)
    outputs = generate_batch(target, prompts, params, seeds=range(len(prompts)))
    examples = [Example(tuple(p + o), tuple([False] * len(p) + [True] * len(o))) for p, o in zip(prompts, outputs,
                                                                                                 strict=True)]
    draft = new_draft(target, num_modules, table, aux_layer_ids=target.aux_layer_ids, seed=seed)
    config = TrainConfig(ttt_steps=6, batch_size=16, max_steps=steps, learning_rate=1e-2, seed=seed)
    Trainer(target, draft, examples, config, progress=False).run()
    return draft


@pytest.fixture(scope="session")
def predictable_target(tmp_path_factory) -> TargetModel:
    return make_predictable_target(tmp_path_factory.mktemp("predictable"))


@pytest.fixture(scope="session")
def trained_draft(predictable_target) -> PrismDraft:
    return train_tiny_draft(predictable_target)


@pytest.fixture(scope="session")
def tiny_chat_target_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary, tokenizer and chat template: chat pipelines in seconds."""
    import shutil

    from prism_sglang.prepare_model import prepare_smollm2

    smollm2 = prepare_smollm2(log=lambda _: None)
    directory = make_tiny_target_dir(tmp_path_factory.mktemp("tiny-chat"), vocab_size=49152, num_hidden_layers=4,
                                     eos_token_id=2, bos_token_id=1, pad_token_id=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smollm2 / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def tiny_target_dir(tmp_path_factory) -> Path:
    return make_tiny_target_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_target(tiny_target_dir) -> TargetModel:
    return TargetModel.load(tiny_target_dir, aux_layer_ids=[1, 3, 4])
