"""Model cards for runs trained with hf_soft_diamond, rendered with ``huggingface_hub``.

The card is built from the run's results dict (what the training scripts write to
``all_results.json``). It carries ``model-index`` results explicitly (BLEU with the
sacrebleu signature for translation, accuracy for images, and sparsity), because the
automatic card of transformers 5.x drops translation results.

Keys read from ``results`` (all optional except the task metric):

* ``task``: ``"translation"`` or ``"image-classification"``;
* ``test_bleu``, ``test_bleu_signature``, ``test_chrf`` or ``test_accuracy`` (percent);
  ``eval_``-prefixed metrics are used when no ``test_`` ones exist;
* ``sparsity``: ``{"regularized": {tau: fraction}, "all": {tau: fraction}}``, optionally
  ``"live"`` (the regularized weights that are not padding-only convolution taps) with
  ``sparsity_numel`` (weights counted per group); when every regularized weight is live the
  card says so in one sentence instead of repeating the figures;
* ``prune_curve``: ``[{"fraction": f, "metric": m}, ...]`` and ``sparsity_at_1pt_loss``;
  optionally ``prune_curve_live`` (fractions of the live weights);
* ``regularizer``: the regularizer's hyperparameters (``Regularizer.hparams()``);
* ``dataset_name``, ``dataset_config_name``, ``dataset_split``, ``language_pair``;
* ``training``: the recipe (optimizer, learning rate, schedule, steps, batch, seed ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .regularizers import get_regularizer_class
from .regularizers.base import UNCITED, Citation

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "hf_soft_diamond_card.md"  # model_cards/ links here

#: Below this unpruned metric (BLEU points; accuracy in % for 10 classes: chance + 10) the
#: prune curve's "sparsity within 1 point" is not a finding: there is nothing left to lose.
MEANINGFUL_METRIC_FLOOR: dict[str, float] = {"translation": 5.0, "image-classification": 20.0}


def citation_of(name: str) -> Citation:
    """The registered citation of regularizer ``name`` (:data:`UNCITED` for an unknown name)."""
    try:
        return get_regularizer_class(name).citation
    except ValueError:
        return UNCITED


def _metric(results: Mapping[str, Any], name: str) -> tuple[str, Any] | None:
    for prefix in ("test_", "eval_", ""):
        if f"{prefix}{name}" in results:
            return prefix.rstrip("_") or "test", results[f"{prefix}{name}"]
    return None


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_model_card(
    results: Mapping[str, Any],
    *,
    model_name: str,
    plots: Sequence[str | Path] = (),
    summary: str | None = None,
    limitations: str | None = None,
    template_path: str | Path = TEMPLATE_PATH,
) -> ModelCard:
    """Render the card of one run. ``plots`` are paths relative to the card (the repo root)."""
    task = results.get("task", "translation" if _metric(results, "bleu") else "image-classification")
    reg = dict(results.get("regularizer") or {"regularizer": "none"})
    reg_name = str(reg.get("regularizer", "none"))
    cited = citation_of(reg_name)
    title, paper, bibtex = cited.title, cited.reference, cited.bibtex
    dataset = str(results.get("dataset_name") or "unknown dataset")
    config = results.get("dataset_config_name")
    dataset_title = f"{dataset} ({config})" if config else dataset

    eval_results: list[EvalResult] = []
    metric_rows: list[dict[str, str]] = []
    task_type = "translation" if task == "translation" else "image-classification"
    task_metric_name = "BLEU" if task == "translation" else "accuracy (%)"
    split = "test"
    signature = None
    wanted = ("bleu", "chrf") if task == "translation" else ("accuracy",)
    for name in wanted:
        found = _metric(results, name)
        if found is None:
            continue
        split, value = found
        pretty = {"bleu": "BLEU", "chrf": "chrF", "accuracy": "accuracy (%)"}[name]
        metric_rows.append({"name": pretty, "value": _fmt(float(value))})
        extra = {}
        if name == "bleu":
            sig = _metric(results, "bleu_signature")
            signature = sig[1] if sig else None
            extra = {"metric_config": signature} if signature else {}
        eval_results.append(EvalResult(
            task_type=task_type, dataset_type=dataset, dataset_name=dataset_title, dataset_config=config,
            dataset_split=results.get("dataset_split", split), metric_type=name, metric_name=pretty,
            metric_value=round(float(value), 4), **extra))
    if not eval_results:
        raise ValueError("`results` has no task metric (test_bleu / test_accuracy or eval_ variants)")
    starting_model = results.get("model")
    for name in wanted:  # the same split and decoding, translated by the model the run started from
        if f"before_{name}" in results:
            pretty = {"bleu": "BLEU", "chrf": "chrF", "accuracy": "accuracy (%)"}[name]
            metric_rows.append({"name": f"{pretty} of the starting model (`{starting_model}`)",
                                "value": _fmt(float(results[f"before_{name}"]))})

    sparsity = dict(results.get("sparsity") or {})
    numel = results.get("sparsity_numel") or {}
    # a model with no padding-only taps at its input size (the ViT, a convnet on large images)
    # records live == regularized: one sentence says so instead of a second, identical row/column
    all_live = "live" in sparsity and numel.get("live") is not None and numel.get("live") == numel.get("regularized")
    if all_live:
        del sparsity["live"]
    taus = sorted({tau for group in sparsity.values() for tau in group}, key=float)
    sparsity_rows = []
    for group, label in (("regularized", "regularized"), ("live", "live (regularized, not padding-only)"),
                         ("all", "all")):
        if group in sparsity:
            sparsity_rows.append({"name": label,
                                  "values": [f"{100 * float(sparsity[group].get(t, float('nan'))):.2f}%"
                                             for t in taus]})
            for t in taus:
                if t in sparsity[group]:
                    eval_results.append(EvalResult(
                        task_type=task_type, dataset_type=dataset, dataset_name=dataset_title, dataset_config=config,
                        dataset_split=results.get("dataset_split", split), metric_type="sparsity",
                        metric_name=f"sparsity {group} |w|<={t}",
                        metric_value=round(float(sparsity[group][t]), 6)))

    curve = results.get("prune_curve") or []
    live_curve = {float(p["fraction"]): float(p["metric"])
                  for p in ([] if all_live else results.get("prune_curve_live") or [])}
    prune_rows = [{"fraction": f"{100 * float(p['fraction']):.0f}%", "metric": _fmt(float(p["metric"])),
                   "live": _fmt(live_curve[float(p["fraction"])]) if float(p["fraction"]) in live_curve else "n/a"}
                  for p in curve]
    at_loss = results.get("sparsity_at_1pt_loss")
    unpruned = next((float(p["metric"]) for p in curve if float(p["fraction"]) == 0.0), None)
    floor = MEANINGFUL_METRIC_FLOOR.get(task_type, 0.0)
    prune_caveat = None
    if at_loss is not None and unpruned is not None and unpruned < floor:
        prune_caveat = (f"Not reported as a finding: the unpruned {task_metric_name} ({unpruned:.2f}) is within a few "
                        f"points of {'zero' if task_type == 'translation' else 'chance'}, so staying within 1 point of "
                        "it says nothing about how prunable a working model is.")
        at_loss = None

    language = ["de", "en"] if task == "translation" else None
    card_data = ModelCardData(
        model_name=model_name, language=language, license=results.get("license", "apache-2.0"),
        library_name="transformers", tags=["hf-soft-diamond", reg_name, task_type],
        datasets=[dataset], metrics=[m for m in wanted if _metric(results, m)] + ["sparsity"],
        pipeline_tag="translation" if task == "translation" else "image-classification",
        eval_results=eval_results,
        # a Hub id (not a local folder) is linked as the base model on the Hub
        base_model=starting_model if starting_model and "/" in str(starting_model)
        and not Path(str(starting_model)).exists() else None,
    )
    training = dict(results.get("training") or {})
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        summary=summary or (f"A {'German-to-English translation' if task == 'translation' else 'image classification'}"
                            + (f" model fine-tuned from `{starting_model}` with the {title}"
                               if "before_" + wanted[0] in results else f" model trained with the {title}")
                            + (f" ({reg['reg_mode']} mode)." if reg.get("reg_mode") not in (None, "auto") else ".")),
        regularized=reg_name != "none",
        regularizer_title=title,
        regularizer_paper=paper,
        dataset_title=dataset_title,
        split=results.get("dataset_split", split),
        metric_rows=metric_rows,
        bleu_signature=signature,
        metric_name=task_metric_name,
        sparsity_taus=taus,
        sparsity_rows=sparsity_rows,
        prune_rows=prune_rows,
        prune_live=bool(live_curve),
        live_weights=f"{numel['live']:,} of {numel['regularized']:,}"
        if "live" in sparsity and "live" in numel and "regularized" in numel else None,
        all_live=all_live,
        sparsity_at_loss=None if at_loss is None else f"{100 * float(at_loss):.0f}%",
        prune_caveat=prune_caveat,
        plots=[{"path": str(p), "title": Path(p).stem.replace("_", " ")} for p in plots],
        regularizer_rows=[(k, _fmt(v, 6) if isinstance(v, float) else v) for k, v in reg.items()],
        training_rows=[(k, v) for k, v in training.items() if v is not None],
        limitations=limitations or (
            "Trained and evaluated at the scale stated above; numbers on small offline corpora are not comparable "
            "with published IWSLT/WMT or CIFAR results. Sparsity is measured on the stored weights; the prune curve "
            "prunes without fine-tuning."),
        citation=bibtex or None,
    )
