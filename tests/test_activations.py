"""The float32 activations (inline exp, sigmoid and tanh in csrc/cpu/pointwise.h, one
version per vector ISA) against float64 over a dense grid of pre-activations, full
vectors and tails alike: no overflow, saturation to exactly 0 and +-1, and errors of
an ulp or two of 1."""
import pytest
import torch

from gatedrnn import functional as F

# -60 .. 60, dense near 0, plus the edges of exp's range (ln FLT_MIN ~ -87.3, halved for
# tanh's exp(-2|x|)) and zeros.
GRID = torch.cat([
    torch.linspace(-60, 60, 4001, dtype=torch.float64),
    torch.linspace(-1e-3, 1e-3, 257, dtype=torch.float64),
    torch.tensor([-87.4, -87.3, -43.7, -43.6, 43.6, 43.7, 87.3, 87.4, 0.0, -0.0],
                 dtype=torch.float64),
])


def _probe(units):
    """GRID as a [1, len, 1] input; units hidden units per row (a tail when not a
    multiple of the vector width)."""
    return GRID.to(torch.float32).view(1, -1, 1), units


@pytest.mark.parametrize("units", [64, 67], ids=["vectors", "tail"])
def test_tanh(units):
    x, H = _probe(units)
    # h = tanh(w_ih x) with w_ih = 1, w_hh = 0, h0 = 0: the RNN's pre-activation is x.
    out, _ = F.rnn(x, torch.zeros(x.shape[1], H), w_ih=torch.ones(H, 1),
                   w_hh=torch.zeros(H, H))
    expected = torch.tanh(GRID).view(-1, 1).expand(-1, H)
    err = (out[0].double() - expected).abs()
    assert err.max().item() <= 2e-7
    saturated = GRID.abs() >= 9.1  # tanh(9.1) rounds to 1 in float32
    assert torch.equal(out[0][saturated].abs(), torch.ones_like(out[0][saturated]))
    nonzero = GRID != 0  # the GEMM and bias turn -0 into +0 before tanh sees it
    assert torch.equal(torch.signbit(out[0][nonzero, 0]), torch.signbit(GRID[nonzero]))


@pytest.mark.parametrize("units", [64, 67], ids=["vectors", "tail"])
def test_sigmoid(units):
    x, H = _probe(units)
    # GRU with h0 = 0 and the n gate saturated at 1 (w_in = 0, b_in = 30):
    # h = (1 - z) * 1 + z * 0 = 1 - sigmoid(x), z's pre-activation being x.
    w_ih = torch.zeros(3 * H, 1)
    w_ih[H:2 * H] = 1
    b_ih = torch.zeros(3 * H)
    b_ih[2 * H:] = 30
    out, _ = F.gru(x, torch.zeros(x.shape[1], H), w_ih=w_ih, w_hh=torch.zeros(3 * H, H),
                   b_ih=b_ih)
    expected = (1 - torch.sigmoid(GRID)).view(-1, 1).expand(-1, H)
    err = (out[0].double() - expected).abs()
    assert err.max().item() <= 3e-7
    assert torch.equal(out[0][GRID <= -17.4], torch.ones_like(out[0][GRID <= -17.4]))
    assert (out[0][GRID >= 104] == 0).all()
