"""LayerNormLSTM and LayerNormGRU (issue 19): the layer-normalized cells, as a spec.

The math (eps 1e-5, biased variance, each LayerNorm over the whole vector):
  LSTM  gates = LN_ih(W_ih x) + LN_hh(W_hh h) + b_ih + b_hh  (LN over all 4H gates)
        i, f, g, o = chunks of gates;  c' = s(f) c + s(i) tanh(g);  h' = s(o) tanh(LN_cell(c'))
  GRU   gx = LN_ih(W_ih x) + b_ih,  gh = LN_hh(W_hh h) + b_hh  (LN over all 3H gates)
        r = s(gx_r + gh_r), z = s(gx_z + gh_z), n = tanh(gx_n + r gh_n), h' = (1 - z) n + z h

What is checked, in float64 unless said otherwise:
  1. reference.py against an oracle written here from those equations with
     torch.nn.functional.layer_norm, one sequence at a time;
  2. the fused forward ops against reference.py: outputs and every gradient, padded and
     packed, both directions, with and without biases and shifts, odd sizes;
  3. the modules against a multi-layer network stacked here from reference.py with the
     module's own parameters, in every input form torch.nn takes;
  4. gradcheck and gradgradcheck of the forward ops;
  5. torch.library.opcheck of the four ops, torch.compile(module, fullgraph=True);
  6. the modules' parameters, initialization, state_dict, dtypes;
  7. errors; 8. determinism across thread counts; 9. dropout between layers;
  10. need_workspace=False.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gatedrnn
from gatedrnn import reference
from _row_wise_helpers import (Layout, assert_same, cotangents, module_results,  # noqa: E402
                               perturb_layer_norms)

CELLS = ("LSTM", "GRU")
MODULES = {"LSTM": gatedrnn.LayerNormLSTM, "GRU": gatedrnn.LayerNormGRU}
GATES = {"LSTM": 4, "GRU": 3}
DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
EPS = 1e-5

#: The forward ops' tensor arguments but batch_sizes, in schema order (batch_sizes is the
#: second argument, then these from h0 on, then reverse and need_workspace).
ARGS = {
    "LSTM": ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "ln_ih_weight",
             "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_cell_weight", "ln_cell_bias"),
    "GRU": ("input", "h0", "w_ih", "w_hh", "b_ih", "b_hh", "ln_ih_weight", "ln_ih_bias",
            "ln_hh_weight", "ln_hh_bias"),
}
OUTPUTS = {"LSTM": ("output", "h_n", "c_n"), "GRU": ("output", "h_n")}
#: The regularizers' masks that follow ARGS in the ops' and reference.py's arguments
#: (state_mask, zoneout_h[, zoneout_c]): none here (tests/test_regularizers.py has them).
NO_MASKS = {"LSTM": (None, None, None), "GRU": (None, None)}
#: The LayerNorms of each cell: (kind, width in units of H).
NORMS = {"LSTM": (("ih", 4), ("hh", 4), ("cell", 1)), "GRU": (("ih", 3), ("hh", 3))}


def forward_op(cell):
    return getattr(torch.ops.gatedrnn, f"layer_norm_{cell.lower()}_forward")


def backward_op(cell):
    return getattr(torch.ops.gatedrnn, f"layer_norm_{cell.lower()}_backward")


def reference_fn(cell):
    return reference.layer_norm_lstm if cell == "LSTM" else reference.layer_norm_gru


# ---------------------------------------------------------------------------
# arguments and runs
# ---------------------------------------------------------------------------


def make_args(cell, T, N, I, H, *, batch_sizes=None, bias=True, ln_bias=None, dtype=DT,
              seed=0):
    """The op's tensor arguments (ARGS order) for T steps of batch N, or packed rows with
    batch_sizes. LayerNorm gains 1 + 0.3 randn and shifts 0.3 randn, so that neither is
    the identity. bias: b_ih and b_hh given; ln_bias (default: bias): the shifts given."""
    ln_bias = bias if ln_bias is None else ln_bias
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)

    G = GATES[cell] * H
    if batch_sizes is not None:
        rows, N = (int(sum(batch_sizes)),), int(batch_sizes[0])
    else:
        rows = (T, N)
    a = {"input": rnd(*rows, I), "h0": rnd(N, H, scale=0.5)}
    if cell == "LSTM":
        a["c0"] = rnd(N, H, scale=0.5)
    a["w_ih"] = rnd(G, I, scale=I ** -0.5)
    a["w_hh"] = rnd(G, H, scale=H ** -0.5)
    a["b_ih"] = rnd(G, scale=0.3) if bias else None
    a["b_hh"] = rnd(G, scale=0.3) if bias else None
    for kind, width in NORMS[cell]:
        a[f"ln_{kind}_weight"] = 1 + 0.3 * rnd(width * H)
        a[f"ln_{kind}_bias"] = 0.3 * rnd(width * H) if ln_bias else None
    assert tuple(a) == ARGS[cell]
    return a


def call_op(cell, a, batch_sizes, reverse, need_workspace=True):
    """The forward op's results, the workspace included."""
    return forward_op(cell)(a["input"], batch_sizes, *(a[k] for k in ARGS[cell][1:]),
                            *NO_MASKS[cell], reverse, need_workspace)


def fused(cell, a, batch_sizes, reverse):
    return call_op(cell, a, batch_sizes, reverse)[:-1]


def ref(cell, a, batch_sizes, reverse):
    return reference_fn(cell)(a["input"], batch_sizes, *(a[k] for k in ARGS[cell][1:]),
                              *NO_MASKS[cell], reverse)


def results(fn, cell, a, batch_sizes, reverse):
    """fn's outputs and the gradients of a fixed random linear loss over all of them with
    respect to every tensor argument given (None ones have none): a dict."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in a.items() if v is not None}
    outs = fn(cell, {k: leaves.get(k) for k in ARGS[cell]}, batch_sizes, reverse)
    assert len(outs) == len(OUTPUTS[cell])
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents(outs)))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    res = {name: o.detach() for name, o in zip(OUTPUTS[cell], outs)}
    res.update({f"grad_{k}": gr for k, gr in zip(leaves, grads)})
    return res


# ---------------------------------------------------------------------------
# 1. reference.py against an oracle written from the equations
# ---------------------------------------------------------------------------


def _ln(v, gain, shift):
    return F.layer_norm(v, v.shape, gain, shift, eps=EPS)


def _plus(v, b):
    return v if b is None else v + b


def _oracle_step(cell, a, x, h, c):
    """One step of one sequence (x [I], h and c [H]) from the equations."""
    if cell == "LSTM":
        gates = (_ln(a["w_ih"] @ x, a["ln_ih_weight"], a["ln_ih_bias"])
                 + _ln(a["w_hh"] @ h, a["ln_hh_weight"], a["ln_hh_bias"]))
        i, f, g, o = _plus(_plus(gates, a["b_ih"]), a["b_hh"]).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(_ln(c, a["ln_cell_weight"], a["ln_cell_bias"]))
        return h, c
    gx = _plus(_ln(a["w_ih"] @ x, a["ln_ih_weight"], a["ln_ih_bias"]), a["b_ih"])
    gh = _plus(_ln(a["w_hh"] @ h, a["ln_hh_weight"], a["ln_hh_bias"]), a["b_hh"])
    xr, xz, xn = gx.chunk(3)
    hr, hz, hn = gh.chunk(3)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


def oracle(cell, a, batch_sizes, reverse):
    """Each sequence on its own, as torch.nn defines the packed and reversed runs: sequence
    b has length L_b, runs over its steps 0..L_b-1 (reverse: L_b-1..0) from h0[b] (c0[b]),
    and its final state is the one after its last step run."""
    x = a["input"]
    if batch_sizes is None:
        T, N = x.shape[0], x.shape[1]
        lengths = [T] * N

        def row(t, b):
            return x[t, b]
    else:
        sizes = [int(n) for n in batch_sizes]
        T, N = len(sizes), sizes[0]
        offsets = [sum(sizes[:t]) for t in range(T)]
        lengths = [sum(1 for n in sizes if n > b) for b in range(N)]

        def row(t, b):
            return x[offsets[t] + b]
    out, h_n, c_n = {}, [], []
    for b in range(N):
        h, c = a["h0"][b], a["c0"][b] if cell == "LSTM" else None
        steps = range(lengths[b])
        for t in (reversed(steps) if reverse else steps):
            h, c = _oracle_step(cell, a, row(t, b), h, c)
            out[t, b] = h
        h_n.append(h)
        c_n.append(c)
    if batch_sizes is None:
        output = torch.stack([torch.stack([out[t, b] for b in range(N)]) for t in range(T)])
    else:
        output = torch.stack([out[t, b] for t in range(T) for b in range(sizes[t])])
    finals = (torch.stack(h_n),) + ((torch.stack(c_n),) if cell == "LSTM" else ())
    return (output, *finals)


ORACLE_CASES = [
    pytest.param(None, False, True, id="padded-fwd-bias"),
    pytest.param([3, 3, 2, 1], True, True, id="packed-rev-bias"),
    pytest.param([3, 2, 2, 1], False, False, id="packed-fwd-nobias"),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_sizes,reverse,bias", ORACLE_CASES)
def test_reference_and_fused_ops_follow_the_equations(cell, batch_sizes, reverse, bias):
    bs = None if batch_sizes is None else torch.tensor(batch_sizes)
    a = make_args(cell, 4, 3, 5, 6, batch_sizes=bs, bias=bias)
    expected = results(oracle, cell, a, bs, reverse)
    assert_same(results(ref, cell, a, bs, reverse), expected, **TOL)
    assert_same(results(fused, cell, a, bs, reverse), expected, **TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_norm_changes_the_cell(cell):
    """The oracle is not the plain cell: LayerNorm with these gains and shifts moves the
    output away from torch.nn's cell on the same weights (so the checks above could fail
    if the LayerNorms were skipped)."""
    a = make_args(cell, 3, 2, 4, 5)
    out = oracle(cell, a, None, False)[0]
    if cell == "LSTM":
        plain = reference.lstm(a["input"], None, a["h0"], a["c0"], a["w_ih"], a["w_hh"],
                               a["b_ih"], a["b_hh"], None, False)[0]
    else:
        plain = reference.gru(a["input"], None, a["h0"], a["w_ih"], a["w_hh"], a["b_ih"],
                              a["b_hh"], False)[0]
    assert (out - plain).abs().max() > 1e-2


# ---------------------------------------------------------------------------
# 2. fused ops against reference.py
# ---------------------------------------------------------------------------

LAYOUTS = {
    "padded": None,
    "packed-3321": [3, 3, 2, 1],
    "packed-trailing-equal": [4, 2, 2, 2],
    "packed-all-equal": [3, 3, 3],
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fused_op_matches_reference_outputs_and_every_gradient(cell, layout, reverse, bias):
    bs = None if LAYOUTS[layout] is None else torch.tensor(LAYOUTS[layout])
    a = make_args(cell, 4, 3, 5, 6, batch_sizes=bs, bias=bias)
    got = results(fused, cell, a, bs, reverse)
    expected = results(ref, cell, a, bs, reverse)
    assert_same(got, expected, **TOL)
    assert ("grad_b_ih" in got) == bias and ("grad_ln_ih_bias" in got) == bias


# (T, N, I, H); packed inputs run N sequences of lengths T, T-1, ... (at least 1).
ODD_SHAPES = [
    pytest.param((1, 3, 4, 5), id="T1"),
    pytest.param((4, 1, 3, 5), id="N1"),
    pytest.param((3, 3, 4, 1), id="H1"),
    pytest.param((3, 3, 5, 13), id="H13"),
    pytest.param((1, 1, 1, 1), id="all1"),
    pytest.param((5, 3, 2, 7), id="N3-H7"),
]


def _lengths_batch_sizes(T, N):
    lengths = [max(1, T - b) for b in range(N)]
    return torch.tensor([sum(1 for n in lengths if n > t) for t in range(T)])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_fused_op_matches_reference_at_odd_sizes(cell, shape, packed, reverse):
    T, N, I, H = shape
    bs = _lengths_batch_sizes(T, N) if packed else None
    a = make_args(cell, T, N, I, H, batch_sizes=bs)
    assert_same(results(fused, cell, a, bs, reverse), results(ref, cell, a, bs, reverse),
                **TOL)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_fused_op_matches_reference_for_an_empty_batch(cell, reverse):
    a = make_args(cell, 3, 0, 4, 5)
    assert_same(results(fused, cell, a, None, reverse), results(ref, cell, a, None, reverse),
                **TOL)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradients_of_a_loss_over_one_output_only(cell, packed):
    """Outputs that do not enter the loss get no gradient (None to the backward, which must
    read it as zeros): the gradients are still reference.py's."""
    bs = torch.tensor([3, 3, 2, 1]) if packed else None
    a = make_args(cell, 4, 3, 5, 6, batch_sizes=bs)
    for used in range(len(OUTPUTS[cell])):
        grads = []
        for fn in (fused, ref):
            leaves = {k: v.detach().clone().requires_grad_() for k, v in a.items()}
            out = fn(cell, leaves, bs, True)[used]
            grads.append(torch.autograd.grad((out * cotangents([out])[0]).sum(),
                                             list(leaves.values())))
        for name, x, y in zip(ARGS[cell], *grads):
            torch.testing.assert_close(x, y, **TOL,
                                       msg=lambda m, n=name: f"{OUTPUTS[cell][used]}, {n}: {m}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias,ln_bias", [(True, False), (False, True)],
                         ids=["biases-no-shifts", "shifts-no-biases"])
def test_biases_and_shifts_are_optional_independently(cell, bias, ln_bias):
    bs = torch.tensor([3, 3, 2, 1])
    a = make_args(cell, 4, 3, 5, 6, batch_sizes=bs, bias=bias, ln_bias=ln_bias)
    for reverse in (False, True):
        expected = results(oracle, cell, a, bs, reverse)
        assert_same(results(fused, cell, a, bs, reverse), expected, **TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_functional_matches_reference_with_and_without_hx(cell):
    """gatedrnn.functional.layer_norm_lstm / layer_norm_gru: hx=None means zero states."""
    bs = torch.tensor([3, 3, 2, 1])
    a = make_args(cell, 4, 3, 5, 6, batch_sizes=bs)
    fn = getattr(gatedrnn.functional, f"layer_norm_{cell.lower()}")
    kw = {k: a[k] for k in ARGS[cell] if k.startswith(("w_", "b_", "ln_"))}
    states = ("h0", "c0") if cell == "LSTM" else ("h0",)
    for given in (True, False):
        b = dict(a) if given else {**a, **{s: torch.zeros_like(a[s]) for s in states}}
        hx = (tuple(a[s] for s in states) if cell == "LSTM" else a["h0"]) if given else None
        for reverse in (False, True):
            out, hidden = fn(a["input"], hx, **kw, batch_sizes=bs, reverse=reverse)
            got = (out, *(hidden if cell == "LSTM" else (hidden,)))
            for x, y in zip(got, ref(cell, b, bs, reverse)):
                torch.testing.assert_close(x, y, **TOL)


# ---------------------------------------------------------------------------
# 3. modules against a multi-layer network stacked from reference.py
# ---------------------------------------------------------------------------


def make_module(cell, input_size=5, hidden_size=6, *, seed=0, dtype=DT, **kw):
    """A module with its LayerNorm gains and shifts made non-trivial."""
    torch.manual_seed(seed)
    module = MODULES[cell](input_size, hidden_size, dtype=dtype, **kw)
    perturb_layer_norms(module, seed + 100)
    return module


def _layer_direction_weights(module, cell, layer, direction):
    """The arguments of reference.layer_norm_* after the states, read from the module by
    the parameter names of the spec."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")

    def p(name, optional=False):
        return getattr(module, name + sfx) if module.bias or not optional else None

    weights = [p("weight_ih"), p("weight_hh"), p("bias_ih", True), p("bias_hh", True)]
    for kind, _ in NORMS[cell]:
        weights += [p(f"ln_weight_{kind}"), p(f"ln_bias_{kind}", True)]
    return weights


def stacked_reference(module, input, hx=None):
    """What module(input, hx) must return, from reference.py: each layer-direction's
    reference run with that layer-direction's parameters, the directions' outputs
    concatenated as the next layer's input; input and hx in any form torch.nn takes."""
    cell = "LSTM" if isinstance(module, gatedrnn.LayerNormLSTM) else "GRU"
    L, D = module.num_layers, 2 if module.bidirectional else 1
    layout = Layout(module, input)
    batch_sizes = layout.batch_sizes
    kinds = 2 if cell == "LSTM" else 1
    states = layout.states(hx, (module.hidden_size,) * kinds, cell == "LSTM")
    finals = [[] for _ in range(kinds)]
    layer_input = layout.data
    for layer in range(L):
        outputs = []
        for direction in range(D):
            index = layer * D + direction
            out, *final = reference_fn(cell)(
                layer_input, batch_sizes, *(s[index] for s in states),
                *_layer_direction_weights(module, cell, layer, direction), *NO_MASKS[cell],
                direction == 1)
            outputs.append(out)
            for kind, s in enumerate(final):
                finals[kind].append(s)
        layer_input = torch.cat(outputs, dim=-1)
    return layout.results(layer_input, finals, cell == "LSTM")


def make_module_input(cell, module, layout, *, T=4, N=3, seed=1):
    """(input, hx) for the module in one of the forms torch.nn takes."""
    g = torch.Generator().manual_seed(seed)
    dtype = module.weight_ih_l0.dtype
    L = module.num_layers * (2 if module.bidirectional else 1)

    def rnd(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

    x = rnd(T, N, module.input_size)
    if layout == "unbatched":
        inp = x[:, 0]
        hx_shape = (L, module.hidden_size)
    else:
        hx_shape = (L, N, module.hidden_size)
        if layout == "padded":
            inp = x.transpose(0, 1) if module.batch_first else x
        else:
            lengths = {"packed": [T, T - 1, 1], "packed_unsorted": [2, T, 1]}[layout][:N]
            x = x.transpose(0, 1) if module.batch_first else x
            inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=module.batch_first,
                                       enforce_sorted=layout == "packed")
    hx = tuple(0.5 * rnd(*hx_shape) for _ in range(2 if cell == "LSTM" else 1))
    return inp, (hx if cell == "LSTM" else hx[0])


MODULE_CONFIGS = [
    pytest.param(dict(num_layers=1), "padded", id="1layer"),
    pytest.param(dict(num_layers=2), "padded", id="2layers"),
    pytest.param(dict(num_layers=2, bidirectional=True), "padded", id="2layers-bi"),
    pytest.param(dict(num_layers=2, bias=False), "padded", id="2layers-nobias"),
    pytest.param(dict(bidirectional=True, batch_first=True), "padded", id="bi-batch_first"),
    pytest.param(dict(num_layers=2, bidirectional=True), "unbatched", id="2layers-bi-unbatched"),
    pytest.param(dict(batch_first=True), "unbatched", id="batch_first-unbatched"),
    pytest.param(dict(num_layers=2, bidirectional=True), "packed", id="2layers-bi-packed"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), "packed_unsorted",
                 id="2layers-bi-batch_first-packed_unsorted"),
    pytest.param(dict(num_layers=1, bias=False), "packed_unsorted", id="nobias-packed_unsorted"),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config,layout", MODULE_CONFIGS)
@pytest.mark.parametrize("hx_given", [True, False], ids=["hx", "nohx"])
def test_module_matches_stacked_reference(cell, config, layout, hx_given):
    module = make_module(cell, **config)
    inp, hx = make_module_input(cell, module, layout)
    hx = hx if hx_given else None
    expected = module_results(lambda i, h: stacked_reference(module, i, h), module, inp, hx)
    got = module_results(module, module, inp, hx)
    assert_same(got, expected, **TOL)


# ---------------------------------------------------------------------------
# 4. gradcheck and gradgradcheck of the forward ops
# ---------------------------------------------------------------------------


def _check_fn(cell, packed, reverse, bias=True):
    bs = torch.tensor([2, 2, 1]) if packed else None
    a = make_args(cell, 3, 2, 2, 2, batch_sizes=bs, bias=bias)
    names = [k for k in ARGS[cell] if a[k] is not None]
    leaves = tuple(a[k].detach().clone().requires_grad_() for k in names)

    def fn(*args):
        full = {**{k: None for k in ARGS[cell]}, **dict(zip(names, args))}
        return fused(cell, full, bs, reverse)

    return fn, leaves


GRADCHECK_CASES = [
    pytest.param(False, False, True, id="padded-fwd"),
    pytest.param(False, True, True, id="padded-rev"),
    pytest.param(True, False, True, id="packed-fwd"),
    pytest.param(True, True, False, id="packed-rev-nobias"),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed,reverse,bias", GRADCHECK_CASES)
def test_gradcheck(cell, packed, reverse, bias):
    fn, leaves = _check_fn(cell, packed, reverse, bias)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed,reverse,bias", GRADCHECK_CASES[1:3])
def test_gradgradcheck(cell, packed, reverse, bias):
    fn, leaves = _check_fn(cell, packed, reverse, bias)
    assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_penalty_through_the_module_matches_reference(cell):
    """Double backward through a 2-layer bidirectional module on packed unsorted input:
    the gradient of a penalty on the input gradient, w.r.t. every parameter."""
    module = make_module(cell, num_layers=2, bidirectional=True)
    inp, hx = make_module_input(cell, module, "packed_unsorted")
    data = inp.data.detach().requires_grad_()
    inp = PackedSequence(data, inp.batch_sizes, inp.sorted_indices, inp.unsorted_indices)

    def penalty_grads(forward):
        out = forward(inp, hx)[0].data
        (g,) = torch.autograd.grad((out * cotangents([out])[0]).sum(), data, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), list(module.parameters()))

    got = penalty_grads(module)
    expected = penalty_grads(lambda i, h: stacked_reference(module, i, h))
    for (name, _), x, y in zip(module.named_parameters(), got, expected):
        torch.testing.assert_close(x, y, **TOL, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------
# 5. opcheck and torch.compile
# ---------------------------------------------------------------------------

OPCHECK_VARIANTS = [
    pytest.param(dict(reverse=False, bias=True, dtype=torch.float64), id="fwd-bias-f64"),
    pytest.param(dict(reverse=True, bias=False, dtype=torch.float32), id="rev-nobias-f32"),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", OPCHECK_VARIANTS)
def test_opcheck_forward(cell, packed, variant):
    bs = torch.tensor([3, 3, 2, 1]) if packed else None
    a = make_args(cell, 4, 3, 4, 5, batch_sizes=bs, bias=variant["bias"],
                  dtype=variant["dtype"])
    a = {k: None if v is None else v.requires_grad_() for k, v in a.items()}
    args = (a["input"], bs, *(a[k] for k in ARGS[cell][1:]), *NO_MASKS[cell],
            variant["reverse"])
    torch.library.opcheck(forward_op(cell), args)


def _backward_args(cell, a, bs, reverse):
    with torch.no_grad():
        res = call_op(cell, a, bs, reverse)
    outs, workspace = res[:-1], res[-1]
    grads = cotangents(outs, seed=7)
    norms = [a[f"ln_{kind}_weight"] for kind, _ in NORMS[cell]]
    states = ("h0", "c0") if cell == "LSTM" else ("h0",)
    return (*grads, a["input"], bs, *(a[s] for s in states), a["w_ih"], a["w_hh"], *norms,
            *NO_MASKS[cell], outs[0], workspace, reverse)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed,reverse", [(False, False), (True, True)],
                         ids=["padded-fwd", "packed-rev"])
def test_opcheck_backward(cell, packed, reverse):
    bs = torch.tensor([3, 3, 2, 1]) if packed else None
    a = make_args(cell, 4, 3, 4, 5, batch_sizes=bs)
    args = _backward_args(cell, a, bs, reverse)
    # the backward ops are first-order only: no autograd registration to check
    torch.library.opcheck(backward_op(cell), args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("mask", [(True, False, True), (False, True, False),
                                  (False, False, True), (True, True, False)],
                         ids=["input+weights", "states", "weights", "input+states"])
def test_backward_op_output_mask(cell, T, mask):
    """output_mask (input, initial states, parameters): the gradients asked for are bit for
    bit those of a call asking for all, the others [0]; the fake kernel agrees (opcheck)."""
    a = make_args(cell, T, 3, 4, 5)
    args = _backward_args(cell, a, None, False)
    *full, _ = backward_op(cell)(*args)
    *got, _ = backward_op(cell)(*args, output_mask=list(mask))
    states = 2 if cell == "LSTM" else 1
    groups = [0] + [1] * states + [2] * (len(full) - 1 - states)
    for name, g, f, group in zip(ARGS[cell], got, full, groups):
        if mask[group]:
            assert torch.equal(g, f), name
        else:
            assert g.shape == (0,), name
    torch.library.opcheck(backward_op(cell), args, {"output_mask": list(mask)},
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed,reverse", [(False, True), (True, False)],
                         ids=["padded-rev", "packed-fwd"])
def test_backward_op_gives_the_reference_gradients(cell, packed, reverse):
    """The backward op called directly: its results, in schema order (grad_input, grad_h0,
    [grad_c0,] grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, then each LayerNorm's gain and
    shift), are reference.py's gradients for the same output gradients."""
    bs = torch.tensor([3, 3, 2, 1]) if packed else None
    a = make_args(cell, 4, 3, 4, 5, batch_sizes=bs)
    args = _backward_args(cell, a, bs, reverse)
    *got, step_norms = backward_op(cell)(*args)
    assert step_norms.shape == (0, 2 if cell == "LSTM" else 1)  # the monitor was not asked for
    leaves = {k: a[k].detach().clone().requires_grad_() for k in ARGS[cell]}
    outs = ref(cell, leaves, bs, reverse)
    expected = torch.autograd.grad(outs, list(leaves.values()), args[:len(outs)])
    assert len(got) == len(expected)
    for name, x, y in zip(ARGS[cell], got, expected):
        torch.testing.assert_close(x, y, **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config,layout,hx_given", [
    pytest.param(dict(), "padded", True, id="padded-hx"),
    pytest.param(dict(batch_first=True), "padded", False, id="batch_first-nohx"),
    pytest.param(dict(), "unbatched", True, id="unbatched-hx"),
])
def test_compile_module_fullgraph_matches_eager(cell, config, layout, hx_given, fresh_dynamo):
    """torch.compile(module, fullgraph=True) (AOT autograd over the fake kernels) gives
    eager's outputs and gradients, float32, in one graph."""
    module = make_module(cell, num_layers=2, bidirectional=True, dtype=torch.float32,
                         **config)
    inp, hx = make_module_input(cell, module, layout)
    hx = hx if hx_given else None
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    eager = module_results(module, module, inp, hx)
    got = module_results(compiled, module, inp, hx)
    assert_same(got, eager, rtol=1e-6, atol=1e-6)
    assert counter.frame_count == 1


@pytest.mark.parametrize("cell", CELLS)
def test_compile_stacked_packed_fullgraph_matches_eager(cell, fresh_dynamo):
    """functional.stacked over packed input (batch_sizes), 2 layers, bidirectional, under
    torch.compile(fullgraph=True): eager's outputs and gradients, in one graph."""
    module = make_module(cell, num_layers=2, bidirectional=True, dtype=torch.float32)
    inp, hx = make_module_input(cell, module, "packed")
    mode = f"LayerNorm{cell}"

    def f(data, hx):
        states = hx if cell == "LSTM" else (hx,)
        output, finals = gatedrnn.functional.stacked(
            mode, data.data, states, module._layer_weights(), num_layers=2,
            bidirectional=True, batch_sizes=data.batch_sizes)
        return (PackedSequence(output, data.batch_sizes),
                finals if cell == "LSTM" else finals[0])

    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    eager = module_results(f, module, inp, hx)
    assert_same(eager, module_results(module, module, inp, hx), rtol=0, atol=0)
    got = module_results(compiled, module, inp, hx)
    assert_same(got, eager, rtol=1e-6, atol=1e-6)
    assert counter.frame_count == 1


def test_compile_inductor_matches_eager(fresh_dynamo):
    """The default backend (inductor), forward and backward, for one cell."""
    module = make_module("GRU", num_layers=1, dtype=torch.float32)
    inp, hx = make_module_input("GRU", module, "padded")
    compiled = torch.compile(module, fullgraph=True)
    assert_same(module_results(compiled, module, inp, hx), module_results(module, module, inp, hx),
                rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# 6. module basics
# ---------------------------------------------------------------------------


def expected_parameter_names(cell, num_layers, bidirectional, bias):
    names = []
    for layer in range(num_layers):
        for sfx in [f"_l{layer}", f"_l{layer}_reverse"][:2 if bidirectional else 1]:
            names += [f"weight_ih{sfx}", f"weight_hh{sfx}"]
            names += [f"bias_ih{sfx}", f"bias_hh{sfx}"] if bias else []
            for kind, _ in NORMS[cell]:
                names += [f"ln_weight_{kind}{sfx}"] + ([f"ln_bias_{kind}{sfx}"] if bias else [])
    return names


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional,bias",
                         [(1, False, True), (2, True, True), (2, False, False)],
                         ids=["1layer", "2layers-bi", "2layers-nobias"])
def test_parameter_names_and_shapes(cell, num_layers, bidirectional, bias):
    I, H = 5, 7
    module = MODULES[cell](I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    params = dict(module.named_parameters())
    assert sorted(params) == sorted(expected_parameter_names(cell, num_layers, bidirectional,
                                                             bias))
    # torch.nn's own parameters are torch.nn's, names, order and shapes
    nn_module = getattr(torch.nn, cell)(I, H, num_layers=num_layers,
                                        bidirectional=bidirectional, bias=bias)
    nn_params = dict(nn_module.named_parameters())
    assert [n for n in params if not n.startswith("ln_")] == list(nn_params)
    for name, p in nn_params.items():
        assert params[name].shape == p.shape, name
    widths = dict(NORMS[cell])
    for name, p in params.items():
        if name.startswith("ln_"):
            kind = name.split("_")[2]
            assert p.shape == (widths[kind] * H,), name
    assert list(module.state_dict()) == list(params)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_norm_gains_start_at_one_and_shifts_at_zero(cell):
    module = MODULES[cell](5, 6, num_layers=2, bidirectional=True)

    def check():
        n = 0
        for name, p in module.named_parameters():
            if name.startswith("ln_weight_"):
                assert torch.equal(p, torch.ones_like(p)), name
                n += 1
            elif name.startswith("ln_bias_"):
                assert torch.equal(p, torch.zeros_like(p)), name
                n += 1
        assert n == 4 * 2 * len(NORMS[cell])

    check()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    module.reset_parameters()
    check()
    bound = 6 ** -0.5  # torch.nn's uniform(-1/sqrt(H), 1/sqrt(H))
    for name, p in module.named_parameters():
        if not name.startswith("ln_"):
            assert p.abs().max() <= bound, name
            assert not torch.equal(p, before[name]), name


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_round_trip_gives_identical_outputs(cell):
    module = make_module(cell, num_layers=2, bidirectional=True, seed=0)
    fresh = MODULES[cell](5, 6, num_layers=2, bidirectional=True, dtype=DT)
    inp, hx = make_module_input(cell, module, "padded")
    expected = module_results(module, module, inp, hx)
    assert not torch.equal(fresh(inp, hx)[0], expected["out[0]"])
    fresh.load_state_dict(module.state_dict())
    got = module_results(fresh, fresh, inp, hx)
    assert list(got) == list(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
def test_float32_module_is_close_to_the_float64_reference(cell, layout):
    module = make_module(cell, num_layers=2, bidirectional=True, dtype=torch.float32)
    inp, hx = make_module_input(cell, module, layout)
    wide = copy.deepcopy(module).double()

    def widen(t):
        return t.double() if isinstance(t, torch.Tensor) else tuple(s.double() for s in t)

    inp64 = (PackedSequence(inp.data.double(), inp.batch_sizes, inp.sorted_indices,
                            inp.unsorted_indices)
             if isinstance(inp, PackedSequence) else inp.double())
    expected = module_results(lambda i, h: stacked_reference(wide, i, h), wide, inp64,
                              widen(hx))
    got = module_results(module, module, inp, hx)
    # reference.py itself in float32: the rounding error float32 brings here. LayerNorm's
    # 1/sigma amplifies it in the gradients (up to ~3e-5 absolute, 2 layers, with the
    # portable and AVX2 builds, whose products round twice where AVX-512's fuse), so the
    # bound is: within 1e-5 relative to the result's largest entry, or twice the float32
    # reference's own error against float64.
    ref32 = module_results(lambda i, h: stacked_reference(module, i, h), module, inp, hx)
    assert list(got) == list(expected)
    for k in expected:
        assert got[k].dtype == torch.float32, k
        ours = (got[k].double() - expected[k]).abs().max().item()
        theirs = (ref32[k].double() - expected[k]).abs().max().item()
        scale = max(1.0, expected[k].abs().max().item())
        assert ours <= max(1e-5 * scale, 2 * theirs), (k, ours, theirs, scale)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 3e-3)],
                         ids=["bf16", "f16"])
def test_reduced_precision_modules_run_close_to_float32(cell, dtype, tol):
    module = make_module(cell, num_layers=2, bidirectional=True, dtype=torch.float32)
    inp, hx = make_module_input(cell, module, "padded")
    low = copy.deepcopy(module).to(dtype)
    got = module_results(low, low, inp.to(dtype), tuple(h.to(dtype) for h in
                                                        (hx if cell == "LSTM" else (hx,))))
    # float32 on exactly the rounded values: only the computation's error is measured
    rounded = copy.deepcopy(low).float()
    hx32 = tuple(h.to(dtype).float() for h in (hx if cell == "LSTM" else (hx,)))
    expected = module_results(rounded, rounded, inp.to(dtype).float(),
                              hx32 if cell == "LSTM" else hx32[0])
    assert list(got) == list(expected)
    for k in expected:
        assert got[k].dtype == dtype, k
        assert torch.isfinite(got[k]).all(), k
        scale = max(1.0, expected[k].abs().max().item())
        torch.testing.assert_close(got[k].float(), expected[k], rtol=tol, atol=tol * scale,
                                   msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("cell", CELLS)
def test_to_float64_works(cell):
    module = make_module(cell, num_layers=2, bidirectional=True, dtype=torch.float32)
    assert module.to(torch.float64) is module
    assert all(p.dtype == torch.float64 for p in module.parameters())
    inp, hx = make_module_input(cell, module, "padded")
    assert inp.dtype == torch.float64
    assert_same(module_results(module, module, inp, hx),
                module_results(lambda i, h: stacked_reference(module, i, h), module, inp, hx),
                **TOL)


# ---------------------------------------------------------------------------
# 7. errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_proj_size_is_not_accepted(cell):
    with pytest.raises(TypeError, match="proj_size"):
        MODULES[cell](5, 6, proj_size=3)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_wrong_input_size_raises(cell, layout):
    module = MODULES[cell](5, 6)
    x = torch.randn(4, 3, 7)
    if layout == "packed":
        x = pack_padded_sequence(x, torch.tensor([4, 3, 1]))
    with pytest.raises(RuntimeError, match="input_size|input.size"):
        module(x)


@pytest.mark.parametrize("cell,which", [("LSTM", 0), ("LSTM", 1), ("GRU", 0)],
                         ids=["LSTM-h", "LSTM-c", "GRU-h"])
def test_wrong_hx_shape_raises(cell, which):
    module = MODULES[cell](5, 6, num_layers=2)
    x = torch.randn(4, 3, 5)
    good = [torch.zeros(2, 3, 6), torch.zeros(2, 3, 6)]
    for bad in (torch.zeros(2, 3, 7), torch.zeros(1, 3, 6), torch.zeros(2, 2, 6)):
        states = list(good)
        states[which] = bad
        with pytest.raises(RuntimeError):
            module(x, tuple(states) if cell == "LSTM" else states[0])


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_export_is_refused(cell):
    pytest.importorskip("onnx")
    module = MODULES[cell](5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="ONNX"):
            torch.onnx.export(module, (torch.randn(4, 3, 5),), io.BytesIO(), dynamo=False)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_jit_script_is_refused(cell):
    module = MODULES[cell](5, 6)
    with pytest.raises(RuntimeError, match="torch.jit.script"):
        torch.jit.script(module)
    # and the module is left as it was
    assert isinstance(module, MODULES[cell])


def _bad_norm_cases():
    for cell in CELLS:
        for kind, _ in NORMS[cell]:
            for what in ("weight", "bias"):
                yield pytest.param(cell, f"ln_{kind}_{what}", id=f"{cell}-ln_{kind}_{what}")


@pytest.mark.parametrize("cell,name", list(_bad_norm_cases()))
@pytest.mark.parametrize("bad", ["longer", "2d"])
def test_bad_layer_norm_parameter_shape_raises_naming_it(cell, name, bad):
    a = make_args(cell, 3, 2, 4, 5)
    p = a[name]
    a[name] = torch.cat([p, p[:1]]) if bad == "longer" else p.unsqueeze(0)
    with pytest.raises(RuntimeError, match=name):
        call_op(cell, a, None, False)
    with pytest.raises(RuntimeError, match=name):
        with torch.no_grad():
            call_op(cell, a, None, False)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_norm_parameter_of_another_dtype_raises_naming_it(cell):
    a = make_args(cell, 3, 2, 4, 5)
    a["ln_hh_weight"] = a["ln_hh_weight"].float()
    with pytest.raises(RuntimeError, match="ln_hh_weight"):
        call_op(cell, a, None, False)


# ---------------------------------------------------------------------------
# 8. determinism
# ---------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
def test_bitwise_identical_with_one_and_two_threads(cell, layout, restore_threads):
    # wide enough that a step's GEMM and LayerNorm passes are cut into several blocks
    module = make_module(cell, 48, 128, num_layers=2, bidirectional=True, dtype=torch.float32)
    inp, hx = make_module_input(cell, module, layout, T=5, N=24 if layout == "padded" else 3)
    runs = {}
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        assert torch.get_num_threads() == threads
        res = module_results(module, module, inp, hx)
        if threads in runs:
            got = res
            for k in runs[threads]:
                assert torch.equal(got[k], runs[threads][k]), (threads, k)
        runs[threads] = res
    for k in runs[1]:
        assert torch.equal(runs[1][k], runs[2][k]), (
            f"{k}: max difference {(runs[1][k] - runs[2][k]).abs().max().item():.3g}")


# ---------------------------------------------------------------------------
# 9. dropout between layers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_applies_between_layers_in_training_only(cell):
    with_dropout = make_module(cell, num_layers=2, dropout=0.5)
    without = make_module(cell, num_layers=2, dropout=0.0)
    without.load_state_dict(with_dropout.state_dict())
    inp, hx = make_module_input(cell, with_dropout, "padded")

    torch.manual_seed(5)
    out_train, _ = with_dropout.train()(inp, hx)
    out_plain, _ = without.train()(inp, hx)
    assert (out_train - out_plain).abs().max() > 1e-3

    # the mask is drawn from torch's generator: the same seed, the same mask
    torch.manual_seed(5)
    again, _ = with_dropout(inp, hx)
    assert torch.equal(again, out_train)

    out_eval, _ = with_dropout.eval()(inp, hx)
    assert torch.equal(out_eval, without.eval()(inp, hx)[0])
    torch.testing.assert_close(out_eval, stacked_reference(with_dropout, inp, hx)[0], **TOL)


# ---------------------------------------------------------------------------
# 10. need_workspace=False
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed,reverse", [(False, False), (True, True)],
                         ids=["padded-fwd", "packed-rev"])
def test_forward_without_workspace_gives_the_same_outputs(cell, packed, reverse):
    bs = torch.tensor([3, 3, 2, 1]) if packed else None
    a = make_args(cell, 4, 3, 5, 6, batch_sizes=bs)
    with_ws = call_op(cell, a, bs, reverse, need_workspace=True)
    without = call_op(cell, a, bs, reverse, need_workspace=False)
    rows = 9 if packed else 12
    assert with_ws[-1].shape[0] == rows
    assert without[-1].shape[0] == 0
    for name, x, y in zip(OUTPUTS[cell], without[:-1], with_ws[:-1]):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("cell", CELLS)
def test_backward_through_a_forward_without_workspace_says_why(cell):
    a = make_args(cell, 4, 3, 5, 6)
    a["input"].requires_grad_()
    out = call_op(cell, a, None, False, need_workspace=False)[0]
    with pytest.raises(RuntimeError, match="need_workspace=False"):
        out.sum().backward()


# ---------------------------------------------------------------------------
# 11. Integrations beyond compile: CPU autocast, torch.export, jit.trace
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_cpu_autocast_computes_in_the_weights_dtype(cell):
    """Under CPU autocast the layer-normalized cells run in the weights' dtype (float32
    for a float32 model, as torch.nn.LayerNorm under autocast), whatever the input's."""
    torch.manual_seed(0)
    m = (gatedrnn.LayerNormLSTM if cell == "LSTM" else gatedrnn.LayerNormGRU)(4, 6, num_layers=2)
    x = torch.randn(5, 3, 4)
    expected = m(x.bfloat16().float())[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x.bfloat16())[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_export_and_jit_trace_keep_the_fused_ops(cell):
    torch.manual_seed(0)
    m = (gatedrnn.LayerNormLSTM if cell == "LSTM" else gatedrnn.LayerNormGRU)(4, 6)
    x = torch.randn(5, 3, 4)
    ep = torch.export.export(m, (x,))
    op = f"layer_norm_{cell.lower()}_forward"
    assert any(op in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x)[0], m(x)[0], rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, (x,))
    x2 = torch.randn(5, 3, 4)
    torch.testing.assert_close(traced(x2)[0], m(x2)[0], rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_input_off_the_cpu_and_cuda_is_refused_with_the_reason(cell):
    """The row-wise ops have CPU and CUDA kernels: input elsewhere (a meta tensor here) is
    refused before any op runs, saying so."""
    m = (gatedrnn.LayerNormLSTM if cell == "LSTM" else gatedrnn.LayerNormGRU)(4, 6)
    with pytest.raises(RuntimeError, match="have CPU and CUDA kernels only"):
        m.to("meta")(torch.randn(5, 3, 4, device="meta"))
    plain = (gatedrnn.LSTM if cell == "LSTM" else gatedrnn.GRU)(4, 6, zoneout=0.1)
    with pytest.raises(RuntimeError, match="have CPU and CUDA kernels only"):
        plain.to("meta")(torch.randn(5, 3, 4, device="meta"))
