"""Datasets: translation (German-English) loaders; image loaders live in ``images.py``."""

from .translation import (
    DING_PATH,
    HUB_TRANSLATION_DATASETS,
    OFFLINE_CORPORA,
    download_libreoffice_help,
    load_hub_translation_dataset,
    load_offline_translation_corpus,
    load_translation_files,
    train_translation_tokenizer,
)

__all__ = [
    "DING_PATH",
    "HUB_TRANSLATION_DATASETS",
    "OFFLINE_CORPORA",
    "download_libreoffice_help",
    "load_hub_translation_dataset",
    "load_offline_translation_corpus",
    "load_translation_files",
    "train_translation_tokenizer",
]
