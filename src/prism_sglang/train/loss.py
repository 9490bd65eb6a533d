"""The per-step soft cross-entropy of training, computed over blocks of rows.

For each scored cell the loss is -sum_v p(v) log softmax(x)(v), with x the draft's logits over the draft
vocabulary and p the target's distribution there. Written out whole (`F.cross_entropy` with probability targets)
a step makes half a dozen [rows, vocabulary] fp32 temporaries: 75 MB each for ~2,300 rows of an 8,192-token
vocabulary, above glibc's 32 MB mmap ceiling, so each one is fresh pages from the kernel, faulted in and zeroed
on every step. Over blocks of rows the temporaries are a few MB, reused from the heap, and stay in cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK_BYTES = 8 * 2**20  # an fp32 [rows, vocabulary] block: well under glibc's mmap threshold, fits in L3


def _blocks(rows: int, vocab: int) -> list[tuple[int, int]]:
    step = max(1, BLOCK_BYTES // (4 * vocab))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


class _SoftCrossEntropy(torch.autograd.Function):
    """Sum over cells of -sum_v p log softmax(x), and argmax x per cell (not differentiable). Backward: the
    gradient of a cell's logits is softmax(x) * sum(p) - p, recomputed block by block from x and its saved
    log-sum-exp, as `F.cross_entropy`'s."""

    @staticmethod
    def forward(ctx, logits: Tensor, probs: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
        n, vocab = logits.shape
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        top = torch.empty(n, dtype=torch.long, device=logits.device)
        for start, end in _blocks(n, vocab):
            x = logits[start:end].float()
            p = probs[rows[start:end], cols[start:end]]
            lse[start:end] = torch.logsumexp(x, dim=-1)
            total += torch.dot(p.sum(-1), lse[start:end]) - torch.dot(p.view(-1), x.view(-1))
            top[start:end] = x.argmax(-1)
        ctx.save_for_backward(logits, probs, rows, cols, lse)
        ctx.mark_non_differentiable(top)
        return total, top

    @staticmethod
    def backward(ctx, grad_total: Tensor, _grad_top: Tensor | None) -> tuple[Tensor | None, ...]:
        logits, probs, rows, cols, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start, end in _blocks(*logits.shape):
            p = probs[rows[start:end], cols[start:end]]
            # in place on a copy of the block (never the saved logits): softmax(x) * sum(p) - p, times the gradient
            x = logits[start:end].to(torch.float32, copy=True).sub_(lse[start:end, None]).exp_()
            grad[start:end] = x.mul_(p.sum(-1, keepdim=True)).sub_(p).mul_(grad_total)
        return grad, None, None, None


def soft_cross_entropy(logits: Tensor, probs: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """(sum over cells of the cross-entropy of `logits` [N, V] against `probs[rows, cols]` ([B, T, V] fp32
    distributions), fp32; the argmax of each cell's logits [N]). Equal to `F.cross_entropy(logits.float(),
    probs[rows, cols], reduction="sum")` and `logits.float().argmax(-1)`, without their [N, V] temporaries."""
    return _SoftCrossEntropy.apply(logits, probs, rows, cols)
