import copy

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from prism_sglang.modeling import KVCache, attend
from tests.conftest import make_draft

N_CTX = 7


def _context(draft, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, draft.config.vocab_size, (1, N_CTX), generator=g)
    feats = torch.randn(1, N_CTX, draft.fc.in_features, generator=g)
    return ids, feats


def _step_outputs(draft, context_cache, steps, seed=1):
    """Each step k run alone on a copy of the same context cache, with fixed inputs."""
    g = torch.Generator().manual_seed(seed)
    outs = []
    for k in steps:
        cache = copy.deepcopy(context_cache)
        token = torch.randint(0, draft.config.vocab_size, (1, 1), generator=g)
        hidden = torch.randn(1, 1, draft.config.hidden_size, generator=g)
        pos = torch.tensor([[N_CTX - 1 + k]])
        mask = torch.ones(1, 1, cache.length + 1, dtype=torch.bool)
        outs.append(draft.logits(draft(k, token, hidden, pos, cache, mask)))
    return outs


@pytest.mark.parametrize(("num_modules", "table"), [(2, (0, 1)), (3, (0, 2, 1)), (3, (1, 0, 2, 2))])
def test_perturbing_a_module_changes_exactly_its_steps(tiny_target, num_modules, table):
    draft = make_draft(tiny_target, num_modules=num_modules, table=table)
    ids, feats = _context(draft)
    steps = range(0, 6)
    with torch.no_grad():
        cache = KVCache()
        draft.extend(ids, feats, cache)
        base = _step_outputs(draft, cache, steps[1:])
        base_ctx = draft.logits(draft.extend(ids, feats, KVCache()))
        for m in range(num_modules):
            perturbed = copy.deepcopy(draft)
            perturbed.layers[m].mlp.down_proj.weight.add_(0.5)
            outs = _step_outputs(perturbed, cache, steps[1:])
            ctx = perturbed.logits(perturbed.extend(ids, feats, KVCache()))
            changed = [not torch.allclose(a, b) for a, b in zip([base_ctx, *base], [ctx, *outs], strict=True)]
            assert changed == [draft.config.module_for_step(k) == m for k in steps], (m, changed)


def _naive_chain_logits(draft, ids, feats, chain):
    """Recompute every K/V from scratch, in float64, with explicit softmax: the reference for the cache."""
    d = copy.deepcopy(draft).double()
    n, c = ids.shape[1], d.config
    keys, values = [], []  # one entry per position, computed by the module that produced it

    def kv_and_q(module, token, hidden, pos):
        emb = d.embed_tokens(token)
        x = torch.cat([module.input_layernorm(emb), module.hidden_norm(hidden)], dim=-1)
        a = module.self_attn
        q = a.q_proj(x).view(1, 1, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = a.k_proj(x).view(1, 1, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(1, 1, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        cos, sin = d.rotary(x, torch.tensor([[pos]]))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q[0, :, 0], k[0, :, 0], v[0, :, 0]

    def attend_all(q):
        groups = c.num_attention_heads // c.num_key_value_heads
        K = torch.stack(keys).repeat_interleave(groups, dim=1)  # [T, H, d]
        V = torch.stack(values).repeat_interleave(groups, dim=1)
        w = torch.softmax((K * q[None]).sum(-1) / c.head_dim**0.5, dim=0)  # [T, H]
        return (w[..., None] * V).sum(0).reshape(1, 1, -1)

    module0 = d.module_for_step(0)
    fc = d.fc(feats.double())
    hidden = None
    for t in range(n):  # step 0, causal over the context
        q, k, v = kv_and_q(module0, ids[:, t:t + 1], fc[:, t:t + 1], t)
        keys.append(k)
        values.append(v)
        out = module0.self_attn.o_proj(attend_all(q)) + fc[:, t:t + 1]
        hidden = out + module0.mlp(module0.post_attention_layernorm(out))
    logits = [d.logits(hidden)]
    for k_step, token in enumerate(chain, start=1):
        module = d.module_for_step(k_step)
        q, k, v = kv_and_q(module, token.view(1, 1), hidden, n - 1 + k_step)
        keys.append(k)
        values.append(v)
        out = module.self_attn.o_proj(attend_all(q)) + hidden
        hidden = out + module.mlp(module.post_attention_layernorm(out))
        logits.append(d.logits(hidden))
    return logits


@pytest.mark.parametrize(("num_modules", "table"), [(1, (0,)), (2, (0, 1)), (3, (0, 1, 2))])
def test_shared_cache_matches_naive_recomputation(tiny_target, num_modules, table):
    draft = make_draft(tiny_target, num_modules=num_modules, table=table, scale=2.0)
    ids, feats = _context(draft, seed=3)
    chain = torch.randint(0, draft.config.vocab_size, (5,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = KVCache()
        hidden = draft.extend(ids, feats, cache)[:, -1:]
        got = [draft.logits(hidden)]
        for k, token in enumerate(chain, start=1):
            mask = torch.ones(1, 1, cache.length + 1, dtype=torch.bool)
            hidden = draft(k, token.view(1, 1), hidden, torch.tensor([[N_CTX - 1 + k]]), cache, mask)
            got.append(draft.logits(hidden))
        expected = _naive_chain_logits(draft, ids, feats, chain)
    assert cache.length == N_CTX + len(chain)
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5, msg=f"step {k}")


def test_tree_mask_isolates_siblings(tiny_target):
    """Two sibling nodes drafted together equal each drafted alone (each sees context + itself only)."""
    draft = make_draft(tiny_target)
    ids, feats = _context(draft)
    tokens = torch.tensor([[5, 9]])
    hidden = torch.randn(1, 2, draft.config.hidden_size)
    pos = torch.full((1, 2), N_CTX)
    with torch.no_grad():
        ctx = KVCache()
        draft.extend(ids, feats, ctx)
        both = copy.deepcopy(ctx)
        mask = torch.ones(1, 2, N_CTX + 2, dtype=torch.bool)
        mask[0, 0, N_CTX + 1] = mask[0, 1, N_CTX] = False
        together = draft(1, tokens, hidden, pos, both, mask)
        for j in range(2):
            alone = draft(1, tokens[:, j:j + 1], hidden[:, j:j + 1], pos[:, :1], copy.deepcopy(ctx),
                          torch.ones(1, 1, N_CTX + 1, dtype=torch.bool))
            torch.testing.assert_close(together[:, j:j + 1], alone)


@pytest.mark.parametrize("heads,kv_heads,new", [(9, 3, 2), (4, 4, 3), (6, 2, 1)])
def test_attend_folds_query_groups_as_repeat_kv_reads_them(heads, kv_heads, new):
    """Query head h reads KV head h // groups, under one [B, 1, Tq, Tk] mask (a tree's, here random)."""
    g = torch.Generator().manual_seed(heads + new)
    q = torch.randn(2, heads, new, 8, generator=g)
    keys, values = torch.randn(2, 2, kv_heads, 11, 8, generator=g).unbind(0)
    mask = torch.rand(2, 1, new, 11, generator=g) < 0.7
    mask[..., 0] = True  # every row sees something
    groups = heads // kv_heads
    expected = F.scaled_dot_product_attention(q, repeat_kv(keys, groups), repeat_kv(values, groups),
                                              attn_mask=mask, scale=0.3)
    torch.testing.assert_close(attend(q, keys, values, mask, scale=0.3), expected, atol=1e-6, rtol=1e-5)
