"""Spectral metrics, penalties and regularizers (docs/methods.md §6)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hf_soft_diamond import attach_regularizer, build_regularizer
from hf_soft_diamond.priors import spectral as sp
from hf_soft_diamond.regularizers.spectral import (
    FrechetPriorRegularizer,
    PowerLawPriorRegularizer,
    StableRankRegularizer,
    WeightedAlphaRegularizer,
)

# name, kwargs, exact per-layer function of (lam, valid)
PENALTIES = [
    ("weighted_alpha", {}, lambda lam, v: sp.weighted_alpha_penalty(lam, v)),
    ("stable_rank", {}, lambda lam, v: sp.stable_rank_penalty(lam, v)),
    ("powerlaw_prior", {"a": 1.5, "lambda_min": 0.0}, lambda lam, v: sp.powerlaw_penalty(lam, v, 1.5, 0.0)),
    ("frechet_prior", {"a": 2.0, "s": 3.0, "m": 0.5},
     lambda lam, v: sp.frechet_penalty_from_spectrum(lam, v, 2.0, 3.0, 0.5)),
]
NAMES = [p[0] for p in PENALTIES]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _numpy_lam(w: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(w, compute_uv=False) ** 2)


def _numpy_hill(lam: np.ndarray, k: int | None = None) -> float:
    lam = np.sort(lam)
    n = len(lam)
    k = n // 2 if k is None else k
    ref = lam[n - k - 1]  # lambda_(n-k), 1-based
    return 1.0 + k / sum(math.log(lam[n - i] / ref) for i in range(1, k + 1))  # lambda_(n-i+1)


def _exact_value(name: str, kw: dict, w: torch.Tensor, conv_mode: str = "flatten") -> float:
    reg = build_regularizer(name, strength=1.0, conv_mode=conv_mode, **kw)
    return reg.layer_values([w], exact=True)[0]


def _exact_grad(name: str, kw: dict, w: torch.Tensor, conv_mode: str = "flatten", method: str = "eigh"):
    reg = build_regularizer(name, strength=1.0, refresh_every=1, conv_mode=conv_mode, method=method, **kw)
    g = torch.zeros_like(w)
    reg.add_coupled_grad_([w], [g], 0.0)
    return g


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("shape", [(40, 25), (25, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_rank_and_lambda_max_match_numpy(shape, dtype):
    w = _rand(*shape, seed=1, dtype=dtype)
    lam_np = _numpy_lam(w.double().numpy())
    lam = sp.eigenvalues(w)
    assert lam.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(lam.double().numpy(), lam_np, rtol=rtol * 10, atol=rtol * lam_np.max())
    m = sp.spectrum_metrics(w)
    assert m["lambda_max"] == pytest.approx(lam_np.max(), rel=rtol)
    assert m["stable_rank"] == pytest.approx(lam_np.sum() / lam_np.max(), rel=rtol)
    assert m["n"] == 25


@pytest.mark.parametrize("k", [None, 5])
def test_hill_alpha_matches_numpy(k):
    w = _rand(60, 30, seed=2)
    lam_np = _numpy_lam(w.numpy())
    m = sp.spectrum_metrics(w, k=k)
    assert m["alpha"] == pytest.approx(_numpy_hill(lam_np, k), rel=1e-10)
    assert m["weighted_alpha"] == pytest.approx(_numpy_hill(lam_np, k) * math.log10(lam_np.max()), rel=1e-10)


@pytest.mark.parametrize("a", [2.5, 4.0])
def test_planted_power_law_spectrum_recovers_exponent(a):
    # ESD density p(lambda) ~ lambda^(-a) on [1, inf): survival lambda^-(a-1), so
    # lambda = U^(-1/(a-1)); W = Q1 diag(sqrt(lambda)) Q2^T.
    rng = np.random.default_rng(0)
    N, M = 1000, 800
    lam = rng.uniform(size=M) ** (-1.0 / (a - 1.0))
    q1, _ = np.linalg.qr(rng.standard_normal((N, M)))
    q2, _ = np.linalg.qr(rng.standard_normal((M, M)))
    w = torch.from_numpy((q1 * np.sqrt(lam)) @ q2.T)
    est = sp.spectrum_metrics(w)["alpha"]
    assert est == pytest.approx(a, abs=0.3)
    assert sp.spectrum_metrics(w.float(), method="eigh")["alpha"] == pytest.approx(est, rel=1e-3)


def test_power_iteration_and_surrogate():
    w = _rand(50, 30, seed=3)
    s_np = np.linalg.svd(w.numpy(), compute_uv=False)[0]
    sigma, u, v = sp.power_iteration(w, iters=5, tol=1e-12)
    assert float(sigma) == pytest.approx(s_np, rel=1e-8)
    # warm start: one iteration from converged vectors stays converged
    sigma2, _, _ = sp.power_iteration(w, v, iters=1)
    assert float(sigma2) == pytest.approx(s_np, rel=1e-8)
    wr = w.clone().requires_grad_(True)
    s = sp.sigma_max_surrogate(wr, u, v)
    assert float(s.detach()) == pytest.approx(float(sigma), rel=1e-10)
    (g,) = torch.autograd.grad(s, wr)
    torch.testing.assert_close(g, torch.outer(u, v))


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name,kw,fn", PENALTIES, ids=NAMES)
@pytest.mark.parametrize("method", ["eigh", "svd"])
def test_gradient_matches_finite_differences(name, kw, fn, method):
    w = _rand(12, 8, seed=4)
    g = _exact_grad(name, kw, w, method=method)
    # autograd through svdvals gives the same gradient
    wr = w.clone().requires_grad_(True)
    lam, valid = sp.batch_eigenvalues(sp.layer_matrices(wr).unsqueeze(0))
    (ga,) = torch.autograd.grad(fn(lam, valid).sum(), wr)
    torch.testing.assert_close(g, ga, rtol=1e-8, atol=1e-10)
    h = 1e-6
    for seed in range(3):
        d = _rand(12, 8, seed=100 + seed)
        fd = (_exact_value(name, kw, w + h * d) - _exact_value(name, kw, w - h * d)) / (2 * h)
        assert float((g * d).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_frechet_below_location_is_finite_and_pushes_up():
    w = _rand(10, 6, seed=5) * 0.1
    lmax = sp.spectrum_metrics(w)["lambda_max"]
    kw = {"a": 2.0, "s": 1.0, "m": lmax + 1.0}  # lambda_max <= m
    value = _exact_value("frechet_prior", kw, w)
    g = _exact_grad("frechet_prior", kw, w)
    assert math.isfinite(value) and torch.isfinite(g).all()
    w2 = w - 1e-3 * g / g.norm()
    assert sp.spectrum_metrics(w2)["lambda_max"] > lmax  # descent raises lambda_max towards the mode


@pytest.mark.parametrize("name,kw,fn", PENALTIES, ids=NAMES)
def test_penalty_decreases_after_small_gradient_step(name, kw, fn):
    w = _rand(64, 48, seed=6, dtype=torch.float32)
    before = _exact_value(name, kw, w)
    g = _exact_grad(name, kw, w)
    w2 = w - 1e-3 * g / g.norm() * w.norm()
    assert _exact_value(name, kw, w2) < before


@pytest.mark.parametrize("name,kw,fn", PENALTIES, ids=NAMES)
def test_refresh_every_surrogate(name, kw, fn):
    torch.manual_seed(0)
    p = nn.Parameter(_rand(48, 32, seed=7, dtype=torch.float32))
    reg = build_regularizer(name, strength=1.0, refresh_every=4, **kw)
    opt = torch.optim.SGD([p], lr=1e-3)
    attach_regularizer(opt, reg, [("w", p)])
    values, refreshed = [], []
    for step in range(9):
        p.grad = torch.zeros_like(p)
        before = reg.refresh_count
        with torch.no_grad():
            exact_g = _exact_grad(name, kw, p.detach().clone())
        opt.step()  # adds the surrogate gradient, then steps
        refreshed.append(reg.refresh_count > before)
        sur_g = p.grad
        cos = float((sur_g * exact_g).sum() / (sur_g.norm() * exact_g.norm()))
        if step % 4 == 0:  # right after a refresh: the exact gradient
            torch.testing.assert_close(sur_g, exact_g, rtol=1e-3, atol=1e-4 * float(exact_g.abs().max()))
        else:
            assert cos > 0.98
        values.append(_exact_value(name, kw, p.detach()))
    assert refreshed == [True, False, False, False, True, False, False, False, True]
    assert all(b < a for a, b in zip(values, values[1:]))  # the penalty keeps decreasing
    est = reg.layer_values([p])[0]
    assert est == pytest.approx(values[-1], rel=1e-2)


# ----------------------------------------------------------------------------- variants
@pytest.mark.parametrize("cls", [WeightedAlphaRegularizer, StableRankRegularizer])
def test_epoch_decay_power_and_exponential(cls):
    reg = cls(strength=1.0, decay="power", decay_k=1.0, decay_epochs=2, threshold=0.3)
    expected = {0: 1.0, 1.9: 1.0, 2: 1.0, 3.5: 1.0, 4: 0.5, 6: 1 / 3, 8: 0.0, 20: 0.0}
    for epoch, d in expected.items():
        reg.set_epoch(epoch)
        assert reg.decay_factor() == pytest.approx(d)
    reg = cls(strength=1.0, decay="exponential", decay_k=math.log(2), decay_epochs=1, threshold=0.2,
              steps_per_epoch=10)
    for step, d in {0: 1.0, 9: 1.0, 10: 0.5, 25: 0.25, 30: 0.0}.items():
        reg.step = step  # the hook's counter drives the epoch until set_epoch is called
        assert reg.decay_factor() == pytest.approx(d)
    reg.set_epoch(1.0)
    assert reg.decay_factor() == pytest.approx(0.5)
    assert reg.state_dict()["epoch"] == 1.0


def test_epoch_decay_scales_and_switches_off_the_gradient():
    w = _rand(20, 10, seed=8)
    full = _exact_grad("stable_rank", {}, w)
    reg = StableRankRegularizer(strength=1.0, refresh_every=1, decay="power", decay_k=1.0, threshold=0.3)
    reg.set_epoch(2)  # d = 1/2
    g = torch.zeros_like(w)
    reg.add_coupled_grad_([w], [g], 0.0)
    torch.testing.assert_close(g, 0.5 * full)
    assert float(reg.penalty([w])) == pytest.approx(0.5 * _exact_value("stable_rank", {}, w))
    reg.set_epoch(4)  # d = 1/4 <= 0.3: off, and no spectral work
    count = reg.refresh_count
    g.zero_()
    reg.add_coupled_grad_([w], [g], 0.0)
    assert not g.any() and reg.refresh_count == count and float(reg.penalty([w])) == 0.0


@pytest.mark.parametrize("scope", ["layer", "total"])
def test_lower_threshold(scope):
    low = _rand(30, 20, seed=9) * torch.linspace(0.01, 1.0, 20, dtype=torch.float64)  # small stable rank
    high = _rand(30, 20, seed=10)  # stable rank ~ 10
    s_low, s_high = _exact_value("stable_rank", {}, low), _exact_value("stable_rank", {}, high)
    t = (s_low + s_high) / 2 if scope == "layer" else s_low + s_high + 1.0
    reg = StableRankRegularizer(strength=1.0, refresh_every=1, lower_threshold=t, threshold_scope=scope)
    grads = [torch.zeros_like(low), torch.zeros_like(high)]
    reg.add_coupled_grad_([low, high], grads, 0.0)
    if scope == "layer":
        assert not grads[0].any() and grads[1].any()
        assert float(reg.penalty_terms([low, high])) == pytest.approx(s_high, rel=1e-6)
    else:  # sum below t: everything off
        assert not grads[0].any() and not grads[1].any()
        assert float(reg.penalty_terms([low, high])) == 0.0


# ----------------------------------------------------------------------------- batching, conv
@pytest.mark.parametrize("name,kw,fn", PENALTIES, ids=NAMES)
def test_batching_matches_per_matrix(name, kw, fn):
    ws = [_rand(24, 16, seed=20 + i) for i in range(3)] + [_rand(16, 24, seed=30)]
    reg = build_regularizer(name, strength=1.0, refresh_every=1, **kw)
    grads = [torch.zeros_like(w) for w in ws]
    reg.add_coupled_grad_(ws, grads, 0.0)
    for w, g in zip(ws, grads):
        torch.testing.assert_close(g, _exact_grad(name, kw, w), rtol=1e-9, atol=1e-12)
    assert reg.layer_values(ws, exact=True) == pytest.approx([_exact_value(name, kw, w) for w in ws], rel=1e-10)
    lam_b, valid_b = sp.batch_eigenvalues(torch.stack([sp.layer_matrices(w) for w in ws[:3]]))
    for i, w in enumerate(ws[:3]):
        torch.testing.assert_close(lam_b[i][valid_b[i]], sp.eigenvalues(w))


def test_conv_modes():
    w = _rand(8, 3, 3, 3, seed=11)
    flat = sp.eigenvalues(w, "flatten")
    np.testing.assert_allclose(flat.numpy(), _numpy_lam(w.reshape(8, 27).numpy()), rtol=1e-10)
    pooled = sp.eigenvalues(w, "per_position")
    per = np.sort(np.concatenate([_numpy_lam(w[:, :, i, j].numpy()) for i in range(3) for j in range(3)]))
    np.testing.assert_allclose(pooled.numpy(), per, rtol=1e-10)
    for mode in ("flatten", "per_position"):
        lay = sp.layer_layout(w.shape, mode)
        torch.testing.assert_close(sp.from_matrices(sp.matrix_view(w, lay), lay), w)
    for name, kw, _fn in PENALTIES:  # per-position gradients vs finite differences
        g = _exact_grad(name, kw, w, conv_mode="per_position")
        d = _rand(8, 3, 3, 3, seed=12)
        h = 1e-6
        fd = (_exact_value(name, kw, w + h * d, "per_position")
              - _exact_value(name, kw, w - h * d, "per_position")) / (2 * h)
        assert float((g * d).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-8), name


# ----------------------------------------------------------------------------- degenerate, dtypes
@pytest.mark.parametrize("kind", ["identity", "repeated", "rank_deficient", "zero"])
@pytest.mark.parametrize("name,kw,fn", PENALTIES, ids=NAMES)
def test_degenerate_spectra_stay_finite(kind, name, kw, fn):
    if kind == "identity":
        w = torch.eye(16, dtype=torch.float64)
    elif kind == "repeated":
        q1, _ = torch.linalg.qr(_rand(20, 6, seed=13))
        q2, _ = torch.linalg.qr(_rand(6, 6, seed=14))
        w = q1 @ torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, 1.0], dtype=torch.float64)) @ q2.T
    elif kind == "rank_deficient":
        w = _rand(20, 2, seed=15) @ _rand(2, 10, seed=16)
    else:
        w = torch.zeros(10, 8, dtype=torch.float64)
    for method in ("eigh", "svd"):
        g = _exact_grad(name, kw, w, method=method)
        assert torch.isfinite(g).all(), method
    assert math.isfinite(_exact_value(name, kw, w))
    wr = w.clone().requires_grad_(True)
    lam, valid = sp.batch_eigenvalues(sp.layer_matrices(wr).unsqueeze(0))
    (ga,) = torch.autograd.grad(fn(lam, valid).sum(), wr)
    assert torch.isfinite(ga).all()
    m = sp.spectrum_metrics(w)
    assert all(math.isfinite(v) for v in m.values())
    if kind == "identity":
        assert m["alpha"] == pytest.approx(1 + 1 / sp.HILL_MIN_MEAN_LOG)
        assert m["stable_rank"] == pytest.approx(16.0)
    if kind == "rank_deficient":
        assert m["n"] == 2  # the numerically zero eigenvalues are dropped


def test_bf16_parameters_use_float32_spectra():
    w32 = _rand(40, 24, seed=17, dtype=torch.float32)
    w16 = w32.to(torch.bfloat16)
    assert sp.layer_matrices(w16).dtype == torch.float32
    for name, kw, _ in PENALTIES:
        reg = build_regularizer(name, strength=1.0, refresh_every=2, **kw)
        g = torch.zeros_like(w16)
        reg.add_coupled_grad_([w16], [g], 0.0)
        reg.step = 1
        reg.add_coupled_grad_([w16], [g], 0.0)  # surrogate step
        ref = 2 * _exact_grad(name, kw, w16.float())
        assert g.dtype == torch.bfloat16
        assert float((g.float() - ref).norm() / ref.norm()) < 0.05, name


# ----------------------------------------------------------------------------- API
@pytest.mark.parametrize("name,kwargs,arg", [
    ("weighted_alpha", {"refresh_every": 0}, "spectral_refresh_every"),
    ("weighted_alpha", {"hill_k": -1}, "spectral_hill_k"),
    ("weighted_alpha", {"hill_k": 2.5}, "spectral_hill_k"),
    ("stable_rank", {"decay": "linear"}, "spectral_decay"),
    ("stable_rank", {"decay_k": -1.0}, "spectral_decay_k"),
    ("stable_rank", {"decay_epochs": 0}, "spectral_decay_epochs"),
    ("stable_rank", {"threshold": -0.1}, "spectral_threshold"),
    ("stable_rank", {"lower_threshold": float("nan")}, "spectral_lower_threshold"),
    ("stable_rank", {"conv_mode": "fft"}, "spectral_conv_mode"),
    ("stable_rank", {"method": "qr"}, "spectral_method"),
    ("stable_rank", {"steps_per_epoch": -1}, "spectral_steps_per_epoch"),
    ("powerlaw_prior", {"a": 0.0}, "powerlaw_a"),
    ("powerlaw_prior", {"lambda_min": -1.0}, "powerlaw_lambda_min"),
    ("frechet_prior", {"a": -1.0}, "frechet_a"),
    ("frechet_prior", {"s": 0.0}, "frechet_s"),
    ("frechet_prior", {"m": float("inf")}, "frechet_m"),
    ("frechet_prior", {"mode": "sideways"}, "reg_mode"),
])
def test_validation_names_the_argument(name, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        build_regularizer(name, strength=1.0, **kwargs)


def test_registry_hparams_and_state_roundtrip():
    reg = build_regularizer("powerlaw_prior", strength=1e-3, a=2.0, lambda_min=0.1, refresh_every=7)
    assert isinstance(reg, PowerLawPriorRegularizer) and reg.modes == ("coupled", "decoupled")
    hp = reg.hparams()
    assert hp["regularizer"] == "powerlaw_prior" and hp["spectral_refresh_every"] == 7 and hp["powerlaw_a"] == 2.0
    assert isinstance(build_regularizer("frechet_prior"), FrechetPriorRegularizer)
    p = nn.Parameter(_rand(12, 8, seed=18, dtype=torch.float32))
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.0)
    attach_regularizer(opt, reg, [("w", p)])
    for _ in range(3):
        p.grad = torch.zeros_like(p)
        opt.step()
    reg.set_epoch(0.5)
    sd = opt.state_dict()
    reg2 = build_regularizer("powerlaw_prior", strength=1e-3, a=2.0, lambda_min=0.1, refresh_every=7)
    opt2 = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.0)
    attach_regularizer(opt2, reg2, [("w", p)])
    opt2.load_state_dict(sd)
    assert reg2.step == 3 and reg2.epoch == 0.5


# ----------------------------------------------------------------------------- weightwatcher
def test_agrees_with_weightwatcher():
    ww = pytest.importorskip("weightwatcher")
    import pandas  # noqa: F401  (weightwatcher's own dependency)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(120, 80, bias=False), nn.Linear(80, 200, bias=False))
    df = ww.WeightWatcher(model=model).analyze(min_evals=10, plot=False)
    for (_, row), layer in zip(df.iterrows(), model):
        m = sp.spectrum_metrics(layer.weight, method="svd")
        assert m["lambda_max"] == pytest.approx(row["lambda_max"], rel=1e-4)
        assert m["stable_rank"] == pytest.approx(row["stable_rank"], rel=1e-4)


# ----------------------------------------------------------------------------- monitor
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(16, 32)
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(32)
        self.dec = nn.Linear(32, 16)


def test_spectrum_summary():
    from hf_soft_diamond.spectrum_monitor import spectrum_summary

    model = _Tiny()
    out = spectrum_summary(model)
    assert out["spectrum/num_layers"] == 3
    assert out["spectrum/enc/stable_rank"] == pytest.approx(sp.spectrum_metrics(model.enc.weight)["stable_rank"],
                                                           rel=1e-4)
    alphas = [out[f"spectrum/{n}/alpha"] for n in ("enc", "conv", "dec")]
    assert out["spectrum/mean_alpha"] == pytest.approx(sum(alphas) / 3)
    only = spectrum_summary(model, names=r"^dec\.", per_layer=False)
    assert only["spectrum/num_layers"] == 1 and "spectrum/dec/alpha" not in only
    assert only["spectrum/mean_lambda_max"] == pytest.approx(out["spectrum/dec/lambda_max"])
    assert spectrum_summary(model, max_layers=2)["spectrum/num_layers"] == 2
    head = spectrum_summary(nn.Linear(16, 1), names=["weight"])  # one eigenvalue: no tail
    assert math.isnan(head["spectrum/weight/alpha"]) and math.isnan(head["spectrum/mean_alpha"])
    assert head["spectrum/mean_stable_rank"] == pytest.approx(1.0)


def test_spectrum_callback(tmp_path):
    from transformers import TrainerControl, TrainerState

    from hf_soft_diamond.spectrum_monitor import HISTORY_FILE, SpectrumCallback

    model = _Tiny()
    cb = SpectrumCallback(every=2, max_layers=2)
    args = SimpleNamespace(output_dir=str(tmp_path))
    state, control = TrainerState(), TrainerControl()
    cb.on_train_begin(args, state, control, model=model)
    for step in (1, 2, 3, 4):
        state.global_step, state.epoch = step, step / 4
        control.should_log = False
        control = cb.on_step_end(args, state, control, model=model)
        assert control.should_log == (step % 2 == 0)
        if control.should_log:
            logs = {"loss": 1.0}
            state.log_history.append({**logs, "step": step})
            cb.on_log(args, state, control, logs=logs)
            assert "spectrum/mean_alpha" in logs and "spectrum/enc/lambda_max" in logs
            assert "spectrum/mean_alpha" in state.log_history[-1]
    cb.on_train_end(args, state, control)
    hist = json.loads((tmp_path / HISTORY_FILE).read_text())
    assert [h["step"] for h in hist] == [0, 2, 4]
    assert all("spectrum/mean_stable_rank" in h for h in hist)
    with pytest.raises(ValueError, match="spectrum_every"):
        SpectrumCallback(every=0)
