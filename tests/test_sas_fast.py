"""The gather-free rational score reader (SasTable.score_unit_fast) and score_path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_soft_diamond.fused import compile_available
from hf_soft_diamond.priors.sas import get_sas_table
from hf_soft_diamond.regularizers.sas import SaSRegularizer

ALPHAS = [0.3, 0.5, 0.9, 1.3, 1.5, 1.9]
BOUND = 1.5e-4  # stated in SaSRegularizer's docstring for alpha in [0.3, 2) (float32 rounding included)


def _z_grid() -> torch.Tensor:
    return torch.from_numpy(np.exp(np.linspace(math.log(1e-6), math.log(1e6), 20001)))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_fast_matches_table(alpha):
    table = get_sas_table(alpha)
    z = _z_grid()
    ref = table.score_unit(z)  # float64 table read (verified against scipy in test_sas.py)
    for dtype in (torch.float32, torch.float64):
        got = table.score_unit_fast(z.to(dtype)).double()
        rel = ((got / ref) - 1.0).abs().max().item()
        # fast_max_rel_error is measured on another grid; float32 rounding adds up to ~3e-5 here
        assert rel <= table.fast_max_rel_error * 1.1 + 3e-5, (dtype, rel)
        assert rel <= BOUND, (dtype, rel)
    assert 0.0 < table.fast_max_rel_error <= BOUND
    assert 4 <= table.fast_degree <= 11


@pytest.mark.parametrize("alpha", ALPHAS)
def test_fast_limits_negative_and_finite(alpha):
    table = get_sas_table(alpha)
    z = _z_grid().float()
    psi = table.score_unit_fast(z)
    assert torch.all(psi < 0)
    edge = torch.tensor([0.0, 1e-45, 1e-38, 1e-20, 1e20, 1e38, 3.4e38, math.inf], dtype=torch.float32)
    for dtype in (torch.float32, torch.float64):
        out = table.score_unit_fast(edge.to(dtype))
        assert torch.all(torch.isfinite(out)), out
        assert torch.all(out <= 0)
        assert out[0] == 0 and out[-1].abs() < 1e-15  # z frozen at 1e18 z0
    # exact limits: slope -kappa at 0, tail -(1+alpha)/z
    small = torch.tensor([1e-12], dtype=torch.float64)
    assert table.score_unit_fast(small).item() / (-table.kappa * 1e-12) == pytest.approx(1.0, abs=1e-6)
    big = torch.tensor([1e15], dtype=torch.float64)  # below the freeze point 1e18 z0
    tail_err = 1e-2 if alpha < 1 else 1e-6  # z^-alpha corrections
    assert table.score_unit_fast(big).item() * 1e15 / -(1 + alpha) == pytest.approx(1.0, abs=tail_err)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fast_closed_forms_exact(alpha):
    table = get_sas_table(alpha)
    z = _z_grid()
    expect = -z / 2 if alpha == 2.0 else -2 * z / (1 + z * z)
    torch.testing.assert_close(table.score_unit_fast(z), expect, rtol=1e-15, atol=0)
    assert table.fast_max_rel_error == 0.0


@pytest.mark.skipif(not compile_available("cpu"), reason="needs a C++ compiler for inductor")
@pytest.mark.parametrize("alpha", [0.5, 1.5])
def test_fast_compiled_equals_eager(alpha):
    table = get_sas_table(alpha)
    z = _z_grid().float()
    compiled = torch.compile(table.score_unit_fast, fullgraph=True, dynamic=False)
    # float32 rounding (FMA contraction, vectorized sqrt/div) differs between the two, so
    # both are held to the same bound against the float64 evaluation of the same formula
    reference = table.score_unit_fast(z.double())
    bound = table.fast_max_rel_error + 2e-5  # + a few float32 ulps of the rational's terms
    for got in (compiled(z), table.score_unit_fast(z)):
        rel = ((got.double() - reference).abs() / reference.abs().clamp_min(1e-30)).max().item()
        assert rel <= bound, rel


@pytest.mark.parametrize("alpha", ALPHAS + [1.0, 2.0])
@pytest.mark.parametrize("compiled", [False, True])
def test_score_signed_is_the_odd_extension_of_the_table(alpha, compiled):
    """What the per-step kernels read: psi_1(scale*x) for both signs, constants folded."""
    if compiled and not compile_available("cpu"):
        pytest.skip("needs a C++ compiler for inductor")
    from hf_soft_diamond.fused import COMPILE_OPTIONS

    table = get_sas_table(alpha)
    z = _z_grid()
    x = torch.cat([z, -z, torch.zeros(1, dtype=torch.float64)])
    scale = torch.tensor(0.37, dtype=torch.float64)  # a 0-d tensor, as the kernels pass it
    # reference: the float64 table read (verified against scipy in test_sas.py), made odd by hand
    ref = torch.where(x < 0, -1.0, 1.0).double() * table.score_unit(x.abs() * 0.37)
    fn = table.score_signed
    if compiled:
        torch._dynamo.reset()  # one code object (score_signed) for every alpha: keep under the recompile limit
        fn = torch.compile(table.score_signed, dynamic=False, fullgraph=True, options=COMPILE_OPTIONS)
    for fast in (True, False):
        got = fn(x.float(), scale.float(), fast=fast, out_scale=torch.tensor(-3.0)).double() / -3.0
        assert got[-1] == 0 and torch.all(torch.sign(got[:-1]) == -torch.sign(x[:-1]))
        rel = ((got[:-1] / ref[:-1]) - 1.0).abs().max().item()
        bound = (table.fast_max_rel_error + 3e-5) if fast else 1e-5  # table path: a float32 read
        assert rel <= max(bound, 1e-5), (fast, rel)


@pytest.mark.parametrize("alpha", [0.5, 1.5])
@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_regularizer_fast_vs_table(alpha, backend):
    torch.manual_seed(0)
    params = [torch.randn(300, 7) * 0.3, torch.randn(1000) * 3.0]
    out = {}
    for path in ("fast", "table"):
        reg = SaSRegularizer(strength=0.7, alpha=alpha, gamma=0.5, fused_backend=backend, score_path=path)
        grads = [torch.zeros_like(p) for p in params]
        reg.add_coupled_grad_(params, grads, lr=0.1)
        ws = [p.clone() for p in params]
        reg.decoupled_pre_step_(ws, lr=0.1)
        reg.decoupled_post_step_(ws, lr=0.1)  # SaS pulls after the step (here: no step in between)
        out[path] = (grads, [w - p for w, p in zip(ws, params)])
        assert reg.hparams()["sas_score_path"] == path
    for gf, gt in zip(out["fast"][0], out["table"][0]):
        mask = gt != 0
        assert ((gf[mask] / gt[mask]) - 1).abs().max().item() <= 2 * BOUND
    for df, dt in zip(out["fast"][1], out["table"][1]):
        torch.testing.assert_close(df, dt, rtol=1e-3, atol=1e-7)


def test_bad_score_path():
    with pytest.raises(ValueError, match="sas_score_path"):
        SaSRegularizer(strength=0.1, score_path="gather")
