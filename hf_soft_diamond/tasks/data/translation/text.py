"""Text cleaning shared by the corpus parsers, and the normalized key of deduplication and the split.

Conventions:
    * ``_clean_text`` (NFC, every whitespace run collapsed to one space, ends
      stripped) is applied by the parsers (:mod:`.ding`, :mod:`.libreoffice`)
      to every text they keep: it changes the stored text.
    * :func:`normalize_for_dedup` (NFKC, casefolded, whitespace collapsed) is
      only a comparison key (deduplication, leakage checks, the split hash of
      :mod:`.splits`): it is never stored.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_for_dedup"]


_WS = re.compile(r"\s+")


def _clean_text(text: str) -> str:
    """NFC and collapse every whitespace run to one space; strip the ends."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def normalize_for_dedup(text: str) -> str:
    """Key used for deduplication and leakage checks.

    NFKC, casefolded, whitespace collapsed to single spaces, ends stripped.
    Two texts with the same key count as the same sentence.
    """
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
