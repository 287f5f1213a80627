"""Old import paths of modules that moved, kept working with a ``DeprecationWarning``.

The task code (data loaders, model builders, task metrics, run entry points, plots, the
command line) moved under :mod:`hf_soft_diamond.tasks` so that the library (priors,
regularizers, hooks, optimizer, Trainer, sparsity, export format) reads apart from the
applications built on it. ``import hf_soft_diamond.models`` (and every other path in
:data:`MOVED_MODULES`) still works: a meta-path finder hands back the module at its new
path, the same module object, so attributes, ``isinstance`` checks and monkeypatching
behave as before. The finder is installed by ``hf_soft_diamond/__init__.py``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

#: old path -> new path; a package entry also maps its submodules (longest prefix wins).
MOVED_MODULES: dict[str, str] = {
    "hf_soft_diamond.data": "hf_soft_diamond.tasks.data",
    "hf_soft_diamond.data.batching": "hf_soft_diamond.batching",
    "hf_soft_diamond.run": "hf_soft_diamond.tasks.run",
    "hf_soft_diamond.models": "hf_soft_diamond.tasks.models",
    "hf_soft_diamond.metrics": "hf_soft_diamond.tasks.metrics",
    "hf_soft_diamond.cli": "hf_soft_diamond.tasks.cli",
    "hf_soft_diamond.reporting": "hf_soft_diamond.tasks",
    "hf_soft_diamond.reporting.plots": "hf_soft_diamond.tasks.plots",
    "hf_soft_diamond.reporting.model_card": "hf_soft_diamond.model_card",
}


def new_path(old: str) -> str | None:
    """The current path of module ``old``, or ``None`` when it did not move."""
    for prefix in sorted(MOVED_MODULES, key=len, reverse=True):
        if old == prefix or old.startswith(prefix + "."):
            return MOVED_MODULES[prefix] + old[len(prefix):]
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module imported from its new path."""

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 (importlib's signature)
        if new_path(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec) -> ModuleType:  # noqa: ANN001
        target = new_path(spec.name)
        warnings.warn(f"`{spec.name}` moved to `{target}`; the old path will be removed in a future release.",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at its new path is already imported."""


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
