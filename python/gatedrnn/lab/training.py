"""Training one model on the adding problem, with the measurements the lab reports."""
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from .flow import fit_decay, gradient_flow
from .models import AddingModel, Config
from .tasks import SOLVED_MSE, adding_problem

# A run stops at the first evaluation with test MSE below this, a tenth of SOLVED_MSE: the
# task is learned, and the budget goes to the runs still learning. Comparisons of test MSEs
# (stats.compare_mse) treat values below it as equal to it.
STOP_MSE = SOLVED_MSE / 10


@dataclass(frozen=True)
class Budget:
    """What every run at one sequence length gets: the same data, steps and optimizer."""
    steps: int            # training steps (Adam updates), at most
    eval_every: int       # test MSE every this many steps (and at step 0)
    hidden: int = 32
    batch: int = 32
    lr: float = 5e-3
    stop_mse: float = STOP_MSE  # stop once the test MSE is below it (0: never)
    test_size: int = 500  # the held-out batch, the same for every run at a given T
    probe_size: int = 64  # the first sequences of it: the gradient-flow batch


@dataclass
class Run:
    """One training run: the test-MSE curve, the steps it took to get under SOLVED_MSE and
    the gradient flow (||dL/dh_t|| per step, its fitted decay) at init and at the end."""
    config: Config
    T: int
    seed: int
    eval_steps: List[int] = field(default_factory=list)
    test_mse: List[float] = field(default_factory=list)
    solved_at: Optional[int] = None      # first evaluated step with test MSE < SOLVED_MSE
    stopped_at: Optional[int] = None     # the step it stopped at, test MSE < budget.stop_mse
    diverged_at: Optional[int] = None    # step whose loss was not finite (training stopped)
    flow_init: Optional[torch.Tensor] = None
    flow_final: Optional[torch.Tensor] = None
    decay_init: float = math.nan
    decay_final: float = math.nan
    seconds: float = 0.0

    @property
    def final_mse(self) -> float:
        """The last evaluation's test MSE: at the end of the budget, or where the run stopped
    (below budget.stop_mse); nan if training diverged."""
        return math.nan if self.diverged_at is not None else self.test_mse[-1]


def _flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has no getter)."""
    return torch.tensor([1e-40], dtype=torch.float32).mul(1.0).item() == 0.0


@contextlib.contextmanager
def flushed_denormals():
    """Training steps with denormal floats flushed to zero, the setting restored after.

    A vanishing float32 gradient passes through denormal numbers, whose arithmetic is slow
    on x86: the tanh RNN's training step at T = 200 took 5x as long. Flushing them changes
    only values below ~1e-38 (the test MSEs of a run came out the same to the last digit).
    The gradient-flow measurements run outside, with denormals kept: there the squares
    summed into a norm reach that range already at norms of ~1e-19, which flushing would
    turn into zeros."""
    before = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def test_set(T: int, budget: Budget):
    """The held-out batch at length T: fixed by T alone, so every run is scored on it."""
    return adding_problem(T, budget.test_size, torch.Generator().manual_seed(1_000_003 * T + 17))


def train(config: Config, T: int, seed: int, budget: Budget,
          progress: Optional[Callable[[int], None]] = None) -> Run:
    """Trains AddingModel(config) on fresh adding-problem batches of length T for
    budget.steps Adam steps (fewer if the test MSE gets below budget.stop_mse), seeded by
    `seed` (weights and data), evaluating the test MSE every budget.eval_every steps.
    progress(steps) is called after each block of steps (and with the steps skipped by an
    early stop)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = AddingModel(config, budget.hidden)
    data = torch.Generator().manual_seed(7919 * seed + T)
    test_x, test_y = test_set(T, budget)
    probe_x, probe_y = test_x[:, :budget.probe_size], test_y[:budget.probe_size]
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    run = Run(config, T, seed)
    run.flow_init = gradient_flow(model, probe_x, probe_y)

    def evaluate(step):
        with torch.no_grad():
            mse = float(torch.mean((model(test_x) - test_y) ** 2))
        run.eval_steps.append(step)
        run.test_mse.append(mse)
        if run.solved_at is None and mse < SOLVED_MSE:
            run.solved_at = step
        return mse < budget.stop_mse

    evaluate(0)
    with flushed_denormals():
        done = 0
        for step in range(1, budget.steps + 1):
            x, y = adding_problem(T, budget.batch, data)
            loss = torch.mean((model(x) - y) ** 2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(float(loss.detach())):
                run.diverged_at = step
                break
            if config.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            if step % budget.eval_every == 0 or step == budget.steps:
                stop = evaluate(step)
                if progress is not None:
                    progress(step - done)
                done = step
                if stop:
                    run.stopped_at = step
                    break
        if progress is not None and done < budget.steps:
            progress(budget.steps - done)
    run.flow_final = gradient_flow(model, probe_x, probe_y)
    run.decay_init = fit_decay(run.flow_init)["decay"]
    run.decay_final = fit_decay(run.flow_final)["decay"]
    run.seconds = time.perf_counter() - started
    return run
