"""Where the translation data lives on disk: :func:`default_cache_dir`.

Convention: ``$HF_SOFT_DIAMOND_CACHE/translation`` when the variable is set,
else ``platformdirs.user_cache_dir("hf_soft_diamond")/translation``. Below it,
``libreoffice-help/`` holds the help fetched by
:func:`~.libreoffice.download_libreoffice_help` and ``prepared/`` the splits
saved by :func:`~.corpus.load_offline_translation_corpus`.
"""

from __future__ import annotations

from pathlib import Path

from ....cache import cache_dir

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """The project's cache folder (:func:`hf_soft_diamond.cache.cache_dir`) plus ``/translation``."""
    return cache_dir() / "translation"
