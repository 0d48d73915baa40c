"""The sparse contingency table of two labelings, which every external metric reads."""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

from ._validation import _check_dense


# --------------------------------------------------------------------------- #
# Contingency tables
# --------------------------------------------------------------------------- #
def _contingency(lt: np.ndarray, lp: np.ndarray) -> Dict[str, np.ndarray]:
    """Sparse contingency table (only non-zero cells), O(n) memory."""
    classes, ti = np.unique(lt, return_inverse=True)
    clusters, pi = np.unique(lp, return_inverse=True)
    ti = ti.reshape(-1).astype(np.int64)
    pi = pi.reshape(-1).astype(np.int64)
    codes = ti * clusters.shape[0] + pi
    cells, counts = np.unique(codes, return_counts=True)
    return {
        "classes": classes,
        "clusters": clusters,
        "rows": cells // clusters.shape[0],
        "cols": cells % clusters.shape[0],
        "counts": counts.astype(np.int64),
        "row_sums": np.bincount(ti, minlength=classes.shape[0]).astype(np.int64),
        "col_sums": np.bincount(pi, minlength=clusters.shape[0]).astype(np.int64),
    }


def _dense(ct: Dict[str, np.ndarray], memory_limit: Any = None, what: str = "confusion_matrix",
           hint: str = "") -> np.ndarray:
    kt, kp = ct["classes"].shape[0], ct["clusters"].shape[0]
    _check_dense(8.0 * kt * kp, f"{what}: a dense {kt} x {kp} int64 table ({kt} classes x {kp} clusters)",
                 memory_limit, hint or "pass sparse=True for a scipy.sparse matrix of the non-zero cells, or "
                 "memory_limit= in bytes (0: no limit)")
    mat = np.zeros((kt, kp), dtype=np.int64)
    mat[ct["rows"], ct["cols"]] = ct["counts"]
    return mat


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    if counts.shape[0] <= 1:
        return 0.0
    total = counts.sum()
    return float(-np.sum((counts / total) * (np.log(counts) - math.log(total))))


def _mutual_info(ct: Dict[str, np.ndarray]) -> float:
    a, b = ct["row_sums"], ct["col_sums"]
    if a.shape[0] == 1 or b.shape[0] == 1:
        return 0.0
    nij = ct["counts"].astype(np.float64)
    n = float(nij.sum())
    terms = (nij / n) * (
        np.log(nij)
        + math.log(n)
        - np.log(a[ct["rows"]].astype(np.float64))
        - np.log(b[ct["cols"]].astype(np.float64))
    )
    terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)
    return float(max(terms.sum(), 0.0))
