"""Spectra of weight matrices and the heavy-tailed metrics and penalties on them (docs/methods.md §6).

Torch only. Conventions (one place, used by every caller):

* **Layer**: one weight tensor. A 2-D tensor ``(N, M)`` is one matrix. A conv kernel
  ``(out, in, kh, kw)`` is either flattened to one matrix ``out x (in*kh*kw)``
  (``conv_mode="flatten"``, the default) or split into ``kh*kw`` matrices ``out x in``,
  one per kernel position, whose eigenvalues are *pooled* into one spectrum for the
  layer (``conv_mode="per_position"``, what weightwatcher does for Conv2d). Any other
  tensor with ``ndim >= 3`` is flattened to ``(shape[0], prod(shape[1:]))``. A layer is
  therefore a stack of ``P`` matrices (``P = 1`` unless ``per_position``), returned by
  :func:`layer_matrices` as ``(P, N, M)``.
* **Orientation**: each matrix is transposed if needed so that ``N >= M``; the spectrum
  is that of ``X = W^T W``: the ``M = min(rows, cols)`` eigenvalues
  ``lambda_i = sigma_i(W)^2``, sorted **ascending**.
* **Numerically zero eigenvalues** are dropped (masked in batched code). The tolerance
  is the ``matrix_rank`` rule applied to the matrix whose spectrum is computed: through
  singular values (:func:`torch.linalg.svdvals`, method ``"svd"``) ``sigma_i <=
  rtol * sigma_max``, i.e. ``lambda_i <= rtol^2 * lambda_max``; through the Gram matrix
  (:func:`torch.linalg.eigh` of ``W^T W``, method ``"eigh"``) ``lambda_i <= rtol *
  lambda_max``, both with ``rtol = max(N, M) * eps(float32)`` unless given.
* **Precision**: spectra are computed in float32 on the tensor's device (bf16/fp16
  weights are upcast; float64 weights stay float64, which tests use).
* **Logarithms**: ``weighted_alpha`` (the weightwatcher *metric*) is ``alpha_hat *
  log10(lambda_max)``; every *penalty* uses the natural log.
* **Hill estimator** over the ``n`` kept eigenvalues with ``k`` tail points (``k =
  floor(n/2)`` by default)::

      alpha_hat = 1 + k / sum_{i=1..k} ln(lambda_(n-i+1) / lambda_(n-k))

  It estimates the exponent ``a`` of an ESD density ``p(lambda) ~ lambda^(-a)``. If the
  top eigenvalues are (numerically) equal, the sum is 0 and ``alpha_hat`` would be
  infinite: the mean log-ratio is clamped below at :data:`HILL_MIN_MEAN_LOG`, so
  ``alpha_hat <= 1 + 1/HILL_MIN_MEAN_LOG`` (gradient 0 there); layers with fewer than 2
  kept eigenvalues get that cap too.
* **Gradients**: everything is differentiable through ``svdvals``/``eigh`` (whose
  backward for eigen/singular *values* only is ``U diag(g) V^T``, finite for repeated
  values) and through sorting; ``log`` is only taken of kept (non-zero) eigenvalues.
  For a function ``R`` of the eigenvalues of ``W^T W``, ``dR/dW = 2 W V diag(dR/dlambda)
  V^T = U diag(2 sigma dR/dlambda) V^T`` (:func:`spectral_refresh` uses this form).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ConvMode = Literal["flatten", "per_position"]
CONV_MODES: tuple[str, ...] = ("flatten", "per_position")
Method = Literal["eigh", "svd"]
METHODS: tuple[str, ...] = ("eigh", "svd")

#: Lower clamp of the Hill estimator's mean log-ratio; caps ``alpha_hat`` at ``1 + 1e4``.
HILL_MIN_MEAN_LOG = 1e-4
#: Below ``z = (lambda_max - m)/s = FRECHET_Z_FLOOR`` the Frechet penalty continues linearly.
FRECHET_Z_FLOOR = 1e-2


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class LayerLayout:
    """How one weight tensor maps to its stack of ``P`` matrices ``(P, N, M)`` with ``N >= M``."""

    shape: tuple[int, ...]
    conv_mode: str
    P: int
    rows: int  # of each matrix before orientation
    cols: int
    transposed: bool

    @property
    def N(self) -> int:
        return self.cols if self.transposed else self.rows

    @property
    def M(self) -> int:
        return self.rows if self.transposed else self.cols

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.P, self.N, self.M)


def layer_layout(shape: torch.Size | tuple[int, ...], conv_mode: ConvMode = "flatten") -> LayerLayout:
    """The :class:`LayerLayout` of a weight of ``shape`` (``ndim >= 2``)."""
    shape = tuple(int(s) for s in shape)
    if conv_mode not in CONV_MODES:
        raise ValueError(f"`spectral_conv_mode` must be one of {CONV_MODES}, got {conv_mode!r}.")
    if len(shape) < 2:
        raise ValueError(f"a spectrum needs a tensor with ndim >= 2, got shape {shape}.")
    if conv_mode == "per_position" and len(shape) == 4:
        P, rows, cols = shape[2] * shape[3], shape[0], shape[1]
    else:
        P, rows, cols = 1, shape[0], math.prod(shape[1:])
    return LayerLayout(shape, conv_mode, P, rows, cols, transposed=rows < cols)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def matrix_view(t: Tensor, layout: LayerLayout) -> Tensor:
    """``t`` (weight or gradient of ``layout.shape``) as ``(P, N, M)``, a view when ``t`` allows it.

    In-place updates of the result reach ``t`` whenever ``t`` is contiguous.
    """
    if layout.P > 1:
        m = t.permute(2, 3, 0, 1).reshape(layout.P, layout.rows, layout.cols)
    else:
        m = t.reshape(1, layout.rows, layout.cols)
    return m.transpose(-1, -2) if layout.transposed else m


def from_matrices(mats: Tensor, layout: LayerLayout) -> Tensor:
    """Inverse of :func:`matrix_view`: ``(P, N, M)`` back to ``layout.shape`` (a new tensor if needed)."""
    if layout.transposed:
        mats = mats.transpose(-1, -2)
    if layout.P > 1:
        kh, kw = layout.shape[2], layout.shape[3]
        return mats.reshape(kh, kw, layout.rows, layout.cols).permute(2, 3, 0, 1)
    return mats.reshape(layout.shape)


def layer_matrices(w: Tensor, conv_mode: ConvMode = "flatten") -> Tensor:
    """``w`` as its stack of matrices ``(P, N, M)``, ``N >= M``, in float32 (float64 kept).

    Differentiable (reshapes, a transpose and a dtype cast).
    """
    layout = layer_layout(w.shape, conv_mode)
    return matrix_view(w, layout).to(_compute_dtype(w.dtype))


def default_rtol(N: int, M: int, dtype: torch.dtype = torch.float32) -> float:
    """``max(N, M) * eps(dtype)``: the ``matrix_rank`` tolerance (see the module docstring)."""
    return max(N, M) * torch.finfo(dtype).eps


# --------------------------------------------------------------------------- spectra
def _pooled_ascending(lam: Tensor) -> Tensor:
    """``(..., P, M)`` per-matrix eigenvalues -> ``(..., P*M)`` pooled, ascending."""
    return torch.sort(lam.flatten(-2), dim=-1).values


def batch_eigenvalues(mats: Tensor, rtol: float | None = None, method: Method = "svd") -> tuple[Tensor, Tensor]:
    """Pooled ascending eigenvalues of ``W^T W`` for a batch of layers, differentiably.

    Args:
        mats: ``(B, P, N, M)`` (or ``(B, N, M)`` for ``P = 1``), ``N >= M``, float32/64: ``B``
            layers of the same shape, each a stack of ``P`` matrices.
        rtol: relative zero tolerance (module docstring); default :func:`default_rtol`.
        method: ``"svd"`` (``torch.linalg.svdvals``; accurate down to ``eps * sigma_max``) or
            ``"eigh"`` (``eigvalsh`` of the ``M x M`` Gram matrix; faster, accurate down to
            ``eps * lambda_max``).

    Returns:
        ``lam`` ``(B, P*M)`` ascending (zeros included, clamped at 0) and ``valid`` ``(B, P*M)``,
        the mask of the kept (numerically non-zero) eigenvalues.
    """
    if mats.ndim == 3:
        mats = mats.unsqueeze(1)
    N, M = mats.shape[-2], mats.shape[-1]
    if method == "svd":
        lam = torch.linalg.svdvals(mats).square()
    elif method == "eigh":
        lam = torch.linalg.eigvalsh(mats.mT @ mats).clamp_min(0.0)
    else:
        raise ValueError(f"`spectral_method` must be one of {METHODS}, got {method!r}.")
    lam = _pooled_ascending(lam)
    valid = _valid_mask(lam.detach(), N, M, rtol, method)
    return lam, valid


def _valid_mask(lam: Tensor, N: int, M: int, rtol: float | None, method: str) -> Tensor:
    tol = default_rtol(N, M, torch.float32) if rtol is None else float(rtol)
    if method == "svd":
        tol = tol * tol
    lmax = lam[..., -1:]
    return (lam > tol * lmax) & (lam > 0)


def eigenvalues(w: Tensor, conv_mode: ConvMode = "flatten", rtol: float | None = None,
                method: Method = "svd") -> Tensor:
    """Ascending eigenvalues of ``W^T W`` of one layer, numerically zero ones dropped (1-D).

    Differentiable through ``torch.linalg.svdvals`` (default) or ``eigvalsh``.
    """
    lam, valid = batch_eigenvalues(layer_matrices(w, conv_mode).unsqueeze(0), rtol, method)
    return lam[0][valid[0]]


def _as_batch(lam: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    if valid is None:
        valid = lam > 0
    return lam, valid


def lambda_max(lam: Tensor, valid: Tensor | None = None) -> Tensor:
    """Largest eigenvalue (last of the ascending ``lam``), shape ``lam.shape[:-1]``."""
    return lam[..., -1]


def stable_rank(lam: Tensor, valid: Tensor | None = None) -> Tensor:
    """``sum_i lambda_i / lambda_max = ||W||_F^2 / ||W||_2^2`` (0 for an all-zero layer)."""
    lam, valid = _as_batch(lam, valid)
    lmax = lam[..., -1]
    total = torch.where(valid, lam, torch.zeros_like(lam)).sum(-1)
    safe = torch.where(lmax > 0, lmax, torch.ones_like(lmax))
    return torch.where(lmax > 0, total / safe, torch.zeros_like(lmax))


def hill_alpha(lam: Tensor, k: int | None = None, valid: Tensor | None = None) -> Tensor:
    """Hill estimate ``alpha_hat`` of the ESD's power-law exponent, per row of ``lam``.

    Args:
        lam: ``(..., n)`` ascending eigenvalues (zeros first, if any).
        k: number of tail eigenvalues; ``None`` (or 0): ``floor(n_kept/2)`` (the paper's
            choice). Clipped to ``n_kept - 1``.
        valid: mask of the kept eigenvalues (default ``lam > 0``).

    ``alpha_hat = 1 + k / sum_{i=1..k} ln(lambda_(n-i+1)/lambda_(n-k))`` over the kept
    eigenvalues, with the mean log-ratio clamped at :data:`HILL_MIN_MEAN_LOG` (so
    degenerate spectra give the finite cap ``1 + 1/HILL_MIN_MEAN_LOG``).
    """
    lam, valid = _as_batch(lam, valid)
    n = lam.shape[-1]
    n_kept = valid.sum(-1)  # (...,)
    if k is None or k == 0:
        kk = torch.div(n_kept, 2, rounding_mode="floor")
    else:
        kk = torch.minimum(torch.full_like(n_kept, int(k)), n_kept - 1)
    degenerate = kk < 1
    kk = kk.clamp_min(1)
    idx = torch.arange(n, device=lam.device)
    ref_idx = (n - kk - 1).clamp(0, n - 1)
    ref = torch.gather(lam, -1, ref_idx.unsqueeze(-1))  # (..., 1)
    in_tail = idx >= (n - kk).unsqueeze(-1)
    ok = in_tail & (ref > 0) & valid
    ref_safe = torch.where(ref > 0, ref, torch.ones_like(ref))
    lam_safe = torch.where(ok, lam, ref_safe.expand_as(lam))
    logs = torch.log(lam_safe / ref_safe)
    mean_log = (logs.sum(-1) / kk.to(lam.dtype)).clamp_min(HILL_MIN_MEAN_LOG)
    alpha = 1.0 + 1.0 / mean_log
    cap = torch.full_like(alpha, 1.0 + 1.0 / HILL_MIN_MEAN_LOG)
    return torch.where(degenerate, cap, alpha)


def weighted_alpha(lam: Tensor, k: int | None = None, valid: Tensor | None = None) -> Tensor:
    """weightwatcher's metric ``alpha_hat * log10(lambda_max)`` (``lambda_max = 0``: 0)."""
    lmax = lam[..., -1]
    safe = torch.where(lmax > 0, lmax, torch.ones_like(lmax))
    return hill_alpha(lam, k, valid) * torch.log10(safe)


# --------------------------------------------------------------------------- penalties
def weighted_alpha_penalty(lam: Tensor, valid: Tensor | None = None, k: int | None = None) -> Tensor:
    """``alpha_hat * ln(lambda_max)`` per layer (``R_wa``, docs/methods.md §6.3; natural log).

    Note the sign convention of the paper: where ``lambda_max < 1`` the log is negative and
    minimising the term *raises* ``alpha_hat``.
    """
    lmax = lam[..., -1]
    safe = torch.where(lmax > 0, lmax, torch.ones_like(lmax))
    return hill_alpha(lam, k, valid) * torch.log(safe)


def stable_rank_penalty(lam: Tensor, valid: Tensor | None = None) -> Tensor:
    """``||W||_F^2 / ||W||_2^2`` per layer (``R_sr``, docs/methods.md §6.3)."""
    return stable_rank(lam, valid)


def powerlaw_penalty(lam: Tensor, valid: Tensor | None = None, a: float = 2.0, lambda_min: float = 0.0) -> Tensor:
    """``a * sum_{lambda_i >= lambda_min} ln(lambda_i)`` per layer: the negative log of the
    power-law prior ``p(lambda) ~ lambda^(-a)`` on the ESD (numerically zero eigenvalues never count)."""
    lam, valid = _as_batch(lam, valid)
    sel = valid & (lam >= lambda_min)
    safe = torch.where(sel, lam, torch.ones_like(lam))
    return a * torch.log(safe).sum(-1)


def frechet_penalty(lmax: Tensor, a: float, s: float, m: float = 0.0) -> Tensor:
    """Negative log Frechet prior on ``lambda_max`` (shape ``a``, scale ``s``, location ``m``).

    ``z = (lambda_max - m)/s``; penalty ``(1+a) ln z + z^(-a)`` for ``z >= FRECHET_Z_FLOOR``,
    continued linearly (same value and slope at the floor) below it, so that ``lambda_max
    <= m`` stays finite and is still pushed up towards the prior's mode
    ``m + s*(a/(1+a))^(1/a)``.
    """
    z = (lmax - m) / s
    z0 = FRECHET_Z_FLOOR
    zs = torch.clamp(z, min=z0)
    f = (1.0 + a) * torch.log(zs) + zs.pow(-a)
    f0 = (1.0 + a) * math.log(z0) + z0 ** (-a)
    slope0 = (1.0 + a) / z0 - a * z0 ** (-a - 1.0)
    return torch.where(z >= z0, f, f0 + slope0 * (z - z0))


def frechet_slope(lmax: Tensor, a: float, s: float, m: float = 0.0) -> Tensor:
    """``d frechet_penalty / d lambda_max`` (closed form, including the linear continuation)."""
    z = (lmax - m) / s
    z0 = FRECHET_Z_FLOOR
    zs = torch.clamp(z, min=z0)
    slope = (1.0 + a) / zs - a * zs.pow(-a - 1.0)
    return slope / s


def frechet_penalty_from_spectrum(lam: Tensor, valid: Tensor | None = None, a: float = 2.0, s: float = 1.0,
                                  m: float = 0.0) -> Tensor:
    """:func:`frechet_penalty` of ``lambda_max`` of ascending ``lam``."""
    return frechet_penalty(lam[..., -1], a, s, m)


# --------------------------------------------------------------------------- power iteration
@torch.no_grad()
def power_iteration(mats: Tensor, v: Tensor | None = None, iters: int = 1, tol: float | None = None,
                    max_iters: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
    """Top singular triplet of each matrix of ``mats`` ``(..., N, M)`` by power iteration on ``W^T W``.

    Args:
        mats: the matrices (any float dtype; computed in float32, float64 kept).
        v: ``(..., M)`` warm start (the previous step's right vector); random if ``None``.
        iters: iterations to run (``tol=None``), or the minimum when ``tol`` is given.
        tol: stop once the relative change of ``sigma`` is below ``tol`` (at most ``max_iters``).

    Returns:
        ``sigma (...,)``, ``u (..., N)``, ``v (..., M)`` (unit vectors) with ``sigma = u^T W v
        = ||W^T u||`` exactly, a lower bound of ``sigma_max`` that converges to it; ``u v^T``
        is then the gradient of the surrogate ``u^T W v`` (:func:`sigma_max_surrogate`).
        One iteration costs two mat-vecs.
    """
    W = mats.to(_compute_dtype(mats.dtype))
    tiny = torch.finfo(W.dtype).tiny
    if v is None:
        gen = torch.Generator(device=W.device).manual_seed(0)
        v = torch.randn(W.shape[:-2] + (W.shape[-1],), generator=gen, device=W.device, dtype=W.dtype)
    v = v.to(W.dtype)
    sigma = None
    n = 0
    while True:
        u = (W @ v.unsqueeze(-1)).squeeze(-1)
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(tiny)
        w = (W.mT @ u.unsqueeze(-1)).squeeze(-1)
        new_sigma = w.norm(dim=-1)
        v = w / new_sigma.unsqueeze(-1).clamp_min(tiny)
        n += 1
        done = n >= iters and (tol is None or (sigma is not None and bool(
            ((new_sigma - sigma).abs() <= tol * new_sigma.clamp_min(tiny)).all())))
        sigma = new_sigma
        if done or n >= max_iters:
            return sigma, u, v


def sigma_max_surrogate(mats: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``u^T W v`` with fixed (detached) ``u, v``: differentiable ``sigma_max`` surrogate, ``d/dW = u v^T``."""
    W = mats.to(_compute_dtype(mats.dtype))
    return (u.detach().unsqueeze(-2) @ W @ v.detach().unsqueeze(-1)).squeeze(-1).squeeze(-1)


# --------------------------------------------------------------------------- refresh
@dataclass
class SpectralRefresh:
    """What :func:`spectral_refresh` returns for a batch of ``B`` same-layout layers."""

    lam: Tensor  # (B, P*M) ascending
    valid: Tensor  # (B, P*M)
    value: Tensor | None  # (B,) fn(lam, valid), or None without fn
    grad: Tensor | None  # (B, P, N, M) dfn/dW, or None without fn
    sigma: Tensor  # (B, P) top singular value of each matrix
    u: Tensor  # (B, P, N)
    v: Tensor  # (B, P, M)


@torch.no_grad()
def spectral_refresh(mats: Tensor, fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                     method: Method = "eigh", rtol: float | None = None) -> SpectralRefresh:
    """Full spectrum of a batch of layers, ``fn`` of it, its gradient in ``W``, and top pairs.

    Args:
        mats: ``(B, P, N, M)``, ``N >= M`` (float32, or float64).
        fn: a function of ``(lam, valid)`` (pooled ascending, ``(B, P*M)``) returning ``(B,)``;
            its gradient is taken by autograd on the eigenvalues only and mapped to the
            weights as ``2 W V diag(dfn/dlambda) V^T`` (``"eigh"``) or ``U diag(2 sigma
            dfn/dlambda) V^T`` (``"svd"``).
        method: ``"eigh"`` (Gram matrix, faster on CPU: ``benchmarks/RESULTS.md``, "Timings moved out
            of docstrings") or ``"svd"``.
    """
    B, P, N, M = mats.shape
    flat = mats.reshape(B * P, N, M)
    if method == "eigh":
        lam_m, V = torch.linalg.eigh(flat.mT @ flat)  # ascending
        lam_m = lam_m.clamp_min(0.0)
        U = None
    elif method == "svd":
        U, S, Vh = torch.linalg.svd(flat, full_matrices=False)  # descending
        lam_m = S.flip(-1).square()
        V = Vh.mT.flip(-1)
        U = U.flip(-1)
    else:
        raise ValueError(f"`spectral_method` must be one of {METHODS}, got {method!r}.")
    sig_top = lam_m[:, -1].sqrt()
    v_top = V[:, :, -1]
    if U is None:
        u_top = (flat @ v_top.unsqueeze(-1)).squeeze(-1)
        u_top = u_top / u_top.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
    else:
        u_top = U[:, :, -1]
    lam_flat = lam_m.reshape(B, P * M)
    lam_sorted, order = torch.sort(lam_flat, dim=-1)
    valid = _valid_mask(lam_sorted, N, M, rtol, method)
    value = grad = None
    if fn is not None:
        with torch.enable_grad():
            leaf = lam_flat.detach().clone().requires_grad_(True)
            r = fn(torch.gather(leaf, -1, order), valid)
            (g_lam,) = torch.autograd.grad(r.sum(), leaf)
        value = r.detach()
        g_lam = g_lam.reshape(B * P, M)
        if method == "eigh":
            grad = 2.0 * (flat @ (V * g_lam.unsqueeze(-2))) @ V.mT
        else:
            grad = (U * (2.0 * lam_m.sqrt() * g_lam).unsqueeze(-2)) @ V.mT
        grad = grad.reshape(B, P, N, M)
    return SpectralRefresh(lam=lam_sorted, valid=valid, value=value, grad=grad,
                           sigma=sig_top.reshape(B, P), u=u_top.reshape(B, P, N), v=v_top.reshape(B, P, M))


# --------------------------------------------------------------------------- summaries
@torch.no_grad()
def spectrum_metrics(w: Tensor, conv_mode: ConvMode = "flatten", k: int | None = None,
                     rtol: float | None = None, method: Method = "svd") -> dict[str, float]:
    """Per-layer metrics as floats: ``alpha`` (Hill), ``weighted_alpha`` (log10),
    ``stable_rank``, ``lambda_max`` and ``n`` (kept eigenvalues)."""
    lam, valid = batch_eigenvalues(layer_matrices(w.detach(), conv_mode).unsqueeze(0), rtol, method)
    return {
        "alpha": float(hill_alpha(lam, k, valid)[0]),
        "weighted_alpha": float(weighted_alpha(lam, k, valid)[0]),
        "stable_rank": float(stable_rank(lam, valid)[0]),
        "lambda_max": float(lambda_max(lam, valid)[0]),
        "n": int(valid[0].sum()),
    }
