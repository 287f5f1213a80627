"""The LibreOffice help parser and its fetch: paragraph-aligned ``(german, english)`` pairs of the help HTML.

Source: the Debian packages :data:`LIBREOFFICE_HELP_PACKAGES`
(``libreoffice-help-de`` and ``libreoffice-help-en-us``; MPL-2.0). Conventions:

* Location: :func:`find_libreoffice_help_root` accepts a ``dpkg -x`` root or
  the help directory itself (the one containing ``de/`` and ``en-US/``) and
  otherwise looks at ``$HF_SOFT_DIAMOND_LIBREOFFICE_HELP``,
  ``<cache_dir>/libreoffice-help`` and ``/usr/share/libreoffice/help``.
* Fetch: :func:`download_libreoffice_help` runs ``apt-get download`` and
  ``dpkg -x`` (no root rights) into ``<cache_dir>/libreoffice-help``; the
  cache dir is :func:`~.cache.default_cache_dir` unless given.
* Alignment: the HTML files with the same relative path under ``de/`` and
  ``en-US/`` are paired one to one by the paragraph ids ``id="par_id..."`` /
  ``id="hd_id..."`` (:func:`read_libreoffice_help_pairs`); the text of a
  paragraph is :func:`html_to_text` (only the default case of switch spans).
* Pairs come in sorted-path order with duplicates kept: deduplication and the
  split are the job of :mod:`.splits`.
"""

from __future__ import annotations

import collections
import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .cache import default_cache_dir
from .text import _clean_text

__all__ = [
    "LIBREOFFICE_HELP_PACKAGES",
    "download_libreoffice_help",
    "find_libreoffice_help_root",
    "html_to_text",
    "read_libreoffice_help_pairs",
]


#: The two Debian packages with the LibreOffice help in German and US English.
LIBREOFFICE_HELP_PACKAGES: tuple[str, str] = ("libreoffice-help-de", "libreoffice-help-en-us")


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
