"""Training-time test (TTT): all K draft steps unrolled over whole sequences at once (DESIGN §2.1).

Index t of step j stands for "the chain drafted after position t": its query sits at position t + j, reads
token x(t+1+j) and the previous step's hidden at t, and attends to
  * step 0's keys at indices s <= t (positions s: the context, written by module table[0]), and
  * the keys steps 1..j produced at index t (positions t+i, written by module table[i]).
That is exactly what the inference forward sees for the same chain (the shared KV cache), so the step-k
logits of this unroll equal the engine's — a test checks it. Positions are t + j, not t (SpecForge's
shortcut), and every step runs its own module from the step table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import repeat_kv

from prism_sglang.modeling import PrismDraft


def _shift_left(ids: Tensor, by: int) -> Tensor:
    """ids[:, t + by] at index t (zeros past the end: those indices are never attended by valid ones)."""
    return F.pad(ids[:, by:], (0, by)) if by else ids


def _attend(q: Tensor, k0: Tensor, v0: Tensor, diag_k: list[Tensor], diag_v: list[Tensor]) -> Tensor:
    """Causal attention over step-0 keys plus, per index, the diagonal keys of steps 1..j. Shapes [B, H, T, d]
    (keys and values with the KV heads). On CPU, fused: the causal part in PyTorch's flash kernel, its
    log-sum-exp merged with the diagonal keys (`_FusedTTTAttention`); no [T, T] tensor is kept. Elsewhere dense."""
    groups = q.shape[1] // k0.shape[1]
    scale = q.shape[-1] ** -0.5
    k0, v0 = repeat_kv(k0, groups), repeat_kv(v0, groups)
    diag_k = [repeat_kv(k, groups) for k in diag_k]
    diag_v = [repeat_kv(v, groups) for v in diag_v]
    if q.device.type != "cpu":
        return _attend_dense(q, k0, v0, diag_k, diag_v, scale)
    if not diag_k:
        return F.scaled_dot_product_attention(q, k0, v0, is_causal=True, scale=scale)
    return _FusedTTTAttention.apply(q, k0, v0, torch.stack(diag_k), torch.stack(diag_v), scale)


def _attend_dense(q: Tensor, k0: Tensor, v0: Tensor, diag_k: list[Tensor], diag_v: list[Tensor],
                  scale: float) -> Tensor:
    """The same attention with the scores materialised: [B, H, T, T + j] (memory quadratic in T)."""
    t = q.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k0.transpose(-1, -2) * scale).masked_fill(~causal, float("-inf"))
    extra = [(q * k).sum(-1, keepdim=True) * scale for k in diag_k]  # [B, H, T, 1] each
    weights = torch.softmax(torch.cat([scores, *extra], dim=-1), dim=-1)
    out = weights[..., :t] @ v0
    for i, v in enumerate(diag_v):
        out = out + weights[..., t + i : t + i + 1] * v
    return out


_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _FusedTTTAttention(torch.autograd.Function):
    """o = w0 * o0 + sum_i w_i * v_i: o0, lse0 the causal flash attention over step 0's keys, e_i = q . k_i the
    diagonal scores, (w0, w_i) the softmax of (lse0, e_1..e_j): exactly the dense softmax over both key sets.

    Backward: the causal block's share is the flash backward with the output gradient scaled by w0 and the
    *merged* output in place of o0 (so its D = rowsum(dO * o) term is the whole softmax's); the diagonal keys'
    share is elementwise: dS_i = w_i (dO . v_i - D)."""

    @staticmethod
    def forward(ctx, q: Tensor, k0: Tensor, v0: Tensor, dk: Tensor, dv: Tensor, scale: float) -> Tensor:
        with torch.autocast("cpu", enabled=False):
            o0, lse0 = _FLASH(q, k0, v0, 0.0, True, scale=scale)
            e = (q.unsqueeze(0).float() * dk.float()).sum(-1) * scale  # [j, B, H, T]
            total = torch.logsumexp(torch.cat([lse0.unsqueeze(0), e]), dim=0)
            w0, w = torch.exp(lse0 - total), torch.exp(e - total)
            o = (w0.unsqueeze(-1) * o0.float() + (w.unsqueeze(-1) * dv.float()).sum(0)).to(q.dtype)
        ctx.save_for_backward(q, k0, v0, dk, dv, o, lse0, w0, w)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k0, v0, dk, dv, o, lse0, w0, w = ctx.saved_tensors
        scale = ctx.scale
        with torch.autocast("cpu", enabled=False):
            g = grad.float()
            gq, gk0, gv0 = _FLASH_BACKWARD((w0.unsqueeze(-1) * g).to(q.dtype), q, k0, v0, o, lse0, 0.0, True,
                                           scale=scale)
            d = (g * o.float()).sum(-1)
            ds = w * ((g.unsqueeze(0) * dv.float()).sum(-1) - d)  # [j, B, H, T]
            gq = (gq.float() + scale * (ds.unsqueeze(-1) * dk.float()).sum(0)).to(q.dtype)
            gdk = (scale * ds.unsqueeze(-1) * q.unsqueeze(0).float()).to(dk.dtype)
            gdv = (w.unsqueeze(-1) * g.unsqueeze(0)).to(dv.dtype)
        return gq, gk0, gv0, gdk, gdv, None


def ttt_forward(draft: PrismDraft, input_ids: Tensor, features: Tensor, num_steps: int) -> list[Tensor]:
    """Pre-norm hidden states [B, T, H] of steps 0..num_steps-1 (apply `draft.logits` for predictions).

    `input_ids` [B, T] is the token sequence x_0..x_{T-1}; `features` [B, T, A*Ht] the target's aux features
    f(0)..f(T-1). Step j at index t predicts x(t+2+j).
    """
    b, t = input_ids.shape
    positions = torch.arange(t, device=input_ids.device).expand(b, t)
    hidden = draft.fc(features)
    diag_k: list[Tensor] = []
    diag_v: list[Tensor] = []
    k0 = v0 = None
    outputs = []
    for step in range(num_steps):
        module = draft.module_for_step(step)
        cos, sin = draft.rotary(hidden, positions + step)
        q, k, v = module.qkv(draft.embed_tokens(_shift_left(input_ids, step + 1)), hidden, cos, sin)
        if step == 0:
            k0, v0 = k, v
        else:
            diag_k.append(k)
            diag_v.append(v)
        hidden = module.finish(_attend(q, k0, v0, diag_k, diag_v), hidden)
        outputs.append(hidden)
    return outputs


class DraftUnroll(nn.Module):
    """The draft's whole training forward as one module call: the TTT unroll, then per step the draft logits of
    the (row, index) cells that step scores (possibly none). Wrappers that act around `forward`
    — FSDP2 gathers sharded parameters before it and reduce-scatters their gradients after its backward — then
    cover every module the unroll touches, however often the step table reuses one."""

    def __init__(self, draft: PrismDraft) -> None:
        super().__init__()
        self.draft = draft

    def forward(self, input_ids: Tensor, features: Tensor, cells: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        hiddens = ttt_forward(self.draft, input_ids, features, len(cells))
        return [self.draft.logits(h[c]) for h, c in zip(hiddens, cells, strict=True)]
