#!/usr/bin/env python3
"""Add the live-weight figures to image runs recorded before runs measured them themselves.

Image runs write, next to the sparsity and prune curve of their regularized weights, the same
over the weights that are not padding-only (:mod:`hf_soft_diamond.padding_taps`; on 28x28
Fashion-MNIST the small ResNet has 56% padding-only weights): ``sparsity["live"]`` (since
2026-12-07 morning) and ``prune_curve_live`` (since 2026-12-07 afternoon). For a run recorded
earlier this measures its saved weights (the model in the run's output folder) and writes what
is missing into its ``all_results.json`` there and into the record copy, if one is given:

* ``sparsity["live"]``, ``sparsity_numel["live"]``: counted on the rebuilt model;
* ``prune_curve_live`` (with ``--prune_curve``): the image task evaluates the saved weights
  again without training (:func:`hf_soft_diamond.tasks.run.reuse.evaluation_config`, in a
  temporary folder) on the split and prune subset the run used. Its prune curve over all
  regularized weights must reproduce the recorded one (same weights, same images) to within
  ``--tolerance`` points at every fraction, or the run is reported and left alone.

    python3 scripts/backfill_live_sparsity.py runs/study_image_converged docs/studies/image_converged --prune_curve

Every ``<run>/all_results.json`` under the first folder with a ``model.safetensors`` beside it
is measured; its record is the same relative path under the second folder. Runs that already
have the figures are left alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from hf_soft_diamond.padding_taps import live_sparsity, padding_only_among
from hf_soft_diamond.regularizers import select_parameters
from hf_soft_diamond.tasks.export import load_run_model
from hf_soft_diamond.tasks.run.common import write_json
from hf_soft_diamond.tasks.run.reuse import TrainedRun, evaluation_config


def measure(run_dir: Path, results: dict) -> tuple[dict[str, float], int]:
    """Live sparsity of the run's saved weights, at the thresholds its results already use."""
    model = load_run_model(run_dir, image_shape=results["image_shape"])
    selected = select_parameters(model)
    if sum(p.numel() for _, p in selected) != results["sparsity_numel"]["regularized"]:
        raise ValueError(f"{run_dir}: the default selection is not the run's regularized set")
    thresholds = [float(t) for t in results["sparsity"]["regularized"]]
    dead = padding_only_among(model, torch.zeros(1, *results["image_shape"]), [n for n, _ in selected])
    return live_sparsity(selected, dead, thresholds)


def live_prune_curve(run_dir: Path, results: dict, tolerance: float) -> list[dict[str, float]] | None:
    """``prune_curve_live`` of the run's saved weights, or None (printed why) when the evaluation
    does not reproduce the recorded prune curve to within ``tolerance`` points."""
    from hf_soft_diamond.tasks.run.image import main as run_image

    config = json.loads((run_dir / "run_config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        evaluation = {**evaluation_config(config, TrainedRun(run_dir, run_dir)), "output_dir": tmp}
        path = Path(tmp) / "evaluation.json"
        path.write_text(json.dumps(evaluation))
        fresh = run_image([str(path)])
    recorded = {float(p["fraction"]): float(p["metric"]) for p in results["prune_curve"]}
    again = {float(p["fraction"]): float(p["metric"]) for p in fresh["prune_curve"]}
    worst = max(abs(recorded[f] - again.get(f, float("inf"))) for f in recorded)
    if set(again) != set(recorded) or not worst <= tolerance:
        print(f"{run_dir}: left alone: evaluated again, its prune curve differs from the recorded one by "
              f"{worst:.3g} points (tolerance {tolerance:g}): recorded {recorded}, now {again}")
        return None
    return fresh["prune_curve_live"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="folder of run output folders (weights and all_results.json)")
    parser.add_argument("record", type=Path, nargs="?", help="folder of the committed copies, same layout")
    parser.add_argument("--prune_curve", action="store_true",
                        help="also add prune_curve_live (evaluates each run's weights again: ~1-2 min a run)")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="largest difference (points) allowed between the recorded prune curve and the "
                             "one evaluated again (default 0.1: two images of 2,000)")
    args = parser.parse_args()
    if not args.tolerance >= 0:
        parser.error(f"--tolerance must be >= 0, got {args.tolerance}")
    for results_path in sorted(args.runs.rglob("all_results.json")):
        run_dir = results_path.parent
        results = json.loads(results_path.read_text())
        if not (run_dir / "model.safetensors").is_file():
            continue
        added: dict = {}
        if "live" not in results.get("sparsity", {}):
            added["live"] = measure(run_dir, results)
        if args.prune_curve and results.get("prune_curve") and "prune_curve_live" not in results:
            curve = live_prune_curve(run_dir, results, args.tolerance)
            if curve is not None:
                added["prune_curve_live"] = curve
        if not added:
            continue
        targets = [results_path]
        if args.record is not None and (args.record / results_path.relative_to(args.runs)).is_file():
            targets.append(args.record / results_path.relative_to(args.runs))
        for path in targets:
            payload = json.loads(path.read_text())
            if "live" in added:
                payload["sparsity"]["live"], payload["sparsity_numel"]["live"] = added["live"]
            if "prune_curve_live" in added:
                payload["prune_curve_live"] = added["prune_curve_live"]
            write_json(path, payload)
        line = f"{run_dir}:"
        if "live" in added:
            fractions, live = added["live"]
            line += f" live {live} weights, " + ", ".join(f"<= {k}: {100 * v:.1f}%" for k, v in fractions.items())
        if "prune_curve_live" in added:
            line += " prune curve of the live weights: " + ", ".join(
                f"{p['fraction']:g}: {p['metric']:.2f}" for p in added["prune_curve_live"])
        print(line)


if __name__ == "__main__":
    main()
