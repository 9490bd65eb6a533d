"""Target adapter: an HF causal LM (Llama/Qwen family) that returns, in one forward with past KV, the logits
and the aux features the draft reads (outputs of decoder layers `aux_layer_ids`, = HF `hidden_states[i + 1]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AutoModelForCausalLM, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from prism_sglang.few_rows import use_few_row_linears
from prism_sglang.modeling import attend

GROUPED_SDPA = "prism_grouped_sdpa"


def grouped_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                           attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           is_causal: bool | None = None, **kwargs) -> tuple[Tensor, None]:
    """HF's SDPA attention, except that with a mask (a tree, a verified chain) the query heads of each KV head
    are folded into its rows (`modeling.attend`) instead of the KV heads being copied once per query head (HF's
    `repeat_kv`, which copies the whole KV cache of every layer on every masked forward). Without a mask it is
    HF's own."""
    if attention_mask is None or getattr(module, "num_key_value_groups", 1) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal,
                                      **kwargs)
    return attend(query, key, value, attention_mask, scaling, dropout).transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


class GrowingLayer(DynamicLayer):
    """HF's DynamicLayer, except that keys and values are views into buffers with room to grow: a forward writes
    its new positions in place instead of concatenating the whole cache into a new tensor (HF's `torch.cat`
    copies every layer's cache on every forward, O(context) per token). The gain is small at SmolLM2's
    lengths (2-core AVX2 EPYC, decode step medians interleaved: 54.1 -> 52.2 ms at 300 tokens of context,
    67.4 -> 65.2 ms at 1,500) and grows with the context. Cropping and `keep_cache_positions` work on the views."""

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer = self._value_buffer = None

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self._views_of_buffers() or end > self._key_buffer.shape[-2]:
            self._reserve(key_states, value_states, length, end)
        self._key_buffer[:, :, length:end] = key_states
        self._value_buffer[:, :, length:end] = value_states
        self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        return self.keys, self.values

    def _views_of_buffers(self) -> bool:
        """False when the cached tensors were replaced by others (HF's batch selection, say): then they are
        copied into new buffers."""
        return (self._key_buffer is not None and self.keys.data_ptr() == self._key_buffer.data_ptr()
                and self.values.data_ptr() == self._value_buffer.data_ptr()
                and self.keys.shape[:2] == self._key_buffer.shape[:2])

    def _reserve(self, new_keys: Tensor, new_values: Tensor, length: int, end: int) -> None:
        capacity = end + max(256, end // 4)  # geometric growth: appending costs O(1) copies per position
        batch, heads = new_keys.shape[:2]
        key_buffer = new_keys.new_empty(batch, heads, capacity, new_keys.shape[-1])
        value_buffer = new_values.new_empty(batch, heads, capacity, new_values.shape[-1])
        if length:
            key_buffer[:, :, :length] = self.keys
            value_buffer[:, :, :length] = self.values
        self._key_buffer, self._value_buffer = key_buffer, value_buffer


class GrowingCache(DynamicCache):
    """A DynamicCache of `GrowingLayer`s, for models whose layers all attend to the whole context."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer


@dataclass
class TargetOutput:
    logits: Tensor  # [B, T, V] (or the last `logits_to_keep` positions; none with `lazy_logits`)
    features: Tensor | None  # [B, T, A * H]: aux layer outputs concatenated in aux_layer_ids order
    past_key_values: DynamicCache
    final_hidden: Tensor | None = None  # [B, T, H] the final normed hidden state (lm_head input), if asked
    rows: LogitRows | None = None  # with `lazy_logits`: batch row 0's logits, computed per position on demand


class LogitRows:
    """The logits of one sequence's positions, each computed when first read. Verifying a draft tree, the
    acceptance walk reads only the root and the nodes it accepts (1 + accepted of N + 1), so the lm_head — on a
    small model the largest matrix, [V, H] — runs over those rows only, each as the [1, H] product a plain
    decode step computes."""

    def __init__(self, hidden: Tensor, lm_head: nn.Module) -> None:
        self.hidden, self.lm_head = hidden, lm_head  # [T, H] final normed hidden states
        self._rows: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, position: int) -> Tensor:
        position = int(position)
        if position not in self._rows:
            with torch.no_grad():
                self._rows[position] = self.lm_head(self.hidden[position : position + 1])[0]
        return self._rows[position]


class TargetModel:
    def __init__(self, model: PreTrainedModel, aux_layer_ids: list[int] | None = None) -> None:
        self.model = model.eval()
        self.config = model.config
        self._layers: nn.ModuleList = model.get_decoder().layers
        self._captured: dict[int | str, Tensor] = {}
        self.aux_layer_ids: list[int] = []
        self._hooks: list = []
        self._new_cache = lambda: DynamicCache(config=self.config)
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

    def prepare_for_decoding(self) -> None:
        """For the serving engine on CPU (training keeps HF's defaults); the same arithmetic, faster:
        * the decoder's linears become `FewRowLinear`s: a decode step (1 row) and a verification (2..12 rows)
          read each weight once (`prism_sglang.few_rows` has the figures); the lm_head, which acceptance runs
          one row at a time, stays with MKL on a weight stored transposed;
        * masked forwards (verification) use `grouped_sdpa_attention`, which does not copy the KV cache;
        * new KV caches are `GrowingCache`s (no copy of the cache per forward), where every layer attends to
          the whole context."""
        self.model.set_attn_implementation(GROUPED_SDPA)
        if all(type(layer) is DynamicLayer for layer in DynamicCache(config=self.config).layers):
            self._new_cache = GrowingCache  # HF's own reading of the config: no sliding-window layer
        with torch.no_grad():
            use_few_row_linears(self.model, one_row=(self.model.get_output_embeddings(),))

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
        logits_to_keep: int | Tensor = 0,
        final_hidden: bool = False,
        lazy_logits: bool = False,
    ) -> TargetOutput:
        """One forward. `attention_mask` may be a 4D bool mask [B, 1, T, past + T] (True = visible) for trees,
        or a 2D padding mask; `logits_to_keep` = N > 0 computes logits for the last N positions only;
        `final_hidden` also returns the final normed hidden state; `lazy_logits` computes no logits here but
        returns `rows`, batch row 0's logits position by position on demand."""
        if lazy_logits:  # no rows through the lm_head now (an empty index), the final hidden kept for `rows`
            logits_to_keep, final_hidden = torch.zeros(0, dtype=torch.long), True
        if past_key_values is None:
            past_key_values = self._new_cache()
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
        rows = LogitRows(final[0], self.model.get_output_embeddings()) if lazy_logits else None
        return TargetOutput(out.logits, features, out.past_key_values, final, rows)


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
