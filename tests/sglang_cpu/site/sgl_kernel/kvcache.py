"""TEST-ONLY: sgl_kernel's `copy_all_layer_kv_cache_cpu` in plain PyTorch (SGLang 0.5.17, kv pool moves).

SGLang hands over the raw addresses of every layer's K and V buffers (`data_ptrs`, uint64) and the bytes of one
slot row in each (`strides`); the op copies rows `src_loc` to rows `tgt_loc` in every buffer. Python cannot
dereference an address, so each buffer is viewed through ctypes over just the rows the copy touches. All source
rows are read before any target row is written: the caller relies on that for overlapping moves and for its
padding pairs (slot 0 onto slot 0).
"""

from __future__ import annotations

import ctypes

import torch

from sgl_kernel.attention import check


def copy_all_layer_kv_cache_cpu(data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor,
                                src_loc: torch.Tensor) -> None:
    check(tgt_loc.numel() == src_loc.numel(), "copy_all_layer_kv_cache: tgt_loc and src_loc differ in size")
    check(data_ptrs.numel() == strides.numel(), "copy_all_layer_kv_cache: data_ptrs and strides differ in size")
    if tgt_loc.numel() == 0:
        return
    targets, sources = tgt_loc.long(), src_loc.long()
    rows = int(max(targets.max(), sources.max())) + 1
    for address, row_bytes in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        memory = (ctypes.c_uint8 * (rows * row_bytes)).from_address(address)
        buffer = torch.frombuffer(memory, dtype=torch.uint8).view(rows, row_bytes)
        buffer[targets] = buffer[sources].clone()
