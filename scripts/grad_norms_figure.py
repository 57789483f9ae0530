"""The README's gradient-norm monitor figure: ||dL/dh_t|| against the distance from the loss
for a tanh RNN and an LSTM at initialization, recorded by gatedrnn.grad_norms().

    python scripts/grad_norms_figure.py [--out docs/grad-norms.png]

A loss on the last step's output only, so the gradient reaching step t has come back
through T - 1 - t steps; seeded, float32, CPU.
"""
import argparse

import torch

import gatedrnn


def step_norms(module, T=100, N=32, I=32, seed=0):
    """||dL/dh_t|| for t = 0..T-1 of module's (single) layer, the loss being the sum of
    the last step's output."""
    torch.manual_seed(seed)
    x = torch.randn(T, N, I)
    out, _ = module(x)
    with gatedrnn.grad_norms() as rec:
        out[-1].sum().backward()
    return rec[module]["h"][0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/grad-norms.png")
    args = parser.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    modules = {"RNN (tanh)": gatedrnn.RNN(32, 64), "LSTM": gatedrnn.LSTM(32, 64),
               "LSTM, forget bias 1": gatedrnn.LSTM(32, 64, init="forget_bias")}
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=120)
    for name, module in modules.items():
        norms = step_norms(module)
        distance = torch.arange(norms.numel() - 1, -1, -1)
        ax.semilogy(distance, norms, label=name)
        print(f"{name}: ||dL/dh|| at distance 0: {norms[-1]:.3g}, 10: {norms[-11]:.3g}, "
              f"50: {norms[-51]:.3g}, 99: {norms[0]:.3g}")
    ax.set_xlabel("steps back from the loss (T - 1 - t)")
    ax.set_ylabel("||dL/dh_t||")
    ax.set_title("gatedrnn.grad_norms() at initialization, T = 100, H = 64")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
