"""The PRISM draft model in PyTorch (DESIGN §1).

`fc` maps the target's aux features (A * H_target) to H; every module is one EAGLE-3 decoder layer whose
attention input is `[input_layernorm(embed); hidden_norm(hidden)]` (2H wide); `norm` + `lm_head` over the draft
vocabulary are shared; the token embedding is the target's (frozen). Draft step k runs module
`step_modules[min(k, len - 1)]`; all modules read and write one KV cache.

Position convention (SGLang's): draft position t holds token x(t+1) with target feature f(t) and predicts
x(t+2). The two inference entry points are `PrismDraft.forward` (any step, explicit attention mask, for
trees) and `PrismDraft.extend` (step 0 over a run of context tokens). The training-time unroll in
`prism_sglang.train.ttt` is built from the same `DraftModule` pieces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from prism_sglang.config import PrismConfig


def hf_llama_config(config: PrismConfig) -> LlamaConfig:
    """A transformers LlamaConfig with the draft's dimensions (for HF's rope, MLP and norm modules)."""
    return LlamaConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters=dict(config.rope_parameters),
        vocab_size=config.vocab_size,
        num_hidden_layers=1,
        hidden_act="silu",
    )


class KVCache:
    """The draft's KV cache: one attention layer, shared by every module. Tensors are [B, kv_heads, T, d]."""

    def __init__(self) -> None:
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=2)
            self.values = torch.cat([self.values, values], dim=2)
        return self.keys, self.values

    def truncate(self, length: int) -> None:
        """Drop everything after the first `length` positions (the drafted tokens of a finished round)."""
        if self.keys is not None and length < self.length:
            self.keys = self.keys[:, :, :length]
            self.values = self.values[:, :, :length]


def attend(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float | None = None,
           dropout: float = 0.0) -> Tensor:
    """Softmax attention of grouped-query heads. q [B, H, Tq, d]; keys/values [B, KV, Tk, d]; mask bool
    [B, 1, Tq, Tk], True = visible; scale default d ** -0.5. Returns [B, H, Tq, d].

    The query heads of each KV head are folded into its rows (query head h reads KV head h // groups, as in
    HF's `repeat_kv`) instead of the keys and values being copied once per query head: with a growing cache
    that copy, not the product, was most of the cost of attending a few new tokens (the draft's extend, a
    verification)."""
    b, heads, n, d = q.shape
    kv_heads = keys.shape[1]
    groups = heads // kv_heads
    if groups > 1:
        q = q.reshape(b, kv_heads, groups * n, d)
        mask = mask[:, :, None].expand(b, 1, groups, n, mask.shape[-1]).reshape(b, 1, groups * n, -1)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout,
                                         scale=d ** -0.5 if scale is None else scale)
    return out.reshape(b, heads, n, d)


class DraftAttention(nn.Module):
    def __init__(self, config: PrismConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        # EAGLE-3 input layer: q/k/v read the concatenation [embedding; hidden] (2H).
        self.q_proj = nn.Linear(2 * h, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(2 * h, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(2 * h, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, H, T, d], k and v [B, KV, T, d], rope applied to q and k."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def output(self, attn: Tensor) -> Tensor:
        b, _, t, _ = attn.shape
        return self.o_proj(attn.transpose(1, 2).reshape(b, t, -1))


class DraftModule(nn.Module):
    """One PRISM module: one EAGLE-3 decoder layer (checkpoint names `layers.{m}.*`)."""

    def __init__(self, config: PrismConfig, hf_config: LlamaConfig) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = LlamaRMSNorm(h, eps=eps)
        self.hidden_norm = LlamaRMSNorm(h, eps=eps)
        self.self_attn = DraftAttention(config)
        self.post_attention_layernorm = LlamaRMSNorm(h, eps=eps)
        self.mlp = LlamaMLP(hf_config)

    def qkv(self, embeds: Tensor, hidden: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        return self.self_attn.project(x, cos, sin)

    def finish(self, attn: Tensor, residual: Tensor) -> Tensor:
        """Attention output -> o_proj + residual -> MLP block; returns the pre-norm hidden state."""
        h = self.self_attn.output(attn) + residual
        return h + self.mlp(self.post_attention_layernorm(h))


class PrismDraft(nn.Module):
    def __init__(self, config: PrismConfig) -> None:
        super().__init__()
        self.config = config
        hf = hf_llama_config(config)
        self.fc = nn.Linear(config.num_aux_layers * config.target_hidden_size, config.hidden_size, bias=False)
        self.layers = nn.ModuleList(DraftModule(config, hf) for _ in range(config.num_modules))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        # EAGLE-3 vocabulary maps: target id = draft id + d2t[draft id]; t2d marks target ids in the draft vocab.
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        t2d = torch.zeros(config.vocab_size, dtype=torch.bool)
        t2d[: config.draft_vocab_size] = True
        self.register_buffer("t2d", t2d)
        self.rotary = LlamaRotaryEmbedding(hf)
        # The target's token embedding, frozen; attached at load (`attach_embedding`) unless stored.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)

    # -- vocabulary and embedding -------------------------------------------------------------------------
    def attach_embedding(self, weight: Tensor) -> None:
        """Borrow the target's token embedding (shared storage, frozen)."""
        expected = (self.config.vocab_size, self.config.hidden_size)
        if tuple(weight.shape) != expected:
            raise ValueError(f"target embedding has shape {tuple(weight.shape)}, the draft needs {expected}")
        self.embed_tokens.weight = nn.Parameter(weight, requires_grad=False)

    def set_vocab_map(self, draft_to_target: Tensor) -> None:
        """Install a draft vocabulary given as the sorted target ids it contains."""
        ids = draft_to_target.to(torch.long)
        if ids.numel() != self.config.draft_vocab_size:
            raise ValueError(f"draft vocabulary has {ids.numel()} ids, config says {self.config.draft_vocab_size}")
        self.d2t.copy_(ids - torch.arange(ids.numel()))
        self.t2d.zero_()
        self.t2d[ids] = True

    def to_target_ids(self, draft_ids: Tensor) -> Tensor:
        return draft_ids + self.d2t[draft_ids]

    @property
    def draft_to_target(self) -> Tensor:
        return torch.arange(self.config.draft_vocab_size, device=self.d2t.device) + self.d2t

    # -- forward ---------------------------------------------------------------------------------------
    def module_for_step(self, step: int) -> DraftModule:
        return self.layers[self.config.module_for_step(step)]

    def forward(
        self,
        step: int,
        input_ids: Tensor,
        hidden: Tensor,
        position_ids: Tensor,
        cache: KVCache,
        attention_mask: Tensor,
    ) -> Tensor:
        """One draft pass at draft step `step` over N new tokens; returns the pre-norm hidden [B, N, H].

        `hidden` is the target's aux features [B, N, A*Ht] at step 0 and the previous step's output hidden
        [B, N, H] at steps >= 1. `attention_mask` is bool [B, N, cache.length + N]: which cached and new
        tokens each new token sees. The new tokens' K/V are appended to `cache`.
        """
        module = self.module_for_step(step)
        if step == 0:
            hidden = self.fc(hidden)
        cos, sin = self.rotary(hidden, position_ids)
        q, k, v = module.qkv(self.embed_tokens(input_ids), hidden, cos, sin)
        keys, values = cache.append(k, v)
        if attention_mask.shape[-1] != keys.shape[2]:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} keys, the cache has {keys.shape[2]}")
        return module.finish(attend(q, keys, values, attention_mask[:, None]), hidden)

    def extend(self, input_ids: Tensor, features: Tensor, cache: KVCache, start_position: int | None = None) -> Tensor:
        """Step 0 over a run of N context tokens (prefill or the draft extend after verification).

        Draft positions start at `start_position` (default: the cache length, i.e. right after the cached
        context); each token sees the whole cache and the new tokens up to itself.
        """
        n, past = input_ids.shape[1], cache.length
        start = past if start_position is None else start_position
        positions = torch.arange(start, start + n, device=input_ids.device).expand(input_ids.shape[0], n)
        mask = torch.ones(n, past + n, dtype=torch.bool, device=input_ids.device)
        mask[:, past:] = torch.tril(mask[:, past:])
        return self(0, input_ids, features, positions, cache, mask.expand(input_ids.shape[0], n, past + n))

    def logits(self, hidden: Tensor) -> Tensor:
        """Draft-vocabulary logits from pre-norm hidden states."""
        return self.lm_head(self.norm(hidden))
