"""BLEU/chrF via sacrebleu against hand calculations; top-1 accuracy."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_soft_diamond.tasks.metrics import accuracy, compute_bleu, make_translation_compute_metrics


def _hand_bleu(hypotheses, references):
    """Corpus BLEU from clipped n-gram counts (whitespace tokens, no smoothing needed)."""
    matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for hyp, ref in zip(hypotheses, references):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_precision), bp


def test_perfect_and_disjoint():
    refs = ["The light came on suddenly.", "Who might have told him?"]
    perfect = compute_bleu(refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    disjoint = compute_bleu(["xyz qqq", "vvv www"], refs)
    assert disjoint["bleu"] == 0.0
    assert "tok:13a" in perfect["bleu_signature"] and "nrefs:1" in perfect["bleu_signature"]
    assert perfect["chrf_signature"].startswith("nrefs:1")


def test_bleu_matches_a_hand_calculation_with_brevity_penalty():
    # Tokens already split as 13a would (punctuation separated), so whitespace counting is exact.
    hypotheses = ["the cat sat on the mat today", "a dog ran in the big park"]
    references = ["the cat sat on the red mat today", "a dog ran fast in the big green park"]
    expected, bp = _hand_bleu(hypotheses, references)
    assert bp < 1
    result = compute_bleu(hypotheses, references)
    assert result["bleu"] == pytest.approx(expected, abs=1e-6)
    assert result["brevity_penalty"] == pytest.approx(bp)
    assert (result["sys_len"], result["ref_len"]) == (14, 17)
    # Whitespace around the strings is ignored (detokenized input, stripped).
    assert compute_bleu([" " + h + "\n" for h in hypotheses], references)["bleu"] == pytest.approx(expected)
    with pytest.raises(ValueError):
        compute_bleu(hypotheses, references[:1])


def test_accuracy_logits_predictions_and_ignore_index():
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    labels = np.array([1, 0, 1, -100])
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(2 / 3)
    assert accuracy([1, 0, 2, 0], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert accuracy(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)) == 1.0  # token level
    assert math.isnan(accuracy([1], [-100]))
    with pytest.raises(ValueError):
        accuracy(np.zeros((3, 2, 2)), np.zeros(4))


def test_translation_compute_metrics_decodes_and_scores():
    from hf_soft_diamond.tasks.data.translation import train_translation_tokenizer

    sentences = ["The light came on suddenly.", "Who might have told him?"]
    tokenizer = train_translation_tokenizer(sentences * 10, vocab_size=300, min_frequency=1)
    encoded = tokenizer(sentences, padding=True)["input_ids"]
    labels = np.array(encoded)
    labels[labels == tokenizer.pad_token_id] = -100
    predictions = np.array([[tokenizer.pad_token_id] + row for row in encoded])
    scores = make_translation_compute_metrics(tokenizer)(SimpleNamespace(predictions=predictions, label_ids=labels))
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert scores["gen_len"] == pytest.approx(np.mean([len(tokenizer(s)["input_ids"]) for s in sentences]))
