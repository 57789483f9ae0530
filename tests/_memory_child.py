"""Memory measurements for test_long_sequences.py, run in a fresh process.

    python _memory_child.py peak CELL T [T ...]   peak memory of one training step per T
    python _memory_child.py leak CELL ITERATIONS  resident memory during many steps

Prints one JSON object. The parent sets MALLOC_MMAP_THRESHOLD_ so that every large
buffer is its own mmap, returned to the system when freed: the resident set then
follows the live tensors exactly, instead of glibc keeping freed blocks or raising
its mmap threshold as it goes.
"""
import json
import sys

import torch

import gatedrnn

# Long-sequence shape: one sequence of small H, so per-step cost is all overhead.
N, I, H = 1, 16, 16
CLASSES = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn": gatedrnn.RNN}


def status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> None:
    """Sets the peak resident set (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def train_step(module, x, grad_out):
    out, _ = module(x)
    out.backward(grad_out)


def peak(cell: str, steps: list) -> dict:
    """Peak growth of the resident set over one training step (forward + backward
    of a given output gradient), measured on the second and third steps at each T so
    that one-time buffers (BLAS scratch, thread pools) are already there; the larger of
    the two, since a single step can read low, for reasons not pinned down (one RNN
    step at T = 25,000 read 10.3% under the formula in a full suite run; six reruns gave
    -2% to -7%)."""
    torch.manual_seed(0)
    module = CLASSES[cell](I, H)
    result = {}
    for T in steps:
        x = torch.randn(T, N, I, requires_grad=True)
        grad_out = torch.randn(T, N, H)
        growth = 0
        for step in range(3):
            x.grad = None
            module.zero_grad(set_to_none=True)
            # Blocks the CPU block cache kept from the first step would be reused unseen.
            gatedrnn.empty_cpu_cache()
            reset_peak()
            before = status_bytes("VmRSS")
            train_step(module, x, grad_out)
            if step > 0:
                growth = max(growth, status_bytes("VmHWM") - before)
        result[str(T)] = growth
        assert torch.isfinite(x.grad).all()
    return result


def leak(cell: str, iterations: int) -> dict:
    """Resident set after 10% of the iterations and after all of them."""
    torch.manual_seed(0)
    module = CLASSES[cell](32, 32, num_layers=2, bidirectional=True)
    opt = torch.optim.SGD(module.parameters(), lr=1e-3)
    x = torch.randn(20, 4, 32)
    rss = {}
    for it in range(1, iterations + 1):
        opt.zero_grad(set_to_none=True)
        out, _ = module(x.requires_grad_())
        out.square().mean().backward()
        opt.step()
        x.grad = None
        if it == iterations // 10:
            rss["early"] = status_bytes("VmRSS")
    rss["late"] = status_bytes("VmRSS")
    return rss


if __name__ == "__main__":
    what, cell = sys.argv[1], sys.argv[2]
    if what == "peak":
        print(json.dumps(peak(cell, [int(t) for t in sys.argv[3:]])))
    else:
        print(json.dumps(leak(cell, int(sys.argv[3]))))
