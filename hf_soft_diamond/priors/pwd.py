"""Decoupled weight decay for any p norm (pWD), Outmezguine & Levi, arXiv 2404.10824.

docs/methods.md §5. With ``X = |w_t|^(2-p)`` computed from the weights *before*
the optimizer step and ``w_hat`` the optimizer's own step (weight_decay = 0)::

    w_{t+1} = w_hat * X / (X * (1 + lr*lambda_2) + p * lr * lambda)

``lambda_2`` is the optional elastic-net L2 strength (0 by default). Convention of
the authors' code, kept here: the decay multiplies ``p * lr * lambda``; at p = 2 the
factor ``1/(1 + 2*lr*lambda)`` equals AdamW with ``weight_decay = 2*lambda`` to first
order. Zero is absorbing: X = 0 gives factor 0; weights decayed below the smallest
normal number of their compute dtype are set to exactly 0 (:func:`flush_subnormal`), so
exact-zero counts do not depend on the backend. For p < 2 and ``p*lr*lambda > 0``
there is no division by zero.

The factor is split from its application because it is computed before the step
(from ``w_t``) and applied after it (to ``w_hat``).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.polynomial import chebyshev
from torch import Tensor


def _fit_pow2_polynomials() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients (lowest degree first) of ``log2(1+s)/s`` for ``s`` in [0, 1] (degree 10)
    and of ``2**f`` for ``f`` in [-1/2, 1/2] (degree 5): Chebyshev least-squares fits on
    20001 points. Max error 2.2e-9 (absolute, in ``log2``) and 2.3e-7 (relative,
    ``2**f``), below float32's own rounding of ``e * log2|w|`` for |w| < 0.1."""
    s = np.linspace(0.0, 1.0, 20001)[1:]
    f = np.linspace(-0.5, 0.5, 20001)
    log_c = chebyshev.cheb2poly(chebyshev.chebfit(s, np.log2(1 + s) / s, 10))
    exp_c = chebyshev.cheb2poly(chebyshev.chebfit(f, np.exp2(f), 5))
    return tuple(map(float, log_c)), tuple(map(float, exp_c))


#: Fitted once at import (milliseconds: ``benchmarks/RESULTS.md``, "Timings moved out of docstrings"),
#: so compiled kernels see plain Python floats.
_LOG2_COEFS, _EXP2_COEFS = _fit_pow2_polynomials()


def _horner(x: Tensor, coefs: tuple[float, ...]) -> Tensor:
    acc = x * coefs[-1] + coefs[-2]
    for c in coefs[-3::-1]:
        acc = acc * x + c
    return acc


def abs_pow_float32_polynomial(a: Tensor, exponent: float) -> Tensor:
    """``a**exponent`` for float32 ``a >= 0`` and ``exponent > 0``, from the float bits.

    ``a = 2**E * (1 + s)`` (exponent and mantissa fields of the IEEE bits, s in [0, 1)),
    ``log2 a = E + s * P(s)``, ``y = exponent * log2 a``, ``a**exponent = 2**round(y) *
    Q(y - round(y))`` with ``2**n`` built from its bits. Polynomials from
    :func:`_fit_pow2_polynomials`; ~25 multiply/add/integer operations that inductor
    vectorizes, cheaper than the two vectorized transcendental calls of
    ``exp2(e * log2 a)`` on CPU (``benchmarks/RESULTS.md``), at the same accuracy (both are
    limited by float32 rounding of y: ~1e-6 relative for |w| ~ 1e-3, ~4e-6 at 1e-9).
    ``a = 0`` gives 0, subnormal ``a`` are exact too. Results below float32's smallest
    normal number come out subnormal or 0 as IEEE ``pow`` rounds them (``2**n`` is built
    64 binades higher and scaled down by ``2**-64``), so a weight that ``pow`` decays to
    exactly 0 is 0 here too; results are clamped above at 2**127.49 (inf gives a finite
    value); NaN gives 0 (the pWD factor multiplies a NaN weight anyway). All integer work
    stays int32 (an int64 intermediate slows the kernel down: ``benchmarks/RESULTS.md``, "The fused
    AdamW step").
    """
    subnormal = a < 2.0**-126  # scaled up by 2**64 first (their exponent field is 0)
    bits = torch.where(subnormal, a * 2.0**64, a).view(torch.int32)
    s = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32) - 1.0
    log2_a_int = ((bits >> 23) - 127).to(torch.float32) - 64.0 * subnormal.to(torch.float32)
    y = ((log2_a_int + s * _horner(s, _LOG2_COEFS)) * exponent).clamp(max=127.49)
    tiny = y < -126.0  # the result is subnormal or 0: build 2**(y + 64), then scale by 2**-64
    y = torch.where(tiny, y + 64.0, y).clamp(min=-126.0)  # 2**n stays normal; below 2**-190 rounds to 0
    n = torch.round(y)
    two_n = ((n.to(torch.int32) + 127) << 23).view(torch.float32)
    out = _horner(y - n, _EXP2_COEFS) * two_n
    return torch.where(a > 0, torch.where(tiny, out * 2.0**-64, out), 0.0)


def abs_pow(w: Tensor, exponent: Tensor | float) -> Tensor:
    """``|w|^exponent`` for ``exponent >= 0``, cheaply.

    The per-step cost of pWD is dominated by this power. A Python float exponent of 0, 1,
    0.5, 1.5 or 2 (p = 2, 1, 1.5, 0.5, 0 in ``2 - p``) needs no transcendental at all.
    Any other exponent is ``exp2(e * log2|w|)`` (``|w| = 0`` gives ``exp2(-inf) = 0``,
    or 1 for e = 0 as ``pow``): cheaper than a vectorized ``pow`` on CPU (``benchmarks/RESULTS.md``,
    "Per-step regularizer cost on the Marian-like step"), at
    a relative error of ~2e-6 in float32 for |w| ~ 1e-3 (~1e-5 at 1e-30; ``pow``: ~1e-6) -- X
    only scales the decay. Inside ``torch.compile`` (the fused kernels), float32 weights
    and a Python float exponent take :func:`abs_pow_float32_polynomial` instead: same
    accuracy, at less cost.
    """
    a = w.abs()
    if isinstance(exponent, (int, float)):
        e = float(exponent)
        if e == 0.0:
            return torch.ones_like(a)
        if e == 1.0:
            return a
        if e == 0.5:
            return a.sqrt()
        if e == 1.5:
            return a * a.sqrt()
        if e == 2.0:
            return a * a
        if a.dtype == torch.float32 and torch.compiler.is_compiling():
            return abs_pow_float32_polynomial(a, e)  # compiled: cheaper, same accuracy
    x = torch.exp2(torch.log2(a) * exponent)  # |w| = 0: exp2(-inf) = 0 for exponent > 0
    if isinstance(exponent, (int, float)):
        return x
    return torch.where(a > 0, x, (exponent == 0).to(a.dtype))  # 0^0 = 1 (and -inf*0 = nan avoided)


def flush_subnormal(x: Tensor) -> Tensor:
    """``x`` with every value below the smallest normal number of its dtype set to exactly 0.

    pWD decays a weight geometrically; once ``|w|`` is below the smallest normal float
    (1.2e-38 in float32 and bfloat16, 2.2e-308 in float64) it is 0 for every purpose but
    is not yet exactly 0, and how long it lingers there depends on how the power was
    rounded. Flushing makes zero exact and absorbing in every backend (a change of
    at most 1.2e-38 in float32, and none at all for ``|x| >= 2**-101``, about 4e-31).
    """
    # sign(x) * max(|x| - tiny, 0): 0 below tiny; |x| - tiny rounds back to |x| wherever tiny is below half
    # an ulp of x (float32: |x| >= 2**-101), so only values under ~4e-31 move, by less than tiny; NaN stays NaN.
    # Written without a comparison and select, which cost ~4x as much inside the fused AdamW loop.
    return torch.copysign(torch.relu(x.abs() - torch.finfo(x.dtype).tiny), x)


def pwd_factor(w: Tensor, p: Tensor | float, decay: Tensor | float, l2_decay: Tensor | float = 0.0) -> Tensor:
    """Multiplicative pWD factor ``X / (X*(1+l2_decay) + decay)`` with ``X = |w|^(2-p)``.

    Args:
        w: weights before the step.
        p: the norm's exponent, 0 < p <= 2 (a Python float selects the fast powers of :func:`abs_pow`).
        decay: ``p * lr * lambda`` (already multiplied, see module docstring).
        l2_decay: ``lr * lambda_2`` for the elastic-net form, 0 for plain pWD.
    """
    x = abs_pow(w, 2.0 - p)
    denom = x * (1.0 + l2_decay) + decay
    # decay == 0 (strength 0, or lr 0 during warm-up) and w == 0: no decay, not 0/0.
    return torch.where(denom > 0, x / denom, torch.ones_like(x))
