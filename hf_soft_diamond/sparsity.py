"""Sparsity measurement: how many weights are (near) zero, globally and per tensor (docs/methods.md §7.1).

Pruning (global magnitude pruning, prune curves, the sparsity at a given metric loss) is
:mod:`hf_soft_diamond.pruning`; its names (``prune_by_magnitude``, ``pruned``,
``prune_curve``, ``sparsity_at_max_loss``, ``PruneInfo``, ``DEFAULT_PRUNE_FRACTIONS``) are
still importable from here for compatibility. This module also owns the resolution of the
regularized set both use (:func:`_resolve_regularized`, delegating the default to
:mod:`hf_soft_diamond.regularizers.selection`).

Conventions
-----------
*Regularized weights* are the parameters a regularizer acts on. Pass their names as
``regularized_names`` (e.g. ``[n for n, _ in select_parameters(model)]``); when ``None``,
the regularizers' default selection applies
(:func:`~hf_soft_diamond.regularizers.selection.select_parameters`: trainable, ``ndim >= 2``,
not a bias or a normalisation parameter; embeddings included), so a saved model is measured
on the weights a default run regularized.
*All weights* are all parameters of the model (biases and norm parameters included).
Tied parameters are counted once, under the first name ``named_parameters()`` gives them.

*Sparsity at tau* is the fraction of entries with ``|w| <= tau`` (inclusive). The default
thresholds are ``1e-8`` (exact or numerical zero), ``1e-3`` and ``1e-2``. Comparisons
are made in float32 for float32/bf16/fp16 parameters (bf16/fp16 values are exact in
float32; tau is rounded to float32) and in float64 for float64 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .regularizers.selection import regularized_names

DEFAULT_THRESHOLDS: tuple[float, ...] = (1e-8, 1e-3, 1e-2)
"""Thresholds tau of docs/methods.md §7.1: ``|w| <= tau`` counts as sparse."""

_CHUNK = 1 << 22  # entries processed at once when scanning a tensor (bounds temporaries); pruning uses it too


# --------------------------------------------------------------------------- selection (shared with pruning)


def _default_regularized_names(model: nn.Module) -> list[str]:
    """The regularizers' own default selection (:func:`~hf_soft_diamond.regularizers.selection.regularized_names`)."""
    return regularized_names(model)


def _named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """All parameters, each once (first name), in model order."""
    return dict(model.named_parameters())


def _resolve_regularized(model: nn.Module, regularized_names: Iterable[str] | None) -> dict[str, nn.Parameter]:
    """Map regularized names to parameters (model order, tied aliases resolved, each once)."""
    if regularized_names is None:
        names = _default_regularized_names(model)
    else:
        if isinstance(regularized_names, str):
            raise TypeError("`regularized_names` must be an iterable of parameter names, not a single string")
        names = list(regularized_names)
    aliases = dict(model.named_parameters(remove_duplicate=False))
    unknown = [n for n in names if n not in aliases]
    if unknown:
        raise ValueError(
            f"`regularized_names` holds {len(unknown)} name(s) that are not parameters of the model, "
            f"e.g. {unknown[:3]}"
        )
    wanted = {id(aliases[n]) for n in names}
    return {n: p for n, p in _named_params(model).items() if id(p) in wanted}


# --------------------------------------------------------------------------- report


@dataclass
class LayerSparsity:
    """Sparsity of one parameter tensor.

    Attributes:
        name: parameter name as given by ``model.named_parameters()``.
        numel: number of entries.
        counts: ``{tau: number of entries with |w| <= tau}``.
        regularized: whether the tensor is in the regularized set.
    """

    name: str
    numel: int
    counts: dict[float, int]
    regularized: bool

    def fraction(self, tau: float) -> float:
        """Fraction of entries with ``|w| <= tau`` (0.0 for an empty tensor)."""
        return self.counts[tau] / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Result of :func:`sparsity_report` (fractions in [0, 1], counts in entries).

    Attributes:
        thresholds: the taus, ascending.
        reg_numel / all_numel: entries in the regularized set / in all parameters.
        reg_counts / all_counts: ``{tau: entries with |w| <= tau}`` over each set.
        layers: per parameter name (all parameters, model order).
    """

    thresholds: tuple[float, ...]
    reg_numel: int
    all_numel: int
    reg_counts: dict[float, int]
    all_counts: dict[float, int]
    layers: dict[str, LayerSparsity] = field(default_factory=dict)

    def reg_fraction(self, tau: float) -> float:
        """Global fraction of regularized entries with ``|w| <= tau``."""
        return self.reg_counts[tau] / self.reg_numel if self.reg_numel else 0.0

    def all_fraction(self, tau: float) -> float:
        """Global fraction of all entries with ``|w| <= tau``."""
        return self.all_counts[tau] / self.all_numel if self.all_numel else 0.0

    @staticmethod
    def tau_key(tau: float) -> str:
        """Key fragment of a threshold: ``le_1e-08``, ``le_1e-03``, ``le_5e-02`` (``f"le_{tau:.0e}"``)."""
        return f"le_{tau:.0e}"

    def to_flat_dict(self, prefix: str = "sparsity", per_layer: bool = False) -> dict[str, float]:
        """Flat float metrics for ``Trainer.log``.

        Keys (``P`` = ``prefix``, ``T`` = :meth:`tau_key`, e.g. ``le_1e-03``):

        - ``P/reg/T``: fraction of regularized entries with ``|w| <= tau``;
        - ``P/all/T``: the same over all parameters;
        - ``P/reg/numel``, ``P/all/numel``: entry counts (as floats);
        - with ``per_layer=True`` also ``P/layer/<param name>/T`` for every parameter.
        """
        out: dict[str, float] = {}
        for tau in self.thresholds:
            out[f"{prefix}/reg/{self.tau_key(tau)}"] = self.reg_fraction(tau)
        for tau in self.thresholds:
            out[f"{prefix}/all/{self.tau_key(tau)}"] = self.all_fraction(tau)
        out[f"{prefix}/reg/numel"] = float(self.reg_numel)
        out[f"{prefix}/all/numel"] = float(self.all_numel)
        if per_layer:
            for name, layer in self.layers.items():
                for tau in self.thresholds:
                    out[f"{prefix}/layer/{name}/{self.tau_key(tau)}"] = layer.fraction(tau)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable nested dict, thresholds as strings ``"1e-08"`` (``f"{tau:.0e}"``)."""

        def counts(c: dict[float, int]) -> dict[str, int]:
            return {f"{t:.0e}": int(c[t]) for t in self.thresholds}

        def fracs(get: Callable[[float], float]) -> dict[str, float]:
            return {f"{t:.0e}": float(get(t)) for t in self.thresholds}

        return {
            "thresholds": [float(t) for t in self.thresholds],
            "regularized": {
                "numel": self.reg_numel,
                "counts": counts(self.reg_counts),
                "fraction": fracs(self.reg_fraction),
            },
            "all": {"numel": self.all_numel, "counts": counts(self.all_counts), "fraction": fracs(self.all_fraction)},
            "layers": {
                name: {
                    "numel": layer.numel,
                    "regularized": layer.regularized,
                    "counts": counts(layer.counts),
                    "fraction": fracs(layer.fraction),
                }
                for name, layer in self.layers.items()
            },
        }


def _compare_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _count_le(t: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Counts of ``|t| <= tau`` for ascending ``thresholds``, one pass (chunked), on t's device."""
    dtype = _compare_dtype(t)
    flat = t.detach().reshape(-1)
    bounds = torch.tensor(list(thresholds), dtype=dtype, device=t.device)
    hist = torch.zeros(len(thresholds) + 1, dtype=torch.int64, device=t.device)
    for start in range(0, flat.numel(), _CHUNK):
        a = flat[start : start + _CHUNK].to(dtype).abs()
        # bucket i holds bounds[i-1] < |w| <= bounds[i]; NaN lands in the last bucket
        idx = torch.bucketize(a, bounds, right=False)
        hist += torch.bincount(idx, minlength=len(thresholds) + 1)
    return hist[:-1].cumsum(0)


@torch.no_grad()
def sparsity_report(
    model: nn.Module,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    regularized_names: Iterable[str] | None = None,
) -> SparsityReport:
    """Fractions of weights with ``|w| <= tau``, globally and per parameter.

    Args:
        model: any ``nn.Module``; parameters may live on any device and be
            float32/float64/bf16/fp16 (counted where they live).
        thresholds: the taus (non-negative); sorted and de-duplicated.
        regularized_names: names of the regularized parameters; ``None`` for the
            default rule (module docstring).

    Returns:
        A :class:`SparsityReport`; see :meth:`SparsityReport.to_flat_dict` for log keys.
    """
    taus = tuple(sorted({float(t) for t in thresholds}))
    if not taus or any(not math.isfinite(t) or t < 0 for t in taus):
        raise ValueError(f"`thresholds` must be a non-empty sequence of finite numbers >= 0, got {thresholds!r}")
    reg = _resolve_regularized(model, regularized_names)
    params = _named_params(model)
    per_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, p in params.items():
        per_device.setdefault(p.device, []).append((name, _count_le(p, taus)))
    counts: dict[str, list[int]] = {}
    for items in per_device.values():  # one device->host transfer per device
        stacked = torch.stack([c for _, c in items]).cpu().tolist()
        counts.update({name: row for (name, _), row in zip(items, stacked)})
    layers: dict[str, LayerSparsity] = {}
    reg_counts = dict.fromkeys(taus, 0)
    all_counts = dict.fromkeys(taus, 0)
    reg_numel = all_numel = 0
    for name, p in params.items():
        layer = LayerSparsity(name, p.numel(), dict(zip(taus, counts[name])), name in reg)
        layers[name] = layer
        all_numel += layer.numel
        for t in taus:
            all_counts[t] += layer.counts[t]
        if layer.regularized:
            reg_numel += layer.numel
            for t in taus:
                reg_counts[t] += layer.counts[t]
    return SparsityReport(taus, reg_numel, all_numel, reg_counts, all_counts, layers)


# --------------------------------------------------------------------------- pruning (moved)

#: Names that moved to :mod:`hf_soft_diamond.pruning`, still importable from here.
_MOVED_TO_PRUNING = frozenset({"DEFAULT_PRUNE_FRACTIONS", "PruneInfo", "prune_by_magnitude", "pruned", "prune_curve",
                               "sparsity_at_max_loss"})


def __getattr__(name: str) -> Any:
    """``from hf_soft_diamond.sparsity import prune_by_magnitude`` (and the other pruning names) keeps working.

    Resolved on first use rather than imported at the top, because :mod:`hf_soft_diamond.pruning`
    imports the regularized-set resolution from this module.
    """
    if name in _MOVED_TO_PRUNING:
        from . import pruning

        return getattr(pruning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # the pruning names resolved by __getattr__ above are pruning's API, listed in pruning.__all__
    "DEFAULT_THRESHOLDS",
    "LayerSparsity",
    "SparsityReport",
    "sparsity_report",
]
