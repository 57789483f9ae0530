"""What double backward costs: a gradient-penalty step (forward, the input gradient with
create_graph=True, backward of its squared norm to the parameters) against a first-order
training step, gatedrnn and torch.nn in the same process, medians of 15 interleaved rounds.

    OMP_NUM_THREADS=2 python benchmarks/double_backward.py
"""
import statistics
import time

import torch

import gatedrnn

SHAPES = [(100, 16, 128, 128), (200, 1, 64, 64)]  # (T, N, I, H): the suite's small and tiny
PAIRS = [(gatedrnn.LSTM, torch.nn.LSTM), (gatedrnn.GRU, torch.nn.GRU), (gatedrnn.RNN, torch.nn.RNN)]


def first_order(module, x):
    module(x)[0].pow(2).sum().backward()


def gradient_penalty(module, x):
    x = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(module(x)[0].pow(2).sum(), x, create_graph=True)
    (g * g).sum().backward()


def median_ms(step, modules, x, rounds=15, warmup=3):
    times = {name: [] for name in modules}
    for _ in range(warmup):
        for m in modules.values():
            step(m, x)
    for _ in range(rounds):
        for name, m in modules.items():
            start = time.perf_counter()
            step(m, x)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, gatedrnn CPU kernels "
          f"{gatedrnn.cpu_capability()}")
    for ours_cls, nn_cls in PAIRS:
        for T, N, I, H in SHAPES:
            ours, ref = ours_cls(I, H), nn_cls(I, H)
            ref.load_state_dict(ours.state_dict())
            modules = {"gatedrnn": ours, "torch.nn": ref}
            x = torch.randn(T, N, I, requires_grad=True)
            first = median_ms(first_order, modules, x)
            penalty = median_ms(gradient_penalty, modules, x)
            print(f"{nn_cls.__name__} {(T, N, I, H)}: first order {first['gatedrnn']:.2f} ms "
                  f"(torch.nn {first['torch.nn']:.2f}); gradient penalty "
                  f"{penalty['gatedrnn']:.2f} ms (torch.nn {penalty['torch.nn']:.2f}): "
                  f"{penalty['gatedrnn'] / penalty['torch.nn']:.2f}x torch.nn's, "
                  f"{penalty['gatedrnn'] / first['gatedrnn']:.1f}x our first order")


if __name__ == "__main__":
    main()
