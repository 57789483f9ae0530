"""Summaries over seeds and the comparisons the report's verdicts are computed from.

A verdict compares per-seed values: A is "clearly" better than B when the difference of
their means exceeds both a minimal effect (MSE: a factor 1.5, compared on log10; steps to
solve: a factor 1.25, on log10; decay per step: 0.02) and the sum of their standard
deviations over seeds. Otherwise the measurement does not tell them apart ("same").
"""
import math
from typing import Iterable, List, Optional, Sequence

MSE_EFFECT = math.log10(1.5)   # on log10(MSE)
DECAY_EFFECT = 0.02            # on the decay per step
STEPS_EFFECT = math.log10(1.25)  # on log10(steps to solve)
# A gradient "reaches back over the sequence" when the norm at the first step is at least
# this share of the norm at the last (at T = 100: a decay per step of ~0.955 or more).
SPAN_KEPT = 0.01


def finite(values: Iterable[float]) -> List[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def mean(values: Sequence[float]) -> float:
    values = finite(values)
    return sum(values) / len(values) if values else math.nan


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (0 for a single value, nan for none)."""
    values = finite(values)
    if not values:
        return math.nan
    if len(values) == 1:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def log10s(values: Sequence[float]) -> List[float]:
    return [math.log10(v) if v is not None and math.isfinite(v) and v > 0 else math.nan
            for v in values]


def geomean(values: Sequence[float]) -> float:
    logs = finite(log10s(values))
    return 10 ** (sum(logs) / len(logs)) if logs else math.nan


def compare(a: Sequence[float], b: Sequence[float], higher_is_better: bool,
            min_effect: float) -> str:
    """"better" / "worse" if A is clearly better / worse than B (module docstring), else
    "same"; "unknown" when either has no finite value. Pass log10s for MSEs."""
    a, b = finite(a), finite(b)
    if not a or not b:
        return "unknown"
    diff = mean(a) - mean(b)
    if not higher_is_better:
        diff = -diff
    margin = max(min_effect, std(a) + std(b))
    if diff > margin:
        return "better"
    if diff < -margin:
        return "worse"
    return "same"


def compare_mse(a: Sequence[float], b: Sequence[float], floor: float) -> str:
    """compare() on test MSEs (lower is better, on a log scale); values below `floor` (where
    runs stop) count as `floor`, and a diverged run (nan) as 1/6, a model that learned
    nothing."""
    fill = lambda vs: [max(v, floor) if v is not None and math.isfinite(v) else 1.0 / 6.0
                       for v in vs]
    return compare(log10s(fill(a)), log10s(fill(b)), higher_is_better=False,
                   min_effect=MSE_EFFECT)


def compare_steps(a: Sequence[float], b: Sequence[float]) -> str:
    """compare() on steps to solve (fewer is better, on a log scale; every run solved)."""
    return compare(log10s(a), log10s(b), higher_is_better=False, min_effect=STEPS_EFFECT)


def compare_decay(a: Sequence[float], b: Sequence[float]) -> str:
    """compare() on decays per step (higher keeps more gradient)."""
    return compare(a, b, higher_is_better=True, min_effect=DECAY_EFFECT)


def all_any(flags: Sequence[bool]) -> Optional[bool]:
    """True if every flag holds, False if none does, None if mixed."""
    flags = list(flags)
    if all(flags):
        return True
    if not any(flags):
        return False
    return None


def fmt(value: float, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}g}"


def fmt_spread(values: Sequence[float], digits: int = 3) -> str:
    """mean ± std over seeds (just the value for one seed)."""
    vals = finite(values)
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt(vals[0], digits)
    return f"{fmt(mean(vals), digits)} ± {fmt(std(vals), 2)}"
