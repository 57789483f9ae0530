"""torch.library.opcheck of every op, the backward ops against autograd, and
torch.compile(fullgraph=True) of the functional API (forward and backward)
against eager."""

import contextlib

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch.fx.experimental._config

from conftest import (
    CELLS,
    DTYPES,
    OLD_DYNAMO,
    as_leaves,
    assert_results_close,
    build_case,
    functional_forward,
    is_lstm,
    loss_and_grads,
    nonlinearity,
    op_and_args,
    run_nn,
    run_ours,
)

# --------------------------------------------------------------------------
# opcheck
# --------------------------------------------------------------------------

OPCHECK_VARIANTS = [
    pytest.param(dict(reverse=False, bias=True), id="fwd-bias"),
    pytest.param(dict(reverse=True, bias=False), id="rev-nobias"),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", OPCHECK_VARIANTS)
def test_opcheck_forward(cell, dtype, packed, variant):
    _, tensors, batch_sizes = build_case(
        cell, 3, 3, 4, 5, 3, dtype=dtype, packed=packed, **variant
    )
    tensors = as_leaves(tensors)  # requires_grad: exercises the autograd registration
    op, args = op_and_args(cell, tensors, batch_sizes, variant["reverse"])
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_opcheck_backward(cell, packed, reverse):
    _, tensors, batch_sizes = build_case(
        cell, 3, 3, 4, 5, 3, dtype=torch.float64, packed=packed, reverse=reverse
    )
    op, bw_args = _backward_call(cell, tensors, batch_sizes, reverse)
    # the backward ops have no autograd formula of their own (no double backward)
    torch.library.opcheck(
        op, bw_args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    )


def _backward_call(cell, tensors, batch_sizes, reverse):
    """Run the forward op, then build (backward op, args) with random grads."""
    op, args = op_and_args(cell, tensors, batch_sizes, reverse)
    with torch.no_grad():
        res = op(*args)
    g = torch.Generator().manual_seed(7)

    def rnd(t):
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t)

    t = tensors
    ops = torch.ops.gatedrnn
    if is_lstm(cell):
        out, h_n, c_n, ws = res
        return ops.lstm_backward, (
            rnd(out), rnd(h_n), rnd(c_n), t["input"], batch_sizes, t["h0"], t["c0"],
            t["w_ih"], t["w_hh"], t.get("w_hr"), out, ws, reverse,
        )
    if cell == "gru":
        out, h_n, ws = res
        return ops.gru_backward, (
            rnd(out), rnd(h_n), t["input"], batch_sizes, t["h0"], t["w_ih"], t["w_hh"],
            out, ws, reverse,
        )
    out, h_n = res
    return ops.rnn_backward, (
        rnd(out), rnd(h_n), t["input"], batch_sizes, t["h0"], t["w_ih"], t["w_hh"], out,
        nonlinearity(cell), reverse,
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_backward_op_matches_autograd(cell, packed, reverse):
    """Calling the backward op directly gives the gradients autograd gives."""
    _, tensors, batch_sizes = build_case(
        cell, 4, 3, 4, 5, 3, dtype=torch.float64, packed=packed, reverse=reverse
    )
    op, bw_args = _backward_call(cell, tensors, batch_sizes, reverse)
    # backward op outputs, in order (lstm: + c0 after h0 and w_hr last)
    order = ["input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]
    if not is_lstm(cell):
        order = [k for k in order if k not in ("c0", "w_hr")]
    *grads, step_norms = op(*bw_args)
    assert len(grads) == len(order)
    assert step_norms.shape == (0, 2 if is_lstm(cell) else 1)  # the monitor was not asked for
    got = dict(zip(order, grads))
    if is_lstm(cell) and "w_hr" not in tensors:
        assert got.pop("w_hr").numel() == 0

    leaves = as_leaves(tensors)
    fwd_op, args = op_and_args(cell, leaves, batch_sizes, reverse)
    n_diff = 3 if is_lstm(cell) else 2
    outs = fwd_op(*args)[:n_diff]
    expected = torch.autograd.grad(outs, [leaves[k] for k in got], bw_args[:n_diff])
    for k, e in zip(got, expected):
        torch.testing.assert_close(got[k], e, rtol=1e-12, atol=1e-12,
                                   msg=lambda m, k=k: f"{k}: {m}")


# --------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _functional_fn(cell, reverse, with_hx):
    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
        w = dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr)
        if with_hx:
            hx = (h0, c0) if is_lstm(cell) else h0
        else:
            hx = None
        outs = functional_forward(cell, x, hx, w, batch_sizes=batch_sizes, reverse=reverse)
        # some ordinary ops around the custom op, as in a real model
        return (torch.tanh(outs[0]) * 2.0,) + tuple(outs[1:])

    return f


def _call(f, leaves, batch_sizes):
    return f(leaves["input"], leaves.get("h0"), leaves.get("c0"), leaves["w_ih"], leaves["w_hh"],
             leaves.get("b_ih"), leaves.get("b_hh"), leaves.get("w_hr"), batch_sizes)


def _compare_compiled(cell, tensors, batch_sizes, reverse, with_hx, compiled, f):
    if not with_hx:
        tensors = {k: v for k, v in tensors.items() if k not in ("h0", "c0")}
    eager_leaves = as_leaves({k: v.clone() for k, v in tensors.items()})
    comp_leaves = as_leaves({k: v.clone() for k, v in tensors.items()})
    eager = loss_and_grads(_call(f, eager_leaves, batch_sizes), eager_leaves)
    got = loss_and_grads(_call(compiled, comp_leaves, batch_sizes), comp_leaves)
    assert_results_close(got, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_compile_fullgraph_aot_eager(cell, packed, reverse):
    _, tensors, batch_sizes = build_case(
        cell, 4, 3, 4, 5, 3, dtype=torch.float64, packed=packed, reverse=reverse
    )
    f = _functional_fn(cell, reverse, with_hx=True)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    _compare_compiled(cell, tensors, batch_sizes, reverse, True, compiled, f)
    assert counter.frame_count == 1


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=OLD_DYNAMO)],
                         ids=["padded", "packed"])
def test_compile_fullgraph_no_hx(cell, packed):
    """hx=None (zeros created inside the functional) under fullgraph."""
    _, tensors, batch_sizes = build_case(cell, 4, 3, 4, 5, 3, dtype=torch.float32, packed=packed)
    f = _functional_fn(cell, False, with_hx=False)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    _compare_compiled(cell, tensors, batch_sizes, False, False, compiled, f)


@pytest.mark.xfail(not hasattr(torch.fx.experimental._config, "use_duck_shape"), strict=False,
                   reason="without fx's use_duck_shape switch (torch 2.4.1 has none) sizes that "
                   "coincide add a recompile")
@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_compile_dynamic_shapes(cell, packed):
    """dynamic=True: one graph serves several (T, N) / R; the fake kernels must
    work with symbolic sizes."""
    f = _functional_fn(cell, False, with_hx=True)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True, dynamic=True)
    # no duck sizing: sizes that happen to coincide must not add guards
    no_duck = (torch.fx.experimental._config.patch(use_duck_shape=False)
               if hasattr(torch.fx.experimental._config, "use_duck_shape")
               else contextlib.nullcontext())
    with no_duck:
        for seed, (T, N) in enumerate([(3, 2), (5, 4), (4, 3)]):
            _, tensors, batch_sizes = build_case(
                cell, T, N, 4, 5, 3, dtype=torch.float64, packed=packed, seed=seed
            )
            _compare_compiled(cell, tensors, batch_sizes, False, True, compiled, f)
    assert counter.frame_count == 1


def test_compile_inductor_gru():
    """The default (inductor) backend, forward and backward, for one cell."""
    _, tensors, batch_sizes = build_case("gru", 4, 3, 4, 5, dtype=torch.float32)
    f = _functional_fn("gru", False, with_hx=True)
    compiled = torch.compile(f, fullgraph=True)
    eager_leaves = as_leaves({k: v.clone() for k, v in tensors.items()})
    comp_leaves = as_leaves({k: v.clone() for k, v in tensors.items()})
    eager = loss_and_grads(_call(f, eager_leaves, batch_sizes), eager_leaves)
    got = loss_and_grads(_call(compiled, comp_leaves, batch_sizes), comp_leaves)
    assert_results_close(got, eager, rtol=1e-5, atol=1e-6)


def test_compile_matches_torch_nn():
    """A compiled LSTM-with-projection call agrees with torch.nn too (not only
    with our eager path)."""
    module, tensors, batch_sizes = build_case(
        "lstm_proj", 5, 3, 4, 6, 2, dtype=torch.float64, packed=True
    )
    ref = run_nn("lstm_proj", module, tensors, batch_sizes, False)
    eager = run_ours("lstm_proj", tensors, batch_sizes, False)
    assert_results_close(eager, ref, rtol=1e-10, atol=1e-10)

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
        w = dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr)
        return functional_forward("lstm_proj", x, (h0, c0), w, batch_sizes=batch_sizes)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    leaves = as_leaves(tensors)
    got = loss_and_grads(_call(compiled, leaves, batch_sizes), leaves)
    assert_results_close(got, ref, rtol=1e-10, atol=1e-10)
