"""The vanishing-gradient lab: measures how far gradients reach back through time in each of
gatedrnn's cells, and what that does to learning a long dependency.

    python -m gatedrnn.lab                  # default: ~5 min on 2 cores: T = 50, 100, 200, 3 seeds
    python -m gatedrnn.lab --quick          # CI: ~15 s, T = 20, 40, 300 steps, 1 seed
    python -m gatedrnn.lab --long           # the default plus T = 400 (about twice as long)
    python -m gatedrnn.lab --out DIR --seeds K

It writes DIR/report.md (default DIR: lab-report/) with three sections, each ending in
claims whose verdicts are computed from the measured numbers:
  1. gradient flow: ||dL/dh_t|| against the distance from the loss, from gatedrnn's
     gradient-norm monitor, at init and after training, with a fitted decay per step, for
     RNN-tanh (default and orthogonal init), RNN-ReLU (default and identity init), LSTM
     (with and without forget bias 1), GRU and LayerNormLSTM (figure gradient_flow.png);
  2. the adding problem (Hochreiter & Schmidhuber 1997) at each length: test MSE and steps
     to MSE < 0.01 over the seeds (adding_mse.png);
  3. remedies, one change at a time, on the same task and budget: initialization,
     gradient clipping, forget-gate bias, residual connections, attention (remedies.png);
and results.json, the per-run numbers. Runs are seeded: a rerun gives the same numbers
(the time it takes varies).

Pieces, for use on their own: tasks.adding_problem, flow.gradient_flow / fit_decay,
models.AddingModel, training.train.
"""
import argparse
import os
import sys
import time

import torch

from .flow import fit_decay, gradient_flow
from .tasks import BASELINE_MSE, SOLVED_MSE, adding_problem

__all__ = ["adding_problem", "gradient_flow", "fit_decay", "BASELINE_MSE", "SOLVED_MSE",
           "main", "run"]


def run(out: str = "lab-report", quick: bool = False, long: bool = False, seeds=None,
        command: str = "python -m gatedrnn.lab", progress: bool = True, stream=None,
        threads: int = 1):
    """Runs the lab and writes its report into `out`; returns (paths, elapsed seconds).

    threads: torch's intra-op threads while it runs (restored after). One by default: at the
    lab's sizes (hidden 32, batch 32) a second thread gains little, and on a busy machine the
    kernels' per-step synchronization of two threads made steps up to 10x slower. The
    numbers do not depend on it (the kernels are bitwise reproducible across thread counts);
    the time does."""
    from . import experiments, report
    report.pyplot()  # fail before training, not after, if matplotlib is missing
    started = time.perf_counter()
    s = experiments.settings(quick=quick, long=long, seeds=seeds)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    bar = None
    try:
        if progress:
            total = sum(experiments.cost(c, T, s.budgets[T]) for c, T, _ in experiments.jobs(s))
            bar = experiments.Progress(total, stream)
        try:
            results = experiments.run_all(s, bar)
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - started
        paths = report.write(s, results, out, elapsed, command)
    finally:
        torch.set_num_threads(previous_threads)
    return paths, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gatedrnn.lab",
        description="The vanishing-gradient lab: gradient flow through time in gatedrnn's "
                    "cells, the adding problem, and remedies one change at a time. Writes "
                    "OUT/report.md, PNG figures and results.json. Default: T = 50, 100, 200, "
                    "3 seeds, about 5 minutes on 2 cores (the whole run must stay under 10).")
    parser.add_argument("--quick", action="store_true",
                        help="a small version for CI (T = 20, 40, 300 steps, one seed; about "
                             "15 s)")
    parser.add_argument("--long", action="store_true",
                        help="add T = 400 to the adding problem (about twice the default's time)")
    parser.add_argument("--out", default="lab-report",
                        help="the report's folder (default: lab-report/)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per configuration (default 3; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads while it runs (default 1; the numbers do not "
                             "depend on it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.quick and args.long:
        parser.error("--quick and --long exclude each other")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    command = " ".join(["python -m gatedrnn.lab"] + (sys.argv[1:] if argv is None else argv))
    try:
        paths, elapsed = run(args.out, args.quick, args.long, args.seeds, command,
                             progress=not args.no_progress, threads=args.threads)
    except ImportError as error:  # matplotlib missing: say what to install
        print(f"gatedrnn.lab: {error}", file=sys.stderr)
        return 1
    print(f"report: {os.path.abspath(paths['report'])}")
    print(f"total elapsed: {elapsed:.1f} s ({elapsed / 60:.1f} min)")
    return 0
