"""Helpers for the server tests (tests/test_serve_*.py): fast models, and `prism-sglang serve` as a subprocess.

The fast model is a tiny random Llama with SmolLM2's vocabulary (49152) saved next to SmolLM2's tokenizer files,
so the server's real tokenizer, chat template and sglang.benchmark.serving all work, in milliseconds per token.
Every server is stopped by its PID in a `finally`: SIGTERM, then SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from prism_sglang.checkpoint import save_draft
from prism_sglang.prepare_model import prepare_smollm2
from prism_sglang.target import TargetModel
from tests.conftest import make_draft

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
STARTUP_TIMEOUT = 180.0  # the machine is shared: importing torch + transformers can take a while


def make_fast_target(directory: Path, seed: int = 0, max_positions: int = 1024) -> Path:
    """A tiny random Llama over SmolLM2's tokenizer (ids: bos 1 = <|im_start|>, eos 2 = <|im_end|>)."""
    smollm2 = prepare_smollm2(log=lambda _: None)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2 / name, directory / name)
    return directory


def make_fast_draft(target_dir: Path, directory: Path, seed: int = 0) -> Path:
    target = TargetModel.load(target_dir)
    save_draft(make_draft(target, seed=seed), directory, dtype=None)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def server_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def start_server(args: list[str], log: Path) -> Server:
    """Start `prism-sglang serve ARGS` on a free port and wait for /health; the caller must `stop_server`."""
    port = free_port()
    cmd = [sys.executable, "-m", "prism_sglang.cli", "serve", "--port", str(port), "--num-threads", "1", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=server_env(), cwd=REPO)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_healthy(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_healthy(server: Server, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the server was not healthy within {timeout} s:\n{server.output()}")


def stop_server(server: Server, timeout: float = 30.0) -> int:
    """SIGTERM by PID, wait; SIGKILL if it hangs. Returns the exit status."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode


@contextmanager
def running_server(args: list[str], log: Path) -> Iterator[Server]:
    server = start_server(args, log)
    try:
        yield server
    finally:
        stop_server(server)
