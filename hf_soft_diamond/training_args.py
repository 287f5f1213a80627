"""Training arguments with a weight prior: ``TrainingArguments`` + the regularizer's fields.

:class:`SoftDiamondArgumentsMixin` holds the regularizer's fields (all with defaults and
``help`` metadata, so ``HfArgumentParser`` turns them into ``--flags`` and reads them from
a JSON file); :class:`SoftDiamondTrainingArguments` and
:class:`SoftDiamondSeq2SeqTrainingArguments` put it in front of ``TrainingArguments`` /
``Seq2SeqTrainingArguments`` (the mixin's fields come after the Trainer's, and its
``__post_init__`` validates them, then runs the Trainer's own).

Every value is checked when the arguments are built, before any model is loaded: the
regularizer is built once from the fields and thrown away, so a bad ``--sas_alpha`` fails
at parse time with a message that names the argument and its range.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from .fused import BACKENDS
from .regularizers import available_regularizers, build_regularizer, get_regularizer_class, optimizer_family
from .regularizers import natural_mode as _natural_mode
from .regularizers.base import Regularizer
from .sparsity import DEFAULT_THRESHOLDS as DEFAULT_SPARSITY_THRESHOLDS

logger = logging.getLogger(__name__)


def hyperparameter_fields(regularizer: str) -> dict[str, str]:
    """Keyword argument -> argument field of ``regularizer``'s registered hyperparameters that are
    fields of these arguments (``sas_alpha``, ``lp_p``...); the others come through ``reg_kwargs``."""
    fields = {f.name for f in dataclasses.fields(SoftDiamondArgumentsMixin)}
    return {p.name: p.field for p in get_regularizer_class(regularizer).params if p.field in fields}


_ON_NONFINITE = ("raise", "warn")


def natural_mode(regularizer: str, optim: Any = "adamw_torch") -> str:
    """The mode ``reg_mode=None`` resolves to for ``regularizer`` under the Trainer's ``optim``.

    SGD-family optimizers (``sgd``, schedule-free SGD, LOMO): the method's paper form
    (coupled for ``sas``, ``l1``, ``l2``, ``lp`` and the spectral penalties); every other
    optimizer (AdamW, the Trainer's default, Adafactor, RMSprop, Lion...): ``decoupled``.
    ``pwd`` is decoupled only. See :mod:`hf_soft_diamond.regularizers.base`.
    """
    return _natural_mode(regularizer, optim)


@dataclass
class SoftDiamondArgumentsMixin:
    r"""
    The regularizer's fields, to put in front of a ``TrainingArguments`` class.

    A regularizer acts once per *optimizer* step through optimizer step hooks (see
    :func:`hf_soft_diamond.attach_regularizer`); it never enters the loss, so gradient
    accumulation, world size and loss scaling do not change it, and eval losses are the
    plain data loss.

    Weight decay: when ``regularizer`` is not ``"none"``, the regularizer *replaces* the
    optimizer's ``weight_decay`` on the regularized parameters (the Trainer puts them in
    its ``weight_decay=0`` group and warns once); ``weight_decay`` still applies to
    parameters the Trainer decays but the regularizer does not select. For AdamW-style
    decay as the regularizer, use ``--regularizer l2 --reg_mode decoupled``
    (``w <- (1 - lr*reg_strength) w``, exactly AdamW's ``weight_decay=reg_strength``).

    Parameters:
        > Which regularizer

        regularizer (`str`, *optional*, defaults to `"none"`):
            Registered name of the regularizer: ``none``, ``l2``, ``l1``, ``lp``, ``sas``, ``pwd``,
            or any other name in :func:`hf_soft_diamond.available_regularizers`. ``none`` applies no
            penalty but still measures sparsity over the same default selection of weights.
        reg_strength (`float`, *optional*, defaults to `0.0`):
            Strength ``lambda >= 0`` (the penalty is ``lambda * R(w)``; conventions per regularizer:
            ``l2``: ``lambda/2 ||w||^2``; ``l1``: ``lambda ||w||_1``; ``sas``: ``-lambda sum log f(w)``;
            ``pwd``: decay ``p * lr * lambda``). 0 makes any regularizer a no-op (a warning says so).
        reg_mode (`str` or `None`, *optional*, defaults to `None`):
            ``"coupled"`` (``lambda dR/dw`` added to the gradient before the optimizer step, after
            clipping) or ``"decoupled"`` (the regularizer moves the weights itself with the step's
            scheduled learning rate, like AdamW's decay). ``None``: follow ``optim``: under
            Adam-family optimizers (every ``adamw_*``/``adam*``, ``adafactor``, ``rmsprop``, ``lion``...,
            and ``reg_fused_optimizer``) ``decoupled``, because Adam normalises a coupled prior's
            gradient per coordinate (weights then move by ~lr per step whatever ``reg_strength``
            is); under ``sgd`` the method's paper form (coupled for ``sas``, ``l1``, ``l2``, ``lp``
            and the spectral penalties). ``pwd`` is decoupled only. An explicit ``coupled`` under
            an Adam-family optimizer is honoured, with one logged warning.
        reg_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Extra keyword arguments of the regularizer's class, as a dict or a JSON string
            (e.g. ``'{"score_path": "table"}'`` for ``sas``, ``'{"refresh_every": 10}'`` for the
            spectral regularizers). Keys already set by a field above are refused.

        > Hyperparameters of the soft-diamond prior (``sas``)

        sas_alpha (`float`, *optional*, defaults to `1.5`):
            Tail index ``alpha`` in (0, 2] of the symmetric alpha-stable prior: 2 is Gaussian (ridge),
            1 Cauchy, below 1 sub-Cauchy (heavier tails, more sparsity).
        sas_gamma (`float`, *optional*, defaults to `0.5`):
            Dispersion ``gamma > 0`` (characteristic function ``exp(-gamma |t|^alpha)``; scale
            ``gamma^(1/alpha)``). The paper's best CIFAR-10 setting is alpha 1.5, gamma 0.5.

        > Hyperparameters of ``lp`` and ``pwd``

        lp_p (`float`, *optional*, defaults to `1.0`):
            Exponent ``p`` in (0, 2] of ``lp`` (smoothed ``|w|^p`` penalty) and of ``pwd``.
        lp_eps (`float`, *optional*, defaults to `1e-3`):
            Smoothing ``eps > 0`` of ``lp``: ``(w^2 + eps^2)^(p/2) - eps^p``.
        pwd_l2_strength (`float`, *optional*, defaults to `0.0`):
            Elastic-net ``lambda_2 >= 0`` of ``pwd`` (0: plain pWD).
        pwd_p_start (`float`, *optional*, defaults to `2.0`):
            Starting exponent of the ``pwd`` p schedule, in [``lp_p``, 2].
        pwd_p_schedule_steps (`int`, *optional*, defaults to `0`):
            Optimizer steps over which ``pwd``'s p moves linearly from ``pwd_p_start`` to ``lp_p``
            (0: no schedule). The schedule's position is saved in checkpoints.

        > Which weights

        reg_include (`list[str]` or `None`, *optional*, defaults to `None`):
            Regular expressions (``re.search`` on parameter names); when given, exactly the trainable
            parameters matching one of them are regularized, replacing the default rule (trainable
            tensors with ``ndim >= 2`` that are not biases or normalisation weights).
        reg_exclude (`list[str]` or `None`, *optional*, defaults to `None`):
            Regular expressions removing matching parameters from the selection.
        reg_include_embeddings (`bool`, *optional*, defaults to `True`):
            Whether the default rule includes embedding matrices.

        > Measurement and safety

        sparsity_thresholds (`list[float]`, *optional*, defaults to `[1e-8, 1e-3, 1e-2]`):
            Sparsity is the fraction of regularized weights with ``|w| <= tau``, logged for each
            ``tau`` here (finite, ``>= 0``, distinct at one significant digit, as the log keys
            ``sparsity/reg/le_1e-03`` name them; empty: no sparsity metrics) at every logging step and
            evaluation.
        reg_fused_backend (`str`, *optional*, defaults to `"auto"`):
            How the per-step elementwise kernels run: ``"auto"`` (``torch.compile`` when inductor can
            build kernels here, else eager), ``"compile"`` or ``"eager"``.
        reg_on_nonfinite (`str`, *optional*, defaults to `"raise"`):
            What a NaN/Inf in the regularized weights after a step does: ``"raise"``
            (``FloatingPointError`` naming the parameters) or ``"warn"``.
        reg_check_finite_every (`int`, *optional*, defaults to `1`):
            Check the regularized weights for NaN/Inf every this many optimizer steps (0: never).
        reg_fused_optimizer (`bool`, *optional*, defaults to `False`):
            Train with :class:`hf_soft_diamond.optim.RegularizedAdamW`: AdamW with the regularizer
            inlined in its one compiled per-tensor update, instead of the Trainer's AdamW plus the
            regularizer's step hooks (same updates; measured faster, see ``benchmarks/RESULTS.md``).
            Needs ``optim`` ``adamw_torch`` or ``adamw_torch_fused`` (its ``learning_rate``,
            ``adam_beta1/2``, ``adam_epsilon``, ``weight_decay`` carry over) and an elementwise
            regularizer (not the spectral ones).

        > Gradient accumulation

        model_accepts_loss_kwargs (`bool` or `None`, *optional*, defaults to `None`):
            Whether the Trainer passes ``num_items_in_batch`` to the model and trusts its loss to be
            normalised by it (then it does not divide by the accumulation steps). ``None``: decided by
            :func:`hf_soft_diamond.trainer.model_consumes_num_items_in_batch` (true only when the
            model's ``forward`` demonstrably uses it), which fixes the transformers 5.x trap where
            Marian/T5/BART accept ``**kwargs`` but ignore it, so that batch 4 x GA 2 moved the weights
            twice as far as batch 8 x GA 1. ``True``/``False`` force the attribute.
    """

    regularizer: str = field(default="none", metadata={
        "help": f"Registered regularizer name: {', '.join(available_regularizers())}. 'none' applies no penalty "
                "but still measures sparsity."})
    reg_strength: float = field(default=0.0, metadata={
        "help": "Regularization strength lambda >= 0 (0: the regularizer does nothing)."})
    reg_mode: str | None = field(default=None, metadata={
        "help": "'coupled' (added to the gradient) or 'decoupled' (applied to the weights with the scheduled lr). "
                "Default: follow `optim`: decoupled under Adam-family optimizers (AdamW, Adafactor, ...), the "
                "paper's coupled form under SGD (pwd: decoupled only)."})
    reg_kwargs: dict | str | None = field(default=None, metadata={
        "help": "Extra keyword arguments of the regularizer class, as a JSON string, e.g. "
                "'{\"score_path\": \"table\"}'."})
    sas_alpha: float = field(default=1.5, metadata={
        "help": "SaS tail index alpha in (0, 2] (2: Gaussian, 1: Cauchy, <1: sub-Cauchy)."})
    sas_gamma: float = field(default=0.5, metadata={
        "help": "SaS dispersion gamma > 0 (scale gamma**(1/alpha))."})
    lp_p: float = field(default=1.0, metadata={"help": "Exponent p in (0, 2] of 'lp' and 'pwd'."})
    lp_eps: float = field(default=1e-3, metadata={"help": "Smoothing eps > 0 of 'lp'."})
    pwd_l2_strength: float = field(default=0.0, metadata={
        "help": "Elastic-net L2 strength >= 0 of 'pwd' (0: plain pWD)."})
    pwd_p_start: float = field(default=2.0, metadata={
        "help": "Starting exponent of the pwd p schedule, in [lp_p, 2]."})
    pwd_p_schedule_steps: int = field(default=0, metadata={
        "help": "Optimizer steps over which pwd's p moves linearly from pwd_p_start to lp_p (0: off)."})
    reg_include: list[str] | None = field(default=None, metadata={
        "help": "Regexes of parameter names to regularize (replaces the default rule: ndim >= 2, no biases/norms)."})
    reg_exclude: list[str] | None = field(default=None, metadata={
        "help": "Regexes of parameter names to leave unregularized."})
    reg_include_embeddings: bool = field(default=True, metadata={
        "help": "Whether the default selection rule includes embedding matrices."})
    sparsity_thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_SPARSITY_THRESHOLDS), metadata={
        "help": "Sparsity = fraction of regularized weights with |w| <= tau, logged for each tau (finite, >= 0)."})
    reg_fused_backend: str = field(default="auto", metadata={
        "help": f"Backend of the per-step kernels: {', '.join(BACKENDS)}."})
    reg_on_nonfinite: str = field(default="raise", metadata={
        "help": "On NaN/Inf in the regularized weights after a step: 'raise' or 'warn'."})
    reg_check_finite_every: int = field(default=1, metadata={
        "help": "Check the regularized weights for NaN/Inf every this many optimizer steps (0: never)."})
    reg_fused_optimizer: bool = field(default=False, metadata={
        "help": "Use hf_soft_diamond's RegularizedAdamW (AdamW with the regularizer fused into its update) instead "
                "of the Trainer's AdamW plus step hooks. Needs optim adamw_torch(_fused) and an elementwise "
                "regularizer."})
    model_accepts_loss_kwargs: bool | None = field(default=None, metadata={
        "help": "Pass num_items_in_batch to the model and skip the division by accumulation steps. Default: only "
                "when the model's forward really uses it (fixes Marian/T5/BART under gradient accumulation)."})

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self._validate_soft_diamond()
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()

    def _validate_soft_diamond(self) -> None:
        if not isinstance(self.regularizer, str):
            raise ValueError(f"`regularizer` must be a string, one of {available_regularizers()}, "
                             f"got {self.regularizer!r}.")
        get_regularizer_class(self.regularizer)  # unknown name -> ValueError naming `regularizer`
        if isinstance(self.reg_kwargs, str):
            try:
                self.reg_kwargs = json.loads(self.reg_kwargs) if self.reg_kwargs.strip() else None
            except json.JSONDecodeError as err:
                raise ValueError(f"`reg_kwargs` must be a JSON object, got {self.reg_kwargs!r}: {err}") from None
        if self.reg_kwargs is not None and not isinstance(self.reg_kwargs, dict):
            raise ValueError(f"`reg_kwargs` must be a dict (or a JSON object string), got {self.reg_kwargs!r}.")
        for name in ("reg_include", "reg_exclude"):
            patterns = getattr(self, name)
            if isinstance(patterns, str):
                patterns = [patterns]
                setattr(self, name, patterns)
            for pattern in patterns or []:
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as err:
                    raise ValueError(f"`{name}` holds an invalid regular expression {pattern!r}: {err}") from None
        self.sparsity_thresholds = _check_thresholds(self.sparsity_thresholds)
        if self.reg_on_nonfinite not in _ON_NONFINITE:
            raise ValueError(f"`reg_on_nonfinite` must be one of {_ON_NONFINITE}, got {self.reg_on_nonfinite!r}.")
        if self.reg_fused_backend not in BACKENDS:
            raise ValueError(f"`reg_fused_backend` must be one of {BACKENDS}, got {self.reg_fused_backend!r}.")
        every = self.reg_check_finite_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"`reg_check_finite_every` must be an integer >= 0 (0: never), got {every!r}.")
        if self.model_accepts_loss_kwargs is not None and not isinstance(self.model_accepts_loss_kwargs, bool):
            raise ValueError("`model_accepts_loss_kwargs` must be None (auto), True or False, "
                             f"got {self.model_accepts_loss_kwargs!r}.")
        regularizer = self.build_regularizer()  # every hyperparameter is checked by the regularizer itself
        if not isinstance(self.reg_fused_optimizer, bool):
            raise ValueError(f"`reg_fused_optimizer` must be True or False, got {self.reg_fused_optimizer!r}.")
        if self.reg_fused_optimizer:
            optim = str(getattr(getattr(self, "optim", None), "value", getattr(self, "optim", None)))
            if optim not in FUSABLE_OPTIMIZERS:
                raise ValueError(f"`reg_fused_optimizer=True` replaces AdamW: it needs `optim` in "
                                 f"{FUSABLE_OPTIMIZERS}, got {optim!r}.")
            if regularizer.elementwise_terms(1.0) is None:
                raise ValueError(f"`reg_fused_optimizer=True` needs an elementwise regularizer; "
                                 f"{self.regularizer!r} acts on whole matrices (use the default hook path).")

        if self.regularizer != "none":
            if self.reg_strength == 0:
                warnings.warn(f"hf_soft_diamond: `regularizer={self.regularizer!r}` with `reg_strength=0` does "
                              "nothing (set --reg_strength).", UserWarning, stacklevel=3)
            weight_decay = float(getattr(self, "weight_decay", 0.0) or 0.0)
            if weight_decay > 0:
                msg = (f"hf_soft_diamond: `weight_decay={weight_decay}` is NOT applied to the parameters regularized "
                       f"by `regularizer={self.regularizer!r}` (the regularizer replaces it there; it still applies "
                       "to other decayed parameters). For AdamW-style decay as the regularizer use "
                       "`--regularizer l2 --reg_mode decoupled --reg_strength <weight_decay>`.")
                warnings.warn(msg, UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ building
    @property
    def optimizer_family(self) -> str:
        """``"sgd"`` or ``"adaptive"``: the family of the optimizer these arguments train with."""
        if self.reg_fused_optimizer:
            return "adaptive"  # RegularizedAdamW
        return optimizer_family(getattr(self, "optim", "adamw_torch"))

    @property
    def resolved_reg_mode(self) -> str:
        """``reg_mode``, or the regularizer's natural mode under ``optim`` when it is ``None``."""
        if self.reg_mode is not None:
            return self.reg_mode
        return get_regularizer_class(self.regularizer).natural_mode(self.optimizer_family)

    def regularizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`hf_soft_diamond.build_regularizer` (besides the name) from the fields."""
        # mode None: the regularizer takes its natural mode from the optimizer it is attached to
        kwargs: dict[str, Any] = {"strength": self.reg_strength, "mode": self.reg_mode,
                                  "fused_backend": self.reg_fused_backend}
        for kwarg, attr in hyperparameter_fields(self.regularizer).items():
            kwargs[kwarg] = getattr(self, attr)
        extra = dict(self.reg_kwargs or {})
        clash = sorted(set(extra) & set(kwargs))
        if clash:
            raise ValueError(f"`reg_kwargs` sets {clash}, which the arguments already set; use the fields "
                             f"(e.g. --reg_strength, --sas_alpha) instead.")
        kwargs.update(extra)
        return kwargs

    def build_regularizer(self) -> Regularizer:
        """A fresh :class:`~hf_soft_diamond.regularizers.Regularizer` from these arguments.

        Raises ``ValueError`` naming the argument for any invalid value (and for unknown
        ``reg_kwargs`` keys).
        """
        try:
            return build_regularizer(self.regularizer, **self.regularizer_kwargs())
        except TypeError as err:  # an unknown keyword, which can only come from reg_kwargs
            raise ValueError(f"`reg_kwargs` has an argument that regularizer {self.regularizer!r} does not take: "
                             f"{err}") from None

    def selection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`hf_soft_diamond.select_parameters` from the fields."""
        return {"include": self.reg_include, "exclude": self.reg_exclude,
                "include_embeddings": self.reg_include_embeddings}


def _check_thresholds(values: Any) -> list[float]:
    if values is None:
        return []
    if isinstance(values, (int, float, str)):
        values = [values]
    out: list[float] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"`sparsity_thresholds` must be finite numbers >= 0, got {v!r}.") from None
        if isinstance(v, bool) or not math.isfinite(f) or f < 0:
            raise ValueError(f"`sparsity_thresholds` must be finite numbers >= 0, got {v!r}.")
        if f"{f:.0e}" in {f"{t:.0e}" for t in out}:  # the log keys name tau with one significant digit
            raise ValueError(f"`sparsity_thresholds` must be distinct at one significant digit (log keys are "
                             f"`le_{f:.0e}`), got {f!r} after {out}.")
        out.append(f)
    return out


#: The Trainer ``optim`` values that :class:`~hf_soft_diamond.optim.RegularizedAdamW` replaces.
FUSABLE_OPTIMIZERS: tuple[str, ...] = ("adamw_torch", "adamw_torch_fused")


@dataclass
class SoftDiamondTrainingArguments(SoftDiamondArgumentsMixin, TrainingArguments):
    r"""
    ``transformers.TrainingArguments`` plus the regularizer's fields, for :class:`~hf_soft_diamond.SoftDiamondTrainer`.

    Every field of ``TrainingArguments`` keeps its meaning; the added ones are documented in
    :class:`SoftDiamondArgumentsMixin` (``regularizer``, ``reg_strength``, ``reg_mode``, ``reg_kwargs``,
    ``sas_alpha``, ``sas_gamma``, ``lp_p``, ``lp_eps``, ``pwd_l2_strength``, ``pwd_p_start``,
    ``pwd_p_schedule_steps``, ``reg_include``, ``reg_exclude``, ``reg_include_embeddings``,
    ``sparsity_thresholds``, ``reg_fused_backend``, ``reg_on_nonfinite``, ``reg_check_finite_every``,
    ``reg_fused_optimizer``, ``model_accepts_loss_kwargs``). With a regularizer other than ``none``,
    ``weight_decay`` is not applied
    to the regularized parameters (see the mixin).
    """


@dataclass
class SoftDiamondSeq2SeqTrainingArguments(SoftDiamondArgumentsMixin, Seq2SeqTrainingArguments):
    r"""
    ``transformers.Seq2SeqTrainingArguments`` plus the regularizer's fields, for
    :class:`~hf_soft_diamond.SoftDiamondSeq2SeqTrainer`.

    The regularizer's fields are documented in :class:`SoftDiamondArgumentsMixin`; see
    :class:`SoftDiamondTrainingArguments`. One more field, for sequence-to-sequence data:

    Parameters:
        max_tokens_per_batch (`int` or `None`, *optional*, defaults to `None`):
            Token-based batching (fairseq's ``--max-tokens``): each training batch holds the
            length-sorted examples that fit this many *padded* tokens per side and device
            (``longest * n_sentences``), in shuffled batch order
            (:class:`~hf_soft_diamond.batching.TokenBudgetBatchSampler`);
            ``per_device_train_batch_size`` then caps the sentences per batch. ``None``: the
            Trainer's sentence-count batches.
    """

    max_tokens_per_batch: int | None = field(default=None, metadata={
        "help": "Token-based batching: padded tokens per training batch and device (source or target side; "
                "per_device_train_batch_size caps the sentences). Default: sentence-count batches."})

    def __post_init__(self) -> None:
        value = self.max_tokens_per_batch
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`max_tokens_per_batch` must be None (sentence batches) or an integer >= 1, "
                             f"got {value!r}.")
        super().__post_init__()


__all__ = [
    "DEFAULT_SPARSITY_THRESHOLDS",
    "hyperparameter_fields",
    "SoftDiamondArgumentsMixin",
    "SoftDiamondSeq2SeqTrainingArguments",
    "SoftDiamondTrainingArguments",
    "natural_mode",
]
