"""The row-wise ops' portable implementation (csrc/row_wise_portable.cpp: ATen ops per
step), which the CUDA build registers as their CUDA kernels, run on the CPU
(GATEDRNN_ROW_WISE_PORTABLE=1) against the fused CPU kernels: outputs, final states, full
state sequences, every gradient and the gradient-norm monitor's values in float64, for
every row-wise cell and option. CI also runs the row-wise test files whole in this mode
(.ci/run), so the code the GPU runs meets the same specification as the CPU kernels.
"""

import pytest
import torch

import gatedrnn

PORTABLE = "GATEDRNN_ROW_WISE_PORTABLE"

CELLS = {
    "LayerNormLSTM": lambda **o: gatedrnn.LayerNormLSTM(3, 5, num_layers=2, **o),
    "LayerNormGRU": lambda **o: gatedrnn.LayerNormGRU(3, 5, num_layers=2, **o),
    # layer-normalized with every regularizer: zoneout masks and the state mask drawn
    # from the same seed on both sides
    "LayerNormLSTM_regularized": lambda **o: gatedrnn.LayerNormLSTM(
        3, 5, num_layers=2, zoneout=0.3, cell_zoneout=0.2, variational_state_dropout=0.25, **o),
    "LayerNormGRU_regularized": lambda **o: gatedrnn.LayerNormGRU(
        3, 5, num_layers=2, zoneout=0.3, variational_state_dropout=0.25, **o),
    # the plain cells on the row-wise ops
    "LSTM_zoneout": lambda **o: gatedrnn.LSTM(3, 5, num_layers=2, zoneout=0.3,
                                              cell_zoneout=0.2, **o),
    "GRU_state_dropout": lambda **o: gatedrnn.GRU(3, 5, num_layers=2,
                                                  variational_state_dropout=0.25, **o),
    "LSTM_clip": lambda **o: gatedrnn.LSTM(3, 5, num_layers=2, recurrent_grad_clip=0.02, **o),
    "GRU_clip": lambda **o: gatedrnn.GRU(3, 5, num_layers=2, recurrent_grad_clip=0.02, **o),
}

LAYOUTS = ["padded", "batch_first", "packed_unsorted", "unbatched", "bidirectional",
           "bidirectional_packed", "reset", "reset_packed", "eval"]


def _run(make, layout, portable, monkeypatch):
    """One forward and backward of a fresh module (seed 0), masks drawn from seed 1:
    everything it returns and every gradient, and the monitor's norms."""
    monkeypatch.setenv(PORTABLE, "1" if portable else "0")
    torch.manual_seed(0)
    m = make(bidirectional=layout.startswith("bidirectional"),
             batch_first=layout == "batch_first").double()
    m.return_states = True
    if layout == "eval":
        m.eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 3, dtype=torch.float64, generator=g)
    lengths = torch.tensor([4, 6, 2])
    reset = (torch.rand(6, 3, generator=g) < 0.4) if layout.startswith("reset") else None
    if layout == "batch_first":
        x = x.transpose(0, 1).contiguous()
    if layout == "unbatched":
        x = x[:, 0]
    x.requires_grad_()
    torch.manual_seed(1)
    if "packed" in layout:  # resets stay [T, N] in the batch's order
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, hx, states = m(packed, reset=reset) if reset is not None else m(packed)
        out, states_h = out.data, states["h"].data
    else:
        out, hx, states = m(x, reset=reset) if reset is not None else m(x)
        states_h = states["h"]
    finals = hx if isinstance(hx, tuple) else (hx,)
    loss = (out * out).sum() + sum((f * f).sum() for f in finals) + states_h.square().sum()
    with gatedrnn.grad_norms() as rec:
        grads = torch.autograd.grad(loss, [x, *m.parameters()])
    return [out, *finals, states_h, *grads, *(rec[m][k] for k in sorted(rec[m]))]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_portable_ops_match_the_cpu_kernels(cell, layout, monkeypatch):
    fused = _run(CELLS[cell], layout, False, monkeypatch)
    portable = _run(CELLS[cell], layout, True, monkeypatch)
    assert len(fused) == len(portable)
    for a, b in zip(fused, portable):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["LayerNormLSTM", "LayerNormGRU"])
def test_the_switch_runs_other_code_for_the_same_function(cell, monkeypatch):
    """GATEDRNN_ROW_WISE_PORTABLE really switches the implementation: in float32 the two
    sum in different orders (they differ in the last bits), in float64 they agree."""
    def outputs(portable, dtype):
        monkeypatch.setenv(PORTABLE, "1" if portable else "0")
        torch.manual_seed(0)
        m = CELLS[cell]().to(dtype)
        x = torch.randn(20, 8, 3, dtype=dtype)
        return m(x)[0]
    assert not torch.equal(outputs(False, torch.float32), outputs(True, torch.float32))
    torch.testing.assert_close(outputs(True, torch.float64), outputs(False, torch.float64),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_portable_ops_pass_opcheck(cell, monkeypatch):
    """The ops' registration checks (schema, fake kernel, autograd) on the portable code."""
    monkeypatch.setenv(PORTABLE, "1")
    torch.manual_seed(0)
    H, G = 4, (4 if cell == "lstm" else 3) * 4
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, H, dtype=torch.float64)
    w_ih = torch.randn(G, 3, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(G, H, dtype=torch.float64, requires_grad=True)
    gain = torch.rand(G, dtype=torch.float64) + 0.5
    if cell == "lstm":
        op = torch.ops.gatedrnn.layer_norm_lstm_forward
        args = (x, None, h0, h0.clone(), w_ih, w_hh, None, None, gain, None, gain.clone(), None,
                torch.rand(H, dtype=torch.float64) + 0.5, None, None, None, None, False)
    else:
        op = torch.ops.gatedrnn.layer_norm_gru_forward
        args = (x, None, h0, w_ih, w_hh, None, None, gain, None, gain.clone(), None, None, None,
                False)
    torch.library.opcheck(op, args)
