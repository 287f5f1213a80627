"""Run one elementwise kernel over many tensors, eagerly or fused by ``torch.compile``.

A regularizer's per-step work is elementwise over every regularized weight. Eagerly,
an expression such as a table lookup with interpolation is a dozen passes over
memory (one per torch op). Compiled with inductor it becomes one loop per tensor
that reads each weight once. :class:`TensorwiseKernel` hides that choice:

* ``backend="eager"``: call the Python function as is (always available).
* ``backend="compile"``: the loop over all tensors of a parameter group is one
  ``torch.compile``-d graph (one fused loop per tensor, one Python call per step);
  scalars are passed as 0-d float64 tensors so a changing learning rate never
  recompiles.
* ``backend="auto"`` (default): ``compile`` when inductor can build kernels here
  (a C++ compiler for CPU tensors, Triton for CUDA) *and* the call covers at least
  :data:`COMPILE_MIN_NUMEL` elements, else ``eager``. Compiling costs seconds to
  minutes once; it pays back only where the per-step saving, which grows with the
  number of weights, outweighs it over a run (the break-even is measured by
  ``benchmarks/bench_compile_breakeven.py``). Set the environment variable
  ``HF_SOFT_DIAMOND_COMPILE=0`` to force eager.

If compilation fails at run time the kernel warns once and falls back to eager,
so training never stops because of the fast path.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

Backend = Literal["auto", "compile", "eager"]
BACKENDS: tuple[str, ...] = ("auto", "compile", "eager")

#: ``backend="auto"`` compiles a kernel only for calls over at least this many elements
#: (summed over the tensors of one call, i.e. one parameter group). Below it the compile
#: time is not recovered within a typical run (``benchmarks/RESULTS.md``, "Compile
#: break-even"); override with ``HF_SOFT_DIAMOND_COMPILE_MIN_NUMEL``.
COMPILE_MIN_NUMEL: int = int(os.environ.get("HF_SOFT_DIAMOND_COMPILE_MIN_NUMEL", 1 << 20))


def worth_compiling(tensors: Sequence[Tensor]) -> bool:
    """Whether ``backend="auto"`` compiles a kernel over ``tensors`` (see :data:`COMPILE_MIN_NUMEL`)."""
    return sum(t.numel() for t in tensors) >= COMPILE_MIN_NUMEL


@functools.cache
def compile_available(device_type: str) -> bool:
    """Whether ``torch.compile`` (inductor) can generate kernels for ``device_type``."""
    if os.environ.get("HF_SOFT_DIAMOND_COMPILE", "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if not hasattr(torch, "compile"):
        return False
    if device_type == "cpu":
        return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def _at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in float32, or as is when it is already float32/float64 (bf16/fp16 are upcast)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def validate_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"`fused_backend` must be one of {BACKENDS}, got {backend!r}.")
    return backend


_loop_ids = itertools.count()

#: Inductor options of every compiled kernel. ``ffp-contract=fast`` lets the C++ compiler
#: fuse ``a*b + c`` into one FMA (inductor's default is ``off``, for bitwise parity with
#: eager). The per-step readers are Horner chains, so this cuts their arithmetic by about
#: a third on CPU (measured in benchmarks/RESULTS.md); results differ from eager by float
#: rounding only (one rounding instead of two per FMA). Ignored by the CUDA backend.
COMPILE_OPTIONS: dict[str, object] = {"cpp.enable_floating_point_contract_flag": "fast"}


def _make_loop(fn: Callable[..., None]) -> Callable[..., None]:
    """``loop(tensor_lists, scalars)`` applying ``fn`` to matching tensors, with a code object of its own.

    Dynamo keeps its compiled graphs (and its recompile limit, 8 by default) per code
    object. Closures of one ``def`` share a code object, so every kernel of the process
    would count against one limit and the ninth would fail; a renamed copy of the code
    object gives each kernel its own cache.
    """

    def loop(tensor_lists: Sequence[Sequence[Tensor]], scalars: Sequence[Tensor]) -> None:
        for tensors in zip(*tensor_lists):
            fn(*tensors, *scalars)

    name = f"tensorwise_loop_{next(_loop_ids)}"
    loop.__code__ = loop.__code__.replace(co_name=name, co_qualname=name) if hasattr(
        loop.__code__, "co_qualname") else loop.__code__.replace(co_name=name)
    loop.__name__ = loop.__qualname__ = name
    return loop


class TensorwiseKernel:
    """Apply ``fn(*tensors, *scalars)`` to matching tensors of several lists, in place.

    ``fn`` is elementwise torch code for one tensor (any shape or strides) that
    mutates its tensor arguments in place and returns ``None``; scalars arrive as
    0-d float64 tensors. With the ``compile`` backend the whole loop over the
    lists is one compiled graph (one kernel per tensor, one Python call per step);
    it is compiled once per distinct list of shapes (i.e. once per parameter group).
    """

    def __init__(self, fn: Callable[..., None], backend: Backend = "auto") -> None:
        self.fn = fn
        self.backend = validate_backend(backend)
        self._compiled: Callable[..., None] | None = None
        self._compile_failed = False
        self._loop = _make_loop(fn)

    def uses_compile(self, device_type: str, tensors: Sequence[Tensor] | None = None) -> bool:
        """Whether a call over ``tensors`` (on ``device_type``) runs compiled."""
        if self.backend == "eager" or self._compile_failed:
            return False
        if self.backend == "compile":
            return True
        return compile_available(device_type) and (tensors is None or worth_compiling(tensors))

    def _get_compiled(self) -> Callable[..., None]:
        if self._compiled is None:
            self._compiled = torch.compile(self._loop, dynamic=False, fullgraph=True, options=COMPILE_OPTIONS)
        return self._compiled

    def __call__(self, tensor_lists: Sequence[Sequence[Tensor]], scalars: Sequence[float] = ()) -> None:
        tensor_lists = [list(lst) for lst in tensor_lists]
        if not tensor_lists or not tensor_lists[0]:
            return
        if any(len(lst) != len(tensor_lists[0]) for lst in tensor_lists):
            raise ValueError("all tensor lists must have the same length")
        device = tensor_lists[0][0].device
        scalar_tensors = [torch.tensor(float(s), dtype=torch.float64, device=device) for s in scalars]
        if not self.uses_compile(device.type, tensor_lists[0]):
            self._loop(tensor_lists, scalar_tensors)
            return
        try:
            self._get_compiled()(tensor_lists, scalar_tensors)
        except Exception as err:  # noqa: BLE001 - any inductor failure: fall back, once
            self._compile_failed = True
            warnings.warn(
                f"hf_soft_diamond: torch.compile failed for {getattr(self.fn, '__name__', self.fn)} "
                f"({type(err).__name__}: {err}); falling back to eager kernels.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._loop(tensor_lists, scalar_tensors)


def _non_finite_flags(tensors: Sequence[Tensor]) -> Tensor:
    """Per tensor: does it hold a NaN or an Inf? (the form compiled into one fused pass)"""
    return torch.stack([~torch.isfinite(t).all() for t in tensors])


def _non_finite_flags_eager(tensors: Sequence[Tensor]) -> Tensor:
    """:func:`_non_finite_flags` at about a tenth of its eager cost: a tensor holding a NaN or
    an Inf has a non-finite sum; a finite tensor has one only when the sum overflows (|sum| above
    float32's maximum, summed in float32 at least), so the rare candidates are checked exactly."""
    sums = torch.stack([t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum().float()
                        for t in tensors])
    flags = ~torch.isfinite(sums)
    if bool(flags.any()):
        for i in flags.nonzero().flatten().tolist():
            flags[i] = ~torch.isfinite(tensors[i]).all()
    return flags


_compiled_flags: dict[str, Callable[..., Tensor]] = {}


def non_finite_indices(tensors: Sequence[Tensor], backend: Backend = "auto") -> list[int]:
    """Indices of the tensors holding NaN or Inf (one read pass; one host sync)."""
    tensors = list(tensors)
    if not tensors:
        return []
    device_type = tensors[0].device.type
    fn: Callable[..., Tensor] = _non_finite_flags_eager
    if backend == "compile" or (backend == "auto" and compile_available(device_type) and worth_compiling(tensors)):
        fn = _compiled_flags.get(device_type)
        if fn is None:  # one compiled wrapper per device type (not a new one per call)
            fn = _compiled_flags[device_type] = torch.compile(_non_finite_flags, dynamic=False)
    try:
        flags = fn(tensors)
    except Exception:  # noqa: BLE001 - fall back to eager on any compile failure
        flags = _non_finite_flags_eager(tensors)
    return torch.nonzero(flags).flatten().tolist()
