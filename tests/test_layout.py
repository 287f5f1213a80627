"""The library/application split: library modules never import the task code, and the
old import paths of moved modules still resolve to the very same module objects."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import hf_soft_diamond
from hf_soft_diamond._moved import MOVED_MODULES, new_path

PACKAGE = Path(hf_soft_diamond.__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module an ``import``/``from ... import`` in ``path`` names."""
    parts = ("hf_soft_diamond", *path.relative_to(PACKAGE).with_suffix("").parts)
    package = ".".join(parts[:-1])  # what a relative import is relative to (a package's own __init__ too)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_library_modules_never_import_the_task_code():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "tasks" in path.relative_to(PACKAGE).parts:
            continue
        bad = sorted(n for n in _imported_modules(path) if n == "hf_soft_diamond.tasks"
                     or n.startswith("hf_soft_diamond.tasks."))
        if bad and path.name != "_moved.py":
            offenders[str(path.relative_to(PACKAGE))] = bad
    assert not offenders, f"library modules importing hf_soft_diamond.tasks: {offenders}"


def test_the_import_scan_sees_relative_imports():
    """The scan above would pass vacuously if it missed relative imports: check it on a task module."""
    names = _imported_modules(PACKAGE / "tasks" / "run" / "image.py")
    assert "hf_soft_diamond.trainer" in names and "hf_soft_diamond.tasks.data.images" in names


def test_importing_the_library_does_not_import_the_task_code():
    """In a fresh interpreter (this one has imported task modules in other tests)."""
    code = ("import sys, hf_soft_diamond, hf_soft_diamond.trainer, hf_soft_diamond.training_args, "
            "hf_soft_diamond.sparsity, hf_soft_diamond.optim, hf_soft_diamond.export, hf_soft_diamond.model_card; "
            "print(sorted(m for m in sys.modules if m.startswith('hf_soft_diamond.tasks')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_import_paths_resolve_to_the_moved_module(old):
    target = new_path(old)
    assert target is not None and target != old
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moved = importlib.import_module(old)
    assert moved is importlib.import_module(target)
    assert any(issubclass(w.category, DeprecationWarning) and target in str(w.message) for w in caught)


def test_submodules_of_a_moved_package_follow_it():
    assert new_path("hf_soft_diamond.run.translation") == "hf_soft_diamond.tasks.run.translation"
    assert new_path("hf_soft_diamond.data.batching") == "hf_soft_diamond.batching"  # longest prefix wins
    assert new_path("hf_soft_diamond.regularizers") is None
    assert new_path("hf_soft_diamond.datasets") is None  # a prefix match needs the dot


def test_every_source_folder_is_a_package_setuptools_ships():
    """A folder of modules without ``__init__.py`` imports from a checkout (namespace package) but is
    left out of a wheel by ``packages.find``: every such folder must be a regular package."""
    from setuptools import find_packages

    shipped = set(find_packages(str(PACKAGE.parent), include=["hf_soft_diamond*"]))
    folders = {".".join(("hf_soft_diamond", *p.parent.relative_to(PACKAGE).parts))
               for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert folders <= shipped, f"not shipped: {sorted(folders - shipped)}"


#: How the project's own sources could point outside the repository (the specification the
#: project was written from, a developer's machine); docs/methods.md is the project's own.
_OUTSIDE_REFERENCES = re.compile(r"METHODS\.md|DATA\.md|STYLE\.md|/work/|\.\./shared\b")


def test_no_source_or_doc_cites_a_file_outside_the_repository():
    repo = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *(repo / "docs").rglob("*.md"), repo / "README.md",
             *(repo / "benchmarks").glob("*.py"), *(repo / "scripts").glob("*"), *(repo / "configs").glob("*.json")]
    hits = [f"{f.relative_to(repo)}:{i}: {line.strip()}" for f in files if f.is_file()
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if _OUTSIDE_REFERENCES.search(line)]
    assert not hits, "\n".join(hits)

