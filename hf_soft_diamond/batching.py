"""Token-based batching for sequence-to-sequence training (fairseq's ``--max-tokens``).

Sentence-count batches waste most of a CPU's time on padding when lengths vary
(the offline corpora run from 3 to 300 tokens): a batch of 64 random sentences is
padded to its longest. :class:`TokenBudgetBatchSampler` sorts the examples by
length (random tie-breaks, drawn anew each epoch) and cuts the sorted list into
batches whose *padded* size ``longest * n_sentences`` stays within a token budget,
then shuffles the order of the batches. Every batch costs about the same, and
padding is a few percent of the tokens instead of most of them.

Determinism: the batches of an epoch depend on ``(seed, epoch)`` only, so a run
resumed from a checkpoint (``Trainer`` calls :meth:`set_epoch`, then skips the
batches already trained) sees exactly the batches of an uninterrupted run. The
number of batches does not depend on the epoch (the sorted *lengths* are the same
whatever the tie-breaks), so ``len()`` is exact, as the Trainer's schedule needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["TokenBudgetBatchSampler", "example_lengths"]


def example_lengths(dataset, columns: Sequence[str] = ("input_ids", "labels")) -> list[int]:
    """Per example, the longest of the token sequences in ``columns`` (those the dataset has)."""
    present = [c for c in columns if c in dataset.column_names]
    if not present:
        raise ValueError(f"the dataset has none of the columns {list(columns)} to measure lengths from")
    per_column = [[len(ids) for ids in dataset[c]] for c in present]
    return [max(values) for values in zip(*per_column)]


class TokenBudgetBatchSampler:
    """Batches of indices whose padded token count ``max(length) * len(batch)`` is at most ``max_tokens``.

    Args:
        lengths: tokens of each example (for seq2seq, the longer of source and target).
        max_tokens: budget of padded tokens per batch (per side). An example longer than
            the budget gets a batch of its own.
        max_sentences: optional cap on the examples per batch.
        seed: base seed; the batches of epoch ``e`` are drawn from ``seed + e``.
        shuffle: ``False`` keeps the sorted order (shortest first) and ignores the seed.

    Use as a ``DataLoader``'s ``batch_sampler``. ``accelerate`` shards it across
    processes batch by batch.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, max_sentences: int | None = None,
                 seed: int = 0, shuffle: bool = True) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"`max_tokens` must be an integer >= 1, got {max_tokens!r}.")
        if max_sentences is not None and (not isinstance(max_sentences, int) or max_sentences < 1):
            raise ValueError(f"`max_sentences` must be None or an integer >= 1, got {max_sentences!r}.")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ValueError("`lengths` must be a non-empty sequence of token counts.")
        if (self.lengths < 1).any():
            raise ValueError("`lengths` must all be >= 1.")
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        # batch sizes from the sorted lengths alone: the same for every epoch's tie-breaks
        self._sizes = self._batch_sizes(np.sort(self.lengths, kind="stable"))
        self.batch_size = None  # variable-size batches (accelerate reads this attribute)
        self.drop_last = False

    def _batch_sizes(self, sorted_lengths: np.ndarray) -> list[int]:
        sizes: list[int] = []
        count = 0
        for length in sorted_lengths:  # ascending, so the newest example is the longest so far
            full = count and (int(length) * (count + 1) > self.max_tokens
                              or (self.max_sentences is not None and count == self.max_sentences))
            if full:
                sizes.append(count)
                count = 0
            count += 1
        sizes.append(count)
        return sizes

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields (the Trainer calls this)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._sizes)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches of ``epoch`` (default: the current one), in the order they are yielded."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            bounds = np.cumsum([0, *self._sizes])
            return [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
        rng = np.random.default_rng([self.seed, epoch])
        tie_break = rng.permutation(len(self.lengths))
        order = tie_break[np.argsort(self.lengths[tie_break], kind="stable")]
        bounds = np.cumsum([0, *self._sizes])
        batches = [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def padded_tokens(self) -> int:
        """Padded tokens per epoch (per side): the cost the budget bounds."""
        sorted_lengths = np.sort(self.lengths, kind="stable")
        bounds = np.cumsum([0, *self._sizes])
        return int(sum(sorted_lengths[b - 1] * (b - a) for a, b in zip(bounds[:-1], bounds[1:])))
