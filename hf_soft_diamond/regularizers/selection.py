"""Which parameters a regularizer acts on.

Default rule (the one ``transformers.Trainer.get_decay_parameter_names`` uses for
weight decay, plus a shape condition): trainable parameters with ``ndim >= 2`` whose
name matches none of ``bias``, ``layernorm``, ``rmsnorm``, ``norm`` (as a name
component) and that do not belong to a normalisation module (any module whose class
name contains ``Norm``: LayerNorm, RMSNorm, BatchNorm, GroupNorm...). Embedding
matrices are included unless ``include_embeddings=False``.

``include``: regular expressions (``re.search`` on the full parameter name); when
given, exactly the trainable parameters matching at least one of them are chosen
(any shape), replacing the default rule. ``exclude``: regular expressions removing
matching names from whatever was chosen. Tied parameters appear once, under the
first name ``named_parameters()`` gives them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

_NORM_NAME_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def _compile(patterns: Iterable[str] | str | None, arg: str) -> list[re.Pattern[str]]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as err:
            raise ValueError(f"`{arg}` holds an invalid regular expression {p!r}: {err}") from None
    return compiled


def _norm_and_embedding_names(model: nn.Module) -> tuple[set[str], set[str]]:
    norm, emb = set(), set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if "Norm" in type(module).__name__:
            norm.update(prefix + n for n, _ in module.named_parameters(recurse=False))
        if isinstance(module, nn.Embedding):
            emb.update(prefix + n for n, _ in module.named_parameters(recurse=False))
    return norm, emb


def select_parameters(
    model: nn.Module,
    include: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
    include_embeddings: bool = True,
) -> list[tuple[str, nn.Parameter]]:
    """Return ``(name, parameter)`` pairs the regularizer acts on, in model order."""
    include_re = _compile(include, "reg_include")
    exclude_re = _compile(exclude, "reg_exclude")
    norm_names, emb_names = _norm_and_embedding_names(model)
    chosen = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if include_re:
            keep = any(r.search(name) for r in include_re)
        else:
            keep = (
                param.ndim >= 2
                and name not in norm_names
                and not any(re.search(p, name.lower()) for p in _NORM_NAME_PATTERNS)
                and (include_embeddings or name not in emb_names)
            )
        if keep and not any(r.search(name) for r in exclude_re):
            chosen.append((name, param))
    return chosen


def regularized_names(model: nn.Module, **selection_kwargs) -> list[str]:
    """Names of :func:`select_parameters`."""
    return [n for n, _ in select_parameters(model, **selection_kwargs)]
