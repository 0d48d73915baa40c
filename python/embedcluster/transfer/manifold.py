"""UMAP on the engine's exact k-nearest-neighbour graph, then k-means or a Gaussian mixture.

This is the N2D recipe (McConville et al. 2020, "N2D: (Not Too) Deep Clustering via
Clustering the Local Manifold of an Autoencoded Embedding"): embeddings are mapped by UMAP to
a few dimensions that keep their local manifold, and an ordinary clusterer runs there.
umap-learn's own nearest-neighbour stage (approximate NN-descent) is skipped: the native
engine computes the exact k nearest neighbours (:func:`exact_knn_graph`) and UMAP receives
them through its ``precomputed_knn`` argument, so only the fuzzy graph, the spectral
initialisation and the layout optimisation run in umap-learn.

umap-learn is an optional dependency: ``pip install umap-learn`` (or the ``umap`` extra,
``pip install 'embedcluster[umap]'``).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np

UMAP_MISSING = ("UMAPClustering needs umap-learn, an optional dependency: pip install umap-learn "
                "(or pip install 'embedcluster[umap]')")
CLUSTERERS = ("kmeans", "gmm")
METRICS = ("cosine", "euclidean")


def _umap_class() -> Any:
    try:
        from umap import UMAP
    except ImportError as exc:
        raise ImportError(UMAP_MISSING) from exc
    return UMAP


def _checked_rows(Z: Any) -> np.ndarray:
    Z = np.asarray(Z)
    if Z.ndim != 2 or Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"Z should be a non-empty 2-D array (n_samples, n_features), got shape {Z.shape}")
    if not np.issubdtype(Z.dtype, np.number) or np.issubdtype(Z.dtype, np.complexfloating):
        raise ValueError(f"Z should hold real numbers, got dtype {Z.dtype}")
    Z = np.ascontiguousarray(Z, np.float32)
    bad = np.flatnonzero(~np.isfinite(Z).all(1))
    if len(bad):
        raise ValueError(f"Z has {len(bad)} rows with NaN or infinity (first: row {bad[0]})")
    return Z


def exact_knn_graph(Z: Any, n_neighbors: int, metric: str = "cosine",
                    n_threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's ``n_neighbors`` nearest rows, itself first at distance 0, in the layout of
    umap-learn's ``precomputed_knn``: ``(indices (n, k) int64, distances (n, k) float32)``,
    nearest first. The other ``n_neighbors - 1`` come from the native engine's exact
    self-join; cosine distances are ``1 - cos``, euclidean ones are plain distances.
    """
    Z = _checked_rows(Z)
    n = Z.shape[0]
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} should be one of {METRICS}")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) \
            or not 2 <= n_neighbors <= n:
        raise ValueError(f"n_neighbors={n_neighbors!r} should be an integer from 2 to the {n} rows "
                         "(it counts the point itself)")
    if metric == "cosine" and (np.linalg.norm(Z, axis=1) == 0).any():
        raise ValueError("Z has all-zero rows: their cosine distance is undefined")
    from ..cluster import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=int(n_neighbors) - 1, metric=metric, n_threads=n_threads).fit(Z)
    dist, idx = nn.kneighbors()
    indices = np.concatenate([np.arange(n, dtype=np.int64)[:, None], np.asarray(idx, np.int64)], 1)
    distances = np.concatenate([np.zeros((n, 1), np.float32), np.asarray(dist, np.float32)], 1)
    return indices, np.maximum(distances, 0.0)


class UMAPClustering:
    """Exact kNN graph -> UMAP -> k-means or a Gaussian mixture (the N2D recipe; module notes).

    Parameters
    ----------
    n_clusters : clusters, >= 2.
    n_components : UMAP's output dimension (N2D uses the number of clusters).
    n_neighbors : neighbours of the graph, the point itself included (umap-learn's convention).
    min_dist : UMAP's minimum distance between embedded points (0 packs clusters tightly,
        which suits clustering).
    metric : "cosine" or "euclidean", of the input rows.
    clusterer : "kmeans" (embedcluster's KMeans, ``n_init`` restarts) or "gmm" (scikit-learn's
        GaussianMixture, full covariances, ``n_init`` restarts).
    n_epochs : UMAP's layout epochs (None: umap-learn's default, 200 above 10,000 rows).
    n_init : restarts of the clusterer.
    random_state : seed of UMAP and the clusterer. umap-learn runs its layout on one thread
        when seeded, so that the result is reproducible; None lets it use ``n_threads`` threads
        (faster, not reproducible).
    n_threads : threads of the engine's kNN and of umap-learn (None: their defaults).
    umap_kwargs : other keyword arguments for ``umap.UMAP``.

    Attributes (after fit)
    ----------------------
    labels_ (n,), embedding_ (n, n_components) UMAP output, knn_indices_ and knn_distances_
    (n, n_neighbors) the graph given to UMAP, clusterer_ (the fitted k-means or mixture),
    times_ (seconds of the "knn", "umap" and "cluster" steps), n_features_in_.
    """

    def __init__(self, n_clusters: int = 10, *, n_components: int = 10, n_neighbors: int = 20,
                 min_dist: float = 0.0, metric: str = "cosine", clusterer: str = "kmeans",
                 n_epochs: Optional[int] = None, n_init: int = 10, random_state: Optional[int] = 0,
                 n_threads: Optional[int] = None, umap_kwargs: Optional[Dict[str, Any]] = None):
        self.n_clusters = n_clusters
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.clusterer = clusterer
        self.n_epochs = n_epochs
        self.n_init = n_init
        self.random_state = random_state
        self.n_threads = n_threads
        self.umap_kwargs = umap_kwargs

    def _check_params(self, n: int) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        for name, lo in (("n_clusters", 2), ("n_components", 1), ("n_init", 1)):
            if not is_int(getattr(self, name)) or getattr(self, name) < lo:
                raise ValueError(f"{name}={getattr(self, name)!r} should be an integer >= {lo}")
        if self.n_clusters > n:
            raise ValueError(f"n_clusters={self.n_clusters} is more than the {n} points")
        if self.clusterer not in CLUSTERERS:
            raise ValueError(f"clusterer={self.clusterer!r} should be one of {CLUSTERERS}")
        if self.n_epochs is not None and (not is_int(self.n_epochs) or self.n_epochs < 1):
            raise ValueError(f"n_epochs={self.n_epochs!r} should be None or an integer >= 1")
        if not (isinstance(self.min_dist, (int, float)) and 0 <= self.min_dist < np.inf):
            raise ValueError(f"min_dist={self.min_dist!r} should be a finite number >= 0")
        if self.random_state is not None and not is_int(self.random_state):
            raise ValueError(f"random_state={self.random_state!r} should be None or an integer")

    def fit(self, Z: Any, y: Any = None, knn: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> UMAPClustering:
        """Builds the exact kNN graph of ``Z`` (n, d), embeds it with UMAP, clusters the
        embedding; sets ``labels_``. ``y`` is ignored.

        ``knn``: the graph of these rows from :func:`exact_knn_graph` with this ``n_neighbors``
        and ``metric``, to reuse it (across seeds, for example) instead of computing it again."""
        Z = _checked_rows(Z)
        self._check_params(Z.shape[0])
        UMAP = _umap_class()
        times: Dict[str, float] = {}
        start = time.perf_counter()
        if knn is None:
            knn = exact_knn_graph(Z, self.n_neighbors, self.metric, self.n_threads)
        self.knn_indices_, self.knn_distances_ = self._checked_graph(knn, Z.shape[0])
        times["knn"] = time.perf_counter() - start
        reducer = UMAP(n_neighbors=int(self.n_neighbors), n_components=int(self.n_components),
                       min_dist=float(self.min_dist), metric=self.metric, n_epochs=self.n_epochs,
                       random_state=self.random_state, n_jobs=self.n_threads or -1,
                       precomputed_knn=(self.knn_indices_, self.knn_distances_),
                       **(self.umap_kwargs or {}))
        start = time.perf_counter()
        with warnings.catch_warnings():
            # Expected here: no NN-descent index (only fit is used, never transform), and a
            # seeded UMAP running on one thread.
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            self.embedding_ = np.ascontiguousarray(reducer.fit_transform(Z), np.float32)
        times["umap"] = time.perf_counter() - start
        start = time.perf_counter()
        self.labels_ = self._cluster(self.embedding_)
        times["cluster"] = time.perf_counter() - start
        self.times_, self.n_features_in_ = times, Z.shape[1]
        return self

    def _checked_graph(self, knn: Any, n: int) -> Tuple[np.ndarray, np.ndarray]:
        try:
            indices, distances = (np.asarray(a) for a in knn)
        except (TypeError, ValueError):
            raise ValueError("knn should be the (indices, distances) pair of exact_knn_graph") from None
        shape = (n, self.n_neighbors)
        if indices.shape != shape or distances.shape != shape:
            raise ValueError(f"knn arrays have shapes {indices.shape} and {distances.shape}; these {n} rows "
                             f"with n_neighbors={self.n_neighbors} need {shape} (exact_knn_graph's layout)")
        if not np.issubdtype(indices.dtype, np.integer) or (indices[:, 0] != np.arange(n)).any() \
                or indices.min() < 0 or indices.max() >= n or not np.isfinite(distances).all():
            raise ValueError("knn does not have exact_knn_graph's layout: integer indices within the rows, "
                             "each row's own index first, finite distances")
        return np.ascontiguousarray(indices, np.int64), np.ascontiguousarray(distances, np.float32)

    def _cluster(self, E: np.ndarray) -> np.ndarray:
        seed = 0 if self.random_state is None else int(self.random_state)
        if self.clusterer == "kmeans":
            from ..cluster import KMeans

            self.clusterer_: Any = KMeans(int(self.n_clusters), n_init=int(self.n_init), random_state=seed,
                                          n_threads=self.n_threads).fit(E)
            return np.asarray(self.clusterer_.labels_, np.int64)
        from sklearn.mixture import GaussianMixture

        self.clusterer_ = GaussianMixture(int(self.n_clusters), covariance_type="full", n_init=int(self.n_init),
                                          random_state=seed).fit(E)
        return np.asarray(self.clusterer_.predict(E), np.int64)

    def fit_predict(self, Z: Any, y: Any = None) -> np.ndarray:
        """``fit(Z).labels_``."""
        return self.fit(Z).labels_


__all__ = ["CLUSTERERS", "UMAPClustering", "UMAP_MISSING", "exact_knn_graph"]
