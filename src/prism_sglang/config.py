"""The PRISM draft config (DESIGN §1): read, validate and write `config.json`.

A PRISM draft has `num_modules` EAGLE-3 decoder layers ("modules") and a step -> module table. An EAGLE-3
config (SpecForge's or SGLang's `LlamaForCausalLMEagle3`) reads as a PRISM config with one module and the
table `[0]`. Every validation error names the offending field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRISM_ARCHITECTURE = "LlamaForCausalLMPrism"
EAGLE3_ARCHITECTURES = ("LlamaForCausalLMEagle3", "LlamaForCausalLM")
SUPPORTED_ARCHITECTURES = (PRISM_ARCHITECTURE, *EAGLE3_ARCHITECTURES)


class ConfigError(ValueError):
    """A draft config.json that cannot be used; the message names the field."""


def default_aux_layer_ids(num_target_layers: int) -> list[int]:
    """EAGLE-3's default target layers: HF `hidden_states[i + 1]` for i in [1, L//2 - 1, L - 4].

    These are the outputs of decoder layers i, i.e. the inputs SGLang captures at layers [2, L//2, L-3].
    """
    n = num_target_layers
    return [1, n // 2 - 1, n - 4]


@dataclass(frozen=True)
class PrismConfig:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    draft_vocab_size: int
    target_hidden_size: int
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    # Target decoder layers whose outputs feed `fc`; None = EAGLE-3 default for the target (resolved at load).
    aux_layer_ids: tuple[int, ...] | None = None
    num_modules: int = 2
    step_modules: tuple[int, ...] = (0, 1)
    # Strict table: running more draft steps than the table has entries is an error (default: later steps
    # reuse the table's last module, as the paper does at depths beyond the trained ones).
    strict_steps: bool = False
    torch_dtype: str = "bfloat16"
    # Token ids the serving stack reads from the draft config (SGLang copies them from the target otherwise).
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        _validate(self)
        # One canonical key order, so that writing a loaded config reproduces the file byte for byte.
        rope = self.rope_parameters
        canonical = {"rope_type": rope.get("rope_type", "default"), "rope_theta": float(rope["rope_theta"])}
        canonical.update({k: rope[k] for k in sorted(rope) if k not in canonical})
        object.__setattr__(self, "rope_parameters", canonical)
        if self.num_modules == 1:  # every table of a one-module draft means the same thing
            object.__setattr__(self, "step_modules", (0,))

    # -- step routing ------------------------------------------------------------------------------------
    def module_for_step(self, step: int) -> int:
        """Module run at draft step `step` (0 = context pass / draft extend; k >= 1 = k-th draft step)."""
        if step < 0:
            raise ValueError(f"draft step must be >= 0, got {step}")
        return self.step_modules[min(step, len(self.step_modules) - 1)]

    def check_num_steps(self, num_steps: int) -> None:
        """Raise ConfigError if a serving setting of `num_steps` draft steps (0..num_steps-1) breaks a strict table."""
        if self.strict_steps and num_steps > len(self.step_modules):
            raise ConfigError(
                f"speculative num_steps={num_steps} runs draft steps 0..{num_steps - 1}, but the draft's "
                f"'prism_step_modules' has {len(self.step_modules)} entries and 'prism_strict_steps' is true; "
                f"use num_steps <= {len(self.step_modules)} or a draft trained for more steps"
            )

    @property
    def is_eagle3(self) -> bool:
        return self.num_modules == 1

    def resolved_aux_layer_ids(self, num_target_layers: int) -> list[int]:
        ids = list(self.aux_layer_ids) if self.aux_layer_ids is not None else default_aux_layer_ids(num_target_layers)
        check_aux_layer_ids(ids, num_target_layers)
        return ids

    @property
    def num_aux_layers(self) -> int:
        return len(self.aux_layer_ids) if self.aux_layer_ids is not None else 3

    # -- serialisation -----------------------------------------------------------------------------------
    @property
    def writes_as_eagle3(self) -> bool:
        """A one-module draft is written as a standard EAGLE-3 checkpoint (stock SGLang EAGLE3 and SpecForge
        read it); only a strict table needs the PRISM fields."""
        return self.num_modules == 1 and not self.strict_steps

    def to_dict(self) -> dict[str, Any]:
        """The HF `config.json` of DESIGN §1, readable by SGLang's Llama EAGLE-3 machinery."""
        d: dict[str, Any] = {
            "architectures": [EAGLE3_ARCHITECTURES[0] if self.writes_as_eagle3 else PRISM_ARCHITECTURE],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": dict(self.rope_parameters),
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "draft_vocab_size": self.draft_vocab_size,
            "target_hidden_size": self.target_hidden_size,
            "tie_word_embeddings": False,
            # One KV layer: every module shares it. SGLang sizes the draft KV pool from this field.
            "num_hidden_layers": 1,
            "torch_dtype": self.torch_dtype,
        }
        if not self.writes_as_eagle3:
            d["prism_num_modules"] = self.num_modules
            d["prism_step_modules"] = list(self.step_modules)
        if self.aux_layer_ids is not None:
            d["eagle_config"] = {
                "eagle_aux_hidden_state_layer_ids": list(self.aux_layer_ids),
                "use_aux_hidden_state": True,
            }
        if self.strict_steps:
            d["prism_strict_steps"] = True
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            d["eos_token_id"] = self.eos_token_id
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrismConfig:
        return _from_dict(d)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PrismConfig:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{directory}: no config.json (a draft checkpoint is a folder with config.json)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    def replace(self, **changes: Any) -> PrismConfig:
        return dataclasses.replace(self, **changes)


def check_aux_layer_ids(ids: list[int], num_target_layers: int) -> None:
    # SGLang captures the *input* of layer i + 1, so the last usable output is that of layer L - 2.
    if len(ids) == 0:
        raise ConfigError("eagle_config.eagle_aux_hidden_state_layer_ids is empty")
    for i in ids:
        if not 0 <= i <= num_target_layers - 2:
            raise ConfigError(
                f"eagle_config.eagle_aux_hidden_state_layer_ids contains {i}, outside the target's "
                f"decoder layers 0..{num_target_layers - 2} (the target has {num_target_layers} layers; "
                "the last layer's output cannot be captured)"
            )


def _require(d: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d or d[key] is None:
        raise ConfigError(f"missing required field '{key}'")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"field '{key}' must be {_kind_name(kind)}, got {value!r}")
    return value


def _optional(d: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if d.get(key) is None:
        return default
    return _require(d, key, kind)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", float: "a number", str: "a string", list: "a list"}[k] for k in kinds)


def _rope_from_dict(d: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from `rope_parameters` (transformers 5) or the legacy `rope_theta` + `rope_scaling`."""
    if d.get("rope_parameters") is not None:
        rope = d["rope_parameters"]
        if not isinstance(rope, dict) or "rope_theta" not in rope:
            raise ConfigError("field 'rope_parameters' must be an object with 'rope_theta'")
        return dict(rope)
    theta = _optional(d, "rope_theta", (int, float), 10000.0)
    scaling = d.get("rope_scaling")
    if scaling is None:
        return {"rope_type": "default", "rope_theta": float(theta)}
    if not isinstance(scaling, dict):
        raise ConfigError("field 'rope_scaling' must be an object or null")
    scaling = dict(scaling)
    scaling.setdefault("rope_type", scaling.pop("type", "default"))
    return {**scaling, "rope_theta": float(theta)}


def _from_dict(d: dict[str, Any]) -> PrismConfig:
    archs = d.get("architectures")
    if not isinstance(archs, list) or not archs:
        raise ConfigError(f"missing required field 'architectures' (expected one of {list(SUPPORTED_ARCHITECTURES)})")
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture '{arch}' in field 'architectures'; expected {PRISM_ARCHITECTURE} "
            f"or an EAGLE-3 draft ({', '.join(EAGLE3_ARCHITECTURES)})"
        )
    model_type = d.get("model_type", "llama")
    if model_type != "llama":
        raise ConfigError(f"field 'model_type' must be 'llama' (the EAGLE-3 draft layer), got {model_type!r}")
    hidden_act = d.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise ConfigError(f"field 'hidden_act' must be 'silu', got {hidden_act!r}")

    hidden = _require(d, "hidden_size", int)
    heads = _require(d, "num_attention_heads", int)
    vocab = _require(d, "vocab_size", int)
    layers = _require(d, "num_hidden_layers", int)

    if arch == PRISM_ARCHITECTURE:
        num_modules = _require(d, "prism_num_modules", int)
        table = _require(d, "prism_step_modules", list)
        if layers != 1:
            raise ConfigError(
                f"field 'num_hidden_layers' must be 1 for a PRISM draft (all modules share one KV layer; "
                f"the module count is 'prism_num_modules'), got {layers}"
            )
    else:
        if layers != 1:
            raise ConfigError(
                f"field 'num_hidden_layers' is {layers}: only single-layer EAGLE-3 drafts can be read as PRISM"
            )
        num_modules, table = 1, [0]

    if d.get("tie_word_embeddings"):
        raise ConfigError(
            "field 'tie_word_embeddings' must be false: the draft has its own lm_head over the draft vocabulary"
        )

    eagle = d.get("eagle_config") or {}
    if not isinstance(eagle, dict):
        raise ConfigError("field 'eagle_config' must be an object")
    aux = eagle.get("eagle_aux_hidden_state_layer_ids")
    if aux is not None and (not isinstance(aux, list) or not all(isinstance(i, int) for i in aux)):
        raise ConfigError("field 'eagle_config.eagle_aux_hidden_state_layer_ids' must be a list of integers")
    if eagle.get("use_aux_hidden_state") is False:
        raise ConfigError("field 'eagle_config.use_aux_hidden_state' is false: PRISM drafts need target features")

    return PrismConfig(
        hidden_size=hidden,
        intermediate_size=_require(d, "intermediate_size", int),
        num_attention_heads=heads,
        num_key_value_heads=_optional(d, "num_key_value_heads", int, heads),
        head_dim=_optional(d, "head_dim", int, hidden // heads),
        vocab_size=vocab,
        draft_vocab_size=_optional(d, "draft_vocab_size", int, vocab),
        target_hidden_size=_optional(d, "target_hidden_size", int, hidden),
        rms_norm_eps=float(_optional(d, "rms_norm_eps", (int, float), 1e-5)),
        max_position_embeddings=_optional(d, "max_position_embeddings", int, 8192),
        rope_parameters=_rope_from_dict(d),
        aux_layer_ids=tuple(aux) if aux is not None else None,
        num_modules=num_modules,
        step_modules=tuple(table),
        strict_steps=_strict_steps(d),
        torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "bfloat16"),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
    )


def _strict_steps(d: dict[str, Any]) -> bool:
    value = d.get("prism_strict_steps", False)
    if not isinstance(value, bool):
        raise ConfigError(f"field 'prism_strict_steps' must be true or false, got {value!r}")
    return value


def _validate(c: PrismConfig) -> None:
    for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "vocab_size", "draft_vocab_size", "target_hidden_size", "max_position_embeddings"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"field '{name}' must be a positive integer, got {value!r}")
    if c.num_attention_heads % c.num_key_value_heads:
        raise ConfigError(
            f"field 'num_attention_heads' ({c.num_attention_heads}) must be a multiple of "
            f"'num_key_value_heads' ({c.num_key_value_heads})"
        )
    if c.draft_vocab_size > c.vocab_size:
        raise ConfigError(
            f"field 'draft_vocab_size' ({c.draft_vocab_size}) is larger than 'vocab_size' ({c.vocab_size})"
        )
    if not isinstance(c.num_modules, int) or c.num_modules < 1:
        raise ConfigError(f"field 'prism_num_modules' must be >= 1, got {c.num_modules!r}")
    if len(c.step_modules) == 0:
        raise ConfigError("field 'prism_step_modules' is empty: it needs at least the module of step 0")
    for k, m in enumerate(c.step_modules):
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < c.num_modules:
            raise ConfigError(
                f"field 'prism_step_modules[{k}]' = {m!r} names a missing module "
                f"(prism_num_modules is {c.num_modules}, so modules are 0..{c.num_modules - 1})"
            )
    if not isinstance(c.rope_parameters, dict) or "rope_theta" not in c.rope_parameters:
        raise ConfigError("field 'rope_parameters' must be an object with 'rope_theta'")
    if c.rms_norm_eps <= 0:
        raise ConfigError(f"field 'rms_norm_eps' must be positive, got {c.rms_norm_eps}")
    if c.aux_layer_ids is not None and len(c.aux_layer_ids) == 0:
        raise ConfigError("field 'eagle_config.eagle_aux_hidden_state_layer_ids' is empty")
