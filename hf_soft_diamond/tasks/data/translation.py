"""German-English translation data: offline Debian corpora, Hub datasets, local files, tokenizer.

Every loader here returns a :class:`datasets.DatasetDict` whose rows have the
format of transformers' ``run_translation.py``::

    {"translation": {"de": "Das Licht ging plötzlich an.", "en": "The light came on suddenly."}}

Offline corpora (real, human-made text installed from Debian packages; see
``/work/shared/DATA.md``):

``"ding"``
    Example sentences of the Ding dictionary (package ``trans-de-en``, one file
    at ``/usr/share/trans/de-en``; GPL-2+, TU Chemnitz). Everyday language.
    Only *complete sentences* are kept: both sides have at least four words,
    start with a capital letter or digit (after opening quotes) and end in
    ``.``, ``?`` or ``!`` (before closing quotes). About 20.3k pairs.
``"libreoffice"``
    LibreOffice help pages (packages ``libreoffice-help-de`` and
    ``libreoffice-help-en-us``; MPL-2.0), aligned one to one by the paragraph
    ids ``id="par_id..."`` / ``id="hd_id..."`` of the HTML files with the same
    relative path under ``de/`` and ``en-US/``. Software documentation. About
    35k distinct pairs (about 25k with five or more English words).
``"ding+libreoffice"``
    The union of both, split by the same rule (so the Ding part of each split
    is the split of ``"ding"``, and likewise for LibreOffice).

Split convention (fixed, deterministic, reproducible across machines and
Python versions):

1. Texts are cleaned (annotations/tags stripped, whitespace collapsed, NFC).
2. Exact duplicates are dropped on the *normalized pair* (NFKC, casefolded,
   whitespace-collapsed source and target); the first occurrence in file order
   is kept.
3. Pairs are grouped into connected components of the bipartite graph
   "normalized German text -- normalized English text" so that a sentence
   with several translations (or a translation of several sentences) lives in
   exactly one split: **no source and no target sentence occurs in two
   splits** (after normalization).
4. A component goes to ``test`` if ``u < test_fraction``, to ``validation`` if
   ``u < test_fraction + validation_fraction``, else to ``train``, where
   ``u = int(sha256("hf_soft_diamond/split/v1:" + key)[:16 hex], 16) / 2**64``
   and ``key`` is the lexicographically smallest normalized German text of the
   component. Defaults: 5% validation, 5% test.
5. Filters that do not change the split (``min_words``) are applied afterwards,
   so a pair never moves between splits when a filter changes.

Measured sizes with the defaults, Debian 12 packages (trans-de-en
2023-01-30, LibreOffice help 7.4.7); in parentheses with ``min_words=5``:

=====================  ===============  ============  ============
corpus                 train            validation    test
=====================  ===============  ============  ============
ding                   18,271 (15,474)  1,022 (844)   1,046 (873)
libreoffice            31,321 (21,412)  1,717 (1,153) 1,649 (1,121)
ding+libreoffice       49,592 (36,886)  2,739 (1,997) 2,695 (1,994)
=====================  ===============  ============  ============

Preparing is a matter of seconds, reading the cached splits back much faster
(``benchmarks/RESULTS.md``, "Timings moved out of docstrings").
(:func:`corpus_statistics` prints rows and distinct texts per split.)
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets

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

#: Where Debian's ``trans-de-en`` puts the Ding dictionary.
DING_PATH = Path("/usr/share/trans/de-en")
#: The two Debian packages with the LibreOffice help in German and US English.
LIBREOFFICE_HELP_PACKAGES: tuple[str, str] = ("libreoffice-help-de", "libreoffice-help-en-us")
#: Names accepted by :func:`load_offline_translation_corpus`.
OFFLINE_CORPORA: tuple[str, ...] = ("ding", "libreoffice", "ding+libreoffice")
#: Language codes of the offline corpora (both keys are in every row).
CORPUS_LANGUAGES: tuple[str, str] = ("de", "en")
#: Hub datasets for users with internet: dataset name -> config name (de-en).
HUB_TRANSLATION_DATASETS: dict[str, str] = {
    "iwslt2017": "iwslt2017-de-en",
    "wmt14": "de-en",
    "wmt16": "de-en",
}
#: Bump when the cleaning or split rule changes (part of the hash and cache key).
SPLIT_VERSION = "v1"

_SPLITS = ("train", "validation", "test")

# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Ding dictionary
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# LibreOffice help
# --------------------------------------------------------------------------

_HELP_SUBPATH = Path("usr/share/libreoffice/help")
_PARAGRAPH = re.compile(
    r"<(p|h[1-6])\b[^>]*?\bid=\"((?:par|hd)_id[^\"]*)\"[^>]*>(.*?)</\1\s*>",
    re.DOTALL | re.IGNORECASE,
)
_BLOCK_TAG = re.compile(r"<\s*/?\s*(?:br|p|div|li|ul|ol|td|th|tr|table|h[1-6])\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]*>")
_LETTER = re.compile(r"[^\W\d_]")


_SWITCH_CASE = re.compile(r'<span\b[^>]*\bhidden="true"[^>]*\bclass="[A-Z]+"[^>]*>', re.IGNORECASE)
_SPAN_OPEN_OR_CLOSE = re.compile(r"<span\b[^>]*>|</span\s*>", re.IGNORECASE)


def _drop_switch_cases(fragment: str) -> str:
    """Remove the hidden system/module cases of LibreOffice's ``switchinline`` spans.

    The help shows one of ``<span hidden="true" class="MAC">Command</span>``
    and the class-less default ``<span hidden="true" id="default...">Ctrl</span>``;
    the cases with a class (``MAC``, ``WIN``, ``UNIX``, ``CALC``, ``WRITER``...)
    are removed with their nested spans so that only the default text stays.
    """
    while (match := _SWITCH_CASE.search(fragment)) is not None:
        depth, end = 1, len(fragment)
        for tag in _SPAN_OPEN_OR_CLOSE.finditer(fragment, match.end()):
            depth += -1 if tag.group(0).startswith("</") else 1
            if depth == 0:
                end = tag.end()
                break
        fragment = fragment[: match.start()] + fragment[end:]
    return fragment


def html_to_text(fragment: str) -> str:
    """Plain text of an HTML fragment.

    Hidden per-system/per-module cases of LibreOffice's switch spans are
    dropped first (the default case stays, :func:`_drop_switch_cases`). Block tags (``br``,
    ``p``, ``div``, list/table cells, headings) become a
    space, inline tags (``span``, ``a``, ``em``...) are removed without a space
    (their content keeps the spacing of the source), then entities are
    unescaped and whitespace is collapsed.
    """
    text = _BLOCK_TAG.sub(" ", _drop_switch_cases(fragment))
    text = _ANY_TAG.sub("", text)
    return _clean_text(html.unescape(text))


def _help_paragraphs(path: Path) -> dict[str, list[str]]:
    """Paragraph id -> texts (in document order; an id can repeat in embedded sections)."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for match in _PARAGRAPH.finditer(path.read_text(encoding="utf-8", errors="replace")):
        found[match.group(2)].append(html_to_text(match.group(3)))
    return found


def find_libreoffice_help_root(root: str | os.PathLike[str] | None = None, *,
                               cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Locate the LibreOffice help directory (the one containing ``de/`` and ``en-US/``).

    ``root`` may be the directory that ``dpkg -x`` unpacked into (containing
    ``usr/share/libreoffice/help``) or the help directory itself. Without
    ``root``, looks in order at ``$HF_SOFT_DIAMOND_LIBREOFFICE_HELP``, the
    download location ``<cache_dir>/libreoffice-help`` of
    :func:`download_libreoffice_help` and a system install at
    ``/usr/share/libreoffice/help``. Returns ``None`` when nothing is found
    (and raises ``FileNotFoundError`` when an explicit ``root`` is wrong).
    """

    def resolve(candidate: Path) -> Path | None:
        for help_dir in (candidate, candidate / _HELP_SUBPATH):
            if (help_dir / "de" / "text").is_dir() and (help_dir / "en-US" / "text").is_dir():
                return help_dir
        return None

    if root is not None:
        found = resolve(Path(root))
        if found is None:
            raise FileNotFoundError(
                f"{root} contains neither de/text and en-US/text nor {_HELP_SUBPATH}/{{de,en-US}}/text"
            )
        return found
    candidates = []
    if os.environ.get("HF_SOFT_DIAMOND_LIBREOFFICE_HELP"):
        candidates.append(Path(os.environ["HF_SOFT_DIAMOND_LIBREOFFICE_HELP"]))
    candidates.append(Path(cache_dir or default_cache_dir()) / "libreoffice-help")
    candidates.append(Path("/") / _HELP_SUBPATH)
    for candidate in candidates:
        found = resolve(candidate)
        if found is not None:
            return found
    return None


def download_libreoffice_help(cache_dir: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Fetch ``libreoffice-help-de`` and ``libreoffice-help-en-us`` with ``apt-get download``
    and unpack both with ``dpkg -x`` into ``<cache_dir>/libreoffice-help``.

    Needs ``apt-get`` and ``dpkg`` (Debian/Ubuntu) and access to the package
    mirror; no root rights (``apt-get download`` writes to the working
    directory only). Returns the help directory (with ``de/`` and ``en-US/``).
    Does nothing when it is already unpacked, unless ``force``.
    """
    target = Path(cache_dir or default_cache_dir()) / "libreoffice-help"
    if not force:
        existing = find_libreoffice_help_root(target) if target.exists() else None
        if existing is not None:
            return existing
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"`{tool}` not found: download_libreoffice_help needs a Debian-based system")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(["apt-get", "download", *LIBREOFFICE_HELP_PACKAGES], cwd=tmp, check=True)
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        debs = sorted(Path(tmp).glob("*.deb"))
        if len(debs) != len(LIBREOFFICE_HELP_PACKAGES):
            raise RuntimeError(f"apt-get download produced {[d.name for d in debs]}")
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return find_libreoffice_help_root(target)  # type: ignore[return-value]


def read_libreoffice_help_pairs(
    root: str | os.PathLike[str], *, source_dir: str = "de", target_dir: str = "en-US"
) -> list[tuple[str, str]]:
    """``(german, english)`` paragraph pairs of the LibreOffice help, in sorted-path order.

    For every ``<source_dir>/text/**/*.html`` with a counterpart at the same
    relative path under ``<target_dir>``, paragraphs (``<p>``, ``<h1>``..``<h6>``)
    with the same ``id="par_id..."`` / ``id="hd_id..."`` are paired; an id that
    occurs k times in both files is paired by occurrence, one that occurs a
    different number of times is skipped. Pairs are dropped when a side is
    empty or has no letter, or when both sides are identical (code, function
    names, untranslated strings). Duplicates are kept (see
    :func:`load_offline_translation_corpus` for deduplication).

    ``root`` is the unpacked root or the help directory
    (:func:`find_libreoffice_help_root`).
    """
    help_dir = find_libreoffice_help_root(root)
    assert help_dir is not None
    source_root = help_dir / source_dir
    pairs: list[tuple[str, str]] = []
    for source_file in sorted((source_root / "text").rglob("*.html")):
        target_file = help_dir / target_dir / source_file.relative_to(source_root)
        if not target_file.is_file():
            continue
        source_paragraphs = _help_paragraphs(source_file)
        target_paragraphs = _help_paragraphs(target_file)
        for paragraph_id, source_texts in source_paragraphs.items():
            target_texts = target_paragraphs.get(paragraph_id)
            if not target_texts or len(target_texts) != len(source_texts):
                continue
            for de, en in zip(source_texts, target_texts):
                if _LETTER.search(de) and _LETTER.search(en) and de != en:
                    pairs.append((de, en))
    return pairs


# --------------------------------------------------------------------------
# Deduplication and splits
# --------------------------------------------------------------------------


def split_of_key(key: str, *, validation_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """Split (``"train"``, ``"validation"``, ``"test"``) of a normalized key, by SHA-256.

    ``u = int(sha256(f"hf_soft_diamond/split/{SPLIT_VERSION}:{key}")[:16 hex], 16) / 2**64``;
    ``test`` if ``u < test_fraction``, ``validation`` if
    ``u < test_fraction + validation_fraction``, else ``train``.
    """
    digest = hashlib.sha256(f"hf_soft_diamond/split/{SPLIT_VERSION}:{key}".encode()).hexdigest()
    u = int(digest[:16], 16) / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def assign_splits(
    pairs: Iterable[tuple[str, str]], *, validation_fraction: float = 0.05, test_fraction: float = 0.05
) -> dict[str, list[tuple[str, str]]]:
    """Deduplicate ``(german, english)`` pairs and split them without leakage.

    Implements steps 2-4 of the module docstring: drop duplicates of the
    normalized pair (first kept), group pairs that share a normalized German
    or English text (union-find), and send each group to the split of the
    hash of its smallest normalized German text. Order within a split is the
    input order.
    """
    if not (0 <= validation_fraction and 0 <= test_fraction and validation_fraction + test_fraction < 1):
        raise ValueError("need 0 <= validation_fraction, test_fraction and their sum < 1")
    unique: list[tuple[str, str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for de, en in pairs:
        key = (normalize_for_dedup(de), normalize_for_dedup(en))
        if key not in seen:
            seen.add(key)
            unique.append((de, en, *key))

    parent: dict[str, str] = {}

    def find(node: str) -> str:
        root = node
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    for _, _, de_key, en_key in unique:
        a, b = find("de\x00" + de_key), find("en\x00" + en_key)
        if a != b:
            parent[max(a, b)] = min(a, b)
    # Smallest German key of each component (roots are arbitrary; keys are not).
    component_key: dict[str, str] = {}
    for _, _, de_key, _ in unique:
        root = find("de\x00" + de_key)
        if root not in component_key or de_key < component_key[root]:
            component_key[root] = de_key
    split_cache: dict[str, str] = {}
    result: dict[str, list[tuple[str, str]]] = {name: [] for name in _SPLITS}
    for de, en, de_key, _ in unique:
        root = find("de\x00" + de_key)
        if root not in split_cache:
            split_cache[root] = split_of_key(
                component_key[root], validation_fraction=validation_fraction, test_fraction=test_fraction
            )
        result[split_cache[root]].append((de, en))
    return result


# --------------------------------------------------------------------------
# Offline corpus loader
# --------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$HF_SOFT_DIAMOND_CACHE`` or the user cache dir (platformdirs), plus ``/translation``."""
    if os.environ.get("HF_SOFT_DIAMOND_CACHE"):
        return Path(os.environ["HF_SOFT_DIAMOND_CACHE"]) / "translation"
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("hf_soft_diamond")) / "translation"
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path.home() / ".cache" / "hf_soft_diamond" / "translation"


def _file_fingerprint(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _read_corpus_pairs(name: str, ding_path: Path, help_dir: Path | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if "ding" in name.split("+"):
        pairs.extend(read_ding_pairs(ding_path))
    if "libreoffice" in name.split("+"):
        assert help_dir is not None
        pairs.extend(read_libreoffice_help_pairs(help_dir))
    return pairs


def load_offline_translation_corpus(
    name: Literal["ding", "libreoffice", "ding+libreoffice"] = "ding",
    *,
    source_lang: str = "de",
    target_lang: str = "en",
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    min_words: int = 1,
    ding_path: str | os.PathLike[str] = DING_PATH,
    libreoffice_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> datasets.DatasetDict:
    """Load an offline German-English corpus as train/validation/test splits.

    Args:
        name: ``"ding"``, ``"libreoffice"`` or ``"ding+libreoffice"`` (module docstring).
        source_lang, target_lang: ``"de"``/``"en"`` in either order. Every row
            holds both languages, ``{"translation": {"de": ..., "en": ...}}``;
            the direction only matters to the caller (the split does not depend
            on it). Anything else raises ``ValueError``.
        validation_fraction, test_fraction: expected fractions of the
            deduplicated pairs (by hash, so sizes are approximate; see the
            table in the module docstring).
        min_words: keep pairs whose two sides both have at least this many
            whitespace-separated words; applied *after* the split.
        ding_path: the Ding file (``apt-get install trans-de-en``).
        libreoffice_root: unpacked ``dpkg -x`` root or help directory; default:
            :func:`find_libreoffice_help_root`.
        download: when the LibreOffice help is not found, fetch it with
            :func:`download_libreoffice_help` (needs the Debian mirror).
        cache_dir: where prepared splits (``save_to_disk``) and downloads go;
            default :func:`default_cache_dir`.
        use_cache: read/write the prepared splits there. The cache key holds
            the corpus name, fractions, :data:`SPLIT_VERSION` and the size and
            mtime of every input file.

    Returns:
        ``DatasetDict`` with ``train``, ``validation``, ``test``; one column
        ``translation`` (dict with keys ``de`` and ``en``).
    """
    if name not in OFFLINE_CORPORA:
        raise ValueError(f"unknown offline corpus {name!r}; choose one of {OFFLINE_CORPORA}")
    if {source_lang, target_lang} != set(CORPUS_LANGUAGES):
        raise ValueError(
            f"offline corpora are German-English: source_lang/target_lang must be 'de'/'en' "
            f"(either order), got {source_lang!r}/{target_lang!r}"
        )
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parts = name.split("+")
    ding_path = Path(ding_path)
    inputs: list[Path] = []
    help_dir: Path | None = None
    if "ding" in parts:
        if not ding_path.is_file():
            raise FileNotFoundError(f"Ding dictionary not found at {ding_path}: `apt-get install -y trans-de-en`.")
        inputs.append(ding_path)
    if "libreoffice" in parts:
        help_dir = find_libreoffice_help_root(libreoffice_root, cache_dir=cache_root)
        if help_dir is None and download:
            help_dir = download_libreoffice_help(cache_root)
        if help_dir is None:
            raise FileNotFoundError(
                "LibreOffice help not found. Run `apt-get download libreoffice-help-de libreoffice-help-en-us` "
                "and `dpkg -x PKG.deb DIR` for both, then pass libreoffice_root=DIR (or set "
                "$HF_SOFT_DIAMOND_LIBREOFFICE_HELP), or call with download=True."
            )
        inputs.extend(sorted((help_dir / "de" / "text").rglob("*.html")))
        inputs.extend(sorted((help_dir / "en-US" / "text").rglob("*.html")))

    key = json.dumps(
        [SPLIT_VERSION, name, validation_fraction, test_fraction, _file_fingerprint(inputs)], sort_keys=True
    )
    cache_path = cache_root / "prepared" / f"{name.replace('+', '_')}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if use_cache and (cache_path / "dataset_dict.json").is_file():
        corpus = datasets.load_from_disk(str(cache_path))
    else:
        splits = assign_splits(
            _read_corpus_pairs(name, ding_path, help_dir),
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
        )
        features = datasets.Features({"translation": datasets.Translation(languages=list(CORPUS_LANGUAGES))})
        corpus = datasets.DatasetDict(
            {
                split: datasets.Dataset.from_dict(
                    {"translation": [{"de": de, "en": en} for de, en in rows]}, features=features
                )
                for split, rows in splits.items()
            }
        )
        if use_cache:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp_path = Path(tempfile.mkdtemp(dir=cache_path.parent, prefix=".tmp-"))
            with _quiet_progress_bars():
                corpus.save_to_disk(str(tmp_path))
            try:
                tmp_path.rename(cache_path)
            except OSError:  # another process won the race: use theirs
                shutil.rmtree(tmp_path, ignore_errors=True)
            corpus = datasets.load_from_disk(str(cache_path))
    if min_words > 1:
        corpus = datasets.DatasetDict(
            {
                split: dataset.select(
                    [
                        i
                        for i, row in enumerate(dataset["translation"])
                        if len(row["de"].split()) >= min_words and len(row["en"].split()) >= min_words
                    ]
                )
                for split, dataset in corpus.items()
            }
        )
    return corpus


def corpus_statistics(corpus: datasets.DatasetDict) -> dict[str, dict[str, int]]:
    """Rows and distinct normalized German/English texts per split."""
    stats: dict[str, dict[str, int]] = {}
    for split, dataset in corpus.items():
        rows = dataset["translation"]
        stats[split] = {
            "rows": len(rows),
            "distinct_de": len({normalize_for_dedup(r["de"]) for r in rows}),
            "distinct_en": len({normalize_for_dedup(r["en"]) for r in rows}),
        }
    return stats


# --------------------------------------------------------------------------
# Hub datasets and local files
# --------------------------------------------------------------------------


def load_hub_translation_dataset(
    dataset_name: str,
    dataset_config_name: str | None = None,
    *,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool | None = None,
    streaming: bool = False,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """Load a translation dataset from the Hugging Face Hub (needs internet).

    A thin wrapper of :func:`datasets.load_dataset` for datasets whose rows
    already are ``{"translation": {src: ..., tgt: ...}}``, e.g.
    ``("iwslt2017", "iwslt2017-de-en")``, ``("wmt14", "de-en")``,
    ``("wmt16", "de-en")``. When ``dataset_config_name`` is ``None`` and the
    name is in :data:`HUB_TRANSLATION_DATASETS`, its de-en config is used.
    ``trust_remote_code`` is passed only when set (newer ``datasets`` dropped
    script datasets).
    """
    if dataset_config_name is None:
        dataset_config_name = HUB_TRANSLATION_DATASETS.get(dataset_name.split("/")[-1])
    kwargs: dict[str, Any] = dict(load_kwargs)
    if trust_remote_code is not None:
        kwargs["trust_remote_code"] = trust_remote_code
    return datasets.load_dataset(
        dataset_name, dataset_config_name, cache_dir=cache_dir, token=token, streaming=streaming, **kwargs
    )


def iter_translation_rows(path: str | os.PathLike[str], source_lang: str,
                          target_lang: str) -> Iterator[dict[str, dict[str, str]]]:
    """The ``{"translation": {src: ..., tgt: ...}}`` rows of one data file (formats: :func:`load_translation_files`).

    Raises ``ValueError`` naming the file and row for a row without both languages.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        import csv

        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            missing = {source_lang, target_lang} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: columns {sorted(missing)} missing (have {reader.fieldnames})")
            for row in reader:
                yield {"translation": {source_lang: row[source_lang], target_lang: row[target_lang]}}
        return
    if suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path}: unsupported extension {suffix!r}; use .json, .jsonl, .csv or .tsv")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(stripped)
    elif stripped.startswith("{") and suffix == ".json" and "\n{" not in stripped.strip():
        obj = json.loads(stripped)
        records = obj["data"] if isinstance(obj, dict) and "data" in obj else [obj]
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for number, record in enumerate(records):
        pair = record.get("translation", record)
        if not isinstance(pair, dict) or source_lang not in pair or target_lang not in pair:
            raise ValueError(f"{path} row {number}: need a 'translation' dict or columns {source_lang!r}, "
                             f"{target_lang!r}")
        yield {"translation": {source_lang: pair[source_lang], target_lang: pair[target_lang]}}


def load_translation_files(
    train_file: str | os.PathLike[str] | None = None,
    validation_file: str | os.PathLike[str] | None = None,
    test_file: str | os.PathLike[str] | None = None,
    *,
    source_lang: str = "de",
    target_lang: str = "en",
) -> datasets.DatasetDict:
    """Read ``--train_file/--validation_file/--test_file`` into the translation format.

    Accepted files: ``.json``/``.jsonl`` (JSON lines, a JSON list, or
    ``{"data": [...]}``) whose rows are ``{"translation": {src: ..., tgt: ...}}``
    or flat ``{src: ..., tgt: ...}``; ``.csv``/``.tsv`` with a header naming the
    columns by the language codes. Other keys/columns are dropped. Only the
    given files become splits (``train``, ``validation``, ``test``).
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    features = datasets.Features({"translation": datasets.Translation(languages=[source_lang, target_lang])})
    result = datasets.DatasetDict()
    for split, file in files.items():
        if file is None:
            continue
        rows = list(iter_translation_rows(file, source_lang, target_lang))
        result[split] = datasets.Dataset.from_dict({"translation": [r["translation"] for r in rows]}, features=features)
    if not result:
        raise ValueError("give at least one of train_file, validation_file, test_file")
    return result


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


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
