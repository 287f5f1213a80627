"""SaS prior tables (hf_soft_diamond.priors.sas) against independent references.

References:
* scipy.stats.levy_stable (its own Zolotarev-integral code): pdf/logpdf, and the score
  by a 4-point central difference of its logpdf (relative step 1e-4), used for
  1e-2 <= |x|/c <= 1e3, where that difference is accurate to ~1e-8;
* scipy's logpdf, except for 0 < |x|/c < 1e-2 where scipy returns ~log f(0) (wrong by
  up to 2e-4 at alpha = 0.3) and the power series below is used instead;
* outside that range a central difference of log f loses too many digits (tiny x:
  log f changes by ~1e-12) and scipy's pdf is unreliable in the far tail at small
  alpha, so there the reference is the small-z power series / large-z tail expansion
  evaluated in 50-digit mpmath with optimal truncation (the point is skipped unless
  the smallest term is < 1e-14 of the sum).
"""

from __future__ import annotations

import math
import multiprocessing as mp_ctx
import os

import mpmath
import numpy as np
import pytest
import torch
from scipy import special
from scipy.stats import levy_stable, norm

from hf_soft_diamond.priors import get_sas_table, prebuild_sas_tables, sas_log_pdf, sas_score
from hf_soft_diamond.priors import sas as S
from hf_soft_diamond.priors.sas import build as sas_build
from hf_soft_diamond.priors.sas import cache as sas_cache

ALPHAS = [0.3, 0.5, 0.9, 1.0, 1.3, 1.5, 1.9, 2.0]


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SOFT_DIAMOND_CACHE", str(tmp_path / "cache"))
    S.clear_memory_cache()
    yield
    S.clear_memory_cache()


# ------------------------------------------------------------------ references
def _mp_series(alpha: float, z: float, tol: float = 1e-14) -> tuple[float, float] | None:
    """(log f_1(z), psi_1(z)) from the power (small z) or tail (large z) series in 50-digit mpmath."""
    mpmath.mp.dps = 50
    a, x = mpmath.mpf(alpha), mpmath.mpf(z)
    f = d = mpmath.mpf(0)
    prev = mpmath.inf
    if z < 1:
        for k in range(400):
            c = (-1) ** k * mpmath.gamma((2 * k + 1) / a) / mpmath.factorial(2 * k)
            term = c * x ** (2 * k)
            if abs(term) > prev:  # asymptotic series: stop at the smallest term
                break
            prev = abs(term)
            f += term
            if k:
                d += c * 2 * k * x ** (2 * k - 1)
            if abs(term) < mpmath.mpf(10) ** -30 * abs(f):
                break
    else:
        for k in range(1, 400):
            c = (-1) ** (k + 1) * mpmath.gamma(a * k + 1) / mpmath.factorial(k) * mpmath.sin(k * mpmath.pi * a / 2)
            bound = mpmath.gamma(a * k + 1) / mpmath.factorial(k) * x ** (-a * k - 1) * (a * k + 1)
            if bound > prev:
                break
            prev = bound
            f += c * x ** (-a * k - 1)
            d -= c * (a * k + 1) * x ** (-a * k - 2)
            if bound < mpmath.mpf(10) ** -30 * abs(f):
                break
    if prev > tol * abs(f) or f <= 0:
        return None
    if z < 1:
        f, d = f / (mpmath.pi * a), d / (mpmath.pi * a)
    else:
        f, d = f / mpmath.pi, d / mpmath.pi
    return float(mpmath.log(f)), float(d / f)


def _scipy_fd_score(alpha: float, x: np.ndarray, c: float) -> np.ndarray:
    d = 1e-4 * x
    lp = lambda y: levy_stable.logpdf(y, alpha, 0, scale=c)  # noqa: E731
    return (-lp(x + 2 * d) + 8 * lp(x + d) - 8 * lp(x - d) + lp(x - 2 * d)) / (12 * d)


def _reference_score(alpha: float, gamma: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = gamma ** (1 / alpha)
    z = x / c
    ref = np.full_like(x, np.nan)
    mid = (z >= 1e-2) & (z <= 1e3)
    if mid.any():
        ref[mid] = _scipy_fd_score(alpha, x[mid], c)
    for i in np.flatnonzero(~mid):
        v = _mp_series(alpha, float(z[i]))
        if v is not None:
            ref[i] = v[1] / c
    return ref, mid


# ------------------------------------------------------------------ accuracy
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_score_matches_independent_references(alpha, gamma):
    x = np.logspace(-6, 4, 21)
    if alpha == 2.0:
        ref = -x / (2 * gamma)  # Gaussian of variance 2*gamma
    else:
        ref, _ = _reference_score(alpha, gamma, x)
    ok = np.isfinite(ref) & (np.abs(ref) > 1e-12)
    assert ok.sum() >= 15, f"too few reference points ({ok.sum()})"
    for dtype in (torch.float64, torch.float32):
        got = sas_score(torch.tensor(x, dtype=dtype), alpha, gamma).double().numpy()
        rel = np.abs(got[ok] / ref[ok] - 1)
        assert rel.max() <= 1e-4, (dtype, x[ok][rel.argmax()], rel.max())


@pytest.mark.parametrize("alpha", ALPHAS)
def test_log_pdf_matches_scipy(alpha):
    gamma = 0.5 if alpha < 1 else 3.0
    c = gamma ** (1 / alpha)
    x = np.concatenate([[0.0], np.logspace(-6, 2, 15) * c])
    if alpha == 2:
        ref = norm.logpdf(x, scale=math.sqrt(2 * gamma))
    else:
        ref = levy_stable.logpdf(x, alpha, 0, scale=c)
        # near 0 scipy snaps to f(0) (off by kappa z^2/2 = 1.7e-4 at alpha = 0.3, z = 1e-3):
        # there the reference is the 50-digit power series
        for i in np.flatnonzero((x > 0) & (x < 1e-2 * c)):
            v = _mp_series(alpha, x[i] / c, tol=1e-8)
            ref[i] = np.nan if v is None else v[0] - math.log(c)
    ok = np.isfinite(ref)
    assert ok.sum() >= 12
    got = sas_log_pdf(torch.tensor(x, dtype=torch.float64), alpha, gamma).numpy()
    assert np.abs(got[ok] - ref[ok]).max() < 1e-6
    # float32 path: float32 rounding of the log-density (relative where |log f| > 1)
    got32 = sas_log_pdf(torch.tensor(x, dtype=torch.float32), alpha, gamma).double().numpy()
    assert (np.abs(got32[ok] - ref[ok]) / np.maximum(1.0, np.abs(ref[ok]))).max() < 1e-5


def test_reference_values_of_methods_md():
    x = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    np.testing.assert_allclose(sas_score(x, 0.5).numpy(), [-3.64, -1.07, -0.137], rtol=5e-3)
    np.testing.assert_allclose(sas_score(x, 1.5).numpy(), [-0.0738, -0.671, -0.265], rtol=5e-3)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 3.0])
def test_closed_forms(gamma):
    x = torch.linspace(-50, 50, 1001, dtype=torch.float64)
    torch.testing.assert_close(sas_score(x, 1.0, gamma), -2 * x / (gamma**2 + x**2), rtol=1e-14, atol=0)
    torch.testing.assert_close(sas_log_pdf(x, 1.0, gamma), -torch.log(math.pi * gamma * (1 + (x / gamma) ** 2)))
    torch.testing.assert_close(sas_score(x, 2.0, gamma), -x / (2 * gamma), rtol=1e-14, atol=0)
    torch.testing.assert_close(sas_log_pdf(x, 2.0, gamma),
                               torch.from_numpy(norm.logpdf(x.numpy(), scale=math.sqrt(2 * gamma))))


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.9, 1.3, 1.5, 1.9])
def test_limits_near_zero_and_in_the_tail(alpha):
    kappa = math.exp(special.gammaln(3 / alpha) - special.gammaln(1 / alpha))
    tiny = torch.tensor([1e-12, 1e-10], dtype=torch.float64)
    torch.testing.assert_close(sas_score(tiny, alpha) / tiny, torch.full_like(tiny, -kappa), rtol=1e-6, atol=0)
    huge = torch.tensor([1e30, 1e35], dtype=torch.float64)
    torch.testing.assert_close(sas_score(huge, alpha) * huge, torch.full_like(huge, -(1 + alpha)), rtol=1e-6, atol=0)
    f0 = special.gamma(1 + 1 / alpha) / math.pi
    assert abs(sas_log_pdf(torch.zeros(1, dtype=torch.float64), alpha).item() - math.log(f0)) < 1e-8
    assert sas_score(torch.zeros(3), alpha).abs().max().item() == 0.0


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("gamma", [0.01, 0.5, 3.0])
def test_slope_at_zero_is_the_curvature_of_the_characteristic_function(alpha, gamma):
    """-psi'(0) = -f''(0)/f(0) with f(0) = 1/pi int exp(-gamma t^alpha) dt and -f''(0) = 1/pi int t^2 exp(...) dt
    (the inverse Fourier transform at 0, by quadrature), and the table's score near 0 agrees."""
    from scipy import integrate

    def moment(k: int) -> float:  # int_0^inf t^k exp(-gamma t^alpha) dt, in u = gamma t^alpha
        value, _ = integrate.quad(lambda u: u ** ((k + 1) / alpha - 1) * math.exp(-u), 0, math.inf)
        return value / (alpha * gamma ** ((k + 1) / alpha))

    slope = S.sas_score_slope_at_zero(alpha, gamma)
    assert slope == pytest.approx(moment(2) / moment(0), rel=1e-9)
    x = torch.tensor([1e-7, -1e-8], dtype=torch.float64) * gamma ** (1 / alpha)
    torch.testing.assert_close(-sas_score(x, alpha, gamma) / x, torch.full_like(x, slope), rtol=1e-6, atol=0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5, 2.0])
def test_score_is_odd_and_special_values(alpha):
    x = torch.logspace(-5, 5, 200, dtype=torch.float64)
    torch.testing.assert_close(sas_score(-x, alpha, 0.7), -sas_score(x, alpha, 0.7), rtol=0, atol=0)
    special_x = torch.tensor([float("nan"), float("inf"), -float("inf")])
    out = sas_score(special_x, alpha)
    assert math.isnan(out[0].item())
    if alpha != 2.0:
        assert out[1].item() == 0.0 and out[2].item() == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_dtype_and_shape(dtype):
    x = (torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 2).to(dtype)
    for fn in (sas_score, sas_log_pdf):
        out = fn(x, 1.5, 0.5)
        assert out.dtype == dtype and out.shape == x.shape and not out.requires_grad
        exact = fn(x.double(), 1.5, 0.5)
        # computed in float32 and rounded once to the input dtype
        torch.testing.assert_close(out, exact.to(dtype), rtol=1e-6 if dtype == torch.float64 else 1e-5, atol=1e-7)
    w = torch.nn.Parameter(torch.randn(10))
    assert not sas_score(w, 0.5).requires_grad


def _mp_half_alpha(z: float) -> tuple[float, float]:
    """(log f_1(z), psi_1(z)) at alpha = 1/2 from the Fresnel closed form in 60-digit mpmath."""
    mpmath.mp.dps = 60

    def f(x):
        u, a = 1 / mpmath.sqrt(2 * mpmath.pi * x), 1 / (4 * x)
        g = mpmath.sin(a) * (0.5 - mpmath.fresnels(u)) + mpmath.cos(a) * (0.5 - mpmath.fresnelc(u))
        return g / mpmath.sqrt(2 * mpmath.pi * x**3)

    x = mpmath.mpf(z)
    return float(mpmath.log(f(x))), float(mpmath.diff(f, x) / f(x))


@pytest.mark.parametrize("alpha", [0.5, 0.9, 1.3, 1.9])
def test_built_table_values_match_high_precision_references(alpha):
    """The float64 values the table stores (before interpolation), across its whole grid:
    alpha = 1/2 against its closed form in mpmath (every region: power series, closed form),
    other alphas against the 50-digit series wherever those converge (the power and tail
    regions, whose lengths the planner picks)."""
    lo, h, n = sas_build._grid_params(alpha, S.DEFAULT_GRID_STEP, None, None)
    r, q, _ = S.build_unit_table(alpha, lo, lo + h * (n - 1), h)
    idx = np.linspace(0, n - 1, 60 if alpha == 0.5 else 200).round().astype(int)
    if alpha == 0.5:  # and every grid point around the switch from the power series (z = 0.007)
        t = lo + h * np.arange(n)
        idx = np.concatenate([idx, np.flatnonzero((t > math.log(0.004)) & (t < math.log(0.012)))])
    idx = np.unique(idx)
    checked = 0
    for i in idx:
        z = math.exp(lo + h * i)
        ref = _mp_half_alpha(z) if alpha == 0.5 else _mp_series(alpha, z)
        if ref is None:
            continue
        log_f = q[i] - 0.5 * (1 + alpha) * math.log1p(z * z)
        psi = r[i] * z / (1 + z * z)
        assert abs(log_f - ref[0]) < 1e-10, (z, log_f, ref[0])
        assert abs(psi / ref[1] - 1) < 1e-9, (z, psi, ref[1])
        checked += 1
    assert checked >= 40, checked


def test_score_unit_compiles_to_one_graph():
    table = get_sas_table(1.5)
    z = torch.logspace(-8, 8, 1000)
    compiled = torch.compile(table.score_unit, fullgraph=True, dynamic=True, backend="eager")
    torch.testing.assert_close(compiled(z), table.score_unit(z))


@pytest.mark.parametrize(
    "alpha,gamma,match",
    [(0.0, 1.0, "`alpha`"), (2.5, 1.0, r"\(0, 2\]"), (float("nan"), 1.0, "`alpha`"), (-1, 1.0, "`alpha`"),
     (1.5, 0.0, "`gamma`"), (1.5, -1.0, "> 0"), (1.5, float("nan"), "`gamma`"), (1.5, float("inf"), "`gamma`")],
)
def test_bad_arguments(alpha, gamma, match):
    with pytest.raises(ValueError, match=match):
        sas_score(torch.ones(2), alpha, gamma)
    with pytest.raises(ValueError, match=match):
        sas_log_pdf(torch.ones(2), alpha, gamma)
    if gamma == 1.0:
        with pytest.raises(ValueError, match=match):
            get_sas_table(alpha)


# ------------------------------------------------------------------ cache
def _only_file(tmp_path):
    files = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1, files
    return files[0]


def test_disk_cache_roundtrip(tmp_path):
    table = get_sas_table(1.3)
    path = _only_file(tmp_path)
    S.clear_memory_cache()
    again = get_sas_table(1.3)
    assert again is not table
    np.testing.assert_array_equal(again.r, table.r)
    np.testing.assert_array_equal(again.q, table.q)
    assert sas_cache._load(path, 1.3, table.t_min, table.grid_step, table.n) is not None
    assert get_sas_table(1.3) is again  # memory cache
    assert get_sas_table(1.3, grid_step=0.05) is not again  # other grid, other table


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other_alpha"])
def test_damaged_cache_file_is_rebuilt(tmp_path, damage):
    table = get_sas_table(0.7)
    path = _only_file(tmp_path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        i = len(raw) // 2  # inside the r/q payload (the .npz is stored uncompressed)
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :])
    elif damage == "garbage":
        path.write_bytes(b"not a table")
    else:
        sas_cache._save(path, 0.8, table.t_min, table.grid_step, table.r, table.q)
    assert sas_cache._load(path, 0.7, table.t_min, table.grid_step, table.n) is None
    S.clear_memory_cache()
    rebuilt = get_sas_table(0.7)
    np.testing.assert_array_equal(rebuilt.r, table.r)
    assert sas_cache._load(path, 0.7, table.t_min, table.grid_step, table.n) is not None  # overwritten


def _build_in_child(cache_dir: str, alpha: float) -> str:
    os.environ["HF_SOFT_DIAMOND_CACHE"] = cache_dir
    from hf_soft_diamond.priors import sas

    return str(sas.prebuild_sas_tables([alpha])[0])


def test_concurrent_builds_leave_a_valid_file(tmp_path):
    cache_dir = str(tmp_path / "cache")
    ctx = mp_ctx.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.starmap(_build_in_child, [(cache_dir, 1.7)] * 4)
    assert len(set(paths)) == 1
    table = get_sas_table(1.7)
    assert sas_cache._load(_only_file(tmp_path), 1.7, table.t_min, table.grid_step, table.n) is not None
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_prebuild_returns_paths(tmp_path):
    paths = prebuild_sas_tables([0.5, 1.0, 1.5, 2.0])
    assert len(paths) == 2 and all(p.exists() and p.parent == tmp_path / "cache" for p in paths)
