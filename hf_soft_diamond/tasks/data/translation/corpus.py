"""The offline corpus loader: ``ding``, ``libreoffice`` and ``ding+libreoffice`` as cached train/validation/test splits.

:func:`load_offline_translation_corpus` reads the pairs (:mod:`.ding`,
:mod:`.libreoffice`), deduplicates and splits them (:mod:`.splits`), saves the
splits with ``save_to_disk`` under ``<cache_dir>/prepared`` (cache dir:
:func:`~.cache.default_cache_dir`) and filters them by ``min_words`` after the
split. Rows: ``{"translation": {"de": ..., "en": ...}}``.

Offline corpora (real, human-made text installed from Debian packages):

``"ding"``
    Example sentences of the Ding dictionary (package ``trans-de-en``, one file
    at :data:`~.ding.DING_PATH`; GPL-2+, TU Chemnitz). Everyday language.
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

The split rule is the convention of :mod:`.splits`.

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

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import datasets

from .cache import default_cache_dir
from .ding import DING_PATH, read_ding_pairs
from .libreoffice import download_libreoffice_help, find_libreoffice_help_root, read_libreoffice_help_pairs
from .splits import SPLIT_VERSION, assign_splits
from .text import normalize_for_dedup

__all__ = ["CORPUS_LANGUAGES", "OFFLINE_CORPORA", "corpus_statistics", "load_offline_translation_corpus"]


#: Names accepted by :func:`load_offline_translation_corpus`.
OFFLINE_CORPORA: tuple[str, ...] = ("ding", "libreoffice", "ding+libreoffice")
#: Language codes of the offline corpora (both keys are in every row).
CORPUS_LANGUAGES: tuple[str, str] = ("de", "en")


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
