"""Drop-in error parity: for bad constructor arguments and bad forward arguments,
gatedrnn.LSTM / GRU / RNN raise exactly the exception type torch.nn raises.

The expected type is never hard-coded: every test first makes the same call on
the torch.nn module (which must raise), then checks that ours raises an exception
of that exact type. A few calls that torch.nn accepts are checked the other way:
ours must accept them too and give the same results.
"""

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import TORCH_VERSION
from _dropin_helpers import (
    CELLS,
    NN_CLASSES,
    OUR_CLASSES,
    H,
    I,
    N,
    T,
    assert_same,
    expected_exception,
    is_lstm,
    make_hx,
    make_module,
    make_pair,
    run,
    tol,
)

DT = torch.float64


def _assert_same_exception(ref_call, ours_call):
    expected = expected_exception(ref_call)
    with pytest.raises(Exception) as info:
        ours_call()
    assert type(info.value) is type(expected), (
        f"torch.nn raised {type(expected).__name__}: {expected}\n"
        f"gatedrnn raised {type(info.value).__name__}: {info.value}")


# ---------------------------------------------------------------------------
# constructor
# ---------------------------------------------------------------------------

# (family or None for all, positional args, keyword args)
BAD_CTOR = [
    (None, (0, H), {}),
    (None, (-2, H), {}),
    (None, (I, 0), {}),
    (None, (I, -1), {}),
    (None, (float(I), H), {}),
    (None, (I, float(H)), {}),
    (None, ("4", H), {}),
    (None, (I, H), {"num_layers": 0}),
    (None, (I, H), {"num_layers": -1}),
    (None, (I, H), {"num_layers": 2.5}),
    (None, (I, H), {"dropout": -0.1}),
    (None, (I, H), {"dropout": 1.5}),
    (None, (I, H), {"dropout": True}),
    (None, (I, H), {"dropout": "0.1"}),
    (None, (I, H), {"bias": 1}),
    (None, (I, H), {"batch_first": "yes"}),
    (None, (I, H), {"dtype": torch.int64}),
    (None, (I, H), {"device": "not-a-device"}),
    (None, (I,), {}),
    (None, (I, H), {"no_such_argument": 1}),
    ("lstm", (I, H), {"proj_size": -1}),
    ("lstm", (I, H), {"proj_size": H}),
    ("lstm", (I, H), {"proj_size": H + 2}),
    ("gru", (I, H), {"proj_size": 2}),
    ("rnn", (I, H), {"proj_size": 2}),
    ("rnn", (I, H), {"nonlinearity": "sigmoid"}),
    ("rnn", (I, H, 1, "gelu"), {}),
]


def _ctor_cases():
    out = []
    for fam, args, kw in BAD_CTOR:
        for f in ("lstm", "gru", "rnn"):
            if fam is None or fam == f:
                out.append(pytest.param(f, args, kw, id=f"{f}-{args}-{kw}"))
    return out


@pytest.mark.parametrize("fam,args,kwargs", _ctor_cases())
def test_constructor_bad_values(fam, args, kwargs):
    if TORCH_VERSION < (2, 13):
        # Older torch.nn accepts some of these (2.4.1: sizes of 0, num_layers=0, ...);
        # the drop-in accepts what torch.nn accepts.
        try:
            NN_CLASSES[fam](*args, **kwargs)
        except Exception:  # noqa: BLE001  (compared below)
            pass
        else:
            OUR_CLASSES[fam](*args, **kwargs)
            return
    _assert_same_exception(lambda: NN_CLASSES[fam](*args, **kwargs),
                           lambda: OUR_CLASSES[fam](*args, **kwargs))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dropout", [0.2, 1.0, 1])
def test_dropout_single_layer_warning(cell, dropout):
    def record(ours):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_module(cell, ours, num_layers=1, dropout=dropout)
        return [(w.category, str(w.message)) for w in caught]

    expected = record(False)
    assert expected and all(issubclass(c, UserWarning) for c, _ in expected)
    assert record(True) == expected
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        make_module(cell, True, num_layers=1, dropout=dropout)


@pytest.mark.parametrize("cell", CELLS)
def test_no_warning_without_dropout_or_with_layers(cell):
    for kw in ({"num_layers": 1, "dropout": 0.0}, {"num_layers": 2, "dropout": 0.5}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            make_module(cell, True, **kw)


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------


def _x(*shape, dtype=DT):
    return torch.randn(*shape, dtype=dtype)


def _packed(lengths=(5, 3, 1), features=I, sorted_=True, dtype=DT):
    n = len(lengths)
    x = torch.randn(max(lengths), n, features, dtype=dtype)
    return pack_padded_sequence(x, torch.tensor(list(lengths)), enforce_sorted=sorted_)


def _hx(m, batch=N, batched=True, dtype=DT):
    return make_hx(m, batch, batched=batched, dtype=dtype)


def _map_hx(m, fn, which=None):
    """Apply fn to every state tensor (or only state number ``which``)."""
    hx = _hx(m)
    if isinstance(hx, tuple):
        return tuple(fn(h) if which in (None, k) else h for k, h in enumerate(hx))
    return fn(hx)


def _grow(dim, by=1):
    """A function that makes a tensor ``by`` larger along ``dim`` (or smaller, by<0)."""
    def fn(h):
        if by < 0:
            return h.narrow(dim, 0, h.shape[dim] + by).contiguous()
        extra = list(h.shape)
        extra[dim] = by
        return torch.cat([h, torch.randn(extra, dtype=h.dtype)], dim)
    return fn


# name -> (module keyword arguments, call(module))
FORWARD_CASES = {
    # wrong input feature size
    "features-padded": ({}, lambda m: m(_x(T, N, I + 1))),
    "features-padded-hx": ({}, lambda m: m(_x(T, N, I + 1), _hx(m))),
    "features-batch_first": ({"batch_first": True}, lambda m: m(_x(N, T, I - 1))),
    "features-batch_first-hx": ({"batch_first": True}, lambda m: m(_x(N, T, I + 2), _hx(m))),
    "features-unbatched": ({}, lambda m: m(_x(T, I + 1))),
    "features-unbatched-hx": ({}, lambda m: m(_x(T, I + 1), _hx(m, batched=False))),
    "features-packed": ({}, lambda m: m(_packed(features=I + 1))),
    "features-packed-hx": ({}, lambda m: m(_packed(features=I + 1), _hx(m))),
    # wrong hx feature size
    "hx-size": ({}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(2)))),
    "hx-size-smaller": ({}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(2, -1)))),
    "hx-size-unbatched": ({}, lambda m: m(_x(T, I),
                                          tuple(_grow(1)(h) for h in _hx(m, batched=False))
                                          if m.mode == "LSTM"
                                          else _grow(1)(_hx(m, batched=False)))),
    "hx-size-packed": ({}, lambda m: m(_packed(), _map_hx(m, _grow(2)))),
    # wrong hx batch size
    "hx-batch-bigger": ({}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(1)))),
    "hx-batch-smaller": ({}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(1, -1)))),
    "hx-batch-batch_first": ({"batch_first": True}, lambda m: m(_x(N, T, I), _hx(m, batch=N + 1))),
    # hx laid out batch-first (N, layers, H) by mistake
    "hx-batch_first-layout": ({"batch_first": True, "num_layers": 2},
                              lambda m: m(_x(N, T, I), _map_hx(m, lambda h: h.transpose(0, 1)))),
    "hx-batch-packed-sorted-bigger": ({}, lambda m: m(_packed(), _hx(m, batch=N + 1))),
    "hx-batch-packed-sorted-smaller": ({}, lambda m: m(_packed(), _hx(m, batch=N - 1))),
    "hx-batch-packed-unsorted-smaller": ({}, lambda m: m(_packed((1, 5, 3), sorted_=False),
                                                         _hx(m, batch=N - 1))),
    # dimensions of input and hx disagree
    "input2d-hx3d": ({}, lambda m: m(_x(T, I), _hx(m, batch=1))),
    "input3d-hx2d": ({}, lambda m: m(_x(T, N, I), _hx(m, batched=False))),
    "input2d-hx3d-batch_first": ({"batch_first": True}, lambda m: m(_x(T, I), _hx(m, batch=1))),
    "input3d-hx2d-batch_first": ({"batch_first": True},
                                 lambda m: m(_x(N, T, I), _hx(m, batched=False))),
    # input rank
    "input0d": ({}, lambda m: m(torch.tensor(1.0, dtype=DT))),
    "input1d": ({}, lambda m: m(_x(I))),
    "input1d-hx": ({}, lambda m: m(_x(I), _hx(m, batched=False))),
    "input4d": ({}, lambda m: m(_x(2, T, N, I))),
    "input4d-hx": ({}, lambda m: m(_x(2, T, N, I), _hx(m))),
    "input4d-batch_first": ({"batch_first": True}, lambda m: m(_x(N, T, I, 1))),
    # wrong number of layers (times directions) in hx
    "hx-layers-more": ({"num_layers": 2}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(0)))),
    "hx-layers-fewer": ({"num_layers": 2}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(0, -1)))),
    "hx-layers-bidirectional": ({"num_layers": 2, "bidirectional": True},
                                lambda m: m(_x(T, N, I), _map_hx(m, _grow(0, -2)))),
    "hx-layers-unbatched": ({"num_layers": 3},
                            lambda m: m(_x(T, I), tuple(_grow(0, -1)(h)
                                                        for h in _hx(m, batched=False))
                                        if m.mode == "LSTM"
                                        else _grow(0, -1)(_hx(m, batched=False)))),
    "hx-layers-packed": ({"num_layers": 2}, lambda m: m(_packed(), _map_hx(m, _grow(0)))),
    # dtypes
    "input-dtype": ({}, lambda m: m(_x(T, N, I, dtype=torch.float32))),
    "input-dtype-int": ({}, lambda m: m(torch.ones(T, N, I, dtype=torch.int64))),
    "input-dtype-packed": ({}, lambda m: m(_packed(dtype=torch.float32))),
    "hx-dtype": ({}, lambda m: m(_x(T, N, I), _hx(m, dtype=torch.float32))),
}

LSTM_CASES = {
    # only c (or only h) wrong
    "c-size": ({}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(2), which=1))),
    "h-size": ({}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(2), which=0))),
    "c-batch": ({}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(1), which=1))),
    "c-layers": ({"num_layers": 2}, lambda m: m(_x(T, N, I), _map_hx(m, _grow(0, -1), which=1))),
    "h3d-c2d": ({}, lambda m: m(_x(T, N, I), (_hx(m)[0], _hx(m, batched=False)[1]))),
    "h2d-c3d-unbatched": ({}, lambda m: m(_x(T, I), (_hx(m, batched=False)[0], _hx(m)[1]))),
    # a single tensor where (h, c) is expected; two layers, so torch.nn's hx[1] exists
    # (with one layer torch.nn fails with an accidental IndexError from hx[1])
    "hx-not-a-tuple": ({"num_layers": 2}, lambda m: m(_x(T, N, I), _hx(m)[0])),
    "hx-three-tensors": ({}, lambda m: m(_x(T, N, I), _hx(m) + (_hx(m)[1],))),
}

PROJ_CASES = {
    # h given with hidden_size features instead of proj_size
    "h-hidden-size-not-proj": ({}, lambda m: m(_x(T, N, I), (_hx(m)[1], _hx(m)[1]))),
    "c-proj-size": ({}, lambda m: m(_x(T, N, I), (_hx(m)[0], _hx(m)[0]))),
}

NON_LSTM_CASES = {
    "hx-tuple": ({}, lambda m: m(_x(T, N, I), (_hx(m),))),
}


def _forward_cases():
    out = []
    for cell in CELLS:
        cases = dict(FORWARD_CASES)
        if is_lstm(cell):
            cases.update(LSTM_CASES)
        else:
            cases.update(NON_LSTM_CASES)
        if cell == "lstm_proj":
            cases.update(PROJ_CASES)
        for name, (kw, call) in cases.items():
            out.append(pytest.param(cell, kw, call, id=f"{cell}-{name}"))
    return out


@pytest.mark.parametrize("cell,module_kwargs,call", _forward_cases())
def test_forward_bad_arguments(cell, module_kwargs, call):
    ref, ours = make_pair(cell, **module_kwargs)

    def on(m):
        torch.manual_seed(5)  # the same random tensors for both calls
        return lambda: call(m)

    _assert_same_exception(on(ref), on(ours))


@pytest.mark.parametrize("cell", CELLS)
def test_no_exception_leaves_module_unusable(cell):
    """After a rejected call, the module still gives torch.nn's results."""
    ref, ours = make_pair(cell, num_layers=2)
    with pytest.raises(Exception):
        ours(_x(T, N, I + 1))
    x = torch.randn(T, N, I, dtype=DT)
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **tol(DT))


# ---------------------------------------------------------------------------
# unusual calls torch.nn accepts: ours must accept them with the same results
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_accepted(cell):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    x = torch.randn(T, 0, I, dtype=DT)
    out_r, st_r = ref(x)
    out_o, st_o = ours(x)
    assert out_o.shape == out_r.shape
    st_r = st_r if isinstance(st_r, tuple) else (st_r,)
    st_o = st_o if isinstance(st_o, tuple) else (st_o,)
    assert [s.shape for s in st_o] == [s.shape for s in st_r]


@pytest.mark.parametrize("cell", CELLS)
def test_packed_unsorted_hx_with_extra_rows_accepted(cell):
    """For an unsorted PackedSequence torch.nn first permutes hx with sorted_indices
    (which selects batch rows) and only then checks its size, so an hx with more rows
    than the batch is accepted and its extra rows are ignored. A drop-in must accept
    the same call and give the same results."""
    ref, ours = make_pair(cell, num_layers=2)
    lengths = [1, 5, 3]
    x = torch.randn(T, len(lengths), I, dtype=DT)
    hx = make_hx(ref, len(lengths) + 1)
    expected = run(ref, "packed_unsorted", x, lengths, hx)
    got = run(ours, "packed_unsorted", x, lengths, hx)
    assert_same(got, expected, **tol(DT))
