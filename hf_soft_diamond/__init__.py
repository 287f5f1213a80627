"""hf_soft_diamond: heavy-tailed weight priors for the Hugging Face training stack.

Layout: the library is the top level (``priors/`` the formulas, ``regularizers/`` one
registered class per method, ``hooks``/``fused``/``optim`` how a regularizer acts on a
step, ``trainer``/``training_args`` the Trainer integration, ``sparsity``/``pruning``
measurement, ``export`` the sparse checkpoint format, ``model_card``); the applications
built on it (data loaders, model builders, task metrics, run entry points, plots, the
``hf-soft-diamond`` command) live in :mod:`hf_soft_diamond.tasks` and are not imported here.

The numerical core needs only torch/numpy/scipy; the Trainer classes import
``transformers`` lazily on first use.
"""

from typing import Any

from . import _moved
from .hooks import RegularizerHandle, attach_regularizer
from .priors.sas import get_sas_table, sas_log_pdf, sas_score
from .regularizers import (
    Regularizer,
    available_regularizers,
    build_regularizer,
    register_regularizer,
    select_parameters,
)

__version__ = "0.1.0"

_moved.install()  # old paths of modules that moved under hf_soft_diamond.tasks keep importing

_LAZY = {
    "SoftDiamondTrainer": "trainer",
    "SoftDiamondSeq2SeqTrainer": "trainer",
    "SoftDiamondTrainingArguments": "training_args",
    "SoftDiamondSeq2SeqTrainingArguments": "training_args",
    "sparsity_report": "sparsity",
    "prune_by_magnitude": "pruning",
    "prune_curve": "pruning",
    "SparsityReport": "sparsity",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Regularizer",
    "RegularizerHandle",
    "attach_regularizer",
    "available_regularizers",
    "build_regularizer",
    "get_sas_table",
    "register_regularizer",
    "sas_log_pdf",
    "sas_score",
    "select_parameters",
    *_LAZY,
]
