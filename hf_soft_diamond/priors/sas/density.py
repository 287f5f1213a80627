"""The unit-dispersion SaS law in float64 numpy: pointwise density and score.

One job: the numbers ``f_1(z)`` and ``psi_1(z)`` at given points, by each of the four
methods the table builder (:mod:`.build`) combines; which method serves which z, and with
how many terms, is decided there. Also the checks of the law's parameters and
``kappa``.

Conventions
-----------
* The law has characteristic function ``exp(-gamma * |t|**alpha)``, tail index ``alpha``
  in (0, 2] (:func:`_check_alpha`), dispersion ``gamma > 0`` (:func:`_check_gamma`).
  Everything here is at ``gamma = 1``, at ``z = |x|/c > 0`` (dimensionless, ``c =
  gamma**(1/alpha)``), on float64 numpy arrays; ``psi_1 = d/dz log f_1``.
* ``kappa = Gamma(3/alpha)/Gamma(1/alpha)`` (:func:`_kappa`): ``psi_1(z) ~ -kappa z`` as
  z -> 0.
* Each evaluator returns what its caller needs without cancellation: ``(f, f'/z)``
  (power series), ``(S_f, S_d)`` with ``f = S_f/(pi z)``, ``f' = -S_d/(pi z^2)`` (tail
  series), ``(f, z psi)`` (Zolotarev integral, alpha = 1/2 closed form).

Methods
-------
* small z: the power series ``f(z) = 1/(pi alpha) sum_k (-1)^k Gamma((2k+1)/alpha)
  / (2k)! z^(2k)`` (convergent for alpha > 1, asymptotic for alpha < 1), with a fixed
  number of terms, by Horner's rule in ``(z/z_a)**2`` (:func:`_power_eval`);
* large z: the tail series ``f(z) = 1/pi sum_{k>=1} (-1)^(k+1) Gamma(alpha k + 1)/k!
  sin(k pi alpha/2) z^(-alpha k - 1)`` (convergent for alpha < 1, asymptotic for
  alpha > 1), by Horner's rule in ``(z_b/z)**alpha`` (:func:`_tail_eval`);
* between them: Zolotarev's non-oscillatory integral
  ``f(x) = alpha/(pi |alpha-1| x) int_0^{pi/2} y e^{-y} dtheta`` with
  ``y = x^(alpha/(alpha-1)) V(theta)``, ``V = (cos th/sin(alpha th))^(alpha/(alpha-1))
  cos((alpha-1) th)/cos th``, and ``x psi(x) = 1/(alpha-1) - alpha/(alpha-1) *
  int y^2 e^{-y} / int y e^{-y}``, by tanh-sinh quadrature on fixed nodes
  (:func:`_zolotarev_eval`, alpha != 1);
* ``alpha = 1/2``: the closed form in Fresnel integrals (:func:`_half_alpha_eval`, the
  formula scipy uses at alpha = 1/2), its power series below ``z = 0.007``.

The series are summed by a blocked Horner scheme (:func:`_polyval`: ~2 sqrt(K) numpy
calls for K terms; near alpha = 1 they need over 100 terms).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import fresnel, gammaln


# ------------------------------------------------------------ parameters of the law
def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"`alpha` must be a number in (0, 2], got {alpha!r}.") from None
    if not (0.0 < a <= 2.0):  # also rejects NaN
        raise ValueError(f"`alpha` must be a number in (0, 2], got {alpha!r}.")
    return a


def _check_gamma(gamma: float) -> float:
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"`gamma` (dispersion) must be a finite number > 0, got {gamma!r}.") from None
    if not (0.0 < g < math.inf):
        raise ValueError(f"`gamma` (dispersion) must be a finite number > 0, got {gamma!r}.")
    return g


def _kappa(alpha: float) -> float:
    return math.exp(gammaln(3.0 / alpha) - gammaln(1.0 / alpha))


# ------------------------------------------------------------- series coefficients
def _power_log_coefs(alpha: float, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """log|coef| of f (k = 0..kmax-1, times z^(2k)) and of f'/z (k = 0.., times z^(2k))."""
    k = np.arange(kmax + 2, dtype=np.float64)
    la = gammaln((2 * k + 1) / alpha) - gammaln(2 * k + 1)  # f: (-1)^k A_k z^2k
    # f'/z = sum_{k>=1} (-1)^k 2k A_k z^(2k-2) = sum_{j>=0} (-1)^(j+1) 2(j+1) A_{j+1} z^(2j)
    lb = np.log(2 * (k[:-1] + 1)) + la[1:]
    return la, lb


def _tail_coefs(alpha: float, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """log-magnitude bound and sign*|sin| of the tail series terms (k = 1..kmax+2) in w^k."""
    k = np.arange(1, kmax + 3, dtype=np.float64)
    lmag = gammaln(alpha * k + 1) - gammaln(k + 1)
    sgn_sin = (-1.0) ** (k + 1) * np.sin(k * np.pi * alpha / 2)
    return lmag, sgn_sin


# --------------------------------------------------------------------- evaluators
def _polyval(coefs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``sum_k coefs[k, j] * u**k`` for each column j of ``coefs`` (``(K, m)``): ``(m, len(u))``.

    Blocked Horner: with ``B ~ sqrt(K)``, the powers ``u**0 .. u**(B-1)`` (B - 1 passes),
    one matrix product giving every block's inner sum for every column, then Horner over
    the ~sqrt(K) blocks in ``u**B``. About 2 sqrt(K) numpy calls instead of 2K for plain
    Horner (the series here have up to ~130 terms on a few thousand points, so call
    overhead, not arithmetic, is what costs); rounding is of the same order (``u <= 1``).
    """
    n_terms, m = coefs.shape
    block = max(2, math.isqrt(n_terms))
    n_blocks = -(-n_terms // block)
    padded = np.zeros((n_blocks * block, m))
    padded[:n_terms] = coefs
    powers = np.empty((block, len(u)))
    powers[0] = 1.0
    powers[1] = u
    for i in range(2, block):
        np.multiply(powers[i - 1], u, out=powers[i])
    u_block = powers[block - 1] * u
    inner = padded.reshape(n_blocks, block, m).transpose(2, 0, 1).reshape(m * n_blocks, block) @ powers
    inner = inner.reshape(m, n_blocks, len(u))
    acc = inner[:, -1].copy()
    for j in range(n_blocks - 2, -1, -1):
        acc *= u_block
        acc += inner[:, j]
    return acc


def _power_eval(alpha: float, z: np.ndarray, zs: float, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Power series: returns (f, f'/z) at z (z <= zs)."""
    la, lb = _power_log_coefs(alpha, n_terms)
    k = np.arange(n_terms)
    lzs2 = 2 * math.log(zs)
    sign = (-1.0) ** k
    coefs = np.stack([sign * np.exp(la[:n_terms] + k * lzs2), -sign * np.exp(lb[:n_terms] + k * lzs2)], axis=1)
    f, fpz = _polyval(coefs, (z / zs) ** 2) / (math.pi * alpha)
    return f, fpz


def _tail_eval(alpha: float, z: np.ndarray, zs: float, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Tail series (z >= zs): returns (S_f, S_d) with f = S_f/(pi z), f' = -S_d/(pi z^2).

    Coefficients are pre-scaled by ``ws**k`` (``ws = zs**-alpha``) and evaluated in
    ``v = w/ws <= 1`` so that nothing overflows."""
    lmag, ss = _tail_coefs(alpha, n_terms)
    k = np.arange(1, n_terms + 1, dtype=np.float64)
    lws = -alpha * math.log(zs)
    cf = ss[:n_terms] * np.exp(lmag[:n_terms] + k * lws)
    v = (zs / z) ** alpha  # w/ws
    # sum_k c_k v^k = v * sum_k c_k v^(k-1)
    sf, sd = v * _polyval(np.stack([cf, cf * (alpha * k + 1)], axis=1), v)
    return sf, sd


def _tanh_sinh_nodes(step: float = 0.04, umax: float = 3.6):
    u = np.arange(-umax, umax + step / 2, step)
    s = 0.5 * np.pi * np.sinh(u)
    th = 0.5 * np.pi / (1.0 + np.exp(-2 * s))  # theta
    comp = 0.5 * np.pi / (1.0 + np.exp(2 * s))  # pi/2 - theta, accurate near pi/2
    w = step * (0.25 * np.pi) * (0.5 * np.pi * np.cosh(u)) / np.cosh(s) ** 2
    keep = (th > 0) & (comp > 0) & (w > 0)
    return th[keep], comp[keep], w[keep]


def _zolotarev_eval(alpha: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zolotarev integral (alpha != 1): returns (f, x*psi) at x > 0."""
    # V(theta) steepens like |alpha-1|^-1 as alpha -> 1: refine the node step with it
    # (measured: step 0.1*|alpha-1| gives ~1e-13 relative at alpha = 0.9, 0.95, 1.05, 1.1)
    step = min(0.04, max(0.001, 0.1 * abs(alpha - 1.0)))
    th, comp, w = _tanh_sinh_nodes(step, 3.6 if step >= 0.02 else 4.5)
    a = alpha / (alpha - 1.0)
    log_cos = np.log(np.sin(comp))
    log_v = a * (log_cos - np.log(np.sin(alpha * th))) + np.log(np.cos((alpha - 1.0) * th)) - log_cos
    ly = a * np.log(x)[:, None] + log_v[None, :]
    ly = np.minimum(ly, 700.0)
    y = np.exp(ly)
    e1 = np.exp(ly - y)  # y e^{-y}
    j1 = e1 @ w
    j2 = (e1 * y) @ w
    f = alpha * j1 / (math.pi * abs(alpha - 1.0) * x)
    xpsi = 1.0 / (alpha - 1.0) - a * j2 / j1
    return f, xpsi


#: alpha = 1/2: the closed form below holds to ~1e-12 relative for z > 0.02, loses digits
#: towards small z (cancellation, ~2e-10 in the score at z = 0.007), where the power
#: series (asymptotic at alpha < 1) takes over: 16 terms hold to ~7e-11 up to z = 0.007
#: (both measured against the closed form in 40-digit mpmath).
_HALF_SWITCH = 0.007
_HALF_TERMS = 16


def _half_alpha_eval(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha = 1/2 in closed form: returns (f, x*psi) at x > 0.

    With ``u = 1/sqrt(2 pi x)`` and the Fresnel integrals S, C (``scipy.special.fresnel``,
    argument ``pi s^2/2``), ``a = pi u^2/2 = 1/(4x)``::

        f(x) = G / sqrt(2 pi x^3),  G = sin(a) (1/2 - S(u)) + cos(a) (1/2 - C(u))
        x psi(x) = ((1 - pi u F) u / G - 3) / 2,  F = cos(a) (1/2 - S(u)) - sin(a) (1/2 - C(u))

    (G and F are the auxiliary Fresnel functions g(u), f(u); ``dg/du = pi u f - 1``.)
    The density is the one scipy's ``levy_stable`` uses at alpha = 1/2 (Hoffmann-Jorgensen).
    """
    u = 1.0 / np.sqrt(2 * math.pi * x)
    s_u, c_u = fresnel(u)
    a = 0.25 / x
    sin_a, cos_a = np.sin(a), np.cos(a)
    big_g = sin_a * (0.5 - s_u) + cos_a * (0.5 - c_u)
    big_f = cos_a * (0.5 - s_u) - sin_a * (0.5 - c_u)
    f = (2 * math.pi) * big_g * u ** 3  # = big_g / sqrt(2 pi x^3)
    xpsi = 0.5 * ((1.0 - math.pi * u * big_f) * u / big_g - 3.0)
    return f, xpsi
