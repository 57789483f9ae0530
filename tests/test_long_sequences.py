"""Long sequences and memory: T = 100,000 trains with memory linear in T and no
stack growth; a training step needs what the formula below says, within 10%;
1,000 training iterations keep the resident set flat.

The memory tests run in a fresh process (tests/_memory_child.py) and read the peak
resident set from /proc, with glibc told to give every large buffer its own mmap so
that resident memory follows the live tensors.
"""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from _dropin_helpers import CELLS, is_lstm, make_module

HERE = os.path.dirname(os.path.abspath(__file__))
LONG_T = 100_000

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/status")

#: Under AddressSanitizer (scripts/sanitize.sh preloads it) malloc is ASan's, with
#: redzones and a quarantine of freed memory: resident memory says nothing then.
measures_memory = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                                     reason="resident memory is meaningless under ASan")


def run_child(*args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_memory_child.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def training_step_bytes(cell: str, T: int, N: int = 1, I: int = 16, H: int = 16,
                        element: int = 4) -> int:
    """Memory of one training step of one layer in one direction (no projection).

    With R = T * N rows (sum(batch_sizes) when packed), in elements of the dtype:
      saved by the forward for the backward:
        output                        R * H
        workspace   LSTM R * 5H (activated gates i, f, g, o and the cell state c)
                    GRU  R * 4H (activated r, z, n and W_hn h + b_hn)
                    RNN  none (its backward needs only the output)
      made by the backward:
        grad_input                    R * I
        one chunk of gate gradients (the input and weight gradients are made a chunk
        of ~1024 rows at a time): 1024 * (G + 1) with G = 4H (LSTM), 4H (GRU:
        dr, dz, dn * r, dn), H (RNN), and a row of ones for the bias sums (packed
        input adds the chunk's gathered previous states, 1024 * H; padded input reads
        them from the output in place)
    plus 16 bytes per step for the schedule (the batch size and row offset of each
    step). The input itself and the output gradient belong to the caller.
    """
    R = T * N
    saved = {"lstm": H + 5 * H, "gru": H + 4 * H, "rnn": H}[cell]
    gate_grads = {"lstm": 4 * H, "gru": 4 * H, "rnn": H}[cell]
    chunk = min(R, 1024) * (gate_grads + 1)
    return element * (R * (saved + I) + chunk) + 16 * T


@measures_memory
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_training_step_memory_is_linear_in_T_and_follows_the_formula(cell):
    steps = (LONG_T // 4, LONG_T)
    peaks = run_child("peak", cell, *steps)
    for T in steps:
        expected = training_step_bytes(cell, T)
        measured = peaks[str(T)]
        assert abs(measured - expected) <= 0.10 * expected, (
            f"T={T}: measured {measured / 2**20:.2f} MiB, formula {expected / 2**20:.2f} MiB")


@measures_memory
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_thousand_training_iterations_keep_resident_memory_flat(cell):
    rss = run_child("leak", cell, 1000)
    growth = rss["late"] - rss["early"]
    # One iteration allocates ~0.5 MiB of tensors; a leak of a single small tensor
    # per iteration over the last 900 would exceed this.
    assert growth < 2**20, f"resident set grew by {growth / 2**20:.2f} MiB over 900 iterations"


def _loss_and_grads(module, x, parts):
    """Runs the sequence in ``parts`` consecutive pieces, each starting from the
    previous piece's final state; returns the output, the final state and the
    gradients of a fixed random loss w.r.t. the input and every parameter."""
    x = x.detach().requires_grad_()
    outs, hx = [], None
    for piece in torch.tensor_split(x, parts, dim=0):
        out, hx = module(piece, hx)
        outs.append(out)
    out = torch.cat(outs)
    states = hx if isinstance(hx, tuple) else (hx,)
    g = torch.Generator().manual_seed(5)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
               for t in (out, *states))
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, [x, *params])
    return [out.detach(), *[s.detach() for s in states], *grads]


@pytest.mark.parametrize("cell", CELLS)
def test_long_sequence_trains_on_a_small_stack(cell):
    """T = 100,000 trains (forward and backward) in a thread with a 512 KiB stack,
    and gives what the same sequence gives run as two halves chained by the state."""
    torch.manual_seed(0)
    module = make_module(cell, True, 8, 8, dtype=torch.float64)
    x = torch.randn(LONG_T, 2, 8, dtype=torch.float64)

    result, errors = {}, []

    def whole():
        try:
            result["whole"] = _loss_and_grads(module, x, 1)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the test's thread)
            errors.append(exc)

    old = threading.stack_size(512 * 1024)
    try:
        worker = threading.Thread(target=whole)
        worker.start()
    finally:
        threading.stack_size(old)
    worker.join()
    if errors:
        raise errors[0]
    halves = _loss_and_grads(module, x, 2)
    assert len(halves) == len(result["whole"]) == (4 if is_lstm(cell) else 3) + len(
        list(module.parameters()))
    for a, b in zip(result["whole"], halves):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
