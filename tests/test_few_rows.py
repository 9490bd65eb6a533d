import numpy as np
import pytest
import torch
from torch import nn

from prism_sglang.few_rows import FEW_ROWS, FewRowLinear, few_row_product, use_few_row_linears

TOL = dict(atol=1e-5, rtol=1e-5)  # the same sums in another order: float32 rounding only


@pytest.mark.parametrize("rows", range(1, FEW_ROWS + 2))
def test_few_row_product_equals_the_matrix_product(rows):
    """Every row count in blocks of 4 and the 3, 2 or 1 left, on a shape that is no multiple of a
    vector's width."""
    generator = torch.Generator().manual_seed(rows)
    x, weight = torch.randn(rows, 37, generator=generator), torch.randn(29, 37, generator=generator)
    out = np.full((rows, 29), np.nan, dtype=np.float32)
    few_row_product(x.numpy(), weight.numpy(), out)
    torch.testing.assert_close(torch.from_numpy(out), x @ weight.T, **TOL)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 5), (3, 5)])
def test_few_row_linear_equals_nn_linear(bias, shape):
    """Batched, multi-token inputs of up to 15 rows (so past FEW_ROWS, where nn.Linear takes over)."""
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias)
    few = FewRowLinear(linear)
    assert few.weight is linear.weight and few.bias is linear.bias
    x = torch.randn(*shape, 24)
    with torch.no_grad():
        torch.testing.assert_close(few(x), linear(x), **TOL)


def test_few_row_linear_leaves_autograd_and_other_dtypes_to_nn_linear():
    torch.manual_seed(0)
    linear = nn.Linear(8, 6)
    few = FewRowLinear(linear)
    x = torch.randn(2, 8, requires_grad=True)
    few(x).sum().backward()  # nn.Linear's path: gradients reach the input and the shared weight
    assert x.grad is not None and linear.weight.grad is not None
    with torch.no_grad():
        half = few.to(torch.bfloat16)(x.detach().to(torch.bfloat16))
    assert half.dtype == torch.bfloat16


def test_use_few_row_linears_replaces_all_but_the_one_row_ones():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4)), nn.Linear(4, 2))
    weights = [model[0].weight, model[2][0].weight, model[3].weight]
    x = torch.randn(3, 4)
    with torch.no_grad():
        before = model(x)
        assert use_few_row_linears(model, one_row=(model[3],)) == 2
        after = model(x)
    assert isinstance(model[0], FewRowLinear) and isinstance(model[2][0], FewRowLinear)
    assert type(model[3]) is nn.Linear and not model[3].weight.is_contiguous()  # stored transposed for MKL
    assert all(a is b for a, b in zip([model[0].weight, model[2][0].weight, model[3].weight], weights, strict=True))
    torch.testing.assert_close(after, before, **TOL)
