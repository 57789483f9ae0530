"""torch.autograd.gradcheck (float64, tiny shapes) of every forward op's
registered autograd: padded and packed, both directions, with and without
biases, LSTM with projections. The wrapper returns only (output, h_n[, c_n]);
the workspace output is not differentiable."""

import pytest
import torch

from conftest import CELLS, build_case, op_forward


def _gradcheck_inputs(cell, *, packed, reverse, bias, N=3):
    T, I, H, P = 3, 2, 3, 2
    _, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, bias=bias, dtype=torch.float64, reverse=reverse, packed=packed
    )
    names = list(tensors)
    leaves = tuple(tensors[k].detach().clone().requires_grad_() for k in names)

    def fn(*args):
        t = dict(zip(names, args))
        return op_forward(cell, t["input"], batch_sizes, t["h0"], t.get("c0"), t, reverse)

    return fn, leaves


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck_forward_ops(cell, packed, reverse, bias):
    fn, leaves = _gradcheck_inputs(cell, packed=packed, reverse=reverse, bias=bias)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_single_sequence_single_step(cell):
    """T=1, N=1 edge case (packed batch_sizes == [1])."""
    _, tensors, batch_sizes = build_case(
        cell, 1, 1, 2, 3, 2, dtype=torch.float64, packed=True
    )
    names = list(tensors)
    leaves = tuple(tensors[k].detach().clone().requires_grad_() for k in names)

    def fn(*args):
        t = dict(zip(names, args))
        return op_forward(cell, t["input"], batch_sizes, t["h0"], t.get("c0"), t, False)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)
