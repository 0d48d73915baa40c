"""Input checks every metric shares: label arrays, feature matrices, and dense results within
the memory budget."""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np

from .._io import to_numpy


Label = Union[int, str]


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _as_numpy(x: Any) -> np.ndarray:
    """Convert list / ndarray / torch tensor to an ndarray without importing torch."""
    return np.asarray(to_numpy(x))


def _check_labels(x: Any, name: str, allow_strings: bool) -> np.ndarray:
    """Validate one label array and return it as int64 or string ndarray."""
    arr = _as_numpy(x)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array-like of labels, got an array of shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; at least one sample is required")

    if arr.dtype.kind == "O":
        if all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in arr):
            arr = arr.astype(str)
        else:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise TypeError(
                    f"{name} must contain integer-like"
                    + (" or string" if allow_strings else "")
                    + " labels; got an object array with unsupported or mixed values"
                ) from None

    kind = arr.dtype.kind
    if kind in ("U", "S"):
        if not allow_strings:
            raise TypeError(
                f"{name} must contain integer cluster ids, got string labels "
                f"(dtype {arr.dtype}); string labels are only accepted for labels_true"
            )
        return arr
    if kind == "b":
        return arr.astype(np.int64)
    if kind in ("i", "u"):
        if kind == "u" and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} contains values larger than the int64 range")
        return arr.astype(np.int64, copy=False)
    if kind == "f":
        nan = np.isnan(arr)
        if nan.any():
            idx = int(np.flatnonzero(nan)[0])
            raise ValueError(
                f"{name} contains NaN (a missing label) at index {idx}; "
                "labels must be integer-like" + (" or strings" if allow_strings else "")
            )
        inf = np.isinf(arr)
        if inf.any():
            idx = int(np.flatnonzero(inf)[0])
            raise ValueError(f"{name} contains an infinite value at index {idx}")
        frac = arr != np.round(arr)
        if frac.any():
            idx = int(np.flatnonzero(frac)[0])
            raise ValueError(
                f"{name} must contain integer-like values; found {arr[idx].item()!r} at index {idx}"
            )
        if np.abs(arr).max() >= 2.0**63:
            raise ValueError(f"{name} contains values outside the int64 range")
        return arr.astype(np.int64)
    raise TypeError(
        f"{name} must contain integer-like"
        + (" or string" if allow_strings else "")
        + f" labels, got dtype {arr.dtype}"
    )


def _check_pair(labels_true: Any, labels_pred: Any) -> Tuple[np.ndarray, np.ndarray]:
    lt = _check_labels(labels_true, "labels_true", allow_strings=True)
    lp = _check_labels(labels_pred, "labels_pred", allow_strings=False)
    if lt.shape[0] != lp.shape[0]:
        raise ValueError(
            f"labels_true has {lt.shape[0]} samples but labels_pred has {lp.shape[0]}"
        )
    return lt, lp


def _check_X_labels(X: Any, labels: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Validate a (n_samples, n_features) matrix and its labels (not converted yet)."""
    Xa = _as_numpy(X)
    if Xa.ndim != 2:
        raise ValueError(
            f"X must be a 2-D array of shape (n_samples, n_features), got shape {Xa.shape}"
        )
    if Xa.dtype.kind not in ("b", "i", "u", "f"):
        raise TypeError(f"X must be numeric, got dtype {Xa.dtype}")
    if Xa.shape[1] == 0:
        raise ValueError("X has 0 features; at least one feature is required")
    lab = _check_labels(labels, "labels", allow_strings=True)
    if Xa.shape[0] != lab.shape[0]:
        raise ValueError(f"X has {Xa.shape[0]} samples but labels has {lab.shape[0]}")
    return Xa, lab


def _check_finite_chunk(block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise ValueError("X contains NaN or infinity")


def _py(v: Any) -> Any:
    """NumPy scalar -> plain Python scalar."""
    return v.item() if isinstance(v, np.generic) else v


def _budget(memory_limit: Any) -> float:
    """Bytes a dense result may take (see :func:`embedcluster._backend.memory_budget`)."""
    from .._backend import memory_budget

    return memory_budget(memory_limit)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MiB"


def _check_dense(nbytes: float, what: str, memory_limit: Any, hint: str) -> None:
    """MemoryError before allocating ``nbytes`` when they exceed the budget."""
    budget = _budget(memory_limit)
    if nbytes > budget:
        source = ("memory_limit" if memory_limit is not None
                  else "the default memory limit (3/4 of the available memory)")
        raise MemoryError(f"{what} needs {_gib(nbytes)}, more than {source} ({_gib(budget)}); {hint}")
