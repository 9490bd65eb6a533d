"""TEST-ONLY stand-in for the `sgl_kernel` CPU extension, for running real SGLang 0.5.17 on a CPU without it.

SGLang's CPU engine needs sgl_kernel's C++ CPU ops, which have no wheel on PyPI. This package gives it the ones
a Llama target with an EAGLE/EAGLE3/PRISM draft reaches, written in plain PyTorch from the semantics that
SGLang's Python callers define: the speculative helpers as module functions (imported by name), the two
attention kernels as `torch.ops.sgl_kernel.*` (read off the op namespace). It lives under tests/, reaches a
server only through tests/sglang_cpu/site on PYTHONPATH, and never ships.

Deliberately absent: `convert_weight_packed` (its presence is what SGLang takes as "AMX kernels available",
which would switch every layer to further sgl_kernel ops) and any catch-all attribute (SGLang probes optional
names such as `gptq_gemm` and the `scalar_type` submodule, and falls back when they are missing).
"""

import torch

from sgl_kernel import attention
from sgl_kernel.kvcache import copy_all_layer_kv_cache_cpu
from sgl_kernel.speculative import (
    assign_draft_cache_locs_contiguous_cpu,
    assign_extend_cache_locs_cpu,
    assign_req_to_token_pool_cpu,
    build_draft_decode_metadata_cpu,
    build_tree_kernel_efficient_cpu,
    fill_accept_out_cache_loc_cpu,
    fill_bonus_tokens_cpu,
    verify_tree_greedy_cpu,
)

__all__ = [
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_req_to_token_pool_cpu",
    "build_draft_decode_metadata_cpu",
    "build_tree_kernel_efficient_cpu",
    "copy_all_layer_kv_cache_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "verify_tree_greedy_cpu",
]


def _register_attention_ops() -> torch.library.Library:
    library = torch.library.Library("sgl_kernel", "FRAGMENT")
    for name, schema in attention.SCHEMAS.items():
        library.define(schema)
        library.impl(name, getattr(attention, name), "CPU")
    return library


_LIBRARY = _register_attention_ops()  # kept alive: dropping the Library object unregisters the ops
