"""The regularizers' formulas against closed forms, finite differences and known optima."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize

from hf_soft_diamond import attach_regularizer, build_regularizer
from hf_soft_diamond.regularizers import available_regularizers

torch.set_default_dtype(torch.float32)


def _params(seed=0, shapes=((7, 5), (3, 4, 2))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64) * 0.7) for s in shapes]


def test_registry_lists_the_core_methods():
    assert {"none", "l2", "l1", "lp", "sas", "pwd"} <= set(available_regularizers())


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("nope", {}, "`regularizer` must be one of"),
        ("l2", {"strength": -1.0}, "`reg_strength`"),
        ("l2", {"strength": float("nan")}, "`reg_strength`"),
        ("l2", {"mode": "sideways"}, "`reg_mode`"),
        ("sas", {"alpha": 0.0}, r"`sas_alpha` must be a finite number in \(0.0, 2.0\]"),
        ("sas", {"alpha": 2.5}, "`sas_alpha`"),
        ("sas", {"gamma": 0.0}, r"`sas_gamma` must be a finite number in \(0.0, inf\]"),
        ("sas", {"gamma": -2.0}, "`sas_gamma`"),
        ("pwd", {"p": 0.0}, "`lp_p`"),
        ("pwd", {"p": 2.5}, "`lp_p`"),
        ("pwd", {"mode": "coupled"}, "`reg_mode` for regularizer 'pwd'"),
        ("pwd", {"p": 0.8, "p_start": 0.5}, "`pwd_p_start`"),
        ("lp", {"p": 1.0, "eps": 0.0}, "`lp_eps`"),
    ],
)
def test_bad_hyperparameters_name_the_argument(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_regularizer(name, **kwargs)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        build_regularizer("l1", alpha=1.0)


def _coupled_grad(reg, params):
    grads = [torch.zeros_like(p) for p in params]
    reg.add_coupled_grad_(params, grads, lr=0.1)
    return grads


def _finite_difference(reg, params, i, idx, h=1e-5):
    w = params[i]
    old = w.data[idx].item()
    w.data[idx] = old + h
    up = reg.penalty(params).item()
    w.data[idx] = old - h
    down = reg.penalty(params).item()
    w.data[idx] = old
    return (up - down) / (2 * h)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("l2", {}),
        ("l1", {}),
        ("lp", {"p": 0.5, "eps": 1e-3}),
        ("lp", {"p": 1.5, "eps": 1e-3}),
        ("sas", {"alpha": 0.5, "gamma": 0.5}),
        ("sas", {"alpha": 1.5, "gamma": 0.5}),
        ("sas", {"alpha": 1.9, "gamma": 2.0}),
    ],
)
def test_coupled_gradient_is_the_derivative_of_the_penalty(name, kwargs):
    reg = build_regularizer(name, strength=0.3, fused_backend="eager", **kwargs)
    params = _params()
    grads = _coupled_grad(reg, params)
    rng = np.random.default_rng(1)
    for i, w in enumerate(params):
        for _ in range(5):
            idx = tuple(int(rng.integers(0, s)) for s in w.shape)
            fd = _finite_difference(reg, params, i, idx)
            assert grads[i][idx].item() == pytest.approx(fd, rel=2e-4, abs=1e-7)


def test_l2_and_l1_closed_forms():
    params = _params()
    g2 = _coupled_grad(build_regularizer("l2", strength=0.25, fused_backend="eager"), params)
    g1 = _coupled_grad(build_regularizer("l1", strength=0.25, fused_backend="eager"), params)
    for w, a, b in zip(params, g2, g1):
        torch.testing.assert_close(a, 0.25 * w.detach())
        torch.testing.assert_close(b, 0.25 * torch.sign(w.detach()))
    pen = build_regularizer("l2", strength=0.25).penalty(params).item()
    assert pen == pytest.approx(0.125 * sum(float((w.detach() ** 2).sum()) for w in params))


def test_sas_at_alpha_2_is_ridge_and_at_alpha_1_is_cauchy():
    params = _params()
    gamma = 0.7
    # alpha=2: Gaussian with variance 2*gamma, so -psi(w) = w / (2 gamma)
    g = _coupled_grad(build_regularizer("sas", strength=1.0, alpha=2.0, gamma=gamma, fused_backend="eager"), params)
    for w, gi in zip(params, g):
        torch.testing.assert_close(gi, w.detach() / (2 * gamma), rtol=1e-5, atol=1e-7)
    # alpha=1: Cauchy with scale gamma, so -psi(w) = 2w / (gamma^2 + w^2)
    g = _coupled_grad(build_regularizer("sas", strength=1.0, alpha=1.0, gamma=gamma, fused_backend="eager"), params)
    for w, gi in zip(params, g):
        wd = w.detach()
        torch.testing.assert_close(gi, 2 * wd / (gamma**2 + wd**2), rtol=1e-5, atol=1e-7)


def test_sas_penalty_is_zero_at_zero_and_grows_with_magnitude():
    reg = build_regularizer("sas", strength=2.0, alpha=0.5, gamma=0.5)
    assert reg.penalty([torch.zeros(10)]).item() == pytest.approx(0.0, abs=1e-9)
    values = [reg.penalty([torch.full((1,), v)]).item() for v in (0.01, 0.1, 1.0, 10.0)]
    assert all(b > a > 0 or (a == 0 and b > 0) for a, b in zip(values, values[1:]))


# --------------------------------------------------------------- optimizer steps

def _run_sgd(reg, params, grads, lr, steps=1, momentum=0.0):
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    attach_regularizer(opt, reg, params)
    for _ in range(steps):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return opt


def test_pwd_one_sgd_step_by_hand():
    p_norm, lam, lr = 0.8, 0.05, 0.1
    w0 = torch.tensor([0.5, -0.02, 1.3, 0.0], dtype=torch.float64)
    g = torch.tensor([0.1, 0.3, -0.2, 0.4], dtype=torch.float64)
    param = torch.nn.Parameter(w0.clone())
    _run_sgd(build_regularizer("pwd", strength=lam, p=p_norm, fused_backend="eager"), [param], [g], lr)
    expected = []
    for wi, gi in zip(w0.tolist(), g.tolist()):
        x = abs(wi) ** (2 - p_norm)
        expected.append((wi - lr * gi) * x / (x + p_norm * lr * lam))  # docs/methods.md §5.2, SGD form
    assert param.detach().tolist() == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert param.detach()[3].item() == 0.0  # zero is absorbing


def test_pwd_one_adam_step_by_hand():
    p_norm, lam, lr, eps = 1.5, 0.1, 0.01, 1e-8
    w0 = torch.tensor([0.5, -0.02, 1.3], dtype=torch.float64)
    g = torch.tensor([0.1, 0.3, -0.2], dtype=torch.float64)
    param = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([param], lr=lr, eps=eps)
    attach_regularizer(opt, build_regularizer("pwd", strength=lam, p=p_norm, fused_backend="eager"), [param])
    param.grad = g.clone()
    opt.step()
    # first Adam step: m_hat = g, v_hat = g^2 -> w_hat = w - lr * g / (|g| + eps)
    expected = []
    for wi, gi in zip(w0.tolist(), g.tolist()):
        w_hat = wi - lr * gi / (abs(gi) + eps)
        x = abs(wi) ** (2 - p_norm)
        expected.append(w_hat * x / (x + p_norm * lr * lam))
    assert param.detach().tolist() == pytest.approx(expected, rel=1e-9)


def test_pwd_elastic_net_form():
    lam, lam2, lr, p_norm = 0.05, 0.2, 0.1, 1.0
    w0 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    g = torch.tensor([0.1, -0.2], dtype=torch.float64)
    param = torch.nn.Parameter(w0.clone())
    reg = build_regularizer("pwd", strength=lam, p=p_norm, l2_strength=lam2, fused_backend="eager")
    _run_sgd(reg, [param], [g], lr)
    x = w0.abs() ** (2 - p_norm)
    expected = x * (w0 - lr * g) / (x * (1 + lr * lam2) + lr * p_norm * lam)
    torch.testing.assert_close(param.detach(), expected)


def test_pwd_lr_zero_is_identity_even_at_zero_weights():
    param = torch.nn.Parameter(torch.tensor([0.0, 0.5], dtype=torch.float64))
    _run_sgd(build_regularizer("pwd", strength=1.0, p=0.5, fused_backend="eager"), [param],
             [torch.zeros(2, dtype=torch.float64)], lr=0.0)
    assert param.detach().tolist() == [0.0, 0.5]


def test_pwd_p_schedule_and_state_roundtrip():
    reg = build_regularizer("pwd", strength=0.1, p=0.6, p_start=2.0, p_schedule_steps=10, fused_backend="eager")
    params = _params()
    opt = _run_sgd(reg, params, [torch.zeros_like(p) for p in params], lr=0.01, steps=4)
    assert reg.step == 4
    assert reg.current_p() == pytest.approx(2.0 + (0.6 - 2.0) * 0.4)
    state = opt.state_dict()
    reg2 = build_regularizer("pwd", strength=0.1, p=0.6, p_start=2.0, p_schedule_steps=10, fused_backend="eager")
    params2 = _params()
    opt2 = torch.optim.SGD(params2, lr=0.01)
    attach_regularizer(opt2, reg2, params2)
    opt2.load_state_dict(state)
    assert reg2.step == 4
    reg2.step = 25
    assert reg2.current_p() == pytest.approx(0.6)


def test_l2_decoupled_equals_torch_adamw():
    lam, lr = 0.05, 0.01
    a = _params(3)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a = torch.optim.Adam(a, lr=lr)
    attach_regularizer(opt_a, build_regularizer("l2", strength=lam, mode="decoupled", fused_backend="eager"), a)
    opt_b = torch.optim.AdamW(b, lr=lr, weight_decay=lam)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_l1_prox_step_by_hand_gives_exact_zeros():
    lam, lr = 0.5, 0.1
    w0 = torch.tensor([0.3, -0.04, 0.01, -0.9], dtype=torch.float64)
    g = torch.tensor([0.0, 0.0, 0.2, -0.1], dtype=torch.float64)
    param = torch.nn.Parameter(w0.clone())
    _run_sgd(build_regularizer("l1", strength=lam, mode="decoupled", fused_backend="eager"), [param], [g], lr)
    w_hat = (w0 - lr * g).tolist()
    expected = [math.copysign(max(abs(v) - lr * lam, 0.0), v) for v in w_hat]
    assert param.detach().tolist() == pytest.approx(expected, abs=1e-15)
    assert (param.detach() == 0).sum().item() == 2


# ------------------------------------------------- convex toy problems with known optima

def _minimize_quadratic(reg_name, b, lr, steps, **kwargs):
    """Minimise 1/2 ||w - b||^2 + R(w) by gradient steps with the regularizer hooked in."""
    param = torch.nn.Parameter(torch.zeros_like(b) + 0.1)
    opt = torch.optim.SGD([param], lr=lr)
    attach_regularizer(opt, build_regularizer(reg_name, fused_backend="eager", **kwargs), [param])
    for _ in range(steps):
        param.grad = (param.detach() - b).clone()
        opt.step()
    return param.detach()


B = torch.tensor([1.5, -0.8, 0.3, -0.05, 0.0, 2.0], dtype=torch.float64)


def test_l1_prox_solves_the_lasso():
    w = _minimize_quadratic("l1", B, lr=0.2, steps=400, strength=0.4, mode="decoupled")
    torch.testing.assert_close(w, torch.nn.functional.softshrink(B, 0.4), rtol=0, atol=1e-10)


def test_pwd_at_p1_reaches_the_lasso_solution():
    # fixed points of pWD are stationary points of L + lambda ||w||_p^p (docs/methods.md §5.6)
    w = _minimize_quadratic("pwd", B, lr=0.05, steps=3000, strength=0.4, p=1.0)
    torch.testing.assert_close(w, torch.nn.functional.softshrink(B, 0.4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("p_norm", [1.5, 0.7])
def test_pwd_reaches_the_lp_stationary_point(p_norm):
    lam = 0.3
    w = _minimize_quadratic("pwd", B, lr=0.05, steps=4000, strength=lam, p=p_norm)
    for wi, bi in zip(w.tolist(), B.tolist()):
        # stationary points of 1/2 (w-b)^2 + lam |w|^p with the sign of b
        f = lambda v: v - abs(bi) + lam * p_norm * v ** (p_norm - 1)  # noqa: E731
        candidates = [0.0]
        if abs(bi) > 0 and f(abs(bi)) > 0:
            grid = np.linspace(1e-9, abs(bi), 2001)
            vals = [f(v) for v in grid]
            for lo, hi, flo, fhi in zip(grid, grid[1:], vals, vals[1:]):
                if flo * fhi < 0:
                    candidates.append(optimize.brentq(f, lo, hi, xtol=1e-14))
        assert any(abs(abs(wi) - c) < 1e-5 for c in candidates), (wi, bi, candidates)
        if p_norm > 1 and abs(bi) > 0:  # convex: the unique minimiser
            assert abs(wi) == pytest.approx(max(candidates), abs=1e-5)


def test_lp_coupled_solves_the_smoothed_problem():
    lam, p_norm, eps = 0.3, 1.5, 1e-3
    w = _minimize_quadratic("lp", B, lr=0.1, steps=2000, strength=lam, p=p_norm, eps=eps)
    for wi, bi in zip(w.tolist(), B.tolist()):
        if bi == 0:
            assert abs(wi) < 1e-6
            continue
        f = lambda v: v - abs(bi) + lam * p_norm * v * (v * v + eps * eps) ** (p_norm / 2 - 1)  # noqa: E731
        root = optimize.brentq(f, 0.0, abs(bi)) if f(0.0) < 0 else 0.0
        assert abs(wi) == pytest.approx(root, abs=1e-5)


def test_sas_decoupled_moves_weights_by_lr_times_score():
    from hf_soft_diamond import sas_score

    lam, lr = 0.2, 0.05
    w0 = torch.tensor([0.3, -0.04, 1.5, -3.0], dtype=torch.float64)
    param = torch.nn.Parameter(w0.clone())
    reg = build_regularizer("sas", strength=lam, mode="decoupled", alpha=1.5, gamma=0.5, fused_backend="eager")
    _run_sgd(reg, [param], [torch.zeros_like(w0)], lr)
    expected = w0 + lr * lam * sas_score(w0, 1.5, 0.5)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-9)
    assert torch.all(param.detach().abs() < w0.abs())  # the prior pulls towards 0


@pytest.mark.parametrize("exponent", [0.2, 0.7, 1.2, 1.99])
def test_float32_polynomial_power_matches_float64_pow(exponent):
    """The bit-level power of the compiled pWD kernels against float64 pow: every binade of
    float32 (subnormal inputs and results included; results that pow rounds to 0 are 0),
    zeros exactly 0, no inf/NaN out of inf/NaN inputs."""
    from hf_soft_diamond.priors.pwd import abs_pow_float32_polynomial

    gen = torch.Generator().manual_seed(0)
    a = torch.cat([torch.logspace(-44.9, 38.5, 400_001), torch.rand(10_000, generator=gen) * 0.1])
    got = abs_pow_float32_polynomial(a, exponent).double()
    exact = a.double() ** exponent
    in_range = (exact >= 2.0**-126) & (exact <= 2.0**127.49)  # normal results (clamped above)
    rel = (got[in_range] / exact[in_range] - 1).abs()
    # float32 rounding of y = e*log2(a) (|y| up to 127) limits any float32 power: eager
    # exp2(e*log2 a) reaches 8.3e-8*|y| here; allowed: 1e-6 + 1e-7*|y|
    bound = 1e-6 + 1e-7 * (exponent * a[in_range].double().log2()).abs()
    assert torch.all(rel <= bound), (a[in_range][(rel - bound).argmax()].item(), rel.max().item())
    # below float32's normal range: subnormal results as IEEE rounds them (one subnormal step
    # of 2**-149 on top of the relative bound), and exactly 0 below half the smallest subnormal
    ylog = (exponent * a.double().log2()).abs()
    sub = (exact >= 2.0**-149) & (exact < 2.0**-126)
    assert sub.any() or exponent < 1
    err = (got[sub] - exact[sub]).abs()
    assert torch.all(err <= (1e-6 + 1e-7 * ylog[sub]) * exact[sub] + 2.0**-149)
    below = exact < 2.0**-150
    assert torch.all(got[below] == 0.0)
    specials = torch.tensor([0.0, float("inf"), float("nan")])
    out = abs_pow_float32_polynomial(specials, exponent)
    assert out[0] == 0.0 and torch.isfinite(out).all()


@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0, 1.2, 1.5, 2.0])
def test_pwd_fast_powers_equal_pow(exponent):
    """The fixed-p fast path (|w|, sqrt, ...) against torch.pow, zeros and signs included."""
    from hf_soft_diamond.priors.pwd import abs_pow

    w = torch.cat([torch.randn(1000, dtype=torch.float64) * 3, torch.tensor([0.0, -0.0, -2.0, 1e-30])])
    exact = w.abs().pow(exponent)  # 0^0 = 1
    # exact for the special exponents; exp2(e log2|w|) otherwise (rounding grows with |e log2 w|)
    rtol = 1e-15 if exponent in (0.0, 0.5, 1.0, 1.5, 2.0) else 1e-13
    torch.testing.assert_close(abs_pow(w, exponent), exact, rtol=rtol, atol=0)
    torch.testing.assert_close(abs_pow(w, torch.tensor(exponent, dtype=torch.float64)), exact, rtol=1e-13, atol=0)
    # float32 weights (what the kernels see), down to 1e-30: within 1e-5 of float64 pow (e*log2|w| ~ 120 there)
    w32 = torch.cat([torch.randn(10_000) * 0.05, torch.logspace(-30, 2, 300), torch.zeros(2)])
    torch.testing.assert_close(abs_pow(w32, exponent).double(), w32.double().abs().pow(exponent), rtol=1e-5,
                               atol=1e-37)  # below float32's normal range (1.2e-38) only atol


# ------------------------------------------------------------------ select-free kernel forms
def _crossing_reference(w_hat: torch.Tensor, pull: torch.Tensor) -> torch.Tensor:
    """A second implementation of 'w_hat + pull, 0 where that crosses zero', with comparisons."""
    moved = w_hat + pull
    crossed = ((moved > 0) & (w_hat < 0)) | ((moved < 0) & (w_hat > 0))
    return torch.where(crossed, torch.zeros_like(moved), moved)


@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_sas_decoupled_pull_equals_the_comparison_form_bit_for_bit(backend):
    from hf_soft_diamond.fused import TensorwiseKernel, compile_available
    from hf_soft_diamond.regularizers.sas import _sas_pull

    if backend == "compile" and not compile_available("cpu"):
        pytest.skip("no C++ compiler for inductor")
    reg = build_regularizer("sas", strength=2.0, mode="decoupled", alpha=0.5, gamma=0.1)
    torch.manual_seed(0)
    w = torch.cat([torch.randn(4000) * 0.05, torch.randn(1000) * 1e-4, torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    coef, inv_c = 3e-3 * 2.0 / reg.scale, 1.0 / reg.scale  # large enough that many weights would cross zero
    signed_pull = reg.table.score_signed(w, torch.tensor(inv_c), fast=True, out_scale=torch.tensor(coef))
    expected = _crossing_reference(w, signed_pull)
    out = w.clone()

    def apply(x: torch.Tensor, c: torch.Tensor, i: torch.Tensor) -> None:
        x.copy_(_sas_pull(x, x, c, i, table=reg.table, fast=True))

    TensorwiseKernel(apply, backend)([[out]], [coef, inv_c])
    crossed = (expected == 0) & (w != 0)
    assert crossed.sum() > 100  # the case the clamp is for does occur
    if backend == "eager":
        assert torch.equal(out, expected)
    else:  # compiled: FMA contraction may round the rational once instead of twice (relative to the weight)
        assert bool(((out - expected).abs() <= 2e-6 * w.abs()).all())
        assert torch.equal(torch.signbit(out[out != 0]), torch.signbit(w[out != 0]))
    nan = torch.tensor([float("nan"), 0.5])
    TensorwiseKernel(apply, backend)([[nan]], [coef, inv_c])
    assert torch.isnan(nan[0])  # a NaN stays NaN for the non-finite guard


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flush_subnormal_zeroes_below_tiny_and_keeps_everything_above_2_to_the_minus_101(dtype):
    from hf_soft_diamond.priors.pwd import flush_subnormal

    tiny = torch.finfo(dtype).tiny
    mantissa = 1 - round(math.log2(torch.finfo(dtype).eps))  # significand bits: 24, 53
    exact_from = tiny * 2.0 ** (mantissa + 1)
    x = torch.tensor([0.0, tiny / 2, -tiny / 4, tiny * 0.999, exact_from, -exact_from * 3, 1e-3, -0.7, 5.0,
                      float("inf"), float("nan")], dtype=dtype)
    out = flush_subnormal(x)
    assert torch.equal(out[:4], torch.zeros(4, dtype=dtype))
    assert torch.equal(out[4:10], x[4:10])
    assert torch.isnan(out[10])
