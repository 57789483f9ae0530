"""Malformed inputs are rejected with a clear error naming the argument, never a
crash and never uninitialized or wrong numbers: tensors on mismatched devices,
batch_sizes on the wrong device or empty, parameters a user reassigned with the
wrong shape, dtype or device, and sizes past 32-bit BLAS indexing.

Without a GPU, the meta device stands in for "another device": a meta tensor among
CPU tensors is exactly the case that used to slip through (the call was routed to
the shape-only fake kernel, which returned uninitialized CPU tensors).
"""
import pytest
import torch

from _dropin_helpers import CELLS, family, make_pair, make_x
from conftest import build_case, is_lstm, nonlinearity, op_and_args

ERRORS = (RuntimeError, ValueError)
ops = torch.ops.gatedrnn


def _case(cell, packed=False):
    _, tensors, batch_sizes = build_case(cell, 4, 3, 5, 6, 3, packed=packed)
    return tensors, batch_sizes


def _forward_args(cell):
    tensors, _ = _case(cell)
    return [k for k in ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
            if k in tensors]


FORWARD_ARGS = [pytest.param(cell, name, id=f"{cell}-{name}")
                for cell in CELLS for name in _forward_args(cell)]


@pytest.mark.parametrize("cell,name", FORWARD_ARGS)
def test_forward_op_rejects_a_tensor_on_another_device(cell, name):
    tensors, bs = _case(cell)
    tensors[name] = tensors[name].to("meta")
    op, args = op_and_args(cell, tensors, bs, False)
    other = "h0" if name == "input" else name  # input's device is the reference
    with pytest.raises(RuntimeError, match=rf"{other}.*device"):
        op(*args)


@pytest.mark.parametrize("cell", CELLS)
def test_forward_op_rejects_batch_sizes_off_the_cpu(cell):
    tensors, bs = _case(cell, packed=True)
    op, args = op_and_args(cell, tensors, bs.to("meta"), False)
    with pytest.raises(RuntimeError, match="batch_sizes"):
        op(*args)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_op_rejects_batch_sizes_off_the_cpu(cell):
    tensors, bs = _case(cell, packed=True)
    op, args = op_and_args(cell, tensors, bs, False)
    with torch.no_grad():
        res = op(*args)
    t, meta = tensors, bs.to("meta")
    grads = [torch.ones_like(r) for r in res[:3 if is_lstm(cell) else 2]]
    if is_lstm(cell):
        out, ws = res[0], res[3]
        call = (ops.lstm_backward, (*grads, t["input"], meta, t["h0"], t["c0"], t["w_ih"],
                                    t["w_hh"], t.get("w_hr"), out, ws, False))
    elif cell == "gru":
        call = (ops.gru_backward, (*grads, t["input"], meta, t["h0"], t["w_ih"], t["w_hh"],
                                   res[0], res[2], False))
    else:
        call = (ops.rnn_backward, (*grads, t["input"], meta, t["h0"], t["w_ih"], t["w_hh"],
                                   res[0], nonlinearity(cell), False))
    with pytest.raises(RuntimeError, match="batch_sizes"):
        call[0](*call[1])


@pytest.mark.parametrize("cell", CELLS)
def test_forward_op_rejects_empty_batch_sizes(cell):
    tensors, bs = _case(cell, packed=True)
    tensors["input"] = tensors["input"][:0]
    op, args = op_and_args(cell, tensors, bs[:0], False)
    with pytest.raises(RuntimeError, match="batch_sizes"):
        op(*args)


@pytest.mark.parametrize("cell", CELLS)
def test_trailing_zero_steps_in_batch_sizes_do_nothing(cell):
    """torch.nn accepts steps of batch size 0 at the end of batch_sizes; so do we, and
    they change nothing."""
    tensors, bs = _case(cell, packed=True)
    op, args = op_and_args(cell, tensors, bs, False)
    padded_op, padded_args = op_and_args(cell, tensors, torch.cat([bs, bs.new_zeros(2)]), False)
    for a, b in zip(op(*args), padded_op(*padded_args)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_all_meta_tensors_give_shapes_only(cell):
    """The meta device itself is supported: every tensor there gives meta results of
    the right shapes (that is what torch.compile's tracing relies on)."""
    tensors, bs = _case(cell)
    meta = {k: v.to("meta") for k, v in tensors.items()}
    op, args = op_and_args(cell, meta, bs, False)
    cpu_op, cpu_args = op_and_args(cell, tensors, bs, False)
    for m, c in zip(op(*args), cpu_op(*cpu_args)):
        assert m.device.type == "meta" and m.shape == c.shape


def _backward_args(cell, tensors, bs):
    """Valid arguments of the cell's backward op, from one forward call."""
    op, args = op_and_args(cell, tensors, bs, False)
    results = op(*args)
    t = tensors
    if is_lstm(cell):
        out, h_n, c_n, ws = results
        return ops.lstm_backward, dict(
            grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(h_n),
            grad_c_n=torch.randn_like(c_n), input=t["input"], batch_sizes=bs, h0=t["h0"],
            c0=t["c0"], w_ih=t["w_ih"], w_hh=t["w_hh"], w_hr=t.get("w_hr"), output=out,
            workspace=ws, reverse=False)
    if cell == "gru":
        out, h_n, ws = results
        return ops.gru_backward, dict(
            grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(h_n), input=t["input"],
            batch_sizes=bs, h0=t["h0"], w_ih=t["w_ih"], w_hh=t["w_hh"], output=out,
            workspace=ws, reverse=False)
    out, h_n = results
    return ops.rnn_backward, dict(
        grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(h_n), input=t["input"],
        batch_sizes=bs, h0=t["h0"], w_ih=t["w_ih"], w_hh=t["w_hh"], output=out,
        nonlinearity=nonlinearity(cell), reverse=False)


def _backward_tensor_args(cell):
    tensors, bs = _case(cell)
    _, kw = _backward_args(cell, tensors, bs)
    return [k for k, v in kw.items() if isinstance(v, torch.Tensor) and k not in ("input",
                                                                                "batch_sizes")]


BACKWARD_ARGS = [pytest.param(cell, name, id=f"{cell}-{name}")
                 for cell in CELLS for name in _backward_tensor_args(cell)]


@pytest.mark.parametrize("cell,name", BACKWARD_ARGS)
def test_backward_op_rejects_a_tensor_on_another_device(cell, name):
    tensors, bs = _case(cell)
    op, kw = _backward_args(cell, tensors, bs)
    op(*kw.values())  # the unmodified call is valid
    kw[name] = kw[name].to("meta")
    with pytest.raises(RuntimeError, match=rf"{name}.*device"):
        op(*kw.values())


# ---------------------------------------------------------------------------
# parameters reassigned by the user
# ---------------------------------------------------------------------------

def _parameter_names(cell):
    ref, _ = make_pair(cell)
    return [n for n, _ in ref.named_parameters()]


def _wrong_shape(p, how):
    if how == "rows":
        return torch.randn(p.shape[0] + 1, *p.shape[1:], dtype=p.dtype)
    if p.dim() == 1:
        return torch.randn(p.shape[0] - 1, dtype=p.dtype)
    return torch.randn(p.shape[0], p.shape[1] + 1, dtype=p.dtype)


REASSIGNED = [pytest.param(cell, name, how, id=f"{cell}-{name}-{how}")
              for cell in CELLS for name in _parameter_names(cell)
              for how in ("shape_rows", "shape_cols", "dtype", "device")]

#: The op argument each parameter becomes.
OP_ARGUMENT = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh",
               "weight_hr": "w_hr"}


@pytest.mark.parametrize("cell,name,how", REASSIGNED)
def test_reassigned_parameter_is_checked(cell, name, how):
    """A parameter replaced with one of the wrong shape, dtype or device raises an
    error that names it (or the argument it must agree with). Where torch.nn raises,
    ours raises the same type; where torch.nn runs anyway (a too-wide LSTM
    weight_hh, for one), ours still refuses rather than read past the weights."""
    ref, ours = make_pair(cell, dtype=torch.float32)
    old = getattr(ref, name)
    if how == "dtype":
        new = old.detach().double()
    elif how == "device":
        new = old.detach().to("meta")
    else:
        new = _wrong_shape(old, how.split("_")[1])
    for module in (ref, ours):
        setattr(module, name, torch.nn.Parameter(new.clone()))
    x = make_x("padded", False, dtype=torch.float32)
    try:
        ref(x)
        expected = None
    except Exception as exc:  # noqa: BLE001  (any exception type is the expectation)
        expected = type(exc)
    with pytest.raises(ERRORS) as info:
        ours(x)
    if expected is not None:
        assert type(info.value) is expected, (expected, info.value)
    arg = OP_ARGUMENT[name.rsplit("_l", 1)[0]]
    partners = {"w_ih": "w_hh|input", "w_hh": "w_ih|h0", "w_hr": "w_hh|h0"}.get(arg, "")
    assert any(word in str(info.value) for word in [arg, *partners.split("|")] if word), (
        info.value)


# ---------------------------------------------------------------------------
# sizes past 32-bit BLAS indexing (stride-0 views: nothing large is allocated)
# ---------------------------------------------------------------------------

def _expanded(*shape, dtype=torch.float32):
    return torch.zeros(1, dtype=dtype).expand(*shape)


def _oversized(cell, which):
    G = {"lstm": 4, "gru": 3, "rnn": 1}[family(cell)]
    T, N, I, H = 2, 2, 3, 4
    if which == "rows":
        T, N = 2**16, 2**15 + 1
    elif which == "input_size":
        I = 2**31
    else:
        H = 2**31 // (G + 1) + 1
    t = {"input": _expanded(T, N, I), "h0": _expanded(N, H), "w_ih": _expanded(G * H, I),
         "w_hh": _expanded(G * H, H)}
    if is_lstm(cell):
        t["c0"] = _expanded(N, H)
    return t


@pytest.mark.parametrize("which", ["rows", "input_size", "hidden_size"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_extents_past_32_bit_blas_indexing_are_refused(cell, which):
    op, args = op_and_args(cell, _oversized(cell, which), None, False)
    with pytest.raises(RuntimeError, match="32-bit"):
        op(*args)
