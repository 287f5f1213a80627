"""``pwd``: decoupled weight decay for any p norm (Outmezguine & Levi, arXiv 2404.10824).

Formula and conventions in :mod:`hf_soft_diamond.priors.pwd`. Implemented as a pair of
optimizer step hooks so it works with any torch optimizer: before the step the factor
``X/(X*(1+lr*l2_strength) + p*lr*strength)`` is computed from the current weights
(``X = |w|^(2-p)``) into a persistent per-tensor buffer (one extra copy of the
regularized weights, fp32 or the weights' dtype if wider); after the step the weights are multiplied by it.

p schedule (the authors' suggestion): with ``p_schedule_steps = S > 0`` the exponent
moves linearly from ``p_start`` (default 2) to ``p`` over the first S optimizer steps;
weights that hit zero on the way stay zero.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ..fused import Backend, TensorwiseKernel, _at_least_fp32
from ..priors import lp as lp_math
from ..priors.pwd import pwd_factor
from .base import ElementwiseTerms, Regularizer, check_number, register_regularizer


def _factor_kernel(w: Tensor, out: Tensor, p: Tensor, decay: Tensor, l2_decay: Tensor) -> None:
    """Factor with the exponent as a tensor (during a p schedule: no recompile as p moves)."""
    out.copy_(pwd_factor(_at_least_fp32(w), p, decay, l2_decay))


def _fixed_p_factor_kernel(w: Tensor, out: Tensor, decay: Tensor, l2_decay: Tensor, *, p: float) -> None:
    """Factor with the exponent baked in (fixed p: ``|w|``, ``sqrt`` ... instead of ``pow``)."""
    out.copy_(pwd_factor(_at_least_fp32(w), p, decay, l2_decay))


def _apply_kernel(w: Tensor, factor: Tensor) -> None:
    w.mul_(factor.to(w.dtype))


def _update(w_old: Tensor, w_stepped: Tensor, p: Tensor, decay: Tensor, l2_decay: Tensor) -> Tensor:
    return w_stepped * pwd_factor(w_old, p, decay, l2_decay)


def _fixed_p_update(w_old: Tensor, w_stepped: Tensor, decay: Tensor, l2_decay: Tensor, *, p: float) -> Tensor:
    return w_stepped * pwd_factor(w_old, p, decay, l2_decay)


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
    modes = ("decoupled",)
    paper_mode = "decoupled"

    def __init__(self, strength: float = 0.0, mode: str | None = None, p: float = 1.0, l2_strength: float = 0.0,
                 p_start: float = 2.0, p_schedule_steps: int = 0, fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)
        self.p = check_number("lp_p", p, low=0.0, high=2.0, low_open=True)
        self.l2_strength = check_number("pwd_l2_strength", l2_strength, low=0.0)
        self.p_start = check_number("pwd_p_start", p_start, low=self.p, high=2.0)
        self.p_schedule_steps = int(check_number("pwd_p_schedule_steps", p_schedule_steps, low=0))
        self._factor = TensorwiseKernel(_factor_kernel, fused_backend)
        self._fixed_factor = TensorwiseKernel(functools.partial(_fixed_p_factor_kernel, p=self.p), fused_backend)
        self._apply = TensorwiseKernel(_apply_kernel, fused_backend)
        self._buffers: dict[int, Tensor] = {}
        self._fixed_p_update = functools.partial(_fixed_p_update, p=self.p)

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

    def _buffers_for(self, params: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for w in params:
            buf = self._buffers.get(id(w))
            if buf is None or buf.shape != w.shape or buf.device != w.device:
                buf = torch.empty_like(w, dtype=torch.promote_types(w.dtype, torch.float32),
                                      memory_format=torch.contiguous_format)
                self._buffers[id(w)] = buf
            out.append(buf)
        return out

    def decoupled_pre_step_(self, params, lr):
        p = self.current_p()
        buffers = self._buffers_for(params)
        if p == self.p:  # no schedule, or it has ended
            self._fixed_factor([params, buffers], [p * lr * self.strength, lr * self.l2_strength])
        else:
            self._factor([params, buffers], [p, p * lr * self.strength, lr * self.l2_strength])

    def decoupled_post_step_(self, params, lr):
        self._apply([params, self._buffers_for(params)])

    def forget_buffers(self) -> None:
        self._buffers.clear()

    def elementwise_terms(self, lr):
        p = self.current_p()
        if p == self.p:
            return ElementwiseTerms(update=self._fixed_p_update,
                                    update_scalars=(p * lr * self.strength, lr * self.l2_strength))
        return ElementwiseTerms(update=_update, update_scalars=(p, p * lr * self.strength, lr * self.l2_strength))

    def hparams(self):
        return {**super().hparams(), "lp_p": self.p, "pwd_l2_strength": self.l2_strength,
                "pwd_p_start": self.p_start, "pwd_p_schedule_steps": self.p_schedule_steps}
