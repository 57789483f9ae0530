"""Drop-in interoperability of gatedrnn.LSTM / GRU / RNN with the rest of PyTorch.

Constructor parity (signatures, attributes, parameter names and shapes, default
initialization under the same seed, flatten_parameters, all_weights), state_dict
round trips, dtype conversion, deepcopy, torch.save / torch.load, functional_call,
weight_norm parametrization, gatedrnn.convert, torch.compile and
DistributedDataParallel.
"""

import copy
import os
import socket
import warnings

import pytest
import torch

import gatedrnn
from conftest import OLD_DYNAMO
from _dropin_helpers import (
    CELLS,
    I,
    N,
    NN_CLASSES,
    OUR_CLASSES,
    P,
    T,
    H,
    assert_same,
    ddp_data,
    ddp_loss,
    ddp_model,
    ddp_worker,
    expected_exception,
    family,
    lengths_for,
    make_hx,
    make_module,
    make_pair,
    make_x,
    run,
    tol,
)

DT = torch.float64
TOL = tol(DT)

ATTRIBUTES = ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
              "dropout", "bidirectional", "proj_size", "_flat_weights_names", "training")


def _assert_same_parameters(ours, ref, exact=True):
    named_o = list(ours.named_parameters())
    named_r = list(ref.named_parameters())
    assert [n for n, _ in named_o] == [n for n, _ in named_r]
    for (name, po), (_, pr) in zip(named_o, named_r):
        assert po.shape == pr.shape, name
        assert po.dtype == pr.dtype, name
        assert po.device == pr.device, name
        assert po.requires_grad == pr.requires_grad, name
        if exact:
            assert torch.equal(po, pr), name
        else:
            torch.testing.assert_close(po, pr, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# constructor
# ---------------------------------------------------------------------------

CTOR_CONFIGS = [
    {},
    {"num_layers": 3},
    {"bias": False},
    {"batch_first": True},
    {"dropout": 0.25, "num_layers": 2},
    {"bidirectional": True},
    {"num_layers": 2, "bidirectional": True, "bias": False, "batch_first": True},
    {"dtype": torch.float64},
    {"dtype": torch.float16},
    {"dtype": torch.bfloat16},
    {"device": "cpu"},
    {"device": torch.device("cpu"), "dtype": torch.float32},
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config", CTOR_CONFIGS, ids=[str(c) for c in CTOR_CONFIGS])
@pytest.mark.parametrize("seed", [0, 17])
def test_constructor_keywords_and_initialization(cell, config, seed):
    """Same attributes, parameter names / shapes / dtypes, and bit-identical default
    initialization under the same seed."""
    torch.manual_seed(seed)
    ref = make_module(cell, False, **config)
    torch.manual_seed(seed)
    ours = make_module(cell, True, **config)
    # RNNBase, not torch.nn.LSTM/GRU/RNN: torch.compile refuses instances of those three.
    assert isinstance(ours, torch.nn.RNNBase)
    assert not isinstance(ours, NN_CLASSES[family(cell)])
    assert isinstance(ours, OUR_CLASSES[family(cell)])
    for attr in ATTRIBUTES:
        assert getattr(ours, attr) == getattr(ref, attr), attr
    if family(cell) == "rnn":
        assert ours.nonlinearity == ref.nonlinearity
    assert ours.extra_repr() == ref.extra_repr()
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
    _assert_same_parameters(ours, ref)
    # the generator is left in the same state too
    torch.manual_seed(seed)
    make_module(cell, False, **config)
    after_ref = torch.rand(4)
    torch.manual_seed(seed)
    make_module(cell, True, **config)
    assert torch.equal(torch.rand(4), after_ref)


@pytest.mark.parametrize("fam", ["lstm", "gru", "rnn"])
def test_positional_constructor(fam):
    """Every argument passed positionally in torch.nn's order."""
    if fam == "lstm":
        args = (I, H, 2, False, True, 0.5, True, P, "cpu", torch.float64)
    elif fam == "gru":
        args = (I, H, 2, False, True, 0.5, True, 0, "cpu", torch.float64)
    else:
        args = (I, H, 2, "relu", False, True, 0.5, True, 0, "cpu", torch.float64)
    torch.manual_seed(3)
    ref = NN_CLASSES[fam](*args)
    torch.manual_seed(3)
    ours = OUR_CLASSES[fam](*args)
    for attr in ATTRIBUTES:
        assert getattr(ours, attr) == getattr(ref, attr), attr
    _assert_same_parameters(ours, ref)
    ref.eval()
    ours.eval()
    x = torch.randn(N, T, I, dtype=DT)
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_repr_and_reset_parameters(cell):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    torch.manual_seed(8)
    ref.reset_parameters()
    torch.manual_seed(8)
    ours.reset_parameters()
    _assert_same_parameters(ours, ref)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
def test_flatten_parameters_and_all_weights(cell, bidir):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=bidir)
    params_before = [p.data_ptr() for p in ours.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ours.flatten_parameters() is None
    assert [p.data_ptr() for p in ours.parameters()] == params_before
    _assert_same_parameters(ours, ref)
    # all_weights: one list per layer-direction, the very parameters of the module
    assert len(ours.all_weights) == len(ref.all_weights) == 2 * (2 if bidir else 1)
    for wo, wr in zip(ours.all_weights, ref.all_weights):
        assert len(wo) == len(wr)
        for a, b in zip(wo, wr):
            assert a.shape == b.shape and torch.equal(a, b)
    own = {id(p) for p in ours.parameters()}
    assert all(id(w) in own for ws in ours.all_weights for w in ws)
    x = make_x("padded", False)
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **TOL)
    ours.flatten_parameters()
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_train_eval_requires_grad_zero_grad(cell):
    _, ours = make_pair(cell, num_layers=2)
    assert ours.train() is ours and ours.training
    assert ours.eval() is ours and not ours.training
    x = make_x("padded", False)
    out, _ = ours(x)
    out.sum().backward()
    assert all(p.grad is not None for p in ours.parameters())
    ours.zero_grad()
    assert all(p.grad is None for p in ours.parameters())
    ours.requires_grad_(False)
    out, _ = ours(x)
    assert not out.requires_grad


@pytest.mark.parametrize("cell", CELLS)
def test_hooks_fire(cell):
    _, ours = make_pair(cell)
    seen = []
    ours.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    ours.register_forward_hook(lambda m, args, out: seen.append(type(out).__name__))
    ours.register_full_backward_hook(lambda m, gi, go: seen.append("backward"))
    x = make_x("padded", False).requires_grad_()
    out, _ = ours(x)
    out.sum().backward()
    assert seen == ["pre", "tuple", "backward"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", ["padded", "unbatched"])
def test_outputs_can_be_modified_in_place_as_torch_nns(cell, kind):
    """The output and final states are tensors of their own, not views marked by
    autograd (an op's output that is a view may not be modified in place at all): a model
    may scale, mask or ReLU(inplace=True) them as it may torch.nn's, and a backward
    through final states so modified gives torch.nn's gradients. A backward after the
    output was modified in place raises autograd's error: the ops save the output (the
    steps' previous states), as torch.nn.LSTM's oneDNN path does; torch.nn's GRU and RNN,
    and its LSTM elsewhere, keep copies and allow it."""
    grads = []
    x = make_x(kind, False).requires_grad_()
    for module in make_pair(cell):
        out, state = module(x)
        torch.relu_(out)  # no backward through it
        out, state = module(x)
        states = state if isinstance(state, tuple) else (state,)
        for s in states:
            s.mul_(0.5)
        loss = sum(s.sin().sum() for s in states)
        grads.append(torch.autograd.grad(loss, [x, *module.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=TOL["rtol"], atol=TOL["atol"])
    out, _ = module(x)
    out.mul_(0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# ---------------------------------------------------------------------------
# state_dict, dtype conversion, copies, serialization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
def test_state_dict_round_trips(cell, bidir):
    kw = dict(num_layers=2, bidirectional=bidir, dtype=DT)
    torch.manual_seed(1)
    ref = make_module(cell, False, **kw)
    torch.manual_seed(2)  # different initialization
    ours = make_module(cell, True, **kw)
    x = make_x("packed_unsorted", False)
    lengths = lengths_for("packed_unsorted")
    # torch.nn -> ours
    assert not torch.equal(ours.weight_ih_l0, ref.weight_ih_l0)
    result = ours.load_state_dict(ref.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert_same(run(ours, "packed_unsorted", x, lengths), run(ref, "packed_unsorted", x, lengths),
                **TOL)
    # ours -> torch.nn
    torch.manual_seed(3)
    ours2 = make_module(cell, True, **kw)
    torch.manual_seed(4)
    ref2 = make_module(cell, False, **kw)
    ref2.load_state_dict(ours2.state_dict(), strict=True)
    assert_same(run(ours2, "padded", x[:, :2]), run(ref2, "padded", x[:, :2]), **TOL)
    # the state_dicts are interchangeable key for key
    sd_o, sd_r = ours2.state_dict(), ref2.state_dict()
    assert list(sd_o) == list(sd_r)
    assert all(torch.equal(sd_o[k], sd_r[k]) for k in sd_o)


@pytest.mark.parametrize("cell", CELLS)
def test_load_state_dict_strict_errors_match(cell):
    ref, ours = make_pair(cell)
    bad = dict(ref.state_dict())
    bad.pop("weight_hh_l0")
    bad["unexpected"] = torch.zeros(1)
    expected = expected_exception(lambda: make_module(cell, False).load_state_dict(bad))
    with pytest.raises(type(expected)):
        ours.load_state_dict(bad)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("how", ["to", "double", "to_kw"])
def test_to_float64(cell, how):
    torch.manual_seed(0)
    ref = make_module(cell, False, num_layers=2, bidirectional=True)
    ours = make_module(cell, True, num_layers=2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        if how == "to":
            converted = m.to(torch.float64)
        elif how == "to_kw":
            converted = m.to(device="cpu", dtype=torch.float64)
        else:
            converted = m.double()
        assert converted is m
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert type(ours) is OUR_CLASSES[family(cell)]
    _assert_same_parameters(ours, ref)
    x = make_x("padded", False)
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **TOL)
    # and back to float32
    ref.float()
    ours.float()
    x32 = x.float()
    assert_same(run(ours, "padded", x32), run(ref, "padded", x32), **tol(torch.float32))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_converts_parameters(cell, dtype):
    ref, ours = make_pair(cell, num_layers=2, dtype=torch.float32)
    if dtype == torch.float16:
        assert ours.half() is ours
        ref.half()
    else:
        assert ours.bfloat16() is ours
        ref.bfloat16()
    assert all(p.dtype == dtype for p in ours.parameters())
    _assert_same_parameters(ours, ref)
    # the flat-weights view torch.nn keeps is refreshed as well
    assert all(w.dtype == dtype for w in ours._flat_weights)


@pytest.mark.parametrize("cell", CELLS)
def test_deepcopy(cell):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    clone = copy.deepcopy(ours)
    assert type(clone) is type(ours)
    assert clone is not ours
    own = {id(p) for p in ours.parameters()}
    assert all(id(p) not in own for p in clone.parameters())
    _assert_same_parameters(clone, ref)
    x = make_x("padded", False)
    assert_same(run(clone, "padded", x), run(ref, "padded", x), **TOL)
    # changing the copy does not touch the original
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    _assert_same_parameters(ours, ref)
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_save_load_whole_module(cell, tmp_path):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True, batch_first=True)
    path = tmp_path / f"{cell}.pt"
    torch.save(ours, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded) is type(ours)
    for attr in ATTRIBUTES:
        assert getattr(loaded, attr) == getattr(ours, attr), attr
    _assert_same_parameters(loaded, ref)
    x = make_x("packed_sorted", True)
    lengths = lengths_for("packed_sorted")
    assert_same(run(loaded, "packed_sorted", x, lengths), run(ref, "packed_sorted", x, lengths),
                **TOL)
    # the state_dict alone (weights_only=True) loads into torch.nn
    torch.save(ours.state_dict(), tmp_path / "sd.pt")
    fresh = make_module(cell, False, num_layers=2, bidirectional=True, batch_first=True,
                        dtype=DT)
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    _assert_same_parameters(fresh, ref)


# ---------------------------------------------------------------------------
# functional_call and parametrizations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("hx_given", [False, True], ids=["nohx", "hx"])
def test_functional_call(cell, hx_given):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(21)
    replacement = {n: (0.3 * torch.randn(p.shape, generator=g, dtype=DT)).requires_grad_()
                   for n, p in ref.named_parameters()}
    x = make_x("padded", False).requires_grad_()
    hx = make_hx(ref, N) if hx_given else None
    args = (x,) if hx is None else (x, hx)

    def flat(result):
        out, st = result
        return [out, *(st if isinstance(st, tuple) else (st,))]

    outs_r = flat(torch.func.functional_call(ref, replacement, args))
    outs_o = flat(torch.func.functional_call(ours, replacement, args))
    for a, b in zip(outs_o, outs_r):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # the replacement was used, not the module's own parameters
    own, _ = ours(*args)
    assert not torch.allclose(own, outs_o[0])
    # gradients with respect to the replacement tensors and the input
    leaves = [x, *replacement.values()]
    gr = torch.autograd.grad(sum(o.square().sum() for o in outs_r), leaves)
    go = torch.autograd.grad(sum(o.square().sum() for o in outs_o), leaves)
    for name, a, b in zip(["input", *replacement], go, gr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
    # the module's own parameters are back in place afterwards
    _assert_same_parameters(ours, ref)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("name", ["weight_hh_l0", "weight_ih_l1"])
def test_weight_norm_parametrization(cell, name):
    ref, ours = make_pair(cell, num_layers=2)
    for m in (ref, ours):
        torch.nn.utils.parametrizations.weight_norm(m, name=name)
    assert torch.nn.utils.parametrize.is_parametrized(ours, name)
    assert isinstance(ours, OUR_CLASSES[family(cell)])
    x = make_x("padded", False)
    hx = make_hx(ref, N)
    expected = run(ref, "padded", x, None, hx)
    got = run(ours, "padded", x, None, hx)
    assert f"grad.parametrizations.{name}.original0" in got
    assert_same(got, expected, **TOL)
    # the parametrization is live: changing g changes the result the same way
    with torch.no_grad():
        for m in (ref, ours):
            getattr(m.parametrizations, name).original0.mul_(1.5)
    assert_same(run(ours, "padded", x, None, hx), run(ref, "padded", x, None, hx), **TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_custom_parametrization(cell):
    """A user-defined parametrization on a reverse-direction weight of layer 1."""

    class Scale(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    for m in (ref, ours):
        torch.nn.utils.parametrize.register_parametrization(m, "weight_hh_l1_reverse", Scale())
    x = make_x("packed_unsorted", False)
    lengths = lengths_for("packed_unsorted")
    assert_same(run(ours, "packed_unsorted", x, lengths),
                run(ref, "packed_unsorted", x, lengths), **TOL)


# ---------------------------------------------------------------------------
# gatedrnn.convert
# ---------------------------------------------------------------------------


class _Model(torch.nn.Module):
    """torch.nn recurrent layers at several depths of nesting."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(I, H, num_layers=2, batch_first=True, proj_size=P)
        self.blocks = torch.nn.ModuleList([
            torch.nn.Sequential(torch.nn.Identity()),
            torch.nn.ModuleDict({"gru": torch.nn.GRU(P, H, bidirectional=True,
                                                      batch_first=True)}),
        ])
        self.rnn = torch.nn.RNN(2 * H, H, nonlinearity="relu", batch_first=True)
        self.head = torch.nn.Linear(H, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        y = self.blocks[0](y)
        y, _ = self.blocks[1]["gru"](y)
        y, h = self.rnn(y)
        return self.head(y), h


class _MyLSTM(torch.nn.LSTM):
    """A user subclass: its forward may differ, so convert must leave it alone."""

    def forward(self, input, hx=None):
        out, state = super().forward(input, hx)
        return 2 * out, state


def test_convert_custom_model():
    torch.manual_seed(0)
    model = _Model().double()
    x = torch.randn(N, T, I, dtype=DT, requires_grad=True)
    out_before, h_before = model(x)
    grads_before = torch.autograd.grad(out_before.sum() + h_before.sum(),
                                       [x, *model.parameters()])
    params_before = [id(p) for p in model.parameters()]
    names_before = list(model.state_dict())

    returned = gatedrnn.convert(model)
    assert returned is model
    assert type(model.lstm) is gatedrnn.LSTM
    assert type(model.blocks[1]["gru"]) is gatedrnn.GRU
    assert type(model.rnn) is gatedrnn.RNN
    assert type(model.head) is torch.nn.Linear
    assert [id(p) for p in model.parameters()] == params_before
    assert list(model.state_dict()) == names_before

    out_after, h_after = model(x)
    torch.testing.assert_close(out_after, out_before, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_after, h_before, rtol=1e-10, atol=1e-10)
    grads_after = torch.autograd.grad(out_after.sum() + h_after.sum(), [x, *model.parameters()])
    for a, b in zip(grads_after, grads_before):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_convert_sequential_and_bare_modules():
    seq = torch.nn.Sequential(torch.nn.LSTM(I, H), torch.nn.GRU(H, H), torch.nn.RNN(H, H),
                              torch.nn.Linear(H, H))
    assert gatedrnn.convert(seq) is seq
    assert [type(m) for m in seq] == [gatedrnn.LSTM, gatedrnn.GRU, gatedrnn.RNN, torch.nn.Linear]
    # the model itself may be one of the layers
    for fam in ("lstm", "gru", "rnn"):
        torch.manual_seed(0)
        layer = NN_CLASSES[fam](I, H, dtype=DT)
        x = torch.randn(T, N, I, dtype=DT)
        expected, _ = layer(x)
        assert gatedrnn.convert(layer) is layer
        assert type(layer) is OUR_CLASSES[fam]
        got, _ = layer(x)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_convert_leaves_subclasses_and_ours_alone():
    sub = _MyLSTM(I, H)
    ours = gatedrnn.GRU(I, H)
    model = torch.nn.ModuleDict({"sub": sub, "ours": ours, "plain": torch.nn.RNN(I, H)})
    x = torch.randn(T, N, I)
    before, _ = sub(x)
    gatedrnn.convert(model)
    assert type(model["sub"]) is _MyLSTM
    assert type(model["ours"]) is gatedrnn.GRU
    assert type(model["plain"]) is gatedrnn.RNN
    after, _ = model["sub"](x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # converting twice is harmless
    gatedrnn.convert(model)
    assert type(model["plain"]) is gatedrnn.RNN


def test_convert_keeps_hooks_dtype_and_training_mode():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, num_layers=2, dropout=0.5, dtype=DT).eval()
    calls = []
    lstm.register_forward_hook(lambda m, a, o: calls.append(1))
    model = torch.nn.Sequential(lstm)
    gatedrnn.convert(model)
    assert type(lstm) is gatedrnn.LSTM
    assert not lstm.training
    assert all(p.dtype == DT for p in lstm.parameters())
    lstm(torch.randn(T, N, I, dtype=DT))
    assert calls == [1]


def test_convert_then_optimizer_step_matches_torch_nn():
    torch.manual_seed(0)
    ref = _Model().double()
    model = copy.deepcopy(ref)
    gatedrnn.convert(model)
    x = torch.randn(N, T, I, dtype=DT)
    for m in (ref, model):
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            out, h = m(x)
            (out.square().mean() + h.mean()).backward()
            opt.step()
    _assert_same_parameters(model, ref, exact=False)


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


class _CompiledNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = gatedrnn.LSTM(I, H, num_layers=2, batch_first=True, proj_size=P,
                                  bidirectional=True)
        self.gru = gatedrnn.GRU(2 * P, H, batch_first=True)
        self.rnn = gatedrnn.RNN(H, H, nonlinearity="relu", batch_first=True)
        self.head = torch.nn.Linear(H, 1)

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (h0, c0))
        y, g = self.gru(y)
        y, r = self.rnn(y, g)
        return self.head(y).squeeze(-1), h, c, r


def _compile_check(fullgraph):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _CompiledNet()
    compiled = torch.compile(model, fullgraph=fullgraph, backend="aot_eager")
    x = torch.randn(N, T, I)
    h0 = torch.randn(4, N, P)
    c0 = torch.randn(4, N, H)

    def run_once(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (x, h0, c0)]
        outs = fn(*leaves)
        loss = sum((o * (k + 1)).sin().sum() for k, o in enumerate(outs))
        grads = torch.autograd.grad(loss, [*leaves, *model.parameters()])
        return [o.detach() for o in outs], grads

    try:
        eager_outs, eager_grads = run_once(model)
        comp_outs, comp_grads = run_once(compiled)
        # a second call with the same shapes reuses the compiled graph
        comp_outs2, _ = run_once(compiled)
    finally:
        torch._dynamo.reset()
    for a, b in zip(comp_outs, eager_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(comp_outs2, eager_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(comp_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@OLD_DYNAMO
def test_torch_compile_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) of a model holding our modules, default Dynamo
    configuration: no graph break, same forward and backward as eager."""
    _compile_check(fullgraph=True)


@OLD_DYNAMO
def test_torch_compile_fullgraph_allow_rnn_matches_eager():
    """The same with torch._dynamo.config.allow_rnn=True, the switch users set to let Dynamo
    trace torch.nn's own RNN modules: it must not change how ours trace."""
    with torch._dynamo.config.patch(allow_rnn=True):
        _compile_check(fullgraph=True)


def test_torch_compile_default_matches_eager():
    """torch.compile without fullgraph (graph breaks allowed): same results as eager."""
    _compile_check(fullgraph=False)


# ---------------------------------------------------------------------------
# DistributedDataParallel (gloo, CPU, 2 processes)
# ---------------------------------------------------------------------------


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_two_processes_match_single_process(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.fail("torch.distributed with gloo is required")
    world = 2
    mp.spawn(ddp_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)

    # single process on the whole batch, from rank 0's initialization (DDP broadcasts it)
    model = ddp_model(seed=100)
    x, y = ddp_data()
    ddp_loss(model, x, y).backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    params = {n: p.detach() for n, p in model.named_parameters()}

    for rank in range(world):
        result = torch.load(os.path.join(tmp_path, f"rank{rank}.pt"), weights_only=True)
        assert result["types"]["lstm"] == "gatedrnn.modules.lstm.LSTM"
        assert result["types"]["gru"] == "gatedrnn.modules.gru.GRU"
        assert result["types"]["rnn"] == "gatedrnn.modules.rnn.RNN"
        assert list(result["grads"]) == list(expected)
        for name in expected:
            torch.testing.assert_close(result["params"][name], params[name], rtol=0, atol=0)
            torch.testing.assert_close(result["grads"][name], expected[name],
                                       rtol=1e-10, atol=1e-12, msg=f"rank {rank} {name}")
