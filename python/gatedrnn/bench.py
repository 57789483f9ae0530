"""Compare gatedrnn against torch.nn on this machine: `python -m gatedrnn.bench`.

For each cell and size it checks that both give the same output, then times
inference (forward under no_grad) and training (forward + backward of a random
output gradient), interleaving the two implementations in the same process,
and prints the median times and the speedup (torch.nn time / gatedrnn time).
"""
import argparse
import statistics
import time

import torch

import gatedrnn

SIZES = {  # name: (T, N, I, H)
    "large": (100, 64, 512, 512),
    "small": (100, 16, 128, 128),
    "tiny": (200, 1, 64, 64),
    "wide": (50, 256, 256, 256),
    "long": (1000, 8, 256, 256),
}
CELLS = {"lstm": (torch.nn.LSTM, gatedrnn.LSTM), "gru": (torch.nn.GRU, gatedrnn.GRU),
         "rnn": (torch.nn.RNN, gatedrnn.RNN)}


def _step(module, x, grad, train):
    if train:
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        out.backward(grad)
    else:
        with torch.no_grad():
            module(x)


def _time_pair(ref, ours, x, grad, train, repeats, warmup):
    for _ in range(warmup):
        _step(ref, x, grad, train)
        _step(ours, x, grad, train)
    times = {"torch": [], "gatedrnn": []}
    for _ in range(repeats):
        for name, module in (("torch", ref), ("gatedrnn", ours)):
            start = time.perf_counter()
            _step(module, x, grad, train)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["torch"]), statistics.median(times["gatedrnn"])


def run(cells, sizes, dtype, repeats, warmup):
    rows = []
    for cell in cells:
        nn_cls, our_cls = CELLS[cell]
        for size in sizes:
            T, N, I, H = SIZES[size]
            torch.manual_seed(0)
            ref = nn_cls(I, H).to(dtype)
            ours = our_cls(I, H).to(dtype)
            ours.load_state_dict(ref.state_dict())
            x = torch.randn(T, N, I, dtype=dtype)
            with torch.no_grad():
                err = (ref(x)[0] - ours(x)[0]).abs().max().item()
            tol = 1e-3 if dtype == torch.float32 else 1e-9
            if not err <= tol:
                raise SystemExit(f"{cell} {size}: outputs differ from torch.nn by {err:.3g}")
            grad = torch.randn(T, N, H, dtype=dtype)
            for mode in ("inference", "training"):
                t_ref, t_ours = _time_pair(ref, ours, x, grad, mode == "training", repeats,
                                           warmup)
                rows.append((cell, size, mode, t_ref * 1e3, t_ours * 1e3, t_ref / t_ours))
                print(f"  {cell:4} {size:6} {mode:9} torch.nn {t_ref * 1e3:9.2f} ms  "
                      f"gatedrnn {t_ours * 1e3:9.2f} ms  x{t_ref / t_ours:.2f}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--sizes", nargs="+", default=["small", "tiny"], choices=list(SIZES))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny run for CI: 2 repeats, 'tiny' only")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.warmup = ["tiny"], 2, 1
    dtype = getattr(torch, args.dtype)
    print(f"gatedrnn {gatedrnn.__version__} vs torch {torch.__version__}, {args.dtype}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    rows = run(args.cells, args.sizes, dtype, args.repeats, args.warmup)
    print()
    print("| cell | size (T, N, I, H) | mode | torch.nn ms | gatedrnn ms | speedup |")
    print("|---|---|---|---:|---:|---:|")
    for cell, size, mode, t_ref, t_ours, ratio in rows:
        print(f"| {cell} | {size} {SIZES[size]} | {mode} | {t_ref:.2f} | {t_ours:.2f} | "
              f"{ratio:.2f}x |")


if __name__ == "__main__":
    main()
