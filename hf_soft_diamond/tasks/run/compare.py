"""Compare regularizer settings on one task: several arms x seeds, one table.

Each run is the task's training job (``hf_soft_diamond.tasks.run.translation`` or
``hf_soft_diamond.tasks.run.image``) started as its own process with a JSON config that
merges the base config, the arm's overrides, the seed and the run's output dir (saved as
``<output_dir>/<arm>/seed<k>/run_config.json``, beside the model's own ``config.json``, so
every run can be re-run alone and ``hf-soft-diamond export`` finds it). Runs go one after
another (``--jobs N``: N at a time); ``--launcher`` puts e.g. ``torchrun --nproc_per_node 2``
in front of each. A finished run (its ``all_results.json``
exists) is not run again unless ``--overwrite``.

Outputs in ``--output_dir``: ``comparison.md`` (mean +- std over seeds of the task
metric, sparsity of the regularized weights at each threshold and, for runs that record
it, of the live weights (image models: not padding-only), sparsity at <= 1 point loss,
wall time), ``comparison.json`` (every run's results and the aggregates) and
``prune_curves.png`` (mean prune curve per arm).

Arms file (JSON)::

    {"l2":  {"regularizer": "l2", "reg_mode": "decoupled", "reg_strength": 0.01},
     "sas": {"regularizer": "sas", "reg_strength": 1e-4, "sas_alpha": 0.5, "sas_gamma": 0.5}}

Tuning on the validation split: an arm may hold a ``"grid"`` of values to try, e.g.
``{"sas": {"regularizer": "sas", "sas_alpha": 0.5, "grid": {"sas_gamma": [0.01, 0.1],
"reg_strength": [1e-5, 1e-4]}}}`` expands into the four arms ``sas[reg_strength=1e-05,sas_gamma=0.01]``
... With ``--split validation`` every run evaluates (and draws its prune curve) on the
validation split only (``final_split: validation``; the test split is never read), and
``best_arms.json`` keeps, per arm, the grid point with the best mean validation metric:
an arms file for the final runs on the test split (``--split test``, the default);
``sparsest_arms.json`` the grid point with the most weights at ``|w| <= 1e-3`` among those
within 1 point of the ``none`` arm (:func:`sparsest_within`; ``--tolerance``; counted over the
live weights when the runs record them: image runs, :mod:`hf_soft_diamond.padding_taps`).

``--metric`` chooses what ranks the grid points and heads the table: the task's headline
metric by default (BLEU, accuracy), or any other the runs report (:data:`TASK_METRICS`:
``chrf``, ``loss``; a loss ranks lower-is-better). At budgets where BLEU is near zero,
validation cross-entropy separates settings that BLEU cannot. The tables show every
metric the runs report.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .reuse import (
    RECORDED_FILES,
    RUN_CONFIG_NAME,
    TRAINED_IN_KEY,
    TrainedRun,
    config_key,
    differing_settings,
    evaluation_config,
    recorded_runs,
    trained_runs,
    training_key,
    with_training_results,
)

TASK_MODULES = {"translation": "hf_soft_diamond.tasks.run.translation", "image": "hf_soft_diamond.tasks.run.image"}
#: The task's headline metric (results key suffix, label): what the prune curves measure.
TASK_METRIC = {"translation": ("bleu", "BLEU"), "image": ("accuracy", "accuracy (%)")}
#: Every metric a task's results hold: name -> (label, higher is better). Any of them can
#: rank the grid points (``--metric``); the tables show them all.
TASK_METRICS: dict[str, dict[str, tuple[str, bool]]] = {
    "translation": {"bleu": ("BLEU", True), "chrf": ("chrF", True), "loss": ("loss (nats/token)", False)},
    "image": {"accuracy": ("accuracy (%)", True), "loss": ("loss (nats)", False)},
}
SPLIT_PREFIX = {"test": "test", "validation": "eval"}
GRID_KEY = "grid"


def _check_metric(task: str, metric: str | None) -> str:
    metric = metric or TASK_METRIC[task][0]
    if metric not in TASK_METRICS[task]:
        raise ValueError(f"`metric` must be one of {sorted(TASK_METRICS[task])} for task {task!r}, got {metric!r}.")
    return metric


def metric_key(task: str, split: str = "test", metric: str | None = None) -> str:
    """The results key of a task metric on ``split``: ``test_bleu``, ``eval_accuracy``, ``eval_loss``, ...

    ``metric``: a name of :data:`TASK_METRICS` (default: the task's headline metric)."""
    if split not in SPLIT_PREFIX:
        raise ValueError(f"`split` must be one of {sorted(SPLIT_PREFIX)}, got {split!r}.")
    return f"{SPLIT_PREFIX[split]}_{_check_metric(task, metric)}"


def _grid_label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_grid(arms: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Arms with their ``"grid"`` expanded: one arm per combination, named ``arm[k1=v1,k2=v2]`` (keys sorted).

    Returns ``{name: overrides}``; an arm without a grid is kept as is.
    """
    out: dict[str, dict[str, Any]] = {}
    for arm, overrides in arms.items():
        overrides = dict(overrides)
        grid = overrides.pop(GRID_KEY, None)
        if grid is None:
            out[arm] = overrides
            continue
        if not isinstance(grid, Mapping) or not grid or any(
                not isinstance(v, list) or not v for v in grid.values()):
            raise ValueError(f"arm {arm!r}: `grid` must map each setting to a non-empty list of values, got {grid!r}.")
        keys = sorted(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            name = f"{arm}[{','.join(f'{k}={_grid_label(v)}' for k, v in zip(keys, combo))}]"
            out[name] = {**overrides, **dict(zip(keys, combo))}
    return out


def _pick_per_arm(summary: Mapping[str, Mapping[str, Any]], arms: Mapping[str, Mapping[str, Any]],
                  score: Any) -> dict[str, dict[str, Any]]:
    """Per arm: the overrides of the grid point with the highest ``score(summary_entry)``
    (``None`` or NaN: not eligible); ties keep the first point in expansion order."""
    picked: dict[str, dict[str, Any]] = {}
    for arm, overrides in arms.items():
        candidates = expand_grid({arm: overrides})
        scored = [(value, -i, name) for i, name in enumerate(candidates) if name in summary
                  for value in [score(summary[name])] if value is not None and not math.isnan(value)]
        if scored:
            picked[arm] = candidates[max(scored)[2]]
    return picked


def best_of_grid(summary: Mapping[str, Mapping[str, Any]], arms: Mapping[str, Mapping[str, Any]],
                 higher_is_better: bool = True) -> dict[str, dict[str, Any]]:
    """Per arm of ``arms`` (before expansion): the overrides of its grid point with the best mean metric.

    ``summary`` is :func:`aggregate`'s output over the expanded arms; ``higher_is_better``
    False for a loss. Ties keep the first grid point in expansion order; arms whose runs
    all lack the metric are left out.
    """
    sign = 1.0 if higher_is_better else -1.0
    return _pick_per_arm(summary, arms, lambda entry: sign * entry["metric"][0])


def sparsest_within(summary: Mapping[str, Mapping[str, Any]], arms: Mapping[str, Mapping[str, Any]],
                    max_loss: float = 1.0, tau: str = "1e-03", reference: str = "none",
                    higher_is_better: bool = True) -> dict[str, dict[str, Any]]:
    """Per arm: the grid point with the most weights at ``|w| <= tau`` among those whose mean
    metric is at most ``max_loss`` worse than the reference arm's (``reference``, or the best
    grid point overall when there is no such arm). Arms with no such point are left out.
    ``higher_is_better`` False for a loss (worse = higher). The weights counted are the live
    ones (``live_sparsity``: not padding-only) when every run of the summary records them, so
    that zeros no input could ever move do not choose the point; else all regularized ones.

    The papers' claim is accuracy *and* sparsity; :func:`best_of_grid` picks accuracy alone,
    which at one seed is often a coin toss between settings within noise of each other.
    """
    sign = 1.0 if higher_is_better else -1.0  # compare sign * metric: higher is better
    if reference in summary:
        floor = sign * summary[reference]["metric"][0] - max_loss
    else:
        floor = max(sign * s["metric"][0] for s in summary.values() if not math.isnan(s["metric"][0])) - max_loss
    group = "live_sparsity" if all(entry.get("live_sparsity") for entry in summary.values()) else "sparsity"
    return _pick_per_arm(summary, arms, lambda entry: entry[group].get(tau, (math.nan,))[0]
                         if sign * entry["metric"][0] >= floor else None)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _fmt(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def aggregate(runs: Mapping[str, Sequence[Mapping[str, Any]]], task: str, split: str = "test",
              metric: str | None = None) -> dict[str, dict[str, Any]]:
    """Per arm: mean/std of the ranking ``metric`` (default: the task's headline metric) and of
    every task metric on ``split``, sparsity per threshold, sparsity at <=1pt loss, time."""
    key = metric_key(task, split, metric)
    out: dict[str, dict[str, Any]] = {}
    for arm, results in runs.items():
        taus = sorted({t for r in results for t in (r.get("sparsity") or {}).get("regularized", {})}, key=float)
        entry: dict[str, Any] = {
            "n_runs": len(results),
            "metric": _mean_std([r.get(key, float("nan")) for r in results]),
            "metrics": {name: _mean_std([r.get(metric_key(task, split, name), float("nan")) for r in results])
                        for name in TASK_METRICS[task]},
            "sparsity": {t: _mean_std([r["sparsity"]["regularized"].get(t, float("nan")) for r in results])
                         for t in taus},
            # over the live weights (not padding-only), where every run of the arm records them
            "live_sparsity": {t: _mean_std([r["sparsity"]["live"].get(t, float("nan")) for r in results])
                              for t in taus} if all("live" in (r.get("sparsity") or {}) for r in results) else {},
            "sparsity_at_1pt_loss": _mean_std([r.get("sparsity_at_1pt_loss", float("nan")) for r in results]),
            "wall_time_s": _mean_std([r.get("wall_time_s", r.get("train_runtime", float("nan"))) for r in results]),
        }
        fractions = sorted({float(p["fraction"]) for r in results for p in r.get("prune_curve") or []})
        entry["prune_curve"] = [
            {"fraction": f, "metric": _mean_std([p["metric"] for r in results for p in r.get("prune_curve") or []
                                                 if float(p["fraction"]) == f])[0]}
            for f in fractions
        ]
        out[arm] = entry
    return out


def markdown_table(summary: Mapping[str, Mapping[str, Any]], task: str, split: str = "test",
                   metric: str | None = None) -> str:
    """The comparison as one Markdown table (values are mean ± std over seeds): the ranking
    ``metric`` first (marked ▲ or ▼: higher or lower is better), then the task's other metrics
    that any run reported, sparsity of the regularized weights per threshold and, where any arm
    records them, of the live weights (not padding-only; "n/a" for an arm without them)."""
    metric = _check_metric(task, metric)
    where = " (validation)" if split == "validation" else ""
    others = [m for m in TASK_METRICS[task] if m != metric and any(
        not math.isnan(s.get("metrics", {}).get(m, (math.nan,))[0]) for s in summary.values())]
    label, higher = TASK_METRICS[task][metric]
    taus = sorted({t for s in summary.values() for t in s["sparsity"]}, key=float)
    live_taus = sorted({t for s in summary.values() for t in s.get("live_sparsity") or {}}, key=float)
    head = ["arm", "runs", f"{label}{where} {'▲' if higher else '▼'}"] + [TASK_METRICS[task][m][0] for m in others]
    head += [f"sparsity ≤{t} (%)" for t in taus] + [f"live ≤{t} (%)" for t in live_taus]
    head += [f"sparsity at ≤1pt {TASK_METRIC[task][1].split(' ')[0]} loss (%)", "wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    digits = {m: 3 if m == "loss" else 2 for m in TASK_METRICS[task]}  # losses differ in the third digit
    for arm, s in summary.items():
        row = [arm, str(s["n_runs"]), _fmt(*s["metric"], digits=digits[metric])]
        row += [_fmt(*s["metrics"][m], digits=digits[m]) for m in others]
        row += [_fmt(*s["sparsity"].get(t, (float("nan"), float("nan"))), scale=100) for t in taus]
        row += [_fmt(*(s.get("live_sparsity") or {}).get(t, (float("nan"), float("nan"))), scale=100)
                for t in live_taus]
        row += [_fmt(*s["sparsity_at_1pt_loss"], scale=100, digits=0), _fmt(*s["wall_time_s"], digits=0)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def run_one(task: str, config: Mapping[str, Any], run_dir: Path, launcher: str = "", overwrite: bool = False,
            record_dir: Path | None = None, recorded: Mapping[str, Path] | None = None,
            trained: Mapping[str, TrainedRun] | None = None) -> dict[str, Any]:
    """Run one training job in its own process; return its ``all_results.json`` (+ wall time).

    A run with results in ``run_dir`` (or in ``record_dir``) is not run again unless
    ``overwrite``; nor is a run whose exact config (:func:`config_key`) is in ``recorded``
    (another stage of the study picked the same setting and seed): its recorded files are
    copied to ``record_dir``. A run whose training (:func:`training_key`) is in ``trained``
    (another stage trained the same model and its weights are here) only evaluates those
    weights (:func:`.reuse.evaluation_config`). A finished run's :data:`RECORDED_FILES` are
    copied to ``record_dir``.
    """
    results_path = run_dir / "all_results.json"
    # weights another stage trained for this very model, which an evaluation can reuse
    source = (trained or {}).get(training_key(config)) if config.get("do_train") and not overwrite else None
    if not overwrite:
        for done in (results_path, record_dir / "all_results.json" if record_dir is not None else None):
            if done is not None and done.exists():
                results = json.loads(done.read_text())
                if done == results_path and source is not None and _evaluates(run_dir, source):
                    # the study may have stopped before the training figures were added
                    results = _with_training_figures(results, run_dir, source)
                _record(run_dir, record_dir)
                return results
        # the very run recorded by another stage is copied, even when its weights are here too
        same = (recorded or {}).get(config_key(config))
        if same is None and source is not None:
            config = evaluation_config(config, source)
            same = (recorded or {}).get(config_key(config))
        if same is not None:
            _record(same, record_dir)
            return json.loads((same / "all_results.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / RUN_CONFIG_NAME  # not config.json: save_model writes the model's config there
    config_path.write_text(json.dumps({**config, "output_dir": str(run_dir)}, indent=2))
    # torchrun and `accelerate launch` both accept `-m module`, as python does
    cmd = (shlex.split(launcher) if launcher else [sys.executable]) + ["-m", TASK_MODULES[task], str(config_path)]
    start = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not results_path.exists():
        raise RuntimeError(f"run in {run_dir} failed (exit {proc.returncode}); see {run_dir / 'log.txt'}")
    results = json.loads(results_path.read_text())
    results.setdefault("wall_time_s", time.perf_counter() - start)
    results_path.write_text(json.dumps(results, indent=2))
    if source is not None:
        results = _with_training_figures(results, run_dir, source)
    _record(run_dir, record_dir)
    return results


def _evaluates(run_dir: Path, source: TrainedRun) -> bool:
    """Whether the run in ``run_dir`` is an evaluation-only run of ``source``'s weights."""
    ran_path = run_dir / RUN_CONFIG_NAME
    if not ran_path.is_file():
        return False
    ran = json.loads(ran_path.read_text())
    return not ran.get("do_train") and ran.get("model_name_or_path") == str(source.weights)


def _with_training_figures(results: dict[str, Any], run_dir: Path, source: TrainedRun) -> dict[str, Any]:
    """An evaluation-only run's ``results`` completed with ``source``'s training figures
    (:func:`.reuse.with_training_results`) and written back to ``run_dir``; results that already
    carry them are returned as they are (a resumed study adds them once)."""
    if TRAINED_IN_KEY in results:
        return results
    results = with_training_results(results, source)
    (run_dir / "all_results.json").write_text(json.dumps(results, indent=2))
    return results


def _record(run_dir: Path, record_dir: Path | None) -> None:
    """Copy the run's :data:`RECORDED_FILES` (those it has) to ``record_dir``."""
    if record_dir is None or not run_dir.is_dir():
        return
    record_dir.mkdir(parents=True, exist_ok=True)
    for name in RECORDED_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, record_dir / name)


def _check_finished_runs(planned: Sequence[tuple[str, int, Mapping[str, Any]]], output_dir: Path,
                         record: Path | None) -> None:
    """Raise, before anything runs, when a planned run's folder (in ``output_dir`` or the record)
    holds a finished run of another setting (say the tuning stage since picked another grid
    point for the arm): its results would otherwise stand for the planned run."""
    stale = []
    for arm, seed, config in planned:
        for folder in (output_dir / arm / f"seed{seed}", record / arm / f"seed{seed}" if record else None):
            if folder is None or not (folder / "all_results.json").is_file():
                continue
            if not (folder / RUN_CONFIG_NAME).is_file():
                stale.append(f"{folder} (finished, without its {RUN_CONFIG_NAME})")
                continue
            fields = differing_settings(config, json.loads((folder / RUN_CONFIG_NAME).read_text()))
            if fields:
                stale.append(f"{folder} (differs in {', '.join(fields)})")
    if stale:
        raise ValueError("these folders hold finished runs of other settings than the planned ones: "
                         + "; ".join(stale) + ". Move them away (a study's record is in git history), "
                         "or pass `--overwrite` (`overwrite=True`) to run them again.")


def compare(task: str, base_config: Mapping[str, Any], arms: Mapping[str, Mapping[str, Any]],
            seeds: Sequence[int], output_dir: str | Path, *, launcher: str = "", overwrite: bool = False,
            jobs: int = 1, split: str = "test", metric: str | None = None, tolerance: float = 1.0,
            record_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every arm x seed (``jobs`` at a time), then write comparison.md / comparison.json / prune_curves.png.

    Arms holding a ``"grid"`` are expanded first (:func:`expand_grid`). ``split``:
    ``"test"`` (final runs) or ``"validation"`` (tuning: runs never read the test split;
    ``best_arms.json`` holds each arm's best grid point by ``metric``, ``sparsest_arms.json``
    the sparsest within ``tolerance`` of ``none`` by ``metric``). Every arm's merged config is
    parsed by the task's argument classes first, so a bad setting fails before any run
    starts. ``record_dir``: each run's small files (:data:`RECORDED_FILES`) and the
    comparison's outputs are also written there, laid out like ``output_dir``; a run recorded
    there is not run again (commit it, and an interrupted or moved study loses nothing), nor is
    a run whose exact config is recorded in a sibling folder of ``record_dir`` (another stage of
    the same study, e.g. an arm whose sparsest grid point is also its best one); a run that would
    train the same model as a recorded run of another stage whose weights are still in its run
    folder (the tuning stage's seed 1 of the point the final stage picked) evaluates those
    weights on its split instead of training them again (:mod:`.reuse`).
    """
    if task not in TASK_MODULES:
        raise ValueError(f"`task` must be one of {sorted(TASK_MODULES)}, got {task!r}.")
    if split not in SPLIT_PREFIX:
        raise ValueError(f"`split` must be one of {sorted(SPLIT_PREFIX)}, got {split!r}.")
    if not arms:
        raise ValueError("`arms` is empty: give at least one regularizer setting")
    if not seeds:
        raise ValueError("`seeds` is empty: give at least one seed")
    if jobs < 1:
        raise ValueError(f"`jobs` must be >= 1, got {jobs}.")
    metric = _check_metric(task, metric)
    if not tolerance >= 0:
        raise ValueError(f"`tolerance` must be >= 0, got {tolerance}.")
    higher_is_better = TASK_METRICS[task][metric][1]
    output_dir = Path(output_dir)
    expanded = expand_grid(arms)
    planned = [(arm, int(seed), {**base_config, **overrides, "seed": int(seed), "final_split": split})
               for arm, overrides in expanded.items() for seed in seeds]
    for arm, seed, config in planned:  # every bad setting fails here, before any training
        validate_config(task, config, f"arm {arm!r} seed {seed}")
    record = Path(record_dir) if record_dir is not None else None
    if not overwrite:  # a finished run in a planned run's folder must be that run
        _check_finished_runs(planned, output_dir, record)
    # the study's other stages (the record folder's siblings): a setting already run there is reused
    recorded = recorded_runs(record.parent) if record is not None and record.parent.is_dir() else {}
    # ... and a model trained there whose weights are still here is evaluated, not trained again
    trained = trained_runs(record.parent) if record is not None and record.parent.is_dir() else {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # the threads only wait on child processes
        futures = [pool.submit(run_one, task, config, output_dir / arm / f"seed{seed}", launcher, overwrite,
                               record / arm / f"seed{seed}" if record is not None else None, recorded, trained)
                   for arm, seed, config in planned]
        results = [f.result() for f in futures]
    runs: dict[str, list[dict[str, Any]]] = {}
    for (arm, _, _), result in zip(planned, results):
        runs.setdefault(arm, []).append(result)
    for folder in (output_dir, record) if record is not None else (output_dir,):
        payload = write_comparison(task, runs, folder, split=split, metric=metric)
        if split == "validation":
            payload["best_arms"] = best_of_grid(payload["summary"], arms, higher_is_better)
            (folder / "best_arms.json").write_text(json.dumps(payload["best_arms"], indent=2) + "\n")
            payload["sparsest_arms"] = sparsest_within(payload["summary"], arms, max_loss=tolerance,
                                                       higher_is_better=higher_is_better)
            (folder / "sparsest_arms.json").write_text(json.dumps(payload["sparsest_arms"], indent=2) + "\n")
    return payload


def validate_config(task: str, config: Mapping[str, Any], where: str) -> None:
    """Parse ``config`` with the task script's argument dataclasses; raise ``ValueError`` naming ``where``."""
    import importlib
    import tempfile

    from .common import parse_config

    module = importlib.import_module(TASK_MODULES[task])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps({**config, "output_dir": str(Path(tmp) / "out")}))
        try:
            parse_config(module.ARGUMENT_CLASSES, [str(path)])
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from err


def write_comparison(task: str, runs: Mapping[str, Sequence[Mapping[str, Any]]], output_dir: str | Path,
                     split: str = "test", metric: str | None = None) -> dict[str, Any]:
    from ..plots import plot_prune_curves

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metric = _check_metric(task, metric)
    summary = aggregate(runs, task, split, metric)
    (output_dir / "comparison.md").write_text(markdown_table(summary, task, split, metric))
    payload = {"task": task, "split": split, "metric": metric, "summary": summary, "runs": runs}
    (output_dir / "comparison.json").write_text(json.dumps(payload, indent=2, default=list))
    curves = {arm: s["prune_curve"] for arm, s in summary.items() if s["prune_curve"]}
    if curves:
        plot_prune_curves(curves, output_dir / "prune_curves.png", metric_name=TASK_METRIC[task][1])
    return payload


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="hf-soft-diamond compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=sorted(TASK_MODULES))
    ap.add_argument("--base_config", required=True, help="JSON config of the task's training script")
    ap.add_argument("--arms", required=True, help="JSON file (or inline JSON) mapping arm name -> overrides")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--launcher", default="", help="command put in front of each run, e.g. 'torchrun "
                                                    "--nproc_per_node 2'; default: this Python")
    ap.add_argument("--overwrite", action="store_true", help="re-run runs that already have results")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own process (default 1: one after "
                                                         "another; mind the cores each run uses)")
    ap.add_argument("--metric", default=None, choices=sorted({m for ms in TASK_METRICS.values() for m in ms}),
                    help="what ranks the grid points and heads the table (default: bleu / accuracy); "
                         "translation: bleu, chrf, loss; image: accuracy, loss (loss: lower is better)")
    ap.add_argument("--tolerance", type=float, default=1.0,
                    help="sparsest_arms.json: the sparsest grid point at most this much worse than 'none' "
                         "in --metric (default 1: one BLEU / accuracy point)")
    ap.add_argument("--record_dir", default=None,
                    help="also keep each run's all_results.json and run_config.json, and the comparison's outputs, "
                         "here (a folder to commit); a run recorded here is not run again")
    ap.add_argument("--split", default="test", choices=sorted(SPLIT_PREFIX),
                    help="test (default): final runs. validation: tuning runs that never read the test split; "
                         "writes best_arms.json (each arm's best grid point) for the final runs")
    args = ap.parse_args(argv)
    base = json.loads(Path(args.base_config).read_text())
    arms_text = Path(args.arms).read_text() if Path(args.arms).exists() else args.arms
    arms = json.loads(arms_text)
    payload = compare(args.task, base, arms, args.seeds, args.output_dir, launcher=args.launcher,
                      overwrite=args.overwrite, jobs=args.jobs, split=args.split, metric=args.metric,
                      tolerance=args.tolerance, record_dir=args.record_dir)
    print(markdown_table(payload["summary"], args.task, args.split, payload["metric"]))
    if args.split == "validation":
        print(f"best grid point per arm ({payload['metric']}): {Path(args.output_dir) / 'best_arms.json'}; "
              f"sparsest within {args.tolerance:g} of 'none': {Path(args.output_dir) / 'sparsest_arms.json'}")


if __name__ == "__main__":
    main()
