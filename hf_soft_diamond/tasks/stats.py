"""Confidence intervals for a study's per-seed results, and the verdict they support.

A study runs every arm at the same seeds; a seed fixes the data order (and, for runs trained
from scratch, the initialisation), so two arms' results at one seed are a *pair*, and the
difference of the arms is estimated from the per-seed differences (a paired t interval).
When the arms do not share at least two seeds, Welch's unequal-variance t interval is used
instead. With three seeds a 95% t interval is wide (t = 4.30 at 2 degrees of freedom): an
interval that excludes zero there is a difference well outside the seed-to-seed noise.

Verdicts (:func:`verdict`), for a difference ``arm - baseline`` of a metric where higher is
better (sign flipped for lower-is-better metrics):

* ``supported``: the interval lies above ``-margin`` (``margin`` 0: the arm is better;
  ``margin`` m > 0: the arm is at most m worse, a non-inferiority claim such as "within
  1 BLEU of no prior");
* ``not supported``: the interval lies below ``-margin`` (the claim's opposite holds);
* ``not separable``: the interval contains ``-margin``: the seeds cannot tell.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
NOT_SEPARABLE = "not separable"
#: Too few seeds for an interval (fewer than two results on a side).
NOT_MEASURED = "not measured yet"


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval ``[low, high]`` from ``n`` values
    (``low``/``high`` NaN when ``n`` < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Difference(Interval):
    """``arm - baseline``: mean, interval, number of pairs (or of the smaller side, unpaired),
    and whether the interval is paired by seed."""

    paired: bool = True


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")


def _t_quantile(confidence: float, dof: float) -> float:
    return float(_scipy_stats.t.ppf(0.5 + confidence / 2, dof))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with its Student-t confidence interval (NaN bounds for one value)."""
    _check_confidence(confidence)
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("`values` is empty: an interval needs at least one value")
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return Interval(mean, math.nan, math.nan, len(vals))
    half = _t_quantile(confidence, len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return Interval(mean, mean - half, mean + half, len(vals))


def difference_interval(arm: Mapping[int, float], baseline: Mapping[int, float],
                        confidence: float = 0.95) -> Difference:
    """Interval for ``mean(arm) - mean(baseline)`` from per-seed values (``{seed: value}``).

    Paired over the seeds both hold when there are at least two of them (the other seeds are
    left out); otherwise Welch's interval over all values of each side. NaN bounds when a side
    has fewer than two values.
    """
    _check_confidence(confidence)
    if not arm or not baseline:
        raise ValueError("`arm` and `baseline` each need at least one seed's value")
    common = sorted(set(arm) & set(baseline))
    if len(common) >= 2:
        diffs = mean_interval([arm[s] - baseline[s] for s in common], confidence)
        return Difference(diffs.mean, diffs.low, diffs.high, diffs.n, paired=True)
    a, b = list(arm.values()), list(baseline.values())
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, math.nan, math.nan, min(len(a), len(b)), paired=False)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Difference(mean, mean, mean, min(len(a), len(b)), paired=False)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = _t_quantile(confidence, dof) * se
    return Difference(mean, mean - half, mean + half, min(len(a), len(b)), paired=False)


def verdict(difference: Interval, *, higher_is_better: bool = True, margin: float = 0.0) -> str:
    """What the interval of ``arm - baseline`` says about "the arm is better" (``margin`` 0) or
    "the arm is at most ``margin`` worse" (``margin`` > 0); see the module docstring."""
    if not margin >= 0:
        raise ValueError(f"`margin` must be >= 0, got {margin}.")
    if math.isnan(difference.low) or math.isnan(difference.high):
        return NOT_MEASURED
    sign = 1.0 if higher_is_better else -1.0
    low, high = sorted((sign * difference.low, sign * difference.high))
    if low > -margin:
        return SUPPORTED
    if high < -margin:
        return NOT_SUPPORTED
    return NOT_SEPARABLE
