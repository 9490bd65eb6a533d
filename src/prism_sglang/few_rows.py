"""Linear layers for the few rows of CPU decoding: a decode step multiplies 1 row by each weight, verifying a
draft 2..N rows. Such a product is bound by reading the weight from memory, yet MKL's and oneDNN's float32
kernels read it at a fraction of the memory's speed for so few rows, and MKL pays ~40 µs of set-up per call on
small weights. `few_row_product` reads each weight row once and multiplies it with up to 4 input rows while it
is in cache: 2-4 rows cost about what one costs.

Measured on a 2-core AVX2 EPYC, one thread, float32, SmolLM2's shapes, 30 distinct weights in turn (so none
stays in cache), µs per product (this kernel / MKL on the transposed weight / oneDNN prepacked):
1536 x 576: 1 row 199 / 202 / 297, 2 rows 258 / 317 / 355, 4 rows 252 / 504 / 436, 6 rows 291 / 622 / 442;
576 x 576: 1 row 76 / 114 / 159, 2 rows 81 / 139 / 163, 4 rows 114 / 203 / 189; 192 x 576: 1 row 18 / 61 / 52;
3 rows in a block of their own (2026-12-07, this kernel before / after, interleaved): 1536 x 576 256 / 237,
576 x 576 86 / 82, 576 x 1536 291 / 263 — about what 2 rows cost (the tree 1/2/3 verifies 3);
beyond ~12 rows oneDNN and MKL win again (16 rows: 851 vs 628 for oneDNN), and on the 49,152 x 576 lm_head one
row is faster with MKL on the transposed weight (4.8 vs 6.3 ms), so lm_heads keep nn.Linear.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import Tensor, nn

# Up to this many rows `few_row_product` beats MKL and oneDNN on the shapes above; beyond, nn.Linear.
FEW_ROWS = 12


@njit(fastmath=True, nogil=True, cache=True)
def few_row_product(x, weight, out) -> None:
    """out = x @ weight.T for float32 C-contiguous x [R, K], weight [N, K], out [R, N]. Each weight row is read
    once for all rows: 4 dot products at a time, then the 3, 2 or 1 left (fastmath lets LLVM vectorise each
    dot product, so the sums are float32-rounded in another order than MKL's). The blocks are written out, not a
    loop over a block size: numba vectorises these loops only when each has its fixed number of accumulators."""
    rows, k_size = x.shape
    for n in range(weight.shape[0]):
        w = weight[n]
        r = 0
        while r + 4 <= rows:
            x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(k_size):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
            out[r, n], out[r + 1, n], out[r + 2, n], out[r + 3, n] = a0, a1, a2, a3
            r += 4
        left = rows - r
        if left == 3:  # its own block: 3 rows as 2 + 1 read the weight row twice (verifying tree 1/2/3)
            x0, x1, x2 = x[r], x[r + 1], x[r + 2]
            a0 = a1 = a2 = np.float32(0.0)
            for k in range(k_size):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
            out[r, n], out[r + 1, n], out[r + 2, n] = a0, a1, a2
        elif left == 2:
            x0, x1 = x[r], x[r + 1]
            a0 = a1 = np.float32(0.0)
            for k in range(k_size):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
            out[r, n], out[r + 1, n] = a0, a1
        elif left == 1:
            x0 = x[r]
            a0 = np.float32(0.0)
            for k in range(k_size):
                a0 += w[k] * x0[k]
            out[r, n] = a0


class FewRowLinear(nn.Linear):
    """An nn.Linear (the same weight and bias parameters, the weight row-major) whose float32 CPU products of
    up to FEW_ROWS rows run `few_row_product`; anything else (long prompts, autograd, other dtypes or devices)
    is nn.Linear's."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._array: np.ndarray | None = None  # the weight as the kernel reads it, for `_array_of`'s storage
        self._array_of = -1

    def forward(self, x: Tensor) -> Tensor:
        # A decode step calls ~200 of these: the checks are ordered and cached so that the call costs a few µs
        # beyond the kernel (torch's `.numpy()` of the weight, rebuilt each call, cost more than a small product).
        rows = x.numel() // self.in_features
        weight = self._kernel_weight()
        if (rows > FEW_ROWS or weight is None or x.dtype is not torch.float32 or not x.is_cpu
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return F.linear(x, self.weight, self.bias)
        out = np.empty((rows, self.out_features), dtype=np.float32)
        few_row_product(x.reshape(rows, self.in_features).contiguous().numpy(), weight, out)
        result = torch.from_numpy(out)
        if self.bias is not None:
            result += self.bias
        return result.view(*x.shape[:-1], self.out_features)

    def _kernel_weight(self) -> np.ndarray | None:
        """The weight as a numpy array when the kernel can read it (float32, CPU, row-major), else None; kept
        until the parameter's storage changes (`module.to(...)`, a load into `.data`)."""
        weight = self.weight
        if weight.data_ptr() != self._array_of:
            usable = weight.dtype is torch.float32 and weight.is_cpu and weight.is_contiguous()
            self._array = weight.detach().numpy() if usable else None
            self._array_of = weight.data_ptr()
        return self._array


def use_few_row_linears(module: nn.Module, one_row: tuple[nn.Module, ...] = ()) -> int:
    """Replace every nn.Linear under `module` with a FewRowLinear sharing its parameters, except those in
    `one_row` (lm_heads: one wide row at a time), whose weights are stored transposed instead — the same values,
    column-major: MKL's float32 GEMM reads an [in, out] row-major operand faster for one row (8,192 x 576:
    746 vs 1,343 µs; 49,152 x 576: 4.8 vs 8.3 ms). Returns how many were replaced. The kernel is compiled
    here (~1.5 s the first time; numba caches it)."""
    one = np.ones((1, 1), dtype=np.float32)
    few_row_product(one, one, np.empty_like(one))  # compiled (or read from numba's cache) now, not in a request
    replaced = 0
    for name, child in list(module.named_modules()):
        if type(child) is not nn.Linear:
            continue
        if any(child is m for m in one_row):
            if child.weight.is_contiguous():
                child.weight.data = child.weight.data.t().contiguous().t()
        else:
            module.set_submodule(name, FewRowLinear(child))
            replaced += 1
    return replaced
