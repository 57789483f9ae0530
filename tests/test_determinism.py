"""Determinism and thread safety on the CPU.

- Identical inputs give bitwise-identical outputs, final states and gradients, run
  to run and for any number of threads: every GEMM is cut into blocks that depend
  on its shape alone, each block one single-threaded BLAS call over the whole sum
  (csrc/common/blas.h), and the pointwise passes work element by element.
- Two threads training separate modules at the same time get the results each gets
  alone, bit for bit; so do many threads running inference on one module.
"""
import threading

import pytest
import torch

from _dropin_helpers import CELLS, family, lengths_for, make_module, make_x, run

THREAD_COUNTS = (1, 2, 3)
KINDS = ("padded", "packed_unsorted")
# (T, N, I, H): small enough to be quick, large enough that the input projection,
# the per-step GEMMs and the weight-gradient GEMMs are each cut into several blocks; and
# steps too small for two threads to share, in several chunks (the forward's time loop on
# one thread beside the input projection's chunks, ForwardTeam::run_pipelined, and the
# backward's beside the chunks' GEMMs, BackwardTeam::run_pipelined).
SHAPES = [(5, 16, 200, 160), (4, 3, 700, 300), (70, 8, 24, 32)]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def training_job(cell, dtype, kind, shape, seed=0):
    """A 2-layer bidirectional module and its input, built now (module initialization
    draws from the global generator, which threads would share); returns a function
    that runs forward and backward and returns every result as a dict."""
    T, N, I, H = shape
    torch.manual_seed(seed)
    module = make_module(cell, True, I, H, num_layers=2, bidirectional=True, dtype=dtype,
                         **({"proj_size": H // 2} if cell == "lstm_proj" else {}))
    x = make_x(kind, False, t=T, n=N, i=I, dtype=dtype, seed=seed + 1)
    return lambda: run(module, kind, x, lengths_for(kind, T, N))


def train(cell, dtype, kind, shape, seed=0):
    return training_job(cell, dtype, kind, shape, seed)()


def assert_bitwise_equal(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        if a[key] is None:
            assert b[key] is None, key
            continue
        assert torch.equal(a[key], b[key]), (
            f"{key}: max difference {(a[key] - b[key]).abs().max().item():.3g}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_bitwise_identical_run_to_run_and_across_thread_counts(cell, dtype, kind, shape,
                                                                 restore_threads):
    results = {}
    for threads in THREAD_COUNTS:
        torch.set_num_threads(threads)
        results[threads] = train(cell, dtype, kind, shape)
        assert_bitwise_equal(results[threads], train(cell, dtype, kind, shape))
    for threads in THREAD_COUNTS[1:]:
        assert_bitwise_equal(results[threads], results[THREAD_COUNTS[0]])


# Calls of up to 8 steps read the weights where they are, longer ones pack them
# (csrc/cpu/recurrent_gemm.h): the same sums either way. In bfloat16 too, where the
# AVX512_BF16 kernels read a bfloat16 weight in place (gemm_w_rows) at batches above the
# small-batch kernel's (3 runs there in float32 either way).
FEW_STEPS, MANY_STEPS = 8, 20


@pytest.mark.parametrize("batch", [3, 24, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_calls_of_few_steps_give_the_bits_of_packed_weights(cell, dtype, batch):
    """A call on a sequence's first steps gives the whole sequence's outputs of those steps
    bit for bit; with zero output gradients past them (which add exact zeros), its
    gradients too."""
    I, H = 80, 96
    torch.manual_seed(0)
    module = make_module(cell, True, I, H, num_layers=2, dtype=dtype)
    x = torch.randn(MANY_STEPS, batch, I, dtype=dtype)
    grad = torch.randn(MANY_STEPS, batch, module.proj_size or H, dtype=dtype)
    grad[FEW_STEPS:] = 0
    results = []
    for steps in (FEW_STEPS, 1, MANY_STEPS):
        module.zero_grad(set_to_none=True)
        xs = x[:steps].clone().requires_grad_()
        out, _ = module(xs)
        out.backward(grad[:steps])
        results.append({"output": out.detach()[:1 if steps == 1 else FEW_STEPS],
                        "grad_input": xs.grad[:1 if steps == 1 else FEW_STEPS],
                        **{name: p.grad for name, p in module.named_parameters()}})
    few, one, many = results
    assert_bitwise_equal(few, many)
    for key in ("output",):
        assert torch.equal(one[key], many[key][:1]), key


# Products of up to 128 rows in a bfloat16 backward read their bfloat16 B in place on the
# AVX512_BF16 kernels (gemm_b_rows): the input gradient's w_ih (recurrence.h) and, in calls
# of a few steps, dh's w_hh (recurrent_gemm.h); more rows pack it. The same sums either way.
# Sizes with an odd k, panels of B cut short, one and two terms (the GRU's input side is
# two column ranges of its gate gradients).
@pytest.mark.parametrize("sizes", [(37, 45), (20, 64), (96, 33)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell", CELLS)
def test_backward_of_few_rows_gives_the_bits_of_packed_weights(cell, sizes):
    """A batch's first rows give the whole batch's output, input gradient and initial
    state gradient of those rows, bit for bit: each row's sums do not depend on the other
    rows. Two steps: one-step calls leave the state's product out when h0 needs none."""
    I, H = sizes
    steps, few, many = 2, 40, 200
    torch.manual_seed(0)
    module = make_module(cell, True, I, H, num_layers=2, bidirectional=True,
                         dtype=torch.bfloat16)
    x = torch.randn(steps, many, I, dtype=torch.bfloat16)
    h0 = torch.randn(4, many, module.proj_size or H, dtype=torch.bfloat16)
    grad = torch.randn(steps, many, 2 * (module.proj_size or H), dtype=torch.bfloat16)
    results = []
    for rows in (few, many):
        xs = x[:, :rows].clone().requires_grad_()
        h0s = h0[:, :rows].clone().requires_grad_()
        hx = (h0s, torch.zeros(4, rows, H, dtype=torch.bfloat16)) if family(cell) == "lstm" \
            else h0s
        out, _ = module(xs, hx)
        out.backward(grad[:, :rows])
        results.append({"output": out.detach()[:, :few], "grad_input": xs.grad[:, :few],
                        "grad_h0": h0s.grad[:, :few]})
    assert_bitwise_equal(*results)


def _in_threads(jobs):
    """Runs every job in its own thread, all released at once; returns their results
    and re-raises the first exception any of them raised."""
    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(len(jobs))

    def work(i):
        try:
            barrier.wait()
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001  (re-raised below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("cells", [("lstm", "gru"), ("lstm_proj", "rnn_relu"), ("gru", "gru")],
                         ids="+".join)
def test_two_threads_training_separate_modules_match_serial_runs(cells):
    steps = [[training_job(c, torch.float32, kind, SHAPES[0], seed=k) for kind in KINDS]
             for k, c in enumerate(cells)]
    jobs = [lambda own=own: [step() for step in own for _ in range(3)] for own in steps]
    serial = [job() for job in jobs]
    for concurrent, alone in zip(_in_threads(jobs), serial):
        for a, b in zip(concurrent, alone):
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_many_threads_of_inference_on_one_module_match_a_serial_run(cell):
    T, N, I, H = SHAPES[0]
    torch.manual_seed(0)
    module = make_module(cell, True, I, H, num_layers=2, bidirectional=True).eval()
    inputs = [make_x("padded", False, t=T, n=N, i=I, dtype=torch.float32, seed=s)
              for s in range(8)]

    def infer(x):
        with torch.no_grad():
            return [run(module, "padded", x, backward=False, input_grad=False)
                    for _ in range(5)]

    serial = [infer(x) for x in inputs]
    concurrent = _in_threads([lambda x=x: infer(x) for x in inputs])
    for runs, alone in zip(concurrent, serial):
        for a, b in zip(runs, alone):
            assert_bitwise_equal(a, b)
