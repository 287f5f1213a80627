"""The :class:`Regularizer` interface and the name -> class registry.

A regularizer is a prior (or penalty) ``R(w)`` on a set of weights with a strength
``lambda``. It acts in one of two modes:

``coupled``
    ``lambda * dR/dw`` is added to each weight's ``.grad`` before the optimizer
    step, so the optimizer (momentum, Adam's normalisation) sees it like a data
    gradient. This is the classic "L2 in the loss" / the soft-diamond paper's form.
``decoupled``
    the optimizer steps on the data gradient only and the regularizer moves the
    weights itself with the step's scheduled learning rate (AdamW's decay, the L1
    proximal step, pWD's multiplicative decay).

Both are applied from optimizer step hooks (:mod:`hf_soft_diamond.hooks`), once
per optimizer step, after gradient accumulation, unscaling and clipping, so the
regularizer never depends on how the loss was scaled or averaged.

The per-step work of every regularizer is elementwise and runs through
:class:`hf_soft_diamond.fused.TensorwiseKernel` (one fused loop per tensor when
``torch.compile`` is available).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..fused import Backend, validate_backend

MODES: tuple[str, ...] = ("coupled", "decoupled")

_REGISTRY: dict[str, type[Regularizer]] = {}


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    """Class decorator: make ``cls`` buildable by its ``name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a regularizer named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available_regularizers() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get_regularizer_class(name: str) -> type[Regularizer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"`regularizer` must be one of {available_regularizers()}, got {name!r}."
        ) from None


def build_regularizer(name: str, **kwargs: Any) -> Regularizer:
    """Instantiate the regularizer registered as ``name`` with its keyword arguments.

    Unknown keyword arguments raise ``TypeError`` naming them; invalid values raise
    ``ValueError`` naming the argument and the allowed range.
    """
    return get_regularizer_class(name)(**kwargs)


def check_number(name: str, value: float, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Validate a finite scalar hyperparameter; the message names it and its allowed range."""
    rng = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
           f"{'inf' if high is None else high}{')' if high_open else ']'}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number in {rng}, got {value!r}.") from None
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"`{name}` must be a finite number in {rng}, got {value!r}.")
    return v


@dataclass(frozen=True)
class ElementwiseTerms:
    """One optimizer step of an elementwise regularizer, as pure functions of the weights.

    What a fused optimizer (:class:`hf_soft_diamond.optim.RegularizedAdamW`) inlines into
    its own per-weight update, instead of running the regularizer's hooks as extra passes.
    Both functions take float32 (or float64) tensors and 0-d float64 scalar tensors, use
    only elementwise torch ops (so ``torch.compile`` fuses them) and return a new tensor:

    * ``grad(w, *grad_scalars)``: the coupled term ``strength * dR/dw`` that the hook
      path adds to ``.grad`` (``None``: nothing to add);
    * ``update(w_old, w_stepped, *update_scalars)``: the decoupled update, from the
      weights before the step and the optimizer's own result to the new weights, the
      same as the hook path's ``decoupled_pre_step_`` + step + ``decoupled_post_step_``
      for optimizers whose update does not read the weights (``None``: nothing to do).

    The two callables must be the same objects from step to step (compiled kernels
    are cached by them); the scalars carry everything that changes (learning rate).
    """

    grad: Callable[..., Tensor] | None = None
    grad_scalars: tuple[float, ...] = ()
    update: Callable[..., Tensor] | None = None
    update_scalars: tuple[float, ...] = ()


class Regularizer(abc.ABC):
    """A prior on weights, applied coupled (through ``.grad``) or decoupled (on the weights).

    Args:
        strength: ``lambda >= 0``, the multiplier of the penalty.
        mode: ``"coupled"`` or ``"decoupled"`` (see the module docstring); each
            subclass lists the modes it supports in ``modes``.
        fused_backend: ``"auto"``, ``"compile"`` or ``"eager"``, see
            :mod:`hf_soft_diamond.fused`.

    Subclasses implement :meth:`penalty_terms` (for logging) and the hooks of their
    modes: :meth:`add_coupled_grad_`, and/or :meth:`decoupled_pre_step_` /
    :meth:`decoupled_post_step_`. The hooks receive the tensors of one optimizer
    parameter group and that group's scheduled learning rate.
    """

    name: ClassVar[str] = ""
    modes: ClassVar[tuple[str, ...]] = MODES

    def __init__(self, strength: float = 0.0, mode: str = "coupled", fused_backend: Backend = "auto") -> None:
        self.strength = check_number("reg_strength", strength, low=0.0)
        if mode not in self.modes:
            raise ValueError(
                f"`reg_mode` for regularizer {self.name!r} must be one of {self.modes}, got {mode!r}."
            )
        self.mode = mode
        self.fused_backend = validate_backend(fused_backend)
        self.step = 0  # optimizer steps applied so far (advanced by the hook)

    # ----------------------------------------------------------------- values
    @abc.abstractmethod
    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        """``sum_i R(w_i)`` over the tensors, WITHOUT the strength, as a float64 0-d tensor."""

    @torch.no_grad()
    def penalty(self, params: Sequence[Tensor]) -> Tensor:
        """``strength * R(params)``: the value the regularizer adds to the objective."""
        params = list(params)
        if not params:
            return torch.zeros((), dtype=torch.float64)
        return self.strength * self.penalty_terms(params)

    # ----------------------------------------------------------------- hooks
    def add_coupled_grad_(self, params: Sequence[Tensor], grads: Sequence[Tensor], lr: float) -> None:
        """Add ``strength * dR/dw`` to ``grads`` in place (coupled mode)."""
        raise NotImplementedError(f"{self.name} has no coupled form")

    def decoupled_pre_step_(self, params: Sequence[Tensor], lr: float) -> None:
        """Work before the optimizer step (decoupled mode). Default: nothing."""

    def decoupled_post_step_(self, params: Sequence[Tensor], lr: float) -> None:
        """Work after the optimizer step (decoupled mode). Default: nothing."""

    def elementwise_terms(self, lr: float) -> ElementwiseTerms | None:
        """This step's work as :class:`ElementwiseTerms` for a fused optimizer, at learning rate ``lr``.

        ``None`` (the default) when the regularizer is not elementwise (the spectral ones
        need whole matrices): it then runs only through the step hooks.
        """
        return None

    # ----------------------------------------------------------------- state
    def hparams(self) -> dict[str, Any]:
        """Hyperparameters for logs and model cards."""
        return {"regularizer": self.name, "reg_strength": self.strength, "reg_mode": self.mode}

    def state_dict(self) -> dict[str, Any]:
        """Progress state that checkpoints must carry (schedules depend on it)."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))

    def forget_buffers(self) -> None:
        """Drop per-tensor scratch buffers (e.g. after the parameter set changed)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items() if k != "regularizer")
        return f"{type(self).__name__}({args})"
