"""Tokenizer training: a joint German+English subword tokenizer (byte-level BPE or Unigram) for Marian-style models.

Conventions (details in :func:`train_translation_tokenizer`): trained on the
training split only; no normalizer; special tokens ``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2; every encoded sequence ends with ``</s>``; ``vocab_size``
includes the special tokens. The default languages are
:data:`~.corpus.CORPUS_LANGUAGES`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import datasets

from .corpus import CORPUS_LANGUAGES

__all__ = ["train_translation_tokenizer"]


def _iter_texts(
    data: datasets.Dataset | Iterable[str] | Iterable[dict[str, Any]], languages: Sequence[str]
) -> Iterator[str]:
    if isinstance(data, datasets.Dataset):
        data = data["translation"]
    for item in data:
        if isinstance(item, str):
            yield item
        else:
            pair = item.get("translation", item)
            for language in languages:
                yield pair[language]


def train_translation_tokenizer(
    data: datasets.Dataset | Iterable[str] | Iterable[dict[str, Any]],
    *,
    vocab_size: int = 8000,
    algorithm: Literal["bpe", "unigram"] = "bpe",
    languages: Sequence[str] = CORPUS_LANGUAGES,
    min_frequency: int = 2,
    model_max_length: int = 512,
    output_dir: str | os.PathLike[str] | None = None,
):
    """Train a joint source+target subword tokenizer for a Marian-style model.

    Train it on the **training split only**: ``data`` is a ``Dataset`` with a
    ``translation`` column, an iterable of such rows, or of plain strings.

    Conventions:
        * ``algorithm="bpe"`` (default): byte-level BPE (GPT-2/RoBERTa
          pre-tokenizer and decoder, no prefix space). Lossless: every string
          encodes without ``<unk>`` and ``decode(encode(s)) == s``.
        * ``algorithm="unigram"``: SentencePiece-style Unigram with a
          ``Metaspace`` pre-tokenizer/decoder (``▁`` marks a word start), as in
          Marian. Round-trips text made of characters seen in training;
          unseen characters become ``<unk>``.
        * No normalizer (text is used as is, so decoding restores it).
        * Special tokens: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2. Every
          encoded sequence ends with ``</s>`` (source and labels alike, as
          Marian); the decoder starts with ``<pad>``
          (``decoder_start_token_id = pad_token_id``, set by
          :func:`hf_soft_diamond.tasks.models.build_translation_model`).
        * ``vocab_size`` includes the special tokens.

    Returns a ``transformers.PreTrainedTokenizerFast`` (saved with
    ``save_pretrained`` to ``output_dir`` when given, reloadable with
    ``AutoTokenizer.from_pretrained``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = ["<pad>", "</s>", "<unk>"]
    if algorithm == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif algorithm == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=special_tokens, unk_token="<unk>", show_progress=False
        )
    else:
        raise ValueError(f"algorithm must be 'bpe' or 'unigram', got {algorithm!r}")
    tokenizer.train_from_iterator(_iter_texts(data, languages), trainer=trainer)
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    if output_dir is not None:
        wrapped.save_pretrained(str(output_dir))
    return wrapped
