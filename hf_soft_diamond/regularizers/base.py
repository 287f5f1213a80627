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
    proximal step, pWD's multiplicative decay). For a prior with a gradient this is
    ``w <- w - lr * lambda * dR/dw``, outside the optimizer's normalisation.

Which mode, when none is given (``mode=None``): it follows the optimizer the
regularizer is attached to (:func:`natural_mode`). Under SGD-family optimizers it is
the family's paper form (:attr:`Regularizer.paper_mode`: coupled for SaS, L1, L2, Lp
and the spectral penalties). Under every optimizer that normalises the update per
coordinate (Adam, AdamW, Adafactor, RMSprop, Adagrad, Lion, ...) it is decoupled:
Adam divides a coupled prior's gradient by the running RMS of the whole gradient, so
wherever the data gradient is small a coupled prior moves the weight by about ``lr``
per step whatever ``lambda`` is (the reason AdamW decouples L2). An explicitly
coupled prior under such an optimizer still runs coupled, with one logged warning.

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

#: Optimizer families of :func:`optimizer_family`: ``"sgd"`` (the update is proportional to
#: the gradient) and ``"adaptive"`` (normalised per coordinate: Adam and the like).
OPTIMIZER_FAMILIES: tuple[str, ...] = ("sgd", "adaptive")


def optimizer_family(optimizer: Any) -> str:
    """``"sgd"`` or ``"adaptive"`` for a torch optimizer (instance or class) or a Trainer ``optim`` name.

    SGD family: ``torch.optim.SGD`` and its subclasses, any optimizer class whose name
    contains ``SGD`` (e.g. schedule-free SGD), and the Trainer names containing ``sgd``
    plus ``lomo``. Everything else (``adamw_*``, ``adam*``, ``adafactor``, ``rmsprop``,
    ``adagrad``, ``lion*``, :class:`~hf_soft_diamond.optim.RegularizedAdamW`, unknown
    optimizers) is ``"adaptive"``: a decoupled prior is correct under any optimizer, a
    coupled one only where the step is proportional to the gradient.
    """
    if isinstance(optimizer, str) or hasattr(optimizer, "value"):  # a name or transformers' OptimizerNames
        name = str(getattr(optimizer, "value", optimizer)).lower()
        return "sgd" if ("sgd" in name or name == "lomo") else "adaptive"
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    if issubclass(cls, torch.optim.SGD) or "sgd" in cls.__name__.lower():
        return "sgd"
    return "adaptive"

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


def natural_mode(name: str, optimizer: Any = "adamw_torch") -> str:
    """The mode a regularizer built without one takes under ``optimizer``.

    ``optimizer``: a torch optimizer (instance or class) or a Trainer ``optim`` name (the
    Trainer's default, AdamW, when omitted). The family's paper form under SGD-family
    optimizers, decoupled under Adam-family ones (see the module docstring).
    """
    return get_regularizer_class(name).natural_mode(optimizer_family(optimizer))


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
    #: The mode of the method's paper, used under SGD-family optimizers when no mode is given.
    paper_mode: ClassVar[str] = "coupled"

    def __init__(self, strength: float = 0.0, mode: str | None = None, fused_backend: Backend = "auto") -> None:
        self.strength = check_number("reg_strength", strength, low=0.0)
        if mode is not None and mode not in self.modes:
            raise ValueError(
                f"`reg_mode` for regularizer {self.name!r} must be one of {self.modes} (or None: follow the "
                f"optimizer), got {mode!r}."
            )
        #: ``"coupled"``/``"decoupled"``, or ``None`` until :meth:`resolve_mode` picks it from the optimizer.
        self.mode: str | None = mode
        self.mode_explicit = mode is not None
        self.fused_backend = validate_backend(fused_backend)
        self.step = 0  # optimizer steps applied so far (advanced by the hook)

    # ----------------------------------------------------------------- mode
    @classmethod
    def natural_mode(cls, family: str) -> str:
        """The mode ``mode=None`` resolves to under an optimizer of ``family`` (see the module docstring)."""
        if family not in OPTIMIZER_FAMILIES:
            raise ValueError(f"`family` must be one of {OPTIMIZER_FAMILIES}, got {family!r}.")
        wanted = cls.paper_mode if family == "sgd" else "decoupled"
        return wanted if wanted in cls.modes else cls.modes[0]

    def resolve_mode(self, optimizer: Any) -> str:
        """Fix the mode for ``optimizer`` (a torch optimizer, its class, or a Trainer ``optim`` name).

        A mode given at construction is kept; ``None`` becomes :meth:`natural_mode` of the
        optimizer's family. Returns the mode.
        """
        family = optimizer_family(optimizer)
        if self.mode is None:
            self.mode = self.natural_mode(family)
        return self.mode

    def coupled_under_adaptive(self, optimizer: Any) -> bool:
        """Whether this is an explicitly coupled, acting prior under a per-coordinate-normalising optimizer."""
        return (self.mode == "coupled" and self.mode_explicit and self.strength > 0 and self.name != "none"
                and optimizer_family(optimizer) == "adaptive")

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

    def prior_gradient_step_(self, params: Sequence[Tensor], lr: float) -> None:
        """``w <- w - lr * strength * dR/dw`` with the gradient of :meth:`add_coupled_grad_`.

        The generic decoupled form of a prior that has a gradient (a step on the prior
        alone, outside the optimizer); regularizers without a closed-form decoupled
        update call it from :meth:`decoupled_pre_step_`.
        """
        grads = [torch.zeros_like(p) for p in params]
        self.add_coupled_grad_(params, grads, lr)
        for p, g in zip(params, grads):
            p.sub_(g, alpha=lr)

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
        """Hyperparameters for logs and model cards (``reg_mode`` is ``"auto"`` until resolved)."""
        return {"regularizer": self.name, "reg_strength": self.strength, "reg_mode": self.mode or "auto"}

    def state_dict(self) -> dict[str, Any]:
        """Progress state that checkpoints must carry (schedules depend on it)."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))

    def param_state(self, param: Tensor) -> dict[str, Any] | None:
        """Per-parameter state a checkpoint must carry for an exact resume (``None``: nothing).

        The handle saves it under the parameter's name, so it survives a new process where
        tensor identities differ. Default: none (elementwise regularizers keep no state).
        """
        return None

    def load_param_state(self, param: Tensor, state: dict[str, Any]) -> None:
        """Restore what :meth:`param_state` returned for ``param`` (after :meth:`load_state_dict`)."""

    def forget_buffers(self) -> None:
        """Drop per-tensor scratch buffers (e.g. after the parameter set changed)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items() if k != "regularizer")
        return f"{type(self).__name__}({args})"
