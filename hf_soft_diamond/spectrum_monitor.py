"""Heavy-tailed spectral metrics of a model during training (docs/methods.md §6.7).

:func:`spectrum_summary` measures, for each selected weight matrix ("layer": one weight
tensor, conventions in :mod:`hf_soft_diamond.priors.spectral`):

* ``alpha``: the Hill estimate ``alpha_hat`` of the ESD's power-law exponent (``k = n/2``),
* ``weighted_alpha``: ``alpha_hat * log10(lambda_max)`` (weightwatcher's definition),
* ``stable_rank``: ``||W||_F^2 / ||W||_2^2``,
* ``lambda_max``: the largest eigenvalue of ``W^T W`` (``sigma_max^2``),

as a flat dict ``{"spectrum/<layer>/<metric>": value, "spectrum/mean_<metric>": mean over
layers}`` (``<layer>`` is the parameter name without a trailing ``.weight``). No gradients;
same-shape matrices are batched.

:class:`SpectrumCallback` logs it into the ``transformers.Trainer`` logs every ``every``
optimizer steps, keeps the history in memory (``callback.history``, a list of dicts with
``step`` and ``epoch``) and writes it to ``<output_dir>/spectrum_history.json`` at the end of
training, so that plots can show ``alpha_hat`` over training.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .priors import spectral as sp
from .regularizers.selection import select_parameters

METRICS: tuple[str, ...] = ("alpha", "weighted_alpha", "stable_rank", "lambda_max")
HISTORY_FILE = "spectrum_history.json"


def _layer_name(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def spectrum_layers(model: nn.Module, names: Iterable[str] | str | None = None,
                    max_layers: int | None = None) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs :func:`spectrum_summary` measures.

    ``names=None``: the default regularized set (:func:`~hf_soft_diamond.regularizers.select_parameters`:
    matrices that are not norms or biases, embeddings included); otherwise regular
    expressions (``re.search`` on parameter names) over all parameters with ``ndim >= 2``.
    ``max_layers``: keep the first that many, in model order.
    """
    if names is None:
        chosen = [(n, p) for n, p in select_parameters(model) if p.ndim >= 2]
    else:
        pats = [names] if isinstance(names, str) else list(names)
        regs = []
        for pat in pats:
            try:
                regs.append(re.compile(pat))
            except re.error as err:
                raise ValueError(f"`spectrum_names` holds an invalid regular expression {pat!r}: {err}") from None
        seen: set[int] = set()
        chosen = []
        for n, p in model.named_parameters():
            if p.ndim >= 2 and id(p) not in seen and any(r.search(n) for r in regs):
                seen.add(id(p))
                chosen.append((n, p))
    if max_layers is not None:
        if int(max_layers) < 1:
            raise ValueError(f"`spectrum_max_layers` must be >= 1 or None, got {max_layers!r}.")
        chosen = chosen[: int(max_layers)]
    return chosen


@torch.no_grad()
def spectrum_summary(model: nn.Module, names: Iterable[str] | str | None = None, *, max_layers: int | None = None,
                     conv_mode: sp.ConvMode = "flatten", hill_k: int | None = None, method: sp.Method = "eigh",
                     per_layer: bool = True, prefix: str = "spectrum/") -> dict[str, float]:
    """Per-layer ``alpha``, ``weighted_alpha``, ``stable_rank``, ``lambda_max`` and their means.

    Args:
        model: any module.
        names: layer selection (see :func:`spectrum_layers`).
        max_layers: measure at most this many layers.
        conv_mode: ``"flatten"`` or ``"per_position"`` for conv kernels.
        hill_k: tail size of the Hill estimator (``None``: half the kept eigenvalues).
        method: ``"eigh"`` (Gram matrix, default, faster) or ``"svd"``.
        per_layer: also return the per-layer keys (else only the means).
        prefix: key prefix.

    Returns:
        ``{f"{prefix}{layer}/{metric}": float, ..., f"{prefix}mean_{metric}": float,
        f"{prefix}num_layers": int}``; ``alpha``/``weighted_alpha`` are ``nan`` for a layer with
        fewer than 2 non-zero eigenvalues (e.g. a 1 x n output head), and the means are over the
        layers with finite values (``nan`` if none).
    """
    layers = spectrum_layers(model, names, max_layers)
    groups: dict[tuple, list[int]] = {}
    layouts = [sp.layer_layout(p.shape, conv_mode) for _, p in layers]
    for i, (_, p) in enumerate(layers):
        groups.setdefault((layouts[i].key, sp._compute_dtype(p.dtype), p.device), []).append(i)
    per: list[dict[str, float] | None] = [None] * len(layers)
    for (_, dtype, _), idx in groups.items():
        for start in range(0, len(idx), 32):
            chunk = idx[start:start + 32]
            mats = torch.stack([sp.matrix_view(layers[i][1].detach(), layouts[i]).to(dtype) for i in chunk])
            lam, valid = sp.batch_eigenvalues(mats, None, method)
            alpha = sp.hill_alpha(lam, hill_k, valid)
            wa = sp.weighted_alpha(lam, hill_k, valid)
            sr = sp.stable_rank(lam, valid)
            lmax = sp.lambda_max(lam, valid)
            n_kept = valid.sum(-1)
            for j, i in enumerate(chunk):
                tail = n_kept[j] >= 2  # alpha needs at least 2 kept eigenvalues: nan otherwise
                per[i] = {"alpha": float(alpha[j]) if tail else math.nan,
                          "weighted_alpha": float(wa[j]) if tail else math.nan,
                          "stable_rank": float(sr[j]), "lambda_max": float(lmax[j])}
    out: dict[str, float] = {}
    if per_layer:
        for (name, _), metrics in zip(layers, per):
            for m in METRICS:
                out[f"{prefix}{_layer_name(name)}/{m}"] = metrics[m]
    for m in METRICS:
        vals = [metrics[m] for metrics in per if math.isfinite(metrics[m])]
        out[f"{prefix}mean_{m}"] = sum(vals) / len(vals) if vals else math.nan
    out[f"{prefix}num_layers"] = len(layers)
    return out


class SpectrumCallback(TrainerCallback):
    """Log :func:`spectrum_summary` every ``every`` optimizer steps into the Trainer logs.

    At each due step (``global_step % every == 0``) the summary is computed under
    ``no_grad``, appended to :attr:`history` and the Trainer is asked to log
    (``control.should_log``); in the following ``on_log`` the values are added to ``logs``
    and to the Trainer's ``state.log_history`` entry. Callbacks run in list order, so for
    reporters (TensorBoard, W&B...) to see the keys the callback must come before them:
    :meth:`install` puts it first. At the end of training the history is written to
    ``<output_dir>/spectrum_history.json`` (main process only).

    Args:
        every: steps between measurements (>= 1).
        names, max_layers, conv_mode, hill_k, method, per_layer: see :func:`spectrum_summary`.
        at_start: also record (history only) the spectrum before the first step.
        output_file: file name inside ``args.output_dir`` (``None``: do not write).
    """

    def __init__(self, every: int = 100, names: Iterable[str] | str | None = None, *, max_layers: int | None = None,
                 conv_mode: sp.ConvMode = "flatten", hill_k: int | None = None, method: sp.Method = "eigh",
                 per_layer: bool = True, at_start: bool = True, output_file: str | None = HISTORY_FILE) -> None:
        if int(every) != every or int(every) < 1:
            raise ValueError(f"`spectrum_every` must be an integer >= 1, got {every!r}.")
        if conv_mode not in sp.CONV_MODES:
            raise ValueError(f"`spectral_conv_mode` must be one of {sp.CONV_MODES}, got {conv_mode!r}.")
        if method not in sp.METHODS:
            raise ValueError(f"`spectral_method` must be one of {sp.METHODS}, got {method!r}.")
        self.every = int(every)
        self.names = names
        self.max_layers = max_layers
        self.conv_mode = conv_mode
        self.hill_k = hill_k
        self.method = method
        self.per_layer = per_layer
        self.at_start = at_start
        self.output_file = output_file
        self.history: list[dict[str, Any]] = []
        self._pending: dict[str, float] | None = None

    def install(self, trainer: Any) -> SpectrumCallback:
        """Add this callback to ``trainer`` *first*, so every reporter sees its keys."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def summary(self, model: nn.Module) -> dict[str, float]:
        return spectrum_summary(model, self.names, max_layers=self.max_layers, conv_mode=self.conv_mode,
                                hill_k=self.hill_k, method=self.method, per_layer=self.per_layer)

    def _record(self, model: nn.Module, state: TrainerState) -> dict[str, float]:
        values = self.summary(model)
        self.history.append({"step": int(state.global_step), "epoch": state.epoch, **values})
        return values

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        if self.at_start and model is not None and not any(h["step"] == state.global_step for h in self.history):
            self._record(model, state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: nn.Module | None = None, **kwargs: Any) -> TrainerControl:
        if model is not None and state.global_step > 0 and state.global_step % self.every == 0:
            self._pending = self._record(model, state)
            control.should_log = True
        return control

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self._pending is None or logs is None:
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = None

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.output_file and args.output_dir and state.is_world_process_zero:
            self.save(os.path.join(args.output_dir, self.output_file))

    def save(self, path: str) -> None:
        """Write :attr:`history` as JSON (non-finite numbers as ``null``)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        with open(path, "w", encoding="utf-8") as f:
            json.dump([{k: clean(v) for k, v in h.items()} for h in self.history], f, indent=1)
