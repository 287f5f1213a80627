"""Global magnitude pruning of the regularized weights and prune curves (docs/methods.md §7.2).

*Pruning* is global magnitude pruning over the regularized weights: with ``N`` regularized
entries and a requested ``fraction``, exactly ``k = floor(fraction * N)`` entries with the
smallest ``|w|`` are set to zero. The cut-off is the exact k-th smallest magnitude, found
by a radix selection on the float bit patterns (two passes over the weights for
float32/bf16/fp16, four for float64; memory O(chunk), no concatenation of the model).
Ties at the cut-off are broken deterministically: parameters in model order, then entries
in row-major (flattened) order. NaN magnitudes count as larger than any number (never
pruned before finite weights).

*Regularized weights* are chosen as in :mod:`hf_soft_diamond.sparsity` (the measurement
side, which owns the name resolution: ``regularized_names`` given explicitly, or ``None``
for the regularizers' default selection).

*Excluded entries* (``excluded``: ``{name: bool mask}``, True = excluded) are set to zero and
left out of ``N``: the fraction is of the other entries, pruned exactly as if the excluded
ones did not exist. Meant for weights that cannot affect any output, e.g. the padding-only
convolution taps of :func:`hf_soft_diamond.padding_taps.padding_only_taps`: zeroing them
changes nothing, and counting them would let a model that already zeroed them reach a
"pruned fraction" for free while one that left them at their initial values spends its
budget on them. The selection then runs over copies of the counted entries of each tensor
that has excluded ones (memory: those tensors once more).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .sparsity import _CHUNK, _resolve_regularized

logger = logging.getLogger(__name__)

DEFAULT_PRUNE_FRACTIONS: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
"""Global pruning levels of the prune curve (fractions of the regularized weights)."""

_RADIX_BITS = 16


def _check_fraction(fraction: float, arg: str = "fraction") -> float:
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"`{arg}` must be a number in [0, 1), got {fraction!r}") from None
    if not (0.0 <= f < 1.0):
        raise ValueError(f"`{arg}` must be in [0, 1), got {fraction!r}")
    return f


def _key_dtype(params: Sequence[torch.Tensor]) -> tuple[torch.dtype, torch.dtype, int]:
    """(float dtype compared, integer view dtype, bits) shared by all regularized tensors."""
    if any(p.dtype == torch.float64 for p in params):
        return torch.float64, torch.int64, 64
    return torch.float32, torch.int32, 32


def _keys(chunk: torch.Tensor, fdtype: torch.dtype, idtype: torch.dtype) -> torch.Tensor:
    """Order-preserving non-negative integer keys of ``|chunk|`` (IEEE bits of a non-negative float)."""
    return chunk.to(fdtype).abs().view(idtype)


def _kth_smallest_key(params: Sequence[torch.Tensor], k: int) -> tuple[int, int]:
    """Exact k-th smallest (1-based) magnitude key over all tensors, by radix selection.

    Returns ``(key, number of entries with a strictly smaller key)``.
    """
    fdtype, idtype, bits = _key_dtype(params)
    prefix, rank = 0, k  # rank within the entries matching the current prefix
    n_less = 0
    for shift in range(bits - _RADIX_BITS, -1, -_RADIX_BITS):
        hist = torch.zeros(1 << _RADIX_BITS, dtype=torch.int64)
        for p in params:
            flat = p.detach().reshape(-1)
            for start in range(0, flat.numel(), _CHUNK):
                key = _keys(flat[start : start + _CHUNK], fdtype, idtype)
                if shift + _RADIX_BITS < bits:
                    key = key[(key >> (shift + _RADIX_BITS)) == prefix]
                digit = ((key >> shift) & ((1 << _RADIX_BITS) - 1)).long()
                hist += torch.bincount(digit, minlength=1 << _RADIX_BITS).cpu()
        cum = hist.cumsum(0)
        d = int(torch.searchsorted(cum, torch.tensor(rank), right=False))
        below = int(cum[d - 1]) if d > 0 else 0
        n_less += below
        rank -= below
        prefix = (prefix << _RADIX_BITS) | d
    return prefix, n_less


def _key_to_float(key: int, fdtype: torch.dtype, idtype: torch.dtype) -> float:
    if idtype == torch.int32 and key >= 1 << 31:
        key -= 1 << 32
    return float(torch.tensor([key], dtype=idtype).view(fdtype).item())


@dataclass
class PruneInfo:
    """What :func:`prune_by_magnitude` did.

    Attributes:
        fraction: requested fraction of the regularized entries.
        num_regularized: regularized entries ``N`` (without the excluded ones).
        num_pruned: entries set to zero, ``floor(fraction * N)`` (includes entries that
            were already zero but fell under the cut-off; excluded entries not counted).
        threshold: the cut-off magnitude (the k-th smallest ``|w|``; 0.0 when nothing is
            pruned). Every entry with ``|w| < threshold`` was pruned, those equal to it
            by the tie rule.
        pruned_per_layer: ``{name: entries pruned}`` for every regularized parameter
            (excluded entries not counted).
        masks: ``{name: bool tensor, True where pruned or excluded}`` when ``return_masks=True``.
    """

    fraction: float
    num_regularized: int
    num_pruned: int
    threshold: float
    pruned_per_layer: dict[str, int]
    masks: dict[str, torch.Tensor] | None = None

    @property
    def pruned_fraction(self) -> float:
        """``num_pruned / num_regularized``."""
        return self.num_pruned / self.num_regularized if self.num_regularized else 0.0


def _check_excluded(reg: dict[str, nn.Parameter], excluded: Mapping[str, torch.Tensor] | None,
                    ) -> dict[str, torch.Tensor]:
    """``excluded`` as flat bool masks on each parameter's device, checked against ``reg``."""
    if not excluded:
        return {}
    unknown = [name for name in excluded if name not in reg]
    if unknown:
        raise ValueError(f"`excluded` names {unknown[:3]} that are not regularized parameters "
                         f"(regularized: {list(reg)[:5]}...)")
    flat = {}
    for name, mask in excluded.items():
        if tuple(mask.shape) != tuple(reg[name].shape) or mask.dtype != torch.bool:
            raise ValueError(f"`excluded[{name!r}]` must be a bool mask of shape {tuple(reg[name].shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        flat[name] = mask.reshape(-1).to(reg[name].device)
    return flat


@torch.no_grad()
def _prune_inplace(
    reg: dict[str, nn.Parameter], fraction: float, return_masks: bool, backup: dict[str, torch.Tensor] | None,
    excluded: Mapping[str, torch.Tensor] | None = None,
) -> PruneInfo:
    skip = _check_excluded(reg, excluded)
    # the selection runs over the entries that count: copies without the excluded ones
    params = [p.detach().reshape(-1)[~skip[name]] if name in skip else p for name, p in reg.items()]
    n = sum(p.numel() for p in params)
    k = math.floor(fraction * n)
    per_layer = dict.fromkeys(reg, 0)
    masks: dict[str, torch.Tensor] | None = {} if return_masks else None
    if k == 0 and not skip:
        if masks is not None:
            masks = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in reg.items()}
        return PruneInfo(fraction, n, 0, 0.0, per_layer, masks)
    fdtype, idtype, _ = _key_dtype(list(reg.values()))
    kth, n_less = _kth_smallest_key(params, k) if k else (-1, 0)  # key -1: nothing is below it
    ties_left = k - n_less  # entries equal to the cut-off still to prune, in model/row-major order
    for name, p in reg.items():
        flat = p.data.view(-1) if p.is_contiguous() else None
        work = flat if flat is not None else p.data.reshape(-1).clone()
        mask_full = torch.zeros(work.numel(), dtype=torch.bool, device=p.device) if return_masks else None
        skip_flat = skip.get(name)
        pruned_here = 0
        changed = saved = False
        for start in range(0, work.numel(), _CHUNK):
            chunk = work[start : start + _CHUNK]
            key = _keys(chunk, fdtype, idtype)
            mask = key < kth
            counted = None
            if skip_flat is not None:
                counted = ~skip_flat[start : start + _CHUNK]
                mask &= counted
            if ties_left > 0:
                eq = key == kth
                if counted is not None:
                    eq &= counted
                take = eq & (eq.cumsum(0) <= ties_left)
                ties_left -= int(take.sum())
                mask |= take
            m = int(mask.sum())
            zeroed = mask if counted is None else mask | ~counted
            if m or counted is not None and not bool(counted.all()):
                if backup is not None and not saved:
                    backup[name] = p.detach().clone()
                    saved = True
                chunk.masked_fill_(zeroed, 0)
                pruned_here += m
                changed = True
            if mask_full is not None:
                mask_full[start : start + chunk.numel()] = zeroed
        if flat is None and changed:
            p.data.copy_(work.view_as(p))
        per_layer[name] = pruned_here
        if masks is not None:
            masks[name] = mask_full.view_as(p)
    threshold = _key_to_float(kth, fdtype, idtype) if k else 0.0
    return PruneInfo(fraction, n, k, threshold, per_layer, masks)


def prune_by_magnitude(
    model: nn.Module,
    fraction: float,
    regularized_names: Iterable[str] | None = None,
    inplace: bool = False,
    return_masks: bool = False,
    excluded: Mapping[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, PruneInfo]:
    """Global magnitude pruning of the regularized weights.

    Sets to zero exactly ``floor(fraction * N)`` of the ``N`` regularized entries, those
    with the smallest ``|w|`` across all regularized tensors together (ties: model order,
    then row-major order). Other parameters are untouched.

    Args:
        model: the model.
        fraction: fraction of regularized entries to prune, in ``[0, 1)``.
        regularized_names: names of the regularized parameters (``None``: default rule).
        inplace: prune ``model`` itself; otherwise a ``copy.deepcopy`` is pruned and
            returned. To prune in place and restore afterwards use :func:`pruned`.
        return_masks: also return boolean masks (True = pruned) in ``PruneInfo.masks``.
        excluded: ``{regularized name: bool mask shaped like it}``: entries set to zero and
            left out of ``N`` (module docstring), e.g. padding-only convolution taps.

    Returns:
        ``(pruned model, PruneInfo)``.
    """
    fraction = _check_fraction(fraction)
    target = model if inplace else copy.deepcopy(model)
    reg = _resolve_regularized(target, regularized_names)
    return target, _prune_inplace(reg, fraction, return_masks, backup=None, excluded=excluded)


@contextlib.contextmanager
def pruned(
    model: nn.Module,
    fraction: float,
    regularized_names: Iterable[str] | None = None,
    return_masks: bool = False,
    excluded: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[PruneInfo]:
    """Prune ``model`` in place for the duration of a ``with`` block, then restore it.

    The original values of every tensor that had entries pruned are cloned (same device)
    before pruning and copied back on exit, also when the block raises. Do not train
    inside the block: the restore overwrites those tensors. ``excluded``: as in
    :func:`prune_by_magnitude` (zeroed for the block, left out of the fraction).

    Example::

        with pruned(model, 0.9) as info:
            acc = evaluate(model)
    """
    fraction = _check_fraction(fraction)
    reg = _resolve_regularized(model, regularized_names)
    backup: dict[str, torch.Tensor] = {}
    try:
        yield _prune_inplace(reg, fraction, return_masks, backup=backup, excluded=excluded)
    finally:
        with torch.no_grad():
            for name, saved in backup.items():
                reg[name].data.copy_(saved)


def prune_curve(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], float],
    fractions: Sequence[float] = DEFAULT_PRUNE_FRACTIONS,
    regularized_names: Iterable[str] | None = None,
    excluded: Mapping[str, torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """Task metric after global magnitude pruning at each level.

    For each fraction (in the given order) the model is pruned in place with
    :func:`pruned`, ``evaluate_fn(model)`` is called, and the weights are restored
    before the next level (also if ``evaluate_fn`` raises). ``evaluate_fn`` should
    return the metric in *points*, higher is better (BLEU, accuracy in %). ``excluded``:
    entries zeroed at every level and left out of the fractions (:func:`prune_by_magnitude`).

    Returns:
        One dict per level: ``fraction`` (requested), ``pruned_fraction`` (actual,
        ``floor(fraction*N)/N``), ``threshold`` (cut-off ``|w|``), ``num_pruned``,
        ``metric``.
    """
    checked = [_check_fraction(f, "fractions") for f in fractions]
    names = list(_resolve_regularized(model, regularized_names))
    curve = []
    for f in checked:
        with pruned(model, f, regularized_names=names, excluded=excluded) as info:
            metric = float(evaluate_fn(model))
        row = {
            "fraction": f,
            "pruned_fraction": info.pruned_fraction,
            "threshold": info.threshold,
            "num_pruned": float(info.num_pruned),
            "metric": metric,
        }
        logger.info("prune curve: %s", row)
        curve.append(row)
    return curve


def sparsity_at_max_loss(
    curve: Sequence[dict[str, float]],
    max_loss: float = 1.0,
    baseline: float | None = None,
) -> float:
    """Largest pruned fraction whose metric is within ``max_loss`` points of the unpruned one.

    The metric is in points, higher is better (BLEU, accuracy in %); a level qualifies
    when ``metric >= baseline - max_loss`` (inclusive, with a 1e-9 relative tolerance for
    float round-off). The baseline is the metric of the row with ``fraction == 0`` unless
    given. The largest qualifying fraction is returned even if a smaller level failed
    (non-monotone curves); 0.0 if only the baseline qualifies.
    """
    if max_loss < 0 or not math.isfinite(max_loss):
        raise ValueError(f"`max_loss` must be a finite number >= 0, got {max_loss!r}")
    if baseline is None:
        zero = [row["metric"] for row in curve if row["fraction"] == 0]
        if not zero:
            raise ValueError("`curve` has no row with fraction 0; pass `baseline` (the unpruned metric)")
        baseline = zero[0]
    if not math.isfinite(baseline):
        raise ValueError(f"the baseline metric must be finite, got {baseline!r}")
    floor = baseline - max_loss - 1e-9 * max(1.0, abs(baseline))
    ok = [float(row["fraction"]) for row in curve if math.isfinite(row["metric"]) and row["metric"] >= floor]
    return max(ok, default=0.0)


__all__ = [
    "DEFAULT_PRUNE_FRACTIONS",
    "PruneInfo",
    "prune_by_magnitude",
    "prune_curve",
    "pruned",
    "sparsity_at_max_loss",
]
