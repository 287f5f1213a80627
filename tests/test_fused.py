"""The compiled (inductor) kernels against the eager ones: two implementations, one result."""

from __future__ import annotations

import pytest
import torch

from hf_soft_diamond import attach_regularizer, build_regularizer
from hf_soft_diamond.fused import TensorwiseKernel, compile_available

needs_compile = pytest.mark.skipif(not compile_available("cpu"), reason="torch.compile has no C++ compiler here")

CASES = [
    ("l2", "coupled", {}),
    ("l1", "decoupled", {}),
    ("lp", "coupled", {"p": 0.7}),
    ("pwd", "decoupled", {"p": 0.8, "l2_strength": 0.01}),
    ("sas", "coupled", {"alpha": 0.5, "gamma": 0.5}),
    ("sas", "decoupled", {"alpha": 1.5, "gamma": 0.5}),
]


def _train(backend, name, mode, kwargs, shapes=((33, 17), (64,), (5, 3, 3), (128, 9))):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen) * 0.3) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(12, 8, generator=gen).t()))  # non-contiguous view
    opt = torch.optim.Adam(params, lr=1e-2)
    attach_regularizer(opt, build_regularizer(name, strength=0.05, mode=mode, fused_backend=backend, **kwargs), params)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 0.1
        opt.step()
    return [p.detach().clone() for p in params]


@needs_compile
@pytest.mark.parametrize("name,mode,kwargs", CASES)
def test_compiled_kernels_match_eager(name, mode, kwargs):
    eager = _train("eager", name, mode, kwargs)
    compiled = _train("compile", name, mode, kwargs)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_failing_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    def kernel(w, scale):
        w.mul_(scale)

    k = TensorwiseKernel(kernel, backend="compile")

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(k, "_get_compiled", lambda: broken)
    w = torch.ones(4)
    with pytest.warns(RuntimeWarning, match="falling back to eager"):
        k([[w]], [3.0])
    assert torch.equal(w, torch.full((4,), 3.0))
    k([[w]], [2.0])  # no second warning, eager from now on
    assert torch.equal(w, torch.full((4,), 6.0))


def test_bad_backend_name():
    with pytest.raises(ValueError, match="`fused_backend`"):
        build_regularizer("l2", fused_backend="fast")


@pytest.mark.skipif(not compile_available("cpu"), reason="needs a C++ compiler for inductor")
def test_many_kernels_in_one_process_all_stay_compiled():
    """More kernels than dynamo's per-code-object recompile limit (8): none may fall back."""
    import functools
    import warnings

    def scale_(w, s, *, k):
        w.mul_(1.0 + k * s)

    kernels = [TensorwiseKernel(functools.partial(scale_, k=float(k)), backend="compile") for k in range(10)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback warns: fail on it
        for k, kernel in enumerate(kernels):
            w = torch.ones(5)
            kernel([[w]], [0.5])
            torch.testing.assert_close(w, torch.full((5,), 1.0 + 0.5 * k))
    assert all(kernel.uses_compile("cpu") for kernel in kernels)


@pytest.mark.parametrize("backend", ["eager", "compile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_indices_exact_against_isfinite(backend, dtype):
    """NaN, +Inf and -Inf are found in every dtype; finite tensors whose sum overflows (huge
    values of both signs, float16 values summing past its range) are not."""
    from hf_soft_diamond.fused import non_finite_indices

    if backend == "compile" and not compile_available("cpu"):
        pytest.skip("needs a C++ compiler for inductor")
    big = torch.finfo(dtype).max
    tensors = [torch.randn(64, 8, dtype=dtype), torch.randn(300, dtype=dtype), torch.full((4, 4), big, dtype=dtype),
               torch.randn(7, dtype=dtype), torch.randn(5, 5, dtype=dtype), torch.tensor([big, big, -big], dtype=dtype),
               torch.randn(3, dtype=dtype)]
    tensors[1][17] = float("nan")
    tensors[3][0] = float("inf")
    tensors[6][2] = -float("inf")
    expected = [i for i, t in enumerate(tensors) if not bool(torch.isfinite(t).all())]
    assert expected == [1, 3, 6]
    assert non_finite_indices(tensors, backend) == expected
