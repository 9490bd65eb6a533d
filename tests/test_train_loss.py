"""The blockwise soft cross-entropy equals F.cross_entropy with probability targets: value, argmax, gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prism_sglang.train import loss as loss_module
from prism_sglang.train.loss import soft_cross_entropy


def _case(n: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(2, 40, vocab, generator=g), -1)
    rows, cols = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 40, (n,), generator=g)
    logits = (4 * torch.randn(n, vocab, generator=g)).to(dtype)
    return logits, probs, rows, cols


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_bytes", [loss_module.BLOCK_BYTES, 7 * 4 * 64])  # one block; blocks of 7 rows
def test_equals_cross_entropy_with_probability_targets(dtype, block_bytes, monkeypatch):
    monkeypatch.setattr(loss_module, "BLOCK_BYTES", block_bytes)
    logits, probs, rows, cols = _case(50, 64, dtype)
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    total, top = soft_cross_entropy(mine, probs, rows, cols)
    reference = F.cross_entropy(theirs.float(), probs[rows, cols], reduction="sum")
    torch.testing.assert_close(total, reference, rtol=1e-5, atol=1e-4)
    assert torch.equal(top, theirs.float().argmax(-1))
    (2.5 * total).backward()
    (2.5 * reference).backward()
    assert torch.equal(mine.detach(), logits)  # backward works on copies: the saved logits stay as they were
    assert mine.grad.dtype == dtype
    torch.testing.assert_close(mine.grad.float(), theirs.grad.float(), **(
        {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0.02, "atol": 1e-3}))


def test_no_cells_still_has_a_graph():
    """A step with nothing to score: zero, and a backward that runs (every rank must reach FSDP's collective)."""
    logits, probs, rows, cols = _case(0, 64, torch.float32)
    logits.requires_grad_()
    total, top = soft_cross_entropy(logits, probs, rows, cols)
    total.backward()
    assert float(total.detach()) == 0 and top.numel() == 0 and logits.grad.shape == (0, 64)
