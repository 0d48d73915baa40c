"""Clustering evaluation metrics.

Two families of metrics are provided:

* **External metrics** compare a predicted clustering with ground-truth
  classes: :func:`confusion_matrix`, :func:`match_clusters`,
  :func:`cluster_accuracy`, :func:`nmi`, :func:`ari`, :func:`v_measure`,
  :func:`purity`, :func:`per_class_report` and :func:`clustering_report`
  (:func:`name_classes` keys per-class results by class name).
* **Internal (label-free) metrics** score a clustering from the data alone:
  :func:`silhouette_sampled` and :func:`davies_bouldin`.

NMI, ARI and V-measure are scikit-learn's, called after this package's label checks.
Matching (Hungarian, through :func:`scipy.optimize.linear_sum_assignment`, or a sparse
matching when the dense table would not fit), accuracy, purity and per-class reports are
this package's own, as are silhouette and Davies-Bouldin: they follow
:mod:`sklearn.metrics`' definitions and edge cases, and size every temporary from the one
memory budget (``memory_limit``) that the rest of the package obeys.

Input conventions
-----------------
* Label arrays may be Python sequences, NumPy arrays or PyTorch tensors
  (tensors are copied to the host by :func:`embedcluster._io.to_numpy`; torch is never
  imported by this module).
* Labels must be 1-D, non-empty and of equal length.  ``labels_true`` may hold
  integers or strings (strings are encoded via :func:`numpy.unique`);
  ``labels_pred`` must hold integer-like cluster ids.  Floats are accepted when
  every value is integral (``1.0``); NaN/None, infinities and fractional values are
  rejected.
* **Noise**: the label ``-1`` in ``labels_pred`` (as produced by DBSCAN/HDBSCAN) is
  treated as one ordinary cluster everywhere -- it gets its own column in the
  confusion matrix, takes part in the Hungarian matching, and counts as a cluster
  for NMI/ARI/V-measure/purity/silhouette/Davies-Bouldin (the same convention as
  scikit-learn).  To ignore noise points instead, filter them out beforehand,
  e.g. ``keep = labels_pred != -1``.

Memory
------
Nothing here allocates by the number of distinct labels squared unless asked to: NMI, ARI,
V-measure and purity work on the sparse contingency table (its non-zero cells, at most
``n_samples``), as scikit-learn does. The Hungarian matching (accuracy, :func:`match_clusters`,
:func:`per_class_report`) runs on the dense ``n_classes x n_clusters`` table while it is small
(at most ``2**22`` cells and within the memory budget) and otherwise on the sparse table with
:func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` (the same optimum; classes
whose best remaining cluster shares no sample with them are left unmatched instead of being
paired with an arbitrary empty cell). :func:`confusion_matrix` returns a dense matrix only
within the budget (``sparse=True`` gives a scipy.sparse matrix of any size). The budget is
``memory_limit`` bytes when given (0: no limit), else
:func:`embedcluster._core.default_memory_limit` (3/4 of the available memory); a dense result
over it raises ``MemoryError`` that says what to do.

Errors
------
``ValueError`` is raised for wrong shapes, empty or mismatched inputs, NaN/None,
infinite or fractional label values, and invalid parameters.  ``TypeError`` is
raised for label dtypes that cannot be labels at all (complex, datetime, arbitrary
objects, or strings in ``labels_pred``).

Modules: :mod:`.matching` (confusion matrix, Hungarian matching, accuracy, purity, per-class
reports), :mod:`.information` (NMI, ARI, V-measure), :mod:`.summary` (clustering_report),
:mod:`.internal` (silhouette, Davies-Bouldin), over :mod:`.contingency` and :mod:`._validation`.
"""

from __future__ import annotations

from .information import ari, nmi, v_measure
from .internal import davies_bouldin, silhouette_sampled
from .matching import cluster_accuracy, confusion_matrix, match_clusters, per_class_report, purity
from .summary import clustering_report, name_classes

__all__ = [
    "confusion_matrix",
    "match_clusters",
    "cluster_accuracy",
    "nmi",
    "ari",
    "v_measure",
    "purity",
    "per_class_report",
    "clustering_report",
    "name_classes",
    "silhouette_sampled",
    "davies_bouldin",
]
