"""Per-step resets (issue 20, item 6): forward(input, hx, reset=mask) with a bool mask
[T, N] ([N, T] batch_first; [T] unbatched; packed input: [T, N] in the batch's own order):
before step t, sequence n's state restarts from its initial state (hx, or zeros), in every
layer, inside the kernels, forward and backward. The oracle runs the same module one step
per call, putting hx back into the state rows by hand: no reset reaches the kernels there,
and autograd differentiates the loop."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn

DT = torch.float64
I, H = 3, 5
CELLS = {
    "LSTM": lambda **k: gatedrnn.LSTM(I, H, **k),
    "LSTM_proj": lambda **k: gatedrnn.LSTM(I, H, proj_size=2, **k),
    "GRU": lambda **k: gatedrnn.GRU(I, H, **k),
    "RNN_tanh": lambda **k: gatedrnn.RNN(I, H, **k),
    "RNN_relu": lambda **k: gatedrnn.RNN(I, H, nonlinearity="relu", **k),
    "LayerNormLSTM": lambda **k: gatedrnn.LayerNormLSTM(I, H, **k),
    "LayerNormGRU": lambda **k: gatedrnn.LayerNormGRU(I, H, **k),
    # the row-wise kernels the plain cells run for their regularizers (zoneout in
    # evaluation is deterministic) and for clipping
    "LSTM_zoneout": lambda **k: gatedrnn.LSTM(I, H, zoneout=0.3, cell_zoneout=0.2, **k).eval(),
    "GRU_clip": lambda **k: gatedrnn.GRU(I, H, recurrent_grad_clip=0.05, **k),
    "RNN_clip": lambda **k: gatedrnn.RNN(I, H, recurrent_grad_clip=0.05, **k),
}


def make(cell, layers=2, **kwargs):
    torch.manual_seed(0)
    return CELLS[cell](num_layers=layers, dtype=DT, **kwargs)


def initial_states(m, N, seed=1):
    g = torch.Generator().manual_seed(seed)
    L = m.num_layers
    h = torch.randn(L, N, getattr(m, "proj_size", 0) or H, generator=g, dtype=DT)
    if isinstance(m, (gatedrnn.LSTM, gatedrnn.LayerNormLSTM)):
        return (h.requires_grad_(), torch.randn(L, N, H, generator=g, dtype=DT).requires_grad_())
    return h.requires_grad_()


def stepwise(m, x, hx, reset):
    """The oracle: one call per step of x [T, N, I], the state rows flagged in reset [T, N]
    replaced by hx's before their step."""
    outs, state = [], hx
    for t in range(x.shape[0]):
        if t > 0:
            r = reset[t][None, :, None]
            state = (tuple(torch.where(r, s0, s) for s, s0 in zip(state, hx))
                     if isinstance(hx, tuple) else torch.where(r, hx, state))
        out, state = m(x[t:t + 1], state)
        outs.append(out)
    return torch.cat(outs), state


def loss_of(out, final, seed=2):
    g = torch.Generator().manual_seed(seed)
    finals = final if isinstance(final, tuple) else (final,)
    return (out * torch.randn(out.shape, generator=g, dtype=DT)).sum() + \
        sum((f * torch.randn(f.shape, generator=g, dtype=DT)).sum() for f in finals)


def leaves(m, x, hx):
    return [x, *(hx if isinstance(hx, tuple) else (hx,)), *m.parameters()]


def assert_same_run(m, x, hx, got, expected):
    for a, b in zip((got[0], *(got[1] if isinstance(got[1], tuple) else (got[1],))),
                    (expected[0], *(expected[1] if isinstance(expected[1], tuple)
                                    else (expected[1],)))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(loss_of(*got), leaves(m, x, hx))
    gb = torch.autograd.grad(loss_of(*expected), leaves(m, x, hx))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2])
def test_resets_equal_restarting_the_state_by_hand(cell, layers):
    m = make(cell, layers)
    T, N = 7, 4
    x = torch.randn(T, N, I, dtype=DT, requires_grad=True)
    hx = initial_states(m, N)
    reset = torch.rand(T, N, generator=torch.Generator().manual_seed(3)) < 0.35
    reset[2, 1] = reset[6, 3] = True  # at least two, one at the last step
    assert_same_run(m, x, hx, m(x, hx, reset=reset), stepwise(m, x, hx, reset))


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_tanh", "LayerNormLSTM"])
def test_without_hx_rows_restart_from_zeros(cell):
    m = make(cell)
    x = torch.randn(5, 3, I, dtype=DT, requires_grad=True)
    reset = torch.zeros(5, 3, dtype=torch.bool)
    reset[3] = True
    zeros = tuple(torch.zeros_like(s) for s in (initial_states(m, 3)
                  if isinstance(initial_states(m, 3), tuple) else (initial_states(m, 3),)))
    hx = zeros if len(zeros) == 2 else zeros[0]
    got = m(x, reset=reset)
    expected = stepwise(m, x, hx, reset)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    # steps from the reset on are those of the sequence cut there, started afresh
    fresh, _ = m(x[3:])
    torch.testing.assert_close(got[0][3:], fresh, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_tanh", "LayerNormGRU"])
def test_batch_first_and_unbatched_layouts(cell):
    m = make(cell)
    x = torch.randn(6, 3, I, dtype=DT)
    hx = initial_states(m, 3)
    hx = tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()
    reset = torch.rand(6, 3, generator=torch.Generator().manual_seed(4)) < 0.4
    out, _ = m(x, hx, reset=reset)
    m.batch_first = True
    out_first, _ = m(x.transpose(0, 1), hx, reset=reset.t())
    torch.testing.assert_close(out_first.transpose(0, 1), out, rtol=0, atol=0)
    m.batch_first = False
    for n in range(3):
        single_hx = tuple(h[:, n] for h in hx) if isinstance(hx, tuple) else hx[:, n]
        single, _ = m(x[:, n], single_hx, reset=reset[:, n])
        torch.testing.assert_close(single, out[:, n], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_relu", "LayerNormLSTM", "LSTM_zoneout"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_input_resets_each_sequence_as_alone(cell, enforce_sorted):
    m = make(cell)
    lengths = [6, 5, 3, 1] if enforce_sorted else [3, 6, 1, 5]
    T, N = 6, 4
    x = torch.randn(T, N, I, dtype=DT, requires_grad=True)
    hx = initial_states(m, N)
    reset = torch.rand(T, N, generator=torch.Generator().manual_seed(5)) < 0.4
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, final = m(packed, hx, reset=reset)
    expected_loss = 0
    g = torch.Generator().manual_seed(6)
    w = torch.randn(out.data.shape, generator=g, dtype=DT)
    got_loss = (out.data * w).sum()
    (got_grads) = torch.autograd.grad(got_loss, leaves(m, x, hx))
    # each sequence alone, with its own column of the mask
    from torch.nn.utils.rnn import pad_packed_sequence
    padded_w, _ = pad_packed_sequence(out._replace(data=w))
    for n, length in enumerate(lengths):
        single_hx = tuple(h[:, n:n + 1] for h in hx) if isinstance(hx, tuple) \
            else hx[:, n:n + 1]
        single, single_final = stepwise(m, x[:length, n:n + 1], single_hx,
                                        reset[:length, n:n + 1])
        expected_loss = expected_loss + (single * padded_w[:length, n:n + 1]).sum()
        for a, b in zip(final if isinstance(final, tuple) else (final,),
                        single_final if isinstance(single_final, tuple) else (single_final,)):
            torch.testing.assert_close(a[:, n:n + 1], b, rtol=1e-12, atol=1e-12)
    expected_grads = torch.autograd.grad(expected_loss, leaves(m, x, hx))
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_tanh", "LayerNormLSTM", "LayerNormGRU"])
def test_gradcheck_with_resets(cell):
    m = make(cell)
    x = torch.randn(4, 2, I, dtype=DT, requires_grad=True)
    hx = initial_states(m, 2)
    reset = torch.tensor([[False, True], [True, False], [False, False], [True, True]])
    hxs = hx if isinstance(hx, tuple) else (hx,)

    def f(x, *states):
        out, final = m(x, states if len(states) == 2 else states[0], reset=reset)
        return out, *(final if isinstance(final, tuple) else (final,))

    assert torch.autograd.gradcheck(f, (x, *hxs))


def test_no_reset_and_an_all_false_mask_are_the_plain_module_bitwise():
    m = make("LSTM")
    x = torch.randn(5, 3, I, dtype=DT)
    a, _ = m(x)
    b, _ = m(x, reset=torch.zeros(5, 3, dtype=torch.bool))
    assert torch.equal(a, b)


def test_a_reset_at_the_first_step_changes_nothing():
    m = make("GRU")
    x = torch.randn(4, 2, I, dtype=DT)
    reset = torch.zeros(4, 2, dtype=torch.bool)
    reset[0] = True
    assert torch.equal(m(x, reset=reset)[0], m(x)[0])


def test_results_do_not_depend_on_the_thread_count():
    m = make("LSTM")
    x = torch.randn(20, 64, I, dtype=torch.float64)
    reset = torch.rand(20, 64, generator=torch.Generator().manual_seed(7)) < 0.2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = m(x, reset=reset)
        torch.set_num_threads(2)
        two, _ = m(x, reset=reset)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(5, 3, dtype=torch.int64), "bool"),
    (torch.zeros(5, 2, dtype=torch.bool), r"\[T, N\]"),
    (torch.zeros(3, 5, dtype=torch.bool), r"\[T, N\]"),
    ([[True]], "bool"),
])
def test_bad_masks_raise_value_errors_naming_reset(bad, match):
    m = make("GRU")
    with pytest.raises(ValueError, match=f"reset.*{match}|{match}.*reset"):
        m(torch.randn(5, 3, I, dtype=DT), reset=bad)


def test_bidirectional_modules_refuse_resets():
    m = make("LSTM", bidirectional=True)
    with pytest.raises(ValueError, match="reset.*unidirectional"):
        m(torch.randn(4, 2, I, dtype=DT), reset=torch.zeros(4, 2, dtype=torch.bool))


def test_the_ops_check_the_flags():
    x = torch.randn(3, 2, I, dtype=DT)
    w_ih, w_hh = torch.randn(H, I, dtype=DT), torch.randn(H, H, dtype=DT)
    h0 = torch.zeros(2, H, dtype=DT)
    with pytest.raises(ValueError, match="reset"):
        torch.ops.gatedrnn.rnn_forward(x, None, h0, w_ih, w_hh, None, None, "tanh", False, 0.0,
                                       torch.zeros(5, dtype=torch.bool))


@pytest.mark.parametrize("cell", ["LSTM", "RNN_tanh", "LayerNormGRU"])
def test_double_backward_with_resets_is_refused(cell):
    m = make(cell)
    x = torch.randn(3, 2, I, dtype=DT, requires_grad=True)
    out, _ = m(x, reset=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_the_monitor_sees_no_gradient_cross_a_reset():
    """A sequence reset before step t passes nothing back to h_{t-1} through the
    recurrence: with the loss on the last step only, every step before a reset that all
    sequences share records a zero norm."""
    m = make("GRU", layers=1)
    x = torch.randn(6, 2, I, dtype=DT)
    reset = torch.zeros(6, 2, dtype=torch.bool)
    reset[3] = True
    out, _ = m(x, reset=reset)
    with gatedrnn.grad_norms() as rec:
        out[-1].sum().backward()
    h = rec[m]["h"][0]
    assert (h[:3] == 0).all() and (h[3:] > 0).all()


def test_compiles_without_graph_breaks():
    m = make("LSTM")
    x = torch.randn(5, 2, I, dtype=DT, requires_grad=True)
    reset = torch.rand(5, 2, generator=torch.Generator().manual_seed(8)) < 0.5
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    got, _ = compiled(x, reset=reset)
    expected, _ = m(x, reset=reset)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    (g,) = torch.autograd.grad(got.sum(), x)
    (e,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(g, e, rtol=0, atol=0)
