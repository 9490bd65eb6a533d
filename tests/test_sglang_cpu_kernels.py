"""The test-only sgl_kernel stand-ins (tests/sglang_cpu/site/sgl_kernel) against independent references:
attention against torch's SDPA over the gathered KV, the cache-location helpers against hand-worked examples,
the tree build and greedy verification against the reference engine's DraftTree and `accept`."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from bench.launch import SGLANG_CPU_SITE
from prism_sglang.engine.sampling import SamplingParams
from prism_sglang.engine.tree import DraftTree
from prism_sglang.engine.verify import accept

sys.path.insert(0, str(SGLANG_CPU_SITE))
import sgl_kernel

H, H_KV, D = 4, 2, 8
SLOTS = 64


def sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q [L, H, D], keys/values [S, H_KV, D] -> [L, H, D], through torch's own GQA attention."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
                                         attn_mask=mask, scale=D**-0.5, enable_gqa=True)
    return out.transpose(0, 1)


@pytest.fixture
def pool():
    torch.manual_seed(0)
    k_buffer, v_buffer = torch.randn(SLOTS, H_KV, D), torch.randn(SLOTS, H_KV, D)
    req_to_token = torch.zeros(4, 32, dtype=torch.int32)
    req_to_token[1, :20] = torch.randperm(SLOTS - 1)[:20] + 1  # slots of row 1's tokens, scattered
    req_to_token[3, :12] = torch.arange(40, 52)
    return k_buffer, v_buffer, req_to_token


def test_decode_attention_writes_the_new_kv_then_attends_over_each_sequence(pool):
    k_buffer, v_buffer, req_to_token = pool
    rows, lengths = torch.tensor([1, 3]), torch.tensor([20, 12])
    loc = torch.stack([req_to_token[1, 19], req_to_token[3, 11]]).long()
    q, key, value = torch.randn(2, H, D), torch.randn(2, H_KV, D), torch.randn(2, H_KV, D)
    out = torch.empty(2, H, D)
    torch.ops.sgl_kernel.decode_attention_cpu(q, k_buffer, v_buffer, out, key, value, loc, torch.zeros(2, H, 8, D + 1),
                                              req_to_token, rows, lengths, D**-0.5, 0.0, False, 0, None, None)
    assert torch.equal(k_buffer[loc], key) and torch.equal(v_buffer[loc], value)
    for b, (row, n) in enumerate(zip(rows.tolist(), lengths.tolist(), strict=True)):
        slots = req_to_token[row, :n].long()
        expected = sdpa(q[b : b + 1], k_buffer[slots], v_buffer[slots], None)[0]
        torch.testing.assert_close(out[b], expected)


@pytest.mark.parametrize("tree", [False, True])
def test_extend_attention_sees_the_prefix_and_causal_or_tree_order_among_new_tokens(pool, tree):
    k_buffer, v_buffer, req_to_token = pool
    rows, totals, new = torch.tensor([1, 3]), torch.tensor([20, 12]), 4
    starts = torch.tensor([0, new], dtype=torch.int32)
    q, k, v = torch.randn(2 * new, H, D), torch.randn(2 * new, H_KV, D), torch.randn(2 * new, H_KV, D)
    for b, (row, total) in enumerate(zip(rows.tolist(), totals.tolist(), strict=True)):  # the backend's own write
        slots = req_to_token[row, total - new : total].long()
        k_buffer[slots], v_buffer[slots] = k[b * new : (b + 1) * new], v[b * new : (b + 1) * new]
    among = torch.tril(torch.ones(new, new, dtype=torch.bool))
    if tree:  # node 2 is a sibling of node 1 (both children of the root); node 3 is node 2's child
        among = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    mask = among.repeat(2, 1, 1).flatten() if tree else None
    out = torch.full((2 * new, H, D), float("nan"))
    torch.ops.sgl_kernel.extend_attention_cpu(
        q, k, v, out, k_buffer, v_buffer, req_to_token, rows, totals, torch.full((2,), new, dtype=torch.int32),
        starts, new, D**-0.5, 0.0, False, 0, None, None, mask)
    for b, (row, total) in enumerate(zip(rows.tolist(), totals.tolist(), strict=True)):
        slots = req_to_token[row, :total].long()
        visible = torch.cat([torch.ones(new, total - new, dtype=torch.bool), among], dim=1)
        expected = sdpa(q[b * new : (b + 1) * new], k_buffer[slots], v_buffer[slots], visible)
        torch.testing.assert_close(out[b * new : (b + 1) * new], expected)


def test_attention_refuses_what_it_does_not_implement_and_checks_shapes(pool):
    k_buffer, v_buffer, req_to_token = pool
    args = (torch.randn(1, H, D), k_buffer, v_buffer, torch.empty(1, H, D), None, None, None,
            torch.zeros(1, H, 8, D + 1), req_to_token, torch.tensor([1]), torch.tensor([5]), 0.1)
    with pytest.raises(NotImplementedError, match="logit_cap"):
        sgl_kernel.attention.decode_attention_cpu(*args, 30.0, False, 0, None, None)
    with pytest.raises(NotImplementedError, match="sliding_window_size"):
        sgl_kernel.attention.decode_attention_cpu(*args, 0.0, False, 4096, None, None)
    two_lengths = (*args[:10], torch.tensor([5, 6]), 0.1)
    with pytest.raises(RuntimeError, match="1 queries but seq_lens has 2"):
        sgl_kernel.attention.decode_attention_cpu(*two_lengths, 0.0, False, 0, None, None)


def test_copy_all_layer_kv_cache_moves_rows_in_every_buffer_reading_before_writing():
    buffers = [torch.arange(10 * 6, dtype=dtype).view(10, 2, 3).to(dtype) for dtype in (torch.float32, torch.bfloat16)]
    before = [b.clone() for b in buffers]
    pointers = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b[0].numel() * b.element_size() for b in buffers], dtype=torch.int64)
    targets, sources = torch.tensor([3, 4, 0]), torch.tensor([4, 7, 0])  # 4 is read and written; 0 -> 0 padding
    sgl_kernel.copy_all_layer_kv_cache_cpu(pointers, strides, targets, sources)
    for buffer, old in zip(buffers, before, strict=True):
        expected = old.clone()
        expected[3], expected[4] = old[4], old[7]
        assert torch.equal(buffer, expected)


def test_cache_location_helpers_on_a_worked_example():
    req_to_token = torch.zeros(3, 16, dtype=torch.int32)
    rows = torch.tensor([2, 1])
    # Two requests with 3 and 5 committed tokens get 2 and 4 new slots: 10, 11 and 20..23.
    starts, ends = torch.tensor([3, 5], dtype=torch.int32), torch.tensor([5, 9], dtype=torch.int32)
    sgl_kernel.assign_req_to_token_pool_cpu(rows, req_to_token, starts, ends, torch.tensor([10, 11, 20, 21, 22, 23]),
                                            16)
    assert req_to_token[2, 3:5].tolist() == [10, 11] and req_to_token[1, 5:9].tolist() == [20, 21, 22, 23]
    assert req_to_token[2, :3].tolist() == [0, 0, 0] and req_to_token[2, 5].item() == 0
    out = torch.zeros(8, dtype=torch.int64)  # over-sized, as SGLang allocates it: the tail stays 0
    sgl_kernel.assign_extend_cache_locs_cpu(rows, req_to_token, torch.tensor([4, 6]), torch.tensor([5, 9]), out, 16)
    assert out.tolist() == [11, 21, 22, 23, 0, 0, 0, 0]
    # Draft slots (topk 2, 2 steps) of request row 1 with 5 committed tokens: its slots 5..8.
    req_to_token[1, 9] = 24
    draft = torch.empty(4, dtype=torch.int64)
    sgl_kernel.assign_draft_cache_locs_contiguous_cpu(torch.tensor([1]), req_to_token, torch.tensor([5]), draft, 16,
                                                      2, 2)
    assert draft.tolist() == [20, 21, 22, 23]
    table = sgl_kernel.build_draft_decode_metadata_cpu(req_to_token, torch.tensor([1]), torch.tensor([5]), 2, 2, 16)
    assert table.shape == (2, 16) and table.dtype == torch.int32
    assert table[0, :7].tolist() == [0, 0, 0, 0, 0, 20, 21] and table[1, :7].tolist() == [0, 0, 0, 0, 0, 22, 23]
    # Accepted rows 0, 1 of request 0 and 4 of request 1 (verify slots 30..35, 3 per request).
    accept_index = torch.tensor([[0, 1, -1], [4, -1, -1]], dtype=torch.int32)
    packed = torch.zeros(6, dtype=torch.int64)
    sgl_kernel.fill_accept_out_cache_loc_cpu(accept_index, torch.arange(30, 36), packed)
    assert packed.tolist() == [30, 31, 34, 0, 0, 0]
    bonus = torch.empty(2, dtype=torch.int32)
    sgl_kernel.fill_bonus_tokens_cpu(torch.tensor([[7, 8, 9], [5, 6, 4]], dtype=torch.int32),
                                     torch.tensor([2, 1], dtype=torch.int32), bonus, 3)
    assert bonus.tolist() == [8, 5]


# A topk-2, depth-3 tree in SGLang's encoding. Score-list ids: step 0 drafts 0, 1 (children of the root); step 1
# expands both into ids 2..5 (2, 3 under 0; 4, 5 under 1) and keeps 3 and 4; step 2 expands those into 6..9 (6, 7
# under 3; 8, 9 under 4). The 6 best ids overall are 0, 1, 3, 4, 6, 8: tree nodes 1..6.
TOPK, DEPTH, N = 2, 3, 7
PARENT_LIST = [-1, 0, 1, 3, 4]  # -1, the step-0 ids, then the ids kept at step 1
SELECTED = [0, 1, 3, 4, 6, 8]
REFERENCE_TREE = DraftTree(tokens=torch.tensor([11, 12, 13, 14, 15, 16]), parents=torch.tensor([0, 0, 1, 2, 3, 4]),
                           depths=torch.tensor([1, 1, 2, 2, 3, 3]), scores=torch.tensor([.5, .4, .3, .2, .1, .05]))


def build_tree(seq_lens: list[int]) -> dict[str, torch.Tensor]:
    bs = len(seq_lens)
    out = {"tree_mask": torch.ones(bs * N * N, dtype=torch.bool), "positions": torch.empty(bs * N, dtype=torch.long)}
    out["retrive_index"], out["retrive_next_token"], out["retrive_next_sibling"] = torch.full((3, bs, N), -1)
    sgl_kernel.build_tree_kernel_efficient_cpu(
        torch.tensor([PARENT_LIST] * bs), torch.tensor([SELECTED] * bs), torch.tensor(seq_lens), out["tree_mask"],
        out["positions"], out["retrive_index"], out["retrive_next_token"], out["retrive_next_sibling"], TOPK, DEPTH,
        N, 1)
    return out


def test_tree_build_matches_the_reference_engines_tree():
    tree = build_tree([10, 20])
    masks = tree["tree_mask"].view(2, N, N)
    for b, seq_len in enumerate([10, 20]):
        assert torch.equal(masks[b], REFERENCE_TREE.ancestor_mask())
        assert tree["positions"][b * N : (b + 1) * N].tolist() == [seq_len, *(seq_len + REFERENCE_TREE.depths).tolist()]
        assert tree["retrive_index"][b].tolist() == list(range(b * N, (b + 1) * N))
        children = [[] for _ in range(N)]  # from the first-child / next-sibling links
        for node in range(N):
            child = int(tree["retrive_next_token"][b, node])
            while child != -1:
                children[node].append(child)
                child = int(tree["retrive_next_sibling"][b, child])
        assert children == [sorted(c) for c in REFERENCE_TREE.children()]


@pytest.mark.parametrize("seed", range(6))
def test_greedy_tree_verification_matches_the_reference_engines_accept(seed):
    generator = torch.Generator().manual_seed(seed)
    vocab = 20
    logits = torch.randn(N, vocab, generator=generator)
    # Make the target agree with some drafts, so that paths of every length are accepted across seeds.
    for node in torch.randperm(N, generator=generator)[: 1 + seed % N].tolist():
        kids = [c for c, p in enumerate(REFERENCE_TREE.parents.tolist(), start=1) if p == node]
        if kids:
            logits[node, REFERENCE_TREE.tokens[kids[-1] - 1]] = 100.0
    tree = build_tree([5])
    expected = accept(REFERENCE_TREE, logits, SamplingParams(temperature=0.0), generator)

    predicts, accept_index = torch.zeros(N, dtype=torch.int32), torch.full((1, DEPTH + 1), -1, dtype=torch.int32)
    accepted = torch.empty(1, dtype=torch.int32)
    candidates = torch.cat([torch.tensor([3]), REFERENCE_TREE.tokens]).view(1, N)
    sgl_kernel.verify_tree_greedy_cpu(
        predicts=predicts, accept_index=accept_index, accept_token_num=accepted, candidates=candidates,
        retrive_index=tree["retrive_index"], retrive_next_token=tree["retrive_next_token"],
        retrive_next_sibling=tree["retrive_next_sibling"], target_predict=logits.argmax(-1).view(1, N))
    path = [0, *expected.nodes]
    assert int(accepted) == len(expected.nodes)
    assert accept_index[0].tolist() == path + [-1] * (DEPTH + 1 - len(path))
    assert predicts[path[-1]].item() == expected.bonus
