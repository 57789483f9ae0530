"""Full state sequences, return_states=True (issue 20, item 5): forward returns (output, hx,
states) with states = {"h": [layers * directions, T, N, H_out], "c" (the LSTMs): [..., H]}
laid out as the output is (batch_first: [L*D, N, T, *]; unbatched: [L*D, T, *]; packed: a
PackedSequence like the output's, data [R, L*D, *]), from the kernels' own results (no
recomputation), differentiable."""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import gatedrnn

DT = torch.float64
CELLS = {
    "LSTM": lambda *a, **k: gatedrnn.LSTM(*a, **k),
    "LSTM_proj": lambda *a, **k: gatedrnn.LSTM(*a, proj_size=3, **k),
    "LSTM_zoneout": lambda *a, **k: gatedrnn.LSTM(*a, zoneout=0.3, cell_zoneout=0.2, **k),
    "GRU": lambda *a, **k: gatedrnn.GRU(*a, **k),
    "RNN_tanh": lambda *a, **k: gatedrnn.RNN(*a, **k),
    "RNN_relu": lambda *a, **k: gatedrnn.RNN(*a, nonlinearity="relu", **k),
    "LayerNormLSTM": lambda *a, **k: gatedrnn.LayerNormLSTM(*a, **k),
    "LayerNormGRU": lambda *a, **k: gatedrnn.LayerNormGRU(*a, **k),
}
HAS_C = {"LSTM", "LSTM_proj", "LSTM_zoneout", "LayerNormLSTM"}
I, H = 4, 5


def make(cell, **kwargs):
    torch.manual_seed(0)
    m = CELLS[cell](I, H, dtype=DT, return_states=True, **kwargs)
    return m.eval() if cell == "LSTM_zoneout" else m  # zoneout's deterministic eval form


def states_tuple(hx):
    return hx if isinstance(hx, tuple) else (hx,)


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_step_state_is_the_final_state_of_the_sequence_cut_there(cell):
    """A forward layer's state after step t is the final state of the same module run on
    the first t + 1 steps; a reverse layer's, that of the run on steps t.. T - 1."""
    T = 6
    x = torch.randn(T, 2, I, dtype=DT)
    for layers, bidirectional in ((2, False), (1, True)):
        m = make(cell, num_layers=layers, bidirectional=bidirectional)
        _, hx, states = m(x)
        assert set(states) == ({"h", "c"} if cell in HAS_C else {"h"})
        out_size = 3 if cell == "LSTM_proj" else H
        assert states["h"].shape == (layers * (2 if bidirectional else 1), T, 2, out_size)
        for t in range(T):
            _, cut, _ = m(x[:t + 1])
            for kind, final in zip(("h", "c"), states_tuple(cut)):
                torch.testing.assert_close(states[kind][0::(2 if bidirectional else 1), t],
                                           final[0::(2 if bidirectional else 1)],
                                           rtol=1e-12, atol=1e-12)
            if bidirectional:
                _, cut, _ = m(x[t:])
                for kind, final in zip(("h", "c"), states_tuple(cut)):
                    torch.testing.assert_close(states[kind][1, t], final[1], rtol=1e-12,
                                               atol=1e-12)
        # the last step's (first, for the reverse direction) states are h_n and c_n
        for kind, final in zip(("h", "c"), states_tuple(hx)):
            torch.testing.assert_close(states[kind][0::(2 if bidirectional else 1), -1],
                                       final[0::(2 if bidirectional else 1)], rtol=0, atol=0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_the_last_layers_states_are_the_output(cell):
    m = make(cell, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, I, dtype=DT)
    out, _, states = m(x)
    torch.testing.assert_close(torch.cat([states["h"][2], states["h"][3]], -1), out,
                               rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_tanh", "LayerNormLSTM"])
def test_layouts_follow_the_output(cell):
    m = make(cell, num_layers=2)
    x = torch.randn(5, 3, I, dtype=DT)
    _, _, padded = m(x)
    m.batch_first = True
    _, _, first = m(x.transpose(0, 1))
    for kind in padded:
        assert torch.equal(first[kind], padded[kind].transpose(1, 2))
    m.batch_first = False
    _, _, single = m(x[:, 1])
    for kind in padded:
        torch.testing.assert_close(single[kind], padded[kind][:, :, 1], rtol=1e-12, atol=1e-12)
    lengths = torch.tensor([5, 2, 4])
    out, _, packed = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    for kind in padded:
        assert isinstance(packed[kind], PackedSequence)
        assert torch.equal(packed[kind].batch_sizes, out.batch_sizes)
        assert torch.equal(packed[kind].unsorted_indices, out.unsorted_indices)
        data, got_lengths = pad_packed_sequence(packed[kind])  # [T, N, L*D, *]
        assert torch.equal(got_lengths, lengths)
        for n, length in enumerate(lengths.tolist()):
            _, _, alone = m(x[:length, n:n + 1])
            torch.testing.assert_close(data[:length, n], alone[kind][:, :, 0].transpose(0, 1),
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("packed", [False, True])
def test_gradients_through_every_state_pass_gradcheck(cell, packed):
    m = make(cell, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, I, dtype=DT, requires_grad=True)
    weights = {k: torch.randn(4, 4, 2, 3 if (k == "h" and cell == "LSTM_proj") else H,
                              dtype=DT) for k in ("h", "c")}

    def loss(x):
        if packed:
            out, hx, states = m(pack_padded_sequence(x, [4, 3]))
            # [T, N, L*D, *] -> [L*D, T, N, *]
            states = {k: pad_packed_sequence(v)[0].permute(2, 0, 1, 3) for k, v in states.items()}
            out = pad_packed_sequence(out)[0]
        else:
            out, hx, states = m(x)
        return out.sum() + sum((v * weights[k]).sum() for k, v in states.items())

    assert torch.autograd.gradcheck(loss, (x,))


@pytest.mark.parametrize("cell", sorted(HAS_C))
def test_cell_state_gradients_equal_autograd_of_a_cell_loop(cell):
    """The gradient w.r.t. every weight of a loss on the cell states alone, against the same
    loss on c_n of the sequences cut at each step (autograd through our own final states)."""
    m = make(cell)
    x = torch.randn(5, 2, I, dtype=DT)
    w = torch.randn(5, 2, H, dtype=DT)
    _, _, states = m(x)
    got = torch.autograd.grad((states["c"][0] * w).sum(), list(m.parameters()),
                              allow_unused=True)
    total = 0
    for t in range(5):
        _, (_, c_n), _ = m(x[:t + 1])
        total = total + (c_n[0] * w[t]).sum()
    expected = torch.autograd.grad(total, list(m.parameters()), allow_unused=True)
    for a, b in zip(got, expected):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_off_by_default_and_switchable():
    m = gatedrnn.LSTM(I, H)
    x = torch.randn(3, 2, I)
    assert len(m(x)) == 2
    m.return_states = True
    assert len(m(x)) == 3
    assert "return_states=True" in repr(m)


def test_inference_returns_states_without_autograd():
    m = make("LSTM", num_layers=2)
    x = torch.randn(4, 2, I, dtype=DT)
    with torch.no_grad():
        _, _, states = m(x)
    _, _, expected = m(x)
    for kind in states:
        torch.testing.assert_close(states[kind], expected[kind].detach(), rtol=0, atol=0)


def test_bfloat16_states_are_in_the_output_dtype():
    m = gatedrnn.LSTM(I, H, return_states=True, dtype=torch.bfloat16)
    out, _, states = m(torch.randn(3, 2, I, dtype=torch.bfloat16))
    assert states["h"].dtype == states["c"].dtype == out.dtype == torch.bfloat16


@pytest.mark.parametrize("hidden", [5, 40])
def test_bfloat16_cell_states_are_the_final_states_of_each_cut(hidden):
    """A bfloat16 LSTM's workspace keeps its gates as float16 before the cell states
    (csrc/cpu/isa/lstm.h): the states returned are its c columns, each step's the c_n of
    the sequence cut there, bit for bit (both the float32 c rounded once), and a loss on
    them has the gradients of the same loss on those c_n (up to bfloat16 rounding)."""
    torch.manual_seed(0)
    m = gatedrnn.LSTM(I, hidden, num_layers=2, return_states=True, dtype=torch.bfloat16)
    x = torch.randn(6, 3, I, dtype=torch.bfloat16)
    w = torch.randn(6, 3, hidden, dtype=torch.bfloat16)
    _, _, states = m(x)
    got = torch.autograd.grad((states["c"][1] * w).float().sum(), list(m.parameters()))
    total = 0
    for t in range(6):
        _, (_, c_n), _ = m(x[:t + 1])
        assert torch.equal(states["c"][:, t], c_n), t
        total = total + (c_n[1] * w[t]).float().sum()
    expected = torch.autograd.grad(total, list(m.parameters()))
    for a, b in zip(got, expected):
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0.03 * scale)


@pytest.mark.parametrize("cell", ["LSTM", "LayerNormLSTM"])
def test_double_backward_through_cell_states_is_refused(cell):
    m = make(cell)
    x = torch.randn(3, 2, I, dtype=DT, requires_grad=True)
    _, _, states = m(x)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(states["c"].sum(), x, create_graph=True)
    # through h, which is the output, it is supported
    _, _, states = m(x)
    (g,) = torch.autograd.grad(states["h"].pow(2).sum(), x, create_graph=True)
    g.sum().backward()


def test_the_workspace_is_differentiable_in_its_cell_state_columns_only():
    """What reaches the raw op's workspace outside the cell-state columns (its gates) is
    not a gradient of anything the op computes from its inputs through them: it is ignored,
    as for every op's workspace."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, I, dtype=DT)
    w_ih = torch.randn(4 * H, I, dtype=DT, requires_grad=True)
    w_hh = torch.randn(4 * H, H, dtype=DT)
    h0 = torch.zeros(2, H, dtype=DT)
    _, _, _, workspace = torch.ops.gatedrnn.lstm_forward(x, None, h0, h0, w_ih, w_hh, None,
                                                         None, None, False)
    (cells,) = torch.autograd.grad(workspace[:, 4 * H:].sum(), w_ih, retain_graph=True)
    (both,) = torch.autograd.grad(workspace.sum(), w_ih)
    assert cells.abs().max() > 0
    torch.testing.assert_close(both, cells, rtol=0, atol=0)


def test_a_cell_state_gradient_of_the_wrong_shape_is_refused():
    torch.manual_seed(0)
    x = torch.randn(3, 2, I, dtype=DT)
    w_ih, w_hh = torch.randn(4 * H, I, dtype=DT), torch.randn(4 * H, H, dtype=DT)
    h0 = torch.zeros(2, H, dtype=DT)
    out, h_n, c_n, ws = torch.ops.gatedrnn.lstm_forward(x, None, h0, h0, w_ih, w_hh, None,
                                                        None, None, False)
    with pytest.raises(RuntimeError, match="grad_cell_states"):
        torch.ops.gatedrnn.lstm_backward(out, h_n, c_n, x, None, h0, h0, w_ih, w_hh, None, out,
                                         ws, False, grad_cell_states=torch.zeros(5, H, dtype=DT))


def test_exporters_refuse_it():
    m = gatedrnn.GRU(I, H, return_states=True)
    with pytest.raises(RuntimeError, match="return_states"):
        m._check_twin_is_exact("ONNX export")


def test_compiles_without_graph_breaks():
    m = make("LSTM", num_layers=2)
    x = torch.randn(4, 2, I, dtype=DT, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out, _, states = compiled(x)
    expected_out, _, expected = m(x)
    for kind in expected:
        torch.testing.assert_close(states[kind], expected[kind], rtol=0, atol=0)
    (g,) = torch.autograd.grad(states["c"].sum(), x)
    (e,) = torch.autograd.grad(expected["c"].sum(), x)
    torch.testing.assert_close(g, e, rtol=0, atol=0)
