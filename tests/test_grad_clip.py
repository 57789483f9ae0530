"""In-kernel gradient clipping, recurrent_grad_clip (issue 20, item 2): the gradient of each
step's gate pre-activations clamped to [-c, c] before it reaches h_{t-1} and the weights,
against a Python loop whose pre-activations carry clamping hooks."""
import pytest
import torch

import gatedrnn
from gatedrnn import reference

DT = torch.float64
MODULES = {"LSTM": gatedrnn.LSTM, "GRU": gatedrnn.GRU, "LayerNormLSTM": gatedrnn.LayerNormLSTM,
           "LayerNormGRU": gatedrnn.LayerNormGRU,
           "RNN_tanh": lambda *a, **k: gatedrnn.RNN(*a, nonlinearity="tanh", **k),
           "RNN_relu": lambda *a, **k: gatedrnn.RNN(*a, nonlinearity="relu", **k)}


def clamp_hook(c):
    return lambda g: g.clamp(-c, c)


def hooked_loop(cell, m, x, c, reverse=False):
    """One layer, one direction, written from the equations, each gate pre-activation's
    gradient clamped by a hook."""
    p = dict(m.named_parameters())
    ln = cell.startswith("LayerNorm")
    norm = (lambda v, kind: reference._layer_norm(v, p[f"ln_weight_{kind}_l0"],
                                                  p[f"ln_bias_{kind}_l0"])) if ln else \
        (lambda v, kind: v)
    T, N, H = x.shape[0], x.shape[1], m.hidden_size
    h = x.new_zeros(N, H)
    cst = x.new_zeros(N, H)
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        gx = norm(x[t] @ p["weight_ih_l0"].t(), "ih") + p["bias_ih_l0"]
        gh = norm(h @ p["weight_hh_l0"].t(), "hh") + p["bias_hh_l0"]
        if cell.startswith("RNN"):
            pre = gx + gh
            pre.register_hook(clamp_hook(c))
            h = torch.tanh(pre) if cell == "RNN_tanh" else torch.relu(pre)
        elif "LSTM" in cell:
            pre = gx + gh
            pre.register_hook(clamp_hook(c))
            i, f, g, o = pre.chunk(4, 1)
            cst = torch.sigmoid(f) * cst + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(norm(cst, "cell"))
        else:
            xr, xz, xn = gx.chunk(3, 1)
            hr, hz, hn = gh.chunk(3, 1)
            r_pre, z_pre = xr + hr, xz + hz
            for v in (r_pre, z_pre):
                v.register_hook(clamp_hook(c))
            r, z = torch.sigmoid(r_pre), torch.sigmoid(z_pre)
            n_pre = xn + r * hn
            n_pre.register_hook(clamp_hook(c))
            h = (1 - z) * torch.tanh(n_pre) + z * h
        outs[t] = h
    return torch.stack(outs)


@pytest.mark.parametrize("cell", list(MODULES))
@pytest.mark.parametrize("reverse", [False, True])
def test_clipped_gradients_equal_a_hook_clamped_loop(cell, reverse):
    torch.manual_seed(0)
    c = 0.02
    m = MODULES[cell](3, 5, bidirectional=reverse, recurrent_grad_clip=c, dtype=DT)
    if cell.startswith("LayerNorm"):
        with torch.no_grad():
            for name, q in m.named_parameters():
                if name.startswith("ln_"):
                    q.add_(0.3 * torch.randn_like(q))
    x = torch.randn(6, 2, 3, dtype=DT, requires_grad=True)
    out, _ = m(x)
    if reverse:
        out = out[..., 5:]
    g = torch.randn_like(out) * 3
    params = [q for name, q in m.named_parameters() if name.endswith("_reverse") == reverse]
    got = torch.autograd.grad(out, [x, *params], g)
    single = MODULES[cell](3, 5, dtype=DT)
    with torch.no_grad():
        for (name, q), src in zip(single.named_parameters(), params):
            q.copy_(src)
    expected_out = hooked_loop(cell, single, x, c, reverse)
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-10)
    expected = torch.autograd.grad(expected_out, [x, *single.parameters()], g)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # the clip is active: without it the gradients differ
    unclipped = MODULES[cell](3, 5, bidirectional=reverse, dtype=DT)
    unclipped.load_state_dict(m.state_dict())
    out2, _ = unclipped(x)
    g2 = torch.autograd.grad(out2[..., 5:] if reverse else out2, x, g)[0]
    assert (g2 - got[0]).abs().max() > 1e-3


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1", True])
def test_bad_clip_values_raise(bad):
    with pytest.raises(ValueError, match="recurrent_grad_clip"):
        gatedrnn.LSTM(3, 4, recurrent_grad_clip=bad)


def test_clip_is_refused_with_a_projection():
    with pytest.raises(ValueError, match="recurrent_grad_clip"):
        gatedrnn.LSTM(3, 4, proj_size=2, recurrent_grad_clip=1.0)


@pytest.mark.parametrize("cell", ["GRU", "RNN_tanh"])
def test_double_backward_through_a_clipped_gradient_is_refused(cell):
    m = MODULES[cell](3, 4, recurrent_grad_clip=0.5, dtype=DT)
    x = torch.randn(4, 2, 3, dtype=DT, requires_grad=True)
    out, _ = m(x)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_a_zero_clip_is_the_default_module_bitwise():
    torch.manual_seed(0)
    a = gatedrnn.LSTM(3, 4, dtype=DT)
    b = gatedrnn.LSTM(3, 4, dtype=DT, recurrent_grad_clip=0.0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 2, 3, dtype=DT, requires_grad=True)
    ga = torch.autograd.grad(a(x)[0].sum(), x)[0]
    gb = torch.autograd.grad(b(x)[0].sum(), x)[0]
    assert torch.equal(ga, gb)
    assert "recurrent_grad_clip=0.5" in repr(gatedrnn.GRU(3, 4, recurrent_grad_clip=0.5))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_clip_with_packed_input_equals_each_sequence_clipped_alone(nonlinearity):
    """The RNN clips in its own (team) kernels, which run packed batches by live rows: each
    sequence's gradients must be those of the sequence run alone."""
    torch.manual_seed(1)
    m = gatedrnn.RNN(3, 5, nonlinearity=nonlinearity, recurrent_grad_clip=0.05, dtype=DT)
    lengths = [6, 4, 1]
    x = torch.randn(6, 3, 3, dtype=DT) * 2
    g = torch.randn(6, 3, 5, dtype=DT) * 3
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    out, _ = m(packed)
    gout = torch.nn.utils.rnn.pack_padded_sequence(g, lengths).data
    got = torch.autograd.grad(out.data, list(m.parameters()), gout)
    expected = [torch.zeros_like(q) for q in m.parameters()]
    for n, length in enumerate(lengths):
        out_n, _ = m(x[:length, n:n + 1])
        for e, q in zip(expected, torch.autograd.grad(out_n, list(m.parameters()),
                                                      g[:length, n:n + 1])):
            e += q
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_rnn_clip_keeps_a_nan_gradient_nan():
    """Clamping selects rather than computes, as std::clamp and torch.clamp do: a NaN
    gradient stays NaN instead of turning into the bound."""
    m = gatedrnn.RNN(2, 3, recurrent_grad_clip=0.5, dtype=DT)
    x = torch.randn(3, 1, 2, dtype=DT, requires_grad=True)
    out, _ = m(x)
    g = torch.zeros_like(out)
    g[-1, 0, 0] = float("nan")
    (gx,) = torch.autograd.grad(out, x, g)
    assert gx[-1].isnan().all()
