#!/usr/bin/env python3
"""Add ``sparsity["live"]`` to image runs recorded before runs measured it themselves.

Since 2026-12-07 an image run writes, next to the sparsity of its regularized weights, the
sparsity of those that are not padding-only (:mod:`hf_soft_diamond.padding_taps`; on 28x28
Fashion-MNIST the small ResNet has 56% padding-only weights). For a run recorded earlier this
measures its saved weights (``model.safetensors`` in the run's output folder) and writes
``sparsity["live"]`` and ``sparsity_numel["live"]`` into its ``all_results.json`` there and
into the record copy, if one is given. Runs that already have them are left alone.

    python3 scripts/backfill_live_sparsity.py runs/study_image_converged docs/studies/image_converged

Every ``<run>/all_results.json`` under the first folder with a ``model.safetensors`` beside it
is measured; its record is the same relative path under the second folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from hf_soft_diamond.padding_taps import live_sparsity, padding_only_taps
from hf_soft_diamond.regularizers import select_parameters
from hf_soft_diamond.tasks.models import build_image_model
from hf_soft_diamond.tasks.run.common import write_json


def measure(run_dir: Path, results: dict) -> tuple[dict[str, float], int]:
    """Live sparsity of the run's saved weights, at the thresholds its results already use."""
    config = json.loads((run_dir / "run_config.json").read_text())
    channels, side, _ = results["image_shape"]
    model = build_image_model(config.get("model_type", "resnet"), config.get("model_size", "small"),
                              num_labels=results["num_classes"], image_size=side, num_channels=channels,
                              dropout=results["training"]["dropout"], batch_norm=results["training"]["batch_norm"],
                              id2label={i: str(i) for i in range(results["num_classes"])}, seed=0)
    missing, unexpected = model.load_state_dict(load_file(run_dir / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"{run_dir}: the rebuilt model does not match the saved weights "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    selected = select_parameters(model)
    if sum(p.numel() for _, p in selected) != results["sparsity_numel"]["regularized"]:
        raise ValueError(f"{run_dir}: the default selection is not the run's regularized set")
    thresholds = [float(t) for t in results["sparsity"]["regularized"]]
    dead = padding_only_taps(model, torch.zeros(1, channels, side, side))
    return live_sparsity(selected, dead, thresholds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="folder of run output folders (weights and all_results.json)")
    parser.add_argument("record", type=Path, nargs="?", help="folder of the committed copies, same layout")
    args = parser.parse_args()
    for results_path in sorted(args.runs.rglob("all_results.json")):
        run_dir = results_path.parent
        results = json.loads(results_path.read_text())
        if not (run_dir / "model.safetensors").is_file() or "live" in results.get("sparsity", {}):
            continue
        fractions, live = measure(run_dir, results)
        targets = [results_path]
        if args.record is not None and (args.record / results_path.relative_to(args.runs)).is_file():
            targets.append(args.record / results_path.relative_to(args.runs))
        for path in targets:
            payload = json.loads(path.read_text())
            payload["sparsity"]["live"] = fractions
            payload["sparsity_numel"]["live"] = live
            write_json(path, payload)
        print(f"{run_dir}: live {live} weights, " + ", ".join(f"<= {k}: {100 * v:.1f}%" for k, v in fractions.items()))


if __name__ == "__main__":
    main()
