"""``RegularizedAdamW``: AdamW with an elementwise regularizer inside its one fused update.

The hook path (:func:`~hf_soft_diamond.attach_regularizer`) works with any optimizer but
costs the regularizer its own passes over memory: a coupled prior reads the weights and
rewrites ``.grad``; pWD must keep a factor computed *before* the step for the weights
*after* it (five memory streams, against two for AdamW's decay pass). Here the
regularizer's :class:`~hf_soft_diamond.regularizers.ElementwiseTerms` are inlined into
the AdamW update itself, compiled by ``torch.compile`` into one loop per tensor that
reads ``w, g, m, v`` and writes ``w, m, v`` once: the prior's arithmetic rides on memory
traffic AdamW pays anyway (measured in ``benchmarks/bench_fused_adamw.py``).

The update of one tensor at step ``t`` (the ``step`` counts per tensor, as in torch)::

    g'    = g + grad(w)                           # coupled regularizers (not written to .grad)
    w'    = pre(w)                                # decoupled, before the step (AdamW-style decay)
    m     = beta1 m + (1 - beta1) g'
    v     = beta2 v + (1 - beta2) g'^2
    w_hat = w' (1 - lr wd) - lr/(1 - beta1^t) * m / (sqrt(v/(1 - beta2^t)) + eps)
    w     = update(w', w_hat)                     # decoupled, after the step

which is ``torch.optim.AdamW`` (``amsgrad=False, maximize=False``) followed by the
regularizer exactly as the hook path applies it, with each group's scheduled ``lr``. An
``update`` that reads only ``w_hat`` (SaS's decoupled pull) is a second compiled pass over
``w`` instead: inside the loop its divisions would wait on AdamW's, which costs more than
the pass (``benchmarks/RESULTS.md``); an ``update`` that reads the weights before the step
(pWD) stays in the loop, where they are in registers.
State keys (``step``, ``exp_avg``, ``exp_avg_sq``) and dtypes are torch's, so a state
dict moves between the two. Parameters not in ``regularized`` get plain AdamW.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .fused import Backend, TensorwiseKernel, _at_least_fp32, compile_available, validate_backend, worth_compiling
from .hooks import STATE_KEY, RegularizerHandle, named_parameters_of
from .regularizers.base import ElementwiseTerms, Regularizer
from .regularizers.lp import NoRegularizer

__all__ = ["FusedRegularizerHandle", "RegularizedAdamW"]


def _adamw_update(w: Tensor, g: Tensor, m: Tensor, v: Tensor, lr: Tensor, beta1: Tensor, beta2: Tensor,
                  step_size: Tensor, inv_sqrt_bc2: Tensor, eps: Tensor, decay: Tensor, *reg_scalars: Tensor,
                  grad_term: Callable[..., Tensor] | None, pre_term: Callable[..., Tensor] | None,
                  update_term: Callable[..., Tensor] | None, n_grad_scalars: int, n_pre_scalars: int) -> None:
    """One AdamW step of one tensor, in place, with the regularizer's terms inlined.

    ``step_size = lr / (1 - beta1^t)``, ``inv_sqrt_bc2 = 1/sqrt(1 - beta2^t)``, ``decay =
    lr * weight_decay``; arithmetic in float32 or wider (bf16/fp16 state is upcast).
    ``reg_scalars`` are the grad, pre and update scalars of the terms, in that order.
    """
    grad_s = reg_scalars[:n_grad_scalars]
    pre_s = reg_scalars[n_grad_scalars:n_grad_scalars + n_pre_scalars]
    update_s = reg_scalars[n_grad_scalars + n_pre_scalars:]
    wf = _at_least_fp32(w)
    gf = g.to(wf.dtype)
    if grad_term is not None:
        gf = gf + grad_term(wf, *grad_s)
    if pre_term is not None:
        wf = pre_term(wf, *pre_s)
    mf = m.to(wf.dtype)
    m_new = mf + (gf - mf) * (1.0 - beta1)
    v_new = v.to(wf.dtype) * beta2 + (1.0 - beta2) * gf * gf
    stepped = wf * (1.0 - decay) - step_size * m_new / (torch.sqrt(v_new) * inv_sqrt_bc2 + eps)
    if update_term is not None:
        stepped = update_term(wf, stepped, *update_s)
    m.copy_(m_new)
    v.copy_(v_new)
    w.copy_(stepped)


class RegularizedAdamW(torch.optim.Optimizer):
    """AdamW whose fused per-tensor update also applies an elementwise regularizer.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.AdamW``.
        regularizer: any regularizer with :meth:`~hf_soft_diamond.regularizers.Regularizer.elementwise_terms`
            (``none``, ``l2``, ``l1``, ``lp``, ``sas``, ``pwd``; the spectral ones need the
            hook path). ``None``: plain AdamW, fused. Built without a mode, it runs
            decoupled (the natural mode under Adam).
        regularized: the parameters it acts on: a model (default selection rule of
            :func:`~hf_soft_diamond.regularizers.select_parameters`), ``(name, parameter)``
            pairs or bare parameters; ``None``: every parameter of the optimizer.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decay decoupled, per group;
            leave it 0 on regularized parameters, or both act).
        fused_backend: ``"auto"`` (compiled where inductor works and the optimizer holds at
            least :data:`~hf_soft_diamond.fused.COMPILE_MIN_NUMEL` weights, else eager; one
            decision for all its tensors), ``"compile"`` or ``"eager"`` (:mod:`hf_soft_diamond.fused`).
        on_nonfinite, check_finite_every: as :func:`~hf_soft_diamond.attach_regularizer`:
            every ``check_finite_every`` steps (0: never) the regularized weights are
            checked; NaN/Inf raises ``FloatingPointError`` naming them (or warns).

    The regularizer's ``step`` advances once per ``step()`` and is saved in
    ``state_dict()`` under ``"hf_soft_diamond"``; ``penalty()`` gives ``strength * R(w)``.
    Sparse gradients, ``amsgrad``, ``maximize`` and capturable (CUDA graph) steps are
    not supported.
    """

    def __init__(self, params: Iterable[Any], regularizer: Regularizer | None = None,
                 regularized: nn.Module | Iterable[tuple[str, nn.Parameter]] | Iterable[nn.Parameter] | None = None,
                 *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, fused_backend: Backend = "auto",
                 on_nonfinite: Literal["raise", "warn"] = "raise", check_finite_every: int = 1) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        for group in self.param_groups:
            _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        self.fused_backend = validate_backend(fused_backend)
        self.regularizer = regularizer
        if regularizer is not None and regularizer.elementwise_terms(lr) is None:
            raise ValueError(
                f"`regularizer` {regularizer.name!r} is not elementwise and cannot be fused into the "
                f"optimizer's update; attach it with hf_soft_diamond.attach_regularizer instead.")
        if regularized is None:
            marked = [g for g in self.param_groups if g.get("regularized") is not None]
            chosen = [p for g in (marked or self.param_groups) if g.get("regularized", True) for p in g["params"]]
            index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
            named = [(f"param_{index[id(p)]}", p) for p in chosen]
        else:
            named = named_parameters_of(regularized)
        # the wiring both paths share (selection check, mode, decay overlap, finite check, checkpoint
        # state); a plain AdamW (no regularizer) still gets the non-finite check through `none`
        self.handle = FusedRegularizerHandle(self, regularizer if regularizer is not None else NoRegularizer(),
                                             named, on_nonfinite, check_finite_every)
        self._kernels: dict[tuple[Any, ...], TensorwiseKernel] = {}

    @property
    def named_regularized(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs the regularizer acts on."""
        return self.handle.named_params

    @property
    def check_finite_every(self) -> int:
        return self.handle.check_finite_every

    @property
    def on_nonfinite(self) -> str:
        """``"raise"`` or ``"warn"``: what NaN/Inf in the regularized weights does (the handle's setting)."""
        return self.handle.on_nonfinite

    @on_nonfinite.setter
    def on_nonfinite(self, value: str) -> None:
        self.handle.on_nonfinite = value

    # ------------------------------------------------------------------ public
    def penalty(self) -> float:
        """``strength * R(w)`` of the regularized weights now (0 without a regularizer)."""
        if self.regularizer is None:
            return 0.0
        return self.handle.penalty()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        reg = self.regularizer
        active = reg is not None and reg.strength != 0.0
        for group in self.param_groups:
            terms = reg.elementwise_terms(float(group["lr"])) if active else None
            plain, regularized = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RegularizedAdamW does not support sparse gradients.")
                (regularized if terms is not None and self.handle.regularizes(p) else plain).append(p)
            self._step_tensors(group, plain, None)
            self._step_tensors(group, regularized, terms)
        self.handle.after_step()  # the step count and the non-finite check, in every run
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.regularizer is not None:
            state[STATE_KEY] = self.handle.state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop(STATE_KEY, None)
        super().load_state_dict(state_dict)
        if saved is not None and self.regularizer is not None:
            self.handle.load_state(saved)

    # ------------------------------------------------------------------ internals
    def _kernel(self, terms: ElementwiseTerms | None) -> TensorwiseKernel:
        terms = terms or ElementwiseTerms()
        key = (terms.grad, terms.pre, terms.update, len(terms.grad_scalars), len(terms.pre_scalars))
        kernel = self._kernels.get(key)
        if kernel is None:
            fn = functools.partial(_adamw_update, grad_term=terms.grad, pre_term=terms.pre,
                                   update_term=terms.update, n_grad_scalars=len(terms.grad_scalars),
                                   n_pre_scalars=len(terms.pre_scalars))
            kernel = self._kernels[key] = TensorwiseKernel(fn, self._kernel_backend())
        return kernel

    def _kernel_backend(self) -> str:
        """``fused_backend``, with ``"auto"`` decided once for the whole optimizer: compiled when
        inductor works here and the optimizer holds at least ``COMPILE_MIN_NUMEL`` weights. (Per
        call, the unregularized rest of a model, its biases and norms, would fall below the
        threshold and run eagerly: ~200 small tensors, ~6 ms per step of dispatch on a 36M model.)"""
        if self.fused_backend != "auto":
            return self.fused_backend
        tensors = [p for group in self.param_groups for p in group["params"]]
        device = tensors[0].device.type if tensors else "cpu"
        return "compile" if compile_available(device) and worth_compiling(tensors) else "eager"

    def _step_tensors(self, group: dict[str, Any], params: list[Tensor], terms: ElementwiseTerms | None) -> None:
        if not params:
            return
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        by_step: dict[float, list[Tensor]] = {}
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            by_step.setdefault(float(state["step"]), []).append(p)
        # an update that reads only the stepped weights (SaS's post-step pull) runs as its own pass after
        # the AdamW loop: inside it, its long chain of divisions waits on AdamW's and costs twice a pass
        separate = terms is not None and terms.update is not None and not terms.update_reads_old
        inlined = dataclasses.replace(terms, update=None, update_scalars=()) if separate else terms
        reg_scalars = () if inlined is None else (*inlined.grad_scalars, *inlined.pre_scalars,
                                                  *inlined.update_scalars)
        kernel = self._kernel(inlined)
        for t, ps in by_step.items():
            scalars = [lr, beta1, beta2, lr / (1.0 - beta1 ** t), 1.0 / math.sqrt(1.0 - beta2 ** t),
                       group["eps"], lr * group["weight_decay"], *reg_scalars]
            kernel([ps, [p.grad for p in ps], [self.state[p]["exp_avg"] for p in ps],
                    [self.state[p]["exp_avg_sq"] for p in ps]], scalars)
        if separate:  # the hook path's own post-step pass (same kernel cache)
            self.regularizer.decoupled_post_step_(params, lr)


def _check_hyperparameters(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    if isinstance(lr, Tensor) or not (isinstance(lr, (int, float)) and 0.0 <= lr < math.inf):
        raise ValueError(f"`lr` must be a finite number >= 0, got {lr!r}.")
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"`betas` must be two numbers in [0, 1), got {betas!r}.") from None
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"`betas` must be two numbers in [0, 1), got {betas!r}.")
    if not (isinstance(eps, (int, float)) and 0.0 < eps < math.inf):
        raise ValueError(f"`eps` must be a finite number > 0, got {eps!r}.")
    if not (isinstance(weight_decay, (int, float)) and 0.0 <= weight_decay < math.inf):
        raise ValueError(f"`weight_decay` must be a finite number >= 0, got {weight_decay!r}.")


class FusedRegularizerHandle(RegularizerHandle):
    """The :class:`~hf_soft_diamond.RegularizerHandle` of a :class:`RegularizedAdamW` (what the
    Trainer keeps as ``regularizer_handle``): the same wiring without step hooks (the optimizer
    applies the regularizer in its own update); :meth:`remove` turns it into plain AdamW.

    Built by the optimizer itself (``optimizer.handle``).
    """

    def __init__(self, optimizer: RegularizedAdamW, regularizer: Regularizer,
                 named_params: list[tuple[str, nn.Parameter]], on_nonfinite: Literal["raise", "warn"] = "raise",
                 check_finite_every: int = 1) -> None:
        super().__init__(optimizer, regularizer, named_params, on_nonfinite, check_finite_every, hooks=False)

    def remove(self) -> None:
        """Detach the regularizer: the optimizer goes on as plain AdamW."""
        if self.optimizer.regularizer is self.regularizer:
            self.optimizer.regularizer = None
        self.regularizer.forget_buffers()
