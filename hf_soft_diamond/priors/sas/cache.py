"""SaS unit tables cached in memory and on disk (:func:`get_sas_table`).

One job: hand out one :class:`~.table.SasTable` per (alpha, grid), building it
(:func:`~.build.build_unit_table`) only when neither cache holds a valid copy.

Tables live in memory (keyed by alpha and grid parameters) and on disk under
``$HF_SOFT_DIAMOND_CACHE`` (default ``platformdirs.user_cache_dir("hf_soft_diamond")``),
one ``.npz`` per table with a JSON header (format version, alpha, grid parameters,
SHA-256 of the arrays), written atomically (temp file + ``os.replace``) and validated
on load: anything unexpected is rebuilt and overwritten. The arrays are ``r`` and ``q``
as little-endian float64; the grid parameters ``t_min`` and ``grid_step`` are in
``t = log z``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ...cache import cache_dir
from .build import DEFAULT_GRID_STEP, _grid_params, build_unit_table
from .density import _check_alpha
from .table import SasTable

FORMAT_VERSION = 1
_MEMORY: dict[tuple, SasTable] = {}
_LOCK = threading.Lock()


def sas_cache_dir() -> Path:
    """Directory of the on-disk table cache: the project's :func:`~hf_soft_diamond.cache.cache_dir`."""
    return cache_dir()


def _table_path(cache_dir: Path, alpha: float, t_min: float, grid_step: float, n: int) -> Path:
    key = f"{alpha!r}|{t_min!r}|{grid_step!r}|{n}|v{FORMAT_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"sas_alpha{alpha:.6g}_{digest}.npz"


def _checksum(r: np.ndarray, q: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(r, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(q, dtype="<f8").tobytes())
    return h.hexdigest()


def _header(alpha: float, t_min: float, grid_step: float, n: int, checksum: str) -> dict:
    return {"format_version": FORMAT_VERSION, "kind": "sas_unit_table", "alpha": alpha, "t_min": t_min,
            "grid_step": grid_step, "n": n, "sha256": checksum}


def _load(path: Path, alpha: float, t_min: float, grid_step: float, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The arrays of a valid cache file, or None (missing, truncated, corrupted, other params)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            r = np.array(data["r"], dtype="<f8")
            q = np.array(data["q"], dtype="<f8")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, TypeError):
        return None
    except Exception:  # noqa: BLE001 - any unreadable file is rebuilt, never trusted
        return None
    expect = _header(alpha, t_min, grid_step, n, "")
    for k in ("format_version", "kind", "alpha", "t_min", "grid_step", "n"):
        if header.get(k) != expect[k]:
            return None
    if r.shape != (n,) or q.shape != (n,) or header.get("sha256") != _checksum(r, q):
        return None
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        return None
    return r, q


def _save(path: Path, alpha: float, t_min: float, grid_step: float, r: np.ndarray, q: np.ndarray) -> None:
    """Write atomically: temp file in the same directory, fsync, ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(_header(alpha, t_min, grid_step, len(r), _checksum(r, q)))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, header=np.array(header), r=r.astype("<f8"), q=q.astype("<f8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def get_sas_table(alpha: float, *, grid_step: float = DEFAULT_GRID_STEP, t_min: float | None = None,
                  t_max: float | None = None, disk_cache: bool = True) -> SasTable:
    """The unit-dispersion :class:`SasTable` for ``alpha``, cached in memory and on disk.

    Args:
        alpha: tail index in (0, 2]. ``alpha`` in {1, 2} returns a closed-form table.
        grid_step: step h of the grid in ``t = log z`` (default :data:`DEFAULT_GRID_STEP`
            = 0.02; interpolation error of the score: see :mod:`.table`).
        t_min, t_max: grid range in t; default per alpha (:func:`default_grid`).
        disk_cache: read/write the table under :func:`sas_cache_dir` (a file that does
            not validate is rebuilt and overwritten; an unwritable directory only warns).
    """
    alpha = _check_alpha(alpha)
    if alpha in (1.0, 2.0):
        key = (alpha,)
        with _LOCK:
            if key not in _MEMORY:
                _MEMORY[key] = SasTable(alpha, 0.0, 1.0, None, None)
            return _MEMORY[key]
    lo, h, n = _grid_params(alpha, grid_step, t_min, t_max)
    key = (alpha, lo, h, n)
    with _LOCK:
        hit = _MEMORY.get(key)
    if hit is not None:
        return hit
    arrays = None
    path = None
    if disk_cache:
        path = _table_path(sas_cache_dir(), alpha, lo, h, n)
        arrays = _load(path, alpha, lo, h, n)
    if arrays is None:
        r, q, _ = build_unit_table(alpha, lo, lo + h * (n - 1), h)
        if len(r) != n:
            raise RuntimeError("internal error: grid length mismatch")
        if path is not None:
            try:
                _save(path, alpha, lo, h, r, q)
            except OSError as err:
                warnings.warn(f"hf_soft_diamond: could not write the SaS table cache {path}: {err}",
                              RuntimeWarning, stacklevel=2)
        arrays = (r, q)
    table = SasTable(alpha, lo, h, *arrays)
    with _LOCK:
        return _MEMORY.setdefault(key, table)


def prebuild_sas_tables(alphas: Iterable[float], *, grid_step: float = DEFAULT_GRID_STEP) -> list[Path]:
    """Build (or validate) and store on disk the tables of ``alphas``; returns their
    paths (alphas 1 and 2 are closed forms and have none)."""
    paths = []
    for a in alphas:
        a = _check_alpha(a)
        if a in (1.0, 2.0):
            continue
        table = get_sas_table(a, grid_step=grid_step)
        path = _table_path(sas_cache_dir(), a, table.t_min, table.grid_step, table.n)
        if _load(path, a, table.t_min, table.grid_step, table.n) is None:
            _save(path, a, table.t_min, table.grid_step, table.r, table.q)
        paths.append(path)
    return paths


def clear_memory_cache() -> None:
    """Forget the in-memory tables (the disk cache is kept)."""
    with _LOCK:
        _MEMORY.clear()
