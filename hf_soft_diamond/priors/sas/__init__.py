"""Symmetric alpha-stable (SaS) prior: density and score tables (docs/methods.md §3).

The public API: :func:`sas_score` and :func:`sas_log_pdf` at any dispersion, and the
unit-dispersion tables behind them, re-exported from the submodules, one job each:

* :mod:`.density`: the unit law in float64 numpy: parameter checks, series coefficients
  and pointwise evaluators (power and tail series, Zolotarev's integral, the alpha = 1/2
  closed form);
* :mod:`.build`: the table grid (:func:`default_grid`, :data:`DEFAULT_GRID_STEP`) and the
  float64 table builder (:func:`build_unit_table`: region planning, filling r and q);
* :mod:`.table`: :class:`SasTable`, the table and its torch readers (cubic Hermite
  interpolation; table layout and interpolation accuracy in its docstring);
* :mod:`.fit`: the fitted rational reader of the score (:class:`FastScore`,
  :func:`fit_fast_score`);
* :mod:`.cache`: tables in memory and on disk (:func:`get_sas_table`,
  :func:`prebuild_sas_tables`, :func:`sas_cache_dir`, :func:`clear_memory_cache`).

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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# re-exported: the names of __all__, and public names outside it (``import X as X``)
from .build import DEFAULT_GRID_STEP as DEFAULT_GRID_STEP
from .build import build_unit_table, default_grid
from .cache import FORMAT_VERSION as FORMAT_VERSION
from .cache import clear_memory_cache, get_sas_table, prebuild_sas_tables, sas_cache_dir
from .density import _check_alpha, _check_gamma, _kappa
from .fit import FastScore as FastScore
from .fit import fit_fast_score as fit_fast_score
from .table import SasTable

__all__ = [
    "SasTable",
    "get_sas_table",
    "prebuild_sas_tables",
    "sas_cache_dir",
    "sas_log_pdf",
    "sas_score",
    "sas_score_slope_at_zero",
    "build_unit_table",
    "clear_memory_cache",
    "default_grid",
]


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


def sas_score_slope_at_zero(alpha: float, gamma: float = 1.0) -> float:
    """``-psi_gamma'(0) = kappa / c**2``: how steeply the SaS(alpha, gamma) score pulls near 0.

    Near 0 the score is linear, ``psi_gamma(x) ~ -(kappa / c**2) x`` with ``kappa =
    Gamma(3/alpha)/Gamma(1/alpha)`` and ``c = gamma**(1/alpha)``; equivalently the second
    derivative of ``-log f_gamma`` at 0. Closed form (no table is read): e.g. alpha 2 gives
    ``1/(2 gamma)``, alpha 1 ``2/gamma**2``, alpha 0.5 ``120/gamma**4``.
    """
    alpha = _check_alpha(alpha)
    c = _check_gamma(gamma) ** (1.0 / alpha)
    return _kappa(alpha) / c**2
