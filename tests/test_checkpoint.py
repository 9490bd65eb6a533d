import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from prism_sglang.checkpoint import (
    CheckpointError,
    check_target_compatibility,
    expected_tensor_shapes,
    load_draft,
    save_draft,
)
from tests.conftest import make_draft


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_is_bit_exact(tiny_target, tmp_path):
    draft = make_draft(tiny_target, num_modules=3, table=(0, 1, 2, 1), draft_vocab_size=20)
    save_draft(draft, tmp_path / "a", dtype=None)
    loaded = load_draft(tmp_path / "a", tiny_target.config, tiny_target.embedding_weight())
    _assert_same_weights(draft, loaded)
    assert loaded.config == draft.config
    save_draft(loaded, tmp_path / "b", dtype=None)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bf16_save_keeps_vocab_maps_exact(tiny_target, tmp_path):
    draft = make_draft(tiny_target, draft_vocab_size=20)
    save_draft(draft, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["fc.weight"].dtype == torch.bfloat16
    assert tensors["d2t"].dtype == torch.long and tensors["t2d"].dtype == torch.bool
    assert "embed_tokens.weight" not in tensors
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = load_draft(tmp_path, tiny_target.config)
    assert torch.equal(loaded.draft_to_target, draft.draft_to_target)


def test_model_state_dict_matches_the_format(tiny_target):
    draft = make_draft(tiny_target, num_modules=2)
    shapes = {k: tuple(v.shape) for k, v in draft.state_dict().items() if k != "embed_tokens.weight"}
    assert shapes == expected_tensor_shapes(draft.config)


def _write_eagle3(tiny_target, directory, rename, arch="LlamaForCausalLMEagle3", with_embedding=True):
    draft = make_draft(tiny_target, num_modules=1, table=(0,), draft_vocab_size=20)
    tensors = {rename(k): v.contiguous() for k, v in draft.state_dict().items()
               if with_embedding or k != "embed_tokens.weight"}
    directory.mkdir()
    save_file(tensors, directory / "model.safetensors")
    c = draft.config
    # A SpecForge-style config: no prism_* fields, no eagle_config.
    config = {"architectures": [arch], "model_type": "llama", "hidden_size": c.hidden_size,
              "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_attention_heads,
              "num_key_value_heads": c.num_key_value_heads, "num_hidden_layers": 1, "vocab_size": c.vocab_size,
              "draft_vocab_size": c.draft_vocab_size, "rms_norm_eps": c.rms_norm_eps, "rope_theta": 10000.0,
              "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": False}
    (directory / "config.json").write_text(json.dumps(config))
    return draft


@pytest.mark.parametrize("naming", ["specforge", "sglang"])
def test_eagle3_checkpoints_load_as_one_module(tiny_target, tmp_path, naming):
    if naming == "specforge":
        def rename(k):
            return k.replace("layers.0.", "midlayer.")
    else:
        def rename(k):
            return "model." + k if k.startswith("layers.") else k
    source = _write_eagle3(tiny_target, tmp_path / naming, rename)
    loaded = load_draft(tmp_path / naming, tiny_target.config)
    assert loaded.config.num_modules == 1 and loaded.config.step_modules == (0,)
    _assert_same_weights(source, loaded)


def _corrupt(tiny_target, tmp_path, edit_config=None, edit_tensors=None):
    draft = make_draft(tiny_target, num_modules=2, draft_vocab_size=20)
    save_draft(draft, tmp_path)
    if edit_config:
        d = json.loads((tmp_path / "config.json").read_text())
        edit_config(d)
        (tmp_path / "config.json").write_text(json.dumps(d))
    if edit_tensors:
        tensors = load_file(tmp_path / "model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def _del(key):
    return lambda d: d.pop(key)


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


@pytest.mark.parametrize(("edit_config", "edit_tensors", "message"), [
    (_del("intermediate_size"), None, "missing required field 'intermediate_size'"),
    (_set("architectures", ["LlamaForCausalLMMedusa"]), None, "unknown architecture 'LlamaForCausalLMMedusa'"),
    (_set("prism_step_modules", [0, 1, 2]), None, "'prism_step_modules[2]' = 2 names a missing module"),
    (None, lambda t: t.__setitem__("fc.weight", torch.zeros(32, 64)), "shape mismatch for tensor 'fc.weight'"),
    (None, _del("layers.1.mlp.up_proj.weight"), "missing tensor(s) ['layers.1.mlp.up_proj.weight']"),
    (None, lambda t: t.__setitem__("layers.2.hidden_norm.weight", torch.ones(32)),
     "unexpected tensor 'layers.2.hidden_norm.weight'"),
    (None, lambda t: t.__setitem__("d2t", torch.full((20,), 60)), "maps draft ids outside the target vocabulary"),
    (_set("target_hidden_size", 64), None, "shape mismatch for tensor 'fc.weight'"),
])
def test_bad_checkpoint_is_named(tiny_target, tmp_path, edit_config, edit_tensors, message):
    path = _corrupt(tiny_target, tmp_path, edit_config, edit_tensors)
    with pytest.raises(CheckpointError) as e:
        load_draft(path, tiny_target.config)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_draft_for_another_target(tiny_target, tmp_path):
    draft = make_draft(tiny_target, draft_vocab_size=20)
    save_draft(draft, tmp_path)
    other = type(tiny_target.config)(**{**tiny_target.config.to_dict(), "hidden_size": 64})
    with pytest.raises(CheckpointError, match="'target_hidden_size' is 32, but the target's hidden_size is 64"):
        load_draft(tmp_path, other)
    other = type(tiny_target.config)(**{**tiny_target.config.to_dict(), "vocab_size": 100})
    with pytest.raises(CheckpointError, match="'vocab_size' is 48, but the target's vocab_size is 100"):
        load_draft(tmp_path, other)
    other = type(tiny_target.config)(**{**tiny_target.config.to_dict(), "num_hidden_layers": 4})
    with pytest.raises(CheckpointError, match="contains 3, outside the target's decoder layers 0..2"):
        load_draft(tmp_path, other)


def test_pickle_weights_are_refused(tiny_target, tmp_path):
    draft = make_draft(tiny_target)
    save_draft(draft, tmp_path)
    torch.save(draft.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pickle-based weight file\(s\) \['pytorch_model.bin'\]"):
        load_draft(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="only safetensors are loaded"):
        load_draft(tmp_path)


def test_missing_weights_and_folder(tmp_path, tiny_target):
    save_draft(make_draft(tiny_target), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_draft(tmp_path)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_draft(tmp_path / "absent")


def test_a_multimodal_target_is_checked_by_its_text_config(tiny_target):
    """SGLang's EAGLE-3 serves targets such as LLaVA, whose sizes live in `text_config`, not at the top level."""
    from transformers import LlavaConfig

    draft = make_draft(tiny_target)
    multimodal = LlavaConfig(text_config=tiny_target.config.to_dict())
    assert not hasattr(multimodal, "hidden_size")
    assert check_target_compatibility(draft.config, multimodal) == [1, 3, 4]
    wider = LlavaConfig(text_config={**tiny_target.config.to_dict(), "hidden_size": 64})
    with pytest.raises(CheckpointError, match="the target's hidden_size is 64"):
        check_target_compatibility(draft.config, wider)
