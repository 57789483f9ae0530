"""The lab's report: Markdown tables, the claims with their computed verdicts, and figures.

Nothing here is a hard-coded conclusion: every number is read from the runs, and every
verdict is computed from those numbers by the rules in stats.py.
"""
import json
import math
import os
from typing import Dict, List, Sequence, Tuple

import torch

from . import experiments as E
from .flow import FLOOR, clamp_for_plot, distances, fit_decay
from .models import Config
from .stats import (SPAN_KEPT, all_any, compare_decay, compare_mse, compare_steps, fmt,
                    fmt_spread, geomean, mean)
from .tasks import BASELINE_MSE, SOLVED_MSE
from .training import Run

FIGURES = {"flow": "gradient_flow.png", "adding": "adding_mse.png",
           "remedies": "remedies.png"}


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a clear error if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the vanishing-gradient lab draws its figures with matplotlib, "
                          "which is not installed: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --- reading the runs ---

class View:
    """The runs of one lab, by (config, T): lists over the seeds."""

    def __init__(self, settings: E.Settings, results: Dict[Tuple[Config, int, int], Run]):
        self.s, self.results = settings, results

    def runs(self, config: Config, T: int) -> List[Run]:
        return E.runs_of(self.results, config, T, self.s.seeds)

    def mse(self, config, T):
        return [r.final_mse for r in self.runs(config, T)]

    def decay(self, config, T, when="init"):
        return [getattr(r, f"decay_{when}") for r in self.runs(config, T)]

    def span(self, config, T, when="init"):
        return [fit_decay(getattr(r, f"flow_{when}"))["span"] for r in self.runs(config, T)]

    def floored(self, config, T, when="init"):
        return sum(fit_decay(getattr(r, f"flow_{when}"))["floored"]
                   for r in self.runs(config, T))

    def solved(self, config, T):
        return [r.solved_at for r in self.runs(config, T)]

    def learning(self, a: Config, b: Config, T: int) -> Tuple[str, str]:
        """How A learned the task at T against B: compare_mse on the test MSEs; where that
        tells them apart no more than the spread and both solved in every seed, the steps
        to solve (compare_steps). Returns (outcome, the numbers compared, as text)."""
        floor = self.s.budgets[T].stop_mse
        outcome = compare_mse(self.mse(a, T), self.mse(b, T), floor)
        text = f"test MSE {fmt(mean(self.mse(a, T)), 3)} vs {fmt(mean(self.mse(b, T)), 3)}"
        sa, sb = self.solved(a, T), self.solved(b, T)
        if all(v is not None for v in sa + sb):
            text += f", steps to < {SOLVED_MSE} {mean(sa):.0f} vs {mean(sb):.0f}"
            if outcome == "same":
                outcome = compare_steps(sa, sb)
        return outcome, text


def steps_text(solved: Sequence, budget_steps: int) -> str:
    reached = [s for s in solved if s is not None]
    count = f"{len(reached)}/{len(solved)}"
    if not reached:
        return f"not reached in {budget_steps} ({count})"
    return f"{mean(reached):.0f} ({count})"


def mse_text(values: Sequence[float]) -> str:
    diverged = sum(1 for v in values if not math.isfinite(v))
    text = fmt_spread(values)
    return text + (f", {diverged} diverged" if diverged else "")


# --- figures ---

def _flow_curve(runs: List[Run], when: str) -> torch.Tensor:
    """Geometric mean over the seeds of ||dL/dh_t|| (floored), in time order."""
    logs = torch.stack([clamp_for_plot(getattr(r, f"flow_{when}")).log() for r in runs])
    return logs.mean(0).exp()


def figure_flow(view: View, path: str) -> None:
    plt = pyplot()
    T = view.s.flow_length
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2), sharey=True)
    d = distances(T).numpy()
    lowest = 1.0
    for ax, when, title in ((axes[0], "init", "at initialization"),
                            (axes[1], "final", "after training")):
        for config in E.FLOW_CELLS:
            curve = _flow_curve(view.runs(config, T), when)
            lowest = min(lowest, float(curve.min()))
            decay = mean(view.decay(config, T, when))
            ax.plot(d, curve.numpy(), label=f"{config.label} ({fmt(decay, 3)})")
        ax.set_yscale("log")
        ax.set_xlabel("distance from the loss (steps back, T - 1 - t)")
        ax.set_title(f"{title}, T = {T}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, title="cell (fitted decay per step)", title_fontsize=8,
                  loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    if lowest <= FLOOR * 1.0001:
        for ax in axes:
            ax.axhline(FLOOR, color="gray", lw=0.8, ls=":")
    axes[0].set_ylabel("||dL/dh_t||  (geometric mean over seeds)")
    fig.suptitle("Gradient flow through time: the adding problem's loss on the last step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_adding(view: View, path: str) -> None:
    plt = pyplot()
    lengths = view.s.lengths
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.6 * len(lengths), 4.2), sharey=True)
    axes = list(axes) if len(lengths) > 1 else [axes]
    for ax, T in zip(axes, lengths):
        for config in E.ADDING_CELLS:
            runs = view.runs(config, T)
            steps = max((r.eval_steps for r in runs), key=len)
            # A run that stopped early (solved) keeps its last MSE; a diverged one has none.
            curves = [r.test_mse + [r.final_mse] * (len(steps) - len(r.test_mse)) for r in runs]
            columns = list(zip(*curves))
            ax.plot(steps, [mean(c) for c in columns], label=config.label)
            if len(runs) > 1:
                lo = [min((v for v in c if math.isfinite(v)), default=math.nan) for c in columns]
                hi = [max((v for v in c if math.isfinite(v)), default=math.nan) for c in columns]
                ax.fill_between(steps, lo, hi, alpha=0.12)
        ax.axhline(BASELINE_MSE, color="gray", ls="--", lw=0.8, label="predict 1 (1/6)")
        ax.axhline(SOLVED_MSE, color="black", ls=":", lw=0.8, label=f"solved ({SOLVED_MSE})")
        ax.set_yscale("log")
        ax.set_title(f"adding problem, T = {T}")
        ax.set_xlabel("training step")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("test MSE (mean over seeds, band: min-max)")
    fig.text(0.5, 0.005, "a run that stopped early (test MSE < "
             f"{view.s.budgets[lengths[0]].stop_mse:g}) counts at its last MSE; a curve ends "
             "when every seed has stopped", ha="center", fontsize=8)
    axes[-1].legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_remedies(view: View, path: str) -> None:
    plt = pyplot()
    T = view.s.remedy_length
    labels, base, fixed, base_err, fixed_err = [], [], [], [], []

    def bar(values):
        values = [v if math.isfinite(v) else BASELINE_MSE for v in values]
        m = mean(values)
        return m, (m - min(values), max(values) - m)

    for remedy in E.REMEDIES:
        labels.append(remedy.change)
        m, e = bar(view.mse(remedy.baseline, T))
        base.append(m)
        base_err.append(e)
        m, e = bar(view.mse(remedy.remedied, T))
        fixed.append(m)
        fixed_err.append(e)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(labels) + 2.0))
    y = torch.arange(len(labels)).numpy()
    ax.barh(y + 0.2, base, height=0.4, xerr=list(zip(*base_err)), label="without",
            color="#bbbbbb")
    ax.barh(y - 0.2, fixed, height=0.4, xerr=list(zip(*fixed_err)), label="with the change",
            color="#3b75af")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(BASELINE_MSE, color="gray", ls="--", lw=0.8)
    ax.axvline(SOLVED_MSE, color="black", ls=":", lw=0.8)
    ax.set_xlabel(f"test MSE after training, T = {T} (mean over seeds, bars: min-max; "
                  f"dashed: predict 1, dotted: {SOLVED_MSE})", fontsize=8)
    ax.set_title("Remedies, one change at a time")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- claims ---

VERDICT = {True: "**supported**", False: "**refuted**", None: "**not clear**"}


def _claim(text: str, measured: str, verdict) -> str:
    return f"- claim: {text} — measured {measured}: {VERDICT[verdict]}"


def _better(outcome: str):
    """compare()'s outcome as a claim that A is better than B."""
    return {"better": True, "worse": False}.get(outcome)


def _not_worse(outcome: str):
    """compare()'s outcome as a claim that A is at least as good as B."""
    return {"better": True, "same": True, "worse": False}.get(outcome)


def _as_well_as(view: View, a: Config, b: Config, T: int):
    """The claim "A learns the task as well as B" at T: (verdict, measured text). Not clear
    when neither solved it in any seed: then both failed, and "as well" says nothing."""
    outcome, text = view.learning(a, b, T)
    if all(s is None for s in view.solved(a, T) + view.solved(b, T)):
        return None, text + ", neither got under " + str(SOLVED_MSE)
    return _not_worse(outcome), text


def flow_claims(view: View) -> List[str]:
    T = view.s.flow_length
    d = lambda c, w="init": fmt(mean(view.decay(c, T, w)), 3)
    sp = lambda c, w="init": fmt(geomean(view.span(c, T, w)), 2)
    kept = lambda c, w="init": all_any([s >= SPAN_KEPT for s in view.span(c, T, w)])
    lines = [
        _claim(f"gradients vanish over the sequence in a tanh RNN (at init, T = {T})",
               f"decay per step {d(E.RNN_TANH)}, ‖g‖ at distance {T - 1} / at distance 0 "
               f"= {sp(E.RNN_TANH)} (vanished: below {SPAN_KEPT})",
               None if kept(E.RNN_TANH) is None else not kept(E.RNN_TANH)),
    ]
    for when, phrase in (("init", "at init"), ("final", "after training")):
        lines.append(_claim(
            f"the LSTM keeps gradients over long spans better than the tanh RNN ({phrase})",
            f"decay per step {d(E.LSTM, when)} vs RNN-tanh {d(E.RNN_TANH, when)}",
            _better(compare_decay(view.decay(E.LSTM, T, when), view.decay(E.RNN_TANH, T, when)))))
    lines.append(_claim(
        "a forget-gate bias of 1 lets the LSTM's gradient reach further back (at init)",
        f"decay per step {d(E.LSTM_FORGET_BIAS)} with it vs {d(E.LSTM)} without",
        _better(compare_decay(view.decay(E.LSTM_FORGET_BIAS, T), view.decay(E.LSTM, T)))))
    lines.append(_claim(
        "orthogonal recurrent weights stop the gradient from vanishing in a tanh RNN (at init)",
        f"decay per step {d(E.RNN_TANH_ORTHOGONAL)} (default init {d(E.RNN_TANH)}), ‖g‖ at "
        f"distance {T - 1} / at 0 = {sp(E.RNN_TANH_ORTHOGONAL)} (kept: at least {SPAN_KEPT})",
        kept(E.RNN_TANH_ORTHOGONAL)))
    lines.append(_claim(
        "ReLU alone (torch's default init) fixes vanishing gradients (at init)",
        f"RNN-ReLU decay per step {d(E.RNN_RELU)} vs RNN-tanh {d(E.RNN_TANH)}, ‖g‖ at "
        f"distance {T - 1} / at 0 = {sp(E.RNN_RELU)} (kept: at least {SPAN_KEPT})",
        kept(E.RNN_RELU)))
    lines.append(_claim(
        "ReLU with identity recurrent weights (IRNN) keeps the gradient over the sequence "
        "(at init)",
        f"decay per step {d(E.RNN_RELU_IDENTITY)}, ‖g‖ at distance {T - 1} / at 0 = "
        f"{sp(E.RNN_RELU_IDENTITY)}", kept(E.RNN_RELU_IDENTITY)))
    lines.append(_claim(
        "training lengthens the LSTM's gradient flow",
        f"decay per step {d(E.LSTM, 'final')} after training vs {d(E.LSTM)} at init",
        _better(compare_decay(view.decay(E.LSTM, T, "final"), view.decay(E.LSTM, T)))))
    return lines


def adding_claims(view: View) -> List[str]:
    longest = view.s.lengths[-1]
    R = view.s.remedy_length
    lines = []
    for T in sorted({R, longest}):
        verdict, text = _as_well_as(view, E.RNN_RELU_IDENTITY, E.LSTM, T)
        lines.append(_claim(
            f"the IRNN (ReLU, identity init) learns the adding problem as well as an LSTM "
            f"(T = {T})", f"IRNN vs LSTM: {text}", verdict))
    verdict, text = _as_well_as(view, E.GRU, E.LSTM, longest)
    lines.append(_claim(f"the GRU learns long dependencies as well as the LSTM (T = {longest})",
                        f"GRU vs LSTM: {text}", verdict))
    for T in view.s.lengths:
        outcome, text = view.learning(E.LAYER_NORM_LSTM, E.LSTM, T)
        lines.append(_claim(f"layer normalization helps the LSTM learn (T = {T})",
                            f"LayerNormLSTM vs LSTM: {text}", _better(outcome)))
    mse = view.mse(E.RNN_TANH, R)
    lines.append(_claim(
        f"the tanh RNN cannot learn the adding problem at T = {R}",
        f"test MSE {fmt(mean(mse), 3)} (predicting 1 scores {fmt(BASELINE_MSE, 3)}; solved "
        f"is < {SOLVED_MSE})", all_any([not (v < SOLVED_MSE) for v in mse])))
    return lines


def remedy_outcome(view: View, remedy: E.Remedy) -> str:
    outcome, _ = view.learning(remedy.remedied, remedy.baseline, view.s.remedy_length)
    return {"better": "helped", "worse": "hurt", "same": "no clear effect",
            "unknown": "unknown"}[outcome]


def remedy_claims(view: View) -> List[str]:
    T = view.s.remedy_length
    lines = []
    for remedy in E.REMEDIES:
        outcome, text = view.learning(remedy.remedied, remedy.baseline, T)
        lines.append(_claim(f"{remedy.change} helps on the adding problem (T = {T})",
                            f"with vs without: {text}", _better(outcome)))
    att = [r for r in E.REMEDIES if r.group == "attention"][0]
    mse = view.mse(att.remedied, T)
    lines.append(_claim(
        f"attention over the outputs solves the adding problem even with a tanh RNN (T = {T})",
        f"test MSE {fmt(mean(mse), 3)} (solved is < {SOLVED_MSE}); decay per step after "
        f"training {fmt(mean(view.decay(att.remedied, T, 'final')), 3)} vs "
        f"{fmt(mean(view.decay(att.baseline, T, 'final')), 3)} without",
        all_any([v < SOLVED_MSE for v in mse])))
    return lines


# --- tables ---

def flow_table(view: View) -> List[str]:
    T = view.s.flow_length
    rows = [f"| cell | decay per step, init | after training | ‖g‖ at distance {T - 1} / at 0, "
            f"init | after training | steps left out of the fit (init / after) |",
            "|---|---|---|---|---|---|"]
    for config in E.FLOW_CELLS:
        rows.append(
            f"| {config.label} | {fmt_spread(view.decay(config, T, 'init'))} | "
            f"{fmt_spread(view.decay(config, T, 'final'))} | "
            f"{fmt(geomean(view.span(config, T, 'init')), 2)} | "
            f"{fmt(geomean(view.span(config, T, 'final')), 2)} | "
            f"{view.floored(config, T, 'init')} / {view.floored(config, T, 'final')} |")
    return rows


def adding_table(view: View) -> List[str]:
    lengths = view.s.lengths
    head = "| cell | " + " | ".join(f"T = {T}: test MSE | steps to < {SOLVED_MSE}"
                                     for T in lengths) + " |"
    rows = [head, "|---|" + "---|---|" * len(lengths)]
    for config in E.ADDING_CELLS:
        cells = []
        for T in lengths:
            cells.append(mse_text(view.mse(config, T)))
            cells.append(steps_text(view.solved(config, T), view.s.budgets[T].steps))
        rows.append(f"| {config.label} | " + " | ".join(cells) + " |")
    return rows


def remedies_table(view: View) -> List[str]:
    T = view.s.remedy_length
    steps = view.s.budgets[T].steps
    rows = ["| remedy | change | test MSE without | with | steps to < 0.01 without | with | "
            "decay per step after training, without | with | outcome |",
            "|---|---|---|---|---|---|---|---|---|"]
    for remedy in E.REMEDIES:
        b, r = remedy.baseline, remedy.remedied
        rows.append(
            f"| {remedy.group} | {remedy.change} | {mse_text(view.mse(b, T))} | "
            f"{mse_text(view.mse(r, T))} | {steps_text(view.solved(b, T), steps)} | "
            f"{steps_text(view.solved(r, T), steps)} | "
            f"{fmt_spread(view.decay(b, T, 'final'))} | {fmt_spread(view.decay(r, T, 'final'))}"
            f" | {remedy_outcome(view, remedy)} |")
    return rows


# --- the report ---

def write(settings: E.Settings, results, out_dir: str, elapsed: float,
          command: str) -> Dict[str, str]:
    """Writes report.md, the figures and results.json into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    view = View(settings, results)
    paths = {key: os.path.join(out_dir, name) for key, name in FIGURES.items()}
    figure_flow(view, paths["flow"])
    figure_adding(view, paths["adding"])
    figure_remedies(view, paths["remedies"])
    paths["report"] = os.path.join(out_dir, "report.md")
    paths["json"] = os.path.join(out_dir, "results.json")
    with open(paths["report"], "w") as f:
        f.write(markdown(view, elapsed, command))
    with open(paths["json"], "w") as f:
        json.dump(summary(view, elapsed), f, indent=1, allow_nan=False)
    return paths


def _budget_lines(s: E.Settings) -> List[str]:
    lines = []
    for T in s.lengths:
        b = s.budgets[T]
        lines.append(f"T = {T}: {b.steps} Adam steps (lr {b.lr}, batch {b.batch}), test MSE on "
                     f"{b.test_size} held-out sequences every {b.eval_every} steps")
    return lines


def summary_lines(claims: List[str]) -> List[str]:
    """The verdict counts and the refuted claims, quoted."""
    counts = {v: sum(1 for c in claims if c.endswith(v)) for v in VERDICT.values()}
    refuted = [c[len("- claim: "):] for c in claims if c.endswith(VERDICT[False])]
    lines = [f"{len(claims)} claims checked against this run's numbers: "
             f"{counts[VERDICT[True]]} supported, {counts[VERDICT[False]]} refuted, "
             f"{counts[VERDICT[None]]} not clear."]
    if refuted:
        lines += ["", "Refuted here:", ""] + [f"- {c}" for c in refuted]
    return lines


def markdown(view: View, elapsed: float, command: str) -> str:
    s = view.s
    claims = {"flow": flow_claims(view), "adding": adding_claims(view),
              "remedies": remedy_claims(view)}
    b = s.budgets[s.remedy_length]
    env = E.environment()
    minutes = f"{int(elapsed // 60)} min {elapsed % 60:.0f} s"
    out = [
        "# The vanishing-gradient lab",
        "",
        f"Generated by `{command}` (mode: {s.mode}) in {minutes} ({elapsed:.0f} s) on "
        f"{env['machine']}, torch {env['torch']}, {env['threads']} "
        f"thread{'' if env['threads'] == '1' else 's'}, gatedrnn CPU "
        f"capability {env['cpu capability']}. Every number below comes from this run, and "
        f"every verdict is computed from the numbers next to it (rules at the end), so a "
        f"rerun with other seeds or budgets may change them.",
        "",
        "Setup: the adding problem (Hochreiter & Schmidhuber 1997). Each step gives a value "
        "from U(0, 1) and a marker; exactly two steps are marked, one drawn uniformly from "
        "the first half of the sequence, one from the second; the target, read after the "
        "last step, is the sum of the two marked values. Predicting 1 whatever the input "
        f"scores MSE 1/6 ≈ {BASELINE_MSE:.3f}; the task counts as solved below "
        f"{SOLVED_MSE}. Model: the recurrent module (hidden size {b.hidden}, time-major, "
        f"float32, CPU) and a Linear read-out of the last step's output, trained with Adam "
        f"on fresh batches (denormal floats flushed to zero during training, for speed; not "
        f"while measuring gradient flow); a run stops early at the first evaluation with "
        f"test MSE < {b.stop_mse:g} (learned; comparisons count MSEs below it as "
        f"{b.stop_mse:g}). Seeds "
        f"{', '.join(map(str, s.seeds))} (each seeds the weights and the training batches; "
        f"the test set depends on T only).",
        "",
    ] + [f"- {line}" for line in _budget_lines(s)] + [
        "",
        "## Summary",
        "",
    ] + summary_lines(claims["flow"] + claims["adding"] + claims["remedies"]) + [
        "",
        "## 1. Gradient flow",
        "",
        f"‖∂L/∂h_t‖ (2-norm over batch and features, from `gatedrnn.grad_norms()`) on "
        f"{b.probe_size} test sequences of length T = {s.flow_length}, the loss on the last "
        f"step only, so step t is T - 1 - t steps from the loss. The decay per step is "
        f"exp(slope) of a least-squares line through log ‖∂L/∂h_t‖ against that distance "
        f"(steps whose norm is 0, below {FLOOR:g} or not finite are left out of the fit, "
        f"counted in the last column, and drawn at {FLOOR:g}). After training: the same "
        f"measurement on the models trained at T = {s.flow_length} (the runs of section 2; "
        f"RNN-tanh orthogonal and RNN-ReLU with torch's default init trained the same way). "
        f"Curves: geometric mean over the seeds; table: mean ± std over the seeds.",
        "",
        f"![gradient flow at init and after training]({FIGURES['flow']})",
        "",
    ] + flow_table(view) + ["", "Claims:", ""] + claims["flow"] + [
        "",
        "## 2. The adding problem",
        "",
        "Test MSE at the end of the budget (mean ± std over the seeds) and the first "
        f"evaluated step with test MSE < {SOLVED_MSE} (mean over the seeds that got there; "
        "in brackets how many did).",
        "",
    ] + adding_table(view) + [
        "",
        f"![test MSE during training]({FIGURES['adding']})",
        "",
        "Claims:",
        "",
    ] + claims["adding"] + [
        "",
        "## 3. Remedies, one change at a time",
        "",
        f"At T = {s.remedy_length}, with the same data, steps and seeds: each row trains the "
        f"model without and with one change. recurrent_grad_clip={E.GATE_CLIP} clamps every "
        f"gate's pre-activation gradient during backpropagation through time (the loss is a "
        f"batch mean, so gradients are small and a bound of 1 would never act); "
        f"clip_grad_norm_({E.NORM_CLIP}) rescales the whole gradient before each step; the "
        f"3-layer stacks take the input through a Linear to the hidden size (the residual "
        f"sum needs equal widths), and their gradient flow is the bottom layer's; attention "
        f"is one scaled_dot_product_attention head, query from the last output, over all "
        f"the outputs, its result read out next to the last output. Outcome: "
        f"helped / hurt when the test MSE differs clearly, or, where every run of both "
        f"solved the task, the steps it took (rules below).",
        "",
    ] + remedies_table(view) + [
        "",
        f"![remedies]({FIGURES['remedies']})",
        "",
        "Claims:",
        "",
    ] + claims["remedies"] + [
        "",
        "## How the verdicts are computed",
        "",
        "- A comparison of A and B over the seeds is clear when the difference of the means "
        "is larger than both the sum of the two standard deviations and a minimal effect: a "
        "factor 1.5 in test MSE (compared on log10; a diverged run counts as 1/6, an MSE "
        "below the early stop's threshold as that threshold), 0.02 in decay per step. "
        "Learning is compared on test MSE; where that shows no clear difference and every "
        "run of both solved the task, on the steps to solve (a factor 1.25, on log10). "
        "\"better than\" claims are supported when A is clearly better, refuted when clearly "
        "worse, not clear otherwise; \"as well as\" claims are refuted only when A is "
        "clearly worse, and not clear when neither solved the task in any seed.",
        f"- The gradient has vanished over the sequence when ‖g‖ at the first step is below "
        f"{SPAN_KEPT} of ‖g‖ at the last, and is kept when it is at least that; claims about "
        f"this are supported or refuted when all seeds agree, not clear when they split. "
        f"\"solves\" means test MSE < {SOLVED_MSE} in every seed.",
        "",
        f"Reproduce: `{command}` (the runs are seeded; the kernels give bitwise the same "
        f"results on 1 and 2 threads, timings differ).",
        "",
    ]
    return "\n".join(out)


def _plain(value):
    """JSON without NaN: non-finite floats as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def summary(view: View, elapsed: float) -> dict:
    """The per-run numbers behind the report, for other tools (non-finite values: null)."""
    runs = []
    for (config, T, seed), run in view.results.items():
        runs.append({"config": config.label, "T": T, "seed": seed,
                     "final_mse": run.final_mse, "solved_at": run.solved_at,
                     "diverged_at": run.diverged_at, "eval_steps": run.eval_steps,
                     "test_mse": run.test_mse, "decay_init": run.decay_init,
                     "decay_final": run.decay_final, "seconds": run.seconds,
                     "flow_init": run.flow_init.tolist(), "flow_final": run.flow_final.tolist()})
    return _plain({"mode": view.s.mode, "elapsed_s": elapsed, "environment": E.environment(),
                   "runs": runs})
