"""The SaS unit table and its torch readers (:class:`SasTable`).

One job: hold the float64 samples of one alpha's unit-dispersion table and read the
score and log-density from them in torch (any dtype float32/float64, any device); the
fast path delegates to the rational reader of :mod:`.fit`. Values are at dispersion
``gamma = 1``, argument ``z = |x|/c >= 0`` (``c = gamma**(1/alpha)``); scaling to other
gammas is the caller's (:func:`~hf_soft_diamond.priors.sas.sas_score`).

Table layout
------------
A uniform grid in ``t = log z`` (``z = |x|/c >= 0``), step ``h``, on ``[t_min, t_max]``,
holding two bounded, slowly varying functions (computed in float64, :mod:`.build`):

* ``r(t) = psi_1(z) * (1 + z**2) / z``: tends to ``-kappa`` as z -> 0 (``kappa =
  Gamma(3/alpha)/Gamma(1/alpha)``, the near-0 slope) and to ``-(1+alpha)`` as
  z -> inf (``psi_1 ~ -(1+alpha)/z``);
* ``q(t) = log f_1(z) + (1+alpha)/2 * log(1 + z**2)``: tends to ``log f_1(0)`` and to
  ``log(alpha*Gamma(alpha)*sin(pi*alpha/2)/pi)``.

They are read by cubic Hermite interpolation in t (per-cell coefficients, slopes from
4th-order differences of the table) and held constant outside the grid (the default
range, chosen so that this costs < 1e-9 relative: :func:`~.build.default_grid`).
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
"""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import torch
from scipy.special import gammaln
from torch import Tensor

from .density import _check_alpha, _kappa
from .fit import FastScore, fit_fast_score


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
