"""Symmetric alpha-stable (SaS) prior: density and score tables (docs/methods.md §3).

Conventions
-----------
* The prior has characteristic function ``phi(t) = exp(-gamma * |t|**alpha)`` with tail
  index ``alpha`` in (0, 2] and **dispersion** ``gamma > 0``. The *scale* is
  ``c = gamma**(1/alpha)``; in scipy terms the law is
  ``scipy.stats.levy_stable(alpha, 0, scale=c)``. ``alpha = 2`` is the Gaussian of
  variance ``2*gamma``; ``alpha = 1`` the Cauchy law of scale ``gamma``.
* The score is ``psi = d/dx log f`` (negative for x > 0, odd in x).
* One *unit-dispersion* table per alpha serves every gamma:
  ``psi_gamma(x) = psi_1(x/c) / c`` and ``log f_gamma(x) = log f_1(x/c) - log c``.
  ``alpha = 1`` and ``alpha = 2`` use exact closed forms, no table. ``alpha = 1/2`` has a
  closed form too (Fresnel integrals), used to fill its table.

Table layout (:class:`SasTable`)
--------------------------------
A uniform grid in ``t = log z`` (``z = |x|/c >= 0``), step ``h``, on ``[t_min, t_max]``,
holding two bounded, slowly varying functions (computed in float64):

* ``r(t) = psi_1(z) * (1 + z**2) / z``: tends to ``-kappa`` as z -> 0 (``kappa =
  Gamma(3/alpha)/Gamma(1/alpha)``, the near-0 slope) and to ``-(1+alpha)`` as
  z -> inf (``psi_1 ~ -(1+alpha)/z``);
* ``q(t) = log f_1(z) + (1+alpha)/2 * log(1 + z**2)``: tends to ``log f_1(0)`` and to
  ``log(alpha*Gamma(alpha)*sin(pi*alpha/2)/pi)``.

They are read by cubic Hermite interpolation in t (per-cell coefficients, slopes from
4th-order differences of the table) and held constant outside the grid. The
default range is chosen per alpha so that holding the end values costs < 1e-9
relative (the small-z and tail expansions are flat to that level there), capped to
``[log(1e-38), log(3.4e38)]`` (all normal float32 numbers); only float64 inputs
beyond ``3.4e38 * c`` for alpha < ~0.25 read a slightly off (< 1e-2 relative) score.
The reader (:meth:`SasTable.score_unit`, :meth:`SasTable.log_pdf_unit`) is pure
elementwise torch (log, clamp, floor, gather, where), with no data-dependent Python
control flow, so ``torch.compile`` fuses it into one loop.

Default step ``h = 0.02`` (measured against exact values at off-grid points, alpha
0.3 ... 1.99): interpolation error of the score < 3e-7 relative in float64 (4.6e-6 at
alpha = 1.99, where r has a sharp bump between the Gaussian core and the tail), and
< 5e-6 in float32, where rounding of ``log z`` dominates; h = 0.05 gives 2e-5 at 1.9 and
4e-4 at 1.99, h = 0.01 gains nothing in float32. Linear interpolation would need
h = 0.005 for 2e-5 at alpha = 1.9. A table is 1-4k cells of 4 coefficients
(16 B per cell in float32); training weights touch only a few hundred cells.
Accuracy of the built values (vs. 80-digit mpmath series): ~1e-11 relative for alpha
in [0.3, 2) (alpha = 1/2: ~2e-10 in the score around z = 0.007, where its power series
hands over to the closed form, < 1e-12 elsewhere), ~1e-4 at alpha = 0.2-0.25 (the
small-z fill loses digits there), not verified below 0.2.

How a table is built (float64, all vectorized; timings: benchmarks/RESULTS.md, "SaS table build")
-----------------------------------------------------------------------------------------------
For each alpha the grid is split into three regions by an error estimate made on a
coarse grid (rounding ``eps * sum|terms|`` plus the next two terms, both < 1e-11
relative to the partial sum, for ``f`` and ``f'``; 0.5 decade, refined to 0.1 decade
at the region's edge):

* small z: the power series ``f(z) = 1/(pi alpha) sum_k (-1)^k Gamma((2k+1)/alpha)
  / (2k)! z^(2k)`` (convergent for alpha > 1, asymptotic for alpha < 1), with a fixed
  number of terms, by Horner's rule in ``(z/z_a)**2``;
* large z: the tail series ``f(z) = 1/pi sum_{k>=1} (-1)^(k+1) Gamma(alpha k + 1)/k!
  sin(k pi alpha/2) z^(-alpha k - 1)`` (convergent for alpha < 1, asymptotic for
  alpha > 1), by Horner's rule in ``(z_b/z)**alpha``;
* between them (if the two do not overlap): Zolotarev's non-oscillatory integral
  ``f(x) = alpha/(pi |alpha-1| x) int_0^{pi/2} y e^{-y} dtheta`` with
  ``y = x^(alpha/(alpha-1)) V(theta)``, ``V = (cos th/sin(alpha th))^(alpha/(alpha-1))
  cos((alpha-1) th)/cos th``, and ``x psi(x) = 1/(alpha-1) - alpha/(alpha-1) *
  int y^2 e^{-y} / int y e^{-y}``, by tanh-sinh quadrature on fixed nodes.

The series are summed by a blocked Horner scheme (:func:`_polyval`: ~2 sqrt(K) numpy
calls for K terms; near alpha = 1 they need over 100 terms). ``alpha = 1/2`` needs no
planning: its power series up to z = 0.007, the closed form (:func:`_half_alpha_eval`,
the formula scipy uses at alpha = 1/2) beyond.

Cache: tables live in memory (keyed by alpha and grid parameters) and on disk under
``$HF_SOFT_DIAMOND_CACHE`` (default ``platformdirs.user_cache_dir("hf_soft_diamond")``),
one ``.npz`` per table with a JSON header (format version, alpha, grid parameters,
SHA-256 of the arrays), written atomically (temp file + ``os.replace``) and validated
on load: anything unexpected is rebuilt and overwritten.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from scipy.special import fresnel, gammaln
from torch import Tensor

__all__ = [
    "SasTable",
    "get_sas_table",
    "prebuild_sas_tables",
    "sas_cache_dir",
    "sas_log_pdf",
    "sas_score",
    "build_unit_table",
    "clear_memory_cache",
    "default_grid",
]

FORMAT_VERSION = 1
DEFAULT_GRID_STEP = 0.02
_SERIES_TOL = 1e-11
_END_TOL = 1e-9
_T_LO_CAP = math.log(1e-38)
_T_HI_CAP = math.log(3.4e38)
_EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------- checks
def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"`alpha` must be a number in (0, 2], got {alpha!r}.") from None
    if not (0.0 < a <= 2.0):  # also rejects NaN
        raise ValueError(f"`alpha` must be a number in (0, 2], got {alpha!r}.")
    return a


def _check_gamma(gamma: float) -> float:
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"`gamma` (dispersion) must be a finite number > 0, got {gamma!r}.") from None
    if not (0.0 < g < math.inf):
        raise ValueError(f"`gamma` (dispersion) must be a finite number > 0, got {gamma!r}.")
    return g


# ------------------------------------------------------------- series coefficients
def _power_log_coefs(alpha: float, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """log|coef| of f (k = 0..kmax-1, times z^(2k)) and of f'/z (k = 0.., times z^(2k))."""
    k = np.arange(kmax + 2, dtype=np.float64)
    la = gammaln((2 * k + 1) / alpha) - gammaln(2 * k + 1)  # f: (-1)^k A_k z^2k
    # f'/z = sum_{k>=1} (-1)^k 2k A_k z^(2k-2) = sum_{j>=0} (-1)^(j+1) 2(j+1) A_{j+1} z^(2j)
    lb = np.log(2 * (k[:-1] + 1)) + la[1:]
    return la, lb


def _tail_coefs(alpha: float, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """log-magnitude bound and sign*|sin| of the tail series terms (k = 1..kmax+2) in w^k."""
    k = np.arange(1, kmax + 3, dtype=np.float64)
    lmag = gammaln(alpha * k + 1) - gammaln(k + 1)
    sgn_sin = (-1.0) ** (k + 1) * np.sin(k * np.pi * alpha / 2)
    return lmag, sgn_sin


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


# --------------------------------------------------------------------- evaluators
def _polyval(coefs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``sum_k coefs[k, j] * u**k`` for each column j of ``coefs`` (``(K, m)``): ``(m, len(u))``.

    Blocked Horner: with ``B ~ sqrt(K)``, the powers ``u**0 .. u**(B-1)`` (B - 1 passes),
    one matrix product giving every block's inner sum for every column, then Horner over
    the ~sqrt(K) blocks in ``u**B``. About 2 sqrt(K) numpy calls instead of 2K for plain
    Horner (the series here have up to ~130 terms on a few thousand points, so call
    overhead, not arithmetic, is what costs); rounding is of the same order (``u <= 1``).
    """
    n_terms, m = coefs.shape
    block = max(2, math.isqrt(n_terms))
    n_blocks = -(-n_terms // block)
    padded = np.zeros((n_blocks * block, m))
    padded[:n_terms] = coefs
    powers = np.empty((block, len(u)))
    powers[0] = 1.0
    powers[1] = u
    for i in range(2, block):
        np.multiply(powers[i - 1], u, out=powers[i])
    u_block = powers[block - 1] * u
    inner = padded.reshape(n_blocks, block, m).transpose(2, 0, 1).reshape(m * n_blocks, block) @ powers
    inner = inner.reshape(m, n_blocks, len(u))
    acc = inner[:, -1].copy()
    for j in range(n_blocks - 2, -1, -1):
        acc *= u_block
        acc += inner[:, j]
    return acc


def _power_eval(alpha: float, z: np.ndarray, zs: float, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Power series: returns (f, f'/z) at z (z <= zs)."""
    la, lb = _power_log_coefs(alpha, n_terms)
    k = np.arange(n_terms)
    lzs2 = 2 * math.log(zs)
    sign = (-1.0) ** k
    coefs = np.stack([sign * np.exp(la[:n_terms] + k * lzs2), -sign * np.exp(lb[:n_terms] + k * lzs2)], axis=1)
    f, fpz = _polyval(coefs, (z / zs) ** 2) / (math.pi * alpha)
    return f, fpz


def _tail_eval(alpha: float, z: np.ndarray, zs: float, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Tail series (z >= zs): returns (S_f, S_d) with f = S_f/(pi z), f' = -S_d/(pi z^2).

    Coefficients are pre-scaled by ``ws**k`` (``ws = zs**-alpha``) and evaluated in
    ``v = w/ws <= 1`` so that nothing overflows."""
    lmag, ss = _tail_coefs(alpha, n_terms)
    k = np.arange(1, n_terms + 1, dtype=np.float64)
    lws = -alpha * math.log(zs)
    cf = ss[:n_terms] * np.exp(lmag[:n_terms] + k * lws)
    v = (zs / z) ** alpha  # w/ws
    # sum_k c_k v^k = v * sum_k c_k v^(k-1)
    sf, sd = v * _polyval(np.stack([cf, cf * (alpha * k + 1)], axis=1), v)
    return sf, sd


def _tanh_sinh_nodes(step: float = 0.04, umax: float = 3.6):
    u = np.arange(-umax, umax + step / 2, step)
    s = 0.5 * np.pi * np.sinh(u)
    th = 0.5 * np.pi / (1.0 + np.exp(-2 * s))  # theta
    comp = 0.5 * np.pi / (1.0 + np.exp(2 * s))  # pi/2 - theta, accurate near pi/2
    w = step * (0.25 * np.pi) * (0.5 * np.pi * np.cosh(u)) / np.cosh(s) ** 2
    keep = (th > 0) & (comp > 0) & (w > 0)
    return th[keep], comp[keep], w[keep]


def _zolotarev_eval(alpha: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zolotarev integral (alpha != 1): returns (f, x*psi) at x > 0."""
    # V(theta) steepens like |alpha-1|^-1 as alpha -> 1: refine the node step with it
    # (measured: step 0.1*|alpha-1| gives ~1e-13 relative at alpha = 0.9, 0.95, 1.05, 1.1)
    step = min(0.04, max(0.001, 0.1 * abs(alpha - 1.0)))
    th, comp, w = _tanh_sinh_nodes(step, 3.6 if step >= 0.02 else 4.5)
    a = alpha / (alpha - 1.0)
    log_cos = np.log(np.sin(comp))
    log_v = a * (log_cos - np.log(np.sin(alpha * th))) + np.log(np.cos((alpha - 1.0) * th)) - log_cos
    ly = a * np.log(x)[:, None] + log_v[None, :]
    ly = np.minimum(ly, 700.0)
    y = np.exp(ly)
    e1 = np.exp(ly - y)  # y e^{-y}
    j1 = e1 @ w
    j2 = (e1 * y) @ w
    f = alpha * j1 / (math.pi * abs(alpha - 1.0) * x)
    xpsi = 1.0 / (alpha - 1.0) - a * j2 / j1
    return f, xpsi


#: alpha = 1/2: the closed form below holds to ~1e-12 relative for z > 0.02, loses digits
#: towards small z (cancellation, ~2e-10 in the score at z = 0.007), where the power
#: series (asymptotic at alpha < 1) takes over: 16 terms hold to ~7e-11 up to z = 0.007
#: (both measured against the closed form in 40-digit mpmath).
_HALF_SWITCH = 0.007
_HALF_TERMS = 16


def _half_alpha_eval(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha = 1/2 in closed form: returns (f, x*psi) at x > 0.

    With ``u = 1/sqrt(2 pi x)`` and the Fresnel integrals S, C (``scipy.special.fresnel``,
    argument ``pi s^2/2``), ``a = pi u^2/2 = 1/(4x)``::

        f(x) = G / sqrt(2 pi x^3),  G = sin(a) (1/2 - S(u)) + cos(a) (1/2 - C(u))
        x psi(x) = ((1 - pi u F) u / G - 3) / 2,  F = cos(a) (1/2 - S(u)) - sin(a) (1/2 - C(u))

    (G and F are the auxiliary Fresnel functions g(u), f(u); ``dg/du = pi u f - 1``.)
    The density is the one scipy's ``levy_stable`` uses at alpha = 1/2 (Hoffmann-Jorgensen).
    """
    u = 1.0 / np.sqrt(2 * math.pi * x)
    s_u, c_u = fresnel(u)
    a = 0.25 / x
    sin_a, cos_a = np.sin(a), np.cos(a)
    big_g = sin_a * (0.5 - s_u) + cos_a * (0.5 - c_u)
    big_f = cos_a * (0.5 - s_u) - sin_a * (0.5 - c_u)
    f = (2 * math.pi) * big_g * u ** 3  # = big_g / sqrt(2 pi x^3)
    xpsi = 0.5 * ((1.0 - math.pi * u * big_f) * u / big_g - 3.0)
    return f, xpsi


# ------------------------------------------------------------------ table builder
def _kappa(alpha: float) -> float:
    return math.exp(gammaln(3.0 / alpha) - gammaln(1.0 / alpha))


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



# ------------------------------------------------------------ fast rational reader
# psi_1(z) ~= -kappa * G(v) / (1/z + z/s0),  s0 = (1+alpha)/kappa,
# v = 1/(1 + (z/z0)**p) in [0, 1], z0 = sqrt(s0), G = A(v)/B(v) (degree n / n, Horner),
# with A(0) = B(0) (tail -(1+alpha)/z exact) and A(1) = B(1) = 1 (slope -kappa at 0 exact).
# p = 2 (a rational function of z^2) for alpha > 1; p = 1/2 (one sqrt) below, where the
# tail correction z^-alpha spans many decades of z and q = sqrt(z/z0) compresses them
# (alpha = 0.5: the tail series is exactly rational in q).
_FAST_TARGET = 1e-4
_FAST_MAX_DEG = 11


def _fast_power(alpha: float) -> float:
    return 2.0 if alpha >= 1.0 else 0.5


def _fast_v(z: np.ndarray, z0: float, p: float) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + (z / z0) ** p)


def _fit_fast_rational(v: np.ndarray, g: np.ndarray, n: int, iters: int = 5,
                       lawson: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Linearized (Sanathanan-Koerner) weighted least squares for the relative error of
    ``A(v)/B(v) ~= g`` (monomials, degree n each), then Lawson reweighting towards the
    minimax fit; constraints ``a0 = b0``, ``sum a = sum b = 1``. Returns the best (a, b)."""
    k = np.arange(n + 1)
    vm = v[:, None] ** k[None, :]
    cm = np.zeros((3, 2 * n + 2))
    cm[0, 0], cm[0, n + 1] = 1.0, -1.0
    cm[1, : n + 1] = 1.0
    cm[2, n + 1 :] = 1.0
    xp = np.linalg.lstsq(cm, np.array([0.0, 1.0, 1.0]), rcond=None)[0]
    null = np.linalg.svd(cm)[2][3:].T
    m = np.hstack([vm, -g[:, None] * vm])
    mn, mx = m @ null, m @ xp
    b_prev = np.ones_like(v)
    w = np.ones_like(v)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for it in range(iters + lawson):
        wt = w / np.abs(g * b_prev)
        lhs = mn * wt[:, None]
        sc = np.linalg.norm(lhs, axis=0)
        sc[sc == 0] = 1.0
        y = scipy.linalg.lstsq(lhs / sc, -mx * wt, lapack_driver="gelsy", check_finite=False)[0] / sc
        x = xp + null @ y
        a, b = x[: n + 1], x[n + 1 :]
        bv = vm @ b
        err = np.abs((vm @ a) / (bv * g) - 1.0)
        e = float(err.max())
        if np.all(bv > 0) and (best is None or e < best[0]):
            best = (e, a.copy(), b.copy())
        b_prev = np.where(np.abs(bv) > 1e-300, bv, 1e-300)
        if it >= iters:
            w = w * np.sqrt(err / err.max() + 1e-3)
            w /= w.sum()
    if best is None:
        raise RuntimeError("rational fit failed")
    return best[1], best[2]


def _poly_has_root_in_01(c: np.ndarray) -> bool:
    c = np.trim_zeros(c, "b")
    if len(c) <= 1:
        return False
    r = np.roots(c[::-1])
    real = r[np.abs(r.imag) <= 1e-9 * np.maximum(1.0, np.abs(r))].real
    return bool(np.any((real >= -1e-12) & (real <= 1.0 + 1e-12)))


class FastScore:
    """Coefficients of the rational reader of one alpha (see :meth:`SasTable.score_unit_fast`)."""

    def __init__(self, alpha: float, kappa: float, p: float, a: np.ndarray, b: np.ndarray) -> None:
        self.alpha, self.kappa, self.p = alpha, kappa, float(p)
        self.s0 = (1.0 + alpha) / kappa
        self.inv_s0 = 1.0 / self.s0
        self.inv_z0 = 1.0 / math.sqrt(self.s0)
        self.z0 = math.sqrt(self.s0)
        self.z_max = 1e18 * self.z0
        self.a = [float(x) * kappa for x in np.asarray(a, dtype=np.float64)]  # kappa folded into A
        self.b = [float(x) for x in np.asarray(b, dtype=np.float64)]
        self.y_max = self.z_max * self.inv_z0
        self.degree = len(self.a) - 1
        self.max_rel_error = math.nan

    def _ratio(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Numerator ``A(v)`` and denominator ``B(v)`` by Horner (two independent chains)."""
        num = v * self.a[-1] + self.a[-2]
        den = v * self.b[-1] + self.b[-2]
        for ca, cb in zip(self.a[-3::-1], self.b[-3::-1]):
            num = num * v + ca
            den = den * v + cb
        return num, den

    def signed(self, x: Tensor, scale: Tensor | float = 1.0, out_scale: Tensor | float = 1.0) -> Tensor:
        """``out_scale * psi_1(scale * x)`` for ``x`` of either sign (``scale > 0``): the odd extension.

        The same rational as :meth:`__call__` with the constants folded: ``y = x *
        scale/z0`` enters only through ``y^2`` (and ``sqrt|y|``) except for one factor
        ``y``, so the sign comes for free (no ``abs``/``sign`` pass), and ``-z0`` rides on
        ``out_scale`` (folding it into the numerator's coefficients instead changes their
        float32 rounding and costs accuracy at alpha 0.5). ``scale`` and ``out_scale`` may
        be 0-d tensors (a learning rate that changes does not recompile a compiled caller).
        """
        y = (x * (scale * self.inv_z0)).clamp(-self.y_max, self.y_max)
        one_y2 = 1.0 + y * y
        v = 1.0 / one_y2 if self.p == 2.0 else 1.0 / (1.0 + torch.sqrt(y.abs()))
        num, den = self._ratio(v)
        return (num * y) / (den * one_y2) * (out_scale * -self.z0)

    def __call__(self, z: Tensor) -> Tensor:
        # z is frozen at zmax = 1e18 z0 (so that (z/z0)^2 stays finite in float32; the
        # score there is ~ -(1+alpha)/zmax, < 1e-17/z0 in magnitude)
        y = z.clamp(max=self.z_max) * self.inv_z0
        one_y2 = 1.0 + y * y
        if self.p == 2.0:
            v = 1.0 / one_y2
        else:  # p = 1/2
            v = 1.0 / (1.0 + torch.sqrt(y))
        num, den = self._ratio(v)
        # -kappa G z / (1 + z^2/s0): 2 divisions in all (v and this one)
        return -(num * y) / (den * one_y2) * self.z0


def _check_grid(table: SasTable) -> np.ndarray:
    lo = min(table.t_min - 2.0, math.log(1e-30))
    hi = min(math.log(1e30), math.log(1e18) + 0.5 * math.log((1.0 + table.alpha) / table.kappa))
    return np.exp(np.arange(lo, hi, 0.005))


def fit_fast_score(table: SasTable, target: float = _FAST_TARGET, max_degree: int = _FAST_MAX_DEG) -> FastScore:
    """Fit the rational reader of ``table`` (float64), raising the degree from 4 until the
    float32 evaluation on the dense check grid (log-spaced z in [1e-30, min(1e30, 1e18 z0)], step 0.005
    in log z; reference: the table read in float64) is within ``target`` relative, or
    keeping the best degree up to ``max_degree``. Rejects fits with a pole or a zero of
    ``A/B`` in v in [0, 1] (i.e. in z in [0, inf)), or a nonnegative score."""
    alpha, kappa = table.alpha, table.kappa
    p = _fast_power(alpha)
    s0 = (1.0 + alpha) / kappa
    z0 = math.sqrt(s0)
    # fit points: the table's range (cut at 1e30), ~400 log-spaced points
    t_hi = min(table.t_max, math.log(1e30))
    zf = np.exp(np.linspace(table.t_min, t_hi, 400))
    psi_f = table.score_unit(torch.from_numpy(zf)).numpy()
    gf = -psi_f * (1.0 / zf + zf / s0) / kappa
    vf = _fast_v(zf, z0, p)
    vf, iu = np.unique(vf, return_index=True)
    gf = gf[iu]
    zc = _check_grid(table)
    psi_c = table.score_unit(torch.from_numpy(zc)).numpy()
    zc32 = torch.from_numpy(zc).float()
    best: FastScore | None = None
    for n in range(4, max_degree + 1):
        try:
            a, b = _fit_fast_rational(vf, gf, n)
        except (RuntimeError, np.linalg.LinAlgError):
            continue
        if _poly_has_root_in_01(a) or _poly_has_root_in_01(b):
            continue
        cand = FastScore(alpha, kappa, p, a, b)
        with torch.no_grad():
            got = cand(zc32).double().numpy()
        if not np.all(got < 0):
            continue
        cand.max_rel_error = float(np.max(np.abs(got / psi_c - 1.0)))
        if best is None or cand.max_rel_error < best.max_rel_error:
            best = cand
        if best.max_rel_error <= target:
            break
    if best is None:
        raise RuntimeError(f"no valid rational score approximant for alpha={alpha}")
    return best

# ------------------------------------------------------------------------- table
def _hermite_cells(y: np.ndarray) -> Tensor:
    """Per-cell cubic Hermite coefficients ``(m, n-1, 4)`` (float64 tensor) of the samples
    ``y`` (``(m, n)``, unit step), with the slopes from 4th-order central differences (2nd
    order at the two ends of the grid, where the tables are flat). Interpolation error
    O(h^4). Computed coefficient-major in numpy, made cell-major by one torch copy."""
    d = np.empty_like(y)  # h * dy/dt
    d[:, 2:-2] = (y[:, :-4] - y[:, 4:] + 8 * (y[:, 3:-1] - y[:, 1:-3])) * (1 / 12)
    d[:, 1] = (y[:, 2] - y[:, 0]) / 2
    d[:, -2] = (y[:, -1] - y[:, -3]) / 2
    d[:, 0] = (-3 * y[:, 0] + 4 * y[:, 1] - y[:, 2]) / 2  # one-sided, 2nd order
    d[:, -1] = (3 * y[:, -1] - 4 * y[:, -2] + y[:, -3]) / 2
    p0, m0, m1 = y[:, :-1], d[:, :-1], d[:, 1:]
    dp = y[:, 1:] - p0
    coefs = np.empty((4,) + p0.shape)  # value c0 + s (c1 + s (c2 + s c3)) at fraction s
    coefs[0] = p0
    coefs[1] = m0
    np.subtract(3 * dp, 2 * m0 + m1, out=coefs[2])
    np.add(m0 + m1, -2 * dp, out=coefs[3])
    return torch.from_numpy(coefs).permute(1, 2, 0).contiguous()


class SasTable:
    """Unit-dispersion (gamma = 1) SaS score and log-density for one alpha.

    Holds ``r(t)`` and ``q(t)`` (see the module docstring) on the grid
    ``t = t_min + grid_step * i``, i = 0..n-1, ``t = log z``. For ``alpha = 1`` and
    ``alpha = 2`` the readers use exact closed forms and there are no arrays.

    The readers take ``z = |x|/c >= 0`` as float32 or float64 (any shape, any device)
    and return the unit-dispersion values in the same dtype. Per dtype/device copies
    of the arrays are cached in :attr:`tensors`; call :meth:`tensors_for` once outside
    ``torch.compile`` for a new device to keep the compiled graph free of copies.
    """

    def __init__(self, alpha: float, t_min: float, grid_step: float, r: np.ndarray | None,
                 q: np.ndarray | None) -> None:
        self.alpha = _check_alpha(alpha)
        self.t_min = float(t_min)
        self.grid_step = float(grid_step)
        self.closed_form = self.alpha in (1.0, 2.0)
        self.r = None if r is None else np.ascontiguousarray(r, dtype=np.float64)
        self.q = None if q is None else np.ascontiguousarray(q, dtype=np.float64)
        self.n = 0 if r is None else len(self.r)
        self.t_max = self.t_min + self.grid_step * max(self.n - 1, 0)
        self.kappa = _kappa(self.alpha)
        self.log_f0 = float(gammaln(1.0 + 1.0 / self.alpha) - math.log(math.pi))
        self.tensors: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._cells64: Tensor | None = None
        self._fast: FastScore | None = None
        self._fast_failed = False
        self._fast_lock = threading.Lock()
        if not self.closed_form:
            if self.n < 2 or self.q is None or len(self.q) != self.n:
                raise ValueError("a SasTable needs r and q arrays of the same length >= 2")
            for dt in (torch.float32, torch.float64):
                self.tensors_for(dt, torch.device("cpu"))

    def __repr__(self) -> str:
        if self.closed_form:
            return f"SasTable(alpha={self.alpha}, closed form)"
        return (f"SasTable(alpha={self.alpha}, n={self.n}, grid_step={self.grid_step}, "
                f"t=[{self.t_min:.3f}, {self.t_max:.3f}])")

    def tensors_for(self, dtype: torch.dtype, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """``(r_cells, q_cells)``: ``(n-1, 4)`` tensors of the cubic Hermite coefficients
        of r and q on each grid cell (value ``c0 + s(c1 + s(c2 + s c3))`` at fraction s),
        in ``dtype`` on ``device`` (cached), so one gathered 4-vector gives a cell."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (dtype, device)
        hit = self.tensors.get(key)
        if hit is None:
            if self._cells64 is None:  # float64 (2, n-1, 4): r and q, computed once
                self._cells64 = _hermite_cells(np.stack([self.r, self.q]))
            cells = self._cells64.to(dtype=dtype, device=device)
            hit = (cells[0], cells[1])
            self.tensors[key] = hit
        return hit

    def _locate(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, cell index, fraction in the cell)``; outside the grid the end value holds."""
        t = torch.log(z)
        u = (t - self.t_min) * (1.0 / self.grid_step)
        u = torch.nan_to_num(u, nan=0.0).clamp(0.0, float(self.n - 1))
        i = u.floor().clamp(max=float(self.n - 2))
        return t, i.long(), u - i

    @staticmethod
    def _cubic(cells: Tensor, i: Tensor, s: Tensor) -> Tensor:
        c = cells[i]  # (..., 4)
        return c[..., 0] + s * (c[..., 1] + s * (c[..., 2] + s * c[..., 3]))

    @torch.no_grad()
    def score_unit(self, z: Tensor) -> Tensor:
        """``psi_1(z)`` for ``z >= 0`` (float32/float64); negative, 0 at z = 0 and inf.

        Pure elementwise torch: ``t = log z``, clamp to the grid, one gather of the cell's
        4 cubic coefficients of r, Horner, ``psi = r / (z + 1/z)``.
        """
        if self.alpha == 2.0:
            return -0.5 * z
        if self.alpha == 1.0:
            return -2.0 / (z + 1.0 / z)
        r_cells, _ = self.tensors_for(z.dtype, z.device)
        _, i, s = self._locate(z)
        return self._cubic(r_cells, i, s) / (z + 1.0 / z)

    @property
    def fast(self) -> FastScore | None:
        """The fitted rational reader (fitted on first access, fit times in ``benchmarks/RESULTS.md``,
        "SaS hot path"; None for the closed forms alpha = 1 and 2). Call it once outside
        ``torch.compile``."""
        if self.closed_form or self._fast_failed:
            return None
        if self._fast is None:
            with self._fast_lock:
                if self._fast is None and not self._fast_failed:
                    try:
                        self._fast = fit_fast_score(self)
                    except RuntimeError as err:  # e.g. alpha < 0.25: keep the exact table read
                        warnings.warn(f"hf_soft_diamond: {err}; score_unit_fast reads the table.",
                                      RuntimeWarning, stacklevel=2)
                        self._fast_failed = True
        return self._fast

    @property
    def fast_max_rel_error(self) -> float:
        """Max relative error of :meth:`score_unit_fast` (float32) against the table read
        (float64) on the dense check grid (z log-spaced in [1e-30, min(1e30, 1e18 z0)], 0.005
        in log z; beyond 1e18 z0 the input is frozen, |psi| < 1e-17/z0 there);
        0.0 for the exact closed forms alpha = 1 and 2 (and where no fit was found and
        :meth:`score_unit_fast` falls back to the table read)."""
        fast = self.fast
        return 0.0 if fast is None else fast.max_rel_error

    @property
    def fast_degree(self) -> int:
        """Degree n of numerator and denominator of the rational reader (0: closed form)."""
        fast = self.fast
        return 0 if fast is None else fast.degree

    @torch.no_grad()
    def score_unit_fast(self, z: Tensor) -> Tensor:
        """``psi_1(z)`` for ``z >= 0`` without log or gather: a rational approximant.

        ``psi_1(z) ~= -kappa A(v) / (B(v) (1/z + z/s0))`` with ``s0 = (1+alpha)/kappa``,
        ``v = 1/(1 + (z/z0)^p)`` in [0, 1] (``z0 = sqrt(s0)``; ``p = 2``, or ``p = 1/2`` via
        one sqrt for alpha < 1), A and B of degree n (4-11, per alpha) by Horner: the
        near-0 slope ``-kappa`` and the tail ``-(1+alpha)/z`` are exact, B has no zero in
        [0, 1] (no pole for z in [0, inf)), the value is < 0 for z > 0 and 0 at 0; z is
        frozen at 1e18 z0 (finite, ~ -(1+alpha)/(1e18 z0), at z = inf). About 2n+8 flops
        (2 divisions, plus 1 sqrt for p = 1/2), all elementwise, so
        ``torch.compile`` vectorizes it. Accuracy: :attr:`fast_max_rel_error` (measured
        <= 1.1e-4 on its check grid, <= 1.5e-4 with float32 rounding anywhere, for alpha
        in [0.3, 2); 3.3e-4 at 0.25).
        The fit is made on first use (fit times: ``benchmarks/RESULTS.md``, "SaS hot path") and kept
        with the in-memory table. Exact closed forms for alpha = 1 and 2.
        """
        if self.alpha == 2.0:
            return -0.5 * z
        if self.alpha == 1.0:
            return -2.0 / (z + 1.0 / z)
        fast = self.fast
        return self.score_unit(z) if fast is None else fast(z)

    @torch.no_grad()
    def score_signed(self, x: Tensor, scale: Tensor | float = 1.0, fast: bool = True,
                     out_scale: Tensor | float = 1.0) -> Tensor:
        """``out_scale * psi_1(scale * x)`` for ``x`` of either sign (psi_1 is odd), ``scale > 0``.

        What the regularizers' per-step kernels read: ``fast=True`` uses
        :meth:`FastScore.signed` (the rational of :meth:`score_unit_fast`, constants folded,
        no sign pass; exact closed forms at alpha 1 and 2), ``fast=False`` the table
        (:meth:`score_unit` of ``|scale x|`` with the sign of ``x``).
        """
        if fast and self.alpha == 2.0:
            return x * (scale * out_scale * -0.5)
        if fast and self.alpha == 1.0:
            z = x * scale
            return (out_scale * -2.0) / (z + 1.0 / z)  # odd; z = 0 gives -2/inf = -0
        fast_score = self.fast if fast else None
        if fast_score is not None:
            return fast_score.signed(x, scale, out_scale)
        return torch.sign(x) * self.score_unit(x.abs() * scale) * out_scale

    @torch.no_grad()
    def log_pdf_unit(self, z: Tensor) -> Tensor:
        """``log f_1(z)`` for ``z >= 0`` (float32/float64)."""
        if self.alpha == 2.0:
            return -0.25 * z * z - math.log(2.0 * math.sqrt(math.pi))
        t = torch.log(z)
        # 0.5*log(1+z^2) without overflow: relu(t) + 0.5*log1p(exp(-2|t|))
        half_log1p_z2 = torch.relu(t) + 0.5 * torch.log1p(torch.exp(-2.0 * t.abs()))
        if self.alpha == 1.0:
            return -math.log(math.pi) - 2.0 * half_log1p_z2
        _, q_cells = self.tensors_for(z.dtype, z.device)
        _, i, s = self._locate(z)
        return self._cubic(q_cells, i, s) - (1.0 + self.alpha) * half_log1p_z2


# ------------------------------------------------------------------------- cache
_MEMORY: dict[tuple, SasTable] = {}
_LOCK = threading.Lock()


def sas_cache_dir() -> Path:
    """Directory of the on-disk table cache: ``$HF_SOFT_DIAMOND_CACHE`` or
    ``platformdirs.user_cache_dir("hf_soft_diamond")``."""
    env = os.environ.get("HF_SOFT_DIAMOND_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("hf_soft_diamond"))


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


def _table_path(cache_dir: Path, alpha: float, t_min: float, grid_step: float, n: int) -> Path:
    key = f"{alpha!r}|{t_min!r}|{grid_step!r}|{n}|v{FORMAT_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"sas_alpha{alpha:.6g}_{digest}.npz"


def _checksum(r: np.ndarray, q: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(r, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(q, dtype="<f8").tobytes())
    return h.hexdigest()


def _header(alpha: float, t_min: float, grid_step: float, n: int, checksum: str) -> dict:
    return {"format_version": FORMAT_VERSION, "kind": "sas_unit_table", "alpha": alpha, "t_min": t_min,
            "grid_step": grid_step, "n": n, "sha256": checksum}


def _load(path: Path, alpha: float, t_min: float, grid_step: float, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The arrays of a valid cache file, or None (missing, truncated, corrupted, other params)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            r = np.array(data["r"], dtype="<f8")
            q = np.array(data["q"], dtype="<f8")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, TypeError):
        return None
    except Exception:  # noqa: BLE001 - any unreadable file is rebuilt, never trusted
        return None
    expect = _header(alpha, t_min, grid_step, n, "")
    for k in ("format_version", "kind", "alpha", "t_min", "grid_step", "n"):
        if header.get(k) != expect[k]:
            return None
    if r.shape != (n,) or q.shape != (n,) or header.get("sha256") != _checksum(r, q):
        return None
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        return None
    return r, q


def _save(path: Path, alpha: float, t_min: float, grid_step: float, r: np.ndarray, q: np.ndarray) -> None:
    """Write atomically: temp file in the same directory, fsync, ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(_header(alpha, t_min, grid_step, len(r), _checksum(r, q)))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, header=np.array(header), r=r.astype("<f8"), q=q.astype("<f8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def get_sas_table(alpha: float, *, grid_step: float = DEFAULT_GRID_STEP, t_min: float | None = None,
                  t_max: float | None = None, disk_cache: bool = True) -> SasTable:
    """The unit-dispersion :class:`SasTable` for ``alpha``, cached in memory and on disk.

    Args:
        alpha: tail index in (0, 2]. ``alpha`` in {1, 2} returns a closed-form table.
        grid_step: step h of the grid in ``t = log z`` (default 0.01: score error
            < 1e-5 relative from interpolation, see the module docstring).
        t_min, t_max: grid range in t; default per alpha (:func:`default_grid`).
        disk_cache: read/write the table under :func:`sas_cache_dir` (a file that does
            not validate is rebuilt and overwritten; an unwritable directory only warns).
    """
    alpha = _check_alpha(alpha)
    if alpha in (1.0, 2.0):
        key = (alpha,)
        with _LOCK:
            if key not in _MEMORY:
                _MEMORY[key] = SasTable(alpha, 0.0, 1.0, None, None)
            return _MEMORY[key]
    lo, h, n = _grid_params(alpha, grid_step, t_min, t_max)
    key = (alpha, lo, h, n)
    with _LOCK:
        hit = _MEMORY.get(key)
    if hit is not None:
        return hit
    arrays = None
    path = None
    if disk_cache:
        path = _table_path(sas_cache_dir(), alpha, lo, h, n)
        arrays = _load(path, alpha, lo, h, n)
    if arrays is None:
        r, q, _ = build_unit_table(alpha, lo, lo + h * (n - 1), h)
        if len(r) != n:
            raise RuntimeError("internal error: grid length mismatch")
        if path is not None:
            try:
                _save(path, alpha, lo, h, r, q)
            except OSError as err:
                warnings.warn(f"hf_soft_diamond: could not write the SaS table cache {path}: {err}",
                              RuntimeWarning, stacklevel=2)
        arrays = (r, q)
    table = SasTable(alpha, lo, h, *arrays)
    with _LOCK:
        return _MEMORY.setdefault(key, table)


def prebuild_sas_tables(alphas: Iterable[float], *, grid_step: float = DEFAULT_GRID_STEP) -> list[Path]:
    """Build (or validate) and store on disk the tables of ``alphas``; returns their
    paths (alphas 1 and 2 are closed forms and have none)."""
    paths = []
    for a in alphas:
        a = _check_alpha(a)
        if a in (1.0, 2.0):
            continue
        table = get_sas_table(a, grid_step=grid_step)
        path = _table_path(sas_cache_dir(), a, table.t_min, table.grid_step, table.n)
        if _load(path, a, table.t_min, table.grid_step, table.n) is None:
            _save(path, a, table.t_min, table.grid_step, table.r, table.q)
        paths.append(path)
    return paths


def clear_memory_cache() -> None:
    """Forget the in-memory tables (the disk cache is kept)."""
    with _LOCK:
        _MEMORY.clear()


# ---------------------------------------------------------------- public functions
def _prepare(x: Tensor, alpha: float, gamma: float) -> tuple[SasTable, Tensor, float]:
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}")
    alpha = _check_alpha(alpha)
    gamma = _check_gamma(gamma)
    c = gamma ** (1.0 / alpha)
    work = x.detach()
    if not work.is_floating_point():
        work = work.to(torch.get_default_dtype())
    work = work.to(torch.promote_types(work.dtype, torch.float32))
    return get_sas_table(alpha), work, c


def sas_score(x: Tensor, alpha: float, gamma: float = 1.0) -> Tensor:
    """Score ``psi_gamma(x) = d/dx log f(x)`` of the SaS(alpha, dispersion gamma) prior.

    ``f`` has characteristic function ``exp(-gamma |t|^alpha)``; with ``c =
    gamma**(1/alpha)``: ``psi_gamma(x) = psi_1(x/c)/c``, read from the unit table
    (exact closed forms for alpha = 1: ``-2x/(gamma^2+x^2)`` and alpha = 2: ``-x/(2 gamma)``).
    Same shape/dtype/device as ``x``; computed in float32 (float64 for float64
    input), no autograd graph.
    """
    with torch.no_grad():
        table, work, c = _prepare(x, alpha, gamma)
        out = table.score_signed(work, 1.0 / c, fast=False, out_scale=1.0 / c)  # the exact table read, odd in x
        return out.to(x.dtype) if x.is_floating_point() else out


def sas_log_pdf(x: Tensor, alpha: float, gamma: float = 1.0) -> Tensor:
    """``log f_gamma(x)`` of the SaS(alpha, dispersion gamma) prior: ``log f_1(x/c) - log c``
    with ``c = gamma**(1/alpha)``. Same shape/dtype/device as ``x`` (computed in float32
    or float64), no autograd graph."""
    with torch.no_grad():
        table, work, c = _prepare(x, alpha, gamma)
        out = table.log_pdf_unit(work.abs() * (1.0 / c)) - math.log(c)
        return out.to(x.dtype) if x.is_floating_point() else out
