"""Gradient flow through time: how much of the loss's gradient reaches each step's state.

gradient_flow(model, x, y) runs one forward and backward of the adding-problem loss (the MSE
of the prediction made from the LAST step's output) inside gatedrnn.grad_norms() and returns
the monitor's ||dL/dh_t||_2 (over batch and features) for every step t. As the loss sees
only the last step, the gradient at step t has been carried back T - 1 - t steps through
the recurrence: distance(t) = T - 1 - t. A curve that falls by a constant factor per step is
a straight line on a log scale; fit_decay measures that factor.
"""
import math
from typing import Dict

import torch

from ..monitor import grad_norms

# Norms at or below this (or not finite) are left out of the fit: a float32 gradient that
# vanished underflows to 0 (or to denormals) and its log says nothing about the decay rate.
# Plots clamp them to it, so a curve that reached 0 shows as a drop to the floor.
FLOOR = 1e-30


def distances(T: int) -> torch.Tensor:
    """Steps from each t to the loss at the last step: [T - 1, ..., 1, 0]."""
    return torch.arange(T - 1, -1, -1, dtype=torch.float64)


def gradient_flow(model, x: torch.Tensor, y: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """||dL/dh_t||_2 for t = 0..T-1 (float64 [T], time order) of `model.rnn`'s layer `layer`
    (forward direction), where L = mean((model(x) - y)^2) and model(x) reads the last step.

    The parameters' .grad are left as they were (the backward's own are discarded)."""
    saved = {p: (None if p.grad is None else p.grad.clone()) for p in model.parameters()}
    try:
        with grad_norms() as record:
            loss = torch.mean((model(x) - y) ** 2)
            loss.backward()
        h = record[model.rnn]["h"]
    finally:
        for p, g in saved.items():
            p.grad = g
    directions = 2 if model.rnn.bidirectional else 1
    return h[layer * directions].clone()


def fit_decay(norms: torch.Tensor) -> Dict[str, float]:
    """Fits log ||dL/dh_t|| = a + distance * log(decay) by least squares; returns
        decay      exp(slope): the factor the gradient norm is multiplied by per step back
                   (< 1 vanishing, > 1 exploding), nan if fewer than 2 points are usable;
        span       ||g|| at distance T - 1 / ||g|| at distance 0: the attenuation over the
                   whole sequence (the far norm clamped to FLOOR, as in the plots);
        used       how many steps entered the fit;
        floored    how many were left out (zero, below FLOOR, or not finite).
    `norms` is in time order, as gradient_flow gives (distance 0 is the last entry)."""
    norms = norms.to(torch.float64)
    d = distances(norms.numel())
    ok = torch.isfinite(norms) & (norms > FLOOR)
    used = int(ok.sum())
    result = {"used": used, "floored": norms.numel() - used, "decay": math.nan,
              "span": math.nan}
    if used >= 2:
        xs, ys = d[ok], torch.log(norms[ok])
        xm, ym = xs.mean(), ys.mean()
        var = ((xs - xm) ** 2).sum()
        if var > 0:
            slope = float(((xs - xm) * (ys - ym)).sum() / var)
            result["decay"] = math.exp(slope)
    near = float(norms[-1])
    if math.isfinite(near) and near > 0:
        result["span"] = float(clamp_for_plot(norms[:1])[0]) / near
    return result


def clamp_for_plot(norms: torch.Tensor, floor: float = FLOOR) -> torch.Tensor:
    """The norms with zeros, underflows and NaN set to `floor`, +inf to 1e300 (log plots)."""
    norms = torch.nan_to_num(norms.to(torch.float64), nan=0.0, posinf=1e300, neginf=0.0)
    return norms.clamp_min(floor)
