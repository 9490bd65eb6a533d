"""Draft checkpoints: the HF folder of DESIGN §1 (`config.json` + safetensors), never pickle.

One loader serves everyone (engine, trainer, upcycler, SGLang model): `canonical_tensor_name`,
`check_tensor_shape` and `check_complete` define which names and shapes a config implies. EAGLE-3 checkpoints
load as PRISM with one module, whether written by SpecForge (`midlayer.*`) or SGLang-style (`layers.0.*`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from prism_sglang.config import ConfigError, PrismConfig
from prism_sglang.modeling import PrismDraft

WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
EMBEDDING_NAME = "embed_tokens.weight"


class CheckpointError(ValueError):
    """A draft checkpoint that cannot be used; the message names the problem."""


def expected_tensor_shapes(config: PrismConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint for `config` holds (embed_tokens.weight is optional)."""
    h, d, i = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    shapes: dict[str, tuple[int, ...]] = {
        "fc.weight": (h, config.num_aux_layers * config.target_hidden_size),
        "norm.weight": (h,),
        "lm_head.weight": (config.draft_vocab_size, h),
        "d2t": (config.draft_vocab_size,),
        "t2d": (config.vocab_size,),
    }
    for m in range(config.num_modules):
        p = f"layers.{m}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "hidden_norm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, 2 * h),
            p + "self_attn.k_proj.weight": (kv, 2 * h),
            p + "self_attn.v_proj.weight": (kv, 2 * h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        })
    return shapes


def canonical_tensor_name(name: str, config: PrismConfig) -> str:
    """Our name for a checkpoint tensor: drop a leading `model.`; SpecForge's `midlayer.` is `layers.0.`."""
    name = name.removeprefix("model.")
    if config.is_eagle3 and name.startswith("midlayer."):
        name = "layers.0." + name.removeprefix("midlayer.")
    return name


def check_tensor_shape(config: PrismConfig, name: str, shape: tuple[int, ...]) -> None:
    """Raise CheckpointError unless `config` implies a tensor `name` (canonical) of this shape."""
    expected = {**expected_tensor_shapes(config), EMBEDDING_NAME: (config.vocab_size, config.hidden_size)}
    if name not in expected:
        raise CheckpointError(
            f"unexpected tensor '{name}'; a draft with prism_num_modules={config.num_modules} has "
            f"layers.0..layers.{config.num_modules - 1}, fc, norm, lm_head, d2t, t2d (and optionally embed_tokens)"
        )
    if tuple(shape) != expected[name]:
        raise CheckpointError(
            f"shape mismatch for tensor '{name}': checkpoint has {tuple(shape)}, config.json implies "
            f"{expected[name]} (hidden_size={config.hidden_size}, target_hidden_size={config.target_hidden_size}, "
            f"draft_vocab_size={config.draft_vocab_size}, vocab_size={config.vocab_size})"
        )


def check_complete(config: PrismConfig, names: Iterable[str]) -> None:
    """Raise CheckpointError if a tensor that `config` needs is not among `names` (canonical)."""
    optional = {EMBEDDING_NAME, "t2d"}
    if config.draft_vocab_size == config.vocab_size:
        optional.add("d2t")  # full vocabulary: draft id == target id
    missing = sorted(set(expected_tensor_shapes(config)) - set(names) - optional)
    if missing:
        raise CheckpointError(f"missing tensor(s) {missing} (config.json: prism_num_modules={config.num_modules})")


def check_vocab_map(config: PrismConfig, d2t: Tensor | None, t2d: Tensor | None) -> Tensor:
    """Validate the EAGLE-3 vocabulary maps; returns the target ids of the draft vocabulary."""
    if d2t is None:
        return torch.arange(config.draft_vocab_size)
    ids = torch.arange(d2t.numel()) + d2t.to(torch.long)
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise CheckpointError(f"tensor 'd2t' maps draft ids outside the target vocabulary 0..{config.vocab_size - 1}")
    if ids.unique().numel() != ids.numel():
        raise CheckpointError("tensor 'd2t' maps two draft ids to the same target id")
    if t2d is not None and (int(t2d.to(torch.long).sum()) != ids.numel() or not bool(t2d.to(torch.bool)[ids].all())):
        raise CheckpointError("tensors 'd2t' and 't2d' disagree about which target ids are in the draft vocabulary")
    return ids


def check_embedding(config: PrismConfig, has_embedding: bool) -> None:
    """A draft narrower or wider than its target cannot borrow the target's embedding: it must store one."""
    if config.hidden_size != config.target_hidden_size and not has_embedding:
        raise CheckpointError(
            f"draft field 'hidden_size' ({config.hidden_size}) differs from 'target_hidden_size' "
            f"({config.target_hidden_size}), so the draft cannot borrow the target's embedding and must store "
            f"'{EMBEDDING_NAME}'"
        )


def check_target_compatibility(config: PrismConfig, target_config: Any) -> list[int]:
    """Check the draft against a target's HF config; returns the resolved aux layer ids. A multimodal target
    keeps its language model's sizes in a sub-config (`text_config`), which `get_text_config()` returns."""
    if hasattr(target_config, "get_text_config"):
        target_config = target_config.get_text_config(decoder=True)
    if config.target_hidden_size != target_config.hidden_size:
        raise CheckpointError(
            f"draft field 'target_hidden_size' is {config.target_hidden_size}, but the target's hidden_size is "
            f"{target_config.hidden_size}: this draft was trained for another target"
        )
    if config.vocab_size != target_config.vocab_size:
        raise CheckpointError(
            f"draft field 'vocab_size' is {config.vocab_size}, but the target's vocab_size is "
            f"{target_config.vocab_size}: this draft was trained for another target"
        )
    try:
        return config.resolved_aux_layer_ids(target_config.num_hidden_layers)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e


def collect_tensors(config: PrismConfig, named_tensors: Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """Every checkpoint tensor under its canonical name, validated against `config` (names, count, shapes,
    vocabulary map, embedding) before any is returned."""
    return dict(validated_tensors(config, named_tensors))


def validated_tensors(config: PrismConfig, named_tensors: Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
    """Each checkpoint tensor under its canonical name, handed on as soon as its name and shape are checked; the
    checks of the whole set (nothing missing, vocabulary map, embedding) run when the input ends. The one
    validation path of our loader and the SGLang model's. Streaming matters to the latter: some of SGLang's
    weight iterators (`--load-format fastsafetensors`) free a file's buffers once they move past it, so a
    tensor must be copied before the next one is read."""
    names: set[str] = set()
    vocab_maps: dict[str, Tensor] = {}
    for name, tensor in named_tensors:
        key = canonical_tensor_name(name, config)
        if key in names:
            raise CheckpointError(f"tensor '{key}' appears twice ({name})")
        check_tensor_shape(config, key, tuple(tensor.shape))
        names.add(key)
        if key in ("d2t", "t2d"):
            vocab_maps[key] = tensor.detach().to("cpu", copy=True)  # tiny; checked once both are in
        yield key, tensor
    check_complete(config, names)
    check_vocab_map(config, vocab_maps.get("d2t"), vocab_maps.get("t2d"))
    check_embedding(config, EMBEDDING_NAME in names)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder; refuses pickle-based weights."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (a draft checkpoint is an HF folder)")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{directory}: found pickle-based weight file(s) {pickles}; only safetensors are loaded (pickle can run "
            "arbitrary code). Convert with safetensors.torch.save_file and remove the pickle file."
        )
    index = directory / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [directory / s for s in shards]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} (weights must be safetensors)")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{directory}: index names missing shard {f.name}")
    return files


def named_tensors(directory: str | Path) -> Iterator[tuple[str, Tensor]]:
    """(stored name, tensor) for every tensor of a checkpoint folder's safetensors files."""
    for path in weight_files(Path(directory)):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                yield name, f.get_tensor(name)


def load_draft(
    directory: str | Path,
    target_config: Any = None,
    embedding: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> PrismDraft:
    """Load and validate a draft. `target_config` (the target's HF config) enables the target checks;
    `embedding` is the target's token embedding to borrow when the checkpoint does not store one."""
    directory = Path(directory)
    try:
        config = PrismConfig.load(directory)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    try:
        tensors = collect_tensors(config, named_tensors(directory))
        ids = check_vocab_map(config, tensors.get("d2t"), tensors.get("t2d"))
        if target_config is not None:
            check_target_compatibility(config, target_config)
    except CheckpointError as e:
        raise CheckpointError(f"{directory}: {e}") from e

    draft = PrismDraft(config)
    stored_embedding = tensors.pop(EMBEDDING_NAME, None)
    tensors.pop("d2t", None)
    tensors.pop("t2d", None)
    draft.load_state_dict(tensors, strict=False)
    draft.set_vocab_map(ids)
    if stored_embedding is not None:
        draft.attach_embedding(stored_embedding)
    elif embedding is not None:
        draft.attach_embedding(embedding)
    return draft.to(device=device, dtype=dtype).eval()


def save_draft(
    draft: PrismDraft,
    directory: str | Path,
    dtype: torch.dtype | None = torch.bfloat16,
    include_embedding: bool = False,
) -> Path:
    """Write `config.json` + `model.safetensors`. Floating tensors are cast to `dtype` (None: keep)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in draft.state_dict().items():
        if name == EMBEDDING_NAME and not include_embedding:
            continue
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.detach().contiguous().cpu()
    saved_dtype = dtype if dtype is not None else draft.fc.weight.dtype
    config = draft.config.replace(torch_dtype=str(saved_dtype).removeprefix("torch."))
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    config.save(directory)
    return directory
