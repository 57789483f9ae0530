"""The CUDA path of every op (csrc/cuda/ + csrc/kernels/), skipped without a GPU.

- parity with the CPU ops in float64 (outputs, final states, every gradient),
  padded and packed, both directions, with and without biases, odd sizes;
- parity with torch.nn (cuDNN) in float32 with TF32 off;
- gradcheck in float64 on the GPU (padded, packed, reverse);
- torch.library.opcheck of the forward and backward ops on CUDA tensors;
- fp16/bf16: error against a float64 reference at most 2x torch.nn's own
  error in that dtype (plus one unit of rounding at the tensor's scale);
- both forward paths: the per-step path (GATEDRNN_PERSISTENT=0) and the
  persistent kernel (GATEDRNN_PERSISTENT=1, which raises when the kernel
  cannot run, so these tests know it ran).
- which path auto picks (the profiler's kernel names), forced persistent on an
  empty sequence, the inference form (need_workspace=False), two host threads
  launching different persistent plans at once, fp16/bf16 at a realistic size.
"""

import copy

import pytest
import torch

import gatedrnn
from conftest import (
    CELLS,
    as_leaves,
    assert_low_precision_within_2x_torch_nn,
    assert_results_close,
    build_case,
    is_lstm,
    nonlinearity,
    op_and_args,
    op_forward,
    run_nn,
    run_ours,
    tolerances,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = "cuda"
PERSISTENT_MAX_BATCH = 16  # kernels::kPersistentMaxBatch


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@pytest.fixture
def no_tf32():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(params=["step", "persistent"])
def path(request, monkeypatch):
    """Which forward path the CUDA ops take (read by the op at every call)."""
    monkeypatch.setenv("GATEDRNN_PERSISTENT", "1" if request.param == "persistent" else "0")
    return request.param


def persistent_supported(cell, N):
    return cell != "lstm_proj" and N <= PERSISTENT_MAX_BATCH


def skip_unsupported(path, cell, N):
    if path == "persistent" and not persistent_supported(cell, N):
        pytest.skip("the persistent kernel does not run this case (tested to raise below)")


def to_device(tensors, device=DEVICE):
    """Copies of the op tensors on ``device``; batch_sizes stays on the CPU."""
    return {k: v.to(device) for k, v in tensors.items()}


def to_cpu(results):
    return {k: v.cpu() for k, v in results.items()}


# (T, N, I, H, P): T=1, N=1, H=1, H=33 (not a multiple of 8/32), N=16 (the
# persistent kernel's limit), N=17 (beyond it), P < H for lstm_proj.
SHAPES = [
    (1, 1, 1, 1, 1),
    (1, 3, 2, 4, 2),
    (5, 3, 4, 33, 5),
    (7, 1, 3, 8, 3),
    (3, 4, 5, 2, 1),
    (6, 16, 8, 20, 7),
    (4, 17, 3, 6, 2),
]


def _ids(shape):
    return "x".join(map(str, shape))


# --------------------------------------------------------------------------
# float64: the CUDA ops against the CPU ops
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_cpu_float64(cell, shape, packed, reverse, bias, path):
    T, N, I, H, P = shape
    if cell == "lstm_proj" and H < 2:
        pytest.skip("proj_size < hidden_size needs H >= 2")
    skip_unsupported(path, cell, N)
    _, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, bias=bias, dtype=torch.float64, reverse=reverse, packed=packed
    )
    ref = run_ours(cell, tensors, batch_sizes, reverse)
    ours = run_ours(cell, to_device(tensors), batch_sizes, reverse)
    for k, v in ours.items():
        assert v.device.type == "cuda", k
    assert_results_close(to_cpu(ours), ref, **tolerances(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_long_sequence_matches_cpu_float64(cell, packed, reverse, path):
    T, N, I, H, P = 48, 5, 6, 40, 7
    skip_unsupported(path, cell, N)
    _, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=torch.float64, reverse=reverse, packed=packed
    )
    ref = run_ours(cell, tensors, batch_sizes, reverse)
    ours = run_ours(cell, to_device(tensors), batch_sizes, reverse)
    assert_results_close(to_cpu(ours), ref, **tolerances(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("use", [("output",), ("h_n",), ("c_n",)], ids=lambda u: u[0])
def test_backward_through_some_outputs(cell, use, path):
    if use == ("c_n",) and not is_lstm(cell):
        use = ("h_n",)
    skip_unsupported(path, cell, 3)
    _, tensors, batch_sizes = build_case(cell, 5, 3, 4, 6, 4, dtype=torch.float64, packed=True)
    ref = run_ours(cell, tensors, batch_sizes, False, use=use)
    ours = run_ours(cell, to_device(tensors), batch_sizes, False, use=use)
    assert_results_close(to_cpu(ours), ref, **tolerances(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
def test_saturated_gates(cell, path):
    """|pre-activations| up to ~100: no inf/nan from sigmoid/tanh on the GPU."""
    skip_unsupported(path, cell, 3)
    _, tensors, batch_sizes = build_case(cell, 4, 3, 5, 9, 4, dtype=torch.float64, packed=True)
    tensors["input"] = tensors["input"] * 40.0
    if not cell.startswith("rnn"):
        tensors["h0"] = tensors["h0"] * 40.0
    if is_lstm(cell):
        tensors["c0"] = tensors["c0"] * 40.0
    ref = run_ours(cell, tensors, batch_sizes, False)
    for dtype in (torch.float64, torch.float32):
        t = {k: v.to(dtype) for k, v in tensors.items()}
        ours = to_cpu(run_ours(cell, to_device(t), batch_sizes, False))
        for k, v in ours.items():
            assert torch.isfinite(v).all(), (dtype, k)
        if dtype == torch.float64:
            assert_results_close(ours, ref, **tolerances(torch.float64))


# --------------------------------------------------------------------------
# float32: against torch.nn (cuDNN), TF32 off
# --------------------------------------------------------------------------

NN_SHAPES = [
    pytest.param((6, 3, 5, 33, 7), dict(rtol=1e-5, atol=1e-5), id="6x3x5x33x7"),
    pytest.param((1, 1, 1, 1, 1), dict(rtol=1e-5, atol=1e-5), id="1x1x1x1x1"),
    # longer and wider: errors of the different summation orders add up
    pytest.param((20, 8, 32, 64, 16), dict(rtol=5e-5, atol=5e-5), id="20x8x32x64x16"),
]


def assert_close_to_cudnn_or_closer_to_truth(ours, cudnn, truth, **tol):
    """Each result of ours within tol of cuDNN's; where one is not, ours must be within tol
    of the float64 truth and no farther from it than cuDNN's. (On an H200 with cuDNN 9.19,
    TF32 off, cuDNN's float32 RNN_TANH gradients of padded input were 10-20x farther from
    float64 than ours: grad_w_ih 1.6e-4 against 1.5e-5 at (20, 8, 32, 64).)"""
    assert set(ours) == set(cudnn) == set(truth)
    for k in truth:
        try:
            torch.testing.assert_close(ours[k], cudnn[k], **tol)
            continue
        except AssertionError:
            pass
        exact = truth[k].to(ours[k].dtype)
        torch.testing.assert_close(ours[k], exact, **tol, msg=lambda m, k=k: f"{k}: {m}")
        err_ours = (ours[k].double() - truth[k]).abs().max().item()
        err_cudnn = (cudnn[k].double() - truth[k]).abs().max().item()
        assert err_ours <= err_cudnn, (
            f"{k}: ours differs from cuDNN and is farther from the float64 result "
            f"({err_ours:.3g} against cuDNN's {err_cudnn:.3g})")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape,tol", NN_SHAPES)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_parity_with_cudnn_float32(cell, shape, tol, packed, reverse, path, no_tf32):
    T, N, I, H, P = shape
    if cell == "lstm_proj" and H < 2:
        pytest.skip("proj_size < hidden_size needs H >= 2")
    skip_unsupported(path, cell, N)
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=torch.float32, reverse=reverse, packed=packed, device=DEVICE
    )
    ours = run_ours(cell, tensors, batch_sizes, reverse)
    ref = run_nn(cell, module, tensors, batch_sizes, reverse)
    # The same float32 values in float64: the truth both float32 results approximate.
    truth = run_nn(cell, copy.deepcopy(module).double(),
                   {k: v.double() for k, v in tensors.items()}, batch_sizes, reverse)
    assert_close_to_cudnn_or_closer_to_truth(ours, ref, truth, **tol)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_module_parity_cuda(cell, path, no_tf32):
    """gatedrnn.LSTM/GRU/RNN (2 layers, bidirectional, packed) on the GPU
    against torch.nn with the same state_dict, float64."""
    skip_unsupported(path, cell, 4)
    kw = dict(num_layers=2, bidirectional=True, dtype=torch.float64, device=DEVICE)
    if is_lstm(cell):
        kw["proj_size"] = 3 if cell == "lstm_proj" else 0
        ref_m, ours_m = torch.nn.LSTM(5, 6, **kw), gatedrnn.LSTM(5, 6, **kw)
    elif cell == "gru":
        ref_m, ours_m = torch.nn.GRU(5, 6, **kw), gatedrnn.GRU(5, 6, **kw)
    else:
        ref_m, ours_m = torch.nn.RNN(5, 6, **kw), gatedrnn.RNN(5, 6, **kw)
    ours_m.load_state_dict(ref_m.state_dict())
    x = torch.randn(7, 4, 5, dtype=torch.float64, device=DEVICE)
    lengths = torch.tensor([7, 5, 5, 2])
    results = []
    for m in (ours_m, ref_m):
        xi = x.clone().requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths)
        out, state = m(packed)
        states = state if isinstance(state, tuple) else (state,)
        loss = (out.data * torch.linspace(-1, 1, out.data.numel(), dtype=out.data.dtype,
                                          device=DEVICE).view_as(out.data)).sum()
        loss = loss + sum((s * 0.5).sum() for s in states)
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        results.append((out.data.detach(), [s.detach() for s in states], grads))
    (o1, s1, g1), (o2, s2, g2) = results
    torch.testing.assert_close(o1, o2, **tolerances(torch.float64))
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a, b, **tolerances(torch.float64))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **tolerances(torch.float64))


# --------------------------------------------------------------------------
# gradcheck and opcheck on the GPU
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_cuda(cell, packed, reverse, path):
    skip_unsupported(path, cell, 3)
    _, tensors, batch_sizes = build_case(
        cell, 3, 3, 2, 3, 2, dtype=torch.float64, reverse=reverse, packed=packed, device=DEVICE
    )
    names = list(tensors)
    leaves = tuple(tensors[k].detach().clone().requires_grad_() for k in names)

    def fn(*args):
        t = dict(zip(names, args))
        return op_forward(cell, t["input"], batch_sizes, t["h0"], t.get("c0"), t, reverse)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def _backward_call(cell, tensors, batch_sizes, reverse):
    """(backward op, args) with random incoming gradients, on the tensors' device."""
    op, args = op_and_args(cell, tensors, batch_sizes, reverse)
    with torch.no_grad():
        res = op(*args)
    g = torch.Generator().manual_seed(7)

    def rnd(t):
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t)

    t = tensors
    ops = torch.ops.gatedrnn
    if is_lstm(cell):
        out, h_n, c_n, ws = res
        return ops.lstm_backward, (
            rnd(out), rnd(h_n), rnd(c_n), t["input"], batch_sizes, t["h0"], t["c0"],
            t["w_ih"], t["w_hh"], t.get("w_hr"), out, ws, reverse,
        )
    if cell == "gru":
        out, h_n, ws = res
        return ops.gru_backward, (
            rnd(out), rnd(h_n), t["input"], batch_sizes, t["h0"], t["w_ih"], t["w_hh"],
            out, ws, reverse,
        )
    out, h_n = res
    return ops.rnn_backward, (
        rnd(out), rnd(h_n), t["input"], batch_sizes, t["h0"], t["w_ih"], t["w_hh"], out,
        nonlinearity(cell), reverse,
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_opcheck_cuda(cell, dtype, packed, reverse, no_tf32):
    _, tensors, batch_sizes = build_case(
        cell, 3, 3, 4, 5, 3, dtype=dtype, packed=packed, reverse=reverse, device=DEVICE
    )
    op, args = op_and_args(cell, as_leaves(tensors), batch_sizes, reverse)
    torch.library.opcheck(op, args)
    op, bw_args = _backward_call(cell, tensors, batch_sizes, reverse)
    torch.library.opcheck(
        op, bw_args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    )


# --------------------------------------------------------------------------
# fp16 / bf16: at most 2x torch.nn's error against a float64 reference
# --------------------------------------------------------------------------

LOW = [
    pytest.param(torch.float16, id="f16"),
    pytest.param(torch.bfloat16, id="bf16"),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_low_precision_error_vs_torch_nn(cell, dtype, packed, reverse, path):
    skip_unsupported(path, cell, 4)
    assert_low_precision_within_2x_torch_nn(cell, dtype, (12, 4, 16, 32, 8), packed, reverse,
                                            DEVICE)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_at_a_realistic_size(cell, dtype, path):
    """(T, N, I, H) = (100, 64, 256, 256) (the persistent kernel at N = 16), the weight
    gradients being sums over all 6,400 rows (1,600 at N = 16)."""
    N = 16 if path == "persistent" else 64
    skip_unsupported(path, cell, N)
    assert_low_precision_within_2x_torch_nn(cell, dtype, (100, N, 256, 256, 128), False, False,
                                            DEVICE)


# --------------------------------------------------------------------------
# the two forward paths
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16], ids=["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("N,H", [(1, 1), (3, 33), (4, 200), (16, 64)], ids=lambda v: str(v))
def test_persistent_matches_step_path(cell, dtype, packed, reverse, N, H, monkeypatch,
                                      no_tf32):
    """Forced persistent kernel vs the per-step path: same forward results
    (workspace included, so the backward after either is the same)."""
    _, tensors, batch_sizes = build_case(
        cell, 9, N, 7, H, H, dtype=torch.float64, packed=packed, reverse=reverse
    )
    t = {k: v.to(DEVICE, dtype) for k, v in tensors.items()}
    op, args = op_and_args(cell, t, batch_sizes, reverse)
    results = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("GATEDRNN_PERSISTENT", mode)
        with torch.no_grad():
            results[mode] = [r.double().cpu() for r in op(*args)]
    # The paths round differently (the per-step path rounds h @ w_hh^T to the
    # dtype before the pointwise pass, the persistent kernel keeps it in fp32):
    # loose enough for that, far tighter than a logic error.
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 1e-2,
           torch.bfloat16: 6e-2}[dtype]
    for a, b in zip(results["1"], results["0"]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", ["proj", "batch", "too_big"])
def test_forced_persistent_raises_when_it_cannot_run(case, monkeypatch):
    monkeypatch.setenv("GATEDRNN_PERSISTENT", "1")
    if case == "proj":
        cell, N, H = "lstm_proj", 2, 5
    elif case == "batch":
        cell, N, H = "gru", PERSISTENT_MAX_BATCH + 1, 5
    else:  # float64 LSTM weights (4*H*H*8 bytes = 128 MiB) beyond any GPU's shared memory
        cell, N, H = "lstm", 2, 2048
    _, tensors, batch_sizes = build_case(cell, 2, N, 3, H, 3, dtype=torch.float64,
                                         device=DEVICE)
    op, args = op_and_args(cell, tensors, batch_sizes, False)
    with pytest.raises(RuntimeError, match="persistent kernel cannot run"):
        op(*args)
    monkeypatch.setenv("GATEDRNN_PERSISTENT", "auto")  # falls back to the per-step path
    op(*args)


def test_bad_persistent_setting(monkeypatch):
    monkeypatch.setenv("GATEDRNN_PERSISTENT", "sometimes")
    _, tensors, batch_sizes = build_case("gru", 2, 2, 3, 4, 3, device=DEVICE)
    op, args = op_and_args("gru", tensors, batch_sizes, False)
    with pytest.raises(ValueError, match="GATEDRNN_PERSISTENT"):
        op(*args)


def _persistent_kernels_launched(fn):
    """How many launches of the persistent forward kernel fn() made (the CUDA profiler's
    kernel names: persistent_forward_kernel<...>)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if "persistent_forward_kernel" in e.key)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("N", [1, PERSISTENT_MAX_BATCH, PERSISTENT_MAX_BATCH + 1])
def test_auto_picks_the_persistent_kernel_exactly_when_it_can_run(cell, N, monkeypatch):
    monkeypatch.setenv("GATEDRNN_PERSISTENT", "auto")
    _, tensors, batch_sizes = build_case(cell, 6, N, 5, 24, 7, device=DEVICE, packed=True)
    op, args = op_and_args(cell, tensors, batch_sizes, False)
    with torch.no_grad():
        launched = _persistent_kernels_launched(lambda: op(*args))
    assert launched == (1 if persistent_supported(cell, N) else 0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("T,N", [(0, 3), (4, 0)], ids=["T0", "N0"])
def test_forced_persistent_on_an_empty_sequence_is_a_no_op(cell, T, N, monkeypatch):
    """GATEDRNN_PERSISTENT=1 with nothing to run: the CPU op's (empty) results, no error."""
    monkeypatch.setenv("GATEDRNN_PERSISTENT", "1")
    _, tensors, batch_sizes = build_case(cell, T, N, 3, 5, 5, dtype=torch.float64)
    op, args = op_and_args(cell, tensors, batch_sizes, False)
    ref = op(*args)
    _, cuda_args = op_and_args(cell, to_device(tensors), batch_sizes, False)
    ours = op(*cuda_args)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_inference_form_on_cuda(cell, dtype, packed, path, no_tf32):
    """need_workspace=False: the same outputs and states bit for bit, an empty workspace
    (and the kernels, which then write none, leave the rest as it was)."""
    skip_unsupported(path, cell, 3)
    _, tensors, batch_sizes = build_case(cell, 6, 3, 4, 10, 4, dtype=dtype, packed=packed,
                                         device=DEVICE)
    op, args = op_and_args(cell, tensors, batch_sizes, False)
    with torch.no_grad():
        kept = op(*args, True)
        dropped = op(*args, False)
    assert kept[-1].shape[0] == tensors["input"].shape[0] * (1 if packed else 3)
    assert dropped[-1].shape == (0, kept[-1].shape[1])
    for a, b in zip(kept[:-1], dropped[:-1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_persistent_plans_of_two_threads_at_once(cell, monkeypatch):
    """Two host threads launching the persistent kernel with different shared-memory
    sizes, over and over: each gets the results it gets alone (the kernel's
    shared-memory limit is process-wide; lowering it under another thread's launch
    would make that launch fail)."""
    import threading

    monkeypatch.setenv("GATEDRNN_PERSISTENT", "1")
    cases = []
    for H in (8, 200):
        _, tensors, batch_sizes = build_case(cell, 5, 4, 6, H, H, dtype=torch.float32,
                                             device=DEVICE, seed=H)
        op, args = op_and_args(cell, tensors, batch_sizes, False)
        with torch.no_grad():
            cases.append((op, args, op(*args)))
    torch.cuda.synchronize()  # the side streams below read what the default stream wrote
    errors = []

    def worker(op, args, expected):
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(50):
                    got = op(*args)
                    stream.synchronize()
                    for a, b in zip(got, expected):
                        if not torch.equal(a, b):
                            errors.append("different results")
                            return
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# --------------------------------------------------------------------------
# streams, devices, bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_side_stream(cell, path):
    """The ops run on the current stream. The side stream still has work pending when
    the op is called (a sleep, then the copy that writes the input): an op on any other
    stream would read the input before that copy and give different results."""
    skip_unsupported(path, cell, 3)
    _, tensors, batch_sizes = build_case(cell, 6, 3, 4, 12, 5, dtype=torch.float64,
                                         packed=True, device=DEVICE)
    ref = run_ours(cell, tensors, batch_sizes, False)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        late = {k: torch.zeros_like(v) for k, v in tensors.items()}
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time before the copies
        for k, v in tensors.items():
            late[k].copy_(v)
        ours = run_ours(cell, late, batch_sizes, False)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert_results_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_two_streams_at_once(cell, path):
    """Two side streams, each running its own op calls at the same time: each gets the
    results it gets alone."""
    skip_unsupported(path, cell, 4)
    cases = []
    for seed in (1, 2):
        _, tensors, batch_sizes = build_case(cell, 30, 4, 8, 48, 5, dtype=torch.float64,
                                             packed=seed == 2, device=DEVICE, seed=seed)
        cases.append((tensors, batch_sizes, run_ours(cell, tensors, batch_sizes, False)))
    streams = [torch.cuda.Stream() for _ in cases]
    results = []
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream())
    for stream, (tensors, batch_sizes, _) in zip(streams, cases):
        with torch.cuda.stream(stream):
            results.append(run_ours(cell, tensors, batch_sizes, False))
    for stream in streams:
        torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for (_, _, expected), got in zip(cases, results):
        assert_results_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_cuda_graph_capture_and_replay(cell, packed, path, no_tf32):
    """A forward captured in a CUDA graph and replayed on new input gives what a plain
    call gives on that input (the packed schedule is copied to the device from host
    memory that must outlive the capture)."""
    skip_unsupported(path, cell, 4)
    _, tensors, batch_sizes = build_case(cell, 8, 4, 5, 16, 5, dtype=torch.float32,
                                         packed=packed, device=DEVICE)
    op, args = op_and_args(cell, tensors, batch_sizes, False)
    static_input = args[0].clone()
    args = (static_input, *args[1:])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):  # warm-up outside the capture, as torch.cuda.graphs asks
            op(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        captured = op(*args)
    for seed in (3, 4):
        torch.manual_seed(seed)
        new_input = torch.randn_like(static_input)
        static_input.copy_(new_input)
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            expected = op(new_input, *args[1:])
        for a, b in zip(captured, expected):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_compile_fullgraph_on_cuda(cell, path, no_tf32):
    """torch.compile(fullgraph=True) of a module on the GPU (inductor), forward and the
    backward through it: the eager results."""
    import torch._dynamo

    skip_unsupported(path, cell, 3)
    torch._dynamo.reset()
    torch.manual_seed(0)
    cls = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn_tanh": gatedrnn.RNN}[cell]
    module = cls(5, 7, num_layers=2, device=DEVICE)
    x = torch.randn(6, 3, 5, device=DEVICE)
    results = []
    for m in (module, torch.compile(module, fullgraph=True)):
        xi = x.clone().requires_grad_()
        out, _ = m(xi)
        grads = torch.autograd.grad(out.square().sum(), [xi, *module.parameters()])
        results.append((out.detach(), grads))
    (o_eager, g_eager), (o_compiled, g_compiled) = results
    torch.testing.assert_close(o_compiled, o_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", LOW)
def test_autocast_cuda_runs_as_torch_nn(cell, dtype, path):
    """Under torch.autocast("cuda"), as torch.nn's modules under cuDNN: outputs and states
    in torch.nn's dtype (float16, whatever the autocast dtype), values within its rounding
    of torch.nn's."""
    skip_unsupported(path, cell, 3)
    torch.manual_seed(0)
    pair = {"lstm": (torch.nn.LSTM, gatedrnn.LSTM), "gru": (torch.nn.GRU, gatedrnn.GRU),
            "rnn_tanh": (torch.nn.RNN, gatedrnn.RNN)}[cell]
    ref = pair[0](6, 8, device=DEVICE)
    ours = pair[1](6, 8, device=DEVICE)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 6, device=DEVICE)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=dtype):
            out, state = m(xi)
        out.float().sum().backward()
        states = state if isinstance(state, tuple) else (state,)
        results.append((out, states, xi.grad))
    (o_ref, s_ref, g_ref), (o, s, g) = results
    assert o.dtype == o_ref.dtype == torch.float16
    assert [t.dtype for t in s] == [t.dtype for t in s_ref]
    eps = torch.finfo(o_ref.dtype).eps
    tol = dict(rtol=4 * eps, atol=4 * eps)
    torch.testing.assert_close(o.float(), o_ref.float(), **tol)
    for a, b in zip(s, s_ref):
        torch.testing.assert_close(a.float(), b.float(), **tol)
    torch.testing.assert_close(g.float(), g_ref.float(), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_long_float16_sequence(cell, path):
    """T = 1,000 in float16: errors accumulated over the sequence stay within 2x
    torch.nn's."""
    skip_unsupported(path, cell, 4)
    assert_low_precision_within_2x_torch_nn(cell, torch.float16, (1000, 4, 16, 32, 8), False,
                                            False, DEVICE)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_second_device(cell, path):
    """Tensors on cuda:1 while cuda:0 is current: the device guard."""
    _, tensors, batch_sizes = build_case(cell, 5, 3, 4, 8, 5, dtype=torch.float64, packed=True)
    ref = run_ours(cell, tensors, batch_sizes, False)
    ours = run_ours(cell, to_device(tensors, "cuda:1"), batch_sizes, False)
    for v in ours.values():
        assert v.device == torch.device("cuda:1")
    assert_results_close(to_cpu(ours), ref, **tolerances(torch.float64))


def test_batch_sizes_on_gpu_is_rejected():
    _, tensors, batch_sizes = build_case("lstm", 3, 3, 2, 4, 2, packed=True, device=DEVICE)
    op, args = op_and_args("lstm", tensors, batch_sizes.to(DEVICE), False)
    with pytest.raises((RuntimeError, ValueError), match="batch_sizes"):
        op(*args)


def test_mixed_devices_are_rejected():
    _, tensors, batch_sizes = build_case("gru", 3, 3, 2, 4, 2, device=DEVICE)
    tensors["w_hh"] = tensors["w_hh"].cpu()
    op, args = op_and_args("gru", tensors, batch_sizes, False)
    with pytest.raises(RuntimeError, match="w_hh"):
        op(*args)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_noncontiguous_inputs(cell, path):
    """Strided input, states and weights give the results of contiguous copies."""
    skip_unsupported(path, cell, 3)
    _, tensors, batch_sizes = build_case(cell, 5, 3, 4, 6, 3, dtype=torch.float64,
                                         device=DEVICE)
    strided = {k: (v.t().contiguous().t() if v.dim() == 2 else
                   v.transpose(0, 1).contiguous().transpose(0, 1) if v.dim() == 3 else v)
               for k, v in tensors.items()}
    ref = run_ours(cell, tensors, batch_sizes, False)
    ours = run_ours(cell, strided, batch_sizes, False)
    assert_results_close(ours, ref, **tolerances(torch.float64))


@pytest.fixture
def deterministic(monkeypatch):
    """torch.use_deterministic_algorithms(True), with the cuBLAS workspace setting it
    requires (cuBLAS is only deterministic with a fixed workspace)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(old)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_deterministic_mode_gives_identical_bits(cell, dtype, packed, path, deterministic):
    """Our kernels use no atomics, so under torch.use_deterministic_algorithms(True)
    two runs give the same bits (outputs, states and every gradient)."""
    skip_unsupported(path, cell, 16)
    _, tensors, batch_sizes = build_case(cell, 20, 16, 96, 80, 40, dtype=dtype, packed=packed,
                                         device=DEVICE)
    first = run_ours(cell, tensors, batch_sizes, False)
    second = run_ours(cell, tensors, batch_sizes, False)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# --------------------------------------------------------------------------
# issue 20 on the GPU: the gradient-norm monitor, RNN gradient clipping, full state
# sequences and per-step resets, each against the CPU in float64 (the same module moved)
# --------------------------------------------------------------------------

_ISSUE_20_CELLS = {
    "LSTM": lambda: gatedrnn.LSTM(3, 5, num_layers=2),
    "LSTM_proj": lambda: gatedrnn.LSTM(3, 5, num_layers=2, proj_size=2),
    "GRU": lambda: gatedrnn.GRU(3, 5, num_layers=2),
    "RNN": lambda: gatedrnn.RNN(3, 5, num_layers=2, recurrent_grad_clip=0.05),
}


def _on_both(cell, **options):
    torch.manual_seed(0)
    cpu = _ISSUE_20_CELLS[cell]().double()
    for name, value in options.items():
        setattr(cpu, name, value)
    return cpu, copy.deepcopy(cpu).to(DEVICE)


def _run_and_grads(m, x, reset, device):
    x = x.to(device).requires_grad_()
    out, hx, *states = m(x, reset=reset)
    finals = hx if isinstance(hx, tuple) else (hx,)
    loss = (out * out).sum() + sum((f * f).sum() for f in finals)
    for every in states:
        loss = loss + sum((v * v).sum() for v in every.values())
    with gatedrnn.grad_norms() as rec:
        grads = torch.autograd.grad(loss, [x, *m.parameters()])
    return out, finals, states, grads, rec[m]


def _assert_runs_match(gpu, cpu):
    """Two _run_and_grads results: outputs, final states, state sequences, gradients, norms."""
    tol = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], **tol)
    for u, v in zip(gpu[1], cpu[1]):
        torch.testing.assert_close(u.cpu(), v, **tol)
    for kind in cpu[2][0]:
        torch.testing.assert_close(gpu[2][0][kind].cpu(), cpu[2][0][kind], **tol)
    for u, v in zip(gpu[3], cpu[3]):
        torch.testing.assert_close(u.cpu(), v, **tol)
    for kind in cpu[4]:
        torch.testing.assert_close(gpu[4][kind], cpu[4][kind], **tol)


@pytest.mark.parametrize("cell", list(_ISSUE_20_CELLS))
@pytest.mark.parametrize("with_reset", [False, True])
@pytest.mark.parametrize("path", ["0", "auto"])
def test_issue_20_features_match_cpu(cell, with_reset, path, monkeypatch):
    monkeypatch.setenv("GATEDRNN_PERSISTENT", path)
    cpu, gpu = _on_both(cell, return_states=True)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    reset = (torch.rand(6, 3, generator=torch.Generator().manual_seed(1)) < 0.4) \
        if with_reset else None
    _assert_runs_match(_run_and_grads(gpu, x, reset, DEVICE),
                       _run_and_grads(cpu, x, reset, "cpu"))


# --------------------------------------------------------------------------
# the row-wise ops on the GPU (the portable ATen implementation, csrc/row_wise_portable.cpp):
# the layer-normalized cells, zoneout, recurrent_grad_clip of the LSTM and GRU, against the
# CPU's fused kernels in float64 (the same module moved), with the monitor, full state
# sequences and resets
# --------------------------------------------------------------------------

_ROW_WISE_CELLS = {
    "LayerNormLSTM": lambda bi: gatedrnn.LayerNormLSTM(3, 5, num_layers=2, bidirectional=bi),
    "LayerNormGRU": lambda bi: gatedrnn.LayerNormGRU(3, 5, num_layers=2, bidirectional=bi),
    # zoneout in evaluation: its deterministic form, no masks drawn on either device
    "LSTM_zoneout": lambda bi: gatedrnn.LSTM(3, 5, num_layers=2, bidirectional=bi, zoneout=0.2,
                                             cell_zoneout=0.1).eval(),
    "GRU_zoneout": lambda bi: gatedrnn.GRU(3, 5, num_layers=2, bidirectional=bi,
                                           zoneout=0.2).eval(),
    "LSTM_clip": lambda bi: gatedrnn.LSTM(3, 5, num_layers=2, bidirectional=bi,
                                          recurrent_grad_clip=0.05),
    "GRU_clip": lambda bi: gatedrnn.GRU(3, 5, num_layers=2, bidirectional=bi,
                                        recurrent_grad_clip=0.05),
}


@pytest.mark.parametrize("cell", list(_ROW_WISE_CELLS))
@pytest.mark.parametrize("variant", ["plain", "reset", "bidirectional"])
def test_row_wise_ops_match_cpu(cell, variant):
    torch.manual_seed(0)
    cpu = _ROW_WISE_CELLS[cell](variant == "bidirectional").double()
    cpu.return_states = True
    gpu = copy.deepcopy(cpu).to(DEVICE)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    reset = (torch.rand(6, 3, generator=torch.Generator().manual_seed(1)) < 0.4) \
        if variant == "reset" else None
    _assert_runs_match(_run_and_grads(gpu, x, reset, DEVICE),
                       _run_and_grads(cpu, x, reset, "cpu"))


@pytest.mark.parametrize("cell", ["LayerNormLSTM", "LayerNormGRU"])
def test_row_wise_ops_packed_on_cuda_match_cpu(cell):
    torch.manual_seed(0)
    cpu = _ROW_WISE_CELLS[cell](True).double()
    gpu = copy.deepcopy(cpu).to(DEVICE)
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    results = []
    for m, device in ((cpu, "cpu"), (gpu, DEVICE)):
        xs = x.to(device).requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(xs, lengths, enforce_sorted=False)
        out, hx = m(packed)
        finals = hx if isinstance(hx, tuple) else (hx,)
        loss = (out.data ** 2).sum() + sum((f ** 2).sum() for f in finals)
        results.append([out.data, *finals, *torch.autograd.grad(loss, [xs, *m.parameters()])])
    for u, v in zip(results[1], results[0]):
        torch.testing.assert_close(u.cpu(), v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cell", ["LayerNormLSTM", "LayerNormGRU"])
@pytest.mark.parametrize("dtype", LOW)
def test_row_wise_ops_in_low_precision_compute_in_float32(cell, dtype):
    """float16 and bfloat16 modules run the row-wise ops in float32 on the GPU as on the
    CPU: the same as a float32 copy of the module on the same (rounded) values."""
    torch.manual_seed(0)
    low = _ROW_WISE_CELLS[cell](False).to(DEVICE, dtype)
    wide = copy.deepcopy(low).float()
    x = torch.randn(6, 3, 3, device=DEVICE).to(dtype)
    out, _ = low(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, wide(x.float())[0].to(dtype), rtol=0, atol=0)
