"""Plots and model cards: real PNGs that depend on the data; cards that parse back exactly."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from hf_soft_diamond.model_card import render_model_card
from hf_soft_diamond.tasks.plots import (
    fitted_prior_density,
    plot_layer_sparsity,
    plot_prune_curves,
    plot_spectrum_history,
    plot_weight_histogram,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_pixels(path):
    """Decode the IDAT stream of a PNG written by matplotlib (independent of matplotlib)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, "corrupt PNG chunk"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size, zlib.decompress(idat)


def test_weight_histograms_are_valid_pngs_that_depend_on_the_weights(tmp_path):
    gen = torch.Generator().manual_seed(0)
    a = plot_weight_histogram(torch.randn(5000, generator=gen) * 0.1, tmp_path / "a.png", regularizer="l2")
    b = plot_weight_histogram(torch.distributions.Laplace(0.0, 0.05).sample((5000,)), tmp_path / "b.png",
                              regularizer="l1")
    (wa, ha), pa = _png_pixels(a)
    (wb, hb), pb = _png_pixels(b)
    assert wa > 100 and ha > 100
    assert pa != pb


def test_sas_histogram_overlays_the_fitted_prior(tmp_path):
    w = torch.from_numpy(np.random.default_rng(0).standard_cauchy(4000) * 0.02)
    path = plot_weight_histogram(w, tmp_path / "sas.png", regularizer="sas",
                                 hparams={"sas_alpha": 1.0, "sas_gamma": 0.5})
    _png_pixels(path)
    fit = fitted_prior_density("sas", w.numpy(), alpha=1.0)
    # Cauchy sample of scale 0.02: the ML dispersion (= scale at alpha=1) is close to 0.02
    gamma = fit.params["gamma"]
    assert gamma == pytest.approx(0.02, rel=0.1)
    assert fit.pdf(np.array([0.0]))[0] == pytest.approx(1 / (np.pi * gamma), rel=1e-3)
    # and it is the maximum of the likelihood: scipy's Cauchy fit with location fixed at 0
    from scipy import stats

    _, scale = stats.cauchy.fit(w.numpy(), floc=0)
    assert gamma == pytest.approx(scale, rel=1e-3)


def test_fitted_gaussian_and_laplace_are_maximum_likelihood():
    w = np.random.default_rng(1).normal(0, 0.3, 20000)
    assert fitted_prior_density("l2", w).params["sigma"] == pytest.approx(0.3, rel=0.02)
    from scipy import stats

    _, b = stats.laplace.fit(w, floc=0)
    assert fitted_prior_density("l1", w).params["b"] == pytest.approx(b, rel=1e-9)


def test_prune_layer_and_spectrum_plots(tmp_path):
    c1 = [{"fraction": f, "metric": 30 - 20 * f**4} for f in (0, 0.5, 0.9, 0.99)]
    c2 = [{"fraction": f, "metric": 28 - 5 * f} for f in (0, 0.5, 0.9, 0.99)]
    one = plot_prune_curves({"sas": c1}, tmp_path / "p1.png", metric_name="BLEU")
    two = plot_prune_curves({"sas": c1, "l2": c2}, tmp_path / "p2.png", metric_name="BLEU")
    assert _png_pixels(one)[1] != _png_pixels(two)[1]
    bars = plot_layer_sparsity({"enc.0.w": 0.1, "enc.1.w": 0.7}, tmp_path / "bars.png")
    _png_pixels(bars)
    hist = [{"step": s, "spectrum/enc.0.w/alpha": 3 + s / 10, "spectrum/mean_alpha": 3.0} for s in range(5)]
    _png_pixels(plot_spectrum_history(hist, tmp_path / "alpha.png"))
    with pytest.raises(ValueError, match="`curves`"):
        plot_prune_curves({}, tmp_path / "x.png")


RESULTS = {
    "task": "translation",
    "test_bleu": 12.3456,
    "test_chrf": 40.5,
    "test_bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
    "sparsity": {"regularized": {"1e-08": 0.25, "0.001": 0.5, "0.01": 0.75},
                 "all": {"1e-08": 0.2, "0.001": 0.45, "0.01": 0.7}},
    "prune_curve": [{"fraction": 0.0, "metric": 12.3}, {"fraction": 0.9, "metric": 11.5}],
    "sparsity_at_1pt_loss": 0.9,
    "regularizer": {"regularizer": "sas", "reg_strength": 1e-4, "reg_mode": "coupled", "sas_alpha": 1.5,
                    "sas_gamma": 0.5},
    "dataset_name": "ding-de-en",
    "dataset_split": "test",
    "training": {"optimizer": "sgd", "learning_rate": 0.1, "max_steps": 300},
}


def test_model_card_round_trips_through_modelcard_load(tmp_path):
    card = render_model_card(RESULTS, model_name="tiny-sas", plots=["plots/prune_curve.png"])
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    results = {(r.metric_type, r.metric_name): r.metric_value for r in loaded.data.eval_results}
    assert results[("bleu", "BLEU")] == round(RESULTS["test_bleu"], 4)
    assert results[("chrf", "chrF")] == RESULTS["test_chrf"]
    assert results[("sparsity", "sparsity regularized |w|<=0.001")] == 0.5
    assert results[("sparsity", "sparsity all |w|<=1e-08")] == 0.2
    bleu = next(r for r in loaded.data.eval_results if r.metric_type == "bleu")
    assert bleu.metric_config == RESULTS["test_bleu_signature"]
    assert bleu.task_type == "translation" and bleu.dataset_split == "test"
    text = loaded.text
    assert "arXiv:2412.20724" in text and "@article{adigun2024softdiamond" in text
    assert "| `sas_alpha` | 1.500000 |" in text
    assert "![prune curve](plots/prune_curve.png)" in text
    assert "Largest pruned fraction within 1 point" in text and "**90%**" in text
    assert loaded.data.language == ["de", "en"] and "sas" in loaded.data.tags


def test_image_card_and_missing_metric():
    card = render_model_card({"task": "image-classification", "test_accuracy": 91.25,
                              "regularizer": {"regularizer": "pwd", "lp_p": 0.8}, "dataset_name": "fashion_mnist"},
                             model_name="resnet-pwd")
    r = card.data.eval_results[0]
    assert (r.metric_type, r.metric_value, r.task_type) == ("accuracy", 91.25, "image-classification")
    assert "arXiv:2404.10824" in card.text
    with pytest.raises(ValueError, match="no task metric"):
        render_model_card({"task": "translation"}, model_name="x")


def test_image_card_reports_live_sparsity_and_live_prune_curve():
    results = {"task": "image-classification", "test_accuracy": 91.25, "regularizer": {"regularizer": "l1"},
               "sparsity": {"regularized": {"1e-08": 0.6, "1e-03": 0.7}, "live": {"1e-08": 0.1, "1e-03": 0.3}},
               "sparsity_numel": {"regularized": 1226784, "live": 538656},
               "prune_curve": [{"fraction": 0.0, "metric": 91.25}, {"fraction": 0.9, "metric": 80.0}],
               "prune_curve_live": [{"fraction": 0.0, "metric": 91.25}, {"fraction": 0.9, "metric": 60.5}]}
    card = render_model_card(results, model_name="resnet-l1")
    values = {r.metric_name: r.metric_value for r in card.data.eval_results if r.metric_type == "sparsity"}
    assert values["sparsity live |w|<=1e-03"] == 0.3 and values["sparsity regularized |w|<=1e-03"] == 0.7
    assert "| live (regularized, not padding-only) | 10.00% | 30.00% |" in card.text
    assert "538,656 of 1,226,784 regularized weights are live" in card.text
    assert "| 90% | 80.00 | 60.50 |" in card.text  # the live column beside the all-weights one
    plain = render_model_card({k: v for k, v in results.items() if k != "prune_curve_live"}, model_name="x")
    assert "| 90% | 80.00 |\n" in plain.text and "live weights pruned" not in plain.text


def test_image_card_without_padding_only_taps_does_not_repeat_the_figures():
    """A ViT records live == regularized (no padding-only taps): no second identical row or
    prune column, and the card says every weight is live."""
    results = {"task": "image-classification", "test_accuracy": 80.0, "regularizer": {"regularizer": "l1"},
               "sparsity": {"regularized": {"1e-03": 0.4}, "live": {"1e-03": 0.4}, "all": {"1e-03": 0.35}},
               "sparsity_numel": {"regularized": 1000, "live": 1000, "all": 1200},
               "prune_curve": [{"fraction": 0.0, "metric": 80.0}, {"fraction": 0.9, "metric": 70.0}],
               "prune_curve_live": [{"fraction": 0.0, "metric": 80.0}, {"fraction": 0.9, "metric": 70.0}]}
    card = render_model_card(results, model_name="vit-l1")
    assert "not padding-only" not in card.text and "live weights pruned" not in card.text
    assert "Every regularized weight is live" in card.text
    assert "| 90% | 70.00 |\n" in card.text and "| regularized | 40.00% |" in card.text
    names = {r.metric_name for r in card.data.eval_results if r.metric_type == "sparsity"}
    assert names == {"sparsity regularized |w|<=1e-03", "sparsity all |w|<=1e-03"}
