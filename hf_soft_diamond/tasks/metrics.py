"""Task metrics: sacrebleu BLEU/chrF for translation, top-1 accuracy for classification.

Conventions (docs/methods.md §7.3-7.4):

* BLEU: sacrebleu *corpus* BLEU on detokenized text, ``tokenize="13a"``,
  default exponential smoothing, one reference per sentence; scores in
  ``[0, 100]``, reported with the sacrebleu signature string. No
  ``evaluate.load`` (it needs the Hub).
* chrF: sacrebleu ``CHRF()`` defaults (character 6-grams, beta 2, no word
  n-grams), ``[0, 100]``.
* Accuracy: top-1, fraction in ``[0, 1]`` over positions whose label is not
  ``ignore_index``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["accuracy", "compute_bleu", "make_translation_compute_metrics"]


def compute_bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU (13a) and chrF of detokenized ``predictions`` against one reference each.

    Leading/trailing whitespace of every string is stripped first.

    Returns:
        ``bleu`` (0-100), ``bleu_signature`` (e.g.
        ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``),
        ``precisions`` (1- to 4-gram, 0-100), ``brevity_penalty``,
        ``sys_len``, ``ref_len`` (13a tokens), ``chrf`` (0-100) and
        ``chrf_signature``.
    """
    from sacrebleu.metrics import BLEU, CHRF

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    hypotheses = [p.strip() for p in predictions]
    refs = [[r.strip() for r in references]]
    bleu = BLEU(tokenize="13a")
    chrf = CHRF()
    bleu_score = bleu.corpus_score(hypotheses, refs)
    chrf_score = chrf.corpus_score(hypotheses, refs)
    return {
        "bleu": float(bleu_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "precisions": [float(p) for p in bleu_score.precisions],
        "brevity_penalty": float(bleu_score.bp),
        "sys_len": int(bleu_score.sys_len),
        "ref_len": int(bleu_score.ref_len),
        "chrf": float(chrf_score.score),
        "chrf_signature": str(chrf.get_signature()),
    }


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def accuracy(logits_or_preds: Any, labels: Any, *, ignore_index: int = -100) -> float:
    """Top-1 accuracy in ``[0, 1]``.

    ``logits_or_preds`` are class scores with one more (last) dimension than
    ``labels`` (argmax taken) or predicted class ids of the same shape as
    ``labels``. NumPy arrays, torch tensors and lists are accepted. Positions
    with ``labels == ignore_index`` are left out; ``nan`` if none is left.
    """
    scores = _to_numpy(logits_or_preds)
    targets = _to_numpy(labels)
    if scores.ndim == targets.ndim + 1:
        predictions = scores.argmax(axis=-1)
    elif scores.shape == targets.shape:
        predictions = scores
    else:
        raise ValueError(f"shapes {scores.shape} (predictions/logits) and {targets.shape} (labels) do not match")
    keep = targets != ignore_index
    if not keep.any():
        return float("nan")
    return float((predictions[keep] == targets[keep]).mean())


def make_translation_compute_metrics(tokenizer: Any, *, ignore_index: int = -100) -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` for ``Seq2SeqTrainer(predict_with_generate=True)``.

    Replaces ``ignore_index`` by the pad id in predictions and labels, decodes
    both with ``skip_special_tokens=True`` and returns ``bleu``, ``chrf`` and
    ``gen_len`` (mean count of non-pad generated tokens).
    """

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.where(predictions != ignore_index, predictions, tokenizer.pad_token_id)
        labels = np.where(labels != ignore_index, labels, tokenizer.pad_token_id)
        decoded_predictions = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = compute_bleu(decoded_predictions, decoded_labels)
        gen_len = float(np.mean(np.count_nonzero(predictions != tokenizer.pad_token_id, axis=-1)))
        return {"bleu": round(scores["bleu"], 4), "chrf": round(scores["chrf"], 4), "gen_len": round(gen_len, 4)}

    return compute_metrics
