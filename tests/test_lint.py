"""The tree passes ``ruff check`` with the configuration in ``pyproject.toml`` ([tool.ruff]).

Linted: ``hf_soft_diamond/``, ``tests/``, ``benchmarks/`` and ``scripts/``. Skipped when ruff
is not installed (``pip install -e .[dev]`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINTED = ("hf_soft_diamond", "tests", "benchmarks", "scripts")


def _ruff() -> str | None:
    try:
        import ruff  # the PyPI package ships the binary and says where it is

        return ruff.find_ruff_bin()
    except (ImportError, FileNotFoundError, AttributeError):
        return shutil.which("ruff")


def test_ruff_check_passes():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the `dev` extra: pip install -e .[dev])")
    proc = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", *LINTED],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ruff check found problems:\n{proc.stdout}{proc.stderr}"
