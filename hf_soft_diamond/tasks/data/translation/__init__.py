"""German-English translation data: offline Debian corpora, Hub datasets, local files, tokenizer.

Every loader here returns a :class:`datasets.DatasetDict` whose rows have the
format of transformers' ``run_translation.py``::

    {"translation": {"de": "Das Licht ging plötzlich an.", "en": "The light came on suddenly."}}

One job per module:

=================  ==============================================================
``text``           text cleaning of the parsers; the normalized dedup/split key
``ding``           Ding dictionary parser (``trans-de-en``): sentence pairs
``libreoffice``    LibreOffice help parser, its location and ``apt-get download``
``splits``         deterministic deduplication and train/validation/test split
``cache``          the cache directory of downloads and prepared splits
``corpus``         offline corpus loader (``ding``, ``libreoffice``, both), sizes
``hub``            Hub datasets through ``datasets.load_dataset``
``files``          local json/jsonl/csv/tsv files
``tokenizer``      joint BPE/Unigram tokenizer training
=================  ==============================================================

The offline corpora and their sizes are described in :mod:`.corpus`, the split
convention in :mod:`.splits`. Every public name of the submodules is
re-exported here. A re-exported constant is a copy of the binding: patching
it here does not change what the submodules read, so patch the submodule that
reads it (e.g. ``translation.ding.DING_PATH``).
"""

from __future__ import annotations

from .cache import default_cache_dir
from .corpus import CORPUS_LANGUAGES, OFFLINE_CORPORA, corpus_statistics, load_offline_translation_corpus
from .ding import DING_PATH, is_complete_sentence, parse_ding_line, read_ding_pairs, strip_ding_annotations
from .files import iter_translation_rows, load_translation_files
from .hub import HUB_TRANSLATION_DATASETS, load_hub_translation_dataset
from .libreoffice import (
    LIBREOFFICE_HELP_PACKAGES,
    download_libreoffice_help,
    find_libreoffice_help_root,
    html_to_text,
    read_libreoffice_help_pairs,
)
from .splits import SPLIT_VERSION, assign_splits, split_of_key
from .text import normalize_for_dedup
from .tokenizer import train_translation_tokenizer

__all__ = [
    "CORPUS_LANGUAGES",
    "DING_PATH",
    "HUB_TRANSLATION_DATASETS",
    "LIBREOFFICE_HELP_PACKAGES",
    "OFFLINE_CORPORA",
    "SPLIT_VERSION",
    "assign_splits",
    "corpus_statistics",
    "default_cache_dir",
    "download_libreoffice_help",
    "find_libreoffice_help_root",
    "html_to_text",
    "is_complete_sentence",
    "iter_translation_rows",
    "load_hub_translation_dataset",
    "load_offline_translation_corpus",
    "load_translation_files",
    "normalize_for_dedup",
    "parse_ding_line",
    "read_ding_pairs",
    "read_libreoffice_help_pairs",
    "split_of_key",
    "strip_ding_annotations",
    "train_translation_tokenizer",
]
