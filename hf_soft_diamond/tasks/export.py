"""Ship a trained run: prune at the knee, write a compressed checkpoint, verify it loads back.

This module is the application side of ``hf-soft-diamond export``; the checkpoint format
and its loader are the library's :mod:`hf_soft_diamond.export`.

``hf-soft-diamond export RUN_DIR OUT_DIR --prune {knee,FRACTION}`` (issue 21):

1. reads ``RUN_DIR/all_results.json`` (the prune curve, the regularizer and its
   selection, the task) and the model ``RUN_DIR`` holds (``Trainer.save_model``);
2. picks the pruning level: ``knee`` is the largest fraction of the run's prune curve
   whose metric is within ``--tolerance`` points (default 1) of the unpruned one
   (:func:`hf_soft_diamond.pruning.sparsity_at_max_loss`), or a given fraction;
3. prunes the regularized weights by global magnitude
   (:func:`hf_soft_diamond.pruning.prune_by_magnitude`: exactly ``floor(f * N)`` of the
   ``N`` regularized entries, the set re-derived with
   :func:`hf_soft_diamond.regularizers.select_parameters` and the run's ``reg_include`` /
   ``reg_exclude`` / ``reg_include_embeddings``); with ``--weights live`` the convolution taps
   that only ever multiply zero padding are zeroed first (no output changes) and the fraction
   is of the other weights, the knee read from ``prune_curve_live``;
4. writes config, generation config, tokenizer, the weights (format below), a manifest
   ``sparse_export.json`` and a model card ``README.md`` into a temporary folder next to
   ``OUT_DIR``, loads the model back from it, checks that its weights are the pruned
   in-memory ones, measures the task metric of the loaded model on the validation split
   (BLEU / accuracy, before and after pruning), and only then renames the folder to
   ``OUT_DIR``. A failure leaves no ``OUT_DIR`` behind (and an existing one untouched).

Formats (``--format``): ``sparse`` (default) is the library's hf-soft-diamond sparse
bitmask format, version 1 (:mod:`hf_soft_diamond.export`: ``model.sparse.safetensors``,
loaded with :func:`hf_soft_diamond.export.load_sparse_pretrained`); ``dense`` is a plain
``save_pretrained`` folder (``model.safetensors`` with the zeros in it), loadable by
``AutoModel*.from_pretrained`` without this package.

``--dtype float16|bfloat16`` stores the floating tensors in that type (the loader
returns float32 unless told otherwise); the verification then measures the rounded model.

ResNets built by :func:`hf_soft_diamond.tasks.models.build_image_model` with ``dropout > 0`` or
``batch_norm=False`` change the module tree beyond what ``ResNetConfig`` describes, so
their run folders do not load with ``from_pretrained``. The export writes the standard
tree instead: the classifier's ``Dropout`` (inactive at inference) is dropped and each
removed ``BatchNorm2d`` is written as an exact identity (mean 0, variance ``fl32(1 -
eps)``, weight 1, bias 0); the export checks that the outputs are bit-identical. Such
an export is for inference: fine-tuning it would train those batch norms.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ..export import (
    DENSE_INDEX_NAME,
    DENSE_WEIGHTS_NAME,
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SPARSE_WEIGHTS_NAME,
    ExportError,
    _model_class,
    load_sparse_pretrained,
    save_sparse_safetensors,
)
from .run.compare import RUN_CONFIG_NAME

logger = logging.getLogger(__name__)

FORMATS = ("sparse", "dense")
SPLITS = ("validation", "test")
TASKS = ("translation", "image-classification")


# --------------------------------------------------------------------------- knee and selection


def knee_fraction(curve: Sequence[Mapping[str, float]], tolerance: float = 1.0) -> float:
    """The largest fraction of ``curve`` whose metric is at least the unpruned metric minus ``tolerance``.

    ``curve`` is ``all_results.json["prune_curve"]`` (``[{"fraction", "metric"}]``, metric in
    points, higher is better) and must hold the ``fraction == 0`` row. Later levels count
    even when an earlier one failed (the curve need not be monotone).
    """
    from ..pruning import sparsity_at_max_loss

    if not curve:
        raise ExportError("`--prune knee` needs the run's prune curve, which is empty")
    if not any(float(row["fraction"]) == 0 for row in curve):
        raise ExportError("`--prune knee` needs the run's prune curve to hold the unpruned (fraction 0) row")
    try:
        return float(sparsity_at_max_loss(curve, max_loss=tolerance))
    except ValueError as err:
        raise ExportError(f"`--prune knee`: {err}") from None


def regularized_names(model: torch.nn.Module, hparams: Mapping[str, Any] | None) -> list[str]:
    """The regularized parameter names, re-derived from the run's regularizer hparams."""
    from ..regularizers import select_parameters

    hparams = dict(hparams or {})
    kwargs = {"include": hparams.get("reg_include"), "exclude": hparams.get("reg_exclude"),
              "include_embeddings": bool(hparams.get("reg_include_embeddings", True))}
    return [n for n, _ in select_parameters(model, **kwargs)]


def parse_prune(value: str | float) -> str | float:
    """``"knee"`` or a fraction in ``[0, 1)``."""
    if isinstance(value, str) and value.strip().lower() == "knee":
        return "knee"
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ExportError(f"`--prune` must be 'knee' or a fraction in [0, 1), got {value!r}") from None
    if not (0.0 <= f < 1.0) or not math.isfinite(f):
        raise ExportError(f"`--prune` must be 'knee' or a fraction in [0, 1), got {value!r}")
    return f


# --------------------------------------------------------------------------- the run


def _read_dense_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``save_pretrained`` folder (one file or a safetensors index)."""
    from safetensors.torch import load_file

    if (folder / DENSE_WEIGHTS_NAME).is_file():
        return load_file(str(folder / DENSE_WEIGHTS_NAME))
    index = folder / DENSE_INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for name in files:
            out.update(load_file(str(folder / name)))
        return out
    raise FileNotFoundError(f"{folder} holds no {DENSE_WEIGHTS_NAME} (or {DENSE_INDEX_NAME})")


def _dense_weights_exist(folder: Path) -> bool:
    return (folder / DENSE_WEIGHTS_NAME).is_file() or (folder / DENSE_INDEX_NAME).is_file()


def _identity_batch_norm_entries(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries that make every ``BatchNorm2d`` of ``model`` an exact identity in eval mode."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            var = torch.full((c,), 1.0 - module.eps, dtype=torch.float32)  # fl32(1 - eps): var + eps rounds to 1
            out.update({f"{name}.weight": torch.ones(c), f"{name}.bias": torch.zeros(c),
                        f"{name}.running_mean": torch.zeros(c), f"{name}.running_var": var,
                        f"{name}.num_batches_tracked": torch.tensor(0)})
    return out


def _load_resnet_variant(run_dir: Path, config: Any, cls: type, state_dict: dict[str, torch.Tensor],
                         image_shape: Sequence[int] | None):
    """A build_image_model ResNet with dropout / without batch norm, as the standard tree (module docstring)."""
    from .models import _replace_batch_norm

    original = cls(config)
    dropout = "classifier.2.weight" in state_dict
    if dropout:
        flatten, linear = original.classifier[0], original.classifier[1]
        original.classifier = torch.nn.Sequential(flatten, torch.nn.Dropout(0.0), linear)
    no_bn = not any(k.endswith("running_var") for k in state_dict)
    if no_bn:
        _replace_batch_norm(original)
    original.load_state_dict(state_dict, strict=True)
    original.eval()
    canonical_sd = dict(state_dict)
    if dropout:
        for suffix in ("weight", "bias"):
            if f"classifier.2.{suffix}" in canonical_sd:
                canonical_sd[f"classifier.1.{suffix}"] = canonical_sd.pop(f"classifier.2.{suffix}")
    if no_bn:
        canonical_sd.update(_identity_batch_norm_entries(cls(config)))
    model, info = cls.from_pretrained(None, config=config, state_dict=canonical_sd, output_loading_info=True)
    _check_loading_info(info, run_dir)
    model.eval()
    c, h, w = (list(image_shape) if image_shape else [config.num_channels, 32, 32])
    x = torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(original(pixel_values=x).logits, model(pixel_values=x).logits)
    if not same:
        raise RuntimeError(f"{run_dir}: the standard ResNet tree does not reproduce the run's model exactly "
                           "(dropout / no-batch-norm rewrite); export refused")
    logger.info("%s: wrote the run's ResNet (%s) as the standard module tree", run_dir,
                ", ".join(s for s, on in (("classifier dropout", dropout), ("no batch norm", no_bn)) if on))
    return model


def _check_loading_info(info: Mapping[str, Any], source: Path) -> None:
    bad = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise RuntimeError(f"{source}: the checkpoint does not match its config's model: "
                           + "; ".join(f"{k} {v[:5]}" for k, v in bad.items()))


def _restore_frozen_flags(model: torch.nn.Module, cls: type, config: Any) -> list[str]:
    """Set ``requires_grad=False`` where the class's constructor does; the names changed.

    transformers 5.24's ``from_pretrained`` materialises every parameter with
    ``requires_grad=True``, also those the constructor freezes (Marian's sinusoidal
    ``embed_positions``, which ``save_pretrained`` does not even store). A config-built run
    trained the constructor's model, so its regularized set excluded them; re-deriving the
    set on the loaded model must too.
    """
    try:
        with torch.device("meta"):
            fresh = cls(config)
    except Exception as err:  # pragma: no cover - a class that cannot be built on meta
        logger.warning("could not rebuild %s on the meta device (%s); requires_grad flags kept", cls.__name__, err)
        return []
    frozen = [n for n, p in fresh.named_parameters() if not p.requires_grad]
    params = dict(model.named_parameters())
    changed = [n for n in frozen if n in params and params[n].requires_grad]
    for n in changed:
        params[n].requires_grad_(False)
    return changed


def load_run_model(run_dir: str | os.PathLike[str], image_shape: Sequence[int] | None = None):
    """The model a run saved (``Trainer.save_model``), float32, eval mode; refuses partial loads.

    Parameters the model class's constructor freezes are frozen again (see
    :func:`_restore_frozen_flags`), so :func:`regularized_names` sees the trained model's flags.
    """
    from transformers import AutoConfig

    run_dir = Path(run_dir)
    config = AutoConfig.from_pretrained(run_dir)
    cls = _model_class(config)
    model = None
    if getattr(config, "model_type", None) == "resnet":
        state_dict = _read_dense_checkpoint(run_dir)
        if "classifier.2.weight" in state_dict or not any(k.endswith("running_var") for k in state_dict):
            model = _load_resnet_variant(run_dir, config, cls, state_dict, image_shape)
    if model is None:
        model, info = cls.from_pretrained(run_dir, dtype=torch.float32, output_loading_info=True)
        _check_loading_info(info, run_dir)
    changed = _restore_frozen_flags(model, cls, config)
    if changed:
        logger.info("frozen again as the constructor leaves them (not regularized, not pruned): %s", changed)
    return model.eval()


# --------------------------------------------------------------------------- data and metrics


def _field_defaults(*dataclass_types: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dt in dataclass_types:
        for f in dataclasses.fields(dt):
            if f.default is not dataclasses.MISSING:
                out.setdefault(f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out.setdefault(f.name, f.default_factory())  # type: ignore[misc]
    return out


#: Data arguments the export reads per task (the run scripts' field names).
TRANSLATION_DATA_KEYS = ("dataset_name", "dataset_config_name", "validation_file", "test_file", "source_lang",
                         "target_lang", "source_prefix", "max_source_length", "max_eval_samples",
                         "max_predict_samples", "cache_dir")
IMAGE_DATA_KEYS = ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "test_dir",
                   "validation_size", "normalize", "max_train_samples", "max_eval_samples", "max_predict_samples",
                   "image_size", "num_channels", "cache_dir")


def resolve_data_args(task: str, results: Mapping[str, Any], run_config: Mapping[str, Any] | None,
                      overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The data arguments of the verification, and where each came from.

    Precedence: explicit ``overrides`` (CLI flags), then the run's configuration
    (``RUN_DIR/run_config.json`` or ``--run_config``: the training script's fields), then
    what ``all_results.json`` records, then the training script's defaults.
    """
    if task == "translation":
        from .run.translation import DataTrainingArguments, ModelArguments

        keys, defaults = TRANSLATION_DATA_KEYS, _field_defaults(DataTrainingArguments, ModelArguments)
    else:
        from .run.image import ImageDataArguments, ImageModelArguments

        keys, defaults = IMAGE_DATA_KEYS, _field_defaults(ImageDataArguments, ImageModelArguments)
    from_results: dict[str, Any] = {}
    if results.get("dataset_name") is not None:
        from_results["dataset_name"] = results["dataset_name"]
    if results.get("dataset_config_name") is not None:
        from_results["dataset_config_name"] = results["dataset_config_name"]
    if task == "translation" and isinstance(results.get("language_pair"), str) and "-" in results["language_pair"]:
        from_results["source_lang"], from_results["target_lang"] = results["language_pair"].split("-", 1)
    if task != "translation":
        aug = (results.get("training") or {}).get("augmentation") or {}
        if "normalize" in aug:
            from_results["normalize"] = bool(aug["normalize"])
        shape = results.get("image_shape")
        if shape:
            from_results["num_channels"] = int(shape[0])
            from_results["image_size"] = int(shape[1])
    args: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key in keys:
        for label, layer in (("argument", overrides), ("run config", run_config or {}),
                             ("all_results.json", from_results), ("script default", defaults)):
            if key in layer and layer[key] is not None:
                args[key], source[key] = layer[key], label
                break
        else:
            args[key], source[key] = None, "script default"
    return args, source


def _truncate(ds: Any, n: int | None) -> Any:
    if n is None:
        return ds
    if hasattr(ds, "select"):
        return ds.select(range(min(int(n), len(ds))))
    return ds if n >= len(ds) else ds.subset(range(int(n)))


def load_translation_eval_data(data: Mapping[str, Any], split: str) -> tuple[list[str], list[str]]:
    """Sources and references of the split, truncated as the run truncated it."""
    from .data.translation import (
        OFFLINE_CORPORA,
        load_hub_translation_dataset,
        load_offline_translation_corpus,
        load_translation_files,
    )

    src, tgt = data["source_lang"], data["target_lang"]
    if data.get("validation_file") or data.get("test_file"):
        raw = load_translation_files(None, data.get("validation_file"), data.get("test_file"),
                                     source_lang=src, target_lang=tgt)
    elif data.get("dataset_name") in OFFLINE_CORPORA:
        raw = load_offline_translation_corpus(data["dataset_name"], source_lang=src, target_lang=tgt)
    else:
        raw = load_hub_translation_dataset(data["dataset_name"], data.get("dataset_config_name"),
                                           cache_dir=data.get("cache_dir"))
    if split not in raw:
        raise ExportError(f"`--split` {split!r}: the data has no such split (it has {sorted(raw)})")
    limit = data.get("max_eval_samples") if split == "validation" else data.get("max_predict_samples")
    rows = _truncate(raw[split], limit)["translation"]
    return [(data.get("source_prefix") or "") + r[src] for r in rows], [r[tgt] for r in rows]


@torch.no_grad()
def translate(model: Any, tokenizer: Any, sources: Sequence[str], *, max_source_length: int = 128,
              batch_size: int = 32) -> list[str]:
    """Greedy/beam translations with the model's generation config, in input order."""
    hyps: list[str] = []
    for start in range(0, len(sources), batch_size):
        enc = tokenizer(list(sources[start:start + batch_size]), max_length=max_source_length, truncation=True,
                        padding=True, return_tensors="pt")
        out = model.generate(**enc)
        hyps += [h.strip() for h in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return hyps


def load_image_eval_data(data: Mapping[str, Any], split: str) -> tuple[Any, dict[str, Any]]:
    """The transformed split (as the run's evaluation saw it) and its preprocessing."""
    from .data.images import attach_transforms
    from .run.image import load_image_splits

    ns_data = SimpleNamespace(**{k: data.get(k) for k in IMAGE_DATA_KEYS})
    ns_model = SimpleNamespace(cache_dir=data.get("cache_dir"))
    splits = load_image_splits(ns_data, ns_model)
    if split not in splits or len(splits[split]) == 0:
        raise ExportError(f"`--split` {split!r}: the data has no such split (it has {sorted(splits)})")
    limit = data.get("max_eval_samples") if split == "validation" else data.get("max_predict_samples")
    chosen = {"train": _truncate(splits["train"], data.get("max_train_samples")),
              split: _truncate(splits[split], limit)}
    data_side = chosen["train"].image_shape[1]
    image_size = data.get("image_size")
    out = attach_transforms(chosen, normalize=bool(data.get("normalize", True)), num_channels=data.get("num_channels"),
                            image_size=None if image_size in (None, data_side) else image_size)
    tf = out[split].transform
    prep = {"input": "uint8 (C, H, W) images, x / 255", "num_channels": tf.num_channels,
            "image_size": tf.image_size, "mean": None if tf.mean is None else list(tf.mean),
            "std": None if tf.std is None else list(tf.std), "class_names": list(out[split].class_names)}
    return out[split], prep


@torch.no_grad()
def image_accuracy(model: Any, dataset: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of ``model`` on an ImageTensorDataset with its transform."""
    correct = 0
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        logits = model(pixel_values=dataset.pixel_batch(idx)).logits
        correct += int((logits.argmax(-1) == dataset.labels[idx]).sum())
    return 100.0 * correct / len(dataset)


@dataclasses.dataclass
class Evaluator:
    """The task metric of a model on one split: ``evaluate(model) -> points`` (BLEU or accuracy %)."""

    evaluate: Callable[[torch.nn.Module], float]
    n_examples: int
    metric: str
    preprocessing: dict[str, Any] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def build_evaluator(task: str, data_args: Mapping[str, Any], split: str, *, tokenizer: Any = None,
                    batch_size: int | None = None) -> Evaluator:
    """Load the split as the run's evaluation saw it and return its metric function.

    Translation: sacrebleu BLEU (:func:`hf_soft_diamond.tasks.metrics.compute_bleu`) of the model's
    generations (its generation config: beams and max length as the run set them) against
    the raw references; images: top-1 accuracy in % with the run's evaluation transform.
    """
    try:
        if task == "translation":
            loaded: Any = load_translation_eval_data(data_args, split)
        else:
            loaded = load_image_eval_data(data_args, split)
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(
            f"could not load the verification data (dataset_name={data_args.get('dataset_name')!r}, split {split!r}): "
            f"{type(err).__name__}: {err}. Pass the run's data with --run_config or --dataset_name / "
            "--validation_file / --validation_dir, or skip the check with --no_verify") from err
    if task == "translation":
        from .metrics import compute_bleu

        sources, references = loaded
        info: dict[str, Any] = {"sources": sources, "references": references}

        def evaluate(m: torch.nn.Module) -> float:
            hyps = translate(m, tokenizer, sources, max_source_length=int(data_args["max_source_length"]),
                             batch_size=batch_size or 32)
            scores = compute_bleu(hyps, references)
            info["bleu_signature"] = scores["bleu_signature"]
            info["hypotheses"] = hyps
            return float(scores["bleu"])

        return Evaluator(evaluate, len(sources), "bleu", None, info)
    dataset, preprocessing = loaded
    return Evaluator(lambda m: image_accuracy(m, dataset, batch_size=batch_size or 256), len(dataset), "accuracy",
                     preprocessing, {"dataset": dataset})


# --------------------------------------------------------------------------- the export


@dataclasses.dataclass
class ExportPlan:
    """Checked arguments of one export (everything validated before any work)."""

    run_dir: Path
    out_dir: Path
    results: dict[str, Any]
    prune: str | float
    fraction: float
    tolerance: float
    fmt: str
    dtype: str
    split: str
    verify: bool
    overwrite: bool
    task: str
    run_config: dict[str, Any] | None
    run_config_path: Path | None
    weights: str = "regularized"


#: ``--weights``: what the pruned fraction counts. ``live``: the regularized weights other than the
#: convolution taps that only ever multiply zero padding (:mod:`hf_soft_diamond.padding_taps`), which
#: are set to zero (no output changes) and left out of the fraction.
WEIGHTS = ("regularized", "live")
#: The run's prune curve each ``--weights`` reads the knee from.
PRUNE_CURVE_OF = {"regularized": "prune_curve", "live": "prune_curve_live"}


def plan_export(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, prune: str | float = "knee",
                tolerance: float = 1.0, fmt: str = "sparse", dtype: str = "float32", split: str = "validation",
                verify: bool = True, overwrite: bool = False,
                run_config: str | os.PathLike[str] | None = None, weights: str = "regularized") -> ExportPlan:
    """Check every argument and input (no model or data is loaded); raise :class:`ExportError` naming it."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ExportError(f"RUN_DIR {str(run)!r} is not a directory")
    results_path = run / "all_results.json"
    if not results_path.is_file():
        raise ExportError(f"RUN_DIR {str(run)!r} has no all_results.json (not a finished run of the training scripts)")
    try:
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"RUN_DIR {str(run)!r}: all_results.json is not valid JSON: {err}") from None
    if not (run / "config.json").is_file() or not _dense_weights_exist(run):
        raise ExportError(f"RUN_DIR {str(run)!r} holds no saved model (config.json and {DENSE_WEIGHTS_NAME})")
    try:
        tol = float(tolerance)
    except (TypeError, ValueError):
        raise ExportError(f"`--tolerance` must be a number of metric points >= 0, got {tolerance!r}") from None
    if not math.isfinite(tol) or tol < 0:
        raise ExportError(f"`--tolerance` must be a number of metric points >= 0, got {tolerance!r}")
    if weights not in WEIGHTS:
        raise ExportError(f"`--weights` must be one of {WEIGHTS}, got {weights!r}")
    choice = parse_prune(prune)
    if choice == "knee":
        curve = results.get(PRUNE_CURVE_OF[weights])
        if weights == "live" and not curve and results.get("prune_curve"):
            raise ExportError(f"`--prune knee --weights live`: RUN_DIR {str(run)!r} records no prune_curve_live "
                              "(image runs write it since 2026-12-07; `scripts/backfill_live_sparsity.py RUNS "
                              "--prune_curve` adds it to older ones); give a fraction, or --weights regularized")
        if not curve:
            raise ExportError(f"`--prune knee`: RUN_DIR {str(run)!r} has no prune curve in all_results.json "
                              "(the run had no prune_fractions); give a fraction, e.g. --prune 0.5")
        fraction = knee_fraction(curve, tol)
    else:
        fraction = float(choice)
    if fmt not in FORMATS:
        raise ExportError(f"`--format` must be one of {FORMATS}, got {fmt!r}")
    if dtype not in DTYPES:
        raise ExportError(f"`--dtype` must be one of {tuple(DTYPES)}, got {dtype!r}")
    if split not in SPLITS:
        raise ExportError(f"`--split` must be one of {SPLITS}, got {split!r}")
    task = results.get("task")
    if task not in TASKS:
        task = "translation" if any(k.endswith("_bleu") for k in results) else (
            "image-classification" if any(k.endswith("_accuracy") for k in results) else None)
    if task is None:
        raise ExportError(f"RUN_DIR {str(run)!r}: all_results.json names no known task ({TASKS})")
    if task == "translation" and not any((run / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ExportError(f"RUN_DIR {str(run)!r} holds no tokenizer (tokenizer.json / tokenizer_config.json) to ship "
                          "with the translation model")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"OUT_DIR {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"OUT_DIR {str(out)!r} exists and is not empty (pass --overwrite to replace it)")
    run_r, out_r = run.resolve(), out.resolve()
    if out_r == run_r or out_r in run_r.parents or run_r in out_r.parents:
        raise ExportError(f"OUT_DIR {str(out)!r} must lie outside RUN_DIR {str(run)!r} and not contain it")
    config_path = Path(run_config) if run_config is not None else run / RUN_CONFIG_NAME
    cfg = None
    if run_config is not None and not config_path.is_file():
        raise ExportError(f"`--run_config` {str(config_path)!r} does not exist")
    if config_path.is_file():
        try:
            cfg = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ExportError(f"`--run_config` {str(config_path)!r} is not valid JSON: {err}") from None
        if not isinstance(cfg, dict):
            raise ExportError(f"`--run_config` {str(config_path)!r} must hold a JSON object of the run's arguments")
    return ExportPlan(run, out, results, choice, fraction, tol, fmt, dtype, split, verify, overwrite, task,
                      cfg, config_path if cfg is not None else None, weights)


def _dir_bytes(folder: Path, names: Iterable[str]) -> int:
    return sum((folder / n).stat().st_size for n in names if (folder / n).is_file())


def _weight_files(folder: Path) -> list[str]:
    names = [SPARSE_WEIGHTS_NAME, DENSE_WEIGHTS_NAME, DENSE_INDEX_NAME]
    if (folder / DENSE_INDEX_NAME).is_file():
        names += sorted(set(json.loads((folder / DENSE_INDEX_NAME).read_text())["weight_map"].values()))
    return [n for n in dict.fromkeys(names) if (folder / n).is_file()]


def _zero_counts(model: torch.nn.Module, names: Sequence[str]) -> dict[str, int]:
    params = dict(model.named_parameters())
    reg = sum(int((params[n] == 0).sum()) for n in names)
    every = sum(int((p == 0).sum()) for p in params.values())
    return {"regularized_zeros": reg, "regularized_numel": sum(params[n].numel() for n in names),
            "all_zeros": every, "all_numel": sum(p.numel() for p in params.values())}


def write_checkpoint(model: torch.nn.Module, folder: Path, *, fmt: str = "sparse",
                     dtype: str = "float32") -> dict[str, int]:
    """``save_pretrained`` into ``folder``, then re-encode the weights in ``fmt``/``dtype``; the byte sizes."""
    from safetensors.torch import save_file

    model.save_pretrained(folder)
    dense_bytes = _dir_bytes(folder, _weight_files(folder))
    if fmt == "dense" and dtype == "float32":
        return {"dense_float32": dense_bytes, "exported": dense_bytes}
    state_dict = _read_dense_checkpoint(folder)
    for name in _weight_files(folder):
        (folder / name).unlink()
    if fmt == "sparse":
        save_sparse_safetensors(state_dict, folder / SPARSE_WEIGHTS_NAME, dtype=DTYPES[dtype])
    else:
        save_file({k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous()
                   for k, v in state_dict.items()}, str(folder / DENSE_WEIGHTS_NAME), metadata={"format": "pt"})
    return {"dense_float32": dense_bytes, "exported": _dir_bytes(folder, _weight_files(folder))}


def _assert_same_weights(loaded: torch.nn.Module, reference: torch.nn.Module, dtype: str) -> None:
    ref = reference.state_dict()
    got = loaded.state_dict()
    if set(ref) != set(got):
        raise RuntimeError(f"the exported model's tensors differ from the pruned model's: "
                           f"{sorted(set(ref) ^ set(got))[:5]}")
    for name, r in ref.items():
        if r.is_floating_point():
            r = r.to(DTYPES[dtype]).to(got[name].dtype)
        if not torch.equal(r, got[name]):
            raise RuntimeError(f"the exported {name} is not the pruned in-memory tensor")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def render_export_card(manifest: Mapping[str, Any], model_name: str) -> str:
    """The model card (README.md) of an export: what was pruned, sizes, metric before/after, how to load."""
    from huggingface_hub import ModelCard, ModelCardData

    task = manifest["task"]
    prune = manifest["prune"]
    sizes = manifest["size_bytes"]
    reg = manifest.get("regularizer") or {}
    ver = manifest.get("verification")
    metric = "BLEU" if task == "translation" else "accuracy (%)"
    data = ModelCardData(
        model_name=model_name, language=["de", "en"] if task == "translation" else None, license="apache-2.0",
        library_name="transformers", pipeline_tag="translation" if task == "translation" else "image-classification",
        tags=["hf-soft-diamond", "pruned", "sparse", str(reg.get("regularizer", "none"))])
    live = "live " if prune.get("weights") == "live" else ""
    knee = (f" (the knee: the largest fraction of the run's {live}prune curve on its {prune.get('curve_split')} "
            f"split within {prune['tolerance']:g} point(s) of the unpruned {metric})")
    how = f"requested `{prune['requested']}`" + (knee if prune["requested"] == "knee" else "")
    lines = [
        f"# {model_name}", "",
        f"Global magnitude pruning of the regularized weights of the run `{Path(manifest['source_run']).name}` "
        f"(trained with hf_soft_diamond, regularizer `{reg.get('regularizer', 'none')}`), exported with "
        "`hf-soft-diamond export`.", "",
        "| | |", "|---|---|",
        f"| pruned | {100 * prune['pruned_fraction']:.2f}% of the {live}regularized weights "
        f"({prune['num_pruned']:,} of {prune['num_regularized']:,}; {how}) |",
        *([f"| padding-only taps | {prune['padding_only_zeroed']:,} regularized weights that only ever multiply zero "
           "padding at this input size, set to zero (no output changes) and not counted above |"]
          if prune.get("padding_only_zeroed") else []),
        f"| cut-off magnitude | {prune['threshold']:.3g} |",
        f"| zeros, all parameters | {manifest['zeros']['all_zeros']:,} of {manifest['zeros']['all_numel']:,} "
        f"({100 * manifest['zeros']['all_zeros'] / max(1, manifest['zeros']['all_numel']):.2f}%) |",
        f"| format | `{manifest['format']}` ({manifest['dtype']}) |",
        f"| weights on disk | {_fmt_bytes(sizes['exported'])} (dense float32: {_fmt_bytes(sizes['dense_float32'])}, "
        f"{sizes['exported'] / max(1, sizes['dense_float32']):.2f}x) |",
    ]
    if ver:
        lines.append(f"| {metric} on {ver['split']} ({ver['n_examples']} examples) | before pruning "
                     f"{ver['before']:.2f}, after {ver['after']:.2f} (of the model loaded back from this folder) |")
        if ver.get("signature"):
            sig = str(ver["signature"]).replace("|", "\\|")  # a table cell
            lines.append(f"| BLEU signature | `{sig}` |")
        if ver["before"] - ver["after"] > prune["tolerance"]:
            lines.append(f"| **warning** | on {ver['split']} the pruned model loses {ver['before'] - ver['after']:.2f} "
                         f"points, more than the tolerance {prune['tolerance']:g} |")
    else:
        lines.append("| verification | not run (`--no_verify`) |")
    if prune.get("curve_metric") is not None and prune.get("curve_baseline") is not None:
        lines.append(f"| run's prune curve at {prune['fraction']:g} | {prune['curve_metric']:.2f} "
                     f"({prune.get('curve_split')} split, unpruned {prune.get('curve_baseline'):.2f}) |")
    lines += ["", "## How to load", ""]
    if manifest["format"] == "dense":
        cls = "AutoModelForSeq2SeqLM" if task == "translation" else "AutoModelForImageClassification"
        lines += ["```python", f"from transformers import {cls}",
                  f"model = {cls}.from_pretrained(\"path/to/this/folder\")", "```"]
    else:
        lines += ["The weights are in `model.sparse.safetensors` (bitmask + non-zero values per tensor, "
                  "see `sparse_export.json`); plain `from_pretrained` refuses the folder, the loader decodes it "
                  "and calls `from_pretrained` with the state dict:", "",
                  "```python", "from hf_soft_diamond.export import load_sparse_pretrained",
                  "model = load_sparse_pretrained(\"path/to/this/folder\")   # float32, eval mode", "```"]
    if task == "translation":
        lines += ["", "```python", "from transformers import AutoTokenizer",
                  "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")",
                  "batch = tokenizer([\"Das ist ein Test.\"], return_tensors=\"pt\")",
                  "print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))", "```"]
    else:
        prep = manifest.get("preprocessing") or {}
        lines += ["", f"Inputs: {prep.get('input', 'images')}, {prep.get('num_channels')} channel(s)"
                  + (f", resized to {prep['image_size']}" if prep.get("image_size") else "")
                  + (f", normalized with mean {prep['mean']} and std {prep['std']}" if prep.get("mean") else "")
                  + "; `model(pixel_values=x).logits`."]
    lines += ["", "Pruning is without fine-tuning; the zeros are stored, the arithmetic stays dense "
              "(see the project's `docs/export.md` for when sparse kernels pay on CPU).", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def _library_versions() -> dict[str, str]:
    import transformers

    try:
        from importlib.metadata import version

        ours = version("hf-soft-diamond")
    except Exception:  # pragma: no cover - not installed as a distribution
        ours = "unknown"
    return {"hf_soft_diamond": ours, "transformers": transformers.__version__, "torch": torch.__version__}


def export_run(plan: ExportPlan, *, data_overrides: Mapping[str, Any] | None = None, batch_size: int | None = None,
               log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Run a checked :class:`ExportPlan`; return the manifest (also written to ``OUT_DIR/sparse_export.json``)."""
    from ..padding_taps import padding_only_among
    from ..pruning import prune_by_magnitude

    results = plan.results
    task = plan.task
    data_args: dict[str, Any] = {}
    data_source: dict[str, str] = {}
    if plan.verify:
        data_args, data_source = resolve_data_args(task, results, plan.run_config, dict(data_overrides or {}))
    model = load_run_model(plan.run_dir, image_shape=results.get("image_shape"))
    names = regularized_names(model, results.get("regularizer"))
    if not names:
        raise ExportError(f"RUN_DIR {str(plan.run_dir)!r}: no parameter matches the run's regularizer selection")
    tokenizer = None
    evaluator: Evaluator | None = None
    verification: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    if task == "translation":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(plan.run_dir)
    if plan.verify:
        evaluator = build_evaluator(task, data_args, plan.split, tokenizer=tokenizer, batch_size=batch_size)
        evaluate, n_examples, preprocessing = evaluator.evaluate, evaluator.n_examples, evaluator.preprocessing
        t0 = time.perf_counter()
        before = evaluate(model)
        log(f"unpruned {plan.split} {'BLEU' if task == 'translation' else 'accuracy'}: {before:.2f} "
            f"({n_examples} examples, {time.perf_counter() - t0:.1f} s)")
    shape = results.get("image_shape")  # a translator has none, and no convolutions
    dead = padding_only_among(model, torch.zeros(1, *map(int, shape)), names) if shape else {}
    n_dead = sum(int(m.sum()) for m in dead.values())
    if plan.weights == "regularized" and n_dead:
        params = dict(model.named_parameters())
        nonzero = sum(int((params[n][m] != 0).sum()) for n, m in dead.items())
        if nonzero:
            log(f"note: {nonzero:,} regularized weights are convolution taps that only ever multiply zero padding "
                "and are not zero; `--weights live` zeroes them (no output changes) and prunes the fraction of "
                "the live weights")
    model, info = prune_by_magnitude(model, plan.fraction, regularized_names=names, inplace=True,
                                     excluded=dead if plan.weights == "live" else None)
    log(f"pruned {info.num_pruned} of {info.num_regularized} {'live ' if plan.weights == 'live' else ''}"
        f"regularized weights ({100 * info.pruned_fraction:.2f}%, |w| <= {info.threshold:.3g})"
        + (f"; zeroed the {n_dead:,} padding-only taps" if plan.weights == "live" else ""))

    curve = results.get(PRUNE_CURVE_OF[plan.weights]) or []
    at = [row for row in curve if float(row["fraction"]) == plan.fraction]
    base = [row for row in curve if float(row["fraction"]) == 0]
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME if plan.fmt == "sparse" else "dense",
        "format_version": FORMAT_VERSION if plan.fmt == "sparse" else None,
        "weights_file": SPARSE_WEIGHTS_NAME if plan.fmt == "sparse" else DENSE_WEIGHTS_NAME,
        "dtype": plan.dtype,
        "task": task,
        "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        "source_run": str(plan.run_dir.resolve()),
        "regularizer": results.get("regularizer"),
        "prune": {
            "requested": plan.prune if plan.prune == "knee" else float(plan.prune),
            "fraction": plan.fraction, "tolerance": plan.tolerance,
            "curve_split": results.get("dataset_split"),
            "curve_metric": float(at[0]["metric"]) if at else None,
            "curve_baseline": float(base[0]["metric"]) if base else None,
            "weights": plan.weights,
            "num_regularized": info.num_regularized, "num_pruned": info.num_pruned,
            "pruned_fraction": info.pruned_fraction, "threshold": info.threshold,
            "padding_only_zeroed": n_dead if plan.weights == "live" else 0,
            "regularized_names": names,
        },
        "zeros": _zero_counts(model, names),
    }
    parent = plan.out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{plan.out_dir.name}.export-", dir=parent))
    try:
        manifest["size_bytes"] = write_checkpoint(model, stage, fmt=plan.fmt, dtype=plan.dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        loaded = load_sparse_pretrained(stage)
        _assert_same_weights(loaded, model, plan.dtype)
        if evaluator is not None:
            t0 = time.perf_counter()
            after = evaluate(loaded)
            log(f"exported model, {plan.split}: {after:.2f} ({time.perf_counter() - t0:.1f} s)")
            verification = {"split": plan.split, "n_examples": n_examples,
                            "metric": "bleu" if task == "translation" else "accuracy",
                            "before": before, "after": after, "data": data_args, "data_source": data_source,
                            "signature": evaluator.info.get("bleu_signature"),
                            "run_config": None if plan.run_config_path is None else str(plan.run_config_path)}
        manifest["verification"] = verification
        manifest["preprocessing"] = preprocessing
        manifest["versions"] = _library_versions()
        (stage / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
        (stage / "README.md").write_text(render_export_card(manifest, plan.out_dir.name))
        _apply_umask(stage)
        _publish(stage, plan.out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest


def _apply_umask(folder: Path) -> None:
    """Give ``folder`` (made 0700 by mkdtemp) and its files the modes a plain mkdir/open would give."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _publish(stage: Path, out_dir: Path) -> None:
    """Move the finished ``stage`` folder to ``out_dir`` (replacing an existing one only at the end)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
        out_dir.rename(old)
    try:
        stage.rename(out_dir)
    except BaseException:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hf-soft-diamond export",
        description="Prune a finished run's regularized weights by global magnitude (at the knee of its prune curve "
                    "or a given fraction), verify the metric on the validation split, and write a compressed "
                    "checkpoint with tokenizer, config and model card to OUT_DIR (docs/export.md).")
    ap.add_argument("run_dir", metavar="RUN_DIR", help="output_dir of a finished train-translation/train-image run")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="new folder to write (must not exist or be empty)")
    ap.add_argument("--prune", required=True, metavar="{knee,FRACTION}",
                    help="'knee': the largest fraction of the run's prune curve within --tolerance points of the "
                         "unpruned metric; or a fraction of the regularized weights in [0, 1)")
    ap.add_argument("--weights", default="regularized", choices=WEIGHTS,
                    help="what the fraction counts: 'regularized' (default) all regularized weights; 'live' those "
                         "that are not convolution taps only ever multiplying zero padding (image models on small "
                         "inputs), which are zeroed (no output changes); the knee then reads prune_curve_live")
    ap.add_argument("--tolerance", type=float, default=1.0,
                    help="points of the run's metric (BLEU, accuracy %%) the knee may lose (default 1)")
    ap.add_argument("--format", dest="fmt", default="sparse", choices=FORMATS,
                    help="sparse: bitmask + non-zero values (load_sparse_pretrained); dense: plain save_pretrained "
                         "folder for from_pretrained (default sparse)")
    ap.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="storage dtype (default float32)")
    ap.add_argument("--split", default="validation", choices=SPLITS, help="split of the verification")
    ap.add_argument("--no_verify", dest="verify", action="store_false",
                    help="skip the metric before/after (no data needed); the card says so")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR (at the very end)")
    ap.add_argument("--batch_size", type=int, default=None, help="verification batch (32 sentences / 256 images)")
    data = ap.add_argument_group(
        "data of the verification",
        f"Read from RUN_DIR/{RUN_CONFIG_NAME} (or --run_config: the training JSON the run used, with the flags it "
        "overrode), else from all_results.json and the training script's defaults; these flags override both.")
    data.add_argument("--run_config", default=None, help="the run's training config JSON")
    for name, typ in (("dataset_name", str), ("dataset_config_name", str), ("validation_file", str),
                      ("test_file", str), ("source_prefix", str), ("max_source_length", int),
                      ("train_dir", str), ("validation_dir", str), ("test_dir", str), ("validation_size", float),
                      ("max_train_samples", int), ("max_eval_samples", int), ("max_predict_samples", int),
                      ("cache_dir", str)):
        data.add_argument(f"--{name}", type=typ, default=None)
    return ap


DATA_FLAGS = ("dataset_name", "dataset_config_name", "validation_file", "test_file", "source_prefix",
              "max_source_length", "train_dir", "validation_dir", "test_dir", "validation_size", "max_train_samples",
              "max_eval_samples", "max_predict_samples", "cache_dir")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = build_parser()
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.batch_size is not None and args.batch_size < 1:
        ap.error(f"`--batch_size` must be >= 1, got {args.batch_size}")
    try:
        plan = plan_export(args.run_dir, args.out_dir, prune=args.prune, tolerance=args.tolerance, fmt=args.fmt,
                           dtype=args.dtype, split=args.split, verify=args.verify, overwrite=args.overwrite,
                           run_config=args.run_config, weights=args.weights)
    except ExportError as err:
        ap.error(str(err))
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    overrides = {k: getattr(args, k) for k in DATA_FLAGS if getattr(args, k) is not None}
    print(f"export: {plan.run_dir} -> {plan.out_dir}: prune {plan.prune} -> fraction {plan.fraction:g}", flush=True)
    try:
        manifest = export_run(plan, data_overrides=overrides, batch_size=args.batch_size,
                              log=lambda msg: print(msg, flush=True))
    except ExportError as err:
        ap.error(str(err))
    ver = manifest.get("verification")
    sizes = manifest["size_bytes"]
    print(f"wrote {plan.out_dir} ({manifest['format']}, weights {_fmt_bytes(sizes['exported'])} vs dense float32 "
          f"{_fmt_bytes(sizes['dense_float32'])})"
          + (f"; {ver['split']} metric {ver['before']:.2f} -> {ver['after']:.2f}" if ver else ""), flush=True)
    return manifest


__all__ = [
    "DATA_FLAGS",
    "Evaluator",
    "ExportPlan",
    "build_evaluator",
    "build_parser",
    "export_run",
    "image_accuracy",
    "knee_fraction",
    "load_image_eval_data",
    "load_run_model",
    "load_translation_eval_data",
    "main",
    "parse_prune",
    "plan_export",
    "regularized_names",
    "render_export_card",
    "resolve_data_args",
    "translate",
    "write_checkpoint",
]
