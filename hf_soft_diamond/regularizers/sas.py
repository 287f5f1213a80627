"""``sas``: the soft-diamond symmetric alpha-stable prior (Adigun & Kosko, arXiv 2412.20724).

Each regularized weight gets an independent SaS prior with tail index ``alpha`` in
(0, 2] and *dispersion* ``gamma > 0`` (characteristic function exp(-gamma |t|^alpha);
scale ``c = gamma**(1/alpha)``). The MAP objective adds
``-strength * sum_i log f_gamma(w_i)``; the logged penalty is shifted to be 0 at w = 0:
``strength * sum_i [log f_gamma(0) - log f_gamma(w_i)]`` (same gradient).

With ``psi = d/dw log f`` read from the unit-dispersion lookup table
(:mod:`hf_soft_diamond.priors.sas`) and ``psi_gamma(w) = psi_1(w/c)/c``:

* coupled (the paper, with SGD + momentum): ``grad += -strength * psi_gamma(w)``;
* decoupled (for adaptive optimizers, like AdamW for L2):
  ``w <- w + lr * strength * psi_gamma(w)`` applied just before the optimizer's own
  update, as AdamW applies its decay. For optimizers whose update does not read
  the weights (SGD, Adam, RMSprop, ... with weight_decay 0) this equals adding
  ``lr*strength*psi_gamma(w_old)`` after the step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ..fused import Backend, TensorwiseKernel, _at_least_fp32
from ..priors.sas import get_sas_table, sas_log_pdf
from .base import ElementwiseTerms, Regularizer, check_number, register_regularizer


SCORE_PATHS: tuple[str, ...] = ("fast", "table")


def _grad_kernel(w: Tensor, g: Tensor, coef: Tensor, inv_c: Tensor, *, table, fast: bool) -> None:
    # g += -strength * psi_gamma(w) = -strength * psi_1(w/c) / c ; coef = strength / c.
    # The partials hold the table and a bool (not a bound method, a new object per
    # access), so compiled graphs are reused across regularizers.
    wf = _at_least_fp32(w)
    g.add_(table.score_signed(wf, inv_c.to(wf.dtype), fast=fast, out_scale=-coef.to(wf.dtype)).to(g.dtype))


def _decoupled_kernel(w: Tensor, coef: Tensor, inv_c: Tensor, *, table, fast: bool) -> None:
    # w += lr * strength * psi_gamma(w) ; coef = lr * strength / c
    wf = _at_least_fp32(w)
    w.add_(table.score_signed(wf, inv_c.to(wf.dtype), fast=fast, out_scale=coef.to(wf.dtype)).to(w.dtype))


def _grad_term(w: Tensor, coef: Tensor, inv_c: Tensor, *, table, fast: bool) -> Tensor:
    # -strength * psi_gamma(w); coef = strength / c
    return table.score_signed(w, inv_c.to(w.dtype), fast=fast, out_scale=-coef.to(w.dtype))


def _decoupled_update(w_old: Tensor, w_stepped: Tensor, coef: Tensor, inv_c: Tensor, *, table, fast: bool) -> Tensor:
    # the pull lr * strength * psi_gamma(w_old), applied with the step (as AdamW's decay)
    return w_stepped + table.score_signed(w_old, inv_c.to(w_old.dtype), fast=fast, out_scale=coef.to(w_old.dtype))


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
            rounding on a finer grid), 4.5e-5 at 1.3, 3.5e-5 at 1.5, 9.8e-5 at 1.9), 3.3e-4 at 0.25, exact at alpha 1 and 2 (table read where no
            fit exists, alpha < 0.25); slope at 0 and tail -(1+alpha)/z exact. ``"table"``:
            the exact cubic table read (~3e-7; log + gather, ~10x slower on CPU).
            ``penalty_terms`` always uses the exact table.
    """

    name = "sas"

    def __init__(self, strength: float = 0.0, mode: str | None = None, alpha: float = 1.5, gamma: float = 0.5,
                 fused_backend: Backend = "auto", score_path: str = "fast") -> None:
        super().__init__(strength, mode, fused_backend)
        self.alpha = check_number("sas_alpha", alpha, low=0.0, high=2.0, low_open=True)
        self.gamma = check_number("sas_gamma", gamma, low=0.0, low_open=True)
        self.scale = self.gamma ** (1.0 / self.alpha)
        if score_path not in SCORE_PATHS:
            raise ValueError(f"`sas_score_path` must be one of {SCORE_PATHS}, got {score_path!r}.")
        self.score_path = score_path
        self.table = get_sas_table(self.alpha)
        if score_path == "fast":
            _ = self.table.fast  # fit now (tens of ms), outside torch.compile
        fast = score_path == "fast"
        self._grad = TensorwiseKernel(functools.partial(_grad_kernel, table=self.table, fast=fast), fused_backend)
        self._decoupled = TensorwiseKernel(functools.partial(_decoupled_kernel, table=self.table, fast=fast),
                                           fused_backend)
        self._grad_term = functools.partial(_grad_term, table=self.table, fast=fast)
        self._decoupled_update = functools.partial(_decoupled_update, table=self.table, fast=fast)

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        zero = torch.zeros((), dtype=torch.float64)
        log_f0 = sas_log_pdf(zero, self.alpha, self.gamma)
        return torch.stack([
            (log_f0 - sas_log_pdf(w.detach().double(), self.alpha, self.gamma)).sum() for w in params
        ]).sum()

    def add_coupled_grad_(self, params, grads, lr):
        self._grad([params, grads], [self.strength / self.scale, 1.0 / self.scale])

    def decoupled_pre_step_(self, params, lr):
        self._decoupled([params], [lr * self.strength / self.scale, 1.0 / self.scale])

    def elementwise_terms(self, lr):
        if self.mode == "coupled":
            return ElementwiseTerms(grad=self._grad_term, grad_scalars=(self.strength / self.scale, 1.0 / self.scale))
        return ElementwiseTerms(update=self._decoupled_update,
                                update_scalars=(lr * self.strength / self.scale, 1.0 / self.scale))

    def hparams(self):
        return {**super().hparams(), "sas_alpha": self.alpha, "sas_gamma": self.gamma,
                "sas_score_path": self.score_path}
