"""The vanishing-gradient lab (python/gatedrnn/lab): the adding-problem generator, the
gradient-flow measurement against autograd hooks on a Python cell loop, the fit of the decay,
the verdicts' rules, and the --quick run writing its report."""
import math
import os
import sys

import pytest
import torch

from gatedrnn.lab import __main__ as lab_main  # noqa: F401  (python -m gatedrnn.lab imports)
from gatedrnn.lab import experiments as E
from gatedrnn.lab import main, report
from gatedrnn.lab.flow import FLOOR, fit_decay, gradient_flow
from gatedrnn.lab.models import AddingModel, Config
from gatedrnn.lab.stats import compare, compare_mse
from gatedrnn.lab.tasks import BASELINE_MSE, adding_problem
from gatedrnn.lab.training import Run, _flushing_denormals

# --- the adding problem ---


@pytest.mark.parametrize("T", [2, 3, 10, 51, 200])
def test_adding_problem_shapes_markers_and_target(T):
    x, y = adding_problem(T, 37, torch.Generator().manual_seed(T))
    assert x.shape == (T, 37, 2) and y.shape == (37,)
    assert x.dtype == y.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    # Exactly two markers per sequence, every other entry 0.
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    assert (markers.sum(0) == 2).all()
    # The placement rule: one in the first half [0, T // 2), one in the second [T // 2, T).
    half = T // 2
    assert (markers[:half].sum(0) == 1).all()
    assert (markers[half:].sum(0) == 1).all()
    # The target is the sum of the two marked values, exactly.
    for n in range(37):
        marked = markers[:, n].nonzero().flatten().tolist()
        assert len(marked) == 2
        assert y[n] == values[marked[0], n] + values[marked[1], n]


def test_adding_problem_markers_cover_each_half():
    """Every step of each half gets its marker sometimes (uniform placement)."""
    T = 9
    x, _ = adding_problem(T, 4000, torch.Generator().manual_seed(0))
    positions = x[..., 1].nonzero()[:, 0]
    counts = torch.bincount(positions, minlength=T)
    assert (counts > 0).all()
    # First half: 4 steps share 4000 markers; second half: 5 steps share 4000.
    assert counts[:4].float().sub(1000).abs().max() < 150
    assert counts[4:].float().sub(800).abs().max() < 150


def test_adding_problem_is_seeded_and_baseline_is_one_sixth():
    a = adding_problem(30, 5, torch.Generator().manual_seed(3))
    b = adding_problem(30, 5, torch.Generator().manual_seed(3))
    c = adding_problem(30, 5, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    _, y = adding_problem(50, 100_000, torch.Generator().manual_seed(0))
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert abs(float(((y - 1) ** 2).mean()) - BASELINE_MSE) < 0.005
    assert abs(BASELINE_MSE - 0.1667) < 1e-4


def test_adding_problem_rejects_bad_sizes():
    with pytest.raises(ValueError, match="T must be at least 2"):
        adding_problem(1, 4)
    with pytest.raises(ValueError, match="batch"):
        adding_problem(10, 0)


# --- gradient flow against autograd on a Python cell loop ---


def _loop_grad_norms(model, x, y, layer):
    """||dL/dh_t|| of layer `layer` by a Python loop over the cell equations with
    retain_grad, the loss on the last step's output as the lab's."""
    rnn = model.rnn
    mode = rnn.mode
    N, H = x.shape[1], rnn.hidden_size
    inputs = list(x.unbind(0))
    kept = None
    for l in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{l}"), getattr(rnn, f"weight_hh_l{l}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{l}"), getattr(rnn, f"bias_hh_l{l}")
        h = torch.zeros(N, H, dtype=x.dtype)
        c = torch.zeros(N, H, dtype=x.dtype)
        outputs = []
        for x_t in inputs:
            gi = x_t @ w_ih.T + b_ih
            gh = h @ w_hh.T + b_hh
            if mode == "RNN_TANH":
                h = torch.tanh(gi + gh)
            elif mode == "RNN_RELU":
                h = torch.relu(gi + gh)
            elif mode == "LSTM":
                i, f, g, o = (gi + gh).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:  # GRU
                ir, iz, in_ = gi.chunk(3, 1)
                hr, hz, hn = gh.chunk(3, 1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                n = torch.tanh(in_ + r * hn)
                h = (1 - z) * n + z * h
            h.retain_grad()
            outputs.append(h)
        if l == layer:
            kept = outputs
        inputs = outputs
    prediction = model.head(inputs[-1]).squeeze(-1)
    torch.mean((prediction - y) ** 2).backward()
    return torch.stack([h.grad.norm() for h in kept]).to(torch.float64)


@pytest.mark.parametrize("config,layers", [
    (Config("RNN-tanh", "rnn_tanh"), 1),
    (Config("RNN-ReLU identity", "rnn_relu", init="identity"), 1),
    (Config("LSTM", "lstm"), 1),
    (Config("LSTM forget bias 1", "lstm", init="forget_bias"), 1),
    (Config("GRU", "gru"), 1),
    (Config("2-layer RNN-tanh", "rnn_tanh", layers=2), 2),
])
def test_gradient_flow_matches_autograd_hooks(config, layers):
    torch.manual_seed(0)
    model = AddingModel(config, hidden=6).double()
    x, y = adding_problem(9, 4, torch.Generator().manual_seed(1), dtype=torch.float64)
    before = [p.grad for p in model.parameters()]
    for layer in range(layers):
        measured = gradient_flow(model, x, y, layer=layer)
        assert measured.shape == (9,) and measured.dtype == torch.float64
        # The lab's measurement leaves the parameters' gradients as they were.
        assert [p.grad for p in model.parameters()] == before
        model.zero_grad(set_to_none=True)
        expected = _loop_grad_norms(model, x, y, layer)
        model.zero_grad(set_to_none=True)
        torch.testing.assert_close(measured, expected, rtol=1e-9, atol=1e-300)


def test_gradient_flow_float32_matches_autograd_hooks():
    torch.manual_seed(2)
    model = AddingModel(Config("LSTM", "lstm"), hidden=8)
    x, y = adding_problem(12, 5, torch.Generator().manual_seed(2))
    measured = gradient_flow(model, x, y)
    model.zero_grad(set_to_none=True)
    expected = _loop_grad_norms(model, x, y, 0)
    torch.testing.assert_close(measured, expected, rtol=1e-4, atol=1e-12)


# --- the decay fit and the verdicts ---


def test_fit_decay_recovers_a_geometric_decay():
    T = 40
    distance = torch.arange(T - 1, -1, -1, dtype=torch.float64)
    fit = fit_decay(3.0 * 0.8 ** distance)
    assert fit["decay"] == pytest.approx(0.8, rel=1e-12)
    assert fit["span"] == pytest.approx(0.8 ** (T - 1), rel=1e-9)
    assert fit["used"] == T and fit["floored"] == 0


def test_fit_decay_leaves_out_underflow_and_nan():
    norms = 0.5 ** torch.arange(9, -1, -1, dtype=torch.float64)
    norms[:3] = 0.0
    norms[3] = math.nan
    fit = fit_decay(norms)
    assert fit["decay"] == pytest.approx(0.5, rel=1e-12)
    assert fit["used"] == 6 and fit["floored"] == 4
    assert fit["span"] == pytest.approx(FLOOR / 1.0)
    assert math.isnan(fit_decay(torch.zeros(5, dtype=torch.float64))["decay"])


def test_compare_rules():
    assert compare([0.98, 0.97, 0.99], [0.70, 0.72, 0.71], True, 0.02) == "better"
    assert compare([0.70, 0.72], [0.98, 0.97], True, 0.02) == "worse"
    assert compare([0.80, 0.90], [0.85, 0.86], True, 0.02) == "same"   # within the spread
    assert compare([0.800], [0.81], True, 0.02) == "same"               # below the effect
    assert compare_mse([0.001, 0.002], [0.16, 0.17], floor=1e-3) == "better"
    # Below the early-stop floor the MSEs are equal; a diverged run counts as 1/6.
    assert compare_mse([1e-5], [9e-4], floor=1e-3) == "same"
    assert compare_mse([math.nan], [0.01], floor=1e-3) == "worse"


def _synthetic_results(settings, decays, mses):
    """Runs for every job of `settings` without training: gradient norms decaying by
    decays[label] per step, and test MSE mses[label] (defaults 0.7 and 0.16)."""
    results = {}
    for config, T, seed in E.jobs(settings):
        decay = decays.get(config.label, 0.7) * (1 + 0.001 * seed)
        flow = decay ** torch.arange(T - 1, -1, -1, dtype=torch.float64)
        mse = mses.get(config.label, 0.16)
        run = Run(config, T, seed, eval_steps=[0, 100], test_mse=[0.9, mse],
                  solved_at=100 if mse < 0.01 else None, flow_init=flow, flow_final=flow,
                  decay_init=fit_decay(flow)["decay"], decay_final=fit_decay(flow)["decay"])
        results[(config, T, seed)] = run
    return results


def _claim_line(lines, start):
    matches = [line for line in lines if line.startswith(f"- claim: {start}")]
    assert len(matches) == 1, (start, lines)
    return matches[0]


def test_verdicts_are_computed_from_the_numbers():
    s = E.settings(quick=True, seeds=2)
    claim = "the LSTM keeps gradients over long spans better than the tanh RNN (at init)"
    for lstm, rnn, verdict in ((0.98, 0.71, "supported"), (0.60, 0.71, "refuted"),
                               (0.71, 0.715, "not clear")):
        view = report.View(s, _synthetic_results(s, {"LSTM": lstm, "RNN-tanh": rnn}, {}))
        line = _claim_line(report.flow_claims(view), claim)
        assert f"decay per step {lstm:.3g} vs RNN-tanh {rnn:.3g}" in line
        assert line.endswith(f"**{verdict}**")
    # Attention solving the task: from the MSEs.
    attention = "RNN-tanh + attention"
    for mse, verdict, outcome in ((0.0005, "supported", "helped"),
                                  (0.15, "refuted", "no clear effect")):
        view = report.View(s, _synthetic_results(s, {}, {attention: mse}))
        line = _claim_line(report.remedy_claims(view), "attention over the outputs solves")
        assert line.endswith(f"**{verdict}**")
        assert report.remedy_outcome(view, E.REMEDIES[-1]) == outcome
    # Neither solved: "as well as" says nothing.
    view = report.View(s, _synthetic_results(s, {}, {}))
    line = _claim_line(report.adding_claims(view), "the GRU learns long dependencies")
    assert line.endswith("**not clear**") and "neither got under" in line


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        report.pyplot()


# --- the --quick run ---


def test_quick_run_writes_the_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "lab"
    threads = torch.get_num_threads()
    assert main(["--quick", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads
    assert not _flushing_denormals()          # restored after the training loops
    captured = capsys.readouterr()
    assert "100.0%" in captured.err          # the progress bar reached the end
    assert "total elapsed" in captured.out
    for name in ("report.md", "results.json") + tuple(report.FIGURES.values()):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in report.FIGURES.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    for heading in ("## 1. Gradient flow", "## 2. The adding problem",
                    "## 3. Remedies, one change at a time"):
        assert heading in text
    for name in report.FIGURES.values():
        assert f"]({name})" in text
    claims = [line for line in text.splitlines() if line.startswith("- claim:")]
    assert len(claims) >= 15
    assert all(line.endswith(("**supported**", "**refuted**", "**not clear**"))
               for line in claims)
    for config in E.FLOW_CELLS + E.ADDING_CELLS:
        assert f"| {config.label} |" in text
    assert "python -m gatedrnn.lab --quick" in text


@pytest.mark.parametrize("argv,message", [
    (["--quick", "--long"], "exclude each other"),
    (["--quick", "--seeds", "0"], "--seeds must be at least 1"),
    (["--quick", "--threads", "0"], "--threads must be at least 1"),
])
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", os.devnull])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
