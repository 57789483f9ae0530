"""The regularizers of gatedrnn.LSTM, GRU, LayerNormLSTM and LayerNormGRU, as a spec.

Constructor options, all 0 (off) by default:
  zoneout                    (Krueger et al. 2016) in training each unit keeps its previous
                             value with probability p, a fresh mask per step:
                             h_t = d h_{t-1} + (1 - d) h~_t, d ~ Bernoulli(p); in evaluation
                             d = p exactly
  cell_zoneout               (LSTMs only) the same on c: c_t = d_c c_{t-1} + (1 - d_c) c~_t,
                             where h~_t = s(o) tanh(c~_t) (LayerNormLSTM: tanh(LN_c(c~_t)))
                             is computed from the un-zoned c~_t
  recurrent_dropconnect      (Wan et al. 2013, AWD-LSTM) one Bernoulli mask on each w_hh
                             per forward call and layer-direction, kept entries / (1 - p)
  variational_input_dropout  (Gal & Ghahramani 2016) one mask [N, features] per sequence and
                             layer on the layer's input, shared by the steps and by both
                             directions, kept entries / (1 - p)
  variational_state_dropout  one mask [N, H] per sequence and layer-direction on h_{t-1]
                             where it enters the recurrent GEMM, W_hh (m * h), kept / (1 - p);
                             the GRU's z * h term takes the unmasked h
The dropout-like ones act in training only. Masks come from torch's default generator;
gatedrnn.functional.masks_from(source) replaces every draw by source(name, shape, p, like),
a 0/1 tensor, 1 where the event of probability p happens (dropped or zoned-out unit).

What is checked, in float64 unless said otherwise:
  1. every rate 0 is the default module, bit for bit (and torch.nn for the plain cells);
  2. the modules in training with masks fixed through masks_from against a network stacked
     here from reference.py with the same masks, in every input form;
  3. the fused ops' zoneout and state mask against a cell loop written here from the
     formulas above (not reference.py), plain LSTM and GRU;
  4. gradcheck and gradgradcheck of the ops with fixed masks;
  5. evaluation mode; 6. seeds; 7. statistics of the masks the modules draw themselves;
  8. errors; 9. repr, state_dict, convert; 10. torch.compile.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn import reference
from gatedrnn.functional import masks_from
from _row_wise_helpers import (Layout, assert_same, cotangents, module_results,  # noqa: E402
                               perturb_layer_norms)

CELLS = ("LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU")
MODULES = {"LSTM": gatedrnn.LSTM, "GRU": gatedrnn.GRU, "LayerNormLSTM": gatedrnn.LayerNormLSTM,
           "LayerNormGRU": gatedrnn.LayerNormGRU}
DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)

ALL_OPTIONS = ("zoneout", "cell_zoneout", "recurrent_dropconnect", "variational_input_dropout",
               "variational_state_dropout")
#: The rate behind each mask name masks_from's source is called with.
RATE_OF = {"zoneout_h": "zoneout", "zoneout_c": "cell_zoneout",
           "recurrent_dropconnect": "recurrent_dropconnect",
           "variational_input_dropout": "variational_input_dropout",
           "state_mask": "variational_state_dropout"}
#: Distinct non-zero rates, so that a rate used in the wrong place shows.
RATES = {"zoneout": 0.3, "cell_zoneout": 0.4, "recurrent_dropconnect": 0.35,
         "variational_input_dropout": 0.25, "variational_state_dropout": 0.45}


def is_lstm(cell):
    return cell.endswith("LSTM")


def has_ln(cell):
    return cell.startswith("LayerNorm")


def options(cell):
    return tuple(n for n in ALL_OPTIONS if is_lstm(cell) or n != "cell_zoneout")


def gates(cell):
    return 4 if is_lstm(cell) else 3


def all_rates(cell):
    return {n: RATES[n] for n in options(cell)}


# ---------------------------------------------------------------------------
# modules, inputs, runs
# ---------------------------------------------------------------------------


def make_module(cell, input_size=3, hidden_size=4, *, seed=0, dtype=DT, **kw):
    """A module (LayerNorm gains and shifts made non-trivial), in training mode."""
    torch.manual_seed(seed)
    module = MODULES[cell](input_size, hidden_size, dtype=dtype, **kw)
    perturb_layer_norms(module, seed + 100)
    return module.train()


def make_input(cell, module, layout, *, T=4, N=3, seed=1):
    """(input, hx) in one of the forms torch.nn takes: padded, unbatched, packed (sorted)
    or packed_unsorted (enforce_sorted=False)."""
    g = torch.Generator().manual_seed(seed)
    dtype = module.weight_ih_l0.dtype
    L = module.num_layers * (2 if module.bidirectional else 1)
    P = getattr(module, "proj_size", 0) or module.hidden_size

    def rnd(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

    x = rnd(T, N, module.input_size)
    if layout == "unbatched":
        inp = x[:, 0]
        shapes = [(L, P), (L, module.hidden_size)]
    else:
        shapes = [(L, N, P), (L, N, module.hidden_size)]
        if layout == "padded":
            inp = x.transpose(0, 1) if module.batch_first else x
        else:
            lengths = {"packed": [T, T - 1, 1], "packed_unsorted": [2, T, 1]}[layout][:N]
            x = x.transpose(0, 1) if module.batch_first else x
            inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=module.batch_first,
                                       enforce_sorted=layout == "packed")
    hx = tuple(0.5 * rnd(*s) for s in shapes[:2 if is_lstm(cell) else 1])
    return inp, (hx if is_lstm(cell) else hx[0])


def assert_identical(got: dict, expected: dict):
    assert list(got) == list(expected)
    for k in expected:
        assert got[k].dtype == expected[k].dtype and torch.equal(got[k], expected[k]), k


class MaskRecorder:
    """A masks_from source: Bernoulli(p) 0/1 masks from its own generator, each call
    recorded as (name, shape, p, mask), in order."""

    def __init__(self, seed=123):
        self.g = torch.Generator().manual_seed(seed)
        self.calls = []

    def __call__(self, name, shape, p, like):
        mask = (torch.rand(tuple(shape), generator=self.g, dtype=torch.float64) < p)
        mask = mask.to(like.dtype)
        self.calls.append((name, tuple(shape), p, mask))
        return mask

    def by_name(self):
        out = {}
        for name, shape, p, mask in self.calls:
            out.setdefault(name, []).append((shape, p, mask))
        return out


# ---------------------------------------------------------------------------
# the stacked reference, from reference.py and the masks' definitions
# ---------------------------------------------------------------------------


def _weights(module, cell, layer, direction):
    sfx = f"_l{layer}" + ("_reverse" if direction else "")

    def p(name):
        return getattr(module, name + sfx, None)

    w = dict(w_ih=p("weight_ih"), w_hh=p("weight_hh"), b_ih=p("bias_ih"), b_hh=p("bias_hh"),
             w_hr=p("weight_hr"))
    kinds = ("ih", "hh", "cell") if is_lstm(cell) else ("ih", "hh")
    norms = []
    for kind in kinds:
        norms += [p(f"ln_weight_{kind}"), p(f"ln_bias_{kind}")]
    return w, norms


def stacked_reference(cell, module, input, hx, masks, training):
    """What module(input, hx) must return: each layer-direction run by reference.py with
    the layer's input times its input dropout mask (per sequence, every step), w_hh times
    its dropconnect mask, the state mask keep / (1 - p) and zoneout's d: the masks
    recorded (masks: MaskRecorder.by_name()) in training, zoneout's p in evaluation.
    Every recorded mask must be used, and have the shape and rate the definition says."""
    rates = {n: getattr(module, n, 0.0) for n in options(cell)}
    L, D = module.num_layers, 2 if module.bidirectional else 1
    H = module.hidden_size
    layout = Layout(module, input)
    packed, data, batch_sizes, N = layout.packed, layout.data, layout.batch_sizes, layout.batch
    if packed:
        rows = data.shape[0]
        # each packed row's sequence (in the sorted batch)
        seq_of_row = torch.cat([torch.arange(int(n)) for n in batch_sizes])
    else:
        rows = data.shape[0] * N
    P = getattr(module, "proj_size", 0) or H
    kinds = 2 if is_lstm(cell) else 1
    states = layout.states(hx, (P, H)[:kinds], is_lstm(cell))
    pending = {name: list(v) for name, v in (masks or {}).items()}

    def take(name, shape):
        assert pending.get(name), f"no {name} mask was drawn where one is due"
        got_shape, p, mask = pending[name].pop(0)
        assert got_shape == tuple(shape), (name, got_shape, tuple(shape))
        assert p == rates[RATE_OF[name]], (name, p)
        assert tuple(mask.shape) == tuple(shape)
        return mask

    def keep(name, shape):
        return (1 - take(name, shape)) / (1 - rates[RATE_OF[name]])

    def zoneout(name):
        rate = rates.get(RATE_OF[name], 0.0)
        if not rate:
            return None
        if training:
            return take(name, (rows, H))
        return torch.full((rows, H), rate, dtype=data.dtype)

    finals = [[] for _ in range(kinds)]
    layer_input = data
    for layer in range(L):
        x = layer_input
        if training and rates["variational_input_dropout"]:
            k = keep("variational_input_dropout", (N, x.shape[-1]))
            x = x * (k[seq_of_row] if packed else k[None])
        outputs = []
        for direction in range(D):
            index = layer * D + direction
            w, norms = _weights(module, cell, layer, direction)
            w_hh = w["w_hh"]
            if training and rates["recurrent_dropconnect"]:
                w_hh = w_hh * keep("recurrent_dropconnect", w_hh.shape)
            state_mask = (keep("state_mask", (N, H))
                          if training and rates["variational_state_dropout"] else None)
            zh = zoneout("zoneout_h")
            s = [st[index] for st in states]
            if w["w_hr"] is not None:
                assert state_mask is None and zh is None
                out, *final = reference.lstm(x, batch_sizes, *s, w["w_ih"], w_hh, w["b_ih"],
                                             w["b_hh"], w["w_hr"], direction == 1)
            elif is_lstm(cell):
                out, *final = reference.layer_norm_lstm(
                    x, batch_sizes, *s, w["w_ih"], w_hh, w["b_ih"], w["b_hh"], *norms,
                    state_mask, zh, zoneout("zoneout_c"), direction == 1)
            else:
                out, *final = reference.layer_norm_gru(
                    x, batch_sizes, *s, w["w_ih"], w_hh, w["b_ih"], w["b_hh"], *norms,
                    state_mask, zh, direction == 1)
            outputs.append(out)
            for kind, f in enumerate(final):
                finals[kind].append(f)
        layer_input = torch.cat(outputs, dim=-1)
    leftover = {name: len(v) for name, v in pending.items() if v}
    assert not leftover, f"masks drawn beyond those due: {leftover}"
    return layout.results(layer_input, finals, is_lstm(cell))


def run_with_masks(cell, module, inp, hx, seed=123):
    """(the module's results with masks from a MaskRecorder, the reference's with the
    masks it recorded)."""
    recorder = MaskRecorder(seed)
    with masks_from(recorder):
        got = module_results(module, module, inp, hx)
    masks = recorder.by_name()
    expected = module_results(
        lambda i, h: stacked_reference(cell, module, i, h, masks, True), module, inp, hx)
    return got, expected, recorder


# ---------------------------------------------------------------------------
# 1. every rate 0 is the default module
# ---------------------------------------------------------------------------

ZERO_CONFIGS = [
    pytest.param(dict(num_layers=2, bidirectional=True), "padded", id="2layers-bi-padded"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), "packed_unsorted",
                 id="2layers-bi-batch_first-packed_unsorted"),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config,layout", ZERO_CONFIGS)
@pytest.mark.parametrize("zero", [0.0, 0], ids=["float0", "int0"])
def test_every_rate_zero_is_the_default_module_bitwise(cell, config, layout, zero):
    default = make_module(cell, **config)
    zeros = make_module(cell, **config, **{n: zero for n in options(cell)})
    for (n1, p1), (n2, p2) in zip(default.state_dict().items(), zeros.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    for n in options(cell):
        assert getattr(zeros, n) == 0
    inp, hx = make_input(cell, default, layout)
    for training in (True, False):
        default.train(training)
        zeros.train(training)
        torch.manual_seed(5)
        expected = module_results(default, default, inp, hx)
        torch.manual_seed(6)  # no randomness may enter
        got = module_results(zeros, zeros, inp, hx)
        assert_identical(got, expected)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("config,layout", ZERO_CONFIGS)
def test_plain_cells_with_rates_zero_are_torch_nn(cell, config, layout):
    ours = make_module(cell, **config, **{n: 0.0 for n in options(cell)})
    theirs = getattr(torch.nn, cell)(3, 4, dtype=DT, **config)
    theirs.load_state_dict(ours.state_dict())
    theirs.train()
    inp, hx = make_input(cell, ours, layout)
    got = module_results(ours, ours, inp, hx)
    expected = module_results(theirs, theirs, inp, hx)
    assert_same(got, expected, **TOL)


# ---------------------------------------------------------------------------
# 2. the modules in training with fixed masks against the stacked reference
# ---------------------------------------------------------------------------

MASK_CONFIGS = [
    pytest.param(dict(num_layers=1), "padded", id="1layer-padded"),
    pytest.param(dict(num_layers=2), "padded", id="2layers-padded"),
    pytest.param(dict(num_layers=2, bidirectional=True), "padded", id="2layers-bi-padded"),
    pytest.param(dict(bidirectional=True, batch_first=True), "padded", id="bi-batch_first"),
    pytest.param(dict(num_layers=2, bidirectional=True), "packed", id="2layers-bi-packed"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), "packed_unsorted",
                 id="2layers-bi-batch_first-packed_unsorted"),
    pytest.param(dict(num_layers=1, bias=False), "packed_unsorted", id="nobias-packed_unsorted"),
    pytest.param(dict(num_layers=2, bidirectional=True), "unbatched", id="2layers-bi-unbatched"),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config,layout", MASK_CONFIGS)
def test_module_with_every_regularizer_matches_stacked_reference(cell, config, layout):
    module = make_module(cell, **config, **all_rates(cell))
    inp, hx = make_input(cell, module, layout)
    got, expected, recorder = run_with_masks(cell, module, inp, hx)
    assert_same(got, expected, **TOL)
    # the masks did something: without them the results differ
    plain = make_module(cell, **config)
    assert not torch.allclose(module_results(plain, plain, inp, hx)["out[0]"], got["out[0]"])
    assert recorder.calls and all(set(m.unique().tolist()) <= {0.0, 1.0}
                                  for *_, m in recorder.calls)


def _single_rate_cases():
    for cell in CELLS:
        for name in options(cell):
            yield pytest.param(cell, name, id=f"{cell}-{name}")


@pytest.mark.parametrize("cell,name", list(_single_rate_cases()))
@pytest.mark.parametrize("layout,hx_given", [("packed_unsorted", True), ("padded", False)],
                         ids=["packed_unsorted-hx", "padded-nohx"])
def test_module_with_one_regularizer_matches_stacked_reference(cell, name, layout, hx_given):
    module = make_module(cell, num_layers=2, bidirectional=True, **{name: 0.5})
    inp, hx = make_input(cell, module, layout)
    hx = hx if hx_given else None
    got, expected, recorder = run_with_masks(cell, module, inp, hx)
    assert_same(got, expected, **TOL)
    # exactly the masks of this option, with its rate
    drawn = {RATE_OF[n] for n, *_ in recorder.calls}
    assert drawn == {name}


@pytest.mark.parametrize("name", ["recurrent_dropconnect", "variational_input_dropout"])
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
def test_projected_lstm_takes_dropconnect_and_input_dropout(name, layout):
    """proj_size > 0 with the two regularizers that act outside the time loop: as the
    reference LSTM with projection on the masked input / w_hh, gradients included."""
    module = make_module("LSTM", 3, 5, num_layers=2, bidirectional=True, proj_size=2,
                         **{name: 0.4})
    inp, hx = make_input("LSTM", module, layout)
    got, expected, recorder = run_with_masks("LSTM", module, inp, hx)
    assert_same(got, expected, **TOL)
    assert {n for n, *_ in recorder.calls} == {name}
    assert all(g.abs().sum() > 0 for k, g in got.items() if k.startswith("grad."))


def test_masks_from_is_scoped_to_its_block():
    """Inside the block every draw is the source's; after it (left by an exception too)
    the default generator's again, so a seed reproduces the run."""
    module = make_module("LSTM", zoneout=0.3, recurrent_dropconnect=0.3)
    inp, hx = make_input("LSTM", module, "padded")
    recorder = MaskRecorder()
    with pytest.raises(KeyError):
        with masks_from(recorder):
            module(inp, hx)
            raise KeyError("leave the block")
    assert sorted(n for n, *_ in recorder.calls) == ["recurrent_dropconnect", "zoneout_h"]
    torch.manual_seed(3)
    first = module(inp, hx)[0]
    torch.manual_seed(3)
    assert torch.equal(module(inp, hx)[0], first)
    assert len(recorder.calls) == 2


# ---------------------------------------------------------------------------
# 3. the fused ops against a cell loop written from the formulas
# ---------------------------------------------------------------------------

OP_ARGS = {"LSTM": ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"),
           "GRU": ("input", "h0", "w_ih", "w_hh", "b_ih", "b_hh")}


def op_args(cell, T, N, I, H, *, batch_sizes=None, ln=False, seed=0):
    """Tensors for the plain (ln=False) or layer-normalized cell's op."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(shape, generator=g, dtype=DT)

    G = gates(cell) * H
    rows = (int(batch_sizes.sum()),) if batch_sizes is not None else (T, N)
    N = int(batch_sizes[0]) if batch_sizes is not None else N
    a = {"input": rnd(*rows, I), "h0": rnd(N, H, scale=0.5)}
    if cell == "LSTM":
        a["c0"] = rnd(N, H, scale=0.5)
    a.update(w_ih=rnd(G, I, scale=I ** -0.5), w_hh=rnd(G, H, scale=H ** -0.5),
             b_ih=rnd(G, scale=0.3), b_hh=rnd(G, scale=0.3))
    norms = {}
    for kind, width in (("ih", G), ("hh", G), ("cell", H))[:3 if cell == "LSTM" else 2]:
        norms[f"ln_{kind}_weight"] = 1 + 0.3 * rnd(width) if ln else None
        norms[f"ln_{kind}_bias"] = 0.3 * rnd(width) if ln else None
    return a, norms


def call_forward(cell, a, norms, masks, batch_sizes, reverse):
    """The op's differentiable results (output, h_n[, c_n])."""
    if cell == "LSTM":
        res = torch.ops.gatedrnn.layer_norm_lstm_forward(
            a["input"], batch_sizes, a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"],
            a["b_hh"], *norms.values(), masks.get("state_mask"), masks.get("zoneout_h"),
            masks.get("zoneout_c"), reverse)
    else:
        res = torch.ops.gatedrnn.layer_norm_gru_forward(
            a["input"], batch_sizes, a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
            *norms.values(), masks.get("state_mask"), masks.get("zoneout_h"), reverse)
    return res[:-1]


def formula_oracle(cell, a, masks, batch_sizes, reverse):
    """Each sequence on its own, one unit vector at a time, from the formulas: sequence b
    of length L_b runs over its steps (reverse: backwards) from h0[b] (c0[b]); at the step
    of input row r, m = state_mask[b] (ones if absent), d = zoneout_h[r], d_c = zoneout_c[r]
    (zeros if absent):
      LSTM  i, f, g, o = W_ih x + b_ih + W_hh (m h) + b_hh;  c~ = s(f) c + s(i) tanh(g);
            h~ = s(o) tanh(c~);  c = d_c c + (1 - d_c) c~;  h = d h + (1 - d) h~
      GRU   r = s(..r), z = s(..z) from W_ih x + b_ih and W_hh (m h) + b_hh,
            n = tanh(xn + r hn);  h~ = (1 - z) n + z h (unmasked h);  h = d h + (1 - d) h~"""
    x = a["input"]
    H = a["w_hh"].shape[1]
    if batch_sizes is None:
        T, N = x.shape[0], x.shape[1]
        lengths = [T] * N
        flat = x.reshape(T * N, -1)

        def row(t, b):
            return t * N + b
    else:
        sizes = [int(n) for n in batch_sizes]
        T, N = len(sizes), sizes[0]
        offsets = [sum(sizes[:t]) for t in range(T)]
        lengths = [sum(1 for n in sizes if n > b) for b in range(N)]
        flat = x

        def row(t, b):
            return offsets[t] + b
    zeros = torch.zeros(H, dtype=x.dtype)
    out, h_n, c_n = {}, [], []
    for b in range(N):
        h = a["h0"][b]
        c = a["c0"][b] if cell == "LSTM" else None
        m = masks["state_mask"][b] if "state_mask" in masks else torch.ones(H, dtype=x.dtype)
        steps = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in steps:
            r = row(t, b)
            d = masks["zoneout_h"][r] if "zoneout_h" in masks else zeros
            xin = a["w_ih"] @ flat[r] + a["b_ih"]
            hin = a["w_hh"] @ (m * h) + a["b_hh"]
            if cell == "LSTM":
                i, f, g, o = (xin + hin).chunk(4)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                dc = masks["zoneout_c"][r] if "zoneout_c" in masks else zeros
                c = dc * c + (1 - dc) * c_new
            else:
                xr, xz, xn = xin.chunk(3)
                hr, hz, hn = hin.chunk(3)
                rr = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                n = torch.tanh(xn + rr * hn)
                h_new = (1 - z) * n + z * h
            h = d * h + (1 - d) * h_new
            out[r] = h
        h_n.append(h)
        c_n.append(c)
    output = torch.stack([out[r] for r in range(flat.shape[0])])
    if batch_sizes is None:
        output = output.reshape(T, N, H)
    finals = (torch.stack(h_n),) + ((torch.stack(c_n),) if cell == "LSTM" else ())
    return (output, *finals)


def make_masks(cell, kind, rows, N, H, seed=7):
    """Masks of one kind: bernoulli (zoneout 0/1 at p = 0.5, state mask 0 or 1/(1-p) with
    p = 0.4), fractional (zoneout d = 0.3 and 0.6 everywhere, as in evaluation, with the
    state mask), or only one of the masks (Bernoulli)."""
    g = torch.Generator().manual_seed(seed)

    def bern(shape, p):
        return (torch.rand(shape, generator=g, dtype=DT) < p).to(DT)

    state = (1 - bern((N, H), 0.4)) / 0.6
    if kind == "fractional":
        m = {"state_mask": state, "zoneout_h": torch.full((rows, H), 0.3, dtype=DT),
             "zoneout_c": torch.full((rows, H), 0.6, dtype=DT)}
    else:
        m = {"state_mask": state, "zoneout_h": bern((rows, H), 0.5),
             "zoneout_c": bern((rows, H), 0.5)}
        if kind != "bernoulli":
            m = {kind: m[kind]}
    if cell != "LSTM":
        m.pop("zoneout_c", None)
    for name, v in m.items():  # each Bernoulli mask has both values
        if kind != "fractional" and v.numel() > 1:
            assert v.min() == 0 and v.max() > 0, name
    return m


def _oracle_cases():
    for cell in ("LSTM", "GRU"):
        kinds = ["bernoulli", "fractional", "state_mask", "zoneout_h"]
        kinds += ["zoneout_c"] if cell == "LSTM" else []
        for kind in kinds:
            yield pytest.param(cell, kind, id=f"{cell}-{kind}")


@pytest.mark.parametrize("cell,kind", list(_oracle_cases()))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_fused_op_masks_follow_the_formulas(cell, kind, packed, reverse):
    bs = torch.tensor([3, 3, 2, 1, 1]) if packed else None
    a, norms = op_args(cell, 5, 3, 4, 5, batch_sizes=bs)
    rows = int(bs.sum()) if packed else 15
    masks = make_masks(cell, kind, rows, 3, 5)

    def results(fn):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in a.items()}
        outs = fn(leaves)
        loss = sum((o * c).sum() for o, c in zip(outs, cotangents(outs)))
        grads = torch.autograd.grad(loss, list(leaves.values()))
        res = {f"out[{k}]": o.detach() for k, o in enumerate(outs)}
        res.update({f"grad_{k}": gr for k, gr in zip(leaves, grads)})
        return res

    got = results(lambda t: call_forward(cell, t, norms, masks, bs, reverse))
    expected = results(lambda t: formula_oracle(cell, t, masks, bs, reverse))
    assert_same(got, expected, **TOL)
    # and the masks change the result
    plain = results(lambda t: call_forward(cell, t, norms, {}, bs, reverse))
    assert not torch.allclose(plain["out[0]"], got["out[0]"])


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_zoned_out_unit_keeps_its_value_exactly(cell, packed):
    """d = 1 everywhere: the output is the initial state at every step, h_n = h0 (and
    c_n = c0 with zoneout_c = 1), bit for bit."""
    bs = torch.tensor([3, 2, 1]) if packed else None
    a, norms = op_args(cell, 3, 3, 4, 5, batch_sizes=bs)
    rows = int(bs.sum()) if packed else 9
    ones = torch.ones(rows, 5, dtype=DT)
    masks = {"zoneout_h": ones} | ({"zoneout_c": ones} if cell == "LSTM" else {})
    out, *finals = call_forward(cell, a, norms, masks, bs, False)
    seq = torch.cat([torch.arange(int(n)) for n in bs]) if packed else None
    expected = a["h0"][seq] if packed else a["h0"].expand(3, 3, 5)
    assert torch.equal(out, expected)
    assert torch.equal(finals[0], a["h0"])
    if cell == "LSTM":
        assert torch.equal(finals[1], a["c0"])


# ---------------------------------------------------------------------------
# 4. gradcheck and gradgradcheck of the ops with fixed masks
# ---------------------------------------------------------------------------


def _check_fn(cell, ln, packed, reverse, kind):
    bs = torch.tensor([2, 2, 1]) if packed else None
    a, norms = op_args(cell, 3, 2, 2, 2, batch_sizes=bs, ln=ln)
    rows = int(bs.sum()) if packed else 6
    masks = make_masks(cell, kind, rows, 2, 2, seed=11)
    tensors = {**a, **{k: v for k, v in norms.items() if v is not None}}
    names = list(tensors)
    leaves = tuple(t.detach().clone().requires_grad_() for t in tensors.values())

    def fn(*args):
        t = dict(zip(names, args))
        n = {k: t.get(k) for k in norms}
        return call_forward(cell, {k: t[k] for k in a}, n, masks, bs, reverse)

    return fn, leaves


GRADCHECK_CASES = [
    pytest.param(False, False, False, "bernoulli", id="plain-padded-fwd-bernoulli"),
    pytest.param(False, True, True, "fractional", id="plain-packed-rev-fractional"),
    pytest.param(True, False, True, "bernoulli", id="ln-padded-rev-bernoulli"),
    pytest.param(True, True, False, "fractional", id="ln-packed-fwd-fractional"),
    pytest.param(True, True, True, "bernoulli", id="ln-packed-rev-bernoulli"),
]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("ln,packed,reverse,kind", GRADCHECK_CASES)
def test_gradcheck_with_masks(cell, ln, packed, reverse, kind):
    fn, leaves = _check_fn(cell, ln, packed, reverse, kind)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell,ln,packed,reverse,kind", [
    pytest.param("LSTM", True, True, True, "bernoulli", id="LSTM-ln-packed-rev-bernoulli"),
    pytest.param("GRU", False, False, False, "fractional", id="GRU-plain-padded-fractional"),
])
def test_gradgradcheck_with_masks(cell, ln, packed, reverse, kind):
    fn, leaves = _check_fn(cell, ln, packed, reverse, kind)
    assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------
# 5. evaluation mode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config,layout", [
    pytest.param(dict(num_layers=2, bidirectional=True), "padded", id="2layers-bi-padded"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), "packed_unsorted",
                 id="2layers-bi-batch_first-packed_unsorted"),
])
def test_eval_zoneout_is_the_expectation(cell, config, layout):
    """In evaluation zoneout weighs the previous value by p exactly (the reference with
    masks full of p), whatever the seed; the dropout-like options do nothing."""
    module = make_module(cell, **config, **all_rates(cell)).eval()
    inp, hx = make_input(cell, module, layout)
    torch.manual_seed(1)
    got = module_results(module, module, inp, hx)
    expected = module_results(
        lambda i, h: stacked_reference(cell, module, i, h, None, False), module, inp, hx)
    assert_same(got, expected, **TOL)
    torch.manual_seed(2)
    assert_identical(module_results(module, module, inp, hx), got)
    # and it is not the module without zoneout
    plain = make_module(cell, **config).eval()
    assert not torch.allclose(module_results(plain, plain, inp, hx)["out[0]"], got["out[0]"])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
def test_eval_dropout_like_regularizers_have_no_effect(cell, layout):
    rates = {n: 0.5 for n in ("recurrent_dropconnect", "variational_input_dropout",
                              "variational_state_dropout")}
    module = make_module(cell, num_layers=2, bidirectional=True, **rates).eval()
    plain = make_module(cell, num_layers=2, bidirectional=True).eval()
    inp, hx = make_input(cell, module, layout)
    assert_identical(module_results(module, module, inp, hx),
                     module_results(plain, plain, inp, hx))
    # in training they do
    module.train()
    plain.train()
    assert not torch.allclose(module_results(module, module, inp, hx)["out[0]"],
                              module_results(plain, plain, inp, hx)["out[0]"])


# ---------------------------------------------------------------------------
# 6. seeds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
def test_seed_reproduces_a_training_run(cell, layout):
    module = make_module(cell, num_layers=2, bidirectional=True, **all_rates(cell))
    inp, hx = make_input(cell, module, layout)

    def run(seed):
        torch.manual_seed(seed)
        return module_results(module, module, inp, hx)

    first = run(10)
    assert_identical(run(10), first)
    other = run(11)
    assert not torch.allclose(other["out[0]"], first["out[0]"])
    # without reseeding, the next call draws new masks
    assert not torch.allclose(module_results(module, module, inp, hx)["out[0]"], first["out[0]"])


# ---------------------------------------------------------------------------
# 7. statistics of the masks the modules draw themselves
# ---------------------------------------------------------------------------


def test_gru_zoneout_keeps_half_the_units_fresh_each_step():
    """GRU with z ~ 0 (b_hh of z at -30), so the new state differs from the old one in
    every unit: with zoneout 0.5, about half the units of every step equal their previous
    value exactly, independently from step to step (a mask shared by the steps would
    give 0.5 for two steps in a row, not 0.25)."""
    T, N, I, H = 50, 20, 6, 20
    module = make_module("GRU", I, H, zoneout=0.5)
    plain = make_module("GRU", I, H)
    for m in (module, plain):
        with torch.no_grad():
            m.bias_hh_l0[H:2 * H].fill_(-30.0)
    x = torch.randn(T, N, I, dtype=DT)
    h0 = 0.5 * torch.randn(1, N, H, dtype=DT)

    def same_as_previous(m):
        with torch.no_grad():
            out, _ = m(x, h0)
        previous = torch.cat([h0, out[:-1]])
        return out == previous  # [T, N, H]

    assert same_as_previous(plain).sum() == 0
    same = same_as_previous(module)
    assert 0.45 <= same.double().mean().item() <= 0.55
    both = (same[1:] & same[:-1]).double().mean().item()
    assert 0.2 <= both <= 0.3


@pytest.mark.parametrize("cell", CELLS)
def test_zoneout_draws_bernoulli_p_per_unit(cell):
    """One step from (h0, c0), 20000 units: h_n == h0 exactly in a fraction p of them
    (zoneout 0.3), c_n == c0 in a fraction p_c (cell_zoneout 0.6) drawn independently."""
    N, I, H = 200, 4, 100
    rates = dict(zoneout=0.3) | (dict(cell_zoneout=0.6) if is_lstm(cell) else {})
    module = make_module(cell, I, H, **rates)
    plain = make_module(cell, I, H)
    x = torch.randn(1, N, I, dtype=DT)
    hx = tuple(0.5 * torch.randn(1, N, H, dtype=DT) for _ in range(2 if is_lstm(cell) else 1))

    def kept(m):
        with torch.no_grad():
            _, finals = m(x, hx if is_lstm(cell) else hx[0])
        finals = finals if is_lstm(cell) else (finals,)
        return [f == h for f, h in zip(finals, hx)]

    assert all(k.sum() == 0 for k in kept(plain))
    masks = kept(module)
    assert abs(masks[0].double().mean().item() - 0.3) < 0.02
    if is_lstm(cell):
        assert abs(masks[1].double().mean().item() - 0.6) < 0.02
        both = (masks[0] & masks[1]).double().mean().item()
        assert abs(both - 0.18) < 0.02


@pytest.mark.parametrize("cell", ["GRU", "LayerNormLSTM"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_input_dropout_mask_is_per_sequence_and_shared_by_directions(cell, packed):
    """The gradient w.r.t. the input is 0 exactly where the feature was dropped: the same
    features of a sequence at every step, about a fraction p of them, and dropped for both
    directions (independent masks per direction would leave p^2 at 0)."""
    T, N, I = 3, 64, 64
    module = make_module(cell, I, 4, bidirectional=True, variational_input_dropout=0.5)
    x = torch.randn(T, N, I, dtype=DT)
    lengths = torch.tensor([T] * (N // 2) + [2] * (N // 2 - 1) + [1])
    data = x.requires_grad_()
    inp = pack_padded_sequence(data, lengths) if packed else data
    out, _ = module(inp)
    out = out.data if packed else out
    (grad,) = torch.autograd.grad((out * cotangents([out])[0]).sum(), data)
    zero = grad == 0  # [T, N, I]
    first = zero[0]
    for t in range(1, T):
        live = lengths > t if packed else torch.ones(N, dtype=torch.bool)
        assert torch.equal(zero[t][live], first[live]), t
    assert 0.45 <= first.double().mean().item() <= 0.55


@pytest.mark.parametrize("cell", ["LSTM", "LayerNormLSTM"])
def test_state_dropout_mask_drops_h0_entries(cell):
    """h0 enters the LSTM only through the recurrent GEMM, so grad_h0 is 0 exactly where
    the state mask drops the unit: a fraction p, independently per direction."""
    N, H = 100, 40
    module = make_module(cell, 3, H, bidirectional=True, variational_state_dropout=0.5)
    x = torch.randn(4, N, 3, dtype=DT)
    h0 = (0.5 * torch.randn(2, N, H, dtype=DT)).requires_grad_()
    c0 = 0.5 * torch.randn(2, N, H, dtype=DT)
    out, _ = module(x, (h0, c0))
    (grad,) = torch.autograd.grad((out * cotangents([out])[0]).sum(), h0)
    zero = grad == 0
    assert all(0.45 <= zero[d].double().mean().item() <= 0.55 for d in range(2))
    assert 0.2 <= (zero[0] & zero[1]).double().mean().item() <= 0.3


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_dropconnect_mask_per_call_and_direction(cell):
    """grad_w_hh is 0 exactly where the entry was dropped: a fraction p of each w_hh,
    independently per direction and per forward call."""
    H = 32
    module = make_module(cell, 3, H, bidirectional=True, recurrent_dropconnect=0.5)
    x = torch.randn(4, 5, 3, dtype=DT)

    def dropped():
        out, _ = module(x)
        grads = torch.autograd.grad((out * cotangents([out])[0]).sum(),
                                    [module.weight_hh_l0, module.weight_hh_l0_reverse])
        return [g == 0 for g in grads]

    fwd, rev = dropped()
    for z in (fwd, rev):
        assert 0.45 <= z.double().mean().item() <= 0.55
    assert 0.2 <= (fwd & rev).double().mean().item() <= 0.3
    fwd2, _ = dropped()
    assert 0.2 <= (fwd & fwd2).double().mean().item() <= 0.3


# ---------------------------------------------------------------------------
# 8. errors
# ---------------------------------------------------------------------------

BAD_RATES = [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.1", True, False]


def _option_cases():
    for cell in CELLS:
        for name in options(cell):
            yield pytest.param(cell, name, id=f"{cell}-{name}")


@pytest.mark.parametrize("cell,name", list(_option_cases()))
def test_bad_rate_raises_value_error_naming_it(cell, name):
    for bad in BAD_RATES:
        with pytest.raises(ValueError, match=rf"(?<!\w){name}(?!\w)"):
            MODULES[cell](3, 4, **{name: bad})
    # and a good one is kept
    assert getattr(MODULES[cell](3, 4, **{name: 0.5}), name) == 0.5


@pytest.mark.parametrize("cell", ["GRU", "LayerNormGRU"])
def test_cell_zoneout_is_not_a_gru_option(cell):
    with pytest.raises(TypeError, match="cell_zoneout"):
        MODULES[cell](3, 4, cell_zoneout=0.1)


@pytest.mark.parametrize("name", ["zoneout", "cell_zoneout", "variational_state_dropout"])
def test_projected_lstm_refuses_row_wise_regularizers(name):
    with pytest.raises(ValueError, match=name):
        gatedrnn.LSTM(3, 4, proj_size=2, **{name: 0.1})


def _bad_mask_cases():
    for cell in ("LSTM", "GRU"):
        names = ("state_mask", "zoneout_h") + (("zoneout_c",) if cell == "LSTM" else ())
        for name in names:
            for bad in ("more_rows", "more_cols", "1d"):
                yield pytest.param(cell, name, bad, False, id=f"{cell}-{name}-{bad}")
            yield pytest.param(cell, name, "padded_rows", True, id=f"{cell}-{name}-packed")


@pytest.mark.parametrize("cell,name,bad,packed", list(_bad_mask_cases()))
@pytest.mark.parametrize("ln", [False, True], ids=["plain", "ln"])
def test_wrong_mask_shape_raises_naming_it(cell, name, bad, packed, ln):
    T, N, H = 3, 2, 4
    bs = torch.tensor([2, 1, 1]) if packed else None
    a, norms = op_args(cell, T, N, 3, H, batch_sizes=bs, ln=ln)
    rows = int(bs.sum()) if packed else T * N
    masks = make_masks(cell, "bernoulli", rows, N, H)
    m = masks[name]
    if bad == "more_rows":
        masks[name] = torch.cat([m, m[:1]])
    elif bad == "more_cols":
        masks[name] = torch.cat([m, m[:, :1]], dim=1)
    elif bad == "1d":
        masks[name] = m[0]
    else:  # a row per padded step and sequence, for packed input of fewer rows
        masks[name] = torch.zeros(T * N, H, dtype=DT)
        assert T * N != rows
    with pytest.raises(RuntimeError, match=name):
        call_forward(cell, a, norms, masks, bs, False)
    with pytest.raises(RuntimeError, match=name):
        with torch.no_grad():
            call_forward(cell, a, norms, masks, bs, False)


def _shift_cases():
    for cell in ("LSTM", "GRU"):
        for kind in ("ih", "hh", "cell")[:3 if cell == "LSTM" else 2]:
            yield pytest.param(cell, kind, id=f"{cell}-{kind}")


@pytest.mark.parametrize("cell,kind", list(_shift_cases()))
def test_layer_norm_shift_without_gain_raises(cell, kind):
    a, norms = op_args(cell, 3, 2, 3, 4, ln=True)
    norms[f"ln_{kind}_weight"] = None
    masks = make_masks(cell, "bernoulli", 6, 2, 4)
    with pytest.raises(RuntimeError, match=f"ln_{kind}_bias"):
        call_forward(cell, a, norms, masks, None, False)


# ---------------------------------------------------------------------------
# 9. repr, state_dict, convert
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_repr_shows_the_non_zero_rates(cell):
    names = options(cell)
    module = MODULES[cell](3, 4, **{names[0]: 0.25, names[2]: 0.5})
    text = repr(module)
    assert f"{names[0]}=0.25" in text and f"{names[2]}=0.5" in text
    for n in names[1:2] + names[3:]:
        assert n not in text.replace(names[0], "").replace(names[2], "")
    plain = repr(MODULES[cell](3, 4))
    assert not any(n in plain for n in names)


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_has_no_regularizer_keys(cell):
    module = make_module(cell, num_layers=2, bidirectional=True, **all_rates(cell))
    plain = make_module(cell, num_layers=2, bidirectional=True)
    assert list(module.state_dict()) == list(plain.state_dict())
    if not has_ln(cell):
        theirs = getattr(torch.nn, cell)(3, 4, num_layers=2, bidirectional=True)
        assert list(module.state_dict()) == list(theirs.state_dict())
    # it loads into a module of other rates and gives its results
    other = MODULES[cell](3, 4, num_layers=2, bidirectional=True, dtype=DT)
    other.load_state_dict(module.state_dict())
    inp, hx = make_input(cell, module, "padded")
    module.eval()
    plain.eval()
    plain.load_state_dict(module.state_dict())
    assert_identical(module_results(other.eval(), other, inp, hx),
                     module_results(plain, plain, inp, hx))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_convert_of_torch_nn_module_runs_without_regularizers(cell):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cell)(3, 4, num_layers=2, bidirectional=True, dtype=DT)
    reference_module = getattr(torch.nn, cell)(3, 4, num_layers=2, bidirectional=True,
                                               dtype=DT)
    reference_module.load_state_dict(theirs.state_dict())
    ours = gatedrnn.convert(theirs)
    assert isinstance(ours, MODULES[cell])
    assert not any(n in repr(ours) for n in ALL_OPTIONS)
    inp, hx = make_input(cell, ours, "packed_unsorted")
    for training in (True, False):
        ours.train(training)
        reference_module.train(training)
        assert_same(module_results(ours, ours, inp, hx),
                    module_results(reference_module, reference_module, inp, hx), **TOL)


# ---------------------------------------------------------------------------
# 10. torch.compile
# ---------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("cell", CELLS)
def test_compile_eval_zoneout_fullgraph_matches_eager(cell, fresh_dynamo):
    module = make_module(cell, num_layers=2, bidirectional=True, dtype=torch.float32,
                         **all_rates(cell)).eval()
    inp, hx = make_input(cell, module, "padded")
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    eager = module_results(module, module, inp, hx)
    got = module_results(compiled, module, inp, hx)
    assert_same(got, eager, rtol=1e-6, atol=1e-6)
    assert counter.frame_count == 1


@pytest.mark.parametrize("cell", CELLS)
def test_compile_inductor_eval_zoneout_matches_eager(cell, fresh_dynamo):
    """The default backend (inductor), forward and backward."""
    module = make_module(cell, num_layers=2, bidirectional=True, dtype=torch.float32,
                         **all_rates(cell)).eval()
    inp, hx = make_input(cell, module, "padded")
    compiled = torch.compile(module, fullgraph=True)
    assert_same(module_results(compiled, module, inp, hx),
                module_results(module, module, inp, hx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [gatedrnn.LSTM, gatedrnn.GRU])
@pytest.mark.parametrize("name", ["zoneout", "recurrent_dropconnect", "variational_input_dropout",
                                  "variational_state_dropout"])
def test_torch_nn_twin_is_refused_with_a_regularizer(cls, name):
    """ONNX export and torch.jit.script run the torch.nn twin, which has no regularizers:
    a module with any is refused there rather than exported or scripted with other math."""
    module = cls(3, 4, **{name: 0.2}).eval()
    with pytest.raises(RuntimeError, match=name):
        torch.jit.script(module)
    onnx = pytest.importorskip("onnx")  # noqa: F841
    import io
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=name):
            torch.onnx.export(module, (torch.randn(5, 2, 3),), io.BytesIO(), dynamo=False)


def test_functional_stacked_refuses_unknown_or_misplaced_regularizers():
    gru = gatedrnn.GRU(3, 4)
    args = ("GRU", torch.randn(2, 1, 3), (torch.zeros(1, 1, 4),), gru._layer_weights())
    with pytest.raises(ValueError, match="cell_zoneout"):
        gatedrnn.functional.stacked(*args, num_layers=1, bidirectional=False, training=True,
                                    regularizers={"cell_zoneout": 0.1})
    with pytest.raises(ValueError, match="unknown regularizer 'zonout'"):
        gatedrnn.functional.stacked(*args, num_layers=1, bidirectional=False, training=True,
                                    regularizers={"zonout": 0.1})
