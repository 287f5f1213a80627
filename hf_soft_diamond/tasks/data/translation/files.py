"""The local-file loader: ``--train_file/--validation_file/--test_file`` (json, jsonl, csv, tsv) as translation splits.

Conventions: JSON rows are ``{"translation": {src: ..., tgt: ...}}`` or flat
``{src: ..., tgt: ...}`` (JSON lines, a JSON list or ``{"data": [...]}``);
CSV/TSV files name their columns by the language codes in a header. Other
keys/columns are dropped; a row without both languages is a ``ValueError``
naming the file and row. Only the given files become splits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import datasets

__all__ = ["iter_translation_rows", "load_translation_files"]


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
