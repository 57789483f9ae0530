"""Smoke test of an installed gatedrnn (a wheel or `pip install .`, not the source tree):
it imports, says what it was built with, and every cell's forward and backward match
torch.nn in float64. With --expect-cuda it also checks that the build has its CUDA
kernels, registered for every op (which needs no GPU).

    python scripts/check_install.py [--expect-cuda]     # run from outside the checkout
"""
import argparse
import os
import sys

import torch

import gatedrnn
from gatedrnn import _build_info


def parity() -> float:
    torch.manual_seed(0)
    worst = 0.0
    T, N, I, H = 7, 3, 5, 10
    for ours, ref in [(gatedrnn.LSTM(I, H, num_layers=2, bidirectional=True),
                       torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)),
                      (gatedrnn.GRU(I, H), torch.nn.GRU(I, H)),
                      (gatedrnn.RNN(I, H), torch.nn.RNN(I, H))]:
        ours, ref = ours.double(), ref.double()
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(T, N, I, dtype=torch.float64)
        got = []
        for m in (ours, ref):
            xi = x.clone().requires_grad_()
            y = m(xi)[0]
            got.append([y] + list(torch.autograd.grad(y.sin().sum(), [xi, *m.parameters()])))
        worst = max(worst, max((a - b).abs().max().item() for a, b in zip(*got)))
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--expect-cuda", action="store_true")
    args = p.parse_args()
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    location = os.path.dirname(gatedrnn.__file__)
    print(f"gatedrnn from {location}")
    print(f"built against torch {_build_info.torch_version}, CUDA kernels {_build_info.cuda} "
          f"(toolkit {_build_info.cuda_version}, archs {_build_info.cuda_archs}), CPU ISAs "
          f"{', '.join(_build_info.cpu_isas)}; in use: {gatedrnn.cpu_capability()}")
    failures = []
    if location.startswith(checkout + os.sep):
        failures.append("imported the source checkout, not the installed package")
    worst = parity()
    print(f"largest difference from torch.nn in float64: {worst:.3g}")
    if not worst < 1e-10:
        failures.append(f"results differ from torch.nn by {worst:.3g}")
    if args.expect_cuda:
        ops = [op for op in torch._C._dispatch_get_all_op_names() if op.startswith("gatedrnn::")]
        missing = [op for op in ops
                   if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
        print(f"ops with a CUDA kernel: {len(ops) - len(missing)} of {len(ops)}")
        if not _build_info.cuda:
            failures.append("built without the CUDA kernels")
        if missing or not ops:
            failures.append(f"ops without a CUDA kernel: {missing} (of {ops})")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
