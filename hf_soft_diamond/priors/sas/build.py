"""The SaS unit table's grid and its float64 builder (docs/methods.md §3.2).

One job: the values ``r`` and ``q`` of a unit-dispersion table (layout: :mod:`.table`)
on a grid, computed in float64 from the evaluators of :mod:`.density`, plus the choice
of that grid (:func:`default_grid`, :data:`DEFAULT_GRID_STEP`, :func:`_grid_params`).

Units: ``t = log z`` (natural log) with ``z = |x|/c``; the grid is
``t_min + grid_step * arange(n)``; region edges ``z_a``, ``z_b`` are in z, planned in
decades (``log10 z``).

Grid
----
The default range is chosen per alpha so that holding the end values costs < 1e-9
relative (the small-z and tail expansions are flat to that level there), capped to
``[log(1e-38), log(3.4e38)]`` (all normal float32 numbers); only float64 inputs
beyond ``3.4e38 * c`` for alpha < ~0.25 read a slightly off (< 1e-2 relative) score.
Default step ``h = 0.02`` (its interpolation error: :mod:`.table`).
Accuracy of the built values (vs. 80-digit mpmath series): ~1e-11 relative for alpha
in [0.3, 2) (alpha = 1/2: ~2e-10 in the score around z = 0.007, where its power series
hands over to the closed form, < 1e-12 elsewhere), ~1e-4 at alpha = 0.2-0.25 (the
small-z fill loses digits there), not verified below 0.2.

How a table is built (float64, all vectorized; timings: benchmarks/RESULTS.md, "SaS table build")
-----------------------------------------------------------------------------------------------
For each alpha the grid is split into three regions by an error estimate made on a
coarse grid (rounding ``eps * sum|terms|`` plus the next two terms, both < 1e-11
relative to the partial sum, for ``f`` and ``f'``; 0.5 decade, refined to 0.1 decade
at the region's edge, :func:`_plan_edge`): small z, the power series; large z, the tail
series; between them (if the two do not overlap), Zolotarev's integral (the methods:
:mod:`.density`). ``alpha = 1/2`` needs no planning: its power series up to z = 0.007,
the closed form (:func:`~.density._half_alpha_eval`) beyond.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from .density import (
    _HALF_SWITCH,
    _HALF_TERMS,
    _check_alpha,
    _half_alpha_eval,
    _power_eval,
    _power_log_coefs,
    _tail_coefs,
    _tail_eval,
    _zolotarev_eval,
)

#: step h of the grid in t = log z (its interpolation error: :mod:`.table`)
DEFAULT_GRID_STEP = 0.02
_SERIES_TOL = 1e-11
_END_TOL = 1e-9
_T_LO_CAP = math.log(1e-38)
_T_HI_CAP = math.log(3.4e38)
_EPS = np.finfo(np.float64).eps


# ------------------------------------------------------------------------- grid
def default_grid(alpha: float) -> tuple[float, float]:
    """Per-alpha default ``(t_min, t_max)`` such that holding the end values of r and q
    outside the grid costs < 1e-9 relative (capped to the float32 normal range)."""
    alpha = _check_alpha(alpha)
    if alpha in (1.0, 2.0):
        return 0.0, 0.0
    # the first three power and two tail coefficients (as in _power_log_coefs / _tail_coefs,
    # in scalar math: this runs on every table lookup)
    la = [math.lgamma((2 * k + 1) / alpha) - math.lgamma(2 * k + 1) for k in range(3)]
    # r = -kappa (1 + B z^2 + ...), B = 2 A2/A1 - A1/A0 + 1
    big_b = abs(2 * math.exp(la[2] - la[1]) - math.exp(la[1] - la[0]) + 1.0)
    t_min = 0.5 * math.log(_END_TOL / big_b)
    # r = -(1+alpha) (1 + C w + ...), w = z^-alpha, C = alpha/(1+alpha) * b2/b1
    lmag = [math.lgamma(alpha * k + 1) - math.lgamma(k + 1) for k in (1, 2)]
    ss = [(-1.0) ** (k + 1) * math.sin(k * math.pi * alpha / 2) for k in (1, 2)]
    c1 = abs(alpha / (1 + alpha) * ss[1] / ss[0]) * math.exp(lmag[1] - lmag[0]) + 1e-3
    t_max = math.log(c1 / _END_TOL) / alpha
    t_min = max(min(t_min, -2.0), _T_LO_CAP)
    t_max = min(max(t_max, 2.0), _T_HI_CAP)
    return t_min, t_max


def _grid_params(alpha: float, grid_step: float, t_min: float | None, t_max: float | None) -> tuple[float, float, int]:
    try:
        grid_step = float(grid_step)
    except (TypeError, ValueError):
        grid_step = math.nan
    if not (0.0 < grid_step <= 1.0):
        raise ValueError(f"`grid_step` must be a number in (0, 1], got {grid_step!r}.")
    d_lo, d_hi = default_grid(alpha)
    lo = d_lo if t_min is None else float(t_min)
    hi = d_hi if t_max is None else float(t_max)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"need finite `t_min` < `t_max`, got {t_min!r}, {t_max!r}.")
    n = int(math.ceil((hi - lo) / grid_step - 1e-9)) + 1
    return lo, float(grid_step), n


# ------------------------------------------------------------------ region planning
def _series_valid_k(log_terms: np.ndarray, signs: np.ndarray, tol: float) -> np.ndarray:
    """valid[..., K-1, z]: the sum of the first K terms is accurate to ``tol`` (relative).

    ``log_terms[..., k, z]`` are log magnitude bounds (terms along the second-to-last
    axis, points along the last; leading axes: several series at once), ``signs[..., k]``
    the signed factor of each term (|signs| <= 1). Error estimate = 4 eps sum|term| +
    the next two bounds.
    """
    mag = np.exp(np.minimum(log_terms - log_terms[..., :1, :], 600.0))
    kk = mag.shape[-2] - 2
    sm = mag[..., :kk, :] * signs[..., :kk, None]
    signed = np.cumsum(sm, axis=-2)
    absum = np.cumsum(np.abs(sm), axis=-2)
    err = 4 * _EPS * absum + mag[..., 1 : kk + 1, :] + mag[..., 2 : kk + 2, :]
    return err < tol * np.abs(signed)


def _power_valid(alpha: float, zc: np.ndarray, kmax: int) -> np.ndarray:
    """valid[K-1, z]: K terms of the power series of f and of f'/z hold to tolerance at z."""
    la, lb = _power_log_coefs(alpha, kmax + 1)
    k = np.arange(kmax + 2)
    lz2 = 2 * np.log(zc)
    sf = (-1.0) ** k
    logs = np.stack([la[: kmax + 2], lb])[:, :, None] + (k[:, None] * lz2)[None]
    v = _series_valid_k(logs, np.stack([sf, -sf]), _SERIES_TOL)
    return v[0] & v[1]


def _tail_valid(alpha: float, zc: np.ndarray, kmax: int) -> np.ndarray:
    """valid[K-1, z]: K terms of the tail series of f and of f' hold to tolerance at z."""
    lmag, ss = _tail_coefs(alpha, kmax)
    k = np.arange(1, kmax + 3, dtype=np.float64)
    lt = lmag[:, None] - alpha * k[:, None] * np.log(zc)[None, :]
    v = _series_valid_k(np.stack([lt, lt + np.log(alpha * k + 1)[:, None]]), ss, _SERIES_TOL)
    return v[0] & v[1]


def _plan_edge(valid: Callable[[np.ndarray], np.ndarray], log10_lo: float, log10_hi: float,
               from_top: bool) -> tuple[float, int]:
    """Farthest grid point reached by one series length K, valid everywhere on the way.

    Scans ``z = 10**(log10_lo ... log10_hi)`` from the bottom (power series: returns the
    largest ``z_a`` with K valid on all of ``(0, z_a]``) or from the top (tail series: the
    smallest ``z_b`` with K valid on ``[z_b, inf)``), on a 0.5-decade grid, then refines
    the step past the last valid coarse point to 0.1 decade (the answer of a full
    0.1-decade scan at every alpha tried, 0.2 ... 1.99, from about a quarter of the
    points). Among the Ks reaching farthest, the smallest. Returns ``(z, K)``, or
    ``(0, 0)`` / ``(inf, 0)`` when no K holds at the first point.
    """
    none = (math.inf, 0) if from_top else (0.0, 0)
    lz = np.arange(log10_lo, log10_hi + 1e-9, 0.5)
    if from_top:
        lz = lz[::-1]
    ok = valid(10.0 ** lz)
    counts = np.cumprod(ok, axis=1).sum(axis=1)  # per K: leading valid coarse points
    reach = int(counts.max())
    if reach == 0:
        return none
    step = -0.1 if from_top else 0.1
    if reach < len(lz):  # refine between the last valid and the first invalid coarse point
        fine = valid(10.0 ** (lz[reach - 1] + step * np.arange(1, 5)))
        fine_counts = np.where(counts == reach, np.cumprod(fine, axis=1).sum(axis=1), -1)
        best = int(np.argmax(fine_counts))
        return float(10.0 ** (lz[reach - 1] + step * fine_counts[best])), best + 1
    best = int(np.argmax(counts))
    return float(10.0 ** lz[-1]), best + 1


# ------------------------------------------------------------------ table builder
def build_unit_table(alpha: float, t_min: float, t_max: float, grid_step: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Compute ``(r, q, info)`` on the grid ``t_min + grid_step * arange(n)`` in float64.

    ``r = psi_1(z)(1+z^2)/z`` and ``q = log f_1(z) + (1+alpha)/2 log(1+z^2)`` at
    ``z = exp(t)``; ``info`` names the regions (``z_a``: power series up to there,
    ``z_b``: tail series from there, Zolotarev between).
    """
    alpha = _check_alpha(alpha)
    if alpha in (1.0, 2.0):
        raise ValueError("alpha = 1 and alpha = 2 use closed forms, not tables")
    n = int(round((t_max - t_min) / grid_step)) + 1
    t = t_min + grid_step * np.arange(n, dtype=np.float64)
    z = np.exp(t)
    if alpha == 0.5:  # closed form from _HALF_SWITCH on: no planning, no tail series
        z_a, k_a, z_b, k_b = _HALF_SWITCH, _HALF_TERMS, math.inf, 0
        middle, middle_name = _half_alpha_eval, "fresnel"
    else:
        # region edges to 0.1 decade (see _plan_edge); series lengths up to kmax (more
        # near alpha = 1, where both series converge slowly around z ~ 1)
        kmax = int(min(160, 40 + 12 / abs(alpha - 1.0)))
        z_a, k_a = _plan_edge(lambda zc: _power_valid(alpha, zc, kmax), -6.0, 2.0 if alpha > 1 else 0.5, False)
        z_b, k_b = _plan_edge(lambda zc: _tail_valid(alpha, zc, kmax), -6.0 if alpha < 1 else -1.0, 6.0, True)
        if z_a >= z_b:  # overlap: cut in the middle (log scale)
            z_a = z_b = math.sqrt(z_a * z_b)
        middle, middle_name = functools.partial(_zolotarev_eval, alpha), "zolotarev"
    r = np.empty(n)
    lf = np.empty(n)
    # the grid is sorted: power series on [0, i_a), middle on [i_a, i_b), tail on [i_b, n)
    i_a = int(np.searchsorted(z, z_a, side="right"))
    i_b = max(i_a, int(np.searchsorted(z, z_b, side="left")))
    if i_a > 0:
        zp = z[:i_a]
        f, fpz = _power_eval(alpha, zp, z_a, k_a)
        r[:i_a] = fpz / f * (1 + zp * zp)
        lf[:i_a] = np.log(f)
    if i_b < n:
        zt = z[i_b:]
        sf, sd = _tail_eval(alpha, zt, z_b, k_b)
        # psi = f'/f = -sd/(z sf) -> r = -(sd/sf) (1+z^2)/z^2
        r[i_b:] = -(sd / sf) * (1.0 + 1.0 / (zt * zt))
        lf[i_b:] = np.log(sf) - math.log(math.pi) - t[i_b:]
    if i_b > i_a:
        zm = z[i_a:i_b]
        f, xpsi = middle(zm)
        r[i_a:i_b] = xpsi * (1.0 + 1.0 / (zm * zm))
        lf[i_a:i_b] = np.log(f)
    log1p_z2 = np.log1p(z * z)
    if z[-1] > 1e150:  # a user grid beyond the default cap: z*z would overflow
        log1p_z2[z > 1e150] = 2 * t[z > 1e150]
    q = lf + 0.5 * (1.0 + alpha) * log1p_z2
    info = {"z_a": z_a, "k_a": k_a, "z_b": z_b, "k_b": k_b, "middle": middle_name, "n_middle": i_b - i_a}
    return r, q, info
