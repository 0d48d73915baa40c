"""What the estimators of :mod:`embedcluster.cluster` share: the parameter store of their
constructors, the engine parameters' rules and the feature-count check of new data."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import StrOptions

from .._backend import BACKENDS, threads_constraint

# Public metric names the clustering estimators accept (their meaning: _backend.METRICS).
CLUSTER_METRICS = {"l2", "euclidean", "cosine"}


def engine_constraints() -> Dict[str, Any]:
    """The rules of the parameters every estimator passes to the engine (backend, n_threads,
    memory_limit). memory_limit's rule (0 or >= 1 byte, not bools) is memory_limit_arg's, which
    names the value in its message, so scikit-learn's validation leaves it alone."""
    return {
        "backend": [StrOptions(set(BACKENDS))],
        "n_threads": threads_constraint(),
        "memory_limit": "no_validation",
        "verbose": ["verbose", None],
    }


def store_params(estimator: BaseEstimator, arguments: Dict[str, Any]) -> None:
    """Stores each constructor argument (``locals()`` of ``__init__``) unchanged under its name.

    scikit-learn's contract: ``__init__`` only records its arguments (``get_params`` and
    ``clone`` read them back by the names of the signature); checks happen in ``fit``.
    """
    for name in type(estimator)._get_param_names():
        setattr(estimator, name, arguments[name])


def check_features(estimator: BaseEstimator, X: np.ndarray) -> None:
    """New data must have the number of features the estimator was fitted on."""
    if X.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input."
        )
