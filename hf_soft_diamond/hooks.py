"""Wire a :class:`~hf_soft_diamond.regularizers.Regularizer` into any torch optimizer.

:func:`attach_regularizer` registers optimizer step hooks
(``register_step_pre_hook`` / ``register_step_post_hook``), so the regularizer acts
once per *optimizer* step, whatever loop drives it (``transformers.Trainer``,
``accelerate``, plain PyTorch):

* coupled mode: before the step, ``strength * dR/dw`` is added to ``.grad``. By then
  gradients are accumulated, all-reduced, unscaled and clipped, so the prior's pull
  does not depend on accumulation steps, world size or loss scaling (and is not
  clipped). Parameters whose ``.grad`` is ``None`` are skipped, as the optimizer
  skips them.
  A prior too steep at 0 for the learning rate (one step of it would overshoot 0:
  :func:`warn_if_prior_step_overshoots`) gets one warning when it is attached.
* decoupled mode: ``decoupled_pre_step_`` before and ``decoupled_post_step_`` after the
  optimizer's own update, with each parameter group's *scheduled* ``lr``.
* an fp16 step that ``GradScaler`` skips (inf/NaN gradients) never calls
  ``optimizer.step``, so the regularizer does not act or advance either.
* the regularizer's progress (``step``, used by schedules) rides inside
  ``optimizer.state_dict()`` under the key ``"hf_soft_diamond"``, so every
  checkpointing path that saves the optimizer (Trainer, accelerate) resumes it.
* every ``check_finite_every`` optimizer steps (default 1: every step) the
  regularized weights are checked after the step, one fused read pass; NaN or Inf
  raises ``FloatingPointError`` naming the parameters (``on_nonfinite="warn"`` only
  warns), so a diverging run stops at the step it diverged instead of training on.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .fused import non_finite_indices
from .regularizers.base import Regularizer, optimizer_family

STATE_KEY = "hf_soft_diamond"

logger = logging.getLogger(__name__)


def resolve_mode_for(regularizer: Regularizer, optimizer: Any) -> str:
    """Fix ``regularizer``'s mode for ``optimizer`` (see :func:`~hf_soft_diamond.regularizers.natural_mode`).

    Logs one warning when an explicitly coupled prior runs under an optimizer that
    normalises per coordinate (Adam-family): there the prior's gradient is divided by the
    running RMS of the whole gradient, so wherever the data gradient is small the weight
    moves by about ``lr`` per step towards the prior's mode whatever the strength is.
    """
    mode = regularizer.resolve_mode(optimizer)
    if regularizer.coupled_under_adaptive(optimizer):
        name = type(optimizer).__name__ if not isinstance(optimizer, str) else optimizer
        logger.warning(
            "hf_soft_diamond: %r is coupled (added to the gradient) under %s, which normalises each coordinate: "
            "wherever the data gradient is small the prior's pull is normalised to about lr per step, whatever "
            "reg_strength is (weights collapse towards 0). Leave reg_mode unset (decoupled under Adam-family "
            "optimizers) unless that is what you want.", regularizer.name, name)
    return mode


def warn_if_prior_step_overshoots(regularizer: Regularizer, optimizer: torch.optim.Optimizer) -> float | None:
    """Warn when one step of the prior alone would carry a weight near 0 past 0 and farther out.

    Near 0 a prior that is smooth there pulls linearly, ``strength * R''(0) * w``
    (:meth:`~hf_soft_diamond.regularizers.Regularizer.curvature_at_zero`), so an explicit step of
    it maps a small weight ``w`` to ``(1 - h) * w`` with ``h = lr * strength * R''(0)``. For
    ``h > 2`` the weight lands on the other side of 0 farther out than it started: weights that
    the data gradient brings near 0 are flung outwards instead of settling (momentum only
    shifts the bound). The step is explicit for a coupled prior under an SGD-family optimizer
    (Adam normalises a coupled gradient instead, see :func:`resolve_mode_for`) and for a
    decoupled one unless its class guards it
    (:attr:`~hf_soft_diamond.regularizers.Regularizer.decoupled_stops_at_zero`). ``lr`` is the
    largest learning rate of the optimizer's groups (``initial_lr`` once a scheduler has set it:
    the schedule's peak).

    Returns ``h`` where the step is explicit, else ``None``.
    """
    curvature = regularizer.curvature_at_zero()
    if regularizer.mode == "coupled":
        explicit = optimizer_family(optimizer) == "sgd"
    else:
        explicit = not regularizer.decoupled_stops_at_zero
    if not explicit or curvature is None or not regularizer.acts:
        return None
    lr = max(float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups)
    h = lr * regularizer.strength * curvature
    if h > 2.0:
        remedies = [f"a reg_strength below {2.0 / (lr * curvature):.3g}"]
        if regularizer.mode == "coupled" and regularizer.decoupled_stops_at_zero:
            remedies.insert(0, "reg_mode='decoupled' (a pull that stops at 0)")
        remedies.append("a prior that is wider at 0 (larger sas_gamma or lp_eps)")
        warnings.warn(
            f"hf_soft_diamond: the {regularizer.mode} {regularizer.name!r} prior is stiff near 0 at lr={lr:g}, "
            f"reg_strength={regularizer.strength:g}: one step of the prior alone maps a small weight w to "
            f"(1 - {h:.3g}) * w (lr * reg_strength * R''(0) = {h:.3g} > 2), so weights that come near 0 are flung "
            f"outwards instead of settling. Use {', '.join(remedies[:-1])} or {remedies[-1]}.",
            UserWarning, stacklevel=4)
    return h


def check_on_nonfinite(on_nonfinite: str, check_finite_every: int) -> int:
    """Validate the two non-finite-check settings; returns ``check_finite_every`` as an int."""
    if on_nonfinite not in ("raise", "warn"):
        raise ValueError(f"`reg_on_nonfinite` must be 'raise' or 'warn', got {on_nonfinite!r}.")
    if int(check_finite_every) < 0:
        raise ValueError(f"`check_finite_every` must be >= 0 (0: never), got {check_finite_every!r}.")
    return int(check_finite_every)


def check_finite_weights(named_params: list[tuple[str, Tensor]], regularizer: Regularizer | None,
                         on_nonfinite: Literal["raise", "warn"], *, step: int | None = None,
                         backend: str | None = None) -> None:
    """Raise ``FloatingPointError`` (or warn) naming the parameters that hold NaN or Inf.

    ``regularizer`` may be ``None`` (plain optimizer); ``step`` defaults to the regularizer's.
    """
    backend = backend or (regularizer.fused_backend if regularizer is not None else "auto")
    bad = non_finite_indices([p for _, p in named_params], backend)
    if not bad:
        return
    names = [named_params[i][0] for i in bad]
    step = step if step is not None else (regularizer.step if regularizer is not None else "?")
    what = f" ({regularizer.name}, {regularizer.mode})" if regularizer is not None else ""
    msg = (f"hf_soft_diamond: non-finite weights in parameters {names[:5]} after optimizer step {step}{what}; "
           f"check the learning rate, reg_strength and the data loss.")
    if on_nonfinite == "raise":
        raise FloatingPointError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


def named_parameters_of(params: nn.Module | Iterable[tuple[str, nn.Parameter]] | Iterable[nn.Parameter]
                        ) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs: a model's default selection
    (:func:`~hf_soft_diamond.regularizers.select_parameters`), given pairs, or bare
    parameters named ``param_<i>``."""
    if isinstance(params, nn.Module):
        from .regularizers.selection import select_parameters

        return select_parameters(params)
    return [item if isinstance(item, tuple) else (f"param_{i}", item) for i, item in enumerate(params)]


class RegularizerHandle:
    """The live wiring of one regularizer to one optimizer: what :func:`attach_regularizer`
    returns, and what :class:`~hf_soft_diamond.optim.RegularizedAdamW` keeps inside.

    It owns what both wirings share: the named regularized parameters (checked to be in
    the optimizer), the mode resolved for the optimizer, the warning when the optimizer's
    own ``weight_decay`` also acts on them, the periodic non-finite check, and the
    checkpoint state under ``"hf_soft_diamond"``. With ``hooks=True`` (attach) it registers
    the optimizer step and state-dict hooks that apply the regularizer; with
    ``hooks=False`` the fused optimizer applies it in its own update and calls
    :meth:`after_step`, :meth:`state` and :meth:`load_state` itself.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, regularizer: Regularizer,
                 named_params: list[tuple[str, nn.Parameter]], on_nonfinite: Literal["raise", "warn"],
                 check_finite_every: int = 1, *, hooks: bool = True) -> None:
        self.check_finite_every = check_on_nonfinite(on_nonfinite, check_finite_every)
        resolve_mode_for(regularizer, optimizer)
        warn_if_prior_step_overshoots(regularizer, optimizer)
        self.optimizer = optimizer
        self.regularizer = regularizer
        self.named_params = named_params
        self.on_nonfinite = on_nonfinite
        self._names = {id(p): n for n, p in named_params}
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in named_params if id(p) not in in_optimizer]
        if missing:
            raise ValueError(
                f"regularized parameters are not in the optimizer: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}; build the optimizer over them first."
            )
        doubled = sorted({g.get("weight_decay", 0.0) for g in optimizer.param_groups
                          if g.get("weight_decay", 0.0) and any(id(p) in self._names for p in g["params"])})
        if doubled and regularizer.acts:
            warnings.warn(
                f"hf_soft_diamond: the optimizer also applies weight_decay={doubled} to regularized parameters, "
                f"on top of the {regularizer.name!r} regularizer; set weight_decay=0 for them unless you "
                f"want both.", UserWarning, stacklevel=3)
        self._handles = [] if not hooks else [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
            optimizer.register_state_dict_post_hook(self._save_state),
            optimizer.register_load_state_dict_pre_hook(self._load_state),
        ]

    def regularizes(self, param: Tensor) -> bool:
        """Whether ``param`` is one of the regularized parameters."""
        return id(param) in self._names

    def after_step(self) -> None:
        """Count the optimizer step and run the periodic non-finite check (every run, any strength)."""
        self.regularizer.step += 1
        if self.check_finite_every and self.regularizer.step % self.check_finite_every == 0:
            self._check_finite()

    def state(self) -> dict[str, Any]:
        """The checkpoint state (see :func:`regularizer_state`)."""
        return regularizer_state(self.regularizer, self.named_params)

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        load_regularizer_state(self.regularizer, self.named_params, saved)

    # ------------------------------------------------------------ public
    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_params]

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.named_params]

    def penalty(self) -> float:
        """``strength * R(w)`` of the regularized weights now (no gradient), as a float."""
        return float(self.regularizer.penalty(self.params))

    def remove(self) -> None:
        """Detach every hook; the optimizer behaves as if never regularized."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.regularizer.forget_buffers()

    # ------------------------------------------------------------ hooks
    def _groups(self) -> Iterable[tuple[list[Tensor], float]]:
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if id(p) in self._names]
            if params:
                yield params, float(group["lr"])

    @torch.no_grad()
    def _pre_step(self, optimizer, args, kwargs) -> None:
        reg = self.regularizer
        if reg.strength == 0.0:
            return
        for params, lr in self._groups():
            if reg.mode == "coupled":
                params = [p for p in params if p.grad is not None]
                if params:
                    reg.add_coupled_grad_(params, [p.grad for p in params], lr)
            else:
                reg.decoupled_pre_step_(params, lr)

    @torch.no_grad()
    def _post_step(self, optimizer, args, kwargs) -> None:
        reg = self.regularizer
        if reg.mode == "decoupled" and reg.strength != 0.0:
            for params, lr in self._groups():
                reg.decoupled_post_step_(params, lr)
        # on in every run, a regularizer at strength 0 or `none` included: a diverged run stops here
        self.after_step()

    def _check_finite(self) -> None:
        check_finite_weights(self.named_params, self.regularizer, self.on_nonfinite)

    def _save_state(self, optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict[STATE_KEY] = self.state()
        return state_dict

    def _load_state(self, optimizer, state_dict: dict[str, Any]) -> None:
        saved = state_dict.pop(STATE_KEY, None)
        if saved is not None:
            self.load_state(saved)


def regularizer_state(regularizer: Regularizer, named_params: list[tuple[str, Tensor]]) -> dict[str, Any]:
    """What a checkpoint carries under ``"hf_soft_diamond"``: the regularizer's progress and its
    per-parameter state keyed by parameter name (so it resumes in a new process)."""
    per_param = {name: st for name, p in named_params if (st := regularizer.param_state(p)) is not None}
    return {"regularizer": regularizer.name, **regularizer.state_dict(), "params": per_param}


def load_regularizer_state(regularizer: Regularizer, named_params: list[tuple[str, Tensor]],
                           saved: dict[str, Any]) -> None:
    """Restore :func:`regularizer_state` into ``regularizer`` for these parameters."""
    saved = dict(saved)
    per_param = saved.pop("params", {}) or {}
    regularizer.load_state_dict(saved)
    by_name = dict(named_params)
    for name, state in per_param.items():
        if name in by_name:
            regularizer.load_param_state(by_name[name], state)


def attach_regularizer(
    optimizer: torch.optim.Optimizer,
    regularizer: Regularizer,
    params: nn.Module | Iterable[tuple[str, nn.Parameter]] | Iterable[nn.Parameter],
    *,
    on_nonfinite: Literal["raise", "warn"] = "raise",
    check_finite_every: int = 1,
) -> RegularizerHandle:
    """Make ``optimizer.step()`` apply ``regularizer`` to ``params``.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (for decoupled regularizers, build it
            with ``weight_decay=0`` on these parameters, or the decay is applied twice).
        regularizer: e.g. ``build_regularizer("sas", strength=1e-4, alpha=1.5, gamma=0.5)``.
            Built without a ``mode``, it takes the optimizer's natural mode here: the
            paper's (coupled) form under SGD-family optimizers, decoupled under Adam-family
            ones (see :mod:`hf_soft_diamond.regularizers.base`).
        params: a model (the default selection rule of
            :func:`~hf_soft_diamond.regularizers.select_parameters` is applied), or
            ``(name, parameter)`` pairs, or bare parameters.
        on_nonfinite: ``"raise"`` (default) or ``"warn"``.
        check_finite_every: check the weights every this many steps (0: never).
    """
    return RegularizerHandle(optimizer, regularizer, named_parameters_of(params), on_nonfinite,
                             check_finite_every)
