"""A backward makes only the gradients autograd needs (every backward op's output_mask:
input, initial states, parameters), and those it makes are the ones it makes when
everything needs a gradient: bit for bit at the op and through the row-wise modules, and
torch.nn's through the plain modules (float64), eager and compiled. The layer-normalized
ops' own op-level checks are in test_layer_norm.py."""

import itertools

import pytest
import torch
import torch._dynamo

import gatedrnn
from conftest import CELLS, as_leaves, build_case, is_lstm, loss_and_grads
from test_opcheck_compile import _backward_call, _call, _functional_fn

MASKS = list(itertools.product([True, False], repeat=3))


def _mask_id(mask):
    names = ("input", "states", "weights")
    wanted = [n for n, w in zip(names, mask) if w]
    return "+".join(wanted) or "none"


def _groups(cell):
    """The output_mask entry of each of the backward op's gradients, in order."""
    if is_lstm(cell):
        return [0, 1, 1, 2, 2, 2, 2, 2]  # input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
    return [0, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["f64", "f32", "bf16"])
# (T, N) = (9, 6): nine recurrent products with grad_h0, eight without, on either side of
# the number of steps up to which a float w_hh is read in place rather than packed
# (kInPlaceSteps; batches of 3 or 4 rows take the small-batch kernel either way)
@pytest.mark.parametrize("T, N", [(1, 3), (4, 3), (1, 6), (9, 6)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_op_makes_the_wanted_gradients_bit_for_bit(cell, dtype, T, N, packed):
    _, tensors, batch_sizes = build_case(cell, T, N, 4, 5, 3, dtype=dtype, packed=packed)
    op, args = _backward_call(cell, tensors, batch_sizes, reverse=False)
    *full, _ = op(*args)
    for mask in MASKS:
        *grads, step_norms = op(*args, output_mask=list(mask))
        assert step_norms.shape[0] == 0
        for i, (got, whole, group) in enumerate(zip(grads, full, _groups(cell))):
            if mask[group]:
                assert torch.equal(got, whole), (mask, i)
            else:
                assert got.shape == (0,) and got.dtype == tensors["input"].dtype, (mask, i)


@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("mask", [(True, False, True), (False, True, False),
                                  (False, False, True)], ids=_mask_id)
def test_opcheck_backward_with_output_mask(cell, mask):
    """The fake kernels give the real ones' [0] results (torch.compile, export)."""
    _, tensors, batch_sizes = build_case(cell, 3, 3, 4, 5, 3, dtype=torch.float64)
    op, args = _backward_call(cell, tensors, batch_sizes, reverse=False)
    kwargs = {"output_mask": list(mask)}
    torch.library.opcheck(op, args, kwargs,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("N", [3, 6])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_a_one_step_backward_reads_no_output(cell, dtype, N, packed):
    """A call of one step saves no output for its backward (ops/_common.py,
    output_to_save) and hands the backward op h0 in its place: the op reads no output row
    when there is one step, so its gradients are those of the real output, bit for bit. A
    NaN output in its place changes no bit."""
    _, tensors, batch_sizes = build_case(cell, 1, N, 4, 5, 3, dtype=dtype, packed=packed)
    op, args = _backward_call(cell, tensors, batch_sizes, reverse=False)
    out_at = 10 if is_lstm(cell) else 7
    *real, _ = op(*args)
    args = list(args)
    args[out_at] = torch.full_like(args[out_at], float("nan"))
    *stand_in, _ = op(*args)
    for i, (a, b) in enumerate(zip(real, stand_in)):
        assert torch.equal(a, b), i


MODULES = {
    "lstm": lambda: (torch.nn.LSTM(4, 6, num_layers=2), gatedrnn.LSTM(4, 6, num_layers=2)),
    "lstm_proj": lambda: (torch.nn.LSTM(4, 6, num_layers=2, proj_size=3),
                          gatedrnn.LSTM(4, 6, num_layers=2, proj_size=3)),
    "gru": lambda: (torch.nn.GRU(4, 6, num_layers=2, bidirectional=True),
                    gatedrnn.GRU(4, 6, num_layers=2, bidirectional=True)),
    "rnn": lambda: (torch.nn.RNN(4, 6, num_layers=2), gatedrnn.RNN(4, 6, num_layers=2)),
}


def _module_grads(module, x, state, frozen):
    """Output, and the gradients of x, the state and every parameter (None where none)."""
    for p in module.parameters():
        p.requires_grad_(not frozen)
    out, _ = module(x, state)
    out.sum().backward() if out.requires_grad else None
    states = state if isinstance(state, tuple) else (state,) if state is not None else ()
    return [out.detach(), x.grad, *[s.grad for s in states],
            *[p.grad for p in module.parameters()]]


def every_need(test):
    """Parametrizes test over what needs a gradient: the input (x_grad), the initial state
    (state: none given, given without a gradient as a decoder's detached state, given with
    one), the parameters (frozen or not)."""
    for mark in (pytest.mark.parametrize("x_grad", [True, False], ids=["x-grad", "x-data"]),
                 pytest.mark.parametrize("state", ["none", "detached", "grad"]),
                 pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen"])):
        test = mark(test)
    return test


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("T", [1, 5])
@every_need
def test_module_gradients_as_torch_nn(name, T, x_grad, state, frozen):
    """Every combination of what needs a gradient (the input, the initial state: none
    given, given without a gradient as a decoder's detached state, given with one; the
    weights trained or frozen) gives torch.nn's gradients, and None where torch.nn has
    none."""
    torch.manual_seed(0)
    ref, ours = (m.double() for m in MODULES[name]())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, 3, 4, dtype=torch.float64)
    layers = 2 * (2 if ref.bidirectional else 1)
    proj = getattr(ref, "proj_size", 0) or ref.hidden_size
    h0 = torch.randn(layers, 3, proj, dtype=torch.float64)
    c0 = torch.randn(layers, 3, ref.hidden_size, dtype=torch.float64)

    def args():
        xs = x.clone().requires_grad_(x_grad)
        if state == "none":
            return xs, None
        hs = [h0.clone().requires_grad_(state == "grad")]
        if isinstance(ref, torch.nn.LSTM):
            hs.append(c0.clone().requires_grad_(state == "grad"))
        return xs, tuple(hs) if len(hs) > 1 else hs[0]

    expected = _module_grads(ref, *args(), frozen)
    got = _module_grads(ours, *args(), frozen)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert (g is None) == (e is None), i
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_compiled_backward_without_input_and_state_gradients(cell):
    """torch.compile (fullgraph, aot_eager) of a call whose input and initial state need
    no gradient, only the weights: the traced backward passes the same output_mask."""
    torch._dynamo.reset()
    _, tensors, batch_sizes = build_case(cell, 4, 3, 4, 5, dtype=torch.float64)
    f = _functional_fn(cell, False, with_hx=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (f, compiled):
        leaves = {k: v.detach().clone() for k, v in tensors.items()}
        weights = as_leaves({k: v for k, v in leaves.items() if k.startswith(("w_", "b_"))})
        leaves.update(weights)
        results.append(loss_and_grads(_call(fn, leaves, batch_sizes), weights))
    eager, got = results
    assert set(got) == set(eager)
    for k in eager:
        torch.testing.assert_close(got[k], eager[k], rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()


# per-step resets are for unidirectional modules
UNIDIRECTIONAL = dict(MODULES, gru=lambda: (torch.nn.GRU(4, 6, num_layers=2),
                                            gatedrnn.GRU(4, 6, num_layers=2)))


@pytest.mark.parametrize("name", list(UNIDIRECTIONAL))
@pytest.mark.parametrize("T", [1, 6])
def test_resets_and_monitor_unchanged_without_state_gradients(name, T):
    """With per-step resets (rows restart from h0 inside the kernels) and the gradient-norm
    monitor on, an initial state without a gradient leaves the input and weight gradients
    and the recorded norms bit for bit what they are when it has one."""
    torch.manual_seed(0)
    _, ours = (m.double() for m in UNIDIRECTIONAL[name]())
    x = torch.randn(T, 3, 4, dtype=torch.float64)
    reset = torch.rand(T, 3) < 0.4
    proj = getattr(ours, "proj_size", 0) or ours.hidden_size
    h0 = torch.randn(2, 3, proj, dtype=torch.float64)
    c0 = torch.randn(2, 3, ours.hidden_size, dtype=torch.float64)
    results = []
    for state_grad in (True, False):
        ours.zero_grad()
        xs = x.clone().requires_grad_()
        hs = [h0.clone().requires_grad_(state_grad)]
        if isinstance(ours, gatedrnn.LSTM):
            hs.append(c0.clone().requires_grad_(state_grad))
        out, _ = ours(xs, tuple(hs) if len(hs) > 1 else hs[0], reset=reset)
        with gatedrnn.grad_norms() as rec:
            (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        assert all(h.grad is None for h in hs) != state_grad
        results.append((xs.grad, [p.grad for p in ours.parameters()], rec[ours]))
    (x_a, params_a, rec_a), (x_b, params_b, rec_b) = results
    assert torch.equal(x_a, x_b)
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert sorted(rec_a) == sorted(rec_b)
    assert all(torch.equal(rec_a[k], rec_b[k]) for k in rec_a)


# The row-wise ops: the layer-normalized cells, and the plain cells where a regularizer
# needs the time loop (zoneout in evaluation is deterministic; recurrent_grad_clip)
ROW_WISE = {
    "ln_lstm": lambda: gatedrnn.LayerNormLSTM(4, 6, num_layers=2),
    "ln_gru": lambda: gatedrnn.LayerNormGRU(4, 6, num_layers=2),
    "lstm_zoneout": lambda: gatedrnn.LSTM(4, 6, num_layers=2, zoneout=0.3,
                                          cell_zoneout=0.2).eval(),
    "gru_clip": lambda: gatedrnn.GRU(4, 6, num_layers=2, recurrent_grad_clip=0.05),
}


def _row_wise_grads(name, T, x_grad, state, frozen):
    torch.manual_seed(0)
    module = ROW_WISE[name]().double()
    for p in module.parameters():
        p.requires_grad_(not frozen)
    x = torch.randn(T, 3, 4, dtype=torch.float64).requires_grad_(x_grad)
    hx = None
    if state != "none":
        hs = [torch.randn(2, 3, 6, dtype=torch.float64).requires_grad_(state == "grad")]
        if "lstm" in name:
            hs.append(torch.randn(2, 3, 6, dtype=torch.float64).requires_grad_(state == "grad"))
        hx = tuple(hs) if len(hs) > 1 else hs[0]
    out, _ = module(x, hx)
    with gatedrnn.grad_norms() as rec:
        if out.requires_grad:
            (out * torch.linspace(-1, 1, 6, dtype=out.dtype)).sum().backward()
    states = hx if isinstance(hx, tuple) else (hx,) if hx is not None else ()
    norms = rec[module] if out.requires_grad else {}
    return [x.grad, *[s.grad for s in states], *[p.grad for p in module.parameters()]], norms


@pytest.mark.parametrize("name", list(ROW_WISE))
@pytest.mark.parametrize("T", [1, 6])
@every_need
def test_row_wise_gradients_as_when_everything_needs_one(name, T, x_grad, state, frozen):
    """The row-wise ops (which have no torch.nn counterpart) make each gradient that is
    needed bit for bit as when every input needs one, None for the others, and record
    the same gradient norms."""
    got, got_norms = _row_wise_grads(name, T, x_grad, state, frozen)
    full, full_norms = _row_wise_grads(name, T, True, "grad" if state != "none" else "none",
                                       False)
    assert len(got) == len(full)
    n_states = len(got) - 1 - sum(1 for _ in ROW_WISE[name]().parameters())
    wanted = [x_grad] + [state == "grad"] * n_states + [not frozen] * (len(got) - 1 - n_states)
    for i, (g, f, w) in enumerate(zip(got, full, wanted)):
        assert (g is not None) == w, i
        if w:
            assert torch.equal(g, f), i
    if got_norms:
        assert sorted(got_norms) == sorted(full_norms)
        assert all(torch.equal(got_norms[k], full_norms[k]) for k in got_norms)
