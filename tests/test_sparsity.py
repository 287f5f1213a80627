"""Sparsity report, global magnitude pruning and prune curves, checked against numpy references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_soft_diamond import pruning as pr
from hf_soft_diamond import sparsity as sp
from hf_soft_diamond.pruning import prune_by_magnitude, prune_curve, pruned, sparsity_at_max_loss
from hf_soft_diamond.sparsity import sparsity_report


class Tiny(nn.Module):
    """Linear(4->3) -> LayerNorm(3) -> Linear(3->2, no bias) + an embedding (5x4)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.fc1 = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.fc2 = nn.Linear(3, 2, bias=False)


def _set(model: Tiny) -> dict[str, np.ndarray]:
    vals = {
        "emb.weight": np.array(
            [[0, 1e-9, -1e-9, 5e-4], [-5e-4, 1e-3, -2e-3, 0.5], [0.1, -0.2, 0.3, -0.4], [0, 0, 0, 0], [1, 2, 3, 4]]
        ),
        "fc1.weight": np.array([[1e-2, -1e-2, 2e-2, 0], [3.0, -3.0, 1e-4, 9e-3], [0.7, 0.0, -0.8, 0.9]]),
        "fc1.bias": np.array([0.0, 1e-4, 0.5]),
        "norm.weight": np.array([1.0, 0.0, 1e-3]),
        "norm.bias": np.array([0.0, 0.0, 0.0]),
        "fc2.weight": np.array([[1e-5, -1e-1, 2.0], [0.0, 0.05, -0.05]]),
    }
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.tensor(vals[name], dtype=torch.float32))
    return {k: v.astype(np.float32) for k, v in vals.items()}


REG = ["emb.weight", "fc1.weight", "fc2.weight"]


def test_default_rule_excludes_bias_norm_and_vectors() -> None:
    assert sp._default_regularized_names(Tiny()) == REG


def test_report_matches_numpy_counts() -> None:
    model = Tiny()
    vals = _set(model)
    rep = sparsity_report(model)
    assert rep.thresholds == (1e-8, 1e-3, 1e-2)
    for tau in rep.thresholds:
        t32 = np.float32(tau)
        reg = sum(int((np.abs(vals[n]) <= t32).sum()) for n in REG)
        allc = sum(int((np.abs(v) <= t32).sum()) for v in vals.values())
        assert rep.reg_counts[tau] == reg
        assert rep.all_counts[tau] == allc
        for n, v in vals.items():
            assert rep.layers[n].counts[tau] == int((np.abs(v) <= t32).sum())
            assert rep.layers[n].regularized == (n in REG)
    assert rep.reg_numel == 20 + 12 + 6
    assert rep.all_numel == 20 + 12 + 3 + 3 + 3 + 6
    # hand count at tau=1e-8 over the regularized set: emb 7 (incl. +-1e-9), fc1 2, fc2 1
    assert rep.reg_counts[1e-8] == 10
    assert rep.reg_fraction(1e-8) == pytest.approx(10 / 38)


def test_flat_dict_keys_and_json() -> None:
    model = Tiny()
    _set(model)
    rep = sparsity_report(model, thresholds=(1e-2, 1e-8))
    flat = rep.to_flat_dict()
    assert set(flat) == {
        "sparsity/reg/le_1e-08",
        "sparsity/reg/le_1e-02",
        "sparsity/all/le_1e-08",
        "sparsity/all/le_1e-02",
        "sparsity/reg/numel",
        "sparsity/all/numel",
    }
    assert all(isinstance(v, float) for v in flat.values())
    per_layer = rep.to_flat_dict(prefix="eval_sparsity", per_layer=True)
    assert per_layer["eval_sparsity/layer/fc1.bias/le_1e-08"] == pytest.approx(1 / 3)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["regularized"]["counts"]["1e-08"] == 10
    assert d["layers"]["norm.weight"]["regularized"] is False


def test_report_explicit_names_and_errors() -> None:
    model = Tiny()
    _set(model)
    rep = sparsity_report(model, regularized_names=["fc2.weight"])
    assert rep.reg_numel == 6 and rep.reg_counts[1e-8] == 1
    with pytest.raises(ValueError, match="regularized_names"):
        sparsity_report(model, regularized_names=["nope.weight"])
    with pytest.raises(ValueError, match="thresholds"):
        sparsity_report(model, thresholds=(-1.0,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_report_low_precision(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(300, 200, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(200, 300, generator=g) * 1e-2)
        lin.weight[:10] = 0
    lin = lin.to(dtype)
    rep = sparsity_report(lin)
    ref = np.abs(lin.weight.detach().double().numpy())
    cmp_dtype = np.float64 if dtype == torch.float64 else np.float32
    for tau in rep.thresholds:
        assert rep.reg_counts[tau] == int((ref.astype(cmp_dtype) <= cmp_dtype(tau)).sum())


def test_report_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "_CHUNK", 7)
    model = Tiny()
    vals = _set(model)
    rep = sparsity_report(model)
    assert rep.reg_counts[1e-3] == sum(int((np.abs(vals[n]) <= np.float32(1e-3)).sum()) for n in REG)


# ------------------------------------------------------------------ pruning


def _reference_prune(vals: dict[str, np.ndarray], names: list[str], fraction: float) -> dict[str, np.ndarray]:
    """numpy reference: stable argsort of |w| over the concatenation in model/row-major order."""
    flat = np.concatenate([vals[n].ravel() for n in names])
    k = math.floor(fraction * flat.size)
    order = np.argsort(np.abs(flat), kind="stable")
    flat = flat.copy()
    flat[order[:k]] = 0
    out, start = {}, 0
    for n in names:
        size = vals[n].size
        out[n] = flat[start : start + size].reshape(vals[n].shape)
        start += size
    return out


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 0.99])
def test_prune_matches_reference_with_ties(fraction: float) -> None:
    model = Tiny()
    vals = _set(model)  # many exact zeros and repeated magnitudes (ties)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out, info = prune_by_magnitude(model, fraction, return_masks=True)
    assert out is not model
    for n, p in model.named_parameters():  # original untouched
        assert torch.equal(p, before[n])
    ref = _reference_prune(vals, REG, fraction)
    got = dict(out.named_parameters())
    for n in REG:
        np.testing.assert_array_equal(got[n].detach().numpy(), ref[n])
        assert torch.equal(info.masks[n], (got[n] == 0) & info.masks[n])
    for n in ["fc1.bias", "norm.weight", "norm.bias"]:
        assert torch.equal(got[n], before[n])
    assert info.num_pruned == math.floor(fraction * 38) == sum(info.pruned_per_layer.values())
    assert info.num_regularized == 38


def test_prune_random_global_fraction_and_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pr, "_CHUNK", 1000)  # exercise chunking
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(128, 64, generator=g))
        model[2].weight.copy_(torch.randn(32, 128, generator=g) * 0.1)  # smaller scale: pruned more
    vals = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    names = ["0.weight", "2.weight"]
    for fraction in (0.5, 0.9, 0.999):
        out, info = prune_by_magnitude(model, fraction)
        ref = _reference_prune(vals, names, fraction)
        got = dict(out.named_parameters())
        for n in names:
            np.testing.assert_array_equal(got[n].detach().numpy(), ref[n])
        allmag = np.sort(np.abs(np.concatenate([vals[n].ravel() for n in names])))
        assert info.threshold == allmag[info.num_pruned - 1]
        zeros = sum(int((got[n] == 0).sum()) for n in names)
        assert zeros == info.num_pruned == math.floor(fraction * allmag.size)
        assert torch.equal(got["0.bias"], model[0].bias)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_prune_dtypes(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(50, 40, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 50, generator=g))
    lin = lin.to(dtype)
    vals = {"weight": lin.weight.detach().double().numpy()}
    out, info = prune_by_magnitude(lin, 0.6)
    ref = _reference_prune(vals, ["weight"], 0.6)
    np.testing.assert_array_equal(out.weight.detach().double().numpy(), ref["weight"])
    assert out.weight.dtype == dtype


def test_prune_only_touches_given_names() -> None:
    model = Tiny()
    vals = _set(model)
    out, info = prune_by_magnitude(model, 0.5, regularized_names=["fc1.weight"])
    ref = _reference_prune(vals, ["fc1.weight"], 0.5)
    got = dict(out.named_parameters())
    np.testing.assert_array_equal(got["fc1.weight"].detach().numpy(), ref["fc1.weight"])
    for n in vals:
        if n != "fc1.weight":
            np.testing.assert_array_equal(got[n].detach().numpy(), vals[n])
    assert set(info.pruned_per_layer) == {"fc1.weight"}


def test_tied_weights_counted_once() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(40, dtype=torch.float32).view(10, 4))
    rep = sparsity_report(model, regularized_names=["0.weight", "1.weight"])
    assert rep.reg_numel == 40 and rep.all_numel == 40
    out, info = prune_by_magnitude(model, 0.5, regularized_names=["1.weight"])
    assert info.num_regularized == 40 and int((out[1].weight == 0).sum()) == 20


def test_inplace_and_context_manager_restore() -> None:
    model = Tiny()
    _set(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = {n: id(p) for n, p in model.named_parameters()}
    with pruned(model, 0.8) as info:
        zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n in REG)
        assert zeros == info.num_pruned == math.floor(0.8 * 38)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and id(p) == ids[n]
    with pytest.raises(RuntimeError, match="boom"):
        with pruned(model, 0.9):
            raise RuntimeError("boom")
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    out, _ = prune_by_magnitude(model, 0.5, inplace=True)
    assert out is model and int((model.fc1.weight == 0).sum()) > int((before["fc1.weight"] == 0).sum())


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "x"])
def test_bad_fraction(bad: object) -> None:
    with pytest.raises(ValueError, match=r"`fraction` must be .*\[0, 1\)"):
        prune_by_magnitude(Tiny(), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`fractions`"):
        prune_curve(Tiny(), lambda m: 0.0, fractions=(0.0, bad))  # type: ignore[arg-type]


def _two_random_layers(seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Linear(30->20) -> Linear(20->10) with standard normal parameters, and a copy of them."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_prune_curve_evaluates_pruned_weights_and_restores() -> None:
    model, before = _two_random_layers(3)
    names = ["0.weight", "1.weight"]

    def zero_fraction(m: nn.Module) -> float:  # metric = % of regularized weights that are zero
        ps = dict(m.named_parameters())
        return 100.0 * sum(int((ps[n] == 0).sum()) for n in names) / 800

    fractions = (0.0, 0.5, 0.9, 0.99)
    curve = prune_curve(model, zero_fraction, fractions=fractions)
    assert [row["fraction"] for row in curve] == list(fractions)
    for row in curve:
        assert row["metric"] == pytest.approx(100.0 * math.floor(row["fraction"] * 800) / 800)
        assert row["pruned_fraction"] == pytest.approx(row["metric"] / 100)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def _reference_prune_excluded(vals: dict[str, np.ndarray], names: list[str], fraction: float,
                              excluded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """numpy reference for ``excluded``: the counted entries pruned as if alone (stable argsort
    in model/row-major order), the excluded ones set to zero."""
    counted = {n: vals[n][~excluded[n]] if n in excluded else vals[n].ravel() for n in names}
    pruned_counted = _reference_prune(counted, names, fraction)
    out = {}
    for n in names:
        w = vals[n].copy()
        if n in excluded:
            w[excluded[n]] = 0
            w[~excluded[n]] = pruned_counted[n]
        else:
            w = pruned_counted[n].reshape(w.shape)
        out[n] = w
    return out


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.9])
def test_prune_excluded_entries_are_zeroed_and_left_out_of_the_fraction(
        fraction: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pr, "_CHUNK", 7)  # masks and chunks out of step
    model = Tiny()
    vals = _set(model)  # exact zeros and ties among the counted entries too
    g = np.random.default_rng(4)
    excluded_np = {"emb.weight": g.random((5, 4)) < 0.4, "fc2.weight": np.array([[True, False, True], [False] * 3])}
    excluded = {n: torch.from_numpy(m) for n, m in excluded_np.items()}
    n_counted = 38 - sum(int(m.sum()) for m in excluded_np.values())
    out, info = prune_by_magnitude(model, fraction, return_masks=True, excluded=excluded)
    ref = _reference_prune_excluded(vals, REG, fraction, excluded_np)
    got = dict(out.named_parameters())
    for n in REG:
        np.testing.assert_array_equal(got[n].detach().numpy(), ref[n])
    assert info.num_regularized == n_counted
    assert info.num_pruned == math.floor(fraction * n_counted) == sum(info.pruned_per_layer.values())
    for n, m in excluded.items():
        assert bool(info.masks[n][m].all())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pruned(model, fraction, excluded=excluded):  # in place, restored
        for n in REG:
            np.testing.assert_array_equal(dict(model.named_parameters())[n].detach().numpy(), ref[n])
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_prune_excluded_non_contiguous_weight() -> None:
    lin = nn.Linear(6, 5, bias=False)
    with torch.no_grad():
        lin.weight = nn.Parameter(torch.randn(6, 5, generator=torch.Generator().manual_seed(5)).t())
    assert not lin.weight.is_contiguous()
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[:, 0] = True
    vals = {"weight": lin.weight.detach().numpy().copy()}
    out, _ = prune_by_magnitude(lin, 0.5, excluded={"weight": mask})
    ref = _reference_prune_excluded(vals, ["weight"], 0.5, {"weight": mask.numpy()})
    np.testing.assert_array_equal(out.weight.detach().numpy(), ref["weight"])


def test_prune_excluded_bad_input() -> None:
    with pytest.raises(ValueError, match="`excluded` names .*fc1.bias"):
        prune_by_magnitude(Tiny(), 0.5, excluded={"fc1.bias": torch.zeros(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"`excluded\['fc2.weight'\]` must be a bool mask of shape \(2, 3\)"):
        prune_by_magnitude(Tiny(), 0.5, excluded={"fc2.weight": torch.zeros(3, 2, dtype=torch.bool)})


def test_prune_curve_with_excluded_counts_only_the_rest() -> None:
    model, before = _two_random_layers(6)
    dead = torch.zeros(20, 30, dtype=torch.bool)
    dead[:, :10] = True  # 200 of the 800 regularized entries

    def zeros_among_counted(m: nn.Module) -> float:
        ps = dict(m.named_parameters())
        assert int((ps["0.weight"][dead] != 0).sum()) == 0  # excluded: zero at every level
        return 100.0 * (int((ps["0.weight"][~dead] == 0).sum()) + int((ps["1.weight"] == 0).sum())) / 600

    curve = prune_curve(model, zeros_among_counted, fractions=(0.0, 0.5, 0.9), excluded={"0.weight": dead})
    for row in curve:
        assert row["metric"] == pytest.approx(100.0 * math.floor(row["fraction"] * 600) / 600)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_sparsity_at_max_loss() -> None:
    def c(pairs):
        return [{"fraction": f, "metric": m} for f, m in pairs]

    curve = c([(0, 30.0), (0.5, 30.2), (0.7, 29.5), (0.8, 29.0), (0.9, 28.9), (0.95, 20.0)])
    assert sparsity_at_max_loss(curve) == 0.8  # 29.0 is exactly 1 point below: inclusive
    assert sparsity_at_max_loss(curve, max_loss=0.5) == 0.7
    assert sparsity_at_max_loss(curve, max_loss=0.0) == 0.5  # above baseline qualifies
    assert sparsity_at_max_loss(curve, max_loss=20) == 0.95
    # non-monotone: largest qualifying level wins
    assert sparsity_at_max_loss(c([(0, 90.0), (0.5, 80.0), (0.9, 89.5)])) == 0.9
    assert sparsity_at_max_loss(c([(0, 90.0), (0.5, 10.0)])) == 0.0
    assert sparsity_at_max_loss(c([(0, 0.7), (0.5, 0.7 - 0.3)]), max_loss=0.3) == 0.5  # float round-off
    assert sparsity_at_max_loss(c([(0.5, 80.0)]), baseline=80.5) == 0.5
    with pytest.raises(ValueError, match="fraction 0"):
        sparsity_at_max_loss(c([(0.5, 80.0)]))
    with pytest.raises(ValueError, match="max_loss"):
        sparsity_at_max_loss(curve, max_loss=-1)
    assert sparsity_at_max_loss(c([(0, 50.0), (0.5, float("nan"))])) == 0.0


def test_pruning_names_still_import_from_sparsity() -> None:
    """Documented compat: the pruning API moved to hf_soft_diamond.pruning, the old import path still works."""
    import hf_soft_diamond
    from hf_soft_diamond.sparsity import DEFAULT_PRUNE_FRACTIONS, PruneInfo
    from hf_soft_diamond.sparsity import prune_by_magnitude as old_prune
    from hf_soft_diamond.sparsity import prune_curve as old_curve
    from hf_soft_diamond.sparsity import pruned as old_pruned
    from hf_soft_diamond.sparsity import sparsity_at_max_loss as old_knee

    assert (old_prune, old_curve, old_pruned, old_knee) == (prune_by_magnitude, prune_curve, pruned,
                                                            sparsity_at_max_loss)
    assert PruneInfo is pr.PruneInfo and DEFAULT_PRUNE_FRACTIONS is pr.DEFAULT_PRUNE_FRACTIONS
    assert hf_soft_diamond.prune_by_magnitude is prune_by_magnitude and hf_soft_diamond.prune_curve is prune_curve
    with pytest.raises(AttributeError):
        sp.no_such_name  # noqa: B018


def test_pruning_and_measurement_share_one_regularized_set_resolution() -> None:
    assert pr._resolve_regularized is sp._resolve_regularized
    model = Tiny()
    _set(model)
    rep = sparsity_report(model)
    _, info = prune_by_magnitude(model, 0.5)
    assert set(info.pruned_per_layer) == {n for n, layer in rep.layers.items() if layer.regularized} == set(REG)
