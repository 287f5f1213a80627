"""Headless matplotlib figures saved as PNG next to a run's results.

* :func:`plot_weight_histogram`: histogram of the regularized weights on a log-count
  axis, with the prior family overlaid as expected counts per bin (SaS at the run's alpha
  for ``sas``, Gaussian for ``l2``, Laplace for ``l1``/``pwd``/``lp``), its scale fitted to
  the weights by maximum likelihood (the run's own prior, at its gamma, dashed for ``sas``).
* :func:`plot_prune_curves`: task metric against the pruned fraction, one line per run.
* :func:`plot_frontier`: a study's metric-sparsity frontier, every arm in one figure.
* :func:`plot_layer_sparsity`: per-layer fraction of ``|w| <= tau`` as horizontal bars.
* :func:`plot_spectrum_history`: per-layer Hill alpha over training steps.

Every function returns the path it wrote. Figures never depend on global pyplot
state (an ``Agg`` figure per call), so they are safe in training processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import optimize, stats


def _new_panels(width: float, height: float, count: int) -> tuple[Figure, list[object]]:
    """A figure of ``count`` panels side by side, drawn off-screen (Agg)."""
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, count, i + 1) for i in range(count)]


def _new_figure(width: float = 7.0, height: float = 4.5) -> tuple[Figure, object]:
    fig, (ax,) = _new_panels(width, height, 1)
    return fig, ax


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _as_numpy(weights: torch.Tensor | np.ndarray | Sequence[torch.Tensor]) -> np.ndarray:
    if isinstance(weights, np.ndarray):
        return weights.ravel().astype(np.float64)
    if isinstance(weights, torch.Tensor):
        return weights.detach().float().cpu().numpy().ravel().astype(np.float64)
    return np.concatenate([_as_numpy(w) for w in weights]) if len(weights) else np.zeros(0)


@dataclass(frozen=True)
class FittedPrior:
    """A prior family fitted to weights: its label, fitted parameters and density."""

    label: str
    params: dict[str, float]
    pdf: Callable[[np.ndarray], np.ndarray]


def density_family_of(regularizer: str) -> str | None:
    """The family a regularizer's plots fit (its registered ``density_family``); family names pass through."""
    if regularizer in ("gaussian", "laplace", "sas"):
        return regularizer
    from ..regularizers import get_regularizer_class

    try:
        return get_regularizer_class(regularizer).density_family
    except ValueError:
        return "laplace"


def fitted_prior_density(regularizer: str, weights: np.ndarray, *, alpha: float | None = None) -> FittedPrior:
    """Maximum-likelihood fit (zero location) of the run's prior family to ``weights``.

    The family is the regularizer's registered ``density_family`` (or a family name):
    ``gaussian`` (sigma; also SaS at alpha 2); ``sas`` at the given alpha (dispersion gamma);
    ``laplace`` (scale b) otherwise.
    """
    family = density_family_of(regularizer) or "laplace"
    w = weights[np.isfinite(weights)]
    if family == "gaussian" or (family == "sas" and alpha == 2.0):
        sigma = float(np.sqrt(np.mean(w**2))) or 1e-12
        return FittedPrior(f"Gaussian fit, sigma={sigma:.3g}", {"sigma": sigma},
                           lambda x: stats.norm.pdf(x, scale=sigma))
    if family == "sas" and alpha is not None:
        from ..priors.sas import sas_log_pdf

        sample = w if w.size <= 200_000 else np.random.default_rng(0).choice(w, 200_000, replace=False)
        t = torch.from_numpy(sample)

        def nll(log_gamma: float) -> float:
            return -float(sas_log_pdf(t, alpha, math.exp(log_gamma)).sum())

        scale0 = float(np.median(np.abs(sample))) or 1e-6
        center = alpha * math.log(scale0)  # log dispersion of a prior whose scale is the median |w|
        res = optimize.minimize_scalar(nll, bounds=(center - 12.0, center + 12.0), method="bounded",
                                       options={"xatol": 1e-6})
        gamma = math.exp(res.x)
        return FittedPrior(
            f"SaS fit, alpha={alpha:g}, gamma={gamma:.3g}", {"alpha": alpha, "gamma": gamma},
            lambda x: np.exp(sas_log_pdf(torch.from_numpy(np.asarray(x, np.float64)), alpha, gamma).numpy()))
    b = float(np.mean(np.abs(w))) or 1e-12
    return FittedPrior(f"Laplace fit, b={b:.3g}", {"b": b}, lambda x: stats.laplace.pdf(x, scale=b))


def expected_bin_counts(pdf: Callable[[np.ndarray], np.ndarray], edges: np.ndarray, n: int,
                        points_per_bin: int = 64) -> np.ndarray:
    """``n`` times each bin's probability under ``pdf`` (midpoint rule, ``points_per_bin`` per bin).

    Each bin's probability is capped at 1 and the total at 1 (a density much narrower than a
    bin is under-resolved by any quadrature; the cap keeps the curve on the data's scale).
    """
    edges = np.asarray(edges, dtype=np.float64)
    lo, hi = edges[:-1, None], edges[1:, None]
    offsets = (np.arange(points_per_bin) + 0.5) / points_per_bin
    xs = lo + (hi - lo) * offsets[None, :]
    dens = np.nan_to_num(np.asarray(pdf(xs.ravel()), dtype=np.float64).reshape(xs.shape), nan=0.0, posinf=0.0)
    prob = np.minimum(dens.mean(axis=1) * (edges[1:] - edges[:-1]), 1.0)
    total = prob.sum()
    if total > 1.0:
        prob = prob / total
    return n * prob


def _run_prior_log_density(regularizer: str, hparams: Mapping[str, float]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The run's own prior density (the registered ``log_density`` at the run's hyperparameters), or None."""
    from ..regularizers import get_regularizer_class

    try:
        cls = get_regularizer_class(regularizer)
        if cls.log_density(torch.zeros(1, dtype=torch.float64), dict(hparams)) is None:
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return lambda x: np.exp(cls.log_density(torch.from_numpy(np.asarray(x, np.float64)), dict(hparams)).numpy())


def plot_weight_histogram(weights, path: str | Path, *, regularizer: str = "none",
                          hparams: Mapping[str, float] | None = None, bins: int = 201,
                          title: str | None = None) -> Path:
    """Histogram of ``weights`` (log counts) with the fitted prior density as expected counts."""
    hparams = dict(hparams or {})
    w = _as_numpy(weights)
    if w.size == 0:
        raise ValueError("`weights` is empty: nothing to plot")
    lim = float(np.quantile(np.abs(w), 0.999)) or 1e-6
    counts, edges = np.histogram(w, bins=bins, range=(-lim, lim))
    centers = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = _new_figure()
    ax.bar(centers, np.maximum(counts, 0.5), width=edges[1] - edges[0], color="#4c72b0", alpha=0.75,
           label=f"weights (n={w.size:,})")
    family = density_family_of(regularizer)
    alpha = hparams.get("sas_alpha") if family == "sas" else None
    zero = float(np.mean(np.abs(w) <= 1e-8))
    # a sparse run's exact zeros are a point mass no continuous prior fits: fit the rest
    fit_w = w[np.abs(w) > 1e-8] if zero > 0.01 else w
    if family is not None and fit_w.size:
        fit = fitted_prior_density(regularizer, fit_w, alpha=alpha)
        # overlays are expected counts per bin (n * probability of the bin), on the bars' scale:
        # a point density times the bin width would spike for priors far narrower than a bin
        label = fit.label + (f" (to the {fit_w.size:,} nonzero weights)" if fit_w.size < w.size else "")
        ax.stairs(np.maximum(expected_bin_counts(fit.pdf, edges, fit_w.size), 0.5), edges, color="#dd8452", lw=2,
                  label=label, baseline=None)
    run_prior = _run_prior_log_density(regularizer, hparams)
    if run_prior is not None:
        ax.stairs(np.maximum(expected_bin_counts(run_prior, edges, w.size), 0.5), edges, color="#55a868", lw=1.5,
                  ls="--", baseline=None, label="run prior (" + ", ".join(
                      f"{k}={v:g}" for k, v in hparams.items() if k.startswith(regularizer) and isinstance(v, float))
                  + ", expected counts)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5, top=2.0 * max(float(counts.max()), 1.0))
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log scale)")
    ax.set_title(title or f"Regularized weights ({regularizer}); exact zeros {100 * zero:.1f}%")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_prune_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, *,
                      metric_name: str = "metric", title: str | None = None) -> Path:
    """One line per run: metric after global magnitude pruning vs pruned fraction (%)."""
    if not curves:
        raise ValueError("`curves` is empty: nothing to plot")
    fig, ax = _new_figure()
    for label, curve in curves.items():
        pts = sorted((float(c["fraction"]), float(c["metric"])) for c in curve)
        ax.plot([100 * f for f, _ in pts], [m for _, m in pts], marker="o", ms=3, label=label)
    ax.set_xlabel("regularized weights pruned by magnitude (%)")
    ax.set_ylabel(metric_name)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Prune curve ({metric_name})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _family(arm: str) -> str:
    """An arm's name without its grid point: ``sas_a0.5[reg_strength=0.01]`` -> ``sas_a0.5``."""
    return arm.split("[", 1)[0]


def frontier_zoom(series: Mapping[str, Mapping[str, object]], zoom: float = 0.2,
                  ) -> tuple[float, tuple[float, float], tuple[float, float], int]:
    """The trained-models panel of :func:`plot_frontier`: ``(floor, x limits, y limits, hidden)``.

    The arms shown are those whose mean metric is at least ``floor = best - zoom * |best|``
    (higher is better); the y limits span their intervals (the mean where an interval has NaN
    bounds), padded by 5% of that span or 1% of its top, whichever is larger; the x limits
    their sparsities (percent) from -2 to 10% past the sparsest, and ``hidden`` counts the arms
    below the floor.
    """
    if not 0 <= zoom:
        raise ValueError(f"`zoom` must be >= 0, got {zoom}")
    means = [s["metric"].mean for s in series.values()]
    floor = max(means) - zoom * abs(max(means))
    shown = [s for s in series.values() if s["metric"].mean >= floor]
    low = min(s["metric"].mean if math.isnan(s["metric"].low) else s["metric"].low for s in shown)
    high = max(s["metric"].mean if math.isnan(s["metric"].high) else s["metric"].high for s in shown)
    pad = max(0.05 * (high - low), 0.01 * abs(high), 1e-6)
    right = min(102.0, 1.1 * max(s["sparsity"] for s in shown) + 3)
    return floor, (-2.0, right), (low - pad, high + pad), len(means) - len(shown)


def plot_frontier(series: Mapping[str, Mapping[str, object]], path: str | Path, *, metric_name: str = "metric",
                  title: str | None = None, zoom: float = 0.2, weights: str = "regularized weights") -> Path:
    """Metric against sparsity for every arm of a study stage, one figure in two panels.

    ``series``: arm -> ``{"sparsity": percent of regularized weights <= 1e-3, "metric": an
    interval with ``mean``/``low``/``high`` (NaN bounds for one seed), "curve": [(percent
    <= 1e-3 after magnitude pruning, metric), ...]}`` (:func:`..run.report.frontier_series`).
    Left, the trained models: each arm a marker at its own sparsity with its interval as an
    error bar (metric on the whole split; higher is better), the metric axis fitted to the arms
    within ``zoom`` (relative) of the best one so that arms a fraction of a point apart stay
    apart; a note counts the arms below it. Right, the same markers with a dashed line through
    each arm's prune curve (metric on the prune subset) over the whole 0-100% range. Arms of
    one family (the name before ``[``, a grid) share a colour and marker. Up and to the
    right is better. ``weights`` names what the sparsity is a fraction of (the x axes), e.g.
    ``"live regularized weights"`` for a series measured over the live weights.
    """
    if not series:
        raise ValueError("`series` is empty: nothing to plot")
    fig, (trained, pruned) = _new_panels(12.0, 5.5, 2)
    families = sorted({_family(a) for a in series}, key=lambda f: (f != "none", f))  # the reference first
    markers = "osD^vP*Xh<>"
    labelled: set[str] = set()
    for arm, s in series.items():
        family = _family(arm)
        index = families.index(family)
        colour, marker = f"C{index % 10}", markers[(index // 10) % len(markers)]
        interval = s["metric"]
        yerr = None
        if not (math.isnan(interval.low) or math.isnan(interval.high)):
            yerr = [[interval.mean - interval.low], [interval.high - interval.mean]]
        label = family if family not in labelled else None
        labelled.add(family)
        for ax in (trained, pruned):
            ax.errorbar([s["sparsity"]], [interval.mean], yerr=yerr, color=colour, marker=marker, ms=6, capsize=3,
                        linestyle="none", label=label if ax is trained else None)
        curve = list(s.get("curve") or [])  # in pruned-fraction order: x = max(f, s) never decreases
        if curve:
            pruned.plot([x for x, _ in curve], [y for _, y in curve], color=colour, linestyle="--", linewidth=1,
                        alpha=0.7)
    floor, x_limits, y_limits, hidden = frontier_zoom(series, zoom)
    trained.set_xlim(*x_limits)
    trained.set_ylim(*y_limits)
    if hidden:
        trained.text(0.99, 0.01, f"{hidden} arm{'s' if hidden > 1 else ''} below {floor:.3g}: right panel",
                     transform=trained.transAxes, ha="right", va="bottom", fontsize=7, color="0.3")
    trained.set_xlabel(f"{weights} with |w| ≤ 1e-3 (%)")
    trained.set_title("as trained (error bars: 95% CI over seeds)", fontsize=9)
    pruned.set_xlabel(f"{weights} with |w| ≤ 1e-3 (%); dashed: after magnitude pruning")
    pruned.set_title("and after magnitude pruning (prune subset)", fontsize=9)
    pruned.set_xlim(-2, 102)
    for ax in (trained, pruned):
        ax.set_ylabel(metric_name)
        ax.grid(alpha=0.3)
    trained.legend(fontsize=7, ncol=2, loc="best")
    fig.suptitle(title or f"{metric_name} against sparsity")
    return _save(fig, path)


def plot_layer_sparsity(per_layer: Mapping[str, float], path: str | Path, *, tau: float = 1e-3,
                        max_layers: int = 60, title: str | None = None) -> Path:
    """Horizontal bars: fraction of ``|w| <= tau`` per layer (``per_layer``: name -> fraction)."""
    if not per_layer:
        raise ValueError("`per_layer` is empty: nothing to plot")
    items = list(per_layer.items())[:max_layers]
    fig, ax = _new_figure(7.0, max(3.0, 0.18 * len(items) + 1.2))
    ax.barh(range(len(items)), [100 * v for _, v in items], color="#55a868")
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([n for n, _ in items], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"weights with |w| <= {tau:g} (%)")
    ax.set_title(title or "Per-layer sparsity")
    return _save(fig, path)


def plot_spectrum_history(history: Sequence[Mapping[str, float]], path: str | Path, *,
                          key_suffix: str = "/alpha", max_layers: int = 24, title: str | None = None) -> Path:
    """Per-layer Hill alpha over training from a spectrum monitor history.

    ``history``: list of dicts with a ``step`` key and ``spectrum/<layer>/alpha`` keys.
    """
    if not history:
        raise ValueError("`history` is empty: nothing to plot")
    layers = sorted({k for h in history for k in h if k.startswith("spectrum/") and k.endswith(key_suffix)
                     and not k.startswith("spectrum/mean")})[:max_layers]
    if not layers:
        raise ValueError(f"no keys ending in {key_suffix!r} in `history`")
    fig, ax = _new_figure()
    steps = [h.get("step", i) for i, h in enumerate(history)]
    for key in layers:
        ax.plot(steps, [h.get(key, np.nan) for h in history], lw=1, alpha=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("Hill alpha of the ESD")
    ax.set_title(title or f"Heavy-tail exponent per layer ({len(layers)} layers)")
    ax.grid(alpha=0.3)
    return _save(fig, path)
