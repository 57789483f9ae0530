"""The ops' bfloat16 form on the CPU: bfloat16 arguments and results; GEMMs that round their
operands to bfloat16 and accumulate in float32, on AMX or AVX512_BF16 where the CPU has them
(GATEDRNN_CPU_BF16 forces a lower one; "none": the GEMMs in float32); gate math, states
between steps and the LSTM cell state in float32 (csrc/cpu/gemm.h, csrc/cpu/isa/gemm_bf16.*).

The rule (issue 17): against a float64 reference run on the same rounded values, the error of
every output, final state and gradient at most twice torch.nn's own error in bfloat16 (plus
one unit of rounding at the tensor's scale): conftest.assert_low_precision_within_2x_torch_nn.
The shapes have batches above 4, so that the recurrent GEMMs run on the bfloat16 kernels (the
small-batch GEMM, up to 4 rows, stays in float32)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import gatedrnn
from conftest import (
    CELLS,
    as_leaves,
    assert_low_precision_within_2x_torch_nn,
    build_case,
    is_lstm,
    nonlinearity,
    op_and_args,
    run_ours,
)
from test_cpu_capability import cpu_flags

ORDER = ("none", "avx512_bf16", "amx")


def best_bf16_kernel() -> str:
    """What this process can run: only the avx512 capability (GATEDRNN_CPU_CAPABILITY may
    force a lower one) has bfloat16 kernels."""
    if gatedrnn.cpu_capability() != "avx512":
        return "none"
    flags = cpu_flags()
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "none"


BEST_BF16 = best_bf16_kernel()
RUNNABLE = ORDER[: ORDER.index(BEST_BF16) + 1]
TOO_HIGH = ORDER[ORDER.index(BEST_BF16) + 1:]


def run_python(code: str, kernel: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GATEDRNN_CPU_BF16=kernel)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_bf16_kernel_in_use():
    forced = os.environ.get("GATEDRNN_CPU_BF16")
    assert gatedrnn.cpu_bf16_kernel() == (forced.lower() if forced else BEST_BF16)


# (T, N, I, H, P): a batch of 8 with several unit blocks; odd sizes (H and I not multiples
# of 16 or 32, N = 37 with a partial tile of rows); a longer sequence.
SHAPES = [(9, 8, 24, 40, 16), (6, 37, 33, 70, 30), (30, 16, 64, 64, 24)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_op_error_at_most_twice_torch_nn(cell, shape, packed, reverse):
    assert_low_precision_within_2x_torch_nn(cell, torch.bfloat16, shape, packed, reverse)


# Each bfloat16 kernel this CPU runs, in its own process (the choice is made once per
# process), by the same rule over every cell, padded and packed, both directions.
EVERY_KERNEL = """
import sys, torch, gatedrnn
sys.path.insert(0, {tests!r})
from conftest import CELLS, assert_low_precision_within_2x_torch_nn
assert gatedrnn.cpu_bf16_kernel() == {kernel!r}, gatedrnn.cpu_bf16_kernel()
for cell in CELLS:
    for packed in (False, True):
        for reverse in (False, True):
            assert_low_precision_within_2x_torch_nn(cell, torch.bfloat16, (7, 21, 40, 48, 20),
                                                    packed, reverse)
print("ok")
"""


@pytest.mark.parametrize("kernel", RUNNABLE)
def test_every_bf16_kernel_by_the_rule(kernel):
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = run_python(EVERY_KERNEL.format(tests=tests, kernel=kernel), kernel)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("kernel", TOO_HIGH + ("avx1024",))
def test_a_bf16_kernel_this_machine_lacks_is_refused(kernel):
    proc = run_python("import gatedrnn", kernel)
    assert proc.returncode != 0
    assert "GATEDRNN_CPU_BF16" in proc.stderr


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_bits_do_not_depend_on_the_thread_count(cell, packed):
    _, tensors, batch_sizes = build_case(cell, 12, 24, 40, 96, 48, dtype=torch.float32,
                                         packed=packed)
    tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_ours(cell, tensors, batch_sizes, False))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for k, v in results[0].items():
            assert torch.equal(v, other[k]), k


@pytest.mark.parametrize("cell", CELLS)
def test_workspace_dtype_and_opcheck(cell):
    """The forward's workspace (activations the backward reads): the GRU's kept in
    bfloat16, as torch.nn's bfloat16 cells keep theirs (the kernels compute in float32 and
    round what they keep), the LSTM's in float32, [rows, 3H], its gates as float16 in the
    first 2H columns (in bfloat16, its gradients' error passed twice torch.nn's:
    cpu/recurrence.h, workspace_dtype), whichever GEMM kernels run. The fake kernels say
    so, and opcheck finds fake and real kernels agreeing, forward and backward."""
    _, tensors, batch_sizes = build_case(cell, 5, 6, 7, 20, 9, dtype=torch.float32, packed=True)
    tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    op, args = op_and_args(cell, as_leaves(tensors), batch_sizes, False)
    with torch.no_grad():
        res = op(*args)
    for r in res[:3 if is_lstm(cell) else 2]:
        assert r.dtype == torch.bfloat16
    if cell != "rnn_tanh" and cell != "rnn_relu":
        assert res[-1].dtype == (torch.float32 if is_lstm(cell) else torch.bfloat16)
    if is_lstm(cell):
        assert res[-1].shape[1] == 3 * (tensors["w_hh"].shape[0] // 4)
    torch.library.opcheck(op, args)


# Where the GEMMs run in float32 ("none") a bfloat16 op computes what the float32 op
# computes on the same (bfloat16) values, and rounds what it keeps: the GRU's workspace is
# the float32 op's rounded to bfloat16, the LSTM's gates (the first 2H columns, as 4H
# float16 values) the float32 op's rounded to float16, both as torch rounds (to nearest
# even), bit for bit, and the LSTM's cell states (the last H columns) the float32 op's.
# Padded and packed, a NaN and huge inputs among the values; in the capability the suite
# runs under.
WORKSPACE_ROUNDED = """
import sys, torch, gatedrnn
assert gatedrnn.cpu_bf16_kernel() == "none", gatedrnn.cpu_bf16_kernel()
lstm = sys.argv[1] == "lstm"
gates = 4 if lstm else 3
torch.manual_seed(0)
for T, N, I, H, packed in [(5, 3, 7, 20, False), (9, 6, 16, 33, True), (1, 64, 32, 48, False),
                           (30, 16, 64, 64, False)]:
    batch_sizes = torch.tensor([N - k * N // (2 * T) for k in range(T)]) if packed else None
    x = torch.randn(int(batch_sizes.sum()) if packed else T, *(() if packed else (N,)), I)
    x = x.bfloat16()
    x.view(-1, I)[x.view(-1, I).shape[0] // 2, 0] = float("nan")
    x.view(-1, I)[0, :] = 1e30
    h0, c0 = torch.randn(N, H).bfloat16(), torch.randn(N, H).bfloat16()
    w_ih, w_hh = torch.randn(gates * H, I).bfloat16(), torch.randn(gates * H, H).bfloat16()
    b_ih, b_hh = torch.randn(gates * H).bfloat16(), torch.randn(gates * H).bfloat16()
    def run(dtype):
        args = (x, batch_sizes, h0) + ((c0,) if lstm else ()) + (w_ih, w_hh, b_ih, b_hh)
        args = [a.to(dtype) if a is not batch_sizes else a for a in args]
        if lstm:
            return torch.ops.gatedrnn.lstm_forward(*args, None, False)[3]
        return torch.ops.gatedrnn.gru_forward(*args, False)[2]
    kept, exact = run(torch.bfloat16), run(torch.float32)
    if lstm:
        assert kept.dtype == torch.float32 and kept.shape[1] == 3 * H
        torch.testing.assert_close(kept[:, 2 * H:], exact[:, 4 * H:], rtol=0, atol=0,
                                   equal_nan=True)
        kept, exact, dtype = kept[:, :2 * H].view(torch.float16), exact[:, :4 * H], torch.float16
    else:
        assert kept.dtype == torch.bfloat16 and exact.dtype == torch.float32
        dtype = torch.bfloat16
    assert exact.isnan().any() and ((exact == 0) | (exact.abs() == 1)).any()  # saturated
    # NaNs where the float32 op has them (torch's vectorized conversion keeps a NaN's sign
    # and payload, its scalar one gives 0x7FC0, as ours does); the bits of all else
    nan = exact.isnan()
    assert torch.equal(kept.isnan(), nan), (T, N, I, H, packed)
    assert torch.equal(kept[~nan].view(torch.int16),
                       exact[~nan].to(dtype).view(torch.int16)), (T, N, I, H, packed)
print("ok")
"""


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_workspace_is_the_float32_ops_rounded(cell):
    proc = run_python(WORKSPACE_ROUNDED, "none", cell)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_backward_refuses_a_workspace_of_another_dtype():
    _, tensors, batch_sizes = build_case("gru", 4, 5, 3, 6, dtype=torch.float32, packed=True)
    tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    op, args = op_and_args("gru", tensors, batch_sizes, False)
    out, h_n, ws = op(*args)
    t = tensors
    with pytest.raises(RuntimeError, match="workspace to have dtype BFloat16"):
        torch.ops.gatedrnn.gru_backward(torch.ones_like(out), torch.ones_like(h_n), t["input"],
                                        batch_sizes, t["h0"], t["w_ih"], t["w_hh"], out,
                                        ws.float(), False)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_bf16_module_at_a_batch_of_16(mode):
    """A 2-layer bidirectional module in bfloat16, batch 16 (the bfloat16 GEMM kernels for
    every product): output and every gradient by the rule, against torch.nn's module."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(24, 40, num_layers=2, bidirectional=True).to(torch.bfloat16)
    ours = getattr(gatedrnn, mode)(24, 40, num_layers=2, bidirectional=True).to(torch.bfloat16)
    ours.load_state_dict(ref.state_dict())
    ref64 = getattr(torch.nn, mode)(24, 40, num_layers=2, bidirectional=True).double()
    ref64.load_state_dict(ref.state_dict())
    x = torch.randn(10, 16, 24).to(torch.bfloat16)
    cot = torch.randn(10, 16, 80, dtype=torch.float64)

    def run(m, inp):
        inp = inp.clone().requires_grad_()
        out = m(inp)[0]
        (out.double() * cot).sum().backward()
        grads = [inp.grad] + [p.grad for p in m.parameters()]
        m.zero_grad()
        return [out.detach()] + grads

    expected, theirs, got = run(ref64, x.double()), run(ref, x), run(ours, x)
    eps = torch.finfo(torch.bfloat16).eps
    for e, t, o in zip(expected, theirs, got):
        assert o.dtype == torch.bfloat16
        e_ours = (o.double() - e).abs().max().item()
        e_nn = (t.double() - e).abs().max().item()
        assert e_ours <= 2 * e_nn + eps * max(1.0, e.abs().max().item()), (e_ours, e_nn)


@pytest.mark.parametrize("mode, steps", [(m, t) for m in ("LSTM", "GRU", "RNN") for t in (1, 3)]
                         + [(m, 1) for m in ("LSTMCell", "GRUCell", "RNNCell")])
def test_an_empty_batch_as_torch_nn(mode, steps):
    """A batch of 0 in bfloat16, which torch.nn accepts: outputs and final states of its
    shapes, zero gradients. (The one-step output's bits pointer, null for an empty tensor,
    once sent the op down the float32 output's path: "expected scalar type Float".)"""
    torch.manual_seed(0)
    cell = mode.endswith("Cell")
    kwargs = {} if cell else {"num_layers": 2, "bidirectional": True}
    ref = getattr(torch.nn, mode)(24, 40, **kwargs).to(torch.bfloat16)
    ours = getattr(gatedrnn, mode)(24, 40, **kwargs).to(torch.bfloat16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(*([] if cell else [steps]), 0, 24, dtype=torch.bfloat16)

    def run(m):
        inp = x.clone().requires_grad_()
        result = m(inp)
        if not cell:
            result = (result[0], *(result[1] if mode == "LSTM" else (result[1],)))
        elif mode != "LSTMCell":
            result = (result,)
        sum(t.float().sum() for t in result).backward()
        return result, [inp.grad] + [p.grad for p in m.parameters()]

    (theirs, their_grads), (got, grads) = run(ref), run(ours)
    assert [(t.shape, t.dtype) for t in got] == [(t.shape, t.dtype) for t in theirs]
    for g, t in zip(grads, their_grads):
        assert g.shape == t.shape and g.dtype == t.dtype and not g.any()


def test_outputs_round_as_torch_rounds():
    """A bfloat16 op writes its output in bfloat16 as its steps make it (recurrence.h,
    StepOutput): the bits torch's own rounding of the float32 result gives, for ties (to
    even, both ways) and denormals; NaN stays NaN. A GRU with zero weights: z = 1/2 and
    n = tanh(b_in), so h_t = n / 2 + h_{t-1} / 2; where b_in = 0 (units < 8), h0's denormals
    are halved at every step, a tie whenever the last kept bit is odd."""
    T, N, H = 3, 8, 40
    torch.manual_seed(0)
    h0 = torch.randn(1, N, H) * torch.tensor(2.0).pow(torch.randint(-140, 120, (1, N, H)))
    h0[0, 0, :8] = torch.tensor([1, 3, 5, 7, -9, 11, 127, 0.0]) * 2.0 ** -133
    h0[0, 1, 0] = float("nan")  # its whole row: NaN * 0 in the GEMM
    h0 = h0.to(torch.bfloat16).float()  # values the bfloat16 run takes exactly
    wide = gatedrnn.GRU(16, H)
    with torch.no_grad():
        for p in wide.parameters():
            p.zero_()
        wide.bias_ih_l0[2 * H + 8:] = torch.randn(H - 8).to(torch.bfloat16).float()
    x = torch.randn(T, N, 16).to(torch.bfloat16).float()
    narrow = gatedrnn.GRU(16, H).to(torch.bfloat16)
    narrow.load_state_dict(wide.state_dict())
    with torch.no_grad():
        expected, h_expected = wide(x, h0)
        out, h_n = narrow(x.bfloat16(), h0.bfloat16())
    assert out.dtype == torch.bfloat16
    low = expected[~expected.isnan()].view(torch.int32) & 0x1ffff
    assert (low == 0x08000).any() and (low == 0x18000).any()  # ties rounding down and up
    assert ((expected.abs() < torch.finfo(torch.float32).tiny) & (expected != 0)).any()
    for ours, wanted in ((out, expected), (h_n, h_expected)):
        wanted = wanted.to(torch.bfloat16)
        nan = wanted.isnan()
        assert nan.any() and torch.equal(ours.isnan(), nan)  # NaN's bits are not a value
        assert torch.equal(ours[~nan].view(torch.int16), wanted[~nan].view(torch.int16))


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("input_size", [7, 33])
def test_input_rows_read_up_to_their_width(mode, input_size):
    """x's rows as a view into wider rows whose next column is NaN: the bfloat16 kernels
    pack an odd k's last pair with a zero high half and read nothing past a row's width
    (isa/gemm_bf16.cpp, pack_a_bf16), so the output is finite and has the bits of a
    contiguous x's. 13 rows a step: tiles of 12 and 1."""
    torch.manual_seed(0)
    m = getattr(gatedrnn, mode)(input_size, 40, num_layers=2).to(torch.bfloat16)
    wide = torch.randn(5, 13, input_size + 1).to(torch.bfloat16)
    wide[..., input_size] = float("nan")
    x = wide[..., :input_size]
    with torch.no_grad():
        out, contiguous = m(x)[0], m(x.contiguous())[0]
    assert out.isfinite().all()
    assert torch.equal(out.view(torch.int16), contiguous.view(torch.int16))


@pytest.mark.parametrize("batch", [1, 2, 64, 200])
@pytest.mark.parametrize("input_size, hidden_size", [(37, 45), (64, 96)])
def test_one_step_gradients_round_as_torch_rounds(batch, input_size, hidden_size):
    """A one-step bfloat16 backward writes its gradients in bfloat16 as its GEMM kernels make
    them (gemm_bf16.cpp: gemm_packed_round, gemm_b_rows_round; gemm_tiles.cpp:
    gemm_few_rows_bf16_round): the bits torch's rounding of the exact sums gives. A ReLU RNN
    whose output is positive, so that the gate gradient is grad_output itself, and integers
    everywhere: every product and sum is exact in float32, whatever the order, and many sums
    are not bfloat16 numbers (ties among them). A NaN in x makes its column of grad_w_ih NaN.
    Batch 1 and 2: products of B read in place in float32; 64: w_ih read in place by the
    bfloat16 tiles; 200: those on packed panels. Odd sizes: partial panels and vectors."""
    torch.manual_seed(0)
    N, I, H = batch, input_size, hidden_size
    top = 8 if N > 2 else 255  # sums of few products need larger terms to round

    def ints(*size, low=-top):
        return torch.randint(low, top + 1, size).to(torch.bfloat16)

    x, h0, w_ih, w_hh = ints(1, N, I), ints(N, H), ints(H, I), ints(H, H)
    x[0, min(3, N - 1), 5] = float("nan")
    out, grad_out = ints(1, N, H, low=1), ints(1, N, H)
    grads = torch.ops.gatedrnn.rnn_backward(grad_out, torch.zeros_like(h0), x, None, h0, w_ih,
                                            w_hh, out, "relu", False)
    dg = grad_out[0].double()
    expected = [dg @ w_ih.double(), dg @ w_hh.double(), dg.t() @ x[0].double(),
                dg.t() @ h0.double(), dg.sum(0), dg.sum(0)]
    ties = (expected[2].float().nan_to_num().view(torch.int32) & 0xffff) == 0x8000
    assert ties.any() and (expected[2].abs() > 256).any()
    for got, wanted in zip(grads[:6], expected):
        wanted = wanted.reshape(got.shape).to(torch.bfloat16)
        nan = wanted.isnan()
        assert got.dtype == torch.bfloat16 and torch.equal(got.isnan(), nan)
        assert torch.equal(got[~nan].view(torch.int16), wanted[~nan].view(torch.int16))
    assert grads[2][:, 5].isnan().all()
