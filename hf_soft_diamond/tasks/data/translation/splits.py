"""Deterministic deduplication and train/validation/test assignment of ``(german, english)`` pairs.

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

Step 1 is done by the parsers (:mod:`.ding`, :mod:`.libreoffice`), steps 2-4
here (:func:`assign_splits`, :func:`split_of_key`), step 5 by
:func:`~.corpus.load_offline_translation_corpus`. The normalized key is
:func:`~.text.normalize_for_dedup`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .text import normalize_for_dedup

__all__ = ["SPLIT_VERSION", "assign_splits", "split_of_key"]


#: Bump when the cleaning or split rule changes (part of the hash and cache key).
SPLIT_VERSION = "v1"

_SPLITS = ("train", "validation", "test")


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
