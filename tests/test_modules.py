"""gatedrnn.LSTM / GRU / RNN as drop-ins for torch.nn: same constructor,
parameter names and state_dict layout; with torch.nn's state_dict loaded they
give the same outputs, states and gradients (single layer, unidirectional,
padded input)."""

import math

import pytest
import torch

import gatedrnn
from conftest import cotangents, is_lstm, make_nn, nonlinearity

MODULE_CELLS = ("lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu")
T, N, I, H, P = 4, 3, 5, 7, 3


def _ours_cls(cell):
    return gatedrnn.LSTM if is_lstm(cell) else gatedrnn.GRU if cell == "gru" else gatedrnn.RNN


def _make_pair(cell, *, bias=True, batch_first=False, dtype=torch.float64, hidden=H):
    torch.manual_seed(0)
    ref = make_nn(cell, I, hidden, P, bias=bias, batch_first=batch_first, dtype=dtype)
    kw = dict(bias=bias, batch_first=batch_first, dtype=dtype)
    if cell == "lstm_proj":
        kw["proj_size"] = P
    if cell.startswith("rnn"):
        kw["nonlinearity"] = nonlinearity(cell)
    ours = _ours_cls(cell)(I, hidden, **kw)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _run(module, cell, x, hx):
    """Forward + backward of a random weighting of output and final states;
    returns (results dict, parameter grads dict)."""
    x = x.detach().clone().requires_grad_()
    leaves = [x]
    if hx is not None:
        hx = tuple(h.detach().clone().requires_grad_() for h in hx)
        leaves += list(hx)
        out, state = module(x, hx if is_lstm(cell) else hx[0])
    else:
        out, state = module(x)
    states = list(state) if is_lstm(cell) else [state]
    outs = [out] + states
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents(outs)))
    module.zero_grad(set_to_none=True)
    loss.backward()
    res = {"output": out.detach()}
    for i, s in enumerate(states):
        res[f"state{i}"] = s.detach()
    res["grad_input"] = x.grad
    if hx is not None:
        for i, h in enumerate(hx):
            res[f"grad_hx{i}"] = h.grad
    grads = {n: p.grad for n, p in module.named_parameters()}
    return res, grads


def _inputs(cell, batch_first, with_hx, dtype=torch.float64):
    x = torch.randn(N, T, I, dtype=dtype) if batch_first else torch.randn(T, N, I, dtype=dtype)
    if not with_hx:
        return x, None
    out = P if cell == "lstm_proj" else H
    hx = [torch.randn(1, N, out, dtype=dtype)]
    if is_lstm(cell):
        hx.append(torch.randn(1, N, H, dtype=dtype))
    return x, hx


@pytest.mark.parametrize("cell", MODULE_CELLS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
def test_module_matches_torch_nn(cell, bias, batch_first, with_hx):
    ours, ref = _make_pair(cell, bias=bias, batch_first=batch_first)
    x, hx = _inputs(cell, batch_first, with_hx)
    got, got_grads = _run(ours, cell, x, hx)
    exp, exp_grads = _run(ref, cell, x, hx)
    assert set(got) == set(exp)
    for k in exp:
        assert got[k].shape == exp[k].shape, k
        torch.testing.assert_close(got[k], exp[k], rtol=1e-10, atol=1e-10, msg=lambda m, k=k: f"{k}: {m}")
    assert set(got_grads) == set(exp_grads)
    for k in exp_grads:
        torch.testing.assert_close(got_grads[k], exp_grads[k], rtol=1e-10, atol=1e-10,
                                   msg=lambda m, k=k: f"grad of {k}: {m}")


@pytest.mark.parametrize("cell", MODULE_CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_module_float32_default_dtype(cell, batch_first):
    """Default dtype (float32) modules: rtol 1e-5 against torch.nn float32."""
    torch.manual_seed(0)
    ours, ref = _make_pair(cell, batch_first=batch_first, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    x, hx = _inputs(cell, batch_first, True, dtype=torch.float32)
    got, got_grads = _run(ours, cell, x, hx)
    exp, exp_grads = _run(ref, cell, x, hx)
    for k in exp:
        torch.testing.assert_close(got[k], exp[k], rtol=1e-5, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    for k in exp_grads:
        torch.testing.assert_close(got_grads[k], exp_grads[k], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, k=k: f"grad of {k}: {m}")


@pytest.mark.parametrize("cell", MODULE_CELLS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_state_dict_layout_matches_torch_nn(cell, bias):
    ours, ref = _make_pair(cell, bias=bias)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    for k in ref_sd:
        assert ours_sd[k].shape == ref_sd[k].shape, k
        assert ours_sd[k].dtype == ref_sd[k].dtype, k
        torch.testing.assert_close(ours_sd[k], ref_sd[k], rtol=0, atol=0)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


@pytest.mark.parametrize("cell", MODULE_CELLS)
def test_torch_nn_loads_our_state_dict(cell):
    """The other direction: a torch.nn module loads our (freshly initialized)
    state_dict and computes the same thing."""
    torch.manual_seed(1)
    kw = dict(dtype=torch.float64)
    if cell == "lstm_proj":
        kw["proj_size"] = P
    if cell.startswith("rnn"):
        kw["nonlinearity"] = nonlinearity(cell)
    ours = _ours_cls(cell)(I, H, **kw)
    ref = make_nn(cell, I, H, P, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    x, hx = _inputs(cell, False, False)
    got, _ = _run(ours, cell, x, hx)
    exp, _ = _run(ref, cell, x, hx)
    for k in exp:
        torch.testing.assert_close(got[k], exp[k], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", MODULE_CELLS)
def test_module_attributes_and_init(cell):
    """Constructor arguments are kept as torch.nn keeps them, and parameters
    are initialised like torch.nn: U(-1/sqrt(H), 1/sqrt(H)), not all equal."""
    hidden = 16
    ours, ref = _make_pair(cell, hidden=hidden)
    fresh = _ours_cls(cell)(I, hidden, **({"proj_size": P} if cell == "lstm_proj" else {}))
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    if is_lstm(cell):
        assert ours.proj_size == ref.proj_size
    if cell.startswith("rnn"):
        assert ours.nonlinearity == nonlinearity(cell)
    bound = 1.0 / math.sqrt(hidden)
    for name, p in fresh.named_parameters():
        assert p.dtype == torch.get_default_dtype(), name
        assert p.abs().max() <= bound + 1e-7, name
        assert p.std() > 0, name


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_module_output_state_shapes(cell):
    ours, ref = _make_pair(cell, batch_first=True)
    x = torch.randn(N, T, I, dtype=torch.float64)
    out, state = ours(x)
    ref_out, ref_state = ref(x)
    assert out.shape == ref_out.shape == (N, T, H)
    if is_lstm(cell):
        assert isinstance(state, tuple) and len(state) == 2
        assert state[0].shape == ref_state[0].shape
        assert state[1].shape == ref_state[1].shape
    else:
        assert state.shape == ref_state.shape == (1, N, H)


def test_module_to_dtype_then_forward():
    """A module built in float32 and converted with .double() still works."""
    ours, ref = _make_pair("gru", dtype=torch.float32)
    ours, ref = ours.double(), ref.double()
    x = torch.randn(T, N, I, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-10, atol=1e-10)


# Every change of a weight between calls is seen, whichever way it is made: nothing packed
# from the weights outlives a call. Through .data PyTorch bumps no version counter
# (torch.autograd.gradcheck perturbs inputs that way, as hand-written optimizers update
# weights), so a cache keyed by the version counter would compute with stale weights.
@pytest.mark.parametrize("cls", [gatedrnn.LSTM, gatedrnn.GRU, gatedrnn.RNN])
@pytest.mark.parametrize("batch", [1, 2, 16])  # in place (1, 2), the small-batch kernel, tiles
@pytest.mark.parametrize("how", ["data", "in_place", "optimizer"])
def test_weight_changes_between_calls_are_seen(cls, batch, how):
    torch.manual_seed(0)
    ours = cls(40, 40, num_layers=2, dtype=torch.float64)
    ref = getattr(torch.nn, cls.__name__)(40, 40, num_layers=2, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, batch, 40, dtype=torch.float64)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (ours, ref)]
    for step in range(3):
        for module, opt in zip((ours, ref), opts):
            if how == "optimizer":
                opt.zero_grad()
                module(x)[0].square().sum().backward()
                opt.step()
            else:
                with torch.no_grad():
                    for name, p in module.named_parameters():
                        (p.data if how == "data" else p).mul_(-0.9).add_(0.01 * (step + 1))
        with torch.no_grad():
            torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-10, atol=1e-10)
