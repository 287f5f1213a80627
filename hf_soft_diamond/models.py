"""Models built from a config (random init) or loaded from a checkpoint.

Translation (this part): Marian-style encoder-decoder Transformers,
:func:`build_translation_model` for named sizes in
:data:`TRANSLATION_MODEL_SIZES` and :func:`load_translation_model` for a Hub
id or a local ``save_pretrained`` directory.

Image models live in the image part of this module (functions named
``build_image_model`` / ``load_image_model``), added separately.
"""

from __future__ import annotations

import os
from typing import Any, Literal

__all__ = [
    "TRANSLATION_MODEL_SIZES",
    "build_translation_model",
    "load_translation_model",
    "translation_config",
]

# ---------------------------------------------------------------------------
# Translation models
# ---------------------------------------------------------------------------

#: Named sizes of :func:`build_translation_model` (``MarianConfig`` fields).
#:
#: * ``tiny``: CPU demo (4.9M parameters with an 8k vocabulary); reaches
#:   BLEU > 0 on the offline corpora within minutes on a laptop CPU.
#: * ``small``: between the two (13.5M parameters with an 8k vocabulary).
#: * ``iwslt``: fairseq's ``transformer_iwslt_de_en`` (6+6 layers, d_model 512,
#:   FFN 1024, 4 heads, dropout 0.3; 36.2M parameters with an 8k vocabulary).
#:
#: All sizes: ReLU, post-norm (Marian), sinusoidal positions, embeddings scaled
#: by sqrt(d_model), one embedding matrix shared by encoder, decoder and the
#: output projection (``share_encoder_decoder_embeddings`` and
#: ``tie_word_embeddings``), so the tokenizer must be joint (source+target).
TRANSLATION_MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=256,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
    ),
    "small": dict(
        d_model=384,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=6,
        decoder_attention_heads=6,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        dropout=0.2,
        attention_dropout=0.1,
        activation_dropout=0.1,
    ),
    "iwslt": dict(
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        dropout=0.3,
        attention_dropout=0.1,
        activation_dropout=0.1,
    ),
}


def translation_config(
    size: Literal["tiny", "small", "iwslt"],
    tokenizer: Any,
    *,
    max_position_embeddings: int = 512,
    **overrides: Any,
):
    """``MarianConfig`` for a named size and a tokenizer.

    Token conventions (Marian): ``pad_token_id = decoder_start_token_id =
    tokenizer.pad_token_id``; ``eos_token_id = forced_eos_token_id =
    tokenizer.eos_token_id``; ``vocab_size = len(tokenizer)`` (added tokens
    included). ``overrides`` replace any field (e.g. ``dropout=0.1``).
    """
    from transformers import MarianConfig

    if size not in TRANSLATION_MODEL_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(TRANSLATION_MODEL_SIZES)}")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs a pad and an eos token")
    fields: dict[str, Any] = dict(TRANSLATION_MODEL_SIZES[size])
    fields.update(
        vocab_size=len(tokenizer),
        decoder_vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        activation_function="relu",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        init_std=0.02,
    )
    fields.update(overrides)
    return MarianConfig(**fields)


def _set_translation_generation_defaults(model: Any, max_length: int) -> None:
    generation_config = model.generation_config
    generation_config.pad_token_id = model.config.pad_token_id
    generation_config.eos_token_id = model.config.eos_token_id
    generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    generation_config.forced_eos_token_id = model.config.eos_token_id
    # The decoder starts with <pad>; it must never emit it afterwards.
    generation_config.bad_words_ids = [[model.config.pad_token_id]]
    generation_config.max_length = max_length
    generation_config.num_beams = 1


def build_translation_model(
    size: Literal["tiny", "small", "iwslt"],
    tokenizer: Any,
    *,
    seed: int | None = None,
    max_length: int = 256,
    **overrides: Any,
):
    """A randomly initialised ``MarianMTModel`` of a named size (:data:`TRANSLATION_MODEL_SIZES`).

    Args:
        size: ``"tiny"``, ``"small"`` or ``"iwslt"``.
        tokenizer: a joint source+target tokenizer with pad and eos tokens
            (e.g. from :func:`hf_soft_diamond.data.translation.train_translation_tokenizer`).
        seed: when given, ``torch.manual_seed(seed)`` before the weights are drawn.
        max_length: default ``generation_config.max_length`` (tokens).
        overrides: ``MarianConfig`` fields that replace the size's values.

    Generation defaults: greedy (``num_beams=1``), decoding starts from
    ``<pad>``, ``<pad>`` is banned afterwards (``bad_words_ids``) and
    ``</s>`` is forced at ``max_length``.
    """
    import torch
    from transformers import MarianMTModel

    config = translation_config(size, tokenizer, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    model = MarianMTModel(config)
    _set_translation_generation_defaults(model, max_length)
    return model


def load_translation_model(model_name_or_path: str | os.PathLike[str], **from_pretrained_kwargs: Any):
    """Load a sequence-to-sequence model with ``AutoModelForSeq2SeqLM.from_pretrained``.

    ``model_name_or_path`` is a Hub id (e.g. ``"Helsinki-NLP/opus-mt-de-en"``,
    needs internet) or a local directory written by ``save_pretrained``.
    Keyword arguments (``revision``, ``cache_dir``, ``token``, ``dtype``...)
    are passed through.
    """
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(str(model_name_or_path), **from_pretrained_kwargs)
