"""Property-based fuzzing of _core and the estimators (hypothesis, bounded): random shapes,
dtypes, strides and values including NaN, infinities and denormals. Every call either returns
a well-formed result or raises ValueError / TypeError; nothing crashes the process."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import embedcluster as ec  # noqa: E402
from embedcluster import _core  # noqa: E402

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-40, 3e38, -3e38, 1.0]),
)
arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12),
    elements=None,
)


def float_matrix(draw_values=values):
    return hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 9)), elements=draw_values)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # duplicate rows: expected
@FUZZ
@given(X=arrays, k=st.integers(-1, 6), strided=st.booleans())
def test_estimators_never_crash(X, k, strided):
    if strided and X.ndim >= 1 and X.shape[0] > 1:
        X = X[::2]
    for make in (lambda: ec.KMeans(max(k, 1), random_state=0), lambda: ec.DBSCAN(eps=max(k, 0) + 0.5),
                 lambda: ec.NearestNeighbors(n_neighbors=max(k, 1))):
        try:
            est = make().fit(X)
        except (ValueError, TypeError):
            continue
        # Fitted: the input was a valid float matrix; results must be well formed.
        n = X.shape[0]
        if isinstance(est, ec.NearestNeighbors):
            try:
                d, i = est.kneighbors()
            except ValueError:
                continue
            assert i.shape == (n, est.n_neighbors) and np.isfinite(d).all() and (i >= 0).all() and (i < n).all()
        else:
            assert est.labels_.shape == (n,)


@FUZZ
@given(X=float_matrix(), Q=float_matrix(), k=st.integers(1, 5), metric=st.sampled_from(["l2", "ip", "cosine"]))
def test_core_knn_never_crashes(X, Q, k, metric):
    try:
        d, i = _core.knn_search(X, Q, k, metric)
    except ValueError:
        return
    assert i.shape == (Q.shape[0], k) and ((i >= 0) & (i < X.shape[0])).all()


@FUZZ
@given(X=float_matrix(), eps=st.floats(-1.0, 10.0), ms=st.integers(-1, 6), metric=st.sampled_from(["l2", "cosine"]))
def test_core_dbscan_and_kmeans_never_crash(X, eps, ms, metric):
    try:
        r = _core.dbscan_fit(X, eps, ms, metric)
        assert r.labels.shape == (X.shape[0],) and r.labels.max() < X.shape[0]
    except ValueError:
        pass
    try:
        r = _core.kmeans_fit(X, max(ms, 1), max_iter=5, metric=metric)
        assert np.isfinite(r.centers).all() and r.labels.shape == (X.shape[0],)
    except ValueError:
        pass
