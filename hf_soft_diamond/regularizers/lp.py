"""The baselines: no regularizer, L2 (ridge), L1 (lasso) and the smoothed L_p penalty.

Formulas and conventions: :mod:`hf_soft_diamond.priors.lp` (docs/methods.md §4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..fused import Backend
from ..priors import lp as lp_math
from .base import Citation, ElementwiseTerms, Param, Regularizer, register_regularizer

#: The soft-diamond paper compares its prior with L1 and L2; cards of the baselines cite it as such.
BASELINE_CITATION = Citation(
    title="{name} baseline",
    reference="the L1/L2 baselines of Adigun & Kosko, Soft Diamond Regularizers for Deep Learning, arXiv:2412.20724",
    bibtex="@article{adigun2024softdiamond,\n  title={Soft Diamond Regularizers for Deep Learning},\n"
           "  author={Adigun, Olaoluwa and Kosko, Bart},\n  journal={arXiv preprint arXiv:2412.20724},\n"
           "  year={2024}\n}")


def _stack_sum(terms: list[Tensor]) -> Tensor:
    return torch.stack([t.to(torch.float64) for t in terms]).sum()


@register_regularizer
class NoRegularizer(Regularizer):
    """``none``: no penalty; only measures (sparsity, spectra) the way the others do."""

    name = "none"
    citation = Citation(title="no regularizer (baseline)", reference="no regularizer: the unregularized baseline",
                        bibtex="")  # a baseline cites no prior
    density_family = "laplace"
    acts = False  # at any strength

    def __init__(self, strength: float = 0.0, mode: str | None = None, fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        return torch.zeros((), dtype=torch.float64)

    def elementwise_terms(self, lr, mode=None):
        return ElementwiseTerms()


# The per-step formulas of the baselines (the only place they are written; see ElementwiseTerms).
def _l2_grad(w: Tensor, lam: Tensor) -> Tensor:
    return w * lam


def _l2_decay(w: Tensor, keep: Tensor) -> Tensor:
    # AdamW's decay before the step: w * (1 - lr * lambda)
    return w * keep


def _l1_grad(w: Tensor, lam: Tensor) -> Tensor:
    return w.sign() * lam


def _l1_prox(w_old: Tensor, w_stepped: Tensor, threshold: Tensor) -> Tensor:
    return lp_math.l1_prox(w_stepped, threshold.to(w_stepped.dtype))


def _lp_grad(w: Tensor, lam: Tensor, p: Tensor, eps: Tensor) -> Tensor:
    return lp_math.lp_grad(w, p, eps) * lam


def _lp_decoupled(w: Tensor, lr_lam: Tensor, p: Tensor, eps: Tensor) -> Tensor:
    # the penalty's gradient step outside the optimizer: w - lr * lambda * dR/dw
    return w - lp_math.lp_grad(w, p, eps) * lr_lam


@register_regularizer
class L2Regularizer(Regularizer):
    """``l2``: ridge, penalty ``strength/2 * ||w||^2``.

    coupled: ``grad += strength * w`` (torch's ``weight_decay`` in SGD/Adam);
    decoupled: ``w <- (1 - lr*strength) * w`` before the step (exactly AdamW's
    ``weight_decay=strength``).
    """

    name = "l2"
    citation = Citation(title="L2 (ridge) baseline", reference=BASELINE_CITATION.reference,
                        bibtex=BASELINE_CITATION.bibtex)
    density_family = "gaussian"

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        return _stack_sum([lp_math.l2_penalty(p) for p in params])

    def curvature_at_zero(self) -> float:
        return 1.0

    def elementwise_terms(self, lr, mode=None):
        if self._mode_of(mode) == "coupled":
            return ElementwiseTerms(grad=_l2_grad, grad_scalars=(self.strength,))
        return ElementwiseTerms(pre=_l2_decay, pre_scalars=(1.0 - lr * self.strength,))


@register_regularizer
class L1Regularizer(Regularizer):
    """``l1``: lasso, penalty ``strength * ||w||_1``.

    coupled: ``grad += strength * sign(w)`` (subgradient 0 at 0);
    decoupled: after the step, the proximal soft threshold
    ``w <- sign(w) * max(|w| - lr*strength, 0)``, which leaves exact zeros.
    """

    name = "l1"
    decoupled_stops_at_zero = True
    citation = Citation(title="L1 (lasso) baseline", reference=BASELINE_CITATION.reference,
                        bibtex=BASELINE_CITATION.bibtex)
    density_family = "laplace"

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        return _stack_sum([lp_math.l1_penalty(p) for p in params])

    def elementwise_terms(self, lr, mode=None):
        if self._mode_of(mode) == "coupled":
            return ElementwiseTerms(grad=_l1_grad, grad_scalars=(self.strength,))
        return ElementwiseTerms(update=_l1_prox, update_scalars=(lr * self.strength,))


@register_regularizer
class LpRegularizer(Regularizer):
    """``lp``: smoothed L_p penalty ``strength * sum((w^2+eps^2)^(p/2) - eps^p)``.

    coupled: ``grad += strength * dR/dw``; decoupled: ``w <- w - lr * strength * dR/dw``
    before the step (the penalty's gradient step outside the optimizer, for Adam).

    The gradient ``strength * p * w * (w^2+eps^2)^(p/2-1)`` stays bounded near 0
    thanks to ``eps`` (about ``strength*p*eps^(p-1)`` at most; below ``eps`` the
    pull is linear, like ridge). The default ``eps=1e-3`` keeps that bound moderate
    for p < 1; a tiny eps makes the coupled form stiff, which is why a stable
    decoupled L_p decay at any p is ``pwd``.

    Args:
        p: exponent in (0, 2].
        eps: smoothing > 0.
    """

    name = "lp"
    params = (
        Param("p", "lp_p", 1.0, "Exponent p in (0, 2] of the smoothed |w|^p penalty.", low=0.0, high=2.0,
              low_open=True),
        Param("eps", "lp_eps", 1e-3, "Smoothing eps > 0: (w^2 + eps^2)^(p/2) - eps^p.", low=0.0, low_open=True),
    )
    citation = Citation(title="smoothed L_p baseline", reference=BASELINE_CITATION.reference,
                        bibtex=BASELINE_CITATION.bibtex)
    density_family = "laplace"

    def __init__(self, strength: float = 0.0, mode: str | None = None, p: float = 1.0, eps: float = 1e-3,
                 fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)
        self._set_params(p=p, eps=eps)

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        return _stack_sum([lp_math.lp_penalty(w, self.p, self.eps) for w in params])

    def curvature_at_zero(self) -> float:
        return self.p * self.eps ** (self.p - 2.0)

    def elementwise_terms(self, lr, mode=None):
        if self._mode_of(mode) == "coupled":
            return ElementwiseTerms(grad=_lp_grad, grad_scalars=(self.strength, self.p, self.eps))
        return ElementwiseTerms(pre=_lp_decoupled, pre_scalars=(lr * self.strength, self.p, self.eps))
