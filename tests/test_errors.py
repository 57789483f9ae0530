"""Bad inputs raise RuntimeError or ValueError whose message names the
offending argument -- never a crash or a silent wrong answer."""

import pytest
import torch

import gatedrnn
from conftest import CELLS, is_lstm, num_gates, op_and_args

ERRORS = (RuntimeError, ValueError)

T, N, I, H = 4, 3, 5, 6
LENGTHS = [4, 2, 1]  # batch_sizes [3, 2, 1, 1], R = 7


def _valid(cell, packed=False, dtype=torch.float64):
    """Valid op arguments (tensors dict, batch_sizes) for ``cell``."""
    G = num_gates(cell)
    P = 4 if cell == "lstm_proj" else H
    kw = dict(dtype=dtype)
    if packed:
        x = torch.randn(T, N, I, **kw)
        ps = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(LENGTHS))
        inp, bs = ps.data, ps.batch_sizes
        assert bs.tolist() == [3, 2, 1, 1]
    else:
        inp, bs = torch.randn(T, N, I, **kw), None
    t = {
        "input": inp,
        "h0": torch.randn(N, P, **kw),
        "w_ih": torch.randn(G * H, I, **kw),
        "w_hh": torch.randn(G * H, P, **kw),
        "b_ih": torch.randn(G * H, **kw),
        "b_hh": torch.randn(G * H, **kw),
    }
    if is_lstm(cell):
        t["c0"] = torch.randn(N, H, **kw)
    if cell == "lstm_proj":
        t["w_hr"] = torch.randn(P, H, **kw)
    return t, bs


def _call(cell, t, bs, reverse=False):
    op, args = op_and_args(cell, t, bs, reverse)
    return op(*args)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_valid_arguments_are_accepted(cell, packed):
    """The baseline that every error case below perturbs in one place."""
    t, bs = _valid(cell, packed)
    _call(cell, t, bs)


def _replace(key, fn):
    def mutate(t, bs):
        t = dict(t)
        t[key] = fn(t[key])
        return t, bs

    return mutate


def _set_bs(values, dtype=torch.int64):
    def mutate(t, bs):
        return t, torch.tensor(values, dtype=dtype)

    return mutate


def _f32(x):
    return x.float()


# (id, applies-to(cell) predicate, packed, mutation, regex)
ALL = lambda cell: True  # noqa: E731
LSTM_ONLY = is_lstm
PROJ_ONLY = lambda cell: cell == "lstm_proj"  # noqa: E731

CASES = [
    # input
    ("input_feature_size", ALL, False,
     _replace("input", lambda x: torch.randn(T, N, I + 1, dtype=x.dtype)), r"input|w_ih"),
    ("input_feature_size_packed", ALL, True,
     _replace("input", lambda x: torch.randn(x.shape[0], I + 2, dtype=x.dtype)), r"input|w_ih"),
    ("input_2d_without_batch_sizes", ALL, False, _replace("input", lambda x: x[0]), r"input"),
    ("input_1d_without_batch_sizes", ALL, False, _replace("input", lambda x: x[0, 0]), r"input"),
    ("input_3d_with_batch_sizes", ALL, True,
     _replace("input", lambda x: x.unsqueeze(1)), r"input|batch_sizes"),
    ("input_dtype", ALL, False, _replace("input", _f32), r"input|w_ih"),
    # initial states
    ("h0_batch", ALL, False, _replace("h0", lambda h: torch.randn(N + 1, h.shape[1], dtype=h.dtype)), r"h0"),
    ("h0_batch_packed", ALL, True, _replace("h0", lambda h: torch.randn(N - 1, h.shape[1], dtype=h.dtype)), r"h0|batch_sizes"),
    ("h0_features", ALL, False, _replace("h0", lambda h: torch.randn(N, h.shape[1] + 1, dtype=h.dtype)), r"h0"),
    ("h0_3d", ALL, False, _replace("h0", lambda h: h.unsqueeze(0).expand(2, -1, -1)), r"h0"),
    ("h0_dtype", ALL, False, _replace("h0", _f32), r"h0"),
    ("c0_batch", LSTM_ONLY, False, _replace("c0", lambda c: torch.randn(N + 1, H, dtype=c.dtype)), r"c0"),
    ("c0_features", LSTM_ONLY, False, _replace("c0", lambda c: torch.randn(N, H + 1, dtype=c.dtype)), r"c0"),
    ("c0_dtype", LSTM_ONLY, False, _replace("c0", _f32), r"c0"),
    # weights
    ("w_ih_rows", ALL, False, _replace("w_ih", lambda w: torch.randn(w.shape[0] + 1, I, dtype=w.dtype)), r"w_ih|w_hh"),
    ("w_ih_1d", ALL, False, _replace("w_ih", lambda w: w.reshape(-1)), r"w_ih"),
    ("w_ih_dtype", ALL, False, _replace("w_ih", _f32), r"w_ih|input"),
    ("w_hh_cols", ALL, False, _replace("w_hh", lambda w: torch.randn(w.shape[0], w.shape[1] + 1, dtype=w.dtype)), r"w_hh"),
    # (for RNN, G = 1: whichever of w_ih / w_hh defines H, the other is reported)
    ("w_hh_rows", ALL, False, _replace("w_hh", lambda w: torch.randn(w.shape[0] + 1, w.shape[1], dtype=w.dtype)), r"w_hh|w_ih"),
    ("w_hh_dtype", ALL, False, _replace("w_hh", _f32), r"w_hh"),
    ("b_ih_size", ALL, False, _replace("b_ih", lambda b: torch.randn(b.shape[0] + 1, dtype=b.dtype)), r"b_ih"),
    ("b_ih_2d", ALL, False, _replace("b_ih", lambda b: b.unsqueeze(0)), r"b_ih"),
    ("b_ih_dtype", ALL, False, _replace("b_ih", _f32), r"b_ih"),
    ("b_hh_size", ALL, False, _replace("b_hh", lambda b: torch.randn(b.shape[0] - 1, dtype=b.dtype)), r"b_hh"),
    ("b_hh_dtype", ALL, False, _replace("b_hh", _f32), r"b_hh"),
    ("w_hr_cols", PROJ_ONLY, False, _replace("w_hr", lambda w: torch.randn(w.shape[0], H + 1, dtype=w.dtype)), r"w_hr"),
    ("w_hr_rows", PROJ_ONLY, False, _replace("w_hr", lambda w: torch.randn(w.shape[0] + 1, H, dtype=w.dtype)), r"w_hr|w_hh|h0"),
    ("w_hr_dtype", PROJ_ONLY, False, _replace("w_hr", _f32), r"w_hr"),
    # batch_sizes (valid: [3, 2, 1, 1], input has R = 7 rows, N = 3)
    ("batch_sizes_increasing", ALL, True, _set_bs([3, 1, 2, 1]), r"batch_sizes"),
    ("batch_sizes_sum_too_small", ALL, True, _set_bs([3, 2, 1]), r"batch_sizes"),
    ("batch_sizes_sum_too_large", ALL, True, _set_bs([3, 3, 2, 1]), r"batch_sizes"),
    ("batch_sizes_zero_then_more", ALL, True, _set_bs([3, 0, 2, 2]), r"batch_sizes"),
    ("batch_sizes_negative", ALL, True, _set_bs([3, 3, 2, -1]), r"batch_sizes"),
    ("batch_sizes_2d", ALL, True, _set_bs([[3, 2, 1, 1]]), r"batch_sizes"),
    ("batch_sizes_int32", ALL, True, _set_bs([3, 2, 1, 1], torch.int32), r"batch_sizes"),
    ("batch_sizes_float", ALL, True, _set_bs([3.0, 2.0, 1.0, 1.0], torch.float64), r"batch_sizes"),
    ("batch_sizes_first_not_batch", ALL, True, _set_bs([2, 2, 2, 1]), r"h0|batch_sizes"),
]


def _case_params():
    out = []
    for cell in CELLS:
        for name, applies, packed, mutate, regex in CASES:
            if applies(cell):
                out.append(pytest.param(cell, packed, mutate, regex, id=f"{cell}-{name}"))
    return out


@pytest.mark.parametrize("cell,packed,mutate,regex", _case_params())
def test_bad_argument_raises_naming_it(cell, packed, mutate, regex):
    t, bs = _valid(cell, packed)
    t, bs = mutate(t, bs)
    with pytest.raises(ERRORS, match=regex):
        _call(cell, t, bs)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bad", ["sigmoid", "TANH", ""])
def test_bad_nonlinearity(cell, bad):
    t, bs = _valid(cell)
    with pytest.raises(ERRORS, match="nonlinearity"):
        torch.ops.gatedrnn.rnn_forward(
            t["input"], bs, t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], bad, False
        )


@pytest.mark.parametrize("cell", CELLS)
def test_integer_input_rejected(cell):
    """Only floating types are supported: integer tensors are refused, not
    reinterpreted."""
    t, bs = _valid(cell)
    t = {k: (v * 10).to(torch.int64) for k, v in t.items()}
    with pytest.raises(ERRORS):
        _call(cell, t, bs)


@pytest.mark.parametrize("cell", CELLS)
def test_error_leaves_no_broken_state(cell):
    """After an error, a valid call still works (and gives the same result as
    before)."""
    t, bs = _valid(cell, packed=True)
    before = _call(cell, t, bs)
    bad = dict(t, input=torch.randn(7, I + 1, dtype=torch.float64))
    with pytest.raises(ERRORS):
        _call(cell, bad, bs)
    after = _call(cell, t, bs)
    n = 3 if is_lstm(cell) else 2
    for a, b in zip(before[:n], after[:n]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------
# through the functional API and the modules
# --------------------------------------------------------------------------


def test_functional_errors_name_argument():
    F = gatedrnn.functional
    x = torch.randn(T, N, I)
    with pytest.raises(ERRORS, match=r"input|w_ih"):
        F.lstm(x, w_ih=torch.randn(4 * H, I + 1), w_hh=torch.randn(4 * H, H))
    with pytest.raises(ERRORS, match=r"h0"):
        F.gru(x, torch.randn(N + 1, H), w_ih=torch.randn(3 * H, I), w_hh=torch.randn(3 * H, H))
    with pytest.raises(ERRORS, match=r"c0"):
        F.lstm(x, (torch.randn(N, H), torch.randn(N, H + 2)),
               w_ih=torch.randn(4 * H, I), w_hh=torch.randn(4 * H, H))
    with pytest.raises(ERRORS, match=r"nonlinearity"):
        F.rnn(x, w_ih=torch.randn(H, I), w_hh=torch.randn(H, H), nonlinearity="gelu")
    with pytest.raises(ERRORS, match=r"batch_sizes"):
        F.gru(torch.randn(7, I), torch.randn(N, H), w_ih=torch.randn(3 * H, I),
              w_hh=torch.randn(3 * H, H), batch_sizes=torch.tensor([3, 1, 2, 1]))


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_module_wrong_input_size(cls):
    m = getattr(gatedrnn, cls)(I, H)
    with pytest.raises(ERRORS, match=r"input"):
        m(torch.randn(T, N, I + 1))


def test_module_bad_nonlinearity():
    with pytest.raises(ERRORS, match=r"nonlinearity|relu|tanh"):
        gatedrnn.RNN(I, H, nonlinearity="sigmoid")
