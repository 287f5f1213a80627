"""The baselines: no regularizer, L2 (ridge), L1 (lasso) and the smoothed L_p penalty.

Formulas and conventions: :mod:`hf_soft_diamond.priors.lp` (METHODS.md section 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..fused import Backend, TensorwiseKernel, _at_least_fp32
from ..priors import lp as lp_math
from .base import ElementwiseTerms, Regularizer, check_number, register_regularizer


def _stack_sum(terms: list[Tensor]) -> Tensor:
    return torch.stack([t.to(torch.float64) for t in terms]).sum()


@register_regularizer
class NoRegularizer(Regularizer):
    """``none``: no penalty; only measures (sparsity, spectra) the way the others do."""

    name = "none"

    def __init__(self, strength: float = 0.0, mode: str | None = None, fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        return torch.zeros((), dtype=torch.float64)

    def add_coupled_grad_(self, params, grads, lr):
        pass

    def elementwise_terms(self, lr):
        return ElementwiseTerms()


def _l2_grad_kernel(w: Tensor, g: Tensor, lam: Tensor) -> None:
    g.add_(w * lam)


def _scale_kernel(w: Tensor, factor: Tensor) -> None:
    w.mul_(factor)


def _l2_grad_term(w: Tensor, lam: Tensor) -> Tensor:
    return w * lam


def _l2_decoupled_update(w_old: Tensor, w_stepped: Tensor, lr_lam: Tensor) -> Tensor:
    # (1 - lr*lam) * w_old - lr * u  =  w_stepped - lr*lam * w_old  (AdamW's order)
    return w_stepped - w_old * lr_lam


@register_regularizer
class L2Regularizer(Regularizer):
    """``l2``: ridge, penalty ``strength/2 * ||w||^2``.

    coupled: ``grad += strength * w`` (torch's ``weight_decay`` in SGD/Adam);
    decoupled: ``w <- (1 - lr*strength) * w`` before the step (exactly AdamW's
    ``weight_decay=strength``).
    """

    name = "l2"

    def __init__(self, strength: float = 0.0, mode: str | None = None, fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)
        self._grad = TensorwiseKernel(_l2_grad_kernel, fused_backend)
        self._scale = TensorwiseKernel(_scale_kernel, fused_backend)

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        return _stack_sum([lp_math.l2_penalty(p) for p in params])

    def add_coupled_grad_(self, params, grads, lr):
        self._grad([params, grads], [self.strength])

    def decoupled_pre_step_(self, params, lr):
        self._scale([params], [1.0 - lr * self.strength])

    def elementwise_terms(self, lr):
        if self.mode == "coupled":
            return ElementwiseTerms(grad=_l2_grad_term, grad_scalars=(self.strength,))
        return ElementwiseTerms(update=_l2_decoupled_update, update_scalars=(lr * self.strength,))


def _l1_grad_kernel(w: Tensor, g: Tensor, lam: Tensor) -> None:
    g.add_(w.sign() * lam)


def _l1_prox_kernel(w: Tensor, threshold: Tensor) -> None:
    w.copy_(lp_math.l1_prox(w, threshold.to(w.dtype)))


def _l1_grad_term(w: Tensor, lam: Tensor) -> Tensor:
    return w.sign() * lam


def _l1_prox_update(w_old: Tensor, w_stepped: Tensor, threshold: Tensor) -> Tensor:
    return lp_math.l1_prox(w_stepped, threshold.to(w_stepped.dtype))


@register_regularizer
class L1Regularizer(Regularizer):
    """``l1``: lasso, penalty ``strength * ||w||_1``.

    coupled: ``grad += strength * sign(w)`` (subgradient 0 at 0);
    decoupled: after the step, the proximal soft threshold
    ``w <- sign(w) * max(|w| - lr*strength, 0)``, which leaves exact zeros.
    """

    name = "l1"

    def __init__(self, strength: float = 0.0, mode: str | None = None, fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)
        self._grad = TensorwiseKernel(_l1_grad_kernel, fused_backend)
        self._prox = TensorwiseKernel(_l1_prox_kernel, fused_backend)

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        return _stack_sum([lp_math.l1_penalty(p) for p in params])

    def add_coupled_grad_(self, params, grads, lr):
        self._grad([params, grads], [self.strength])

    def decoupled_post_step_(self, params, lr):
        self._prox([params], [lr * self.strength])

    def elementwise_terms(self, lr):
        if self.mode == "coupled":
            return ElementwiseTerms(grad=_l1_grad_term, grad_scalars=(self.strength,))
        return ElementwiseTerms(update=_l1_prox_update, update_scalars=(lr * self.strength,))


def _lp_grad_kernel(w: Tensor, g: Tensor, lam: Tensor, p: Tensor, eps: Tensor) -> None:
    g.add_(lp_math.lp_grad(_at_least_fp32(w), p, eps).to(g.dtype) * lam)


def _lp_grad_term(w: Tensor, lam: Tensor, p: Tensor, eps: Tensor) -> Tensor:
    return lp_math.lp_grad(w, p, eps) * lam


def _lp_decoupled_kernel(w: Tensor, lr_lam: Tensor, p: Tensor, eps: Tensor) -> None:
    # w <- w - lr * strength * dR/dw
    wf = _at_least_fp32(w)
    w.sub_((lp_math.lp_grad(wf, p, eps) * lr_lam).to(w.dtype))


def _lp_decoupled_update(w_old: Tensor, w_stepped: Tensor, lr_lam: Tensor, p: Tensor, eps: Tensor) -> Tensor:
    return w_stepped - lp_math.lp_grad(w_old, p, eps) * lr_lam


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

    def __init__(self, strength: float = 0.0, mode: str | None = None, p: float = 1.0, eps: float = 1e-3,
                 fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)
        self.p = check_number("lp_p", p, low=0.0, high=2.0, low_open=True)
        self.eps = check_number("lp_eps", eps, low=0.0, low_open=True)
        self._grad = TensorwiseKernel(_lp_grad_kernel, fused_backend)
        self._decoupled = TensorwiseKernel(_lp_decoupled_kernel, fused_backend)

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        return _stack_sum([lp_math.lp_penalty(w, self.p, self.eps) for w in params])

    def add_coupled_grad_(self, params, grads, lr):
        self._grad([params, grads], [self.strength, self.p, self.eps])

    def decoupled_pre_step_(self, params, lr):
        self._decoupled([params], [lr * self.strength, self.p, self.eps])

    def elementwise_terms(self, lr):
        if self.mode == "coupled":
            return ElementwiseTerms(grad=_lp_grad_term, grad_scalars=(self.strength, self.p, self.eps))
        return ElementwiseTerms(update=_lp_decoupled_update, update_scalars=(lr * self.strength, self.p, self.eps))

    def hparams(self):
        return {**super().hparams(), "lp_p": self.p, "lp_eps": self.eps}
