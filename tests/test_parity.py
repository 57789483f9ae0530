"""Numerical parity of the forward ops (and their registered autograd) with
torch.nn.LSTM / GRU / RNN: outputs, final states and every gradient.

reverse=False is compared with a unidirectional torch.nn module, reverse=True
with the reverse direction of a bidirectional one (weights *_l0_reverse,
output[..., P:]). Packed inputs come from pack_padded_sequence and torch.nn is
called on the PackedSequence.
"""

import pytest
import torch

import gatedrnn
from conftest import (
    CELLS,
    DTYPES,
    as_leaves,
    assert_results_close,
    build_case,
    functional_forward,
    is_lstm,
    loss_and_grads,
    op_forward,
    run_nn,
    run_ours,
    tolerances,
)


def op_forward_plain(cell, tensors, batch_sizes, reverse):
    return op_forward(cell, tensors["input"], batch_sizes, tensors["h0"], tensors.get("c0"),
                      tensors, reverse)

# (T, N, I, H): T=1, N=1, H=1, H=33 (not a multiple of 8/32), N=3, one moderately sized
# case that exercises full vector widths, and one of 630 rows: several chunks of a backward
# whose steps are too small for two threads to share (its time loop on one thread beside
# the chunks' GEMMs: BackwardTeam::run_pipelined).
SHAPES = [
    (1, 1, 1, 1),
    (5, 3, 4, 33),
    (7, 1, 3, 8),
    (3, 4, 5, 1),
    (4, 3, 2, 5),
    (6, 8, 16, 64),
    (90, 7, 5, 12),
]
# (T, N, I, H, P) for LSTM with projections (P < H).
PROJ_SHAPES = [
    (1, 1, 1, 2, 1),
    (5, 3, 4, 8, 3),
    (7, 1, 3, 33, 5),
    (3, 4, 5, 2, 1),
    (90, 7, 5, 12, 4),
]


def _cell_shapes():
    params = []
    for cell in CELLS:
        if cell == "lstm_proj":
            for s in PROJ_SHAPES:
                params.append(pytest.param(cell, s, id=f"{cell}-" + "x".join(map(str, s))))
        else:
            for s in SHAPES:
                params.append(pytest.param(cell, s + (None,), id=f"{cell}-" + "x".join(map(str, s))))
    return params


@pytest.mark.parametrize("cell,shape", _cell_shapes())
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_parity_with_torch_nn(cell, shape, dtype, reverse, packed, bias):
    T, N, I, H, P = shape
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, bias=bias, dtype=dtype, reverse=reverse, packed=packed
    )
    ours = run_ours(cell, tensors, batch_sizes, reverse)
    ref = run_nn(cell, module, tensors, batch_sizes, reverse)
    assert_results_close(ours, ref, **tolerances(dtype))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_parity_long_sequence(cell, packed, reverse):
    """A longer sequence, so errors that grow with T would show."""
    T, N, I, H, P = 48, 5, 6, 12, 7
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=torch.float64, reverse=reverse, packed=packed
    )
    ours = run_ours(cell, tensors, batch_sizes, reverse)
    ref = run_nn(cell, module, tensors, batch_sizes, reverse)
    assert_results_close(ours, ref, **tolerances(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("N", [7, 1100], ids=["N7", "N1100"])
def test_parity_across_backward_chunks(cell, packed, reverse, N):
    """More rows than one backward chunk (ChunkedGrads::kRows = 1024): the input and
    weight gradients are made chunk by chunk, and the chunk edges must not show.
    N = 1100 puts more rows than a chunk in a single step."""
    T = 300 if N == 7 else 3
    module, tensors, batch_sizes = build_case(
        cell, T, N, 3, 5, 2, dtype=torch.float64, reverse=reverse, packed=packed
    )
    ours = run_ours(cell, tensors, batch_sizes, reverse)
    ref = run_nn(cell, module, tensors, batch_sizes, reverse)
    assert_results_close(ours, ref, **tolerances(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("use", [("output",), ("h_n",), ("c_n",)], ids=lambda u: u[0])
def test_backward_through_some_outputs(cell, packed, use):
    """Loss from only one of the outputs: the gradients flowing into the
    other outputs are undefined/zero and must be handled."""
    if use == ("c_n",) and not is_lstm(cell):
        use = ("h_n",)
    T, N, I, H, P = 5, 3, 4, 6, 4
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=torch.float64, packed=packed
    )
    ours = run_ours(cell, tensors, batch_sizes, False, use=use)
    ref = run_nn(cell, module, tensors, batch_sizes, False, use=use)
    assert_results_close(ours, ref, **tolerances(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_functional_parity(cell, with_hx, packed, reverse):
    """gatedrnn.functional.{lstm,gru,rnn} against torch.nn; hx=None means zeros."""
    T, N, I, H, P = 5, 3, 4, 7, 3
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=torch.float64, reverse=reverse, packed=packed
    )
    if not with_hx:
        tensors["h0"] = torch.zeros_like(tensors["h0"])
        if is_lstm(cell):
            tensors["c0"] = torch.zeros_like(tensors["c0"])
    ref = run_nn(cell, module, tensors, batch_sizes, reverse)

    leaves = as_leaves(tensors)
    if with_hx:
        hx = (leaves["h0"], leaves["c0"]) if is_lstm(cell) else leaves["h0"]
    else:
        hx = None
        del leaves["h0"]
        leaves.pop("c0", None)
        del ref["grad_h0"]
        ref.pop("grad_c0", None)
    outs = functional_forward(cell, leaves["input"], hx, leaves,
                              batch_sizes=batch_sizes, reverse=reverse)
    ours = loss_and_grads(outs, leaves)
    assert_results_close(ours, ref, **tolerances(torch.float64))


def test_functional_lstm_return_structure():
    x = torch.randn(3, 2, 4)
    w_ih, w_hh, w_hr = torch.randn(20, 4), torch.randn(20, 2), torch.randn(2, 5)
    out, state = gatedrnn.functional.lstm(x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr)
    assert isinstance(state, tuple) and len(state) == 2
    h_n, c_n = state
    assert out.shape == (3, 2, 2)
    assert h_n.shape == (2, 2)
    assert c_n.shape == (2, 5)
    out, h_n = gatedrnn.functional.gru(x, w_ih=torch.randn(15, 4), w_hh=torch.randn(15, 5))
    assert out.shape == (3, 2, 5) and h_n.shape == (2, 5)
    out, h_n = gatedrnn.functional.rnn(x, w_ih=torch.randn(5, 4), w_hh=torch.randn(5, 5))
    assert out.shape == (3, 2, 5) and h_n.shape == (2, 5)
    # the last output of a padded forward run is the final state
    torch.testing.assert_close(out[-1], h_n)


@pytest.mark.parametrize("cell", CELLS)
def test_packed_rows_match_padded_runs(cell):
    """Each sequence of a packed batch gives the same result as running it
    alone (padded, N=1) for its own length, in both directions."""
    T, N, I, H, P = 5, 4, 3, 6, 2
    for reverse in (False, True):
        _, tensors, batch_sizes = build_case(
            cell, T, N, I, H, P, dtype=torch.float64, packed=True, reverse=reverse
        )
        with torch.no_grad():
            out, h_n, *rest = op_forward_plain(cell, tensors, batch_sizes, reverse)
        bs = batch_sizes.tolist()
        offsets = [sum(bs[:t]) for t in range(len(bs))]
        for b in range(N):
            length = sum(1 for s in bs if s > b)
            rows = torch.stack([tensors["input"][offsets[t] + b] for t in range(length)])
            single = dict(tensors)
            single["input"] = rows.unsqueeze(1)
            single["h0"] = tensors["h0"][b:b + 1]
            if is_lstm(cell):
                single["c0"] = tensors["c0"][b:b + 1]
            with torch.no_grad():
                s_out, s_h, *s_rest = op_forward_plain(cell, single, None, reverse)
            expected = torch.stack([out[offsets[t] + b] for t in range(length)])
            torch.testing.assert_close(s_out[:, 0], expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(s_h[0], h_n[b], rtol=1e-12, atol=1e-12)
            if is_lstm(cell):
                torch.testing.assert_close(s_rest[0][0], rest[0][b], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# CUDA variants (skipped without a GPU)
# --------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_parity_with_torch_nn_cuda(cell, dtype, reverse, packed):
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        T, N, I, H, P = 6, 3, 5, 33, 7
        module, tensors, batch_sizes = build_case(
            cell, T, N, I, H, P, dtype=dtype, reverse=reverse, packed=packed, device="cuda"
        )
        ours = run_ours(cell, tensors, batch_sizes, reverse)
        ref = run_nn(cell, module, tensors, batch_sizes, reverse)
        for v in ours.values():
            assert v.device.type == "cuda"
        assert_results_close(ours, ref, **tolerances(dtype))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --------------------------------------------------------------------------
# numerically demanding and partial-gradient cases
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_parity_saturated_gates(cell, dtype, packed):
    """Large pre-activations (|x| up to ~100) saturate sigmoid/tanh: a kernel
    whose sigmoid/tanh overflows (inf/inf -> nan) would fail here."""
    T, N, I, H, P = 4, 3, 5, 9, 4
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=dtype, packed=packed
    )
    tensors["input"] = tensors["input"] * 40.0
    if not cell.startswith("rnn"):
        tensors["h0"] = tensors["h0"] * 40.0
    if is_lstm(cell):
        tensors["c0"] = tensors["c0"] * 40.0
    ours = run_ours(cell, tensors, batch_sizes, False)
    for k, v in ours.items():
        assert torch.isfinite(v).all(), k
    ref = run_nn(cell, module, tensors, batch_sizes, False)
    assert set(ours) == set(ref)
    rtol = tolerances(dtype)["rtol"]
    # gradients w.r.t. weights sum products of large inputs: scale atol with the
    # magnitude of each tensor (float32 eps ~ 6e-8)
    scale = 1e-13 if dtype == torch.float64 else 2e-6
    for k in ref:
        atol = max(tolerances(dtype)["atol"], scale * ref[k].abs().max().item())
        torch.testing.assert_close(ours[k], ref[k], rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_parity_wider_shapes(cell, dtype):
    """N=17, I=40, H=130 (not a multiple of 8/16/32), packed, reverse."""
    T, N, I, H, P = 3, 17, 40, 130, 20
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=dtype, packed=True, reverse=True
    )
    ours = run_ours(cell, tensors, batch_sizes, True)
    ref = run_nn(cell, module, tensors, batch_sizes, True)
    tol = tolerances(dtype) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-5)
    assert_results_close(ours, ref, **tol)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_only_weights_require_grad(cell, packed):
    """A first layer: input and initial state do not require grad, only the
    parameters do."""
    module, tensors, batch_sizes = build_case(
        cell, 5, 3, 4, 6, 3, dtype=torch.float64, packed=packed
    )
    ref = run_nn(cell, module, tensors, batch_sizes, False)
    weights = as_leaves({k: v for k, v in tensors.items() if k.startswith(("w_", "b_"))})
    outs = op_forward(cell, tensors["input"], batch_sizes, tensors["h0"], tensors.get("c0"),
                      weights, False)
    assert all(o.requires_grad for o in outs)
    ours = loss_and_grads(outs, weights)
    for k in list(ref):
        if k in ("grad_input", "grad_h0", "grad_c0"):
            del ref[k]
    assert_results_close(ours, ref, **tolerances(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_no_grad_and_inference_mode(cell, packed):
    module, tensors, batch_sizes = build_case(
        cell, 5, 3, 4, 6, 3, dtype=torch.float64, packed=packed
    )
    ref = run_nn(cell, module, tensors, batch_sizes, False)
    leaves = as_leaves(tensors)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            outs = op_forward(cell, leaves["input"], batch_sizes, leaves["h0"],
                              leaves.get("c0"), leaves, False)
        for name, o in zip(("output", "h_n", "c_n"), outs):
            assert not o.requires_grad
            torch.testing.assert_close(o, ref[name], **tolerances(torch.float64))


@pytest.mark.parametrize("cell", ["lstm_proj", "gru"])
def test_repeated_calls_are_deterministic(cell):
    """Same inputs, same results, bit for bit (forward and gradients)."""
    _, tensors, batch_sizes = build_case(cell, 6, 5, 7, 33, 5, dtype=torch.float32, packed=True)
    first = run_ours(cell, tensors, batch_sizes, False)
    for _ in range(2):
        again = run_ours(cell, tensors, batch_sizes, False)
        assert_results_close(again, first, rtol=0, atol=0)


# Shapes whose time loops run on several unit blocks (csrc/cpu/step_team.h, unit_blocks):
# (T, N, I, H, P). With H = 203 the LSTM and GRU get 4 blocks of 56, 56, 56 and 35 units
# (the last one short and not a multiple of the vector width); with H = 300 the RNN gets
# 2 blocks and the projected LSTM 8 hidden blocks and 2 projection blocks (P = 260);
# N = 64 takes the wide-block rule (256 columns per block). The other shapes in this file
# fit in one block.
TEAM_SHAPES = [(6, 20, 30, 203, 150), (4, 20, 30, 300, 260), (3, 64, 16, 264, 200)]

# Shapes whose per-step recurrent GEMM runs on the small-batch kernel
# (csrc/cpu/small_batch_gemm.h: batches of up to 4 rows, weights up to 128 KiB):
# (T, N, I, H, P). With H = 72 the weight's columns end in a partial panel, the
# backward's transposed weight (k = 3H or 4H) is summed in two halves of k, and N = 3
# takes a group of two rows and one of one (packed input shrinks to 2 and 1). With
# H = 150 the RNN's panels are halved too; the LSTM and GRU weights are too large for it
# there and take MKL's path.
SMALL_BATCH_SHAPES = [(5, 3, 7, 72, 40), (4, 1, 5, 150, 100), (6, 4, 3, 72, 24)]

# Shapes whose forward input projection runs, chunk by chunk, on weight blocks packed once
# per call (csrc/cpu/recurrence.h, ForwardTeam::packs_input: float32 blocks of 256 KiB and
# more): (T, N, I, H, P). N = 64 with I = 512 gives the LSTM and GRU 2 blocks of 88 units
# at H = 176 (the RNN gets its 2 blocks at H = 512); chunks of 2 steps leave a last chunk
# of 1 step, which runs unpacked, as do packed input's shrinking chunks.
PACKED_INPUT_SHAPES = [(5, 64, 512, 176, 96), (5, 64, 512, 512, 300)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", TEAM_SHAPES + SMALL_BATCH_SHAPES + PACKED_INPUT_SHAPES,
                         ids=lambda s: "x".join(map(str, s)))
def test_parity_with_several_unit_blocks_and_small_batches(cell, dtype, packed, reverse,
                                                           shape):
    """Several threads own blocks of units in the forward and backward time loops; packed
    input leaves rows behind that every block must carry over. float32 takes MKL's
    packed-weight path, float64 the plain BLAS one. The small-batch shapes take the
    small-batch kernel wherever the weight fits it (in float64 fewer of them do), and the
    packed-input shapes a packed input projection in float32."""
    T, N, I, H, P = shape
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=dtype, reverse=reverse, packed=packed)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ours = run_ours(cell, tensors, batch_sizes, reverse)
    finally:
        torch.set_num_threads(threads)
    ref = run_nn(cell, module, tensors, batch_sizes, reverse)
    tol = tolerances(dtype)
    if shape in PACKED_INPUT_SHAPES and dtype == torch.float32:
        # Sums over I = 512 inputs and 320 rows: two correct float32 orders of summation
        # differ by up to ~2e-5 there (a packing error would be of the order of the values).
        tol = dict(rtol=1e-4, atol=1e-4)
    # In float32 the weight and bias gradients here reach |50|, and an entry near 0 that
    # sums 192 such terms is off by up to ~1.6e-5 in both gatedrnn and torch.nn (against
    # float64: RNN (3, 64, 16, 264), portable build on an AMD EPYC), so atol scales with
    # each tensor's largest value; a wrong block would be off by the values themselves.
    assert_results_close(ours, ref, scale_atol=dtype == torch.float32, **tol)

