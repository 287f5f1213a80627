"""The sparse checkpoint format of an export folder: encode, write, read and load it.

This module is the library side of ``hf-soft-diamond export``: the on-disk format and its
loader, with no knowledge of runs, tasks or data. The exporter that prunes a finished run
and writes such a folder is :mod:`hf_soft_diamond.tasks.export` (``docs/export.md``).

Format: **hf-soft-diamond sparse bitmask, version 1**
-----------------------------------------------------
One safetensors file ``model.sparse.safetensors`` holding the tensors ``save_pretrained``
would write (same names, tied weights once), each stored either

* densely under its own name, or
* as ``NAME.bitmask`` (``uint8``, ``ceil(numel / 8)`` bytes: bit ``i`` of the row-major
  flattened tensor is set where the entry is non-zero; bit ``i`` is bit ``7 - i % 8`` of
  byte ``i // 8``, numpy's ``packbits`` order) plus ``NAME.values`` (the non-zero entries
  in row-major order, 1-D),

whichever is smaller (bitmask form for floating tensors with more than ~1/32 zeros in
float32). The file's safetensors metadata ``hf_soft_diamond_sparse`` is a JSON object
``{"format": "hf-soft-diamond-sparse-bitmask", "version": 1, "dtype": ...,
"sparse": {NAME: {"shape": [...], "dtype": "float32"}}}``. Zeros are exact (the sign of
``-0.0`` is not kept); NaN/inf are stored as values. The file is deliberately *not*
called ``model.safetensors``: ``from_pretrained(OUT_DIR)`` then fails loudly instead of
initialising the missing weights at random. Load it with :func:`load_sparse_pretrained`
(``from_pretrained`` under the hood, with the decoded state dict), which also loads a
*dense* export folder (a plain ``save_pretrained`` folder with ``model.safetensors``).

Why not ``compressed-tensors``: its ``sparse-bitmask`` compressor was removed in
compressed-tensors 0.15 (the oldest release transformers 5.x accepts), and transformers
5.24 loads a checkpoint carrying a ``sparsity_config`` with the bitmask tensors as
*unexpected* and the weights *missing*, i.e. randomly initialised, with only a warning
(checked with compressed-tensors 0.20.1; see ``docs/export.md``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_NAME = "hf-soft-diamond-sparse-bitmask"
FORMAT_VERSION = 1
SPARSE_WEIGHTS_NAME = "model.sparse.safetensors"
DENSE_WEIGHTS_NAME = "model.safetensors"
DENSE_INDEX_NAME = "model.safetensors.index.json"
MANIFEST_NAME = "sparse_export.json"
"""The manifest an export folder carries beside the weights (written by the exporter)."""
METADATA_KEY = "hf_soft_diamond_sparse"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_BITMASK_SUFFIX = ".bitmask"
_VALUES_SUFFIX = ".values"


class ExportError(ValueError):
    """A bad argument or input of the export; the message names the argument."""


# --------------------------------------------------------------------------- encoding


def _pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Row-major bool mask -> uint8 bytes, numpy ``packbits`` (big-endian bit) order."""
    flat = mask.detach().reshape(-1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat))


def _unpack_mask(bits: torch.Tensor, numel: int) -> torch.Tensor:
    if bits.dtype != torch.uint8 or bits.ndim != 1 or bits.numel() != (numel + 7) // 8:
        raise ValueError(f"a bitmask of {numel} entries needs {(numel + 7) // 8} uint8 bytes, got "
                         f"{bits.dtype} {tuple(bits.shape)}")
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))


def encode_sparse_state_dict(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of the sparse bitmask format (module docstring).

    Floating tensors are cast to ``dtype`` when given; each floating tensor is stored in
    bitmask form when that is smaller than dense, every other tensor densely.
    """
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for name in state_dict:
        if name.endswith((_BITMASK_SUFFIX, _VALUES_SUFFIX)):
            raise ValueError(f"tensor name {name!r} ends with a suffix the sparse format reserves")
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        if t.is_floating_point() and t.numel() > 0:
            mask = t != 0
            nnz = int(mask.sum())
            sparse_bytes = (t.numel() + 7) // 8 + nnz * t.element_size()
            if sparse_bytes < t.numel() * t.element_size():
                tensors[name + _BITMASK_SUFFIX] = _pack_mask(mask)
                tensors[name + _VALUES_SUFFIX] = t.reshape(-1)[mask.reshape(-1)].clone()
                sparse[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                continue
        tensors[name] = t
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
            "dtype": None if dtype is None else str(dtype).removeprefix("torch."), "sparse": sparse}
    return tensors, {"format": "pt", METADATA_KEY: json.dumps(meta)}


def decode_sparse_state_dict(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
                             dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_sparse_state_dict`: the dense state dict (floating tensors cast to ``dtype``)."""
    if not metadata or METADATA_KEY not in metadata:
        raise ValueError(f"not an {FORMAT_NAME} file: its safetensors metadata has no {METADATA_KEY!r} entry")
    meta = json.loads(metadata[METADATA_KEY])
    if meta.get("format") != FORMAT_NAME or int(meta.get("version", -1)) > FORMAT_VERSION:
        raise ValueError(f"unsupported sparse format {meta.get('format')!r} version {meta.get('version')!r} "
                         f"(this reader: {FORMAT_NAME} <= {FORMAT_VERSION})")
    sparse = meta.get("sparse", {})
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        base = name.removesuffix(_BITMASK_SUFFIX).removesuffix(_VALUES_SUFFIX)
        if base != name and base in sparse:
            continue
        out[name] = t
    for name, info in sparse.items():
        shape = [int(s) for s in info["shape"]]
        numel = math.prod(shape)
        values = tensors[name + _VALUES_SUFFIX]
        mask = _unpack_mask(tensors[name + _BITMASK_SUFFIX], numel)
        nnz = int(mask.sum())
        if values.ndim != 1 or values.numel() != nnz:
            raise ValueError(f"{name}: the bitmask marks {nnz} non-zeros but {values.numel()} values are stored")
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[mask] = values
        out[name] = dense.view(shape)
    if dtype is not None:
        out = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in out.items()}
    return out


def save_sparse_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
                            dtype: torch.dtype | None = None) -> Path:
    """Write ``state_dict`` in the sparse bitmask format to ``path``."""
    from safetensors.torch import save_file

    tensors, metadata = encode_sparse_state_dict(state_dict, dtype)
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)


def load_sparse_safetensors(path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The dense state dict of a sparse bitmask file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return decode_sparse_state_dict(tensors, metadata, dtype)


def _model_class(config: Any) -> type:
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ValueError(f"config.architectures {getattr(config, 'architectures', None)!r} names no transformers "
                     "class; pass `model_class`")


def load_sparse_pretrained(path: str | os.PathLike[str], model_class: type | None = None, *,
                           dtype: torch.dtype | str | None = torch.float32, **from_pretrained_kwargs: Any):
    """Load an export folder (either format) as a ``transformers`` model, in eval mode.

    Sparse folders: the bitmask file is decoded into the dense state dict and handed to
    ``model_class.from_pretrained(None, config=..., state_dict=...)`` (the class named by
    ``config.architectures`` by default), then ``generation_config.json`` is applied when
    present. Dense folders go straight to ``from_pretrained(path)``. ``dtype`` is the
    dtype of the returned model (float32 by default, also for float16-stored exports);
    other keyword arguments go to ``from_pretrained``.
    """
    from transformers import AutoConfig, GenerationConfig

    path = Path(path)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = DTYPES[dtype]
    config = AutoConfig.from_pretrained(path)
    cls = model_class or _model_class(config)
    if not (path / SPARSE_WEIGHTS_NAME).is_file():
        return cls.from_pretrained(path, dtype=dtype, **from_pretrained_kwargs).eval()
    state_dict = load_sparse_safetensors(path / SPARSE_WEIGHTS_NAME,
                                         dtype=dtype if isinstance(dtype, torch.dtype) else None)
    model = cls.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype, **from_pretrained_kwargs)
    if (path / "generation_config.json").is_file() and getattr(model, "generation_config", None) is not None:
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


__all__ = [
    "DENSE_INDEX_NAME",
    "DENSE_WEIGHTS_NAME",
    "DTYPES",
    "ExportError",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "METADATA_KEY",
    "SPARSE_WEIGHTS_NAME",
    "decode_sparse_state_dict",
    "encode_sparse_state_dict",
    "load_sparse_pretrained",
    "load_sparse_safetensors",
    "save_sparse_safetensors",
]
