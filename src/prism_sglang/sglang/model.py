"""`LlamaForCausalLMPrism`: the PRISM draft as an SGLang 0.5.17 model (DESIGN §3; notes/sglang.md §2.3-2.4).

Built on SGLang's Llama EAGLE-3 draft (`sglang.srt.models.llama_eagle3`). The M modules are EAGLE-3 decoder
layers all built as layer 0, so each is a 2H-wide "input layer", and all share ONE `RadixAttention`: one
KV-cache layer, as the draft config's `num_hidden_layers: 1` tells SGLang's memory planner. A forward runs the
one module that the step -> module table names for the current draft step. The step comes from
`ForwardContext.spec_draft_step` (patches/sglang-0.5.17/0001); None (prefill, draft extend) is step 0.

`prism_sglang.modeling.PrismDraft` is the reference this model must agree with.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from typing import Any

import torch
from sglang.srt.layers.quantization.base_config import QuantizationConfig
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, PPProxyTensors
from sglang.srt.model_executor.forward_context import ForwardContext, get_forward_context, has_forward_context
from sglang.srt.models import llama_eagle3
from sglang.srt.runtime_context import get_spec
from sglang.srt.speculative.adaptive_spec_params import resolve_candidate_steps_from_config
from sglang.srt.utils import add_prefix
from transformers import PretrainedConfig

from prism_sglang.checkpoint import CheckpointError, validated_tensors
from prism_sglang.config import ConfigError, PrismConfig

# EAGLE-3 variants SGLang's draft class can build but the PRISM format (DESIGN §1) and the reference model
# do not have; accepting them would load a model that silently computes something else.
UNSUPPORTED_FLAGS = ("norm_before_fc", "fc_norm", "use_aux_norm", "norm_output", "bias", "attention_bias", "mlp_bias")


def require_step_patch(prism: PrismConfig) -> None:
    """Raise unless sglang tells the model its draft step (patch 0001: the ForwardContext field *and* the draft
    loop that sets it), where the table makes that matter."""
    if len(set(prism.step_modules)) == 1:
        return
    missing = [part for part, present in (("ForwardContext has no 'spec_draft_step'", _context_has_step()),
                                          ("EagleDraftWorker.draft_forward does not set it", _draft_loop_sets_step()))
               if not present]
    if missing:
        raise RuntimeError(
            f"sglang is not (fully) patched for PRISM: {'; '.join(missing)}, so every draft step would run module "
            f"{prism.step_modules[0]}. Run `prism-sglang patch-sglang` (applies patches/sglang-0.5.17)."
        )


def _context_has_step() -> bool:
    return any(f.name == "spec_draft_step" for f in dataclasses.fields(ForwardContext))


def _draft_loop_sets_step() -> bool:
    """Whether the installed draft loop passes the step (its source is the only witness short of a forward)."""
    from sglang.srt.speculative.eagle_worker_v2 import EagleDraftWorker

    return "spec_draft_step=" in inspect.getsource(EagleDraftWorker.draft_forward)


def current_draft_step() -> int:
    """The draft step of the running forward: k >= 1 inside the draft-decode loop, else 0 (prefill/extend)."""
    if not has_forward_context():
        return 0
    step = getattr(get_forward_context(), "spec_draft_step", None)
    return 0 if step is None else step


def max_draft_steps(args: Any) -> int | None:
    """The most draft steps a server may run: `speculative_num_steps`, or the largest adaptive candidate.

    `args` is a ServerArgs or the `get_spec()` namespace (same field names).
    """
    steps = args.speculative_num_steps
    if args.speculative_adaptive:
        candidates = resolve_candidate_steps_from_config(args.speculative_adaptive_config)
        steps = max(steps or 0, *candidates)
    return steps


def prism_config_from_hf(config: PretrainedConfig) -> PrismConfig:
    """The PrismConfig of the HF config SGLang loaded from the draft's config.json; raises ConfigError."""
    source = getattr(config, "_name_or_path", "") or "(unnamed)"
    try:
        prism = PrismConfig.from_dict(config.to_dict())
    except ConfigError as e:
        raise ConfigError(f"PRISM draft {source}: {e}") from e
    eagle = getattr(config, "eagle_config", None) or {}
    flags = [f for f in UNSUPPORTED_FLAGS if getattr(config, f, None) or eagle.get(f)]
    if flags:
        raise ConfigError(f"PRISM draft {source}: EAGLE-3 variant field(s) {flags} are not part of the PRISM format")
    num_aux = getattr(config, "num_aux_hidden_states", None)
    if num_aux is not None and num_aux != prism.num_aux_layers:
        raise ConfigError(
            f"PRISM draft {source}: field 'num_aux_hidden_states' ({num_aux}) disagrees with "
            f"'eagle_config.eagle_aux_hidden_state_layer_ids' ({prism.num_aux_layers} layers)"
        )
    if "mrope_section" in prism.rope_parameters:
        raise ConfigError(f"PRISM draft {source}: field 'rope_parameters' uses mrope, which PRISM drafts do not")
    return prism


class PrismLlamaModel(llama_eagle3.LlamaModel):
    """EAGLE-3's draft body (embedding, fc, final norm) with M modules; one of them runs per forward."""

    def __init__(
        self, config: PretrainedConfig, prism: PrismConfig, quant_config: QuantizationConfig | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__(config, quant_config, prefix)  # config.num_hidden_layers == 1: builds module 0
        self.prism = prism
        shared = self.layers[0].self_attn.attn
        for _ in range(1, prism.num_modules):
            # layer_id 0 makes the module an input layer (q/k/v over [embeds; hidden]) that uses KV layer 0.
            layer = llama_eagle3.LlamaDecoderLayer(config, 0, quant_config, prefix)
            layer.self_attn.attn = shared
            self.layers.append(layer)

    @property
    def shared_attention(self) -> torch.nn.Module:
        return self.layers[0].self_attn.attn

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        input_embeds: torch.Tensor | None = None,
        pp_proxy_tensors: PPProxyTensors | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """As `llama_eagle3.LlamaModel.forward`, except that one module runs instead of every layer.

        Returns (normed hidden for the logits, [pre-norm hidden]); the next draft step reads the latter.
        """
        embeds = input_embeds if input_embeds is not None else self._token_embeddings(input_ids, forward_batch)
        hidden_states = forward_batch.spec_info.hidden_states
        if hidden_states.shape[-1] != embeds.shape[-1]:
            # Target features (prefill / draft extend, i.e. step 0): project the concatenated aux states to H.
            hidden_states = self.fc(hidden_states)
        if hidden_states.shape[0] == 0:  # idle batch (a DP rank without requests)
            return hidden_states, [hidden_states]
        module = self.layers[self.prism.module_for_step(current_draft_step())]
        hidden_states, residual = module(positions, embeds, hidden_states, forward_batch, None)
        normed, pre_norm = self.norm(hidden_states, residual)
        return normed, [pre_norm]

    def _token_embeddings(self, input_ids: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        """Token embeddings; a multimodal target hands over its own input embeddings, as for EAGLE-3."""
        embeds = forward_batch.mm_input_embeds
        if (
            forward_batch.forward_mode.is_extend()
            and forward_batch.contains_mm_inputs()
            and not forward_batch.forward_mode.is_draft_extend_v2()
        ):
            last = (forward_batch.extend_start_loc + forward_batch.extend_seq_lens - 1).long()
            embeds[last] = self.embed_tokens(input_ids[last])
        return self.embed_tokens(input_ids) if embeds is None else embeds


class LlamaForCausalLMPrism(llama_eagle3.LlamaForCausalLMEagle3):
    """SGLang draft model for PRISM checkpoints (`architectures: ["LlamaForCausalLMPrism"]`)."""

    def __init__(
        self, config: PretrainedConfig, quant_config: QuantizationConfig | None = None, prefix: str = ""
    ) -> None:
        prism = prism_config_from_hf(config)
        steps = max_draft_steps(get_spec())
        if steps is not None:
            prism.check_num_steps(steps)
        require_step_patch(prism)
        super().__init__(config, quant_config, prefix)
        # Drop the parent's single-layer body before building ours: same tensor shapes, so the memory is reused.
        del self.model
        self.prism_config = prism
        self.model = PrismLlamaModel(config, prism, quant_config, prefix=add_prefix("model", prefix))
        if self._draft_window_size is not None:
            self.model.shared_attention.sliding_window_size = self._draft_window_size

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load as EAGLE-3 does, each tensor checked (name, shape) before it is copied and the whole set (count,
        vocabulary map) when the stream ends; streamed because some loaders free a file's tensors once past it."""
        try:
            super().load_weights(validated_tensors(self.prism_config, weights))
        except CheckpointError as e:
            raise CheckpointError(f"PRISM draft {getattr(self.config, '_name_or_path', '')}: {e}") from e


EntryClass = [LlamaForCausalLMPrism]
