"""Heavy-tailed spectral regularizers (Xiao et al., arXiv 2304.02911; docs/methods.md §6).

``weighted_alpha``, ``stable_rank``, ``powerlaw_prior`` and ``frechet_prior``: penalties on
the eigenvalues ``lambda_i = sigma_i(W)^2`` of ``W^T W`` of each regularized weight (a
*layer* is one weight tensor; conventions, orientation, zero tolerance and log bases in
:mod:`hf_soft_diamond.priors.spectral`). The objective gains ``strength * d(epoch) *
sum_layers R_l`` (``strength`` is the paper's ``mu``). Coupled mode (the paper, SGD):
``strength * d * dR_l/dW`` is added to ``.grad`` once per optimizer step; decoupled mode
(the default under Adam-family optimizers): ``W <- W - lr * strength * d * dR_l/dW``
just before the optimizer step, from the same gradient.

Cost control. A full spectrum (batched ``eigh`` of the Gram matrices of same-shape
layers, or SVD) is computed every ``refresh_every`` optimizer steps; in between a
cheap surrogate is used:

* the top singular pair ``(sigma_max, u, v)`` of every layer is tracked by
  ``power_iters`` warm-started power iterations per step (two mat-vecs), so
  ``lambda_max`` and its gradient ``d lambda_max/dW = 2 sigma u v^T`` are current;
* ``stable_rank`` (``||W||_F^2 / lambda_max``) and ``frechet_prior`` (a function of
  ``lambda_max``) are therefore evaluated *exactly* every step, up to the power
  iteration's accuracy;
* ``weighted_alpha``'s ``alpha_hat`` and its gradient ``d alpha_hat/dW`` (``= U
  diag(d alpha_hat/d sigma) V^T`` with the cached singular vectors and weights) are
  frozen at the refresh, its ``ln lambda_max`` factor is tracked;
* ``powerlaw_prior``'s value and gradient (``2a U_S diag(1/sigma) V_S^T``) are frozen
  at the refresh.

Right after a refresh the surrogate gradient equals the exact one. Frozen gradients
cost one float32 copy of the regularized weights (``weighted_alpha``, ``powerlaw_prior``).

Anti-over-regularization variants (both optional, combinable):

* epoch decay (``decay="power"`` or ``"exponential"``): the penalty and its gradient are
  multiplied by ``d(x)``, ``x = floor(epoch / decay_epochs)``, ``d = x^(-decay_k)`` (with
  ``d(0) = 1``) or ``exp(-decay_k * x)``, and switched off (0, and no spectral work at
  all) once ``d <= threshold``. The epoch is set by :meth:`set_epoch` (the Trainer calls
  it); without it, ``steps_per_epoch > 0`` derives it from the optimizer step counter.
* lower threshold (``lower_threshold = t``): a layer's term (and its gradient) is applied
  only while its value exceeds ``t`` (``threshold_scope="layer"``, default), or all terms
  only while their sum exceeds ``t`` (``"total"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..fused import Backend
from ..priors import spectral as sp
from .base import Citation, Param, Regularizer, check_number, register_regularizer

#: Default ``refresh_every`` per regularizer, chosen from benchmarks/bench_spectral.py
#: (RESULTS.md, "Spectral regularizers"): on the Marian-like model (97 matrices, a full
#: refresh ~1.2-1.5 s, a CPU training step ~1 s) these keep the amortized overhead under
#: 10% of the unregularized step. ``stable_rank``/``frechet_prior`` are evaluated exactly
#: every step (power iteration), so their refresh only re-anchors the power iteration;
#: ``weighted_alpha``/``powerlaw_prior`` freeze part of the gradient, so they refresh
#: as often as the budget allows.
DEFAULT_REFRESH_EVERY: dict[str, int] = {"weighted_alpha": 25, "powerlaw_prior": 25, "stable_rank": 50,
                                         "frechet_prior": 50}
DECAYS: tuple[str, ...] = ("none", "power", "exponential")
THRESHOLD_SCOPES: tuple[str, ...] = ("layer", "total")
_REFRESH_CHUNK = 32  # layers per batched eigh/SVD call (bounds the temporary memory)

#: The options every spectral regularizer takes (keywords of :class:`_SpectralRegularizer`).
SPECTRAL_PARAMS: tuple[Param, ...] = (
    Param("refresh_every", "spectral_refresh_every", None, "Full spectrum every this many optimizer steps (1: "
          "exact every step; None: the regularizer's default, DEFAULT_REFRESH_EVERY).", low=1, integer=True,
          allow_none=True),
    Param("conv_mode", "spectral_conv_mode", "flatten", "Conv kernels: 'flatten' (one matrix) or 'per_position'.",
          choices=sp.CONV_MODES),
    Param("decay", "spectral_decay", "none", "Epoch decay of the strength: 'none', 'power' or 'exponential'.",
          choices=DECAYS),
    Param("decay_k", "spectral_decay_k", 1.0, "Decay rate k >= 0.", low=0.0),
    Param("decay_epochs", "spectral_decay_epochs", 1.0, "Epochs per decay stage (> 0).", low=0.0, low_open=True),
    Param("threshold", "spectral_threshold", 0.0, "The decayed penalty switches off once its factor is <= this.",
          low=0.0),
    Param("lower_threshold", "spectral_lower_threshold", None, "Apply a term only while its value exceeds this "
          "(None: always).", allow_none=True),
    Param("threshold_scope", "spectral_threshold_scope", "layer", "What lower_threshold compares: each 'layer' or "
          "the 'total'.", choices=THRESHOLD_SCOPES),
    Param("steps_per_epoch", "spectral_steps_per_epoch", 0, "Derive the epoch from the step counter (0: off; the "
          "Trainer sets the epoch itself).", low=0, integer=True),
    Param("power_iters", "spectral_power_iters", 1, "Warm-started power iterations per step (>= 1).", low=1,
          integer=True),
    Param("method", "spectral_method", "eigh", "Full-spectrum method: 'eigh' (Gram matrix) or 'svd'.",
          choices=sp.METHODS),
    Param("rtol", "spectral_rtol", None, "Zero tolerance of eigenvalues (> 0; None: max(N, M) * eps(float32)).",
          low=0.0, low_open=True, allow_none=True),
)

SPECTRAL_CITATION = Citation(
    title="heavy-tailed spectral regularizer",
    reference="Xiao, Li, Xie & Zhou, Heavy-Tailed Regularization of Weight Matrices in Deep Neural Networks, "
              "arXiv:2304.02911",
    bibtex="@article{xiao2023heavytailed,\n  title={Heavy-Tailed Regularization of Weight Matrices in Deep Neural "
           "Networks},\n  author={Xiao, Xuanzhe and Li, Zeng and Xie, Chuanlong and Zhou, Fengwei},\n"
           "  journal={arXiv preprint arXiv:2304.02911},\n  year={2023}\n}")


@dataclass
class _LayerState:
    layout: sp.LayerLayout
    sigma: Tensor  # (P,) tracked top singular value per matrix
    u: Tensor  # (P, N)
    v: Tensor  # (P, M)
    refreshed_at: int
    frozen_grad: Tensor | None = None  # param-shaped, float32/64
    alpha: float = 0.0  # weighted_alpha: alpha_hat at the refresh
    frozen_value: float = 0.0  # powerlaw: value at the refresh
    value: float = 0.0  # last per-layer value (without strength and decay)
    fro2: float = 0.0  # last ||W||_F^2


def _top(st: _LayerState) -> tuple[int, float]:
    """Index of the matrix with the largest sigma and that sigma."""
    if st.sigma.numel() == 1:
        return 0, float(st.sigma[0])
    i = int(torch.argmax(st.sigma))
    return i, float(st.sigma[i])


def _add_rank1_(g: Tensor, layout: sp.LayerLayout, index: int, u: Tensor, v: Tensor, alpha: float) -> None:
    """``g[matrix index] += alpha * u v^T`` (in place on ``g``'s own storage when possible)."""
    if alpha == 0.0:
        return
    if g.is_contiguous():
        sp.matrix_view(g, layout)[index].addr_(u.to(g.dtype), v.to(g.dtype), alpha=alpha)
    else:
        dense = torch.zeros(layout.key, dtype=u.dtype, device=u.device)
        dense[index] = alpha * torch.outer(u, v)
        g.add_(sp.from_matrices(dense, layout).to(g.dtype))


class _SpectralRegularizer(Regularizer):
    """Shared machinery: layer states, batched refreshes, decay, threshold. See the module docstring.

    Args:
        strength: ``mu >= 0``.
        mode: ``"coupled"`` (the paper: ``mu * dR/dW`` added to the gradient) or ``"decoupled"``
            (``W <- W - lr * mu * dR/dW`` before the step, for Adam-family optimizers);
            ``None``: follow the optimizer.
        refresh_every: full spectrum every this many optimizer steps (>= 1; 1: exact every step;
            ``None``: the regularizer's entry of :data:`DEFAULT_REFRESH_EVERY`).
        conv_mode: ``"flatten"`` or ``"per_position"`` (conv kernels, see priors.spectral).
        decay: ``"none"``, ``"power"`` or ``"exponential"`` (epoch decay).
        decay_k: the decay rate ``k >= 0``.
        decay_epochs: ``m > 0``, epochs per decay stage.
        threshold: ``t >= 0``: the decayed penalty is switched off once ``d <= t``.
        lower_threshold: apply a term only while its value exceeds this (``None``: always).
        threshold_scope: ``"layer"`` or ``"total"`` (what ``lower_threshold`` compares).
        steps_per_epoch: ``> 0``: derive the epoch from the step counter until
            :meth:`set_epoch` is called (0: off).
        power_iters: warm-started power iterations per step (>= 1).
        method: ``"eigh"`` (Gram matrix, default, faster) or ``"svd"`` for the refresh.
        rtol: zero tolerance of eigenvalues (``None``: ``max(N, M) * eps(float32)``).
    """

    params = SPECTRAL_PARAMS
    citation = SPECTRAL_CITATION

    def __init__(self, strength: float = 0.0, mode: str | None = None, *, refresh_every: int | None = None,
                 conv_mode: str = "flatten", decay: str = "none", decay_k: float = 1.0, decay_epochs: float = 1.0,
                 threshold: float = 0.0, lower_threshold: float | None = None, threshold_scope: str = "layer",
                 steps_per_epoch: int = 0, power_iters: int = 1, method: str = "eigh", rtol: float | None = None,
                 fused_backend: Backend = "auto") -> None:
        super().__init__(strength, mode, fused_backend)
        self._set_params(refresh_every=refresh_every, conv_mode=conv_mode, decay=decay, decay_k=decay_k,
                         decay_epochs=decay_epochs, threshold=threshold, lower_threshold=lower_threshold,
                         threshold_scope=threshold_scope, steps_per_epoch=steps_per_epoch, power_iters=power_iters,
                         method=method, rtol=rtol)
        if self.refresh_every is None:
            self.refresh_every = DEFAULT_REFRESH_EVERY.get(self.name, 25)
        self._epoch: float | None = None
        self._states: dict[int, _LayerState] = {}
        self.refresh_count = 0  # full-spectrum computations done (layers), for tests and benchmarks

    # ------------------------------------------------------------ per-class math
    def _exact_fn(self, lam: Tensor, valid: Tensor) -> Tensor:
        """``R`` per layer ``(B,)`` from the pooled ascending spectrum."""
        raise NotImplementedError

    def _frozen_fn(self) -> Callable[[Tensor, Tensor], Tensor] | None:
        """The part of ``R`` whose value and gradient are frozen between refreshes (or None)."""
        return None

    def _store_refresh(self, st: _LayerState, value: Tensor | None) -> None:
        """Keep the refresh's frozen value (``value`` of :meth:`_frozen_fn`)."""

    def _value(self, st: _LayerState, sigma: float, fro2: float) -> float:
        """Current per-layer value from the tracked ``sigma_max`` and ``||W||_F^2``."""
        raise NotImplementedError

    def _add_grad_(self, p: Tensor, g: Tensor, st: _LayerState, scale: float) -> None:
        """``g += scale * dR/dW`` with the surrogate."""
        raise NotImplementedError

    def _needs_fro(self) -> bool:
        return False

    # ------------------------------------------------------------ epoch decay
    def set_epoch(self, epoch: float) -> None:
        """Set the (fractional) training epoch that drives the epoch decay."""
        self._epoch = check_number("epoch", epoch, low=0.0)

    @property
    def epoch(self) -> float:
        if self._epoch is not None:
            return self._epoch
        if self.steps_per_epoch > 0:
            return self.step / self.steps_per_epoch
        return 0.0

    def decay_factor(self) -> float:
        """``d(floor(epoch / decay_epochs))``, or 0 once it is ``<= threshold`` (1 without decay)."""
        if self.decay == "none":
            return 1.0
        x = math.floor(self.epoch / self.decay_epochs)
        if self.decay == "power":
            d = 1.0 if x == 0 else float(x) ** (-self.decay_k)
        else:
            d = math.exp(-self.decay_k * x)
        return 0.0 if d <= self.threshold else d

    # ------------------------------------------------------------ states
    def _layout(self, p: Tensor) -> sp.LayerLayout:
        return sp.layer_layout(p.shape, self.conv_mode)

    def _due(self, p: Tensor) -> bool:
        st = self._states.get(id(p))
        return (st is None or st.layout.shape != tuple(p.shape)
                or self.step - st.refreshed_at >= self.refresh_every or self.step < st.refreshed_at)

    @torch.no_grad()
    def refresh(self, params: Sequence[Tensor]) -> None:
        """Full spectrum of ``params`` now (batched by shape), resetting their surrogates."""
        groups: dict[tuple, list[Tensor]] = {}
        for p in params:
            lay = self._layout(p)
            groups.setdefault((lay.key, sp._compute_dtype(p.dtype), p.device), []).append(p)
        fn = self._frozen_fn()
        for (_, dtype, _), ps in groups.items():
            for start in range(0, len(ps), _REFRESH_CHUNK):
                chunk = ps[start:start + _REFRESH_CHUNK]
                lays = [self._layout(p) for p in chunk]
                mats = torch.stack([sp.matrix_view(p, lay).to(dtype) for p, lay in zip(chunk, lays)])
                res = sp.spectral_refresh(mats, fn, self.method, self.rtol)
                del mats
                for b, (p, lay) in enumerate(zip(chunk, lays)):
                    st = _LayerState(layout=lay, sigma=res.sigma[b].clone(), u=res.u[b].clone(),
                                     v=res.v[b].clone(), refreshed_at=self.step)
                    if res.grad is not None:
                        st.frozen_grad = sp.from_matrices(res.grad[b], lay).contiguous()
                    self._store_refresh(st, None if res.value is None else res.value[b])
                    self._states[id(p)] = st
                self.refresh_count += len(chunk)

    def _track(self, p: Tensor, st: _LayerState) -> None:
        """Advance the warm-started power iteration of one layer."""
        sigma, u, v = sp.power_iteration(sp.matrix_view(p, st.layout), st.v, iters=self.power_iters)
        st.sigma, st.u, st.v = sigma, u, v

    @staticmethod
    def _fro2(p: Tensor) -> float:
        return float(torch.linalg.vector_norm(p, dtype=sp._compute_dtype(p.dtype))) ** 2

    # ------------------------------------------------------------ hooks
    @torch.no_grad()
    def add_coupled_grad_(self, params: Sequence[Tensor], grads: Sequence[Tensor], lr: float) -> None:
        factor = self.decay_factor()
        if factor == 0.0 or self.strength == 0.0:
            return
        params = list(params)
        due = [p for p in params if self._due(p)]
        if due:
            self.refresh(due)
        states = []
        for p in params:
            st = self._states[id(p)]
            if st.refreshed_at != self.step:
                self._track(p, st)
            st.fro2 = self._fro2(p) if self._needs_fro() else 0.0
            st.value = self._value(st, _top(st)[1], st.fro2)
            states.append(st)
        on = self._gates([st.value for st in states])
        scale = self.strength * factor
        for p, g, st, keep in zip(params, grads, states, on):
            if keep:
                self._add_grad_(p, g, st, scale)

    def decoupled_pre_step_(self, params: Sequence[Tensor], lr: float) -> None:
        self.prior_gradient_step_(params, lr)

    def _gates(self, values: list[float]) -> list[bool]:
        t = self.lower_threshold
        if t is None:
            return [True] * len(values)
        if self.threshold_scope == "total":
            return [sum(values) > t] * len(values)
        return [v > t for v in values]

    # ------------------------------------------------------------ values
    @torch.no_grad()
    def layer_values(self, params: Sequence[Tensor], exact: bool = False) -> list[float]:
        """Per-layer ``R_l`` (no strength, no decay, no threshold).

        ``exact=False`` (default): the surrogate's current estimate for layers that have
        one (one power-iteration step from the cached vectors, nothing stored); layers
        without a cached state, or all with ``exact=True``, get a full spectrum.
        """
        params = list(params)
        out: list[float | None] = [None] * len(params)
        todo: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            st = self._states.get(id(p))
            if not exact and st is not None and st.layout.shape == tuple(p.shape):
                sigma, _, _ = sp.power_iteration(sp.matrix_view(p, st.layout), st.v, iters=1)
                fro2 = self._fro2(p) if self._needs_fro() else 0.0
                out[i] = self._value(st, float(sigma.max()), fro2)
            else:
                lay = self._layout(p)
                todo.setdefault((lay.key, sp._compute_dtype(p.dtype), p.device), []).append(i)
        for (_, dtype, _), idx in todo.items():
            for start in range(0, len(idx), _REFRESH_CHUNK):
                chunk = idx[start:start + _REFRESH_CHUNK]
                mats = torch.stack([sp.matrix_view(params[i], self._layout(params[i])).to(dtype) for i in chunk])
                lam, valid = sp.batch_eigenvalues(mats, self.rtol, self.method)
                vals = self._exact_fn(lam, valid)
                for j, i in enumerate(chunk):
                    out[i] = float(vals[j])
        return [float(v) for v in out]

    def penalty_terms(self, params: Sequence[Tensor], exact: bool = False) -> Tensor:
        """``d(epoch) * sum_l R_l`` over the layers the lower threshold keeps on (float64 0-d).

        See :meth:`layer_values` for ``exact``.
        """
        factor = self.decay_factor()
        params = list(params)
        if factor == 0.0 or not params:
            return torch.zeros((), dtype=torch.float64)
        values = self.layer_values(params, exact=exact)
        total = sum(v for v, keep in zip(values, self._gates(values)) if keep)
        return torch.tensor(factor * total, dtype=torch.float64)

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self._epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        epoch = state.get("epoch")
        self._epoch = None if epoch is None else float(epoch)
        self._states.clear()  # refilled by load_param_state, else rebuilt at the next step

    #: the fields of a layer's surrogate that an exact resume needs (the layout follows from the shape)
    _PARAM_STATE_FIELDS = ("sigma", "u", "v", "refreshed_at", "frozen_grad", "alpha", "frozen_value", "value", "fro2")

    def param_state(self, param: Tensor) -> dict[str, Any] | None:
        """The layer's surrogate (power-iteration vectors, refresh step, frozen gradient and values)."""
        st = self._states.get(id(param))
        if st is None:
            return None
        return {name: getattr(st, name) for name in self._PARAM_STATE_FIELDS}

    def load_param_state(self, param: Tensor, state: dict[str, Any]) -> None:
        def on_device(x: Any) -> Any:
            return x.to(param.device) if isinstance(x, Tensor) else x

        layout = self._layout(param)
        fields = {k: on_device(state[k]) for k in self._PARAM_STATE_FIELDS}
        self._states[id(param)] = _LayerState(layout=layout, **fields)

    def forget_buffers(self) -> None:
        self._states.clear()


# ============================================================================ regularizers
@register_regularizer
class WeightedAlphaRegularizer(_SpectralRegularizer):
    """``weighted_alpha``: ``R = sum_l alpha_hat_l * ln(lambda_max_l)`` (natural log).

    ``alpha_hat`` is the Hill estimate with ``hill_k`` tail eigenvalues (``None``: half of
    the kept ones). Between refreshes ``alpha_hat`` and ``d alpha_hat/dW`` are frozen and
    ``lambda_max`` is tracked by power iteration. Where ``lambda_max < 1`` the log is
    negative and the penalty pushes ``alpha_hat`` *up* (the paper's formula, kept as is).

    Accuracy of the surrogate: ``d alpha_hat/dW`` is dominated by the reference
    eigenvalue ``lambda_(n-k)`` (weight ``k`` times the others'), whose eigenvector lies
    in the middle of the bulk and turns with any update of the weights; and ``alpha_hat``
    itself is ``1 + 1/mean-log-ratio``, hypersensitive when the top half is compressed.
    On a randomly initialised Transformer under Adam the frozen gradient decorrelates
    from the exact one within a step or two (RESULTS.md, "Spectral regularizers"); use
    ``refresh_every=1`` where fidelity to the exact gradient matters more than cost.

    Args:
        hill_k: tail size of the Hill estimator (``None`` or 0: ``n/2``); other arguments
            as :class:`_SpectralRegularizer`.
    """

    name = "weighted_alpha"
    params = (Param("hill_k", "spectral_hill_k", None, "Tail size of the Hill estimator (None or 0: half of the "
                    "kept eigenvalues).", low=0, integer=True, allow_none=True), *SPECTRAL_PARAMS)

    def __init__(self, strength: float = 0.0, mode: str | None = None, hill_k: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(strength, mode, **kwargs)
        self._set_params(hill_k=hill_k)
        self.hill_k = self.hill_k or None  # 0 means the default

    def _exact_fn(self, lam, valid):
        return sp.weighted_alpha_penalty(lam, valid, self.hill_k)

    def _frozen_fn(self):
        k = self.hill_k
        return lambda lam, valid: sp.hill_alpha(lam, k, valid)

    def _store_refresh(self, st, value):
        st.alpha = float(value)

    def _value(self, st, sigma, fro2):
        return st.alpha * math.log(sigma * sigma) if sigma > 0 else 0.0

    def _add_grad_(self, p, g, st, scale):
        i, sigma = _top(st)
        if sigma <= 0:
            return
        g.add_(st.frozen_grad.to(g.dtype), alpha=scale * math.log(sigma * sigma))
        _add_rank1_(g, st.layout, i, st.u[i], st.v[i], scale * st.alpha * 2.0 / sigma)



@register_regularizer
class StableRankRegularizer(_SpectralRegularizer):
    """``stable_rank``: ``R = sum_l ||W_l||_F^2 / ||W_l||_2^2``.

    Evaluated every step from the exact Frobenius norm and the power-iteration
    ``sigma_max``; gradient ``2 W / sigma^2 - 2 ||W||_F^2 / sigma^3 u v^T``.
    """

    name = "stable_rank"

    def _exact_fn(self, lam, valid):
        return sp.stable_rank_penalty(lam, valid)

    def _needs_fro(self):
        return True

    def _value(self, st, sigma, fro2):
        return fro2 / (sigma * sigma) if sigma > 0 else 0.0

    def _add_grad_(self, p, g, st, scale):
        i, sigma = _top(st)
        if sigma <= 0:
            return
        g.add_(p.to(g.dtype), alpha=scale * 2.0 / sigma**2)
        _add_rank1_(g, st.layout, i, st.u[i], st.v[i], -scale * 2.0 * st.fro2 / sigma**3)


@register_regularizer
class PowerLawPriorRegularizer(_SpectralRegularizer):
    """``powerlaw_prior``: ``R = sum_l a * sum_{lambda_i >= lambda_min} ln lambda_i``.

    The negative log of a power-law prior ``p(lambda) ~ lambda^(-a)`` on each layer's ESD
    above ``lambda_min``. Value and gradient are frozen between refreshes.

    Args:
        a: exponent ``> 0`` (``powerlaw_a``).
        lambda_min: lower edge ``>= 0`` (``powerlaw_lambda_min``).
    """

    name = "powerlaw_prior"
    params = (Param("a", "powerlaw_a", 2.0, "Power-law exponent a > 0.", low=0.0, low_open=True),
              Param("lambda_min", "powerlaw_lambda_min", 0.0, "Lower edge of the power law (>= 0).", low=0.0),
              *SPECTRAL_PARAMS)

    def __init__(self, strength: float = 0.0, mode: str | None = None, a: float = 2.0, lambda_min: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(strength, mode, **kwargs)
        self._set_params(a=a, lambda_min=lambda_min)

    def _exact_fn(self, lam, valid):
        return sp.powerlaw_penalty(lam, valid, self.a, self.lambda_min)

    def _frozen_fn(self):
        a, lmin = self.a, self.lambda_min
        return lambda lam, valid: sp.powerlaw_penalty(lam, valid, a, lmin)

    def _store_refresh(self, st, value):
        st.frozen_value = float(value)

    def _value(self, st, sigma, fro2):
        return st.frozen_value

    def _add_grad_(self, p, g, st, scale):
        g.add_(st.frozen_grad.to(g.dtype), alpha=scale)



@register_regularizer
class FrechetPriorRegularizer(_SpectralRegularizer):
    """``frechet_prior``: ``R = sum_l (1+a) ln z_l + z_l^(-a)``, ``z_l = (lambda_max_l - m)/s``.

    The negative log of a Frechet prior on each layer's ``lambda_max`` (shape ``a``, scale
    ``s``, location ``m``); below ``z = 0.01`` (including ``lambda_max <= m``) it continues
    linearly (see :func:`hf_soft_diamond.priors.spectral.frechet_penalty`). Evaluated
    every step from the power-iteration ``lambda_max``.

    Args:
        a: shape ``> 0`` (``frechet_a``).
        s: scale ``> 0`` (``frechet_s``).
        m: location (``frechet_m``), any finite number.
    """

    name = "frechet_prior"
    params = (Param("a", "frechet_a", 2.0, "Frechet shape a > 0.", low=0.0, low_open=True),
              Param("s", "frechet_s", 1.0, "Frechet scale s > 0.", low=0.0, low_open=True),
              Param("m", "frechet_m", 0.0, "Frechet location m (any finite number)."),
              *SPECTRAL_PARAMS)

    def __init__(self, strength: float = 0.0, mode: str | None = None, a: float = 2.0, s: float = 1.0, m: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(strength, mode, **kwargs)
        self._set_params(a=a, s=s, m=m)

    def _exact_fn(self, lam, valid):
        return sp.frechet_penalty_from_spectrum(lam, valid, self.a, self.s, self.m)

    def _value(self, st, sigma, fro2):
        return float(sp.frechet_penalty(torch.tensor(sigma * sigma, dtype=torch.float64), self.a, self.s, self.m))

    def _add_grad_(self, p, g, st, scale):
        i, sigma = _top(st)
        slope = float(sp.frechet_slope(torch.tensor(sigma * sigma, dtype=torch.float64), self.a, self.s, self.m))
        _add_rank1_(g, st.layout, i, st.u[i], st.v[i], scale * slope * 2.0 * sigma)

