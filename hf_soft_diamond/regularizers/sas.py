"""``sas``: the soft-diamond symmetric alpha-stable prior (Adigun & Kosko, arXiv 2412.20724).

Each regularized weight gets an independent SaS prior with tail index ``alpha`` in
(0, 2] and *dispersion* ``gamma > 0`` (characteristic function exp(-gamma |t|^alpha);
scale ``c = gamma**(1/alpha)``). The MAP objective adds
``-strength * sum_i log f_gamma(w_i)``; the logged penalty is shifted to be 0 at w = 0:
``strength * sum_i [log f_gamma(0) - log f_gamma(w_i)]`` (same gradient).

With ``psi = d/dw log f`` read from the unit-dispersion lookup table
(:mod:`hf_soft_diamond.priors.sas`) and ``psi_gamma(w) = psi_1(w/c)/c``:

* coupled (the paper, with SGD + momentum): ``grad += -strength * psi_gamma(w)``. Near 0
  that is ``strength * kappa / c^2 * w`` (:meth:`SaSRegularizer.curvature_at_zero`), steep
  for small ``c``: once ``lr * strength * kappa / c^2 > 2`` a plain SGD step overshoots 0 and
  flings the weights that come near 0 outwards instead of letting them settle (the hooks
  warn; at alpha 0.5, gamma 0.01, ``c = 1e-4`` and ``kappa / c^2 = 1.2e10``);
* decoupled (the default under Adam-family optimizers, like AdamW for L2): after the
  optimizer's own step ``w_hat``, ``w <- w_hat + lr * strength * psi_gamma(w_hat)``, and
  0 where that pull would carry the weight across zero. The pull always points at 0
  (psi is odd and negative for w > 0); near 0 it is linear with slope
  ``psi'(0) / c^2``, so without the guard a step with ``lr * strength * |psi'(0)| / c^2 > 2``
  would overshoot and oscillate (at alpha 0.5, gamma 0.1 the slope is ~1e6). With it the
  update is stable at any ``lr * strength`` and leaves exact zeros, as L1's proximal
  step does; to first order in ``lr`` it is AdamW's order (pull at ``w_old``, then the step).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ..fused import Backend
from ..priors.sas import get_sas_table, sas_log_pdf, sas_score_slope_at_zero
from .base import Citation, ElementwiseTerms, Param, Regularizer, register_regularizer

SCORE_PATHS: tuple[str, ...] = ("fast", "table")


# The per-step formulas (the only place they are written; hooks and RegularizedAdamW derive
# from them). The partials hold the table and a bool (not a bound method, a new object per
# access), so compiled graphs are reused across regularizers.
def _sas_grad(w: Tensor, coef: Tensor, inv_c: Tensor, *, table, fast: bool) -> Tensor:
    # -strength * psi_gamma(w) = -strength * psi_1(w/c) / c ; coef = strength / c
    return table.score_signed(w, inv_c.to(w.dtype), fast=fast, out_scale=-coef.to(w.dtype))


def _sas_pull(w_old: Tensor, w_stepped: Tensor, coef: Tensor, inv_c: Tensor, *, table, fast: bool) -> Tensor:
    # after the step: w_hat + lr * strength * psi_gamma(w_hat), and 0 where that crosses (or reaches) zero;
    # coef = lr * strength / c. psi is odd and pulls towards 0, so this is sign(w_hat) * max(|w_hat| - m, 0)
    # with m = -coef * psi_1(|w_hat| / c) >= 0: the same roundings as w_hat + pull (a - b = -(-a + b) exactly),
    # without comparisons or selects (which cost as much again in the fused AdamW loop); max(NaN, 0) is
    # NaN, so a NaN stays NaN for the guard
    magnitude = w_stepped.abs()
    shrunk = torch.relu(magnitude + table.score_signed(magnitude, inv_c.to(magnitude.dtype), fast=fast,
                                                       out_scale=coef.to(magnitude.dtype)))
    return torch.copysign(shrunk, w_stepped)


@register_regularizer
class SaSRegularizer(Regularizer):
    """Soft-diamond SaS prior on every regularized weight.

    Args:
        strength: lambda >= 0.
        mode: ``"coupled"`` (the paper) or ``"decoupled"``.
        alpha: tail index in (0, 2]; 2 is Gaussian (ridge), 1 Cauchy, < 1 sub-Cauchy.
        gamma: dispersion > 0 (the paper's best CIFAR-10 setting: alpha=1.5, gamma=0.5).
        score_path: how the per-step kernels read psi_1. ``"fast"`` (default): the
            rational approximant :meth:`~hf_soft_diamond.priors.sas.SasTable.score_unit_fast`
            (no log, no gather; about 2n+8 flops, n = 4-9), measured max relative error of
            the score vs the table over z = |w|/c in [1e-30, 1e30] (float32): <= 1.5e-4 for
            alpha in [0.3, 2) (e.g. 9.3e-5 at 0.3, 1.0e-4 at 0.5 (1.2e-4 with float32
            rounding on a finer grid), 4.5e-5 at 1.3, 3.5e-5 at 1.5, 9.8e-5 at 1.9), 3.3e-4 at 0.25,
            exact at alpha 1 and 2 (table read where no
            fit exists, alpha < 0.25); slope at 0 and tail -(1+alpha)/z exact. ``"table"``:
            the exact cubic table read (~3e-7; log + gather, ~10x slower on CPU).
            ``penalty_terms`` always uses the exact table.
    """

    name = "sas"
    decoupled_stops_at_zero = True
    params = (
        Param("alpha", "sas_alpha", 1.5, "SaS tail index alpha in (0, 2] (2: Gaussian, 1: Cauchy, <1: sub-Cauchy).",
              low=0.0, high=2.0, low_open=True),
        Param("gamma", "sas_gamma", 0.5, "SaS dispersion gamma > 0 (scale gamma**(1/alpha)).", low=0.0, low_open=True),
        Param("score_path", "sas_score_path", "fast", "How the per-step kernels read the score: 'fast' (rational "
              "approximant, <= 1.5e-4 relative error) or 'table' (exact cubic table read).", choices=SCORE_PATHS),
    )
    citation = Citation(
        title="soft-diamond symmetric alpha-stable prior",
        reference="Adigun & Kosko, Soft Diamond Regularizers for Deep Learning, arXiv:2412.20724",
        bibtex="@article{adigun2024softdiamond,\n  title={Soft Diamond Regularizers for Deep Learning},\n"
               "  author={Adigun, Olaoluwa and Kosko, Bart},\n  journal={arXiv preprint arXiv:2412.20724},\n"
               "  year={2024}\n}")
    density_family = "sas"

    def __init__(self, strength: float = 0.0, mode: str | None = None, alpha: float = 1.5, gamma: float = 0.5,
                 fused_backend: Backend = "auto", score_path: str = "fast") -> None:
        super().__init__(strength, mode, fused_backend)
        self._set_params(alpha=alpha, gamma=gamma, score_path=score_path)
        self.scale = self.gamma ** (1.0 / self.alpha)
        # the table (built or read from the disk cache) and the kernels are made on first use, so
        # that validating arguments (TrainingArguments.__post_init__) has no side effects
        self._table = None

    @property
    def table(self):
        """The unit-dispersion score table of ``alpha`` (:func:`~hf_soft_diamond.priors.sas.get_sas_table`)."""
        if self._table is None:
            self._table = get_sas_table(self.alpha)
            if self.score_path == "fast":
                _ = self._table.fast  # fit now (tens of ms), outside torch.compile
        return self._table

    @functools.cached_property
    def _grad(self):
        return functools.partial(_sas_grad, table=self.table, fast=self.score_path == "fast")

    @functools.cached_property
    def _pull(self):
        return functools.partial(_sas_pull, table=self.table, fast=self.score_path == "fast")

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        zero = torch.zeros((), dtype=torch.float64)
        log_f0 = sas_log_pdf(zero, self.alpha, self.gamma)
        return torch.stack([
            (log_f0 - sas_log_pdf(w.detach().double(), self.alpha, self.gamma)).sum() for w in params
        ]).sum()

    def curvature_at_zero(self) -> float:
        return sas_score_slope_at_zero(self.alpha, self.gamma)

    def elementwise_terms(self, lr, mode=None):
        if self._mode_of(mode) == "coupled":
            return ElementwiseTerms(grad=self._grad, grad_scalars=(self.strength / self.scale, 1.0 / self.scale))
        return ElementwiseTerms(update=self._pull, update_scalars=(lr * self.strength / self.scale, 1.0 / self.scale))

    @classmethod
    def log_density(cls, x: Tensor, hparams: dict) -> Tensor:
        return sas_log_pdf(x, float(hparams["sas_alpha"]), float(hparams["sas_gamma"]))
