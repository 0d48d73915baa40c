"""Input conversion and backend selection shared by the estimators.

The native engine takes float32, C-contiguous 2-D arrays. Everything else is converted here,
once and visibly (logged at INFO level), or rejected with a message that says what to do.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import warnings
from typing import Any, Dict, Literal, Optional, Tuple, cast

import numpy as np

logger = logging.getLogger("embedcluster")

try:  # the compiled engine; a source tree without a build falls back to FAISS
    from . import _core

    _CORE_ERROR: Optional[str] = None
    # A kernel set that failed its self-test at load time is disabled; say so once per process.
    for _message in _core.kernel_warnings():
        warnings.warn(f"embedcluster: {_message}", RuntimeWarning, stacklevel=2)
except ImportError as exc:  # pragma: no cover - only without a build
    _core = None  # type: ignore[assignment]
    _CORE_ERROR = str(exc)

BACKENDS = ("auto", "native", "faiss", "cuda")

# The one table of metric names: public name -> (the engine's metric, whether the distances
# reported to the user are the square roots of the engine's values). The engine computes
# squared Euclidean distances for "l2". Each estimator accepts the subset it supports.
EngineMetric = Literal["l2", "ip", "cosine"]
Precision = Literal["auto", "fp32"]
METRICS: Dict[str, Tuple[EngineMetric, bool]] = {
    "euclidean": ("l2", True),
    "l2": ("l2", True),
    "sqeuclidean": ("l2", False),
    "cosine": ("cosine", False),
    "inner_product": ("ip", False),
}
PRECISIONS = ("auto", "fp32")


def engine_metric(metric: str) -> EngineMetric:
    """The engine's name ("l2", "ip" or "cosine") of a public metric name (validated before)."""
    return METRICS[metric][0]


def reports_sqrt(metric: str) -> bool:
    """True when the user sees the square root of the engine's value (Euclidean metrics)."""
    return METRICS[metric][1]


def precision_arg(precision: str) -> Precision:
    """An estimator's ``precision`` (validated before) in the engine's type."""
    return cast(Precision, precision)


def threads_constraint() -> list:
    """The ``n_threads`` constraint shared by the estimators: None, -1 or an integer >= 1."""
    from numbers import Integral

    from sklearn.utils._param_validation import Interval, Options

    return [None, Interval(Integral, 1, None, closed="left"), Options(Integral, {-1})]


def faiss_available() -> bool:
    """True when the ``faiss`` module (faiss-cpu) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def native_available() -> bool:
    """True when the compiled engine ``embedcluster._core`` is importable."""
    return _core is not None


def cuda_engine() -> str:
    """The engine behind ``backend="cuda"``: the GPU, or (``EMBEDCLUSTER_CUDA_ENGINE=model``, for
    tests on machines without one) the host model of the same algorithms."""
    return "model" if os.environ.get("EMBEDCLUSTER_CUDA_ENGINE") == "model" else "cuda"


def _cuda_or_raise(capability: str, why_here: str = "") -> str:
    from . import cuda

    if cuda_engine() == "model":
        return "cuda"
    ok, why = cuda.available()
    if not ok:
        raise RuntimeError(f"backend='cuda' for {capability}: the CUDA engine cannot run here ({why}){why_here}; "
                           "use backend='native' (the CPU engine gives the same results)")
    return "cuda"


def resolve_backend(backend: str, capability: str, X: Any = None) -> str:
    """Returns ``"native"``, ``"faiss"`` or ``"cuda"`` for the requested backend (one of
    ``BACKENDS``, as the estimators' parameter constraints check).

    ``auto`` uses the CUDA engine for data already on a GPU (``X`` with
    ``__cuda_array_interface__``), else the native engine, falling back to FAISS, logging the
    reason, when the native build is missing (``capability`` names what was needed, for the
    message).
    """
    from .cuda import is_device_array

    if backend == "cuda":
        return _cuda_or_raise(capability)
    if backend == "auto" and X is not None and is_device_array(X):
        return _cuda_or_raise(capability, "; X is on a GPU: move it to the host (e.g. X.cpu().numpy()) for the "
                                          "CPU engine")
    if backend == "native":
        if _core is None:
            raise ImportError(
                f"the native engine is not built ({_CORE_ERROR}); reinstall with "
                "`pip install .` from a source checkout, or use backend='faiss'"
            )
        return "native"
    if backend == "faiss":
        if not faiss_available():
            raise ImportError("backend='faiss' needs faiss-cpu: pip install faiss-cpu")
        return "faiss"
    if _core is not None:
        return "native"
    if faiss_available():
        logger.warning("native engine unavailable (%s); using FAISS for %s", _CORE_ERROR, capability)
        return "faiss"
    raise ImportError(
        f"neither the native engine ({_CORE_ERROR}) nor faiss-cpu is available for {capability}; "
        "reinstall embedcluster or pip install faiss-cpu"
    )


def threads_arg(n_threads: Optional[int]) -> int:
    """Maps the estimators' ``n_threads`` (None or -1: all cores; validated by their
    ``threads_constraint``) to the core's convention (0)."""
    return 0 if n_threads is None or n_threads == -1 else int(n_threads)


def memory_limit_arg(memory_limit: Any) -> Any:
    """Validates an estimator's ``memory_limit``: None (the default limit), exactly 0 (no
    limit) or a number of bytes >= 1; returns None, or the bytes as an int.

    Anything else raises ValueError naming the value: a fraction of a byte (it would truncate
    to 0, i.e. no limit), negatives, NaN, infinity, bools and non-numbers.
    """
    if memory_limit is None:
        return None
    bad = ValueError(f"memory_limit={memory_limit!r} should be None, 0 (no limit) or a number of bytes >= 1")
    if isinstance(memory_limit, (bool, np.bool_)) or not isinstance(memory_limit, numbers.Real):
        raise bad
    try:
        value = float(memory_limit)
    except OverflowError:  # an int beyond float range: more bytes than any machine has
        value = math.inf
    if not math.isfinite(value) or not (value == 0 or value >= 1):
        raise bad
    return math.floor(memory_limit)


def memory_budget(memory_limit: Any) -> float:
    """Bytes one allocation may take: ``memory_limit`` (validated; 0 means no limit, returned as
    infinity), else the engine's default limit (3/4 of the smallest of the available memory,
    the RLIMIT_AS room and the memory cgroup's room; ``_core.default_memory_limit()``). The one
    budget that the engine, the estimators, the loaders and the metrics all check against."""
    limit = memory_limit_arg(memory_limit)
    if limit is None:
        limit = _core.default_memory_limit() if _core is not None else 0
    return math.inf if limit <= 0 else float(limit)


def check_python_memory(needed: float, memory_limit: Any, what: str) -> None:
    """Raises ``MemoryError`` (``_core.MemoryLimitError`` when the engine is built) before a
    Python-side allocation of about ``needed`` bytes that :func:`memory_budget` does not allow."""
    limit = memory_budget(memory_limit)
    if needed > limit:
        error = _core.MemoryLimitError if _core is not None else MemoryError
        source = "memory_limit" if memory_limit is not None else "the default memory limit"
        raise error(
            f"{what} needs about {needed / 2**20:.0f} MiB ({int(math.ceil(needed))} bytes) of working memory, "
            f"more than {source} = {limit / 2**20:.0f} MiB; raise memory_limit, free memory, or process "
            "the data in batches")


def _from_torch(x: Any) -> Any:
    mod = type(x).__module__
    if mod.startswith("torch") and hasattr(x, "detach"):
        if getattr(x, "device", None) is not None and str(x.device) != "cpu":
            raise ValueError(
                f"got a torch tensor on {x.device}; move it to the CPU first (tensor.cpu())"
            )
        return x.detach().numpy()
    return x


def as_matrix(X: Any, name: str = "X", *, estimator: str = "", allow_empty: bool = False,
              check_finite: bool = True, row_offset: int = 0) -> np.ndarray:
    """Validates ``X`` and returns it as a float32, C-contiguous 2-D array.

    Accepts numpy arrays, array-likes and CPU torch tensors. float32 C-contiguous input is
    used as it is, without a copy (read-only arrays included); float64, integer, numeric
    object and Fortran-ordered input are converted once, with an INFO log line. Raises
    TypeError for bool and non-numeric data and ValueError for complex data, NaN / infinity,
    values that overflow float32, empty input and anything that is not 2-D.
    ``check_finite=False`` leaves the NaN / infinity check to a native call that makes it
    in its own pass over the data (k-means), saving a pass here. ``row_offset``: X is a block of
    rows of a larger array starting at that row (messages name rows of the larger array).
    """
    X = _from_torch(X)
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise TypeError(f"{name} is a sparse matrix; embedcluster needs dense data (X.toarray())")
    arr = np.asarray(X) if not isinstance(X, np.ndarray) else X
    where = f" for {estimator}" if estimator else ""
    if arr.dtype == object or arr.dtype.kind in "USV":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name}{where} has dtype {arr.dtype} with non-numeric entries ({exc}); pass numbers"
            ) from None
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name}{where} is complex; "
                         "pass real numbers (X.real or np.abs(X))")
    if arr.dtype.kind == "b":
        raise TypeError(f"{name}{where} is boolean; convert it explicitly, e.g. X.astype(np.float32)")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}{where} has unsupported dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = (" Reshape your data either using array.reshape(-1, 1) if your data has a single feature "
                "or array.reshape(1, -1) if it contains a single sample.") if arr.ndim == 1 else ""
        raise ValueError(f"Expected 2D array, got {arr.ndim}D array instead: {name}{where} must be "
                         f"(n_samples, n_features).{hint}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}{where} has 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name}{where} has 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required.")
    if arr.dtype != np.float32:
        if arr.dtype.kind == "f":
            big = np.abs(arr[np.isfinite(arr)]).max(initial=0.0)
            if big > np.finfo(np.float32).max:
                raise ValueError(
                    f"{name}{where} has values up to {big:.3g}, beyond float32's range (3.4e38); rescale it"
                )
        logger.info("%s: converting %s to float32 (the engine computes in float32)", name, arr.dtype)
        arr = arr.astype(np.float32, order="C")
    elif not arr.flags.c_contiguous:
        logger.info("%s: copying a non-C-contiguous array to C order", name)
        arr = np.ascontiguousarray(arr)
    if check_finite and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"Input {name}{where} contains NaN or infinity (first at row {bad[0] + row_offset}, column {bad[1]}); "
            "remove or impute those values"
        )
    return arr


def as_weights(sample_weight: Any, n: int) -> Optional[np.ndarray]:
    """Validates sample weights: None, a scalar, or n finite non-negative numbers; float32 out."""
    if sample_weight is None:
        return None
    w = _from_torch(sample_weight)
    w = np.asarray(w)
    if w.ndim == 0:
        w = np.full(n, float(w), dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"sample_weight.shape == {w.shape}, expected ({n},)!")
    if w.dtype.kind not in "fiu":
        raise TypeError(f"sample_weight has dtype {w.dtype}; pass numbers")
    w = w.astype(np.float32)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if w.sum() <= 0:
        raise ValueError("sample_weight sums to zero; at least one weight must be positive")
    return np.ascontiguousarray(w)


def seed_of(random_state: Any) -> int:
    """A 64-bit seed from ``random_state`` (None, int or numpy RandomState/Generator)."""
    if random_state is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(random_state, (int, np.integer)):
        return int(random_state) & 0xFFFFFFFFFFFFFFFF
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise ValueError(f"random_state={random_state!r} should be None, an int, a RandomState or a Generator")
