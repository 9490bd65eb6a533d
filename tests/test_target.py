import pytest
import torch
from transformers import DynamicCache

from prism_sglang.target import TargetModel, keep_cache_positions
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
