"""need_workspace=False, the inference form of the LSTM and GRU forward ops: the same
results bit for bit, an empty workspace, a clear error if differentiated anyway, and the
functional API choosing it exactly when autograd cannot need the workspace."""

import pytest
import torch

import gatedrnn
from conftest import DTYPES, as_leaves, build_case, op_and_args

CELLS_WITH_WORKSPACE = ("lstm", "lstm_proj", "gru")
GATES_PER_ROW = {"lstm": 5, "lstm_proj": 5, "gru": 4}  # workspace columns / hidden_size
SHAPES = [
    pytest.param(dict(T=5, N=3, I=4, H=6, P=3, packed=False, reverse=False), id="padded"),
    pytest.param(dict(T=5, N=3, I=4, H=6, P=3, packed=True, reverse=True), id="packed-rev"),
    pytest.param(dict(T=7, N=17, I=9, H=40, P=24, packed=True, reverse=False), id="packed-wide"),
]


def _call(cell, shape, dtype, need_workspace):
    _, tensors, batch_sizes = build_case(
        cell, shape["T"], shape["N"], shape["I"], shape["H"], shape["P"], dtype=dtype,
        packed=shape["packed"], reverse=shape["reverse"])
    op, args = op_and_args(cell, tensors, batch_sizes, shape["reverse"])
    return op(*args, need_workspace), tensors


@pytest.mark.parametrize("cell", CELLS_WITH_WORKSPACE)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_inference_form_gives_the_same_bits_and_an_empty_workspace(cell, dtype, shape):
    kept, tensors = _call(cell, shape, dtype, True)
    dropped, _ = _call(cell, shape, dtype, False)
    rows = tensors["input"].shape[0] * (1 if shape["packed"] else tensors["input"].shape[1])
    width = GATES_PER_ROW[cell] * shape["H"]
    assert kept[-1].shape == (rows, width)
    assert dropped[-1].shape == (0, width)
    for a, b in zip(kept[:-1], dropped[:-1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS_WITH_WORKSPACE)
def test_differentiating_the_inference_form_says_why_it_cannot(cell):
    _, tensors, batch_sizes = build_case(cell, 4, 2, 3, 5, 3)
    tensors = as_leaves(tensors)
    op, args = op_and_args(cell, tensors, batch_sizes, False)
    out = op(*args, False)[0]
    with pytest.raises(RuntimeError, match="need_workspace=False"):
        out.sum().backward()


@pytest.mark.parametrize("cell", CELLS_WITH_WORKSPACE)
def test_opcheck_inference_form(cell):
    _, tensors, batch_sizes = build_case(cell, 3, 3, 4, 5, 3, packed=True)
    op, args = op_and_args(cell, tensors, batch_sizes, False)
    torch.library.opcheck(op, (*args, False))


def _module(cell):
    if cell == "gru":
        return gatedrnn.GRU(4, 6)
    return gatedrnn.LSTM(4, 6, proj_size=3 if cell == "lstm_proj" else 0)


def _recorded_need_workspace(cell, monkeypatch, run):
    """The need_workspace argument of every forward op call made by run()."""
    name = "gru_forward" if cell == "gru" else "lstm_forward"
    real = getattr(torch.ops.gatedrnn, name)
    seen = []

    class Spy:
        def __call__(self, *args):
            seen.append(args[-1])
            return real(*args)

    monkeypatch.setattr(torch.ops.gatedrnn, name, Spy())
    run()
    return seen


@pytest.mark.parametrize("cell", CELLS_WITH_WORKSPACE)
def test_functional_keeps_the_workspace_only_when_autograd_may_need_it(cell, monkeypatch):
    m = _module(cell)
    x = torch.randn(5, 2, 4)

    def no_grad():
        with torch.no_grad():
            m(x)

    def frozen_weights():
        for p in m.parameters():
            p.requires_grad_(False)
        m(x)
        for p in m.parameters():
            p.requires_grad_(True)

    def input_grad_only():
        for p in m.parameters():
            p.requires_grad_(False)
        m(x.clone().requires_grad_())
        for p in m.parameters():
            p.requires_grad_(True)

    assert _recorded_need_workspace(cell, monkeypatch, no_grad) == [False]
    assert _recorded_need_workspace(cell, monkeypatch, frozen_weights) == [False]
    assert _recorded_need_workspace(cell, monkeypatch, input_grad_only) == [True]
    assert _recorded_need_workspace(cell, monkeypatch, lambda: m(x)) == [True]
