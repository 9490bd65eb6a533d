import pytest
import torch
from transformers import DynamicCache

from prism_sglang.few_rows import FewRowLinear
from prism_sglang.target import GrowingCache, TargetModel, keep_cache_positions
from tests.conftest import make_tiny_target_dir

AUX = [1, 3, 6]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_aux_features_equal_hidden_states_picks(tmp_path, arch):
    target = TargetModel.load(make_tiny_target_dir(tmp_path, arch), aux_layer_ids=AUX)
    ids = torch.randint(0, target.vocab_size, (2, 11))
    out = target.forward(ids)
    reference = target.model(ids, output_hidden_states=True)
    h = target.hidden_size
    assert len(reference.hidden_states) == target.num_layers + 1
    for j, layer in enumerate(AUX):
        torch.testing.assert_close(out.features[..., j * h:(j + 1) * h], reference.hidden_states[layer + 1])
    torch.testing.assert_close(out.logits, reference.logits)


def test_features_with_past_kv_equal_one_forward(tiny_target):
    ids = torch.randint(0, tiny_target.vocab_size, (1, 12))
    full = tiny_target.forward(ids)
    first = tiny_target.forward(ids[:, :8])
    rest = tiny_target.forward(ids[:, 8:], past_key_values=first.past_key_values)
    # Different sequence lengths block the float32 matmuls differently: agreement to ~1e-6 relative.
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([first.features, rest.features], 1), full.features, **tol)
    torch.testing.assert_close(rest.logits, full.logits[:, 8:], **tol)
    last = tiny_target.forward(ids, logits_to_keep=1)
    torch.testing.assert_close(last.logits, full.logits[:, -1:], **tol)


def test_tree_mask_and_cache_selection(tiny_target):
    """A 4D mask lets two branches share one forward; keeping one branch leaves the cache of its path."""
    ids = torch.randint(0, tiny_target.vocab_size, (1, 6))
    prefix = tiny_target.forward(ids[:, :4])
    # Tree after the prefix: node0 = ids[4]; node1 = other token (sibling of node0); node2 = ids[5] under node0.
    nodes = torch.tensor([[ids[0, 4], (ids[0, 4] + 1) % tiny_target.vocab_size, ids[0, 5]]])
    mask = torch.zeros(1, 1, 3, 7, dtype=torch.bool)
    mask[..., :4] = True
    mask[0, 0, 0, 4] = mask[0, 0, 1, 5] = True
    mask[0, 0, 2, 4] = mask[0, 0, 2, 6] = True
    out = tiny_target.forward(nodes, past_key_values=prefix.past_key_values, position_ids=torch.tensor([[4, 4, 5]]),
                              attention_mask=mask)
    full = tiny_target.forward(ids)
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits[:, [0, 2]], full.logits[:, 4:6], **tol)
    keep_cache_positions(out.past_key_values, 4, torch.tensor([0, 2]))
    for kept, ref in zip(out.past_key_values.layers, full.past_key_values.layers, strict=True):
        torch.testing.assert_close(kept.keys, ref.keys, **tol)
        torch.testing.assert_close(kept.values, ref.values, **tol)


def test_keep_cache_positions_moves_only_the_kept_tail(tiny_target):
    """A chain's accepted prefix is cut in place; a branch's nodes are moved down behind the prefix."""
    ids = torch.tensor([[3, 7, 1, 9, 4, 6, 2]])
    for keep, expected in (([0, 1], [0, 1, 2, 3, 4, 5]), ([0, 2], [0, 1, 2, 3, 4, 6]), ([1], [0, 1, 2, 3, 5])):
        cache = tiny_target.forward(ids).past_key_values
        reference = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
        keep_cache_positions(cache, 4, torch.tensor(keep))
        for layer, (keys, values) in zip(cache.layers, reference, strict=True):
            torch.testing.assert_close(layer.keys, keys[:, :, expected], rtol=0, atol=0)
            torch.testing.assert_close(layer.values, values[:, :, expected], rtol=0, atol=0)


def test_aux_layer_out_of_range(tiny_target_dir):
    with pytest.raises(ValueError, match="aux layer id 8 is outside the target's decoder layers 0..7"):
        TargetModel.load(tiny_target_dir, aux_layer_ids=[1, 8])


def test_dynamic_cache_type(tiny_target):
    out = tiny_target.forward(torch.tensor([[1, 2, 3]]))
    assert isinstance(out.past_key_values, DynamicCache)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prepared_for_decoding_computes_the_same_forwards(tmp_path, arch):
    """The serving engine's target (few-row kernels for the decoder's linears, the lm_head stored transposed,
    KV heads not copied under a mask, a growing KV cache) gives the plain target's logits and features:
    prefill, one decode step, and a masked tree forward."""
    directory = make_tiny_target_dir(tmp_path, arch)
    plain, fast = TargetModel.load(directory, aux_layer_ids=AUX), TargetModel.load(directory, aux_layer_ids=AUX)
    fast.prepare_for_decoding()
    assert not fast.model.lm_head.weight.is_contiguous()  # stored transposed: the layout changed
    few_row_linears = [m for m in fast.model.modules() if isinstance(m, FewRowLinear)]
    assert len(few_row_linears) == 7 * plain.num_layers
    assert all(m.weight.is_contiguous() for m in few_row_linears)  # the kernel reads them row-major
    assert isinstance(fast.forward(torch.tensor([[1]])).past_key_values, GrowingCache)
    ids = torch.randint(0, plain.vocab_size, (1, 9))
    mask = torch.ones(1, 1, 3, 12, dtype=torch.bool)
    # a tree after 9 context tokens: nodes 0 and 1 are siblings, node 2 is node 0's child
    mask[0, 0, 0, 10:] = False
    mask[0, 0, 1, 9] = mask[0, 0, 1, 11] = False
    mask[0, 0, 2, 10] = False
    tree, positions = torch.tensor([[5, 7, 11]]), torch.tensor([[9, 9, 10]])
    tol = dict(atol=1e-4, rtol=1e-4)  # the same sums in another order: float32 rounding only
    outputs = []
    for target in (plain, fast):
        prefill = target.forward(ids)
        step = target.forward(ids[:, -1:], DynamicCache(config=target.config))
        cache = target.forward(ids).past_key_values
        masked = target.forward(tree, cache, positions, mask)
        outputs.append((prefill, step, masked))
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(b.logits, a.logits, **tol)
        torch.testing.assert_close(b.features, a.features, **tol)


def test_growing_cache_holds_what_a_dynamic_cache_holds(tiny_target_dir):
    """Cycles of the serving engine — a verifying forward of 3 tokens, then only some of them kept — past the
    growing cache's first reserve: the same logits, and the same cached keys and values, as HF's cache."""
    plain, fast = TargetModel.load(tiny_target_dir), TargetModel.load(tiny_target_dir)
    fast.prepare_for_decoding()
    ids = torch.randint(0, plain.vocab_size, (1, 20))
    caches = [target.forward(ids).past_key_values for target in (plain, fast)]
    first_capacity = caches[1].layers[0]._key_buffer.shape[-2]
    length = 20
    for kept in [1, 3, 2, 3, 3, 1, 2, 3] * 17:  # 306 more positions: past the first reserve of 256
        step = torch.randint(0, plain.vocab_size, (1, 3))
        logits = [t.forward(step, c).logits for t, c in zip((plain, fast), caches, strict=True)]
        torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)
        for cache in caches:
            keep_cache_positions(cache, length, torch.tensor([0, 2, 1][:kept]))
        length += kept
    assert first_capacity < length < caches[1].layers[0]._key_buffer.shape[-2]  # it grew, once
    for a, b in zip(caches[0].layers, caches[1].layers, strict=True):
        assert b.keys.shape[-2] == length
        torch.testing.assert_close(b.keys, a.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b.values, a.values, atol=1e-4, rtol=1e-4)


def test_lazy_logit_rows_equal_the_full_logits(tiny_target):
    ids = torch.randint(0, tiny_target.vocab_size, (1, 7))
    full = tiny_target.forward(ids)
    lazy = tiny_target.forward(ids, lazy_logits=True)
    assert lazy.logits.shape[1] == 0 and len(lazy.rows) == 7  # nothing through the lm_head up front
    for position in (6, 0, 3, 6):
        torch.testing.assert_close(lazy.rows[position], full.logits[0, position], atol=1e-5, rtol=1e-5)
    assert len(lazy.rows._rows) == 3  # each row once
