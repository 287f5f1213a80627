"""Token-budget batches: every example once per epoch, within the budget, reproducible per (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from hf_soft_diamond.batching import TokenBudgetBatchSampler


def _lengths(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.lognormal(2.8, 0.7, size=n).astype(int) + 1).tolist()


@pytest.mark.parametrize("budget, cap", [(256, None), (1000, None), (1000, 16), (37, None)])
def test_batches_cover_every_example_once_within_the_budget(budget, cap):
    lengths = _lengths()
    sampler = TokenBudgetBatchSampler(lengths, budget, max_sentences=cap, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # the length does not depend on the epoch
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))
        for b in batches:
            padded = max(lengths[i] for i in b) * len(b)
            assert padded <= budget or len(b) == 1  # an example over the budget travels alone
            assert cap is None or len(b) <= cap


def test_same_seed_and_epoch_same_batches_and_epochs_differ():
    lengths = _lengths()
    a, b = TokenBudgetBatchSampler(lengths, 800, seed=5), TokenBudgetBatchSampler(lengths, 800, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(a) != list(TokenBudgetBatchSampler(lengths, 800, seed=6).batches(2))


def test_padding_is_small_compared_with_random_batches():
    lengths = np.array(_lengths(2000))
    sampler = TokenBudgetBatchSampler(lengths.tolist(), 1024, seed=0)
    real = int(lengths.sum())
    assert sampler.padded_tokens() < 1.1 * real
    # random batches of the same mean size pad far more (the reason token batching exists)
    size = round(len(lengths) / len(sampler))
    perm = np.random.default_rng(0).permutation(len(lengths))
    random_padded = sum(lengths[perm[i:i + size]].max() * len(perm[i:i + size]) for i in range(0, len(perm), size))
    assert random_padded > 1.5 * sampler.padded_tokens()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_tokens": 0}, "`max_tokens` must be an integer >= 1"),
    ({"max_tokens": 10, "max_sentences": 0}, "`max_sentences` must be None or an integer >= 1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenBudgetBatchSampler([3, 4, 5], **kwargs)


def test_training_argument_is_validated():
    from hf_soft_diamond import SoftDiamondSeq2SeqTrainingArguments

    with pytest.raises(ValueError, match="`max_tokens_per_batch` must be None"):
        SoftDiamondSeq2SeqTrainingArguments(output_dir="unused", report_to=[], max_tokens_per_batch=0)
