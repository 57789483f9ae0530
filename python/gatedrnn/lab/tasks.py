"""The task the lab trains on: the adding problem (Hochreiter & Schmidhuber 1997).

Each sequence has T steps of two input channels:
  channel 0  a value drawn uniformly from [0, 1) at every step,
  channel 1  a marker: 1 at exactly two steps, 0 elsewhere.
The target is the sum of the two marked values, read out after the last step.

Placement rule (the one the tests check): the first marker is at a step drawn uniformly from
the first half, [0, T // 2), the second at a step drawn uniformly from the second half,
[T // 2, T). So the first marked value has to be carried for at least T - T // 2 steps and
up to T - 1, the dependency the task is about.

A model that ignores the input and predicts the target's mean, 1, scores the target's
variance: the sum of two independent U(0, 1) has variance 2 / 12 = 1/6 ~ 0.167, the
baseline MSE (BASELINE_MSE); a model has learned the task when its MSE is well under it
(the lab's threshold is 0.01, SOLVED_MSE).
"""
from typing import Optional, Tuple

import torch

BASELINE_MSE = 1.0 / 6.0
SOLVED_MSE = 0.01


def adding_problem(T: int, batch: int, generator: Optional[torch.Generator] = None,
                   dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch of the adding problem: (x [T, batch, 2], y [batch]), drawn from `generator`
    (torch's default generator if None). See the module docstring for the placement rule."""
    if T < 2:
        raise ValueError(f"adding_problem: T must be at least 2 (a marker in each half), got {T}")
    if batch < 1:
        raise ValueError(f"adding_problem: batch must be at least 1, got {batch}")
    half = T // 2
    values = torch.rand(T, batch, generator=generator, dtype=dtype)
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, T, (batch,), generator=generator)
    markers = torch.zeros(T, batch, dtype=dtype)
    columns = torch.arange(batch)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    target = values[first, columns] + values[second, columns]
    return torch.stack([values, markers], dim=-1), target
