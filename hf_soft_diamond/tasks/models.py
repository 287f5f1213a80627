"""Models built from a config (random init) or loaded from a checkpoint.

Translation (this part): Marian-style encoder-decoder Transformers,
:func:`build_translation_model` for named sizes in
:data:`TRANSLATION_MODEL_SIZES` and :func:`load_translation_model` for a Hub
id or a local ``save_pretrained`` directory.

Images (second part): ViT and ResNet classifiers from ``transformers`` configs,
:func:`build_image_model` for named sizes in :data:`IMAGE_MODEL_SIZES` (small ones
fit 28x28 and 32x32 inputs; the paper's Caltech setting is 100x100x3) and
:func:`load_image_model` for a checkpoint, with dropout and batch-norm switches
for the paper's interaction runs.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from torch import nn

__all__ = [
    "TRANSLATION_MODEL_SIZES",
    "build_translation_model",
    "load_translation_model",
    "freeze_sinusoidal_positions",
    "translation_config",
    "IMAGE_MODEL_SIZES",
    "build_image_model",
    "load_image_model",
]

# ---------------------------------------------------------------------------
# Translation models
# ---------------------------------------------------------------------------

#: Named sizes of :func:`build_translation_model` (``MarianConfig`` fields).
#:
#: * ``micro``: the CPU study size (2+2 layers, d_model 128, FFN 512; 1.3M parameters
#:   with a 2k vocabulary); step time: ``benchmarks/RESULTS.md``, "Timings moved out of
#:   docstrings".
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
_TINY_MARIAN: dict[str, Any] = dict(
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
)
TRANSLATION_MODEL_SIZES: dict[str, dict[str, Any]] = {
    "micro": dict(_TINY_MARIAN, d_model=128),  # tiny at half the width
    "tiny": _TINY_MARIAN,
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
    size: Literal["micro", "tiny", "small", "iwslt"],
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
    size: Literal["micro", "tiny", "small", "iwslt"],
    tokenizer: Any,
    *,
    seed: int | None = None,
    max_length: int = 256,
    **overrides: Any,
):
    """A randomly initialised ``MarianMTModel`` of a named size (:data:`TRANSLATION_MODEL_SIZES`).

    Args:
        size: ``"micro"``, ``"tiny"``, ``"small"`` or ``"iwslt"``.
        tokenizer: a joint source+target tokenizer with pad and eos tokens
            (e.g. from :func:`hf_soft_diamond.tasks.data.translation.train_translation_tokenizer`).
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

    Fixed sinusoidal position tables (Marian's ``embed_positions``) are frozen again:
    ``from_pretrained`` hands them back trainable, and since they are not saved (they are
    rebuilt from the config), training them would change the model in memory only; a
    regularizer would also count them.
    """
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_name_or_path), **from_pretrained_kwargs)
    freeze_sinusoidal_positions(model)
    return model


def freeze_sinusoidal_positions(model: nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on every fixed sinusoidal position table; return their names."""
    frozen = []
    for name, module in model.named_modules():
        if "SinusoidalPositionalEmbedding" in type(module).__name__ and isinstance(
                getattr(module, "weight", None), nn.Parameter):
            module.weight.requires_grad_(False)
            frozen.append(name)
    return frozen


# ---------------------------------------------------------------------------
# Image models
# ---------------------------------------------------------------------------

#: Named sizes of :func:`build_image_model` per architecture.
#:
#: * ``resnet``/``small``: basic-block ResNet, widths 32-64-128-256, one block per
#:   stage (~1.2M parameters); the transformers stem (7x7/2 conv + 3x3/2 max-pool)
#:   reduces 28x28 inputs to 7x7 before the first stage.
#: * ``resnet``/``resnet18``: the ResNet-18 layout (basic blocks 2-2-2-2, 64..512).
#: * ``vit``/``small``: 6 layers, hidden 192, 3 heads, MLP 384 (~1.9M parameters);
#:   patch 4 for inputs up to 32 pixels, 10 for the 100x100 Caltech setting.
#: * ``vit``/``base``: ViT-Base (12 layers, hidden 768, 12 heads, MLP 3072).
IMAGE_MODEL_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "resnet": {
        "tiny": dict(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic"),
        "small": dict(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic"),
        "resnet18": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                         layer_type="basic"),
    },
    "vit": {
        "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
        "small": dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=384),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    },
}


def _vit_patch_size(image_size: int) -> int:
    if image_size <= 32:
        return 4
    for patch in (16, 10, 8, 7, 5, 4):
        if image_size % patch == 0 and image_size // patch <= 16:
            return patch
    return 4


def build_image_model(
    arch: Literal["resnet", "vit"],
    size: str,
    *,
    num_labels: int,
    image_size: int,
    num_channels: int = 3,
    dropout: float = 0.0,
    batch_norm: bool = True,
    id2label: dict[int, str] | None = None,
    seed: int | None = None,
):
    """A randomly initialised ``ResNetForImageClassification`` or ``ViTForImageClassification``.

    Args:
        arch: ``"resnet"`` or ``"vit"``.
        size: a key of ``IMAGE_MODEL_SIZES[arch]``.
        num_labels: classes.
        image_size: input side in pixels (square inputs).
        num_channels: 1 (grayscale) or 3.
        dropout: ViT: hidden and attention dropout; ResNet: dropout before the classifier.
        batch_norm: ResNet only; ``False`` replaces every ``BatchNorm2d`` by ``Identity``
            (for the paper's prior x batch-norm interaction runs).
        id2label: label names.
        seed: when given, ``torch.manual_seed(seed)`` before the weights are drawn.
    """
    import torch
    from torch import nn
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    if arch not in IMAGE_MODEL_SIZES:
        raise ValueError(f"`model_type` must be one of {list(IMAGE_MODEL_SIZES)}, got {arch!r}.")
    if size not in IMAGE_MODEL_SIZES[arch]:
        raise ValueError(f"`model_size` for {arch} must be one of {list(IMAGE_MODEL_SIZES[arch])}, got {size!r}.")
    if num_labels < 2:
        raise ValueError(f"`num_labels` must be >= 2, got {num_labels}.")
    if num_channels not in (1, 3):
        raise ValueError(f"`num_channels` must be 1 or 3, got {num_channels}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
    if arch == "vit" and not batch_norm:
        raise ValueError("`batch_norm=False` applies to ResNet only (ViT uses LayerNorm).")
    labels = id2label or {i: str(i) for i in range(num_labels)}
    common = dict(num_labels=num_labels, id2label=labels, label2id={v: k for k, v in labels.items()},
                  num_channels=num_channels)
    if seed is not None:
        torch.manual_seed(seed)
    if arch == "vit":
        patch = _vit_patch_size(image_size)
        config = ViTConfig(image_size=image_size, patch_size=patch, encoder_stride=patch, hidden_dropout_prob=dropout,
                           attention_probs_dropout_prob=dropout, **IMAGE_MODEL_SIZES[arch][size], **common)
        return ViTForImageClassification(config)
    config = ResNetConfig(**IMAGE_MODEL_SIZES[arch][size], **common)
    config.classifier_dropout = dropout
    model = ResNetForImageClassification(config)
    if dropout > 0:
        flatten, linear = model.classifier[0], model.classifier[1]
        model.classifier = nn.Sequential(flatten, nn.Dropout(dropout), linear)
    if not batch_norm:
        _replace_batch_norm(model)
        config.use_batch_norm = False
    return model


def _replace_batch_norm(module) -> None:
    from torch import nn

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _replace_batch_norm(child)


def load_image_model(model_name_or_path: str | os.PathLike[str], *, num_labels: int | None = None,
                     **from_pretrained_kwargs: Any):
    """``AutoModelForImageClassification.from_pretrained`` (Hub id or local folder).

    A ResNet saved without batch norm (``config.use_batch_norm`` False) comes back without it.

    With ``num_labels`` different from the checkpoint's, the head is re-initialised
    (``ignore_mismatched_sizes=True``), as for fine-tuning on a new label set.
    """
    from transformers import AutoModelForImageClassification

    if num_labels is not None:
        from_pretrained_kwargs.setdefault("num_labels", num_labels)
        from_pretrained_kwargs.setdefault("ignore_mismatched_sizes", True)
    model = AutoModelForImageClassification.from_pretrained(model_name_or_path, **from_pretrained_kwargs)
    if getattr(model.config, "use_batch_norm", True) is False:  # saved by build_image_model(batch_norm=False)
        _replace_batch_norm(model)
    return model
