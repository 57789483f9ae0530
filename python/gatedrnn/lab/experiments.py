"""What the lab runs: the cells, the remedies, the budgets of each mode, and a runner that
trains each (config, T, seed) once, however many sections use it.

Every number in the report comes from these runs:
  gradient flow  FLOW_CELLS' runs at the flow length, their ||dL/dh_t|| per step at init
                 and after training (training.Run.flow_init / flow_final);
  adding table   ADDING_CELLS at every length, every seed;
  remedies       REMEDIES at the remedies' length, each a baseline and the same model with
                 one change, on the same data, steps and seeds.
"""
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .models import Config
from .training import Budget, Run, train

RNN_TANH = Config("RNN-tanh", "rnn_tanh")
RNN_TANH_ORTHOGONAL = Config("RNN-tanh orthogonal", "rnn_tanh", init="orthogonal")
RNN_RELU = Config("RNN-ReLU", "rnn_relu")
RNN_RELU_IDENTITY = Config("RNN-ReLU identity", "rnn_relu", init="identity")
LSTM = Config("LSTM", "lstm")
LSTM_FORGET_BIAS = Config("LSTM forget bias 1", "lstm", init="forget_bias",
                          init_options=(("value", 1.0),))
GRU = Config("GRU", "gru")
LAYER_NORM_LSTM = Config("LayerNormLSTM", "ln_lstm")

# The adding-problem table's rows, and the gradient-flow figure's lines.
ADDING_CELLS = (RNN_TANH, RNN_RELU_IDENTITY, LSTM, LSTM_FORGET_BIAS, GRU, LAYER_NORM_LSTM)
# RNN-ReLU with torch's default init too: the claim that ReLU alone keeps gradients.
FLOW_CELLS = (RNN_TANH, RNN_TANH_ORTHOGONAL, RNN_RELU, RNN_RELU_IDENTITY, LSTM,
              LSTM_FORGET_BIAS, GRU, LAYER_NORM_LSTM)

# recurrent_grad_clip's bound. The loss is a batch mean, so the gates' gradients are small
# (at init, an LSTM at T = 50: at most ~4e-3, at the last step); a bound of 1 would never act.
GATE_CLIP = 1e-3
NORM_CLIP = 1.0


@dataclass(frozen=True)
class Remedy:
    """One change to one model: `baseline` and `remedied` differ in `change` only."""
    group: str
    change: str
    baseline: Config
    remedied: Config


STACK = Config("3-layer RNN-tanh", "rnn_tanh", layers=3, input_proj=True)

REMEDIES = (
    Remedy("initialization", "orthogonal w_hh (RNN-tanh)", RNN_TANH, RNN_TANH_ORTHOGONAL),
    Remedy("initialization", "identity w_hh, IRNN (RNN-ReLU)", RNN_RELU, RNN_RELU_IDENTITY),
    Remedy("gradient clipping", f"clip_grad_norm_({NORM_CLIP:g}) (RNN-tanh)", RNN_TANH,
           Config("RNN-tanh clip_grad_norm_", "rnn_tanh", clip_norm=NORM_CLIP)),
    Remedy("gradient clipping", f"clip_grad_norm_({NORM_CLIP:g}) (RNN-ReLU identity)",
           RNN_RELU_IDENTITY, Config("RNN-ReLU identity clip_grad_norm_", "rnn_relu",
                                     init="identity", clip_norm=NORM_CLIP)),
    Remedy("gradient clipping", f"recurrent_grad_clip={GATE_CLIP:g} (LSTM)", LSTM,
           Config("LSTM recurrent_grad_clip", "lstm", recurrent_grad_clip=GATE_CLIP)),
    Remedy("gradient clipping", f"recurrent_grad_clip={GATE_CLIP:g} (GRU)", GRU,
           Config("GRU recurrent_grad_clip", "gru", recurrent_grad_clip=GATE_CLIP)),
    Remedy("forget-gate bias", "forget bias 1 (LSTM)", LSTM, LSTM_FORGET_BIAS),
    Remedy("residual connections", "residual=True (3-layer RNN-tanh)", STACK,
           Config("3-layer RNN-tanh residual", "rnn_tanh", layers=3, input_proj=True,
                  residual=True)),
    Remedy("attention", "attention over the outputs (RNN-tanh)", RNN_TANH,
           Config("RNN-tanh + attention", "rnn_tanh", attention=True)),
)


@dataclass(frozen=True)
class Settings:
    """A mode of the lab: the lengths, each one's budget, the seeds, the remedies' length and
    the gradient-flow section's."""
    mode: str
    lengths: Tuple[int, ...]
    budgets: Dict[int, Budget] = field(hash=False)
    seeds: Tuple[int, ...]
    remedy_length: int
    flow_length: int


def settings(quick: bool = False, long: bool = False, seeds: Optional[int] = None) -> Settings:
    """The documented modes (python -m gatedrnn.lab --help): default, --quick, --long.

    Default: T = 50, 100 (1500 steps at most) and 200 (1000), 3 seeds, the remedies at
    T = 50 (where the LSTM learns the task within the budget and the tanh RNN does not),
    the gradient flow at T = 100. --long adds T = 400 (1000 steps). --quick: T = 20 and 40,
    300 steps, one seed."""
    if quick:
        lengths = (20, 40)
        budgets = {T: Budget(steps=300, eval_every=50, test_size=200) for T in lengths}
        remedy_length, flow_length, default_seeds, mode = 20, 40, 1, "quick"
    else:
        lengths = (50, 100, 200)
        budgets = {50: Budget(steps=1500, eval_every=50),
                   100: Budget(steps=1500, eval_every=50),
                   200: Budget(steps=1000, eval_every=50)}
        remedy_length, flow_length, default_seeds, mode = 50, 100, 3, "default"
        if long:
            lengths += (400,)
            budgets[400] = Budget(steps=1000, eval_every=50)
            mode = "long"
    count = default_seeds if seeds is None else seeds
    if count < 1:
        raise ValueError(f"--seeds must be at least 1, got {count}")
    return Settings(mode, lengths, budgets, tuple(range(count)), remedy_length, flow_length)


def jobs(s: Settings) -> List[Tuple[Config, int, int]]:
    """Every (config, T, seed) the report needs, each once, in the order they run."""
    wanted: List[Tuple[Config, int, int]] = []
    for T in s.lengths:
        for config in ADDING_CELLS:
            wanted += [(config, T, seed) for seed in s.seeds]
    for config in FLOW_CELLS:
        wanted += [(config, s.flow_length, seed) for seed in s.seeds]
    for remedy in REMEDIES:
        for config in (remedy.baseline, remedy.remedied):
            wanted += [(config, s.remedy_length, seed) for seed in s.seeds]
    return list(dict.fromkeys(wanted))


# Rough cost of a training step per time step, relative to the RNN's (measured here: the
# progress bar's estimate of what is left, nothing else depends on it).
_COST = {"rnn_tanh": 1.0, "rnn_relu": 1.0, "lstm": 2.5, "gru": 2.2, "ln_lstm": 5.0}


def cost(config: Config, T: int, budget: Budget) -> float:
    """The progress bar's weight of one run."""
    per_step = _COST[config.cell] * config.layers * (2.0 if config.recurrent_grad_clip else 1.0)
    return budget.steps * T * per_step


class Progress:
    """A text progress bar on stderr: share done, elapsed, estimated time left, the run."""

    def __init__(self, total: float, stream=None, width: int = 30):
        self.total, self.done, self.width = max(total, 1e-9), 0.0, width
        self.stream = sys.stderr if stream is None else stream
        self.started = time.perf_counter()
        self.label = ""

    def advance(self, amount: float) -> None:
        self.done = min(self.total, self.done + amount)
        self.draw()

    def draw(self) -> None:
        share = self.done / self.total
        elapsed = time.perf_counter() - self.started
        left = elapsed * (1 - share) / share if share > 0 else float("nan")
        bar = "#" * int(round(share * self.width))
        left_text = f"~{_clock(left)} left" if share > 0 else "estimating"
        self.stream.write(f"\r[{bar:<{self.width}}] {100 * share:5.1f}% {_clock(elapsed)} "
                          f"elapsed, {left_text}  {self.label:<40.40}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_all(s: Settings, progress: Optional[Progress] = None,
            log: Optional[Callable[[str], None]] = None) -> Dict[Tuple[Config, int, int], Run]:
    """Trains every job of `s` once; returns {(config, T, seed): Run}."""
    results: Dict[Tuple[Config, int, int], Run] = {}
    for config, T, seed in jobs(s):
        budget = s.budgets[T]
        weight = cost(config, T, budget) / budget.steps
        if progress is not None:
            progress.label = f"{config.label} T={T} seed {seed}"
            progress.draw()
        advance = None if progress is None else (lambda steps: progress.advance(steps * weight))
        results[(config, T, seed)] = train(config, T, seed, budget, advance)
        if log is not None:
            run = results[(config, T, seed)]
            log(f"{config.label} T={T} seed {seed}: test MSE {run.final_mse:.4f}, "
                f"{run.seconds:.1f} s")
    return results


def runs_of(results, config: Config, T: int, seeds: Sequence[int]) -> List[Run]:
    return [results[(config, T, seed)] for seed in seeds]


def environment() -> Dict[str, str]:
    """What the numbers were measured on."""
    import platform
    from .. import cpu_capability
    return {"torch": torch.__version__, "threads": str(torch.get_num_threads()),
            "cpu capability": cpu_capability(), "machine": platform.machine(),
            "python": platform.python_version()}
