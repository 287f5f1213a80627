"""``pwd``: decoupled weight decay for any p norm (Outmezguine & Levi, arXiv 2404.10824).

Formula and conventions in :mod:`hf_soft_diamond.priors.pwd`. One update term (see
:class:`~hf_soft_diamond.regularizers.base.ElementwiseTerms`) reads the weights before the
step and the optimizer's result: the factor ``X/(X*(1+lr*l2_strength) + p*lr*strength)``
of the former (``X = |w|^(2-p)``) multiplies the latter. The hook path keeps a float32
copy of the regularized weights from before the step (one extra copy, as the factor
buffer it replaces); RegularizedAdamW has them in registers.

p schedule (the authors' suggestion): with ``p_schedule_steps = S > 0`` the exponent
moves linearly from ``p_start`` (default 2) to ``p`` over the first S optimizer steps;
weights that hit zero on the way stay zero.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ..fused import Backend
from ..priors import lp as lp_math
from ..priors.pwd import flush_subnormal, pwd_factor
from .base import Citation, ElementwiseTerms, Param, Regularizer, register_regularizer


# The per-step formula (the only place it is written; hooks and RegularizedAdamW derive from it):
# the factor X / (X (1 + lr l2) + p lr lambda) of the weights before the step, applied to the
# optimizer's result, with subnormal residue flushed to exactly 0.
def _pwd_update(w_old: Tensor, w_stepped: Tensor, p: Tensor, decay: Tensor, l2_decay: Tensor) -> Tensor:
    """During a p schedule: the exponent as a tensor (no recompile as p moves)."""
    return flush_subnormal(w_stepped * pwd_factor(w_old, p, decay, l2_decay))


def _pwd_fixed_p_update(w_old: Tensor, w_stepped: Tensor, decay: Tensor, l2_decay: Tensor, *, p: float) -> Tensor:
    """Fixed p: the exponent baked in (``|w|``, ``sqrt`` ... instead of ``pow``)."""
    return flush_subnormal(w_stepped * pwd_factor(w_old, p, decay, l2_decay))


@register_regularizer
class PWDRegularizer(Regularizer):
    """Decoupled, multiplicative L_p weight decay; stable for 0 < p < 1.

    Args:
        strength: lambda >= 0 (the decay multiplies ``p * lr * lambda``).
        mode: only ``"decoupled"``.
        p: target exponent in (0, 2].
        l2_strength: elastic-net lambda_2 >= 0 (0: plain pWD).
        p_start: starting exponent of the p schedule, in [p, 2].
        p_schedule_steps: length of the linear p schedule in optimizer steps (0: off).
    """

    name = "pwd"
    decoupled_stops_at_zero = True
    modes = ("decoupled",)
    paper_mode = "decoupled"
    params = (
        Param("p", "lp_p", 1.0, "Exponent p in (0, 2] of the decayed norm.", low=0.0, high=2.0, low_open=True),
        Param("l2_strength", "pwd_l2_strength", 0.0, "Elastic-net L2 strength >= 0 (0: plain pWD).", low=0.0),
        Param("p_start", "pwd_p_start", 2.0, "Starting exponent of the p schedule, in [p, 2].", low=0.0, high=2.0,
              low_open=True),
        Param("p_schedule_steps", "pwd_p_schedule_steps", 0, "Optimizer steps over which p moves linearly from "
              "p_start to p (0: no schedule).", low=0, integer=True),
    )
    citation = Citation(
        title="decoupled p-norm weight decay (pWD)",
        reference="Outmezguine & Levi, Decoupled Weight Decay for Any p Norm, arXiv:2404.10824",
        bibtex="@article{outmezguine2024pwd,\n  title={Decoupled Weight Decay for Any p Norm},\n"
               "  author={Outmezguine, Nadav Joseph and Levi, Noam},\n  journal={arXiv preprint arXiv:2404.10824},\n"
               "  year={2024}\n}")
    density_family = "laplace"

    def __init__(self, strength: float = 0.0, mode: str | None = None, p: float = 1.0, l2_strength: float = 0.0,
                 p_start: float = 2.0, p_schedule_steps: int = 0, fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)
        self._set_params(p=p, l2_strength=l2_strength, p_start=p_start, p_schedule_steps=p_schedule_steps)
        if self.p_start < self.p:
            raise ValueError(f"`pwd_p_start` must be a finite number in [{self.p}, 2.0] (lp_p to 2), got {p_start!r}.")
        self._fixed_p_update = functools.partial(_pwd_fixed_p_update, p=self.p)

    def current_p(self) -> float:
        """The exponent in force at the current optimizer step."""
        if self.p_schedule_steps <= 0 or self.step >= self.p_schedule_steps:
            return self.p
        frac = self.step / self.p_schedule_steps
        return self.p_start + (self.p - self.p_start) * frac

    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        """``sum |w|^p`` at the current p (+ ``l2_strength/strength * 1/2 ||w||^2`` if elastic)."""
        p = self.current_p()
        total = torch.stack([w.double().abs().pow(p).sum() for w in params]).sum()
        if self.l2_strength and self.strength:
            total = total + (self.l2_strength / self.strength) * torch.stack(
                [lp_math.l2_penalty(w) for w in params]).sum()
        return total

    def elementwise_terms(self, lr, mode=None):
        p = self.current_p()
        if p == self.p:  # no schedule, or it has ended
            return ElementwiseTerms(update=self._fixed_p_update, update_reads_old=True,
                                    update_scalars=(p * lr * self.strength, lr * self.l2_strength))
        return ElementwiseTerms(update=_pwd_update, update_reads_old=True,
                                update_scalars=(p, p * lr * self.strength, lr * self.l2_strength))

