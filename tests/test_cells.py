"""gatedrnn.LSTMCell / GRUCell / RNNCell against torch.nn's cells: outputs and every gradient
in float64, a loop of cell calls against our sequence modules, errors, gradcheck and
gradgradcheck, state_dict, convert, torch.compile, ONNX, TorchScript, autocast and the
reduced-precision dtypes."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import gatedrnn
from conftest import OLD_DYNAMO
from _dropin_helpers import expected_exception

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
N, I, H = 3, 4, 6

#: cell variants: (torch.nn class, gatedrnn class, constructor keywords)
CELLS = {
    "lstm": (torch.nn.LSTMCell, gatedrnn.LSTMCell, {}),
    "gru": (torch.nn.GRUCell, gatedrnn.GRUCell, {}),
    "rnn_tanh": (torch.nn.RNNCell, gatedrnn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNNCell, gatedrnn.RNNCell, {"nonlinearity": "relu"}),
}
SEQUENCE = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn_tanh": gatedrnn.RNN,
            "rnn_relu": gatedrnn.RNN}


def is_lstm(cell):
    return cell == "lstm"


def make_pair(cell, input_size=I, hidden_size=H, *, bias=True, dtype=DT, seed=0):
    """(torch.nn cell, gatedrnn cell) with the torch.nn cell's weights loaded into ours."""
    nn_cls, our_cls, kw = CELLS[cell]
    torch.manual_seed(seed)
    ref = nn_cls(input_size, hidden_size, bias=bias, dtype=dtype, **kw)
    ours = our_cls(input_size, hidden_size, bias=bias, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_x(batched=True, n=N, i=I, dtype=DT, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, i) if batched else (i,), generator=g, dtype=dtype)


def make_hx(cell, batched=True, n=N, h=H, dtype=DT, seed=7):
    g = torch.Generator().manual_seed(seed)
    shape = (n, h) if batched else (h,)
    states = tuple(0.5 * torch.randn(shape, generator=g, dtype=dtype)
                   for _ in range(2 if is_lstm(cell) else 1))
    return states if is_lstm(cell) else states[0]


def flat(result):
    return list(result) if isinstance(result, tuple) else [result]


def run(cell_module, x, hx=None, *, cotangent_dtype=None):
    """Outputs and the gradients of a fixed random linear loss over them, w.r.t. the input,
    each state given and each parameter; a dict of detached tensors."""
    x = x.detach().clone().requires_grad_()
    leaves = {"input": x}
    if hx is not None:
        hx = (tuple(h.detach().clone().requires_grad_() for h in hx) if isinstance(hx, tuple)
              else hx.detach().clone().requires_grad_())
        for k, h in enumerate(flat(hx)):
            leaves[f"hx[{k}]"] = h
    leaves.update({n: p for n, p in cell_module.named_parameters()})
    outs = flat(cell_module(x, hx))
    g = torch.Generator().manual_seed(100)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=DT).to(cotangent_dtype or o.dtype))
               .sum() for o in outs)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    result = {f"out[{k}]": o.detach() for k, o in enumerate(outs)}
    result.update({f"grad.{n}": gr for n, gr in zip(leaves, grads)})
    return result


def assert_same(ours, ref, **tol):
    assert list(ours) == list(ref)
    for key in ref:
        assert ours[key].shape == ref[key].shape, key
        assert ours[key].dtype == ref[key].dtype, key
        torch.testing.assert_close(ours[key], ref[key], **tol, msg=lambda m, k=key: f"{k}: {m}")


# ---------------------------------------------------------------------------
# against torch.nn's cells, float64
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("hx_given", [True, False], ids=["hx", "nohx"])
def test_outputs_and_every_gradient_match_torch_nn(cell, bias, batched, hx_given):
    ref, ours = make_pair(cell, bias=bias)
    x = make_x(batched)
    hx = make_hx(cell, batched) if hx_given else None
    expected = run(ref, x, hx)
    got = run(ours, x, hx)
    assert_same(got, expected, **TOL)
    assert got["out[0]"].shape == ((N, H) if batched else (H,))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("n,i,h", [(1, 1, 1), (5, 3, 7), (2, 33, 17), (0, 4, 6)],
                         ids=["N1-I1-H1", "N5-I3-H7", "N2-I33-H17", "N0"])
def test_odd_sizes_match_torch_nn(cell, n, i, h):
    ref, ours = make_pair(cell, i, h)
    x = make_x(n=n, i=i)
    hx = make_hx(cell, n=n, h=h)
    assert_same(run(ours, x, hx), run(ref, x, hx), **TOL)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("n,i,h", [(1, 512, 512), (5, 19, 37), (64, 128, 256)],
                         ids=["N1-H512", "N5-H37", "N64-H256"])
def test_float32_matches_torch_nn(cell, n, i, h):
    ref, ours = make_pair(cell, i, h, dtype=torch.float32)
    x = make_x(n=n, i=i, dtype=torch.float32)
    hx = make_hx(cell, n=n, h=h, dtype=torch.float32)
    got, expected = run(ours, x, hx), run(ref, x, hx)
    for key in expected:
        assert got[key].dtype == torch.float32
        # float32 sums of up to 512 + 512 terms: the tolerance grows with the tensor's scale
        scale = max(1.0, expected[key].abs().max().item())
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=2e-5 * scale,
                                   msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("cell", list(CELLS))
def test_runs_the_fused_ops_with_the_parameters_in_place(cell):
    """One call of the fused forward op per step (and of its backward op in a plain
    backward); around it, nothing but torch.nn's own view of the input: no copy or cast of
    the parameters, the input or the state."""
    _, ours = make_pair(cell)
    op = "lstm" if is_lstm(cell) else "gru" if cell == "gru" else "rnn"
    x = make_x().requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        flat(ours(x, make_hx(cell)))[0].sum().backward()
    names = [e.name for e in prof.events()]
    assert names.count(f"gatedrnn::{op}_forward") == 1
    assert names.count(f"gatedrnn::{op}_backward") == 1
    x, hx = make_x(batched=False), make_hx(cell, batched=False)
    with torch.no_grad(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ours(x, hx)
    outer = [e.name for e in prof.events() if e.cpu_parent is None]
    assert sorted(set(outer)) == sorted({f"gatedrnn::{op}_forward", "aten::unsqueeze",
                                         "aten::squeeze"}), outer


@pytest.mark.parametrize("cell", list(CELLS))
def test_noncontiguous_input_and_state(cell):
    ref, ours = make_pair(cell)
    x = make_x(i=2 * I)[:, ::2]
    hx = tuple(make_hx("lstm", n=H, h=N)[k].t() for k in range(2 if is_lstm(cell) else 1))
    hx = hx if is_lstm(cell) else hx[0]
    assert not x.is_contiguous() and not flat(hx)[0].is_contiguous()
    assert_same(run(ours, x, hx), run(ref, x, hx), **TOL)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_a_50_step_loop_equals_our_sequence_module(cell, bias):
    """A Python loop of our cell over 50 steps gives what our sequence module gives on the
    same sequence with the same weights: every output, the final states and every
    gradient."""
    T = 50
    _, ours = make_pair(cell, bias=bias)
    kw = {"nonlinearity": CELLS[cell][2]["nonlinearity"]} if cell.startswith("rnn") else {}
    seq = SEQUENCE[cell](I, H, bias=bias, dtype=DT, **kw)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            getattr(seq, name + "_l0").copy_(p)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, N, I, generator=g, dtype=DT)
    hx = make_hx(cell)

    def loop(xs, state):
        outs = []
        for t in range(T):
            state = ours(xs[t], state)
            outs.append(flat(state)[0])
        return [torch.stack(outs), *flat(state)]

    def sequence(xs, state):
        full = tuple(s.unsqueeze(0) for s in flat(state))
        out, final = seq(xs, full if is_lstm(cell) else full[0])
        return [out, *(f.squeeze(0) for f in flat(final))]

    results = []
    for fn, params in ((loop, list(ours.parameters())), (sequence, list(seq.parameters()))):
        xs = x.clone().requires_grad_()
        state = (tuple(h.clone().requires_grad_() for h in hx) if is_lstm(cell)
                 else hx.clone().requires_grad_())
        outs = fn(xs, state)
        loss = sum((o.sin() * (k + 1)).sum() for k, o in enumerate(outs))
        grads = torch.autograd.grad(loss, [xs, *flat(state), *params])
        results.append([o.detach() for o in outs] + list(grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


def _bytes_saved_for_backward(module, x, hx, steps):
    """Bytes of the storages a loop of `steps` calls of a cell keeps for its backward,
    beyond the parameters, input and initial state it was given."""
    given = {t.untyped_storage().data_ptr() for t in (*module.parameters(), x, *flat(hx))}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in given:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        state = hx
        for t in range(steps):
            state = module(x[t], state)
    return sum(saved.values())


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_loop_of_cells_keeps_no_more_for_backward_than_torch_nns(cell):
    """In a model's loop of cells, each step's new state is kept for the next step's
    backward. Ours is the op's final state, its own [N, H], so that it can be modified in
    place as torch.nn's LSTMCell's and GRUCell's can; for one step the op saves no output
    beside it (the LSTM's and GRU's backward reads none). The RNNCell's new h is the
    output the op saves, as torch.nn's RNNCell's is the result its activation saves. So
    ours keeps no more than torch.nn's, where it used to keep one [N, H] a step more."""
    n, h, steps = 5, 32, 8
    ref, ours = make_pair(cell, 16, h, dtype=torch.float32)
    x = torch.randn(steps, n, 16, requires_grad=True)
    hx = make_hx(cell, n=n, h=h, dtype=torch.float32)
    hx = (tuple(s.requires_grad_() for s in hx) if is_lstm(cell) else hx.requires_grad_())
    assert (_bytes_saved_for_backward(ours, x, hx, steps)
            <= _bytes_saved_for_backward(ref, x, hx, steps))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_new_state_can_be_modified_in_place_as_torch_nns(cell):
    """torch.nn's LSTMCell and GRUCell keep nothing of their new h for their own backward,
    so a model may scale or mask it in place before the next step; so may ours, with the
    same gradients. (torch.nn's RNNCell keeps its output for its activation's derivative
    and refuses such a backward: the next test.)"""
    results = []
    for module in make_pair(cell):
        x = make_x().requires_grad_()
        state = module(x, make_hx(cell))
        h = state[0] if is_lstm(cell) else state
        h.mul_(0.5)
        state = module(x, state)
        loss = sum(s.sin().sum() for s in flat(state))
        results.append(torch.autograd.grad(loss, [x, *module.parameters()]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu"])
def test_the_rnn_cells_new_state_modified_in_place_is_refused_as_by_torch_nn(cell):
    """torch.nn's RNNCell saves its result for the activation's derivative, so a backward
    after the new h was modified in place raises (autograd's version check); ours saves
    its output, which is the new h, and raises the same error."""
    for module in make_pair(cell):
        x = make_x().requires_grad_()
        h = module(x, make_hx(cell))
        h.mul_(0.5)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            h.sum().backward()


# ---------------------------------------------------------------------------
# constructor, parameters, state_dict, convert
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("config", [{}, {"bias": False}, {"dtype": torch.float64},
                                    {"dtype": torch.bfloat16}, {"device": "cpu"}],
                         ids=["default", "nobias", "float64", "bfloat16", "device"])
def test_constructor_parameters_and_initialization_are_torch_nns(cell, config):
    nn_cls, our_cls, kw = CELLS[cell]
    torch.manual_seed(11)
    ref = nn_cls(I, H, **kw, **config)
    after_ref = torch.rand(3)
    torch.manual_seed(11)
    ours = our_cls(I, H, **kw, **config)
    assert torch.equal(torch.rand(3), after_ref)  # the generator left in the same state
    assert isinstance(ours, nn_cls) and type(ours) is our_cls
    assert repr(ours) == repr(ref)
    for attr in ("input_size", "hidden_size", "bias", "training"):
        assert getattr(ours, attr) == getattr(ref, attr)
    if cell.startswith("rnn"):
        assert ours.nonlinearity == ref.nonlinearity
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("cls", [gatedrnn.LSTMCell, gatedrnn.GRUCell, gatedrnn.RNNCell])
def test_positional_constructor(cls):
    base = cls._torch_nn
    args = (I, H, False, "relu", "cpu", DT) if cls is gatedrnn.RNNCell else (I, H, False,
                                                                               "cpu", DT)
    torch.manual_seed(2)
    ref = base(*args)
    torch.manual_seed(2)
    ours = cls(*args)
    assert repr(ours) == repr(ref)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))


@pytest.mark.parametrize("cell", list(CELLS))
def test_state_dict_round_trips_with_torch_nn(cell):
    nn_cls, our_cls, kw = CELLS[cell]
    x, hx = make_x(), make_hx(cell)
    torch.manual_seed(1)
    ref = nn_cls(I, H, dtype=DT, **kw)
    torch.manual_seed(2)
    ours = our_cls(I, H, dtype=DT, **kw)
    assert not torch.equal(ours.weight_ih, ref.weight_ih)
    result = ours.load_state_dict(ref.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert_same(run(ours, x, hx), run(ref, x, hx), **TOL)
    # ours -> torch.nn, strict, key for key
    torch.manual_seed(3)
    ours2 = our_cls(I, H, dtype=DT, **kw)
    ref2 = nn_cls(I, H, dtype=DT, **kw)
    ref2.load_state_dict(ours2.state_dict(), strict=True)
    sd_o, sd_r = ours2.state_dict(), ref2.state_dict()
    assert list(sd_o) == list(sd_r) and all(torch.equal(sd_o[k], sd_r[k]) for k in sd_o)
    assert_same(run(ours2, x, hx), run(ref2, x, hx), **TOL)


@pytest.mark.parametrize("cell", list(CELLS))
def test_weight_norm_parametrization(cell):
    ref, ours = make_pair(cell)
    for m in (ref, ours):
        torch.nn.utils.parametrizations.weight_norm(m, name="weight_hh")
    x, hx = make_x(), make_hx(cell)
    got = run(ours, x, hx)
    assert "grad.parametrizations.weight_hh.original0" in got
    assert_same(got, run(ref, x, hx), **TOL)


class _Decoder(torch.nn.Module):
    """torch.nn cells, as users have them, nested, with other layers around."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(I, H)
        self.cells = torch.nn.ModuleList([torch.nn.LSTMCell(H, H), torch.nn.GRUCell(H, H)])
        self.extra = torch.nn.ModuleDict({"rnn": torch.nn.RNNCell(H, H, nonlinearity="relu")})
        self.head = torch.nn.Linear(H, 2)

    def forward(self, x):
        state, g, r, outs = None, None, None, []
        for t in range(x.shape[0]):
            state = self.cells[0](torch.tanh(self.embed(x[t])), state)
            g = self.cells[1](state[0], g)
            r = self.extra["rnn"](g, r)
            outs.append(self.head(r))
        return torch.stack(outs)


class _MyGRUCell(torch.nn.GRUCell):
    """A user subclass: its forward may differ, so convert must leave it alone."""

    def forward(self, input, hx=None):
        return 2 * super().forward(input, hx)


def test_convert_swaps_exact_cell_types_only():
    torch.manual_seed(0)
    model = _Decoder().double()
    x = torch.randn(6, N, I, dtype=DT)
    expected = model(x)
    grads_before = torch.autograd.grad(expected.sum(), list(model.parameters()))
    params = [id(p) for p in model.parameters()]
    assert gatedrnn.convert(model) is model
    assert type(model.cells[0]) is gatedrnn.LSTMCell
    assert type(model.cells[1]) is gatedrnn.GRUCell
    assert type(model.extra["rnn"]) is gatedrnn.RNNCell
    assert type(model.head) is torch.nn.Linear
    assert [id(p) for p in model.parameters()] == params
    got = model(x)
    torch.testing.assert_close(got, expected, **TOL)
    for a, b in zip(torch.autograd.grad(got.sum(), list(model.parameters())), grads_before):
        torch.testing.assert_close(a, b, **TOL)
    # subclasses stay; ours stay ours; a bare cell is converted in place
    sub, plain = _MyGRUCell(I, H), torch.nn.RNNCell(I, H)
    holder = torch.nn.ModuleDict({"sub": sub, "plain": plain, "ours": gatedrnn.LSTMCell(I, H)})
    gatedrnn.convert(holder)
    assert type(holder["sub"]) is _MyGRUCell
    assert type(holder["plain"]) is gatedrnn.RNNCell
    assert type(holder["ours"]) is gatedrnn.LSTMCell
    bare = torch.nn.LSTMCell(I, H)
    assert gatedrnn.convert(bare) is bare and type(bare) is gatedrnn.LSTMCell


# ---------------------------------------------------------------------------
# errors: the type torch.nn raises, and its message for the shape checks
# ---------------------------------------------------------------------------


def _bad_calls(cell):
    """name -> (args for the cell's forward, whether the message is compared too)."""
    def hx(*shape, dtype=DT):
        states = tuple(torch.randn(*shape, dtype=dtype) for _ in range(2 if is_lstm(cell) else 1))
        return states if is_lstm(cell) else states[0]

    x = torch.randn(N, I, dtype=DT)
    calls = {
        "input size": ((torch.randn(N, I + 1, dtype=DT),), True),
        "input size, unbatched": ((torch.randn(I + 1, dtype=DT),), True),
        "3-D input": ((torch.randn(2, N, I, dtype=DT),), True),
        "0-D input": ((torch.tensor(1.0, dtype=DT),), True),
        "batch mismatch": ((x, hx(N - 1, H)), True),
        "hidden size": ((x, hx(N, H - 1)), True),
        "3-D hx": ((x, hx(1, N, H)), True),
        "1-D hx, batched input": ((x, hx(H)), True),
        "1-D hx as long as the batch": ((torch.randn(H, I, dtype=DT), hx(H)), True),
        "2-D hx, unbatched input": ((torch.randn(I, dtype=DT), hx(1, H)), True),
        "input dtype": ((torch.randn(N, I),), False),
        "hx dtype": ((x, hx(N, H, dtype=torch.float32)), False),
        "integer input": ((torch.randint(0, 3, (N, I)),), False),
        "input on the meta device": ((torch.randn(N, I, dtype=DT, device="meta"),), False),
    }
    if is_lstm(cell):
        h, c = torch.randn(N, H, dtype=DT), torch.randn(N, H, dtype=DT)
        calls.update({
            "hx a tensor": ((x, h), False),
            "hx of one state": ((x, (h,)), True),
            "hx of three states": ((x, (h, c, c)), True),
            "hx of one state, unbatched": ((torch.randn(I, dtype=DT), (h[0],)), False),
            "c hidden size": ((x, (h, c[:, 1:])), True),
            "c batch": ((x, (h, c[1:])), True),
            "3-D c": ((x, (h, c[None])), True),
        })
    else:
        calls["hx a tuple"] = ((x, (torch.randn(N, H, dtype=DT),)), False)
    return calls


def _error_cases():
    return [pytest.param(cell, name, id=f"{cell}-{name}") for cell in CELLS
            for name in _bad_calls(cell)]


@pytest.mark.parametrize("cell,name", _error_cases())
def test_bad_calls_raise_what_torch_nn_raises(cell, name):
    ref, ours = make_pair(cell)
    args, same_message = _bad_calls(cell)[name]
    expected = expected_exception(lambda: ref(*args))
    with pytest.raises(Exception) as info:
        ours(*args)
    assert type(info.value) is type(expected), (
        f"torch.nn raised {type(expected).__name__}: {expected}\n"
        f"gatedrnn raised {type(info.value).__name__}: {info.value}")
    if same_message:
        assert str(info.value) == str(expected)
    elif isinstance(expected, RuntimeError) and "dtype" in name:
        assert "dtype" in str(info.value)


def test_bad_nonlinearity_is_refused_by_forward_as_in_torch_nn():
    ref = torch.nn.RNNCell(I, H, nonlinearity="sigmoid")  # torch.nn's constructor accepts it
    ours = gatedrnn.RNNCell(I, H, nonlinearity="sigmoid")
    expected = expected_exception(lambda: ref(torch.randn(N, I)))
    with pytest.raises(RuntimeError) as info:
        ours(torch.randn(N, I))
    assert type(info.value) is type(expected) and str(info.value) == str(expected)
    assert "nonlinearity" in str(info.value)


@pytest.mark.parametrize("args,kwargs", [((0, H), {}), ((I, -1), {}), ((I,), {}),
                                         ((I, H), {"dtype": torch.int64}),
                                         ((I, H), {"no_such_argument": 1})],
                         ids=["input_size 0", "hidden_size -1", "no hidden_size", "int dtype",
                              "unknown keyword"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_constructor_accepts_and_refuses_what_torch_nn_does(cell, args, kwargs):
    nn_cls, our_cls, kw = CELLS[cell]
    try:
        torch.manual_seed(0)
        ref = nn_cls(*args, **{**kw, **kwargs})
    except Exception as expected:  # noqa: BLE001  (compared below)
        with pytest.raises(type(expected)):
            our_cls(*args, **{**kw, **kwargs})
        return
    torch.manual_seed(0)
    ours = our_cls(*args, **{**kw, **kwargs})  # torch.nn accepts it (input_size 0): so do we
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))


@pytest.mark.parametrize("cell", list(CELLS))
def test_unbatched_input_with_a_square_2d_state_is_refused(cell):
    """torch.nn runs this malformed call (its RNNCell returns a [H, H] result, its GRUCell
    raises a broadcasting error, its LSTMCell crashes the process): ours refuses it with a
    RuntimeError that says why."""
    _, ours = make_pair(cell)
    hx = make_hx(cell, n=H)  # [H, H] states: batch size equal to hidden_size
    with pytest.raises(RuntimeError, match=r"for unbatched 1-D input the state must be 1-D"):
        ours(make_x(batched=False), hx)
    if cell == "rnn_tanh":  # what torch.nn does there (the others raise or crash)
        ref = torch.nn.RNNCell(I, H, dtype=DT)
        assert ref(make_x(batched=False), hx).shape == (H, H)


def test_c0_of_another_dtype_is_converted_to_the_inputs():
    """Decided (the module's docstring): as gatedrnn.LSTM does; torch.nn promotes."""
    ref, ours = make_pair("lstm", dtype=torch.float32)
    x = torch.randn(N, I)
    h, c = torch.randn(N, H), torch.randn(N, H, dtype=DT)
    h_1, c_1 = ours(x, (h, c))
    assert h_1.dtype == c_1.dtype == torch.float32
    expected = ref(x, (h, c.float()))
    torch.testing.assert_close(h_1, expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_1, expected[1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# autograd: gradcheck, gradgradcheck, double backward against torch.nn
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_gradcheck_and_gradgradcheck(cell, batched):
    _, ours = make_pair(cell, 3, 4)
    x = make_x(batched, n=2, i=3)
    if cell == "rnn_relu":
        # pre-activations away from relu's kink, where finite differences break
        with torch.no_grad():
            ours.weight_ih.abs_()
            ours.bias_ih.fill_(0.5)
        x = x.abs() + 0.5
    hx = make_hx(cell, batched, n=2, h=4)
    hx = (tuple(h.abs() for h in hx) if is_lstm(cell) else hx.abs()) if cell == "rnn_relu" \
        else hx
    names = [n for n, _ in ours.named_parameters()]
    leaves = [x, *flat(hx), *(p.detach() for p in ours.parameters())]
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    states = 2 if is_lstm(cell) else 1

    def f(x, *rest):
        state = rest[:states]
        params = dict(zip(names, rest[states:]))
        state = tuple(state) if is_lstm(cell) else state[0]
        return torch.func.functional_call(ours, params, (x, state))

    assert gradcheck(f, tuple(leaves))
    assert gradgradcheck(f, tuple(leaves))


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradient_penalty_and_hessian_vector_product_equal_torch_nn(cell):
    ref, ours = make_pair(cell)
    x0, hx = make_x(), make_hx(cell)
    v = [torch.randn_like(p) for p in ref.parameters()]

    def penalty_and_hvp(module):
        x = x0.clone().requires_grad_()
        out = flat(module(x, hx))
        loss = sum((o.sin() * (k + 1)).sum() for k, o in enumerate(out))
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        penalty = (g * g).sum()
        params = list(module.parameters())
        grads = torch.autograd.grad(flat(module(x0, hx))[0].pow(2).sum(), params,
                                    create_graph=True)
        return [penalty.detach(), *torch.autograd.grad(penalty, params),
                *torch.autograd.grad(grads, params, v)]

    for a, b in zip(penalty_and_hvp(ours), penalty_and_hvp(ref)):
        torch.testing.assert_close(a, b, **TOL)


def test_forward_mode_ad_and_functorch_refuse_as_for_the_sequence_modules():
    """No jvp rule and no functorch support in the ops: both refuse, neither returns zeros
    (torch.nn's cells support both; README, Integrations)."""
    _, ours = make_pair("gru")
    x = make_x()
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.randn_like(x))
        with pytest.raises(NotImplementedError, match="jvp"):
            ours(dual)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda v: ours(v).sum())(x)


# ---------------------------------------------------------------------------
# torch.compile, TorchScript, torch.export
# ---------------------------------------------------------------------------


class _OurDecoder(torch.nn.Module):
    """A 2-step decoder loop over all three of our cells, as a compiled model runs it."""

    def __init__(self):
        super().__init__()
        self.lstm = gatedrnn.LSTMCell(I, H)
        self.gru = gatedrnn.GRUCell(H, H, bias=False)
        self.rnn = gatedrnn.RNNCell(H, H, nonlinearity="relu")

    def forward(self, x, h0, c0):
        state, g, r, outs = (h0, c0), None, None, []
        for t in range(x.shape[0]):
            state = self.lstm(x[t], state)
            g = self.gru(state[0], g)
            r = self.rnn(g, r)
            outs.append(r)
        return torch.stack(outs), state[1]


@OLD_DYNAMO
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast-bf16"])
def test_torch_compile_fullgraph_matches_eager(autocast):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _OurDecoder()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    args = (torch.randn(3, N, I), torch.randn(N, H), torch.randn(N, H))

    def run_once(fn):
        leaves = [a.clone().requires_grad_() for a in args]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outs = fn(*leaves)
        loss = sum((o.float() * (k + 1)).sin().sum() for k, o in enumerate(outs))
        return [o.detach() for o in outs], torch.autograd.grad(loss, [*leaves,
                                                                     *model.parameters()])

    try:
        eager = run_once(model)
        got = run_once(compiled)
        again = run_once(compiled)
    finally:
        torch._dynamo.reset()
    for result in (got, again):
        for a, b in zip(result[0] + list(result[1]), eager[0] + list(eager[1])):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if autocast:
        assert eager[0][0].dtype == torch.bfloat16  # RNNCell: the autocast dtype


@pytest.mark.parametrize("cell", list(CELLS))
def test_jit_trace_matches_eager(cell):
    _, ours = make_pair(cell)
    x, hx = make_x(), make_hx(cell)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(ours, (x, hx))
    x2 = make_x(seed=9)
    for a, b in zip(flat(traced(x2, hx)), flat(ours(x2, hx))):
        assert torch.equal(a, b)


class _Holder(torch.nn.Module):
    def __init__(self, cell_module):
        super().__init__()
        self.cell = cell_module

    def forward(self, x):
        out = self.cell(x)
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("cell", list(CELLS))
def test_jit_script_runs_torch_nn_on_shared_parameters(cell):
    ref, ours = make_pair(cell)
    holder = _Holder(ours)
    with pytest.warns(UserWarning, match=r"runs torch\.nn\.(LSTM|GRU|RNN)Cell on the same "
                                         r"parameters.*gatedrnn\.convert\(model\) swaps it back"):
        scripted = torch.jit.script(holder)
    assert scripted.cell.weight_ih.data_ptr() == ours.weight_ih.data_ptr()
    x = make_x()
    torch.testing.assert_close(scripted(x), _Holder(ref)(x), **TOL)
    assert type(holder.cell) is CELLS[cell][0]
    gatedrnn.convert(holder)
    assert type(holder.cell) is CELLS[cell][1]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_torch_export_keeps_our_op(cell):
    _, ours = make_pair(cell, dtype=torch.float32)
    x, hx = make_x(dtype=torch.float32), make_hx(cell, dtype=torch.float32)
    program = torch.export.export(ours.eval(), (x, hx))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(name.startswith("gatedrnn.") for name in names), names
    with torch.no_grad():
        for a, b in zip(flat(program.module()(x, hx)), flat(ours(x, hx))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------


class _WithState(torch.nn.Module):
    def __init__(self, cell_module):
        super().__init__()
        self.cell = cell_module

    def forward(self, x, *hx):
        state = (hx if len(hx) > 1 else hx[0]) if hx else None
        return self.cell(x, state)


def _export(model, args, dynamo):
    import onnx

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, f if not dynamo else None, dynamo=dynamo)
    data = f.getvalue() if not dynamo else program.model_proto.SerializeToString()
    graph = onnx.load_from_string(data).graph
    return data, {n.op_type for n in graph.node}, {n.domain for n in graph.node}


@pytest.mark.integration
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_onnx_export_runs_in_onnxruntime(cell, dynamo, with_hx):
    """Under export our cells run torch.nn's forward, which both exporters write as its
    decomposition (Gemm and pointwise nodes: torch.nn's cells export to no RNN node)."""
    ort = pytest.importorskip("onnxruntime")
    ref, ours = make_pair(cell, dtype=torch.float32)
    model, ref_model = _WithState(ours).eval(), _WithState(ref).eval()
    x = make_x(dtype=torch.float32)
    hx = tuple(flat(make_hx(cell, dtype=torch.float32))) if with_hx else ()
    data, nodes, domains = _export(model, (x, *hx), dynamo)
    _, ref_nodes, _ = _export(ref_model, (x, *hx), dynamo)
    assert nodes == ref_nodes and "Gemm" in nodes
    assert domains <= {"", "ai.onnx"}
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), (x, *hx))}
    with torch.no_grad():
        expected = flat(model(x, *hx))
    got = [torch.from_numpy(o) for o in session.run(None, feeds)]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# autocast and reduced precision
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=["fp32-model", "bf16-model", "fp64-model"])
@pytest.mark.parametrize("hx_given", [True, False], ids=["hx", "nohx"])
def test_cpu_autocast_gives_torch_nns_dtypes(cell, dtype, model_dtype, hx_given):
    """Under CPU autocast torch.nn's cells give the autocast dtype (RNNCell) or the wider of
    it and the state's dtype (LSTMCell, GRUCell: float32 for a float32 model): so do ours,
    within the autocast dtype's rounding of torch.nn's values, with gradients in the
    parameters' dtype."""
    ref, ours = make_pair(cell, dtype=model_dtype)
    x = make_x(dtype=model_dtype)
    hx = make_hx(cell, dtype=model_dtype) if hx_given else None
    with torch.autocast("cpu", dtype=dtype):
        expected = flat(ref(x, hx))
        got = flat(ours(x.clone().requires_grad_(), hx))
    assert [g.dtype for g in got] == [e.dtype for e in expected]
    if model_dtype == torch.float64:
        tol = TOL  # autocast leaves float64 alone
    elif torch.bfloat16 in (dtype, model_dtype):
        tol = dict(rtol=3e-2, atol=3e-2)
    else:
        tol = dict(rtol=4e-3, atol=4e-3)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b.double(), **tol)
    sum(g.float().sum() for g in got).backward()
    assert all(p.grad is not None and p.grad.dtype == model_dtype for p in ours.parameters())


def test_cpu_autocast_rounds_the_gemm_operands_as_torch_nn():
    """A float32 LSTMCell under bfloat16 autocast: its result is float32, computed from the
    input, h and weights rounded to bfloat16 (not from the float32 values), with c as
    given."""
    ref, ours = make_pair("lstm", dtype=torch.float32)
    x = make_x(dtype=torch.float32)
    h, c = make_hx("lstm", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours(x, (h, c))
    rounded = make_pair("lstm", dtype=torch.float32)[1]
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.bfloat16().float())
    expected = rounded(x.bfloat16().float(), (h.bfloat16().float(), c))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    unrounded = ours(x, (h, c))
    assert not torch.allclose(got[0], unrounded[0], rtol=1e-6, atol=1e-6)


def _relu_step_with_mask(x, h, w_ih, w_hh, b_ih, b_hh, mask):
    """The ReLU cell in float64 through the branches a forward took (mask: its output > 0)."""
    pre = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        pre = pre + b_ih + b_hh
    return pre * mask


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_reduced_precision_within_2x_torch_nns_error(cell, dtype):
    """Our cell in bfloat16 / float16: every output and gradient within twice torch.nn's
    error against float64 on the same rounded values (plus one unit of rounding at the
    tensor's scale), the repository's rule for the sequence modules."""
    ref64, _ = make_pair(cell, 64, 64, seed=4)
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.to(dtype).double())
    x = make_x(n=16, i=64, seed=5).to(dtype).double()
    hx = make_hx(cell, n=16, h=64, seed=6)
    hx = tuple(h.to(dtype).double() for h in hx) if is_lstm(cell) else hx.to(dtype).double()
    nn_cls, our_cls, kw = CELLS[cell]
    low_ref, low_ours = nn_cls(64, 64, dtype=dtype, **kw), our_cls(64, 64, dtype=dtype, **kw)
    low_ref.load_state_dict(ref64.state_dict())
    low_ours.load_state_dict(ref64.state_dict())
    to_low = (lambda s: tuple(t.to(dtype) for t in s)) if is_lstm(cell) else (
        lambda s: s.to(dtype))
    ours = run(low_ours, x.to(dtype), to_low(hx), cotangent_dtype=dtype)
    theirs = run(low_ref, x.to(dtype), to_low(hx), cotangent_dtype=dtype)
    exact = run(ref64, x, hx, cotangent_dtype=dtype)
    exact_ours = exact_theirs = exact
    if cell == "rnn_relu":
        # relu's derivative jumps at 0: each side against float64 through the branches its
        # own forward took (as conftest.relu_reference_with_masks for the sequence modules)
        masked = gatedrnn.RNNCell(64, 64, dtype=DT)
        masked.load_state_dict(ref64.state_dict())

        def through(mask):
            class Masked(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.weight_ih, self.weight_hh = masked.weight_ih, masked.weight_hh
                    self.bias_ih, self.bias_hh = masked.bias_ih, masked.bias_hh

                def forward(self, x, h):
                    return _relu_step_with_mask(x, h, self.weight_ih, self.weight_hh,
                                                self.bias_ih, self.bias_hh, mask)

            return run(Masked(), x, hx, cotangent_dtype=dtype)

        exact_ours = through((ours["out[0]"] > 0).double())
        exact_theirs = through((theirs["out[0]"] > 0).double())
    eps = torch.finfo(dtype).eps
    for key in exact:
        assert ours[key].dtype == dtype, key
        e_ours = (ours[key].double() - exact_ours[key]).abs().max().item()
        e_nn = (theirs[key].double() - exact_theirs[key]).abs().max().item()
        scale = max(1.0, exact[key].abs().max().item())
        assert e_ours <= 2 * e_nn + eps * scale, f"{key}: {e_ours:.3g} vs torch.nn {e_nn:.3g}"
