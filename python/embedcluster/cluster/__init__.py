"""Estimators with scikit-learn conventions on the native engine (or FAISS when asked).

:mod:`.kmeans` (:class:`KMeans`), :mod:`.dbscan` (:class:`DBSCAN`) and :mod:`.neighbors`
(:class:`NearestNeighbors`, also importable as ``embedcluster.neighbors``); :mod:`._common`
holds what they share. Input is converted to float32 once (see ``_backend.as_matrix``).
"""

from __future__ import annotations

from ._eps import EpsWarning
from .dbscan import DBSCAN
from .kmeans import KMeans
from .neighbors import NearestNeighbors

__all__ = ["KMeans", "DBSCAN", "NearestNeighbors", "EpsWarning"]
