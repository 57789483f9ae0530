"""gatedrnn.init_ / the init= constructor argument (issue 20, item 3) and residual=True
(item 4): the schemes' defining properties, their errors, and residual stacking against
single layers added up by hand."""
import math

import pytest
import torch

import gatedrnn

MODULES = {"LSTM": gatedrnn.LSTM, "GRU": gatedrnn.GRU, "RNN": gatedrnn.RNN,
           "LayerNormLSTM": gatedrnn.LayerNormLSTM, "LayerNormGRU": gatedrnn.LayerNormGRU}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "LayerNormLSTM": 4, "LayerNormGRU": 3}


def layer_directions(m):
    names = [n for n, _ in m.named_parameters() if n.startswith("weight_hh")]
    for name in names:
        suffix = name[len("weight_hh"):]
        yield (getattr(m, "weight_ih" + suffix), getattr(m, "weight_hh" + suffix),
               getattr(m, "bias_ih" + suffix, None), getattr(m, "bias_hh" + suffix, None))


@pytest.mark.parametrize("cell,proj", [(cell, 0) for cell in MODULES] + [("LSTM", 3)])
def test_orthogonal_makes_each_gate_block_of_w_hh_orthogonal(cell, proj):
    kw = {"proj_size": proj} if proj else {}
    torch.manual_seed(0)
    m = MODULES[cell](5, 7, num_layers=2, bidirectional=True, init="orthogonal", **kw)
    H, gates = 7, GATES[cell]
    for w_ih, w_hh, b_ih, b_hh in layer_directions(m):
        for g in range(gates):
            block = w_hh[g * H:(g + 1) * H].detach().double()
            # [H, P] with H >= P: orthonormal columns
            torch.testing.assert_close(block.t() @ block, torch.eye(block.shape[1],
                                                                     dtype=torch.float64),
                                       rtol=0, atol=1e-5)
            fan_in, fan_out = w_ih.shape[1], H
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert w_ih[g * H:(g + 1) * H].abs().max() <= bound
            assert w_ih[g * H:(g + 1) * H].abs().max() > 0.5 * bound
        assert torch.count_nonzero(b_ih) == 0 and torch.count_nonzero(b_hh) == 0


@pytest.mark.parametrize("cell", ["LSTM", "LayerNormLSTM"])
@pytest.mark.parametrize("value", [None, 2.5])
def test_forget_bias_sets_the_forget_gates_bias_sum(cell, value):
    options = {} if value is None else {"value": value}
    m = MODULES[cell](4, 6, num_layers=2, init="forget_bias", init_options=options)
    expected = 1.0 if value is None else value
    for _, _, b_ih, b_hh in layer_directions(m):
        torch.testing.assert_close((b_ih + b_hh)[6:12].detach(), torch.full((6,), expected))
        assert torch.count_nonzero(b_hh[6:12]) == 0


def test_orthogonal_then_forget_bias_compose_in_order():
    torch.manual_seed(0)
    a = gatedrnn.LSTM(4, 6, init="orthogonal+forget_bias")
    torch.manual_seed(0)
    b = gatedrnn.init_(gatedrnn.init_(gatedrnn.LSTM(4, 6), "torch"), ["orthogonal",
                                                                     "forget_bias"])
    torch.manual_seed(0)
    c = gatedrnn.init_(gatedrnn.LSTM(4, 6), ["orthogonal", "forget_bias"])
    for x, y in zip(a.parameters(), c.parameters()):
        assert torch.equal(x, y)
    assert torch.equal(b.bias_ih_l0[6:12], torch.ones(6))
    assert torch.count_nonzero(a.bias_ih_l0[:6]) == 0  # orthogonal zeroed the rest


@pytest.mark.parametrize("cell", ["LSTM", "LayerNormLSTM"])
def test_chrono_biases_are_in_range_and_input_is_minus_forget(cell):
    torch.manual_seed(0)
    t_max = 50
    m = MODULES[cell](4, 200, init="chrono", init_options={"t_max": t_max})
    b_ih, b_hh = m.bias_ih_l0.detach(), m.bias_hh_l0.detach()
    H = 200
    forget = b_ih[H:2 * H] + b_hh[H:2 * H]
    assert forget.min() >= 0 and forget.max() <= math.log(t_max - 1) + 1e-6
    # uniform in [1, t_max - 1] before the log: spread over the range
    assert forget.exp().max() > 0.8 * (t_max - 1) and forget.exp().min() < 0.2 * t_max
    torch.testing.assert_close((b_ih + b_hh)[:H], -forget)


def test_identity_is_the_irnn():
    m = gatedrnn.RNN(3, 5, num_layers=2, nonlinearity="relu", init="identity")
    for _, w_hh, b_ih, b_hh in layer_directions(m):
        assert torch.equal(w_hh, torch.eye(5))
        assert torch.count_nonzero(b_ih) == 0 and torch.count_nonzero(b_hh) == 0


@pytest.mark.parametrize("cell", list(MODULES))
def test_torch_scheme_is_torch_nn_default_initialization(cell):
    torch.manual_seed(3)
    a = MODULES[cell](4, 6)
    torch.manual_seed(3)
    b = gatedrnn.init_(MODULES[cell](4, 6), "torch")
    torch.manual_seed(3)
    ref = MODULES[cell](4, 6)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert x.shape == y.shape, name
    if cell in ("LSTM", "GRU", "RNN"):
        torch.manual_seed(3)
        nn = getattr(torch.nn, cell)(4, 6)
        for x, y in zip(ref.parameters(), nn.parameters()):
            assert torch.equal(x, y)
    # the torch scheme redraws every weight uniformly in +-1/sqrt(H), LayerNorms reset
    bound = 1 / math.sqrt(6)
    for name, p in b.named_parameters():
        if name.startswith("ln_weight"):
            assert torch.equal(p, torch.ones_like(p))
        elif name.startswith("ln_bias"):
            assert torch.count_nonzero(p) == 0
        else:
            assert p.abs().max() <= bound


@pytest.mark.parametrize("scheme,cls,message", [
    ("forget_bias", gatedrnn.GRU, "forget gate"),
    ("chrono", gatedrnn.RNN, "forget gate"),
    ("identity", gatedrnn.LSTM, "Elman"),
    ("orthogonl", gatedrnn.LSTM, "unknown initialization scheme 'orthogonl'"),
])
def test_schemes_that_do_not_apply_raise(scheme, cls, message):
    with pytest.raises(ValueError, match=message):
        cls(3, 4, init=scheme)


def test_scheme_options_are_checked():
    with pytest.raises(ValueError, match="t_max"):
        gatedrnn.LSTM(3, 4, init="chrono")
    with pytest.raises(ValueError, match="t_max"):
        gatedrnn.LSTM(3, 4, init="chrono", init_options={"t_max": 2})
    with pytest.raises(ValueError, match="'value'"):
        gatedrnn.LSTM(3, 4, init="orthogonal", init_options={"value": 1.0})
    with pytest.raises(ValueError, match="bias=False"):
        gatedrnn.LSTM(3, 4, bias=False, init="forget_bias")
    with pytest.raises(ValueError, match="init_options given without init"):
        gatedrnn.LSTM(3, 4, init_options={"value": 1.0})
    with pytest.raises(ValueError, match="recurrent module"):
        gatedrnn.init_(torch.nn.Linear(3, 4), "orthogonal")


def test_init_works_on_torch_nn_modules_too():
    m = gatedrnn.init_(torch.nn.LSTM(3, 4), "orthogonal+forget_bias")
    assert torch.equal(m.bias_ih_l0[4:8], torch.ones(4))


# ---------------------------------------------------------------------------
# residual stacking
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(MODULES))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_residual_adds_each_layers_input_to_its_output(cell, bidirectional):
    """Against the same layers run one at a time, their inputs added by hand."""
    torch.manual_seed(0)
    D = 2 if bidirectional else 1
    m = MODULES[cell](6 * D, 6, num_layers=3, bidirectional=bidirectional, residual=True,
                      dtype=torch.float64)
    x = torch.randn(5, 2, 6 * D, dtype=torch.float64)
    out, _ = m(x)
    layer_input = x
    for layer in range(3):
        single = MODULES[cell](6 * D, 6, bidirectional=bidirectional, dtype=torch.float64)
        with torch.no_grad():
            for name, p in single.named_parameters():
                p.copy_(getattr(m, name.replace("_l0", f"_l{layer}")))
        layer_input = single(layer_input)[0] + layer_input
    torch.testing.assert_close(out, layer_input, rtol=1e-12, atol=1e-12)


def test_residual_comes_before_the_inter_layer_dropout():
    torch.manual_seed(0)
    m = gatedrnn.GRU(4, 4, num_layers=2, residual=True, dropout=0.5, dtype=torch.float64)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    torch.manual_seed(7)
    out, _ = m(x)
    first = gatedrnn.GRU(4, 4, dtype=torch.float64)
    second = gatedrnn.GRU(4, 4, dtype=torch.float64)
    with torch.no_grad():
        for name, p in first.named_parameters():
            p.copy_(getattr(m, name))
            getattr(second, name).copy_(getattr(m, name.replace("_l0", "_l1")))
    torch.manual_seed(7)
    hidden = torch.nn.functional.dropout(first(x)[0] + x, p=0.5, training=True)
    torch.testing.assert_close(out, second(hidden)[0] + hidden, rtol=1e-12, atol=1e-12)


def test_residual_with_mismatched_widths_names_the_layer():
    with pytest.raises(ValueError, match="layer 0 takes 5 features and gives 6"):
        gatedrnn.LSTM(5, 6, num_layers=2, residual=True)
    with pytest.raises(ValueError, match="layer 0 takes 6 features and gives 12"):
        gatedrnn.GRU(6, 6, bidirectional=True, residual=True)


def test_defaults_leave_the_drop_ins_unchanged():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, 5, num_layers=2, dtype=torch.float64)
    ours = gatedrnn.LSTM(4, 5, num_layers=2, dtype=torch.float64, init=None, residual=False)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-10, atol=1e-10)
    converted = gatedrnn.convert(torch.nn.GRU(4, 5))
    assert converted(torch.randn(3, 2, 4))[0].shape == (3, 2, 5)
    assert "residual" in repr(gatedrnn.RNN(4, 4, residual=True))
    assert "residual" not in repr(gatedrnn.RNN(4, 4))
