"""Running SGLang pieces outside a server, on CPU (notes/sglang.md §5), for tests/test_sglang_*.py.

* `server_args` / `publish`: resolved ServerArgs of a CPU launch, published as the process's runtime context.
* `single_process_runtime`: a 1-process gloo world for SGLang's parallel layers, and native RoPE (SGLang's CPU
  kernel path needs vllm).
* `SlotAttention` + `make_batch`: stand-ins for SGLang's attention backend and forward batch, so that SGLang's
  own layer code (RadixAttention, the logits processor) runs for real around a plain attention over a
  slot-indexed KV cache.
Importing this module imports sglang (or skips the test module, see sglang_support).
"""

# ruff: noqa: E402 (sglang is imported once import_sglang has checked that it can be)

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.sglang_support import import_sglang

import_sglang()

import sglang.srt.layers.rotary_embedding.base as rope
from sglang.srt.distributed import parallel_state
from sglang.srt.layers.logits_processor import LogitsMetadata
from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardMode
from sglang.srt.runtime_context import get_context
from sglang.srt.server_args import ServerArgs, prepare_server_args


def server_args(target: Path, draft: Path, algorithm: str, *extra: str) -> ServerArgs:
    """Resolved ServerArgs of a CPU launch with `algorithm` (what `launch_server` builds from its argv)."""
    return prepare_server_args([
        "--model-path", str(target), "--device", "cpu", "--skip-tokenizer-init",
        "--speculative-algorithm", algorithm, "--speculative-draft-model-path", str(draft), *extra,
    ])


def publish(args: ServerArgs) -> None:
    get_context().set_server_args(args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def single_process_runtime() -> Iterator[None]:
    parallel_state.init_distributed_environment(
        world_size=1, rank=0, local_rank=0, backend="gloo", distributed_init_method=f"tcp://127.0.0.1:{_free_port()}"
    )
    parallel_state.initialize_model_parallel(backend="gloo")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rope, "_is_cpu", True)
            yield
    finally:
        parallel_state.destroy_model_parallel()
        parallel_state.destroy_distributed_environment()


@dataclass
class SpecInfo:
    hidden_states: torch.Tensor


@dataclass
class Batch(LogitsMetadata):
    """A forward batch for one chain of tokens: a LogitsMetadata (what the logits processor reads) carrying the
    few ForwardBatch fields that the draft model and RadixAttention read."""

    spec_info: SpecInfo | None = None
    out_cache_loc: torch.Tensor | None = None
    visible: list[torch.Tensor] = field(default_factory=list)  # per query token: the cache slots it sees

    def contains_mm_inputs(self) -> bool:
        return False


def make_batch(mode: str, hidden: torch.Tensor, slots: torch.Tensor, visible: list[torch.Tensor]) -> Batch:
    """`mode` 'extend' (DRAFT_EXTEND_V2: logits at every token) or 'decode'; FULL hidden-state capture."""
    forward_mode = ForwardMode.DRAFT_EXTEND_V2 if mode == "extend" else ForwardMode.DECODE
    return Batch(forward_mode=forward_mode, capture_hidden_mode=CaptureHiddenMode.FULL,
                 spec_info=SpecInfo(hidden), out_cache_loc=slots, visible=visible)


class SlotAttention:
    """Stands in for SGLang's attention backend: writes K/V at `out_cache_loc`, then each query attends to the
    cache slots its batch lists for it. Records the KV layer ids it served."""

    def __init__(self, num_slots: int, num_kv_heads: int, head_dim: int) -> None:
        self.k = torch.zeros(num_slots, num_kv_heads, head_dim)
        self.v = torch.zeros(num_slots, num_kv_heads, head_dim)
        self.layer_ids: list[int] = []

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, batch: Batch,
                save_kv_cache: bool = True, **kwargs: Any) -> torch.Tensor:
        self.layer_ids.append(layer.layer_id)
        self.k[batch.out_cache_loc] = k.view(-1, layer.tp_k_head_num, layer.qk_head_dim)
        self.v[batch.out_cache_loc] = v.view(-1, layer.tp_v_head_num, layer.v_head_dim)
        q = q.view(-1, layer.tp_q_head_num, layer.qk_head_dim)
        groups = layer.tp_q_head_num // layer.tp_k_head_num
        rows = []
        for i, slots in enumerate(batch.visible):
            keys = self.k[slots].repeat_interleave(groups, dim=1).transpose(0, 1)  # [H, S, d]
            values = self.v[slots].repeat_interleave(groups, dim=1).transpose(0, 1)
            rows.append(F.scaled_dot_product_attention(q[i][:, None], keys, values, scale=layer.scaling).reshape(-1))
        return torch.stack(rows)
