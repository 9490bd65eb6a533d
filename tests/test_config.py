import json

import pytest

from prism_sglang.config import ConfigError, PrismConfig, default_aux_layer_ids

BASE = {
    "architectures": ["LlamaForCausalLMPrism"], "model_type": "llama", "hidden_size": 32,
    "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "max_position_embeddings": 512, "vocab_size": 48, "draft_vocab_size": 24, "target_hidden_size": 32,
    "tie_word_embeddings": False, "num_hidden_layers": 1, "prism_num_modules": 2, "prism_step_modules": [0, 1],
    "eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 3, 4], "use_aux_hidden_state": True},
}


def test_round_trip_is_bit_exact(tmp_path):
    config = PrismConfig.from_dict(BASE)
    first = config.save(tmp_path / "a").read_bytes()
    again = PrismConfig.load(tmp_path / "a")
    assert again == config
    assert again.save(tmp_path / "b").read_bytes() == first


def test_written_config_has_the_design_fields():
    d = PrismConfig.from_dict(BASE).to_dict()
    assert d["architectures"] == ["LlamaForCausalLMPrism"]
    assert d["num_hidden_layers"] == 1 and d["tie_word_embeddings"] is False
    assert d["prism_num_modules"] == 2 and d["prism_step_modules"] == [0, 1]
    assert d["eagle_config"] == {"eagle_aux_hidden_state_layer_ids": [1, 3, 4], "use_aux_hidden_state": True}
    assert d["draft_vocab_size"] == 24


def test_step_table_is_clamped():
    config = PrismConfig.from_dict({**BASE, "prism_num_modules": 3, "prism_step_modules": [0, 2, 1]})
    assert [config.module_for_step(k) for k in range(6)] == [0, 2, 1, 1, 1, 1]


@pytest.mark.parametrize("arch", ["LlamaForCausalLMEagle3", "LlamaForCausalLM"])
def test_eagle3_config_reads_as_one_module(arch):
    d = {k: v for k, v in BASE.items() if not k.startswith("prism_") and k not in ("eagle_config", "rope_parameters")}
    config = PrismConfig.from_dict({**d, "architectures": [arch], "rope_theta": 5e5})
    assert config.num_modules == 1 and config.step_modules == (0,)
    assert all(config.module_for_step(k) == 0 for k in range(8))
    assert config.aux_layer_ids is None and config.resolved_aux_layer_ids(32) == [1, 15, 28]
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 5e5}


def test_legacy_rope_scaling_is_read():
    d = {k: v for k, v in BASE.items() if k != "rope_parameters"}
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = PrismConfig.from_dict({**d, "rope_theta": 500000.0, "rope_scaling": scaling})
    assert config.rope_parameters == {**scaling, "rope_theta": 500000.0}


def test_default_aux_layers_follow_eagle3():
    assert default_aux_layer_ids(32) == [1, 15, 28]
    assert default_aux_layer_ids(30) == [1, 14, 26]


@pytest.mark.parametrize(("change", "message"), [
    ({"hidden_size": None}, "missing required field 'hidden_size'"),
    ({"architectures": None}, "missing required field 'architectures'"),
    ({"architectures": ["MistralForCausalLM"]}, "unknown architecture 'MistralForCausalLM'"),
    ({"model_type": "qwen2"}, "field 'model_type' must be 'llama'"),
    ({"prism_step_modules": [0, 2]}, "'prism_step_modules[1]' = 2 names a missing module"),
    ({"prism_step_modules": []}, "'prism_step_modules' is empty"),
    ({"prism_num_modules": 0}, "'prism_num_modules' must be >= 1"),
    ({"num_hidden_layers": 2}, "'num_hidden_layers' must be 1"),
    ({"tie_word_embeddings": True}, "'tie_word_embeddings' must be false"),
    ({"draft_vocab_size": 100}, "'draft_vocab_size' (100) is larger than 'vocab_size' (48)"),
    ({"num_key_value_heads": 3}, "must be a multiple of 'num_key_value_heads'"),
    ({"hidden_size": "32"}, "field 'hidden_size' must be an integer"),
    ({"hidden_act": "gelu"}, "field 'hidden_act' must be 'silu'"),
    ({"eagle_config": {"eagle_aux_hidden_state_layer_ids": "1,2"}}, "must be a list of integers"),
])
def test_bad_config_names_the_field(change, message):
    with pytest.raises(ConfigError) as e:
        PrismConfig.from_dict({**BASE, **change})
    assert message in str(e.value)


def test_aux_layers_outside_target():
    config = PrismConfig.from_dict({**BASE, "eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 3, 7]}})
    with pytest.raises(ConfigError, match="contains 7, outside the target's decoder layers 0..6"):
        config.resolved_aux_layer_ids(8)


def test_load_reports_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**BASE, "prism_step_modules": [0, 5]}))
    with pytest.raises(ConfigError, match=r"config\.json: field 'prism_step_modules\[1\]'"):
        PrismConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        PrismConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        PrismConfig.load(tmp_path / "nowhere")


def test_strict_step_table():
    lax = PrismConfig.from_dict(BASE)
    lax.check_num_steps(6)  # later steps reuse the last module
    strict = PrismConfig.from_dict({**BASE, "prism_strict_steps": True})
    assert strict.to_dict()["prism_strict_steps"] is True
    strict.check_num_steps(2)
    with pytest.raises(ConfigError, match="num_steps=3 runs draft steps 0..2, but the draft's 'prism_step_modules'"):
        strict.check_num_steps(3)
    with pytest.raises(ConfigError, match="'prism_strict_steps' must be true or false"):
        PrismConfig.from_dict({**BASE, "prism_strict_steps": "yes"})


def test_one_module_drafts_are_written_as_eagle3(tmp_path):
    eagle3 = PrismConfig.from_dict({**BASE, "prism_num_modules": 1, "prism_step_modules": [0, 0, 0]})
    d = eagle3.to_dict()
    assert d["architectures"] == ["LlamaForCausalLMEagle3"]
    assert "prism_num_modules" not in d and "prism_step_modules" not in d and d["num_hidden_layers"] == 1
    first = eagle3.save(tmp_path / "a").read_bytes()
    again = PrismConfig.load(tmp_path / "a")
    assert again == eagle3 and again.step_modules == (0,)
    assert again.save(tmp_path / "b").read_bytes() == first
    strict = PrismConfig.from_dict({**BASE, "prism_num_modules": 1, "prism_step_modules": [0],
                                    "prism_strict_steps": True})
    assert strict.to_dict()["architectures"] == ["LlamaForCausalLMPrism"]
