"""The SGLang plugin: entry point, registration, and `--speculative-algorithm PRISM` resolving exactly like EAGLE3
(plus PRISM's own launch checks), on the same tiny target and draft folders."""

# ruff: noqa: E402 (sglang is imported once import_sglang has checked that it can be)

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import logging
import types
from pathlib import Path

import pytest
import torch

from tests.sglang_support import import_sglang

sglang = import_sglang()  # skips this module without sglang (fails it under PRISM_REQUIRE_SGLANG=1)

from sglang.srt.models.registry import ModelRegistry
from sglang.srt.plugins import load_plugins
from sglang.srt.server_args import prepare_server_args
from sglang.srt.speculative import spec_registry
from sglang.srt.speculative.eagle_worker_v2 import EAGLEWorkerV2
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_registry import CustomSpecAlgo

from prism_sglang.checkpoint import CheckpointError
from prism_sglang.config import ConfigError
from prism_sglang.sglang import model as prism_model
from prism_sglang.sglang import plugin
from prism_sglang.sglang.model import LlamaForCausalLMPrism
from prism_sglang.sglang.spec_algo import PrismSpecAlgo
from tests.conftest import draft_config_for
from tests.sglang_harness import server_args

pytestmark = pytest.mark.sglang

EAGLE3 = SpeculativeAlgorithm.EAGLE3
PREDICATES = [name for name in vars(SpeculativeAlgorithm) if name.startswith(("is_", "supports_", "has_"))]
# What server-args resolution decides for an EAGLE-family algorithm.
RESOLVED = ("speculative_num_steps", "speculative_eagle_topk", "speculative_num_draft_tokens", "max_running_requests",
            "disable_overlap_schedule", "enable_mixed_chunk", "speculative_adaptive",
            "speculative_use_rejection_sampling", "speculative_draft_window_size")
TOPK1 = ("--speculative-eagle-topk", "1")
STEPS3 = ("--speculative-num-steps", "3", *TOPK1)


@pytest.fixture(scope="module", autouse=True)
def plugins():
    load_plugins()  # what launch_server, the engine and every scheduler process do first


@pytest.fixture
def draft_dir(tiny_target, tmp_path) -> Path:
    """A PRISM draft folder for the tiny target; server-args handling only reads its config.json."""
    draft_config_for(tiny_target).save(tmp_path / "draft")
    return tmp_path / "draft"


def edit_config(draft_dir: Path, **changes) -> None:
    path = draft_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_entry_point_is_discoverable():
    (entry,) = [e for e in importlib.metadata.entry_points(group="sglang.srt.plugins") if e.name == "prism"]
    assert entry.value == "prism_sglang.sglang.plugin:register"
    assert entry.load() is plugin.register


def test_plugin_registers_the_model_and_the_algorithm():
    arch = "LlamaForCausalLMPrism"
    assert ModelRegistry.resolve_model_cls([arch]) == (LlamaForCausalLMPrism, arch)
    algo = SpeculativeAlgorithm.from_string("prism")
    assert isinstance(algo, PrismSpecAlgo)
    assert algo.supports_overlap  # the GPU default runs the overlap scheduler


def test_register_is_idempotent():
    algo = SpeculativeAlgorithm.from_string("PRISM")
    plugin.register()
    plugin.register()
    assert SpeculativeAlgorithm.from_string("PRISM") is algo


def test_register_refuses_another_sglang_version(monkeypatch):
    monkeypatch.setattr(sglang, "__version__", "0.5.23")
    with pytest.raises(RuntimeError, match=r"needs sglang==0\.5\.17 .* found sglang 0\.5\.23"):
        plugin.register()


def test_register_refuses_a_prism_registered_by_someone_else(monkeypatch):
    monkeypatch.setitem(spec_registry._REGISTRY, "PRISM", CustomSpecAlgo("PRISM", lambda args: None))
    with pytest.raises(RuntimeError, match="already registered by another plugin"):
        plugin.register()


def test_prism_answers_like_eagle3():
    prism = SpeculativeAlgorithm.from_string("PRISM")
    assert {n: getattr(prism, n)() for n in PREDICATES} == {n: getattr(EAGLE3, n)() for n in PREDICATES}
    assert prism.is_eagle() and prism.is_eagle3()
    assert prism.need_topk() is EAGLE3.need_topk() is True
    assert prism.carries_draft_hidden_states() is EAGLE3.carries_draft_hidden_states() is True
    assert prism.get_num_tokens_per_req_for_target_verify(8, False) == 8
    pool = types.SimpleNamespace(req_to_token=torch.zeros(4, 16, dtype=torch.int32))
    future_map = prism.create_future_map(torch.device("cpu"), pool)
    assert future_map.spec_algo is prism  # FutureMap asks this object need_topk() later


@pytest.mark.parametrize("extra", [
    (),  # auto-chosen for a Llama target: (5, 4, 8)
    ("--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "7"),
    ("--speculative-num-steps", "2", "--speculative-eagle-topk", "4", "--speculative-num-draft-tokens", "6"),
    ("--max-running-requests", "8", "--enable-mixed-chunk"),
    # Features 0.5.17 grants by name to EAGLE/EAGLE3 only; patch 0002 extends them to PRISM.
    ("--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-use-rejection-sampling"),
    ("--speculative-adaptive",),
    ("--speculative-draft-window-size", "64"),
], ids=["auto", "chain", "tree", "running-requests", "rejection-sampling", "adaptive", "draft-window"])
def test_server_args_resolve_like_eagle3(tiny_target_dir, draft_dir, extra):
    eagle3 = server_args(tiny_target_dir, draft_dir, "EAGLE3", *extra)
    prism = server_args(tiny_target_dir, draft_dir, "PRISM", *extra)
    assert prism.speculative_algorithm == "PRISM"
    assert {f: getattr(prism, f) for f in RESOLVED} == {f: getattr(eagle3, f) for f in RESOLVED}
    assert SpeculativeAlgorithm.from_string(prism.speculative_algorithm).create_worker(prism) is EAGLEWorkerV2


def test_features_granted_by_name_stay_on(tiny_target_dir, draft_dir):
    """0.5.17 grants these to ("EAGLE", "EAGLE3") by name; patch 0002 adds PRISM (else: error / silently off)."""
    args = server_args(tiny_target_dir, draft_dir, "PRISM", *STEPS3, "--speculative-use-rejection-sampling")
    assert args.speculative_use_rejection_sampling
    assert server_args(tiny_target_dir, draft_dir, "PRISM", "--speculative-adaptive").speculative_adaptive


def test_auto_settings_are_eagle3s(tiny_target_dir, draft_dir):
    args = server_args(tiny_target_dir, draft_dir, "PRISM")
    resolved = (args.speculative_num_steps, args.speculative_eagle_topk, args.speculative_num_draft_tokens)
    assert resolved == (5, 4, 8)
    assert args.max_running_requests == 48
    assert args.disable_overlap_schedule  # on CPU, as for EAGLE3


def test_draft_window_is_not_called_ineffective(tiny_target_dir, draft_dir, caplog):
    with caplog.at_level(logging.WARNING):
        server_args(tiny_target_dir, draft_dir, "PRISM", "--speculative-draft-window-size", "64")
    assert "has no effect" not in caplog.text


# -- launches that must stop, with a message that says why -------------------------------------------------------


def test_strict_table_limits_num_steps(tiny_target_dir, draft_dir):
    edit_config(draft_dir, prism_strict_steps=True)  # table [0, 1]: two draft steps
    server_args(tiny_target_dir, draft_dir, "PRISM", "--speculative-num-steps", "2", *TOPK1)
    with pytest.raises(ConfigError, match=r"num_steps=3 .*'prism_strict_steps' is true"):
        server_args(tiny_target_dir, draft_dir, "PRISM", "--speculative-num-steps", "3", *TOPK1)
    with pytest.raises(ConfigError, match=r"num_steps=5 "):  # the auto choice
        server_args(tiny_target_dir, draft_dir, "PRISM")


def test_strict_table_counts_the_largest_adaptive_step(tiny_target_dir, draft_dir):
    edit_config(draft_dir, prism_strict_steps=True)
    with pytest.raises(ConfigError, match=r"num_steps=7 "):  # 0.5.17's default adaptive candidates go up to 7
        server_args(tiny_target_dir, draft_dir, "PRISM", "--speculative-adaptive", "--speculative-num-steps", "1")


def test_lenient_table_allows_any_num_steps(tiny_target_dir, draft_dir):
    args = server_args(tiny_target_dir, draft_dir, "PRISM", "--speculative-num-steps", "6", *TOPK1)
    assert args.speculative_num_steps == 6


def test_table_naming_a_missing_module(tiny_target_dir, draft_dir):
    edit_config(draft_dir, prism_step_modules=[0, 3])
    with pytest.raises(ConfigError, match=r"prism_step_modules\[1\]' = 3 names a missing module"):
        server_args(tiny_target_dir, draft_dir, "PRISM")


def test_draft_for_another_target(tiny_target_dir, draft_dir):
    edit_config(draft_dir, target_hidden_size=64)
    with pytest.raises(CheckpointError, match="'target_hidden_size' is 64, but the target's hidden_size is 32"):
        server_args(tiny_target_dir, draft_dir, "PRISM")


def test_aux_layer_outside_the_target(tiny_target_dir, draft_dir):
    edit_config(draft_dir, eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 3, 7], "use_aux_hidden_state": True})
    with pytest.raises(CheckpointError, match="contains 7, outside the target's decoder layers 0..6"):
        server_args(tiny_target_dir, draft_dir, "PRISM")


def test_a_draft_path_is_required(tiny_target_dir):
    with pytest.raises(ValueError, match="needs --speculative-draft-model-path"):
        prepare_server_args(["--model-path", str(tiny_target_dir), "--device", "cpu", "--skip-tokenizer-init",
                             "--speculative-algorithm", "PRISM"])


def test_multi_layer_eagle_is_refused(tiny_target_dir, draft_dir):
    with pytest.raises(ValueError, match="drop --enable-multi-layer-eagle"):
        server_args(tiny_target_dir, draft_dir, "PRISM", "--enable-multi-layer-eagle", *STEPS3)


def test_unpatched_sglang_is_refused(tiny_target_dir, draft_dir, monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class StockForwardContext:  # sglang 0.5.17 without patch 0001: no spec_draft_step
        attn_backend: object

    monkeypatch.setattr(prism_model, "ForwardContext", StockForwardContext)
    with pytest.raises(RuntimeError, match="Run `prism-sglang patch-sglang`"):
        server_args(tiny_target_dir, draft_dir, "PRISM")


def test_a_half_applied_step_patch_is_refused(tiny_target_dir, draft_dir, monkeypatch):
    """ForwardContext patched but the draft loop not (eagle_worker_v2.py as 0.5.17 ships it): refused at start."""
    from sglang.srt.speculative.eagle_worker_v2 import EagleDraftWorker

    assert prism_model._draft_loop_sets_step()  # the patched install this suite runs on
    patched = inspect.getsource(EagleDraftWorker.draft_forward)
    stock = patched.replace("spec_draft_step=i + 1,", "")
    assert stock != patched
    monkeypatch.setattr(prism_model.inspect, "getsource", lambda obj: stock)
    with pytest.raises(RuntimeError, match=r"draft_forward does not set it.*Run `prism-sglang patch-sglang`"):
        server_args(tiny_target_dir, draft_dir, "PRISM")


def test_the_ray_launcher_is_refused(tiny_target_dir, draft_dir):
    with pytest.raises(ValueError, match="does not run under --use-ray"):
        server_args(tiny_target_dir, draft_dir, "PRISM", "--use-ray", *STEPS3)


def test_a_bad_ragged_verify_mode_fails_the_launch(tiny_target_dir, draft_dir, monkeypatch):
    monkeypatch.setenv("SGLANG_RAGGED_VERIFY_MODE", "no-such-mode")
    with pytest.raises(ValueError, match="invalid SGLANG_RAGGED_VERIFY_MODE"):
        server_args(tiny_target_dir, draft_dir, "PRISM", *STEPS3)
