"""LlamaForCausalLMPrism in SGLang 0.5.17 on CPU: construction, weight loading, step routing, agreement with the
PyTorch reference (prism_sglang.modeling.PrismDraft), and clear errors for bad drafts."""

# ruff: noqa: E402 (sglang is imported once import_sglang has checked that it can be)

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.sglang_support import import_sglang

import_sglang()  # skips this module without sglang (fails it under PRISM_REQUIRE_SGLANG=1)

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
from sglang.srt.model_loader.weight_utils import safetensors_weights_iterator
from sglang.srt.plugins import load_plugins

from prism_sglang.checkpoint import CheckpointError, load_draft, save_draft
from prism_sglang.config import ConfigError
from prism_sglang.modeling import KVCache, PrismDraft
from prism_sglang.sglang import model as prism_model
from prism_sglang.sglang.model import LlamaForCausalLMPrism
from tests.conftest import draft_config_for, make_draft
from tests.sglang_harness import SlotAttention, make_batch, publish, server_args, single_process_runtime

pytestmark = pytest.mark.sglang

N_CTX = 7  # context tokens of the step-0 (extend) pass
STEPS = 5  # draft steps 1..STEPS after it


@pytest.fixture(scope="module", autouse=True)
def runtime():
    load_plugins()  # as every SGLang process does: runs our entry point (--speculative-algorithm PRISM)
    with single_process_runtime():
        yield


def write_draft(directory: Path, draft: PrismDraft) -> Path:
    return save_draft(draft, directory, dtype=None)  # float32: the comparison with the reference is exact-ish


def build(target_dir: Path, draft_dir: Path, *extra: str, algorithm: str = "PRISM") -> LlamaForCausalLMPrism:
    """What SGLang's draft worker does: publish the server args, read the draft's HF config, build the class."""
    args = server_args(target_dir, draft_dir, algorithm, *extra)
    publish(args)
    hf_config = ModelConfig.from_server_args(args, model_path=str(draft_dir), is_draft_model=True).hf_config
    return LlamaForCausalLMPrism(hf_config)


def build_and_load(target_dir: Path, draft_dir: Path, embedding: torch.Tensor, *extra: str) -> LlamaForCausalLMPrism:
    model = build(target_dir, draft_dir, *extra)
    model.load_weights(safetensors_weights_iterator([str(draft_dir / "model.safetensors")]))
    model.set_embed(embedding)  # EagleDraftWorker.init_lm_head shares the target's embedding
    return model.eval()


def step_context(backend: SlotAttention, step: int) -> ForwardContext:
    return ForwardContext(attn_backend=backend, spec_draft_step=None if step == 0 else step)


@pytest.mark.parametrize(("num_modules", "table", "draft_vocab"), [(2, (0, 1), None), (3, (1, 0, 2, 2), 24)])
def test_steps_match_the_reference(tiny_target, tiny_target_dir, tmp_path, num_modules, table, draft_vocab):
    """Extend (step 0) then draft steps 1..STEPS through SGLang's layers and logits processor, against PrismDraft
    on the same tokens, positions and KV: logits and the hidden state handed to the next step agree."""
    draft = make_draft(tiny_target, num_modules=num_modules, table=table, scale=3.0, draft_vocab_size=draft_vocab)
    ddir = write_draft(tmp_path / "draft", draft)
    reference = load_draft(ddir, tiny_target.config, embedding=tiny_target.embedding_weight())
    model = build_and_load(tiny_target_dir, ddir, reference.embed_tokens.weight)
    assert torch.equal(model.get_hot_token_id(), reference.draft_to_target)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tiny_target.vocab_size, (N_CTX,), generator=g)
    features = torch.randn(N_CTX, reference.fc.in_features, generator=g)
    backend = SlotAttention(N_CTX + STEPS, draft.config.num_key_value_heads, draft.config.head_dim)
    cache = KVCache()
    with torch.no_grad():
        slots = torch.arange(N_CTX)
        batch = make_batch("extend", features, slots, [torch.arange(i + 1) for i in slots])
        with forward_context(step_context(backend, 0)):
            out = model(ids, slots, batch)
        ref_hidden = reference.extend(ids[None], features[None], cache)[0]
        torch.testing.assert_close(out.hidden_states, ref_hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.next_token_logits, reference.logits(ref_hidden), rtol=1e-5, atol=1e-5)
        for k in range(1, STEPS + 1):
            token = reference.to_target_ids(out.next_token_logits[-1:].argmax(-1))  # greedy chain
            slot = torch.tensor([N_CTX - 1 + k])  # position == slot in this one-request cache
            batch = make_batch("decode", out.hidden_states[-1:], slot, [torch.arange(N_CTX + k)])
            with forward_context(step_context(backend, k)):
                out = model(token, slot, batch)
            ref_hidden = reference(k, token[None], ref_hidden[None, -1:], slot[None], cache,
                                   torch.ones(1, 1, cache.length + 1, dtype=torch.bool))[0]
            torch.testing.assert_close(out.hidden_states, ref_hidden, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.next_token_logits, reference.logits(ref_hidden), rtol=1e-5, atol=1e-5)
    assert set(backend.layer_ids) == {0}  # every module used the one shared KV layer


def test_modules_share_one_attention_layer(tiny_target, tiny_target_dir, tmp_path):
    ddir = write_draft(tmp_path / "draft", make_draft(tiny_target, num_modules=3, table=(0, 2, 1)))
    model = build(tiny_target_dir, ddir)
    layers = model.model.layers
    assert len(layers) == 3
    assert all(layer.self_attn.attn is layers[0].self_attn.attn for layer in layers)
    assert layers[0].self_attn.attn.layer_id == 0
    hidden = tiny_target.hidden_size
    assert all(layer.is_input_layer and layer.self_attn.qkv_proj.input_size == 2 * hidden for layer in layers)
    assert model.config.num_hidden_layers == 1  # what SGLang sizes the draft KV pool from


@pytest.mark.parametrize("table", [(0, 1), (2, 0, 1), (1, 1, 0, 2)])
def test_each_step_runs_the_module_its_table_names(tiny_target, tiny_target_dir, tmp_path, table):
    num_modules = max(table) + 1
    ddir = write_draft(tmp_path / "draft", make_draft(tiny_target, num_modules=num_modules, table=table))
    model = build_and_load(tiny_target_dir, ddir, tiny_target.embedding_weight())
    ran: list[int] = []
    for m, layer in enumerate(model.model.layers):
        layer.register_forward_hook(lambda *_, m=m: ran.append(m))
    backend = SlotAttention(16, tiny_target.config.num_key_value_heads, tiny_target.config.head_dim)
    hidden = torch.randn(1, tiny_target.hidden_size)
    batch = make_batch("decode", hidden, torch.tensor([0]), [torch.tensor([0])])
    with torch.no_grad():
        for step in range(7):
            with forward_context(step_context(backend, step)):
                model(torch.tensor([3]), torch.tensor([0]), batch)
        expected = [table[min(k, len(table) - 1)] for k in range(7)]
        assert ran == expected
        ran.clear()
        with forward_context(ForwardContext(attn_backend=backend)):  # no step given: prefill / draft extend
            model(torch.tensor([3]), torch.tensor([0]), batch)
    assert ran == [table[0]]


def test_an_empty_batch_runs_no_module(tiny_target, tiny_target_dir, tmp_path):
    """Idle DP ranks go through the draft loop with no tokens."""
    ddir = write_draft(tmp_path / "draft", make_draft(tiny_target))
    model = build_and_load(tiny_target_dir, ddir, tiny_target.embedding_weight())
    batch = make_batch("decode", torch.zeros(0, tiny_target.hidden_size), torch.zeros(0, dtype=torch.long), [])
    with torch.no_grad(), forward_context(step_context(SlotAttention(1, 1, 1), 1)):
        hidden, aux = model.model(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), batch)
    assert hidden.shape == (0, tiny_target.hidden_size) and aux[0].shape == (0, tiny_target.hidden_size)


# -- bad drafts fail at construction or load, naming the problem ------------------------------------------------


def _edit_tensors(ddir: Path, edit) -> None:
    tensors = load_file(str(ddir / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(ddir / "model.safetensors"))


def _edit_config(ddir: Path, **changes) -> None:
    path = ddir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _load(target_dir: Path, ddir: Path) -> None:
    model = build(target_dir, ddir, algorithm="EAGLE3")  # EAGLE3: the plugin's arg checks must not hide these
    model.load_weights(safetensors_weights_iterator([str(ddir / "model.safetensors")]))


@pytest.fixture
def good_draft(tiny_target, tmp_path) -> Path:
    return write_draft(tmp_path / "draft", make_draft(tiny_target))


def test_wrong_hidden_size_is_a_shape_error(tiny_target_dir, good_draft):
    _edit_config(good_draft, hidden_size=40)  # the tensors were written for 32
    with pytest.raises(CheckpointError, match=r"shape mismatch for tensor '[^']+'.*hidden_size=40"):
        _load(tiny_target_dir, good_draft)


def test_one_wrongly_shaped_tensor_is_named(tiny_target_dir, good_draft):
    _edit_tensors(good_draft, lambda t: t.update({"layers.1.mlp.up_proj.weight": torch.zeros(64, 30)}))
    with pytest.raises(CheckpointError, match=r"tensor 'layers.1.mlp.up_proj.weight': checkpoint has \(64, 30\)"):
        _load(tiny_target_dir, good_draft)


def test_missing_tensor_is_named(tiny_target_dir, good_draft):
    _edit_tensors(good_draft, lambda t: t.pop("layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['layers.1.self_attn.k_proj.weight'\]"):
        _load(tiny_target_dir, good_draft)


def test_unexpected_tensor_is_named(tiny_target_dir, good_draft):
    _edit_tensors(good_draft, lambda t: t.update({"layers.2.hidden_norm.weight": torch.ones(32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'layers.2.hidden_norm.weight'"):
        _load(tiny_target_dir, good_draft)


def test_duplicate_tensor_is_named(tiny_target_dir, good_draft):
    _edit_tensors(good_draft, lambda t: t.update({"model.fc.weight": t["fc.weight"].clone()}))
    with pytest.raises(CheckpointError, match=r"tensor 'fc.weight' appears twice"):
        _load(tiny_target_dir, good_draft)


def test_bad_vocabulary_map_is_refused(tiny_target_dir, good_draft):
    _edit_tensors(good_draft, lambda t: t.update({"d2t": torch.full_like(t["d2t"], 1000)}))
    with pytest.raises(CheckpointError, match="'d2t' maps draft ids outside the target vocabulary"):
        _load(tiny_target_dir, good_draft)


def test_table_naming_a_missing_module(tiny_target_dir, good_draft):
    _edit_config(good_draft, prism_step_modules=[0, 2])
    with pytest.raises(ConfigError, match=r"'prism_step_modules\[1\]' = 2 names a missing module"):
        build(tiny_target_dir, good_draft, algorithm="EAGLE3")


def test_strict_table_refuses_more_steps(tiny_target_dir, good_draft):
    _edit_config(good_draft, prism_strict_steps=True)
    steps = ("--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4")
    with pytest.raises(ConfigError, match=r"num_steps=3 .* 'prism_strict_steps' is true"):
        build(tiny_target_dir, good_draft, "--speculative-num-steps", "3", *steps, algorithm="EAGLE3")
    build(tiny_target_dir, good_draft, "--speculative-num-steps", "2", *steps, algorithm="EAGLE3")


@pytest.mark.parametrize("flag", ["norm_output", "fc_norm", "norm_before_fc"])
def test_eagle3_variants_outside_the_format_are_refused(tiny_target_dir, good_draft, flag):
    _edit_config(good_draft, **{flag: True})
    with pytest.raises(ConfigError, match=f"'{flag}'"):
        build(tiny_target_dir, good_draft, algorithm="EAGLE3")


def test_draft_narrower_than_target_must_store_its_embedding(tiny_target, tiny_target_dir, tmp_path):
    config = draft_config_for(tiny_target, hidden_size=16, intermediate_size=32, head_dim=4)
    ddir = write_draft(tmp_path / "draft", PrismDraft(config))
    with pytest.raises(CheckpointError, match="must store 'embed_tokens.weight'"):
        _load(tiny_target_dir, ddir)


def test_unpatched_sglang_is_refused(tiny_target_dir, good_draft, monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class StockForwardContext:  # sglang 0.5.17 without patch 0001
        attn_backend: object

    monkeypatch.setattr(prism_model, "ForwardContext", StockForwardContext)
    with pytest.raises(RuntimeError, match="prism-sglang patch-sglang"):
        build(tiny_target_dir, good_draft, algorithm="EAGLE3")


def test_weights_are_copied_as_they_stream_in(tiny_target_dir, good_draft):
    """Like `--load-format fastsafetensors`, an iterator may free a tensor once it moves past it: every tensor
    must have been copied into the model before the next one is read."""
    def freed_after_use(weights):
        for name, tensor in weights:
            yield name, tensor
            tensor.fill_(float("nan") if tensor.is_floating_point() else -1)  # what the loader hands back is dead

    model = build(tiny_target_dir, good_draft)
    model.load_weights(freed_after_use(safetensors_weights_iterator([str(good_draft / "model.safetensors")])))
    assert not any(p.isnan().any() for p in model.parameters())
    expected = load_file(str(good_draft / "model.safetensors"))
    torch.testing.assert_close(model.model.fc.weight.detach(), expected["fc.weight"])
