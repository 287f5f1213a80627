"""The Ding dictionary parser: ``(german, english)`` sentence pairs from Debian's ``trans-de-en``.

The dictionary (package ``trans-de-en``, one file at :data:`DING_PATH`;
GPL-2+, TU Chemnitz) has one entry a line, ``german :: english``, with
alternatives separated by `` | `` and synonyms by ``; ``
(:func:`parse_ding_line`). Conventions:

* Annotations (``{m}``, ``[coll.]``, ``<...>``, ``/ABBR/``) are stripped, text
  is cleaned (``text._clean_text``); parentheses are kept.
* By default only *complete sentences* are kept (:func:`is_complete_sentence`):
  both sides have at least four words, start with a capital letter or digit
  (after opening quotes) and end in ``.``, ``?`` or ``!`` (before closing
  quotes).
* Pairs come in file order with duplicates kept: deduplication and the split
  are the job of :mod:`.splits`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .text import _clean_text

__all__ = ["DING_PATH", "is_complete_sentence", "parse_ding_line", "read_ding_pairs", "strip_ding_annotations"]


#: Where Debian's ``trans-de-en`` puts the Ding dictionary.
DING_PATH = Path("/usr/share/trans/de-en")


# {m} {f} {n} {pl} {adj} {v} ..., [coll.] [Br.] [ugs.] ..., <Abk.> <...>, and /ABBR/ (" /kg/ ").
_DING_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>|(?<!\S)/[^/\s]+/(?![^\s;,|])")
_SENTENCE_START = re.compile(r"^[\"'„“”‚‘’»«¿¡(]*[A-ZÄÖÜ0-9]")
_SENTENCE_END = re.compile(r"[.?!][\"'“”’‘»«]*$")
# Dictionary placeholders that end a phrase with a full stop but are no sentence end.
_ABBREVIATION_END = re.compile(r"\b(?:etw|jdm|jdn|jds|jd|sth|sb|usw|bzw|ugs|o\.ä)\.$")


def strip_ding_annotations(text: str) -> str:
    """Remove Ding annotations and collapse whitespace.

    Removes ``{...}`` (grammar: ``{m}``, ``{f}``, ``{n}``, ``{pl}``, ``{v}``,
    ``{adj}``...), ``[...]`` (usage/domain: ``[coll.]``, ``[Br.]``, ``[ugs.]``,
    ``[geol.]``...), ``<...>`` (search keys) and whitespace-delimited
    ``/ABBR/`` (abbreviations: ``Kilogramm /kg/``). Parentheses
    ``(...)`` are kept: in example sentences they are part of the text.
    """
    return _clean_text(_DING_ANNOTATION.sub(" ", text))


def is_complete_sentence(text: str, min_words: int = 4) -> bool:
    """True for a complete sentence: ``>= min_words`` words, capital/digit start, ends in ``. ? !``.

    Opening quotes before the first letter and closing quotes after the final
    punctuation are allowed; a final ``etw.``/``sth.``-style placeholder is not
    a sentence end.
    """
    return (
        len(text.split()) >= min_words
        and _SENTENCE_START.search(text) is not None
        and _SENTENCE_END.search(text) is not None
        and _ABBREVIATION_END.search(text) is None
    )


# After stripping, a sentence's final . ? ! (plus closing quotes) is followed only by
# annotations ({ [ < /), a separator (| ;) or the end: lines without this cannot yield one.
_MAY_END_SENTENCE = re.compile(r"[.?!][\"'“”’‘»«]*\s*(?:$|\||;|\[|\{|<|/)")
_PARENTHESIZED = re.compile(r"\([^()]*\)")


def _split_top_level(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside of parentheses (Ding notes like ``(als Meterware; Dicke ...)``)."""
    if "(" not in text or not any(separator in group for group in _PARENTHESIZED.findall(text)):
        return text.split(separator)
    parts: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif depth == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            i += len(separator)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def parse_ding_line(line: str, *, sentences_only: bool = True) -> list[tuple[str, str]]:
    """Parse one line of the Ding dictionary into ``(german, english)`` pairs.

    Format: ``german :: english``; each side has alternatives separated by
    `` | `` that are aligned by position when both sides have the same number
    of them (lines where the counts differ yield nothing); within an
    alternative, synonyms are separated by ``; `` and every German synonym is
    paired with every English one. Annotations are stripped (with
    :func:`strip_ding_annotations`) before splitting, since some contain
    ``; `` themselves; separators inside parentheses do not split. Comment lines (``#``) and lines without
    `` :: `` yield nothing.

    With ``sentences_only`` (default) only synonyms that are complete
    sentences on both sides (:func:`is_complete_sentence`) are paired.
    """
    line = line.rstrip("\r\n")
    if not line or line.startswith("#") or " :: " not in line:
        return []
    if sentences_only and _MAY_END_SENTENCE.search(line.split(" :: ", 1)[1]) is None:
        return []  # fast path: no English alternative can end in . ? ! (exact, see the regex)
    # Annotations first: some contain "; " (``{overrode; overridden}``).
    german, english = (strip_ding_annotations(side) for side in line.split(" :: ", 1))
    de_alternatives = _split_top_level(german, " | ")
    en_alternatives = _split_top_level(english, " | ")
    if len(de_alternatives) != len(en_alternatives):
        return []
    pairs: list[tuple[str, str]] = []
    for de_alt, en_alt in zip(de_alternatives, en_alternatives):
        de_syn = [_clean_text(s) for s in _split_top_level(de_alt, "; ")]
        en_syn = [_clean_text(s) for s in _split_top_level(en_alt, "; ")]
        if sentences_only:
            de_syn = [s for s in de_syn if is_complete_sentence(s)]
            en_syn = [s for s in en_syn if is_complete_sentence(s)]
        pairs.extend((d, e) for d in de_syn for e in en_syn if d and e)
    return pairs


def read_ding_pairs(path: str | os.PathLike[str] = DING_PATH, *, sentences_only: bool = True) -> list[tuple[str, str]]:
    """All ``(german, english)`` pairs of the Ding file, in file order (duplicates kept)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Ding dictionary not found at {path}: install it with `apt-get install -y trans-de-en`."
        )
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            pairs.extend(parse_ding_line(line, sentences_only=sentences_only))
    return pairs
