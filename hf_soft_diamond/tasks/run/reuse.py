"""Which runs of a study need not run again: the same run recorded elsewhere, or the same training.

A study (:mod:`.compare` with ``--record_dir``) records each finished run as
``<study>/<stage>/<arm>/seed<k>/`` holding ``all_results.json`` and ``run_config.json``. Two
rules save work across its stages, both keyed on the run's JSON config:

* **the same run** (:func:`config_key`: the config without ``output_dir``): an arm whose sparsest
  grid point is also its best one is one run, not two; its recorded files are copied.
* **the same training, evaluated on another split** (:func:`training_key`: the config without
  ``output_dir`` and the :data:`EVALUATION_FIELDS`): the tuning stage trains seed 1 of every grid
  point and evaluates it on the validation split; the final stage's seed 1 of the chosen point
  trains exactly that model again. When the tuning run's weights are still on this machine
  (its ``output_dir`` holds the saved model and the same ``all_results.json`` as its record),
  the final stage only evaluates them on the test split (:func:`evaluation_config`: ``do_train``
  False, ``model_name_or_path`` the tuning run's folder) and keeps the tuning run's training
  figures (:data:`TRAINING_RESULT_KEYS`) beside the new evaluation. The model was chosen on
  validation and is scored on test, the usual protocol; no test figure ever chose anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

#: The run's JSON config in its folder (what ``hf-soft-diamond export`` reads; :mod:`..export`).
RUN_CONFIG_NAME = "run_config.json"
#: What a study's record keeps of each run: the small files that let it be tabulated (and its
#: runs re-run) without the run folders, which hold the weights.
RECORDED_FILES = ("all_results.json", RUN_CONFIG_NAME)
#: Config fields that choose only what a finished training is evaluated on: runs that differ in
#: nothing else train the same model.
EVALUATION_FIELDS = ("final_split",)
#: Fields that build a model from a config; dropped when the model is loaded from a folder instead.
MODEL_BUILD_FIELDS = ("model_config_overrides",)
#: The training figures an evaluation-only run takes over from the run that trained its weights
#: (``training``: the optimizer, schedule and steps that trained them).
TRAINING_RESULT_KEYS = ("epoch", "total_flos", "training")
TRAINING_RESULT_PREFIX = "train_"
#: Results key naming the recorded run whose training an evaluation-only run reused.
TRAINED_IN_KEY = "trained_in"


class TrainedRun(NamedTuple):
    """A finished training run: its record folder and the run folder holding its weights."""

    record: Path
    weights: Path


def config_key(config: Mapping[str, Any]) -> str:
    """What makes two runs the same run: their config without its ``output_dir``, as canonical JSON."""
    return json.dumps({k: v for k, v in config.items() if k != "output_dir"}, sort_keys=True)


def training_key(config: Mapping[str, Any]) -> str:
    """What makes two runs train the same model: :func:`config_key` without :data:`EVALUATION_FIELDS`."""
    return config_key({k: v for k, v in config.items() if k not in EVALUATION_FIELDS})


def _finished_runs(study_dir: Path):
    """``(record folder, config)`` of every finished run recorded under ``study_dir``
    (``<stage>/<arm>/seed<k>/`` holding both :data:`RECORDED_FILES`), in path order."""
    for config_path in sorted(study_dir.glob(f"*/*/seed*/{RUN_CONFIG_NAME}")):
        if (config_path.parent / "all_results.json").is_file():
            yield config_path.parent, json.loads(config_path.read_text())


def recorded_runs(study_dir: Path) -> dict[str, Path]:
    """:func:`config_key` -> record folder, for every finished run recorded under ``study_dir``."""
    found: dict[str, Path] = {}
    for folder, config in _finished_runs(study_dir):
        found.setdefault(config_key(config), folder)
    return found


def differing_settings(planned: Mapping[str, Any], done: Mapping[str, Any]) -> list[str]:
    """The fields in which the config of a finished run (``done``) differs from the run now
    ``planned`` in its folder, ``output_dir`` aside: empty when the folder holds the planned run.
    A finished evaluation-only run of a training run (:func:`evaluation_config`: ``do_train``
    false, ``model_name_or_path`` the trained folder) holds the planned training run when it
    agrees in everything else."""
    ignored = {"output_dir"}
    if planned.get("do_train") and not done.get("do_train") and done.get("model_name_or_path"):
        ignored |= {"do_train", "model_name_or_path", *MODEL_BUILD_FIELDS}
    keys = (set(planned) | set(done)) - ignored
    return sorted(k for k in keys if planned.get(k) != done.get(k))


def holds_saved_model(folder: Path) -> bool:
    """Whether ``folder`` holds a ``save_pretrained`` model (its ``config.json`` and weights)."""
    return (folder / "config.json").is_file() and (
        any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file())


def trained_runs(study_dir: Path) -> dict[str, TrainedRun]:
    """:func:`training_key` -> :class:`TrainedRun`, for every recorded training run under ``study_dir``
    whose weights are on this machine: its config's ``output_dir`` (relative paths against the
    working directory, as the run saw them) holds a saved model and the very ``all_results.json``
    recorded (so the folder was not re-run or overwritten since). Evaluation-only runs
    (``do_train`` false) are not training runs."""
    found: dict[str, TrainedRun] = {}
    for folder, config in _finished_runs(study_dir):
        if not config.get("do_train") or not config.get("output_dir"):
            continue
        weights = Path(config["output_dir"])
        results = weights / "all_results.json"
        if (holds_saved_model(weights) and results.is_file()
                and json.loads(results.read_text()) == json.loads((folder / "all_results.json").read_text())):
            found.setdefault(training_key(config), TrainedRun(folder, weights))
    return found


def evaluation_config(config: Mapping[str, Any], trained: TrainedRun) -> dict[str, Any]:
    """``config`` as an evaluation-only run of ``trained``'s weights: no training, the model loaded
    from ``trained.weights``, everything else (split, decoding, prune fractions, regularized set
    for the sparsity figures) as ``config`` says."""
    evaluation = {k: v for k, v in config.items() if k not in MODEL_BUILD_FIELDS}
    evaluation.update(do_train=False, model_name_or_path=str(trained.weights))
    return evaluation


def with_training_results(results: Mapping[str, Any], trained: TrainedRun) -> dict[str, Any]:
    """An evaluation-only run's ``results`` completed with the training figures of the run that
    trained its weights (:data:`TRAINING_RESULT_KEYS`, ``train_*``: an evaluation-only run's own
    are empty or describe no training) and :data:`TRAINED_IN_KEY`. ``wall_time_s`` becomes what the
    result cost from the base model: the training run's wall time (which includes its own
    evaluation pass) plus this evaluation's."""
    training = json.loads((trained.record / "all_results.json").read_text())
    merged = dict(results)
    for key, value in training.items():
        if key.startswith(TRAINING_RESULT_PREFIX) or key in TRAINING_RESULT_KEYS:
            merged[key] = value
    if "wall_time_s" in training and "wall_time_s" in results:
        merged["wall_time_s"] = training["wall_time_s"] + results["wall_time_s"]
    merged[TRAINED_IN_KEY] = str(trained.record)
    return merged
