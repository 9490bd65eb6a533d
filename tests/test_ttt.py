"""Train/inference consistency: the TTT unroll's step-k logits equal the inference forward's on the same chain.

This is the guard against the mismatch the paper's own trainer had (later modules recomputing context KV).
Tolerance: 1e-5 absolute/relative in float64.
"""

import copy

import pytest
import torch
from transformers.models.llama.modeling_llama import repeat_kv

from prism_sglang.modeling import KVCache
from prism_sglang.train.ttt import ttt_forward
from tests.conftest import make_draft

T, K = 12, 5


def _inference_chain_logits(draft, ids, feats, t, num_steps):
    """Engine-style: extend over positions 0..t, then steps 1..K-1 with the true tokens x(t+2)...; one cache."""
    cache = KVCache()
    hidden = draft.extend(ids[:, 1 : t + 2], feats[:, : t + 1], cache)[:, -1:]
    logits = [draft.logits(hidden)]
    for k in range(1, num_steps):
        if t + 1 + k >= ids.shape[1]:
            break
        token = ids[:, t + 1 + k : t + 2 + k]
        mask = torch.ones(1, 1, cache.length + 1, dtype=torch.bool)
        hidden = draft(k, token, hidden, torch.tensor([[t + k]]), cache, mask)
        logits.append(draft.logits(hidden))
    return logits


@pytest.mark.parametrize(("num_modules", "table"), [(1, (0,)), (2, (0, 1)), (3, (0, 1, 2)), (3, (0, 2, 1, 1)),
                                                    (2, (1, 0))])
def test_ttt_logits_equal_inference_logits(tiny_target, num_modules, table):
    draft = copy.deepcopy(make_draft(tiny_target, num_modules=num_modules, table=table, scale=2.0)).double()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, draft.config.vocab_size, (1, T), generator=g)
    feats = torch.randn(1, T, draft.fc.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ttt = [draft.logits(h) for h in ttt_forward(draft, ids, feats, K)]
        for t in range(T - 1):
            for k, logits in enumerate(_inference_chain_logits(draft, ids, feats, t, K)):
                torch.testing.assert_close(ttt[k][:, t], logits[:, 0], atol=1e-5, rtol=1e-5,
                                           msg=f"index {t} step {k}")


def test_ttt_batch_rows_are_independent(tiny_target):
    draft = make_draft(tiny_target)
    ids = torch.randint(0, 48, (3, T))
    feats = torch.randn(3, T, draft.fc.in_features)
    with torch.no_grad():
        together = ttt_forward(draft, ids, feats, 3)
        for row in range(3):
            alone = ttt_forward(draft, ids[row : row + 1], feats[row : row + 1], 3)
            for a, b in zip(alone, together, strict=True):
                torch.testing.assert_close(a[0], b[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("diagonal", [0, 1, 3])
def test_fused_cpu_attention_equals_the_dense_one_forward_and_backward(diagonal):
    """The CPU path (flash attention over step 0's keys, its log-sum-exp merged with the diagonal keys) computes
    the dense softmax's output and every input's gradient; GQA heads included."""
    from prism_sglang.train.ttt import _attend, _attend_dense

    torch.manual_seed(diagonal)
    b, heads, kv_heads, t, d = 2, 6, 2, 29, 16
    q = torch.randn(b, heads, t, d, requires_grad=True)
    kv = [torch.randn(b, kv_heads, t, d, requires_grad=True) for _ in range(2 + 2 * diagonal)]
    k0, v0, diag_k, diag_v = kv[0], kv[1], kv[2::2], kv[3::2]
    grad = torch.randn(b, heads, t, d)
    fused = _attend(q, k0, v0, diag_k, diag_v)
    fused_grads = torch.autograd.grad(fused, [q, *kv], grad)
    groups = heads // kv_heads
    dense = _attend_dense(q, repeat_kv(k0, groups), repeat_kv(v0, groups), [repeat_kv(k, groups) for k in diag_k],
                          [repeat_kv(v, groups) for v in diag_v], d**-0.5)
    dense_grads = torch.autograd.grad(dense, [q, *kv], grad)
    torch.testing.assert_close(fused, dense, rtol=1e-5, atol=1e-5)
    for a, e in zip(fused_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
