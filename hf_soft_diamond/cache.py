"""The project's cache folder: ``$HF_SOFT_DIAMOND_CACHE``, else the user cache dir.

Everything the package keeps between runs lives below it: SαS tables (``sas_alpha*.npz``,
:mod:`hf_soft_diamond.priors.sas.cache`) and, for the task code, the translation corpora
(``translation/``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$HF_SOFT_DIAMOND_CACHE`` (``~`` expanded) or ``platformdirs.user_cache_dir("hf_soft_diamond")``."""
    env = os.environ.get("HF_SOFT_DIAMOND_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("hf_soft_diamond"))
