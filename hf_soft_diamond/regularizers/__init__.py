"""Regularizers by name: ``none``, ``l2``, ``l1``, ``lp``, ``sas``, ``pwd``.

``build_regularizer(name, **hyperparameters)`` builds one; ``available_regularizers()``
lists the names; ``select_parameters(model, ...)`` picks the weights they act on.
"""

from .base import (
    MODES,
    OPTIMIZER_FAMILIES,
    ElementwiseTerms,
    Regularizer,
    available_regularizers,
    build_regularizer,
    get_regularizer_class,
    natural_mode,
    optimizer_family,
    register_regularizer,
)
from .lp import L1Regularizer, L2Regularizer, LpRegularizer, NoRegularizer
from .pwd import PWDRegularizer
from .sas import SaSRegularizer
from .selection import regularized_names, select_parameters
from .spectral import FrechetPriorRegularizer, PowerLawPriorRegularizer, StableRankRegularizer, WeightedAlphaRegularizer

__all__ = [
    "MODES",
    "OPTIMIZER_FAMILIES",
    "ElementwiseTerms",
    "L1Regularizer",
    "L2Regularizer",
    "LpRegularizer",
    "NoRegularizer",
    "PWDRegularizer",
    "Regularizer",
    "SaSRegularizer",
    "FrechetPriorRegularizer",
    "PowerLawPriorRegularizer",
    "StableRankRegularizer",
    "WeightedAlphaRegularizer",
    "available_regularizers",
    "build_regularizer",
    "get_regularizer_class",
    "natural_mode",
    "optimizer_family",
    "register_regularizer",
    "regularized_names",
    "select_parameters",
]
