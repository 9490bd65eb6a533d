"""Target adapter: an HF causal LM (Llama/Qwen family) that returns, in one forward with past KV, the logits
and the aux features the draft reads (outputs of decoder layers `aux_layer_ids`, = HF `hidden_states[i + 1]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel


@dataclass
class TargetOutput:
    logits: Tensor  # [B, T, V] (or the last `logits_to_keep` positions)
    features: Tensor | None  # [B, T, A * H]: aux layer outputs concatenated in aux_layer_ids order
    past_key_values: DynamicCache
    final_hidden: Tensor | None = None  # [B, T, H] the final normed hidden state (lm_head input), if asked


class TargetModel:
    def __init__(self, model: PreTrainedModel, aux_layer_ids: list[int] | None = None) -> None:
        self.model = model.eval()
        self.config = model.config
        self._layers: nn.ModuleList = model.get_decoder().layers
        self._captured: dict[int | str, Tensor] = {}
        self.aux_layer_ids: list[int] = []
        self._hooks: list = []
        if aux_layer_ids is not None:
            self.set_aux_layers(aux_layer_ids)
        model.get_decoder().norm.register_forward_hook(self._capture_hook("final"))

    @classmethod
    def load(
        cls,
        path: str | Path,
        aux_layer_ids: list[int] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> TargetModel:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="sdpa")
        return cls(model.to(device), aux_layer_ids)

    def set_aux_layers(self, aux_layer_ids: list[int]) -> None:
        """Capture the outputs of these decoder layers on every forward (hooks, so nothing else is kept)."""
        for hook in self._hooks:
            hook.remove()
        n = len(self._layers)
        for i in aux_layer_ids:
            if not 0 <= i < n:
                raise ValueError(f"aux layer id {i} is outside the target's decoder layers 0..{n - 1}")
        self.aux_layer_ids = list(aux_layer_ids)
        self._hooks = [self._layers[i].register_forward_hook(self._capture_hook(i)) for i in set(aux_layer_ids)]

    def _capture_hook(self, layer_id: int | str):
        def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
            self._captured[layer_id] = output[0] if isinstance(output, tuple) else output

        return hook

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    def embedding_weight(self) -> Tensor:
        return self.model.get_input_embeddings().weight

    def lm_head_weight(self) -> Tensor:
        """[V, H]: logits = final normed hidden @ lm_head_weight().T."""
        return self.model.get_output_embeddings().weight

    @torch.no_grad()
    def forward(
        self,
        input_ids: Tensor,
        past_key_values: DynamicCache | None = None,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        logits_to_keep: int = 0,
        final_hidden: bool = False,
    ) -> TargetOutput:
        """One forward. `attention_mask` may be a 4D bool mask [B, 1, T, past + T] (True = visible) for trees,
        or a 2D padding mask; `logits_to_keep` = N > 0 computes logits for the last N positions only;
        `final_hidden` also returns the final normed hidden state."""
        if past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        self._captured.clear()
        out = self.model(
            input_ids=input_ids,
            past_key_values=past_key_values,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        features = None
        if self.aux_layer_ids:
            features = torch.cat([self._captured[i] for i in self.aux_layer_ids], dim=-1)
        final = self._captured["final"] if final_hidden else None
        self._captured.clear()
        return TargetOutput(out.logits, features, out.past_key_values, final)


def keep_cache_positions(cache: DynamicCache, prefix_length: int, keep: Tensor) -> None:
    """Keep the first `prefix_length` cached positions plus positions `prefix_length + keep` (in order):
    after tree verification only the accepted path stays in the target's KV cache. Only the kept tail is
    moved (in place, then the cache is cut), so a cycle costs O(accepted) copies, not O(context)."""
    end = prefix_length + len(keep)
    moved = not torch.equal(keep.cpu(), torch.arange(len(keep)))  # a chain's path is already in place
    for layer in cache.layers:
        if moved:
            source = prefix_length + keep.to(layer.keys.device)
            layer.keys[:, :, prefix_length:end] = layer.keys[:, :, source]  # the gather copies before writing
            layer.values[:, :, prefix_length:end] = layer.values[:, :, source]
        layer.keys = layer.keys[:, :, :end]
        layer.values = layer.values[:, :, :end]
