"""Convolution weights that only ever multiply zero padding, and sparsity without them.

A kernel tap of a zero-padded convolution whose every output position reads it from the
padding gets a gradient of exactly 0 for every input: the data never moves it, so any prior
drives it to 0 and magnitude pruning removes it for free. Small inputs make many such taps:
the small ResNet on 28x28 Fashion-MNIST runs its last stage at 2x2 -> 1x1, where 5/9 and 8/9
of the 3x3 taps see only padding, 56% of its regularized weights. Sparsity that counts them
credits a prior with zeros the architecture made; :func:`live_sparsity` leaves them out.

Conventions: which taps are dead depends only on the shapes (the spatial size reaching each
convolution, kernel, stride, padding, dilation), found with one forward pass of
``example_input`` (no gradient). ``padding_mode`` other than ``"zeros"`` reads real values at
the border, so those convolutions have no dead taps. Sparsity at ``tau`` is the fraction of
entries with ``|w| <= tau``, as in :mod:`hf_soft_diamond.sparsity`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .sparsity import _count_le

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _left_padding(conv: nn.Module) -> tuple[int, ...]:
    padding, kernel, dilation = conv.padding, conv.kernel_size, conv.dilation
    if padding == "valid":
        return (0,) * len(kernel)
    if padding == "same":  # torch pads (total // 2) on the left
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return tuple(padding)


def _live_taps_along(size_in: int, size_out: int, kernel: int, stride: int, pad: int, dilation: int) -> torch.Tensor:
    """Which of ``kernel`` taps read a real input element for at least one output position."""
    out = torch.arange(size_out).unsqueeze(1)
    index = out * stride - pad + torch.arange(kernel).unsqueeze(0) * dilation  # (out, kernel) input index read
    return ((index >= 0) & (index < size_in)).any(dim=0)


@torch.no_grad()
def padding_only_taps(model: nn.Module, example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{weight name: bool mask}`` of the convolution weights that only ever multiply zero padding.

    ``example_input`` (any batch size, e.g. one image) fixes the spatial size reaching each
    convolution; ``model(example_input)`` is run once in eval mode and the mode is restored.
    Every zero-padded ``Conv1d/2d/3d`` that ran is listed, its mask shaped like its weight
    (True: dead). A convolution applied at several input sizes is dead only where it is
    dead at all of them.
    """
    seen: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _CONVS) and module.padding_mode == "zeros":
            def record(mod, inputs, output, name=name):
                dims = len(mod.kernel_size)
                seen.setdefault(name, []).append((tuple(inputs[0].shape[-dims:]), tuple(output.shape[-dims:])))
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    masks = {}
    for name, shapes in seen.items():
        conv = modules[name]
        live = torch.zeros(conv.kernel_size, dtype=torch.bool)
        for size_in, size_out in shapes:
            per_dim = [_live_taps_along(i, o, k, s, p, d) for i, o, k, s, p, d in
                       zip(size_in, size_out, conv.kernel_size, conv.stride, _left_padding(conv), conv.dilation)]
            grid = per_dim[0]
            for axis in per_dim[1:]:
                grid = grid.unsqueeze(-1) & axis
            live |= grid
        masks[f"{name}.weight" if name else "weight"] = (~live).expand_as(conv.weight).clone()
    return masks


def padding_only_among(model: nn.Module, example_input: torch.Tensor,
                       names: Iterable[str]) -> dict[str, torch.Tensor]:
    """:func:`padding_only_taps` of the weights in ``names`` (e.g. the regularized ones) that have
    at least one padding-only tap: ``{}`` when none has, so callers can skip the work they would
    do for them (a second prune curve, excluded entries)."""
    wanted = set(names)
    return {name: mask for name, mask in padding_only_taps(model, example_input).items()
            if name in wanted and bool(mask.any())}


def live_sparsity(named_weights: Iterable[tuple[str, torch.Tensor]], dead: dict[str, torch.Tensor],
                  thresholds: Sequence[float]) -> tuple[dict[str, float], int]:
    """Sparsity of the weights that are not padding-only: ``({f"{tau:.0e}": fraction}, live count)``.

    ``named_weights``: the weights to measure (e.g. the regularized ones); ``dead``: masks of
    :func:`padding_only_taps` (weights not in it are all live). Counted as
    :func:`~hf_soft_diamond.sparsity.sparsity_report` counts (same comparison dtype and ``<=``).
    """
    ascending = sorted(float(t) for t in thresholds)
    counts = torch.zeros(len(ascending), dtype=torch.int64)
    live_total = 0
    for name, weight in named_weights:
        live = weight.detach()[~dead[name].to(weight.device)] if name in dead else weight.detach()
        live_total += live.numel()
        counts += _count_le(live, ascending).cpu()
    return {f"{tau:.0e}": (int(c) / live_total if live_total else 0.0) for tau, c in zip(ascending, counts)}, live_total


#: Share of a model's weights (in :func:`warn_if_mostly_padding`) above which the warning fires.
PADDING_ONLY_WARN_SHARE = 0.10


def warn_if_mostly_padding(model: nn.Module, example_input: torch.Tensor,
                           share: float = PADDING_ONLY_WARN_SHARE) -> float:
    """Warn once (``UserWarning``) when more than ``share`` of the model's convolution and linear
    weights are padding-only taps at the input size of ``example_input``; return that share.

    Such taps cost memory and compute, no input can train them, and any prior zeroes them, so a
    sparsity figure that counts them flatters the prior (:func:`live_sparsity` leaves them
    out). Usually the network downsamples more than its inputs are large (e.g. a ResNet built
    for 224x224 on 28x28 images).
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"`share` must be in [0, 1), got {share!r}")
    dead = padding_only_taps(model, example_input)
    weights = {f"{name}.weight" if name else "weight": module.weight for name, module in model.named_modules()
               if isinstance(module, (*_CONVS, nn.Linear))}
    total = sum(w.numel() for w in weights.values())
    n_dead = sum(int(mask.sum()) for name, mask in dead.items() if name in weights)
    fraction = n_dead / total if total else 0.0
    if fraction > share:
        size = "x".join(str(d) for d in example_input.shape[2:])
        warnings.warn(
            f"hf_soft_diamond: {n_dead:,} of the model's {total:,} convolution and linear weights "
            f"({100 * fraction:.1f}%) are convolution taps that only ever multiply zero padding at input "
            f"size {size}: no input trains them, they cost memory and compute, and any prior zeroes them "
            "(judge sparsity on the live weights, sparsity['live']). The network downsamples more than the "
            "inputs are large: fewer stages, or larger inputs (image_size), avoid them.",
            UserWarning, stacklevel=2)
    return fraction
