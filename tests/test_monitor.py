"""gatedrnn.grad_norms (python/gatedrnn/monitor.py), the per-timestep gradient-norm monitor,
as a spec.

    with gatedrnn.grad_norms() as rec:
        loss.backward()
    rec[module]["h"]   # [layers * directions, T] float64: ||dL/dh_t||_2 per layer-direction
    rec[module]["c"]   # the LSTMs: ||dL/dc_t||_2

The oracle: the module's math written here as a Python loop over layers, directions and
steps, one sequence at a time, on the module's own parameters in float64; every state h_t
(and c_t) it makes is kept with retain_grad(), the same loss (a random linear function of
the output, h_n and c_n) is backpropagated, and the norm of a step is the 2-norm of the
retained gradients of the sequences alive at that step. A retained gradient is the total
one: from the output at t, from the next step (and the next layer), and from h_n / c_n.

What is checked:
  1. every cell (LSTM, GRU, RNN tanh and relu, LayerNormLSTM, LayerNormGRU), one layer and
     two bidirectional layers, every input form (padded, batch_first, packed sorted and
     unsorted, unbatched), in float64 against the oracle; float32 within 1e-4 of it;
  2. the LSTM's projection ("h" is the projected state's gradient); the row-wise options
     (zoneout and cell_zoneout in evaluation, recurrent_grad_clip in training) against the
     oracle with the same math, and a huge clip equal to no clip;
  3. off by default (nothing deposited, gradients bit-identical with and without the
     recorder), the forward inside or outside the block, the thread count;
  4. rec.runs, KeyError, nested recorders, create_graph=True and torch.compile (not
     recorded), a vanishing-gradient sanity property;
  5. the backward ops' step_norms output (sums of squares [T, kinds] float64, [0, kinds]
     when not asked for) and their fake kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn import monitor

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)
TOL32 = dict(rtol=1e-4, atol=1e-6)

CELLS = ("LSTM", "GRU", "RNN-tanh", "RNN-relu", "LayerNormLSTM", "LayerNormGRU")
LSTMS = ("LSTM", "LayerNormLSTM")
KINDS = ("padded", "batch_first", "packed", "packed_unsorted", "unbatched")
LAYOUTS = {"1layer": (1, False), "2layers_bidir": (2, True)}
#: The sequence lengths of each input kind (T = 5 steps).
T = 5
LENGTHS = {"padded": [T] * 3, "batch_first": [T] * 3, "packed": [T, 3, 1],
           "packed_unsorted": [3, 1, T, 2], "unbatched": [T]}
I, H = 3, 4


# --------------------------------------------------------------------------
# modules, inputs, losses
# --------------------------------------------------------------------------


def make_module(cell, layers=1, bidirectional=False, *, dtype=DT, batch_first=False,
                **options):
    """gatedrnn's module for `cell`; LayerNorm gains 1 + 0.3 randn and shifts 0.3 randn, so
    that no LayerNorm is the identity."""
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
              dtype=dtype, **options)
    if cell.startswith("RNN"):
        m = gatedrnn.RNN(I, H, nonlinearity=cell.split("-")[1], **kw)
    else:
        m = getattr(gatedrnn, cell)(I, H, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_weight_"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.startswith("ln_bias_"):
                p.copy_(0.3 * torch.randn_like(p))
    return m


def directions(m):
    return 2 if m.bidirectional else 1


def state_size(m):
    return getattr(m, "proj_size", 0) or m.hidden_size


def is_lstm(m):
    return isinstance(m, (gatedrnn.LSTM, gatedrnn.LayerNormLSTM))


class Case:
    """The data of one run, in float64, in the padded time-major layout whatever the input
    kind: seqs (one [L_b, I] tensor per sequence), h0 [S, N, P], c0 [S, N, H] (LSTMs), and
    the loss weights w_out [T, N, D * P], w_h [S, N, P], w_c [S, N, H]; S = layers *
    directions. loss = <output, w_out> + <h_n, w_h> + <c_n, w_c> (padding excluded)."""

    def __init__(self, m, kind, lengths=None, scale=1.0):
        self.kind = kind
        self.lengths = list(lengths or LENGTHS[kind])
        self.T = max(self.lengths)
        N = len(self.lengths)
        S = m.num_layers * directions(m)
        P = state_size(m)
        self.seqs = [torch.randn(n, m.input_size, dtype=DT) for n in self.lengths]
        self.h0 = 0.5 * torch.randn(S, N, P, dtype=DT)
        self.c0 = 0.5 * torch.randn(S, N, m.hidden_size, dtype=DT) if is_lstm(m) else None
        self.w_out = scale * torch.randn(self.T, N, directions(m) * P, dtype=DT)
        self.w_h = scale * torch.randn(S, N, P, dtype=DT)
        self.w_c = scale * torch.randn(S, N, m.hidden_size, dtype=DT) if is_lstm(m) else None

    def rounded(self, dtype):
        """This case with every tensor rounded to dtype (kept in float64)."""
        r = lambda t: None if t is None else t.to(dtype).to(DT)  # noqa: E731
        self.seqs = [r(s) for s in self.seqs]
        self.h0, self.c0 = r(self.h0), r(self.c0)
        self.w_out, self.w_h, self.w_c = r(self.w_out), r(self.w_h), r(self.w_c)
        return self


def module_loss(m, case):
    """The module's forward on the case's input in its kind, and the loss."""
    dt = next(m.parameters()).dtype
    x = torch.zeros(case.T, len(case.seqs), m.input_size, dtype=dt)
    for b, s in enumerate(case.seqs):
        x[:len(s), b] = s.to(dt)
    h0 = case.h0.to(dt)
    c0 = None if case.c0 is None else case.c0.to(dt)
    if case.kind == "unbatched":
        x, h0, c0 = x[:, 0], h0[:, 0], None if c0 is None else c0[:, 0]
    elif case.kind == "batch_first":
        assert m.batch_first
        x = x.transpose(0, 1)
    elif case.kind.startswith("packed"):
        x = pack_padded_sequence(x, torch.tensor(case.lengths),
                                 enforce_sorted=case.kind == "packed")
    out, hidden = m(x, (h0, c0) if c0 is not None else h0)
    h_n, c_n = hidden if c0 is not None else (hidden, None)
    if case.kind.startswith("packed"):
        out = pad_packed_sequence(out, total_length=case.T)[0]
    elif case.kind == "batch_first":
        out = out.transpose(0, 1)
    elif case.kind == "unbatched":
        out, h_n = out.unsqueeze(1), h_n.unsqueeze(1)
        c_n = None if c_n is None else c_n.unsqueeze(1)
    loss = (out * case.w_out.to(dt)).sum() + (h_n * case.w_h.to(dt)).sum()
    if c_n is not None:
        loss = loss + (c_n * case.w_c.to(dt)).sum()
    return loss


def record(m, case):
    """rec[m] after the forward (outside) and the backward (inside the recorder)."""
    loss = module_loss(m, case)
    with gatedrnn.grad_norms() as rec:
        loss.backward()
    return rec[m]


# --------------------------------------------------------------------------
# the oracle
# --------------------------------------------------------------------------


def _norm(v, gain, shift):
    """LayerNorm over the last dimension (eps 1e-5, biased variance); v if gain is None."""
    if gain is None:
        return v
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    y = (v - mean) / torch.sqrt(var + 1e-5) * gain
    return y if shift is None else y + shift


def _clamp(c):
    return lambda g: g.clamp(-c, c)


def _params(m, layer, direction):
    sfx = f"_l{layer}" + ("_reverse" if direction else "")

    def get(name):
        p = getattr(m, name + sfx, None)
        return None if p is None else p.detach().to(DT)

    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "ln_weight_ih",
             "ln_bias_ih", "ln_weight_hh", "ln_bias_hh", "ln_weight_cell", "ln_bias_cell")
    return {n: get(n) for n in names}


def _step(m, p, x, h, c, zoneout, clip):
    """One step of the module's cell on x [1, I]: (h', c') (c' None but for the LSTMs)."""
    ih = _norm(x @ p["weight_ih"].t(), p["ln_weight_ih"], p["ln_bias_ih"])
    hh = _norm(h @ p["weight_hh"].t(), p["ln_weight_hh"], p["ln_bias_hh"])
    if is_lstm(m):
        pre = ih + hh + p["bias_ih"] + p["bias_hh"]
        if clip:
            pre.register_hook(_clamp(clip))
        i, f, g, o = pre.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(_norm(c_new, p["ln_weight_cell"],
                                                    p["ln_bias_cell"]))
        if p["weight_hr"] is not None:
            h_new = h_new @ p["weight_hr"].t()
        if zoneout:
            h_new = zoneout * h + (1 - zoneout) * h_new
        return h_new, c_new
    if isinstance(m, (gatedrnn.GRU, gatedrnn.LayerNormGRU)):
        xr, xz, xn = (ih + p["bias_ih"]).chunk(3, 1)
        hr, hz, hn = (hh + p["bias_hh"]).chunk(3, 1)
        r_pre, z_pre = xr + hr, xz + hz
        n_pre = xn + torch.sigmoid(r_pre) * hn
        if clip:
            for v in (r_pre, z_pre, n_pre):
                v.register_hook(_clamp(clip))
        z = torch.sigmoid(z_pre)
        h_new = (1 - z) * torch.tanh(n_pre) + z * h
        if zoneout:
            h_new = zoneout * h + (1 - zoneout) * h_new
        return h_new, None
    act = torch.relu if m.nonlinearity == "relu" else torch.tanh
    return act(ih + p["bias_ih"] + hh + p["bias_hh"]), None


def oracle(m, case, zoneout=0.0, clip=0.0, cell_zoneout=0.0):
    """{"h": [S, T], ("c": [S, T])}: the norms of the retained gradients of a Python loop
    over sequences, layers, directions and steps, on m's parameters in float64. With
    cell_zoneout p the cell state is p c + (1 - p) c~ and "c" is the gradient of the step's
    new cell value c~."""
    D = directions(m)
    S = m.num_layers * D
    kinds = 2 if is_lstm(m) else 1
    kept = []  # (kind, slot, t, state)
    loss = 0
    for b, x in enumerate(case.seqs):
        L = len(x)
        layer_input = x
        finals = [[] for _ in range(kinds)]
        for layer in range(m.num_layers):
            outputs = []
            for d in range(D):
                slot = layer * D + d
                p = _params(m, layer, d)
                h = case.h0[slot, b:b + 1].clone().requires_grad_()
                c = case.c0[slot, b:b + 1].clone().requires_grad_() if kinds == 2 else None
                ys = [None] * L
                for t in (range(L - 1, -1, -1) if d else range(L)):
                    h, c_new = _step(m, p, layer_input[t:t + 1], h, c, zoneout, clip)
                    for kind, state in enumerate((h, c_new)[:kinds]):
                        state.retain_grad()
                        kept.append((kind, slot, t, state))
                    c = cell_zoneout * c + (1 - cell_zoneout) * c_new if cell_zoneout else c_new
                    ys[t] = h
                outputs.append(torch.cat(ys))
                finals[0].append(h)
                if kinds == 2:
                    finals[1].append(c)
            layer_input = torch.cat(outputs, -1)
        loss = loss + (layer_input * case.w_out[:L, b]).sum()
        loss = loss + (torch.cat(finals[0]) * case.w_h[:, b]).sum()
        if kinds == 2:
            loss = loss + (torch.cat(finals[1]) * case.w_c[:, b]).sum()
    loss.backward()
    squares = torch.zeros(kinds, S, case.T, dtype=DT)
    for kind, slot, t, state in kept:
        assert state.grad is not None
        squares[kind, slot, t] += state.grad.pow(2).sum()
    norms = squares.sqrt()
    return dict(zip(("h", "c"), norms))


def assert_record(got, expected, **tol):
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    for k in expected:
        assert got[k].dtype == torch.float64 and got[k].device.type == "cpu", k
        assert got[k].shape == expected[k].shape, (k, got[k].shape, expected[k].shape)
        torch.testing.assert_close(got[k], expected[k], **(tol or TOL),
                                   msg=lambda msg, k=k: f'rec["{k}"]: {msg}')


def assert_records_equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), (k, a[k], b[k])


# --------------------------------------------------------------------------
# 1. every cell and input kind against the oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("cell", CELLS)
def test_norms_equal_the_retained_state_gradients_of_a_python_loop(cell, layout, kind):
    layers, bidirectional = LAYOUTS[layout]
    m = make_module(cell, layers, bidirectional, batch_first=kind == "batch_first")
    case = Case(m, kind)
    got = record(m, case)
    assert got["h"].shape == (layers * (2 if bidirectional else 1), case.T)
    assert_record(got, oracle(m, case))


@pytest.mark.parametrize("kind", ["padded", "packed_unsorted", "unbatched"])
@pytest.mark.parametrize("cell", CELLS)
def test_float32_norms_are_within_1e_4_of_the_float64_loop(cell, kind):
    m = make_module(cell, 2, True, dtype=torch.float32)
    case = Case(m, kind).rounded(torch.float32)
    got = record(m, case)
    assert_record(got, oracle(m, case), **TOL32)


@pytest.mark.parametrize("kind", ["padded", "packed_unsorted"])
def test_lstm_projection_h_is_the_projected_state_gradient_and_c_the_cells(kind):
    m = make_module("LSTM", 2, True, proj_size=2)
    case = Case(m, kind)
    assert case.h0.shape[-1] == 2 and case.c0.shape[-1] == H
    got = record(m, case)
    assert got["h"].shape == got["c"].shape == (4, case.T)
    assert_record(got, oracle(m, case))


# --------------------------------------------------------------------------
# 2. the row-wise options
# --------------------------------------------------------------------------

ROW_WISE_CELLS = ("LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU")
CLIP = 0.05


@pytest.mark.parametrize("kind", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("cell", ROW_WISE_CELLS)
def test_zoneout_in_evaluation_mode_matches_the_loop(cell, kind):
    """zoneout p in evaluation: h' = p h + (1 - p) h~, deterministic."""
    m = make_module(cell, 2, True, zoneout=0.3).eval()
    case = Case(m, kind)
    expected = oracle(m, case, zoneout=0.3)
    assert_record(record(m, case), expected)
    # the option is in force: the loop without it differs
    assert not torch.allclose(expected["h"], oracle(m, case)["h"], rtol=1e-3)


@pytest.mark.parametrize("kind", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("cell", ROW_WISE_CELLS)
def test_recurrent_grad_clip_matches_a_hook_clamped_loop(cell, kind):
    """recurrent_grad_clip c in training: every gate pre-activation's gradient is clamped
    to [-c, c] before it flows on; the recorded norms are those of the clamped flow."""
    m = make_module(cell, 2, True, recurrent_grad_clip=CLIP).train()
    case = Case(m, kind, scale=3.0)
    expected = oracle(m, case, clip=CLIP)
    assert_record(record(m, case), expected)
    # the clamp is active: the loop without it differs
    assert not torch.allclose(expected["h"], oracle(m, case)["h"], rtol=1e-3)


@pytest.mark.parametrize("cell", LSTMS)
def test_with_cell_zoneout_c_is_the_gradient_of_the_steps_new_cell_value(cell):
    """cell_zoneout p in evaluation: c' = p c + (1 - p) c~; "c" is the gradient reaching c~
    (from h~ and from c'), "h" still the state's."""
    m = make_module(cell, 2, True, zoneout=0.3, cell_zoneout=0.4).eval()
    case = Case(m, "packed_unsorted")
    expected = oracle(m, case, zoneout=0.3, cell_zoneout=0.4)
    assert_record(record(m, case), expected)
    assert not torch.allclose(expected["c"], oracle(m, case, zoneout=0.3)["c"], rtol=1e-3)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_huge_recurrent_grad_clip_records_what_the_unclipped_module_does(cell):
    """1e9 clamps nothing: the row-wise ops record the fused ops' values."""
    clipped = make_module(cell, 2, True, recurrent_grad_clip=1e9).train()
    plain = make_module(cell, 2, True).train()
    plain.load_state_dict(clipped.state_dict())
    case = Case(plain, "packed_unsorted")
    got = record(clipped, case)
    assert torch.isfinite(got["h"]).all()
    assert_record(got, record(plain, case))


# --------------------------------------------------------------------------
# 3. off by default, where the forward runs, thread count
# --------------------------------------------------------------------------

#: Every cell, and the plain LSTM and GRU on the row-wise ops.
VARIANTS = {c: (c, {}, False) for c in CELLS}
VARIANTS.update({"LSTM-zoneout-eval": ("LSTM", dict(zoneout=0.3), False),
                 "GRU-zoneout-eval": ("GRU", dict(zoneout=0.3), False),
                 "LSTM-grad-clip": ("LSTM", dict(recurrent_grad_clip=CLIP), True),
                 "GRU-grad-clip": ("GRU", dict(recurrent_grad_clip=CLIP), True)})


def make_variant(name, layers=2, bidirectional=True):
    cell, options, training = VARIANTS[name]
    return make_module(cell, layers, bidirectional, **options).train(training)


def gradients(m, case, recorder: bool):
    """Every parameter's gradient of the case's loss, the backward inside a recorder or
    not; also the record (None outside)."""
    m.zero_grad(set_to_none=True)
    loss = module_loss(m, case)
    if recorder:
        with gatedrnn.grad_norms() as rec:
            loss.backward()
        got = rec[m]
    else:
        loss.backward()
        got = None
    return {n: p.grad.clone() for n, p in m.named_parameters()}, got


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_outside_a_recorder_nothing_is_deposited(variant, monkeypatch):
    deposits = []
    original = monitor._Run.deposit

    def spy(self, slot, step_norms):
        deposits.append(slot)
        return original(self, slot, step_norms)

    monkeypatch.setattr(monitor._Run, "deposit", spy)
    m = make_variant(variant)
    case = Case(m, "packed_unsorted")
    gradients(m, case, recorder=False)
    assert deposits == []
    with gatedrnn.grad_norms() as rec:
        pass
    assert m not in rec and rec.runs(m) == []
    # the spy sees deposits where there are any: one per layer-direction
    gradients(m, case, recorder=True)
    assert sorted(deposits) == [0, 1, 2, 3]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_are_bit_identical_with_and_without_the_recorder(variant):
    m = make_variant(variant)
    for kind in ("padded", "packed_unsorted"):
        case = Case(m, kind)
        without, _ = gradients(m, case, recorder=False)
        with_, _ = gradients(m, case, recorder=True)
        assert list(without) == list(with_)
        for name in without:
            assert torch.equal(without[name], with_[name]), (kind, name)


@pytest.mark.parametrize("cell", CELLS)
def test_the_record_does_not_depend_on_where_the_forward_ran(cell):
    m = make_module(cell, 2, True)
    case = Case(m, "packed_unsorted")
    outside = record(m, case)
    with gatedrnn.grad_norms() as rec:
        module_loss(m, case).backward()
    assert_records_equal(rec[m], outside)


@pytest.mark.parametrize("variant", ["LSTM", "GRU", "RNN-tanh", "LayerNormLSTM",
                                     "LayerNormGRU", "LSTM-zoneout-eval", "GRU-grad-clip"])
def test_the_record_does_not_depend_on_the_thread_count(variant):
    cell, options, training = VARIANTS[variant]
    m = make_module(cell, 2, True, **options).train(training)
    lengths = [7, 3, 6, 1, 7, 2] * 6  # 36 sequences
    case = Case(m, "packed_unsorted", lengths=lengths)
    threads = torch.get_num_threads()
    records = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            records.append(record(m, case))
    finally:
        torch.set_num_threads(threads)
    assert_records_equal(records[0], records[1])


# --------------------------------------------------------------------------
# 4. runs, KeyError, nesting, create_graph, torch.compile, vanishing gradients
# --------------------------------------------------------------------------


def test_runs_lists_one_record_per_forward_call_in_forward_order():
    m = make_module("LSTM", 2, True)
    first = Case(m, "padded", lengths=[5, 5])
    second = Case(m, "packed_unsorted", lengths=[2, 3, 1])
    alone = [record(m, first), record(m, second)]
    loss_first = module_loss(m, first)
    loss_second = module_loss(m, second)
    with gatedrnn.grad_norms() as rec:
        (loss_second + loss_first).backward()
    runs = rec.runs(m)
    assert len(runs) == 2
    assert [r["h"].shape[1] for r in runs] == [5, 3]
    for got, expected in zip(runs, alone):
        assert_records_equal(got, expected)
    assert_records_equal(rec[m], runs[-1])
    assert m in rec


def test_an_unknown_module_is_a_key_error_that_says_why():
    m = make_module("GRU")
    other = make_module("GRU")
    case = Case(m, "padded")
    with gatedrnn.grad_norms() as rec:
        module_loss(m, case).backward()
    assert m in rec and other not in rec
    assert rec.runs(other) == []
    with pytest.raises(KeyError, match=r"no backward of this GRU ran inside the recorder"):
        rec[other]
    with pytest.raises(KeyError, match=r"grad_norms"):
        rec[torch.nn.Linear(2, 2)]


def test_a_module_whose_backward_ran_outside_the_block_is_a_key_error():
    m = make_module("LSTM")
    case = Case(m, "padded")
    with gatedrnn.grad_norms() as rec:
        loss = module_loss(m, case)  # the forward inside, the backward after the block
    loss.backward()
    assert m not in rec and rec.runs(m) == []
    with pytest.raises(KeyError, match=r"no backward of this LSTM ran inside"):
        rec[m]


def test_nested_recorders_both_receive_the_record():
    m = make_module("LayerNormLSTM", 2, True)
    case = Case(m, "packed")
    expected = oracle(m, case)
    first, second = module_loss(m, case), module_loss(m, case)
    with gatedrnn.grad_norms() as outer:
        with gatedrnn.grad_norms() as inner:
            first.backward()
        second.backward()  # inside outer only
    assert_record(inner[m], expected)
    assert_record(outer[m], expected)
    assert len(inner.runs(m)) == 1 and len(outer.runs(m)) == 2


@pytest.mark.parametrize("cell", CELLS)
def test_a_create_graph_backward_is_not_recorded_and_its_gradients_are_right(cell):
    m = make_module(cell, 2, True)
    case = Case(m, "packed_unsorted")
    params = list(m.parameters())
    expected = torch.autograd.grad(module_loss(m, case), params)
    loss = module_loss(m, case)
    with gatedrnn.grad_norms() as rec:
        got = torch.autograd.grad(loss, params, create_graph=True)
    assert m not in rec
    with pytest.raises(KeyError):
        rec[m]
    assert any(g.requires_grad for g in got)  # a graph was made
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_a_compiled_module_is_not_recorded_and_does_not_fail(backend):
    torch._dynamo.reset()
    try:
        m = make_module("LSTM", 2, True)
        compiled = torch.compile(m, backend=backend, fullgraph=True)
        case = Case(m, "padded")
        expected, _ = gradients(m, case, recorder=False)
        m.zero_grad(set_to_none=True)
        loss = module_loss(compiled, case)
        with gatedrnn.grad_norms() as rec:
            loss.backward()
        assert m not in rec and compiled not in rec
        for name, p in m.named_parameters():
            torch.testing.assert_close(p.grad, expected[name], **TOL)
    finally:
        torch._dynamo.reset()


def test_small_recurrent_weights_make_h_norms_vanish_away_from_the_loss():
    """A tanh RNN with w_hh scaled by 0.1 and the loss on the last output only: the gradient
    reaching h_t shrinks with each step back from T - 1."""
    torch.manual_seed(0)
    m = gatedrnn.RNN(I, 8, nonlinearity="tanh", dtype=DT)
    with torch.no_grad():
        m.weight_hh_l0.mul_(0.1)
    N, steps = 4, 8
    x = torch.randn(steps, N, I, dtype=DT)
    out, _ = m(x)
    with gatedrnn.grad_norms() as rec:
        out[-1].sum().backward()
    h = rec[m]["h"][0]
    assert h.shape == (steps,)
    assert torch.all(h[1:] > h[:-1]), h
    torch.testing.assert_close(h[-1], torch.tensor((N * 8) ** 0.5, dtype=DT))  # d/dh = 1
    assert h[0] < 1e-3 * h[-1], h


# --------------------------------------------------------------------------
# 5. the backward ops' step_norms output and their fake kernels
# --------------------------------------------------------------------------


def backward_call(cell, kind, record_norms):
    """(backward op, args, kwargs, T, kinds, module, case) for a one-layer forward-direction
    op call on a module's weights, the case's loss weights as the incoming gradients;
    record_norms by keyword."""
    m = make_module(cell)
    case = Case(m, kind)
    ops = torch.ops.gatedrnn
    p = {n: getattr(m, n + "_l0").detach() for n in ("weight_ih", "weight_hh", "bias_ih",
                                                      "bias_hh")}
    ln = {n: getattr(m, f"ln_{n}_l0", None) for n in ("weight_ih", "bias_ih", "weight_hh",
                                                      "bias_hh", "weight_cell", "bias_cell")}
    ln = {n: None if v is None else v.detach() for n, v in ln.items()}
    x = torch.zeros(case.T, len(case.seqs), I, dtype=DT)
    for b, s in enumerate(case.seqs):
        x[:len(s), b] = s
    g_out = case.w_out
    batch_sizes = None
    if kind == "packed":
        lengths = torch.tensor(case.lengths)
        packed = pack_padded_sequence(x, lengths)
        x, batch_sizes = packed.data, packed.batch_sizes
        g_out = pack_padded_sequence(case.w_out, lengths).data
    h0, g_h = case.h0[0], case.w_h[0]
    c0, g_c = (case.c0[0], case.w_c[0]) if case.c0 is not None else (None, None)
    w = (p["weight_ih"], p["weight_hh"])
    b = (p["bias_ih"], p["bias_hh"])
    kwargs = dict(record_norms=record_norms)
    if cell == "LSTM":
        out, _, _, ws = ops.lstm_forward(x, batch_sizes, h0, c0, *w, *b, None, False)
        args = (g_out, g_h, g_c, x, batch_sizes, h0, c0, *w, None, out, ws, False)
        return ops.lstm_backward, args, kwargs, case.T, 2, m, case
    if cell == "GRU":
        out, _, ws = ops.gru_forward(x, batch_sizes, h0, *w, *b, False)
        args = (g_out, g_h, x, batch_sizes, h0, *w, out, ws, False)
        return ops.gru_backward, args, kwargs, case.T, 1, m, case
    if cell.startswith("RNN"):
        act = cell.split("-")[1]
        out, _ = ops.rnn_forward(x, batch_sizes, h0, *w, *b, act, False)
        args = (g_out, g_h, x, batch_sizes, h0, *w, out, act, False)
        return ops.rnn_backward, args, kwargs, case.T, 1, m, case
    if cell == "LayerNormLSTM":
        out, _, _, ws = ops.layer_norm_lstm_forward(
            x, batch_sizes, h0, c0, *w, *b, ln["weight_ih"], ln["bias_ih"], ln["weight_hh"],
            ln["bias_hh"], ln["weight_cell"], ln["bias_cell"], None, None, None, False)
        args = (g_out, g_h, g_c, x, batch_sizes, h0, c0, *w, ln["weight_ih"],
                ln["weight_hh"], ln["weight_cell"], None, None, None, out, ws, False)
        return ops.layer_norm_lstm_backward, args, kwargs, case.T, 2, m, case
    out, _, ws = ops.layer_norm_gru_forward(
        x, batch_sizes, h0, *w, *b, ln["weight_ih"], ln["bias_ih"], ln["weight_hh"],
        ln["bias_hh"], None, None, False)
    args = (g_out, g_h, x, batch_sizes, h0, *w, ln["weight_ih"], ln["weight_hh"], None, None,
            out, ws, False)
    return ops.layer_norm_gru_backward, args, kwargs, case.T, 1, m, case


@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("cell", CELLS)
def test_backward_ops_return_the_sums_of_squares_when_asked(cell, kind):
    op, args, kwargs, steps, kinds, m, case = backward_call(cell, kind, True)
    step_norms = op(*args, **kwargs)[-1]
    assert step_norms.shape == (steps, kinds) and step_norms.dtype == torch.float64
    expected = oracle(m, case)
    got = {k: step_norms[:, j].sqrt().unsqueeze(0) for j, k in enumerate(("h", "c")[:kinds])}
    assert_record(got, expected)

    op, args, kwargs, *_ = backward_call(cell, kind, False)
    step_norms = op(*args, **kwargs)[-1]
    assert step_norms.shape == (0, kinds) and step_norms.dtype == torch.float64


@pytest.mark.parametrize("record_norms", [True, False])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN-relu", "LayerNormLSTM", "LayerNormGRU"])
def test_backward_ops_fake_kernels_agree_with_the_real_ones(cell, record_norms):
    op, args, kwargs, *_ = backward_call(cell, "packed", record_norms)
    torch.library.opcheck(op, args, kwargs, test_utils=("test_schema", "test_faketensor"))
