"""L2, L1 and L_p penalties, their gradients and proximal steps (docs/methods.md §4).

Conventions (one place, used by every caller):

* ``lambda`` is the strength multiplying the penalty; ``lr`` (eta) is the scheduled
  learning rate of the current optimizer step.
* L2 penalty is ``lambda/2 * ||w||^2`` so that the coupled gradient is ``lambda*w``
  and the decoupled step ``w <- w - lr*lambda*w`` is exactly AdamW's
  ``weight_decay=lambda``.
* L1 penalty is ``lambda * ||w||_1``: coupled gradient ``lambda*sign(w)``; the
  decoupled form is the proximal soft threshold ``sign(w)*max(|w|-lr*lambda, 0)``,
  which produces exact zeros.
* L_p penalty (0 < p <= 2) is smoothed by ``eps`` so that it is differentiable
  everywhere: ``lambda * sum((w^2+eps^2)^(p/2) - eps^p)`` with gradient
  ``lambda * p * w * (w^2+eps^2)^(p/2-1)``. For p < 1 the unsmoothed gradient
  diverges at 0; with ``eps`` it is linear for ``|w| << eps`` and bounded by about
  ``lambda*p*eps^(p-1)``. The decoupled
  answer to that divergence is pWD (:mod:`hf_soft_diamond.priors.pwd`).

All functions are elementwise torch code on one tensor (no Python branches on
data) so that :mod:`hf_soft_diamond.fused` can run them eagerly or compile them
into one loop.
"""

from __future__ import annotations

from torch import Tensor


def l2_penalty(w: Tensor) -> Tensor:
    """``1/2 * sum(w^2)`` (without the strength), accumulated in float64."""
    return 0.5 * w.double().square().sum()


def l1_penalty(w: Tensor) -> Tensor:
    """``sum(|w|)`` (without the strength), accumulated in float64."""
    return w.double().abs().sum()


def lp_penalty(w: Tensor, p: float, eps: float) -> Tensor:
    """Smoothed ``sum((w^2+eps^2)^(p/2) - eps^p)`` (without the strength), in float64."""
    w = w.double()
    return ((w.square() + eps**2).pow(p / 2) - eps**p).sum()


def lp_grad(w: Tensor, p: Tensor | float, eps: Tensor | float) -> Tensor:
    """Gradient of :func:`lp_penalty`: ``p * w * (w^2+eps^2)^(p/2-1)``."""
    return p * w * (w.square() + eps * eps).pow(p / 2 - 1.0)


def l1_prox(w: Tensor, threshold: Tensor | float) -> Tensor:
    """Soft threshold ``sign(w) * max(|w| - threshold, 0)`` (the L1 proximal map)."""
    return w.sign() * (w.abs() - threshold).clamp_min(0.0)
