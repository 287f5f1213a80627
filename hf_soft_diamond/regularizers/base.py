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
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..fused import Backend, TensorwiseKernel, _at_least_fp32, validate_backend

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
    """Class decorator: register ``cls`` under its ``name``; the one registration a method needs.

    Everything else reads the class: ``build_regularizer`` and the Trainer's arguments (its
    :attr:`~Regularizer.params`: defaults, ranges, help), its natural mode per optimizer
    family (:attr:`~Regularizer.modes`, :attr:`~Regularizer.paper_mode`), model cards
    (:attr:`~Regularizer.citation`, ``hparams()``) and plots (:attr:`~Regularizer.density_family`,
    :meth:`~Regularizer.log_density`), the stiffness warning when it is attached
    (:meth:`~Regularizer.curvature_at_zero`, :attr:`~Regularizer.decoupled_stops_at_zero`).
    The registration is checked here: a unique name, the paper mode among the modes,
    distinct parameter names whose defaults pass their own checks.
    """
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a regularizer named {cls.name!r} is already registered")
    if not cls.modes or any(m not in MODES for m in cls.modes) or cls.paper_mode not in cls.modes:
        raise TypeError(f"{cls.__name__}: `modes` must be a non-empty subset of {MODES} holding `paper_mode` "
                        f"({cls.paper_mode!r}), got {cls.modes}")
    names = [p.name for p in (*COMMON_PARAMS, *cls.params)] + ["mode", "fused_backend"]
    fields = [p.field for p in (*COMMON_PARAMS, *cls.params)]
    if len(set(names)) != len(names) or len(set(fields)) != len(fields):
        raise TypeError(f"{cls.__name__}: hyperparameter names and fields must be distinct, got {names} / {fields}")
    for param in cls.params:
        param.validate(param.default)
    if cls.density_family not in (None, "gaussian", "laplace", "sas"):
        raise TypeError(f"{cls.__name__}: `density_family` must be None, 'gaussian', 'laplace' or 'sas'")
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
class Param:
    """One hyperparameter of a registered regularizer: the single place its name, default,
    range and help are stated (validation, ``hparams()``, error messages, the Trainer's
    arguments and the contract tests all read it).

    Attributes:
        name: the regularizer's keyword argument and attribute (e.g. ``"alpha"``).
        field: the public name: the ``TrainingArguments`` field when there is one (e.g.
            ``"sas_alpha"``), the key in ``hparams()`` and model cards, the name errors use.
        default: the default value.
        help: one line for ``--help`` and the docs.
        low, high, low_open, high_open: the numeric range (``None``: unbounded).
        integer: the value must be an integer.
        choices: the allowed values (strings).
        allow_none: ``None`` is allowed (and means what ``help`` says).
    """

    name: str
    field: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple[str, ...] | None = None
    allow_none: bool = False

    def describe(self) -> str:
        """The allowed values, as error messages state them."""
        if self.choices is not None:
            text = f"one of {self.choices}"
        else:
            rng = (f"{'(' if self.low_open else '['}{'-inf' if self.low is None else self.low}, "
                   f"{'inf' if self.high is None else self.high}{')' if self.high_open else ']'}")
            text = f"{'an integer' if self.integer else 'a finite number'} in {rng}"
        return text + (" or None" if self.allow_none else "")

    def validate(self, value: Any) -> Any:
        """``value`` converted and checked; ``ValueError`` naming :attr:`field` and the range otherwise."""
        if value is None and self.allow_none:
            return None
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"`{self.field}` must be {self.describe()}, got {value!r}.")
            return value
        if self.integer:
            try:
                ok = not isinstance(value, bool) and int(value) == value
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"`{self.field}` must be {self.describe()}, got {value!r}.")
            value = int(value)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"`{self.field}` must be {self.describe()}, got {value!r}.") from None
        ok = math.isfinite(v) and not isinstance(value, bool)
        if ok and self.low is not None:
            ok = v > self.low if self.low_open else v >= self.low
        if ok and self.high is not None:
            ok = v < self.high if self.high_open else v <= self.high
        if not ok:
            raise ValueError(f"`{self.field}` must be {self.describe()}, got {value!r}.")
        return value if self.integer else v

    def invalid_examples(self) -> list[Any]:
        """Values this parameter must refuse (for the contract tests)."""
        if self.choices is not None:
            return ["__not_a_choice__"]
        bad: list[Any] = [float("nan"), "text"]
        if self.low is not None:
            bad.append(self.low if self.low_open else self.low - 1.0)
        if self.high is not None:
            bad.append(self.high if self.high_open else self.high + 1.0)
        if self.integer:
            bad.append((self.low or 0) + 1.5)
        return bad


@dataclass(frozen=True)
class Citation:
    """The paper behind a regularizer, as model cards cite it."""

    title: str  # what the card calls the method, e.g. "soft-diamond symmetric alpha-stable prior"
    reference: str  # "Authors, Title, arXiv:XXXX"
    bibtex: str


#: Cited for regularizers registered without a citation of their own.
UNCITED = Citation(title="custom regularizer", reference="no paper registered with this regularizer", bibtex="")

#: The hyperparameters every regularizer takes (see :class:`Regularizer`).
COMMON_PARAMS: tuple[Param, ...] = (
    Param("strength", "reg_strength", 0.0, "Strength lambda >= 0 (0: the regularizer does nothing).", low=0.0),
)


@dataclass(frozen=True)
class ElementwiseTerms:
    """One optimizer step of an elementwise regularizer, as pure functions of the weights.

    The single statement of a method's per-step formulas. Both the step hooks
    (:meth:`Regularizer.add_coupled_grad_`, :meth:`~Regularizer.decoupled_pre_step_`,
    :meth:`~Regularizer.decoupled_post_step_`) and the fused optimizer
    (:class:`hf_soft_diamond.optim.RegularizedAdamW`) are derived from them; no method
    writes a kernel of its own. Each function takes float32 (or float64) tensors and 0-d
    float64 scalar tensors, uses only elementwise torch ops (so ``torch.compile`` fuses
    them) and returns a new tensor:

    * ``grad(w, *grad_scalars)``: the coupled term ``strength * dR/dw`` added to the
      gradient before the optimizer step;
    * ``pre(w, *pre_scalars)``: decoupled, the weights before the optimizer's step
      (AdamW's decay ``w * (1 - lr * lambda)``);
    * ``update(w_old, w_stepped, *update_scalars)``: decoupled, the weights after the step,
      from the optimizer's result ``w_stepped`` and, when ``update_reads_old``, the
      weights before it (the hook path then keeps a float32 copy of them, pWD's ``X``).

    Callables are ``None`` when the method has no such term. They must be the same
    objects from step to step (compiled kernels are cached by them); the scalars carry
    what changes (the learning rate). The derived paths agree for optimizers whose
    update does not read the weights (SGD, Adam, AdamW with weight_decay 0, ...).
    """

    grad: Callable[..., Tensor] | None = None
    grad_scalars: tuple[float, ...] = ()
    pre: Callable[..., Tensor] | None = None
    pre_scalars: tuple[float, ...] = ()
    update: Callable[..., Tensor] | None = None
    update_scalars: tuple[float, ...] = ()
    update_reads_old: bool = False


# Hook kernels derived from the terms: arithmetic in float32 or wider, written back in the
# tensors' own dtype. One TensorwiseKernel per (kind, term) and regularizer.
def _add_grad(w: Tensor, g: Tensor, *scalars: Tensor, term: Callable[..., Tensor]) -> None:
    g.add_(term(_at_least_fp32(w), *scalars).to(g.dtype))


def _apply_pre(w: Tensor, *scalars: Tensor, term: Callable[..., Tensor]) -> None:
    w.copy_(term(_at_least_fp32(w), *scalars).to(w.dtype))


def _keep_old(w: Tensor, old: Tensor) -> None:
    old.copy_(w)


def _apply_update(w: Tensor, old: Tensor, *scalars: Tensor, term: Callable[..., Tensor]) -> None:
    w.copy_(term(_at_least_fp32(old), _at_least_fp32(w), *scalars).to(w.dtype))


def _apply_update_new_only(w: Tensor, *scalars: Tensor, term: Callable[..., Tensor]) -> None:
    wf = _at_least_fp32(w)
    w.copy_(term(wf, wf, *scalars).to(w.dtype))


_HOOK_KERNELS: dict[str, Callable[..., None]] = {
    "grad": _add_grad, "pre": _apply_pre, "update": _apply_update, "update_new": _apply_update_new_only,
}


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
    parameter group and that group's scheduled learning rate. Elementwise priors smooth
    at 0 also state :meth:`curvature_at_zero` (and a guarded decoupled step
    :attr:`decoupled_stops_at_zero`), which the stiffness warning of the hooks reads.
    """

    name: ClassVar[str] = ""
    modes: ClassVar[tuple[str, ...]] = MODES
    #: The mode of the method's paper, used under SGD-family optimizers when no mode is given.
    paper_mode: ClassVar[str] = "coupled"
    #: Whether the decoupled step never carries a weight past 0, at any ``lr * strength`` (a
    #: guarded pull, a proximal or multiplicative shrink). When False, the decoupled step of a
    #: prior smooth at 0 is the explicit ``w - lr * strength * R''(0) * w`` near 0, which overshoots
    #: for ``lr * strength * R''(0) > 2`` (see :meth:`curvature_at_zero`).
    decoupled_stops_at_zero: ClassVar[bool] = False
    #: The hyperparameters beyond strength and mode (:class:`Param`), in signature order.
    params: ClassVar[tuple[Param, ...]] = ()
    #: The paper cards cite (:data:`UNCITED` when a regularizer registers none).
    citation: ClassVar[Citation] = UNCITED
    #: The distribution family plots fit to the trained weights: ``"gaussian"``, ``"laplace"``,
    #: ``"sas"`` (at the run's alpha) or ``None`` (no overlay; e.g. spectral penalties).
    density_family: ClassVar[str | None] = None

    def __init__(self, strength: float = 0.0, mode: str | None = None, fused_backend: Backend = "auto") -> None:
        self.strength = COMMON_PARAMS[0].validate(strength)
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

    def _set_params(self, **values: Any) -> None:
        """Validate the given declared hyperparameters (:attr:`params`) and store them as attributes."""
        for name, value in values.items():
            param = self.param(name)
            setattr(self, param.name, param.validate(value))

    @classmethod
    def param(cls, name: str) -> Param:
        """The declared hyperparameter ``name`` (keyword or field name)."""
        for p in (*COMMON_PARAMS, *cls.params):
            if name in (p.name, p.field):
                return p
        raise KeyError(f"{cls.name!r} has no hyperparameter {name!r}")

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

    @property
    def acts(self) -> bool:
        """Whether this regularizer changes the weights at all (strength > 0; ``none`` never does)."""
        return self.strength > 0

    def coupled_under_adaptive(self, optimizer: Any) -> bool:
        """Whether this is an explicitly coupled, acting prior under a per-coordinate-normalising optimizer."""
        return (self.mode == "coupled" and self.mode_explicit and self.acts
                and optimizer_family(optimizer) == "adaptive")

    # ----------------------------------------------------------------- values
    @abc.abstractmethod
    def penalty_terms(self, params: Sequence[Tensor]) -> Tensor:
        """``sum_i R(w_i)`` over the tensors, WITHOUT the strength, as a float64 0-d tensor."""

    def curvature_at_zero(self) -> float | None:
        """``R''(0)``: the penalty's second derivative at ``w = 0``, without the strength.

        Defined for elementwise priors that are smooth at 0, whose coupled gradient there is
        linear, ``strength * R''(0) * w`` (L2: 1, smoothed L_p: ``p * eps**(p-2)``, SaS:
        ``kappa / c**2``); ``None`` for a kink at 0 (L1) and for penalties that are not
        elementwise. :func:`~hf_soft_diamond.hooks.warn_if_prior_step_overshoots` reads it.
        """
        return None

    @torch.no_grad()
    def penalty(self, params: Sequence[Tensor]) -> Tensor:
        """``strength * R(params)``: the value the regularizer adds to the objective."""
        params = list(params)
        if not params:
            return torch.zeros((), dtype=torch.float64)
        return self.strength * self.penalty_terms(params)

    # ----------------------------------------------------------------- hooks
    def add_coupled_grad_(self, params: Sequence[Tensor], grads: Sequence[Tensor], lr: float) -> None:
        """Add ``strength * dR/dw`` to ``grads`` in place (coupled mode).

        Elementwise regularizers: derived from :meth:`elementwise_terms` (``grad``); others override it.
        """
        terms = self.elementwise_terms(lr, mode="coupled")
        if terms is None:
            raise NotImplementedError(f"{self.name} has no coupled form")
        if terms.grad is not None:
            self._hook_kernel("grad", terms.grad)([params, grads], terms.grad_scalars)

    def decoupled_pre_step_(self, params: Sequence[Tensor], lr: float) -> None:
        """Work before the optimizer step (decoupled mode).

        Elementwise regularizers: ``pre`` of :meth:`elementwise_terms`, and a float32 copy of the
        weights when ``update`` reads them; others override it (default: nothing).
        """
        terms = self.elementwise_terms(lr, mode="decoupled")
        if terms is None:
            return
        if terms.pre is not None:
            self._hook_kernel("pre", terms.pre)([params], terms.pre_scalars)
        if terms.update is not None and terms.update_reads_old:
            self._hook_kernel("keep_old", None)([params, self._old_weights(params)])

    def _hook_kernel(self, kind: str, term: Callable[..., Tensor] | None) -> TensorwiseKernel:
        """The hook kernel of ``kind`` for ``term``, built once per regularizer (compiled kernels are cached)."""
        cache = self.__dict__.setdefault("_kernel_cache", {})
        key = (kind, term)
        kernel = cache.get(key)
        if kernel is None:
            fn = _keep_old if kind == "keep_old" else functools.partial(_HOOK_KERNELS[kind], term=term)
            kernel = cache[key] = TensorwiseKernel(fn, self.fused_backend)
        return kernel

    def _old_weights(self, params: Sequence[Tensor]) -> list[Tensor]:
        """Per-tensor float32 (or wider) buffers for the weights before the step (``update_reads_old``)."""
        buffers = self.__dict__.setdefault("_old_buffers", {})
        out = []
        for w in params:
            buf = buffers.get(id(w))
            if buf is None or buf.shape != w.shape or buf.device != w.device:
                buf = buffers[id(w)] = torch.empty_like(w, dtype=torch.promote_types(w.dtype, torch.float32),
                                                        memory_format=torch.contiguous_format)
            out.append(buf)
        return out

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
        """Work after the optimizer step (decoupled mode).

        Elementwise regularizers: ``update`` of :meth:`elementwise_terms`; others override it
        (default: nothing).
        """
        terms = self.elementwise_terms(lr, mode="decoupled")
        if terms is None or terms.update is None:
            return
        if terms.update_reads_old:
            self._hook_kernel("update", terms.update)([params, self._old_weights(params)], terms.update_scalars)
        else:
            self._hook_kernel("update_new", terms.update)([params], terms.update_scalars)

    def elementwise_terms(self, lr: float, mode: str | None = None) -> ElementwiseTerms | None:
        """This step's formulas as :class:`ElementwiseTerms`, at learning rate ``lr``, for ``mode``
        (default: the regularizer's mode, or its paper mode while unresolved).

        ``None`` (the default) when the regularizer is not elementwise (the spectral ones
        need whole matrices): it then implements the step hooks itself.
        """
        return None

    def _mode_of(self, mode: str | None) -> str:
        """The mode a term is asked for: ``mode``, else this regularizer's, else its paper mode."""
        return mode or self.mode or self.paper_mode

    # ----------------------------------------------------------------- state
    def hparams(self) -> dict[str, Any]:
        """Hyperparameters for logs and model cards, by public name (``reg_mode`` is ``"auto"`` until resolved)."""
        return {"regularizer": self.name, "reg_strength": self.strength, "reg_mode": self.mode or "auto",
                **{p.field: getattr(self, p.name) for p in self.params}}

    @classmethod
    def log_density(cls, x: Tensor, hparams: dict[str, Any]) -> Tensor | None:
        """``log p(x)`` of the run's own prior at ``hparams`` (float64), for plots; ``None`` when the
        prior's scale is not a hyperparameter (e.g. L1/L2, whose strength is not a scale)."""
        return None

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
        self.__dict__.pop("_old_buffers", None)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items() if k != "regularizer")
        return f"{type(self).__name__}({args})"
