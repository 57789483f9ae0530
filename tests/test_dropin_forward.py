"""Drop-in forward parity of gatedrnn.LSTM / GRU / RNN with torch.nn.

Each test builds a torch.nn module, copies its weights into ours with
load_state_dict, runs both on the same input (padded, packed sorted, packed
unsorted, unbatched; with or without hx) and compares outputs, final states and
the gradients of a fixed random linear loss with respect to the input, hx and
every parameter.
"""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

import gatedrnn
from _dropin_helpers import (
    CELLS,
    KINDS,
    I,
    N,
    T,
    assert_same,
    is_lstm,
    lengths_for,
    make_hx,
    make_pair,
    make_x,
    module_input,
    run,
    tol,
)


def _id(cell, layers, bias, batch_first, bidir, kind, hx):
    return "-".join([
        cell, f"L{layers}", "bias" if bias else "nobias", "bf" if batch_first else "tf",
        "bi" if bidir else "uni", kind, "hx" if hx else "nohx",
    ])


# float64: the full product (cheap: every case is a few milliseconds).
FULL = list(itertools.product(CELLS, (1, 2, 3), (True, False), (False, True), (False, True),
                              KINDS, (False, True)))
# float32: a subset -- two layers, every cell, input kind and direction, hx or not, and
# bias / batch_first alternating so that both values of each are seen.
F32 = [
    (cell, 2, k % 2 == 0, k % 3 == 0, bidir, kind, hx)
    for k, (cell, bidir, kind, hx) in enumerate(
        itertools.product(CELLS, (False, True), KINDS, (False, True)))
]


def _check_case(cell, layers, bias, batch_first, bidir, kind, hx_given, dtype):
    ref, ours = make_pair(cell, num_layers=layers, bias=bias, batch_first=batch_first,
                          bidirectional=bidir, dtype=dtype)
    x = make_x(kind, batch_first, dtype=dtype)
    lengths = lengths_for(kind) if kind.startswith("packed") else None
    hx = make_hx(ref, N, batched=kind != "unbatched", dtype=dtype) if hx_given else None
    expected = run(ref, kind, x, lengths, hx)
    got = run(ours, kind, x, lengths, hx)
    assert_same(got, expected, **tol(dtype))
    return got


@pytest.mark.parametrize("cell,layers,bias,batch_first,bidir,kind,hx_given", FULL,
                         ids=[_id(*c) for c in FULL])
def test_forward_backward_float64(cell, layers, bias, batch_first, bidir, kind, hx_given):
    _check_case(cell, layers, bias, batch_first, bidir, kind, hx_given, torch.float64)


@pytest.mark.parametrize("cell,layers,bias,batch_first,bidir,kind,hx_given", F32,
                         ids=[_id(*c) for c in F32])
def test_forward_backward_float32(cell, layers, bias, batch_first, bidir, kind, hx_given):
    _check_case(cell, layers, bias, batch_first, bidir, kind, hx_given, torch.float32)


# ---------------------------------------------------------------------------
# output structure
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", KINDS)
def test_output_types_and_shapes(cell, kind):
    """Ours returns the same container types and shapes as torch.nn."""
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True, batch_first=True)
    x = make_x(kind, True)
    lengths = lengths_for(kind) if kind.startswith("packed") else None
    out_r, st_r = ref(module_input(kind, x, lengths, True))
    out_o, st_o = ours(module_input(kind, x, lengths, True))
    assert type(out_o) is type(out_r)
    assert type(st_o) is type(st_r)
    if is_lstm(cell):
        assert len(st_o) == 2
        for a, b in zip(st_o, st_r):
            assert a.shape == b.shape
    else:
        assert st_o.shape == st_r.shape
    if kind.startswith("packed"):
        pad_o, len_o = pad_packed_sequence(out_o, batch_first=True)
        pad_r, len_r = pad_packed_sequence(out_r, batch_first=True)
        assert torch.equal(len_o, len_r)
        torch.testing.assert_close(pad_o, pad_r, rtol=1e-10, atol=1e-10)
    else:
        assert out_o.shape == out_r.shape


# ---------------------------------------------------------------------------
# edge shapes
# ---------------------------------------------------------------------------

EDGE = [
    # (kind, T, N, lengths)
    ("padded", 1, 1, None),
    ("padded", 1, 3, None),
    ("padded", 5, 1, None),
    ("unbatched", 1, None, None),
    ("packed_sorted", 1, 3, [1, 1, 1]),  # every sequence of length 1
    ("packed_sorted", 4, 1, [4]),
    ("packed_sorted", 4, 3, [4, 4, 4]),  # all full length
    ("packed_unsorted", 4, 4, [1, 4, 1, 2]),  # repeated lengths, unsorted
    ("packed_unsorted", 3, 2, [1, 3]),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind,t,n,lengths", EDGE,
                         ids=[f"{k}-T{t}-N{n}-{ls}" for k, t, n, ls in EDGE])
def test_edge_shapes(cell, bidir, kind, t, n, lengths):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=bidir)
    x = make_x(kind, False, t=t, n=n if n else 1)
    hx = make_hx(ref, n or 1, batched=kind != "unbatched")
    for h in (None, hx):
        assert_same(run(ours, kind, x, lengths, h), run(ref, kind, x, lengths, h),
                    **tol(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
def test_hidden_size_one_and_wide_input(cell):
    """H=1 (proj_size 0 then, except lstm_proj which needs H>1) and I > H."""
    hidden = 2 if cell == "lstm_proj" else 1
    kw = {"proj_size": 1} if cell == "lstm_proj" else {}
    ref, ours = make_pair(cell, 7, hidden, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(T, N, 7, dtype=torch.float64)
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **tol(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
def test_packed_from_pack_sequence(cell, batch_first):
    """A PackedSequence from pack_sequence (list of tensors, unsorted) works like in torch.nn;
    batch_first does not change packed data."""
    ref, ours = make_pair(cell, bidirectional=True, batch_first=batch_first)
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in (2, 5, 1, 3)]
    ps = pack_sequence(seqs, enforce_sorted=False)
    out_r, st_r = ref(ps)
    out_o, st_o = ours(ps)
    torch.testing.assert_close(out_o.data, out_r.data, rtol=1e-10, atol=1e-10)
    assert torch.equal(out_o.batch_sizes, out_r.batch_sizes)
    assert torch.equal(out_o.sorted_indices, out_r.sorted_indices)
    assert torch.equal(out_o.unsorted_indices, out_r.unsorted_indices)
    torch.testing.assert_close(st_o, st_r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_input_and_hx(cell):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    x = torch.randn(N, T, 2 * I, dtype=torch.float64).transpose(0, 1)[..., ::2]
    assert not x.is_contiguous()
    hx = make_hx(ref, N)
    hx = (tuple(h.transpose(0, 1).contiguous().transpose(0, 1) for h in hx) if is_lstm(cell)
          else hx.transpose(0, 1).contiguous().transpose(0, 1))
    assert_same(run(ours, "padded", x, None, hx), run(ref, "padded", x, None, hx),
                **tol(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
def test_no_grad_and_inference_mode(cell):
    ref, ours = make_pair(cell, num_layers=2)
    x = make_x("padded", False)
    expected, _ = ref(x)
    with torch.no_grad():
        out, _ = ours(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected.detach(), rtol=1e-10, atol=1e-10)
    with torch.inference_mode():
        out2, _ = ours(x)
    torch.testing.assert_close(out2, expected.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_only_hx_requires_grad(cell):
    """Input without requires_grad and frozen weights: gradients still reach hx."""
    ref, ours = make_pair(cell)
    for m in (ref, ours):
        m.requires_grad_(False)
    x = make_x("padded", False)
    hx = make_hx(ref, N)
    got = run(ours, "padded", x, None, hx, input_grad=False)
    assert "grad.hx[0]" in got and "grad.input" not in got
    assert_same(got, run(ref, "padded", x, None, hx, input_grad=False), **tol(torch.float64))


# ---------------------------------------------------------------------------
# dropout between layers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", ["padded", "packed_unsorted"])
def test_dropout_eval_matches_torch_nn(cell, bidir, kind):
    ref, ours = make_pair(cell, num_layers=2, dropout=0.5, bidirectional=bidir)
    ref.eval()
    ours.eval()
    x = make_x(kind, False)
    lengths = lengths_for(kind) if kind.startswith("packed") else None
    assert_same(run(ours, kind, x, lengths), run(ref, kind, x, lengths), **tol(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", ["padded", "packed_unsorted", "unbatched"])
def test_dropout_train_differs_from_eval(cell, kind):
    _, ours = make_pair(cell, num_layers=2, dropout=0.5)
    x = make_x(kind, False)
    lengths = lengths_for(kind) if kind.startswith("packed") else None
    ours.eval()
    evaluated = run(ours, kind, x, lengths)
    ours.train()
    trained = run(ours, kind, x, lengths)
    assert not torch.allclose(trained["output"], evaluated["output"])
    # the first layer sees no dropout: its final state is the same in both modes
    d = 1
    torch.testing.assert_close(trained["h_n"][:d], evaluated["h_n"][:d], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(trained["h_n"][d:], evaluated["h_n"][d:])


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_zero_train_equals_eval(cell):
    ref, ours = make_pair(cell, num_layers=3, dropout=0.0, bidirectional=True)
    x = make_x("padded", False)
    ref.train()
    ours.train()
    trained = run(ours, "padded", x)
    assert_same(trained, run(ref, "padded", x), **tol(torch.float64))
    ours.eval()
    assert_same(run(ours, "padded", x), trained, rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", ["padded", "packed_sorted"])
def test_dropout_train_deterministic_under_seed(cell, kind):
    _, ours = make_pair(cell, num_layers=3, dropout=0.5, bidirectional=True)
    ours.train()
    x = make_x(kind, False)
    lengths = lengths_for(kind) if kind.startswith("packed") else None
    torch.manual_seed(1234)
    first = run(ours, kind, x, lengths)
    torch.manual_seed(1234)
    second = run(ours, kind, x, lengths)
    assert_same(second, first, rtol=0, atol=0)
    torch.manual_seed(4321)
    third = run(ours, kind, x, lengths)
    assert not torch.allclose(third["output"], first["output"])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", ["padded", "packed_unsorted", "unbatched"])
def test_dropout_train_matches_torch_nn_under_seed(cell, bidir, kind):
    """With the same RNG state, ours draws the same dropout masks as torch.nn, so
    training runs are reproducible across a swap."""
    ref, ours = make_pair(cell, num_layers=3, dropout=0.5, bidirectional=bidir)
    ref.train()
    ours.train()
    x = make_x(kind, False)
    lengths = lengths_for(kind) if kind.startswith("packed") else None
    torch.manual_seed(99)
    expected = run(ref, kind, x, lengths)
    torch.manual_seed(99)
    got = run(ours, kind, x, lengths)
    assert_same(got, expected, **tol(torch.float64))


# ---------------------------------------------------------------------------
# the module keeps working after its parameters change
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_after_optimizer_step(cell):
    """After an in-place optimizer step on both modules, results still match."""
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    x = make_x("padded", False)
    for m in (ref, ours):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        out, _ = m(x)
        out.square().sum().backward()
        opt.step()
    for (n_r, p_r), (n_o, p_o) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n_r == n_o
        torch.testing.assert_close(p_o, p_r, rtol=1e-10, atol=1e-10)
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **tol(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
def test_reassigned_parameter(cell):
    """Assigning a new Parameter to a weight attribute is honoured as in torch.nn."""
    ref, ours = make_pair(cell)
    new = torch.nn.Parameter(torch.randn_like(ref.weight_hh_l0))
    ref.weight_hh_l0 = new
    ours.weight_hh_l0 = torch.nn.Parameter(new.detach().clone())
    x = make_x("padded", False)
    assert_same(run(ours, "padded", x), run(ref, "padded", x), **tol(torch.float64))


def test_packed_batch_first_flag_ignored_for_packed_data():
    """Packing with batch_first=True and running a batch_first=False module (and the
    reverse) is legal in torch.nn: the module's batch_first does not apply to packed input."""
    for module_bf in (False, True):
        ref, ours = make_pair("lstm", batch_first=module_bf)
        x = torch.randn(N, T, I, dtype=torch.float64)
        ps = pack_padded_sequence(x, torch.tensor([5, 3, 1]), batch_first=True)
        out_r, (h_r, c_r) = ref(ps)
        out_o, (h_o, c_o) = ours(ps)
        torch.testing.assert_close(out_o.data, out_r.data, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h_o, h_r, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(c_o, c_r, rtol=1e-10, atol=1e-10)
    assert isinstance(ours, gatedrnn.LSTM)
