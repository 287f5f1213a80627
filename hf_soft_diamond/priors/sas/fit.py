"""The fitted rational reader of the SaS unit score (:class:`FastScore`, :func:`fit_fast_score`).

One job: fit, per alpha, a rational approximant of ``psi_1`` to a :class:`~.table.SasTable`
(in float64 numpy, checked in float32 torch) and evaluate it (elementwise torch, no log or
gather), for :meth:`~.table.SasTable.score_unit_fast` and
:meth:`~.table.SasTable.score_signed`.

Form (unit dispersion, ``z = |x|/c >= 0``)::

    psi_1(z) ~= -kappa * G(v) / (1/z + z/s0),  s0 = (1+alpha)/kappa,

``v = 1/(1 + (z/z0)**p)`` in [0, 1], ``z0 = sqrt(s0)``, ``G = A(v)/B(v)`` (degree n / n,
Horner), with ``A(0) = B(0)`` (tail ``-(1+alpha)/z`` exact) and ``A(1) = B(1) = 1``
(slope ``-kappa`` at 0 exact). ``p = 2`` (a rational function of z^2) for alpha > 1;
``p = 1/2`` (one sqrt) below, where the tail correction z^-alpha spans many decades of z
and ``q = sqrt(z/z0)`` compresses them (alpha = 0.5: the tail series is exactly rational
in q). Errors are relative, against the table read in float64.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .table import SasTable

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
