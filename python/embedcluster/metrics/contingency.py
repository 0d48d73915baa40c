"""The sparse contingency table of two labelings, which every external metric reads."""

from __future__ import annotations

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
