"""TEST-ONLY: `torch.ops.sgl_kernel.decode_attention_cpu` / `extend_attention_cpu` in plain PyTorch.

What SGLang 0.5.17's `intel_amx` backend (`srt/layers/attention/intel_amx_backend.py`) expects of them, with a
page size of 1 (one KV slot per token):
* `req_to_token[r, j]` is the KV slot of token j of request-pool row r; `k_buffer`/`v_buffer` are [slots, H_kv, D].
* decode: first writes the new token's K/V at `loc` (the backend leaves that to the kernel), then each query b
  attends to the first `seq_lens[b]` slots of its row (the new token included).
* extend (prefill, draft extend, target verify): K/V are already in the cache; the `extend_seq_lens[b]` new
  tokens (rows `extend_start_loc[b]...` of q/k/v) see the request's prefix (`seq_lens[b] - extend_seq_lens[b]`
  slots) and, among themselves, what causal order or, in a tree verification, `tree_mask` ([bs * L * L] bool,
  row-major per request) allows.
Softmax runs in float32 and the output is cast to the output's dtype. Only what a Llama model asks for is
supported (no logit cap, sliding window, attention sinks or cross-attention); anything else raises, so a test
never passes on semantics this stand-in does not have.
"""

from __future__ import annotations

import torch

SCHEMAS = {
    "decode_attention_cpu": (
        "decode_attention_cpu(Tensor query, Tensor(a!) k_buffer, Tensor(b!) v_buffer, Tensor(c!) output, "
        "Tensor? key, Tensor? value, Tensor? loc, Tensor attn_logits, Tensor req_to_token, Tensor req_pool_indices, "
        "Tensor seq_lens, float sm_scale, float logit_cap, bool is_cross_attn, int sliding_window_size, "
        "Tensor? encoder_lens, Tensor? sinks) -> ()"
    ),
    "extend_attention_cpu": (
        "extend_attention_cpu(Tensor q_extend, Tensor? k_extend, Tensor? v_extend, Tensor(a!) o_extend, "
        "Tensor k_buffer, Tensor v_buffer, Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens, "
        "Tensor extend_seq_lens, Tensor extend_start_loc, int max_len_extend, float sm_scale, float logit_cap, "
        "bool is_cross_attn, int sliding_window_size, Tensor? encoder_lens, Tensor? sinks, Tensor? tree_mask) -> ()"
    ),
}


def check(condition: bool, message: str) -> None:
    """The real kernels' TORCH_CHECK: a RuntimeError naming what the caller got wrong."""
    if not condition:
        raise RuntimeError(f"sgl_kernel test stand-in: {message}")


def _unsupported(logit_cap: float, is_cross_attn: bool, sliding_window_size: int, encoder_lens: torch.Tensor | None,
                 sinks: torch.Tensor | None) -> None:
    for name, used in (("logit_cap", logit_cap > 0), ("is_cross_attn", is_cross_attn),
                       ("sliding_window_size", sliding_window_size > 0), ("encoder_lens", encoder_lens is not None),
                       ("sinks", sinks is not None)):
        if used:
            raise NotImplementedError(f"sgl_kernel test stand-in: attention with {name} is not implemented")


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
           visible: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention in float32. q [L, H, D]; keys/values [S, H_kv, D] (grouped heads); visible [L, S] bool
    or None (all). Returns [L, H, Dv] float32."""
    groups = q.shape[1] // keys.shape[1]
    k = keys.float().repeat_interleave(groups, dim=1).transpose(0, 1)  # [H, S, D]
    v = values.float().repeat_interleave(groups, dim=1).transpose(0, 1)
    scores = q.float().transpose(0, 1) @ k.transpose(1, 2) * scale  # [H, L, S]
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).transpose(0, 1)


def decode_attention_cpu(query: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, output: torch.Tensor,
                         key: torch.Tensor | None, value: torch.Tensor | None, loc: torch.Tensor | None,
                         attn_logits: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                         seq_lens: torch.Tensor, sm_scale: float, logit_cap: float, is_cross_attn: bool,
                         sliding_window_size: int, encoder_lens: torch.Tensor | None,
                         sinks: torch.Tensor | None) -> None:
    _unsupported(logit_cap, is_cross_attn, sliding_window_size, encoder_lens, sinks)
    num_seqs = seq_lens.numel()
    check(query.shape[0] == num_seqs, f"decode: {query.shape[0]} queries but seq_lens has {num_seqs} entries")
    check(req_pool_indices.numel() == num_seqs, "decode: req_pool_indices and seq_lens differ in size")
    check(attn_logits.shape[0] == num_seqs and attn_logits.dtype == torch.float32,
          "decode: attn_logits must be float32 with one row per sequence")
    check(seq_lens.dtype == torch.int64 and req_pool_indices.dtype == torch.int64,
          "decode: seq_lens and req_pool_indices must be int64")
    if key is not None:
        check(value is not None and loc is not None and loc.numel() == num_seqs,
              "decode: key needs value and one loc per sequence")
        k_buffer[loc] = key.to(k_buffer.dtype)
        v_buffer[loc] = value.to(v_buffer.dtype)
    lengths = seq_lens.tolist()
    rows = req_pool_indices.tolist()
    for b in range(num_seqs):
        check(lengths[b] >= 1, f"decode: sequence {b} has seq_len {lengths[b]}")
        slots = req_to_token[rows[b], : lengths[b]].long()
        output[b] = attend(query[b : b + 1], k_buffer[slots], v_buffer[slots], sm_scale)[0].to(output.dtype)


def extend_attention_cpu(q_extend: torch.Tensor, k_extend: torch.Tensor | None, v_extend: torch.Tensor | None,
                         o_extend: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                         req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                         extend_seq_lens: torch.Tensor, extend_start_loc: torch.Tensor, max_len_extend: int,
                         sm_scale: float, logit_cap: float, is_cross_attn: bool, sliding_window_size: int,
                         encoder_lens: torch.Tensor | None, sinks: torch.Tensor | None,
                         tree_mask: torch.Tensor | None) -> None:
    _unsupported(logit_cap, is_cross_attn, sliding_window_size, encoder_lens, sinks)
    check(k_extend is not None and v_extend is not None, "extend: k_extend and v_extend are required")
    num_seqs = seq_lens.numel()
    check(req_pool_indices.numel() == num_seqs and extend_seq_lens.numel() == num_seqs
          and extend_start_loc.numel() == num_seqs, "extend: per-sequence tensors differ in size")
    check(extend_seq_lens.dtype == req_to_token.dtype and extend_start_loc.dtype == req_to_token.dtype,
          "extend: extend_seq_lens and extend_start_loc must have req_to_token's dtype")
    masks = None
    if tree_mask is not None:
        check(tree_mask.dtype == torch.bool and tree_mask.numel() == num_seqs * max_len_extend**2,
              f"extend: tree_mask must be bool with {num_seqs} * {max_len_extend}^2 entries")
        masks = tree_mask.view(num_seqs, max_len_extend, max_len_extend)
    totals, news, starts = seq_lens.tolist(), extend_seq_lens.tolist(), extend_start_loc.tolist()
    rows = req_pool_indices.tolist()
    for b in range(num_seqs):
        new, start = news[b], starts[b]
        prefix = totals[b] - new
        check(prefix >= 0, f"extend: sequence {b} has seq_len {totals[b]} < extend_seq_len {new}")
        check(new <= max_len_extend, f"extend: sequence {b} extends by {new} > max_len_extend {max_len_extend}")
        if new == 0:
            continue
        slots = req_to_token[rows[b], :prefix].long()
        keys = torch.cat([k_buffer[slots].to(k_extend.dtype), k_extend[start : start + new]])
        values = torch.cat([v_buffer[slots].to(v_extend.dtype), v_extend[start : start + new]])
        among_new = (torch.tril(torch.ones(new, new, dtype=torch.bool)) if masks is None
                     else masks[b, :new, :new])
        visible = torch.cat([torch.ones(new, prefix, dtype=torch.bool), among_new], dim=1)
        out = attend(q_extend[start : start + new], keys, values, sm_scale, visible)
        o_extend[start : start + new] = out.to(o_extend.dtype)
