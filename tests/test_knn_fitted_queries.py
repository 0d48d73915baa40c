"""``kneighbors(X)`` where X holds the fitted rows (the same object, or the same bytes) runs the
engine's symmetric self-join and must return exactly what the one-sided scan of a copy returns:
each point among its own neighbours (scikit-learn's convention when X is passed), ties to the
lower index, duplicates included; checked against the float64 brute force of conftest."""

from __future__ import annotations

import numpy as np
import pytest

import embedcluster as ec
from embedcluster import _core
from embedcluster.cluster import neighbors as nn_module

from conftest import brute_knn, brute_within

ENGINE_METRIC = {"euclidean": "l2", "sqeuclidean": "l2", "cosine": "cosine", "inner_product": "ip"}


def _rows_with_duplicates(seed: int = 7, n_base: int = 260, d: int = 24) -> np.ndarray:
    """Several 192-row blocks; every row three times (so a row's zero-distance twins may come
    before it), and a few rows that are scaled copies (ties in cosine and inner products)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, d)).astype(np.float32)
    X = np.vstack([base, base[::-1], base, 2.0 * base[:40]]).astype(np.float32)
    return X


class _Recorder:
    """Stands in for ``_core`` in the neighbors module and records whether knn_search was given
    the fitted array itself as its queries (what makes the engine take the self-join)."""

    def __init__(self) -> None:
        self.same_buffer: list = []

    def __getattr__(self, name):
        return getattr(_core, name)

    def knn_search(self, database, queries, *args, **kwargs):
        self.same_buffer.append(queries is database)
        return _core.knn_search(database, queries, *args, **kwargs)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("k", [1, 11])
def test_fitted_queries_equal_one_sided_scan_and_brute_force(kernel_set, metric, k):
    X = _rows_with_duplicates()
    est = ec.NearestNeighbors(n_neighbors=k, metric=metric).fit(X)
    one_d, one_i = est.kneighbors(X.copy())  # another buffer: the one-sided scan
    _, ref_i = brute_knn(X, X, k, ENGINE_METRIC[metric])
    np.testing.assert_array_equal(one_i, ref_i)
    for queries in (X, X.copy(order="C"), X.astype(np.float64), X.tolist()):
        got_d, got_i = est.kneighbors(queries)
        np.testing.assert_array_equal(got_i, one_i)
        np.testing.assert_array_equal(got_d, one_d)
        assert got_d.dtype == one_d.dtype and got_i.dtype == one_i.dtype


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_each_point_is_among_its_own_neighbours_at_the_reported_distance(metric):
    X = _rows_with_duplicates(seed=3)
    est = ec.NearestNeighbors(n_neighbors=4, metric=metric).fit(X)
    dist, idx = est.kneighbors(X)
    rows = np.arange(len(X))
    # Three copies of every base row (four for the first 40 under cosine: the scaled copy too):
    # all at distance 0 or its rounding, ordered by index, so the row itself is among them.
    assert (idx == rows[:, None]).any(axis=1).all()
    own = dist[idx == rows[:, None]]
    if metric == "euclidean":
        assert (own == 0).all()  # the float64 sum of squared differences of equal rows
    else:
        assert np.abs(own).max() < 1e-6  # 1 - x.x / (|x| |x|) rounds, in both scans alike
    twins = idx[: len(X) // 4, :3]
    assert (np.diff(twins, axis=1) > 0).all(), "zero-distance ties go to the lower index"


def test_fitted_array_takes_the_self_join_and_copies_are_recognised(monkeypatch):
    X = _rows_with_duplicates(seed=5)
    est = ec.NearestNeighbors(n_neighbors=3).fit(X)
    rec = _Recorder()
    monkeypatch.setattr(nn_module, "_core", rec)
    est.kneighbors(X)
    est.kneighbors(X.copy())
    est.kneighbors(X.astype(np.float64))
    other = X.copy()
    other[-1, -1] = np.nextafter(other[-1, -1], np.float32(np.inf))  # the last byte block differs
    est.kneighbors(other)
    negzero = X.copy()
    negzero[0, 0] = 0.0
    X0 = X.copy()
    X0[0, 0] = -0.0
    est0 = ec.NearestNeighbors(n_neighbors=3).fit(X0)
    est0.kneighbors(negzero)  # equal values, different bytes: the one-sided scan
    est.kneighbors(X[:-1])
    assert rec.same_buffer == [True, True, True, False, False, False]


def test_same_rows_compares_bytes_block_by_block(monkeypatch):
    monkeypatch.setattr(nn_module, "_SAME_ROWS_BLOCK_BYTES", 64)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 9)).astype(np.float32)
    assert nn_module.same_rows(a, a.copy())
    assert nn_module.same_rows(a[:0], a[:0].copy())
    for r, c in [(0, 0), (25, 4), (49, 8)]:
        b = a.copy()
        b[r, c] += 1
        assert not nn_module.same_rows(a, b)
    assert not nn_module.same_rows(a, a[:, :8].copy())
    assert not nn_module.same_rows(a, a.astype(np.float64))
    assert not nn_module.same_rows(a, np.asfortranarray(a))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_n_neighbors_equal_to_n_samples(kernel_set, metric):
    X = _rows_with_duplicates(seed=9, n_base=70, d=5)
    n = len(X)
    est = ec.NearestNeighbors(n_neighbors=n, metric=metric).fit(X)
    d_self, i_self = est.kneighbors(X)
    d_one, i_one = est.kneighbors(X.copy())
    np.testing.assert_array_equal(i_self, i_one)
    np.testing.assert_array_equal(d_self, d_one)
    _, ref = brute_knn(X, X, n, ENGINE_METRIC[metric])
    np.testing.assert_array_equal(i_self, ref)


@pytest.mark.parametrize("mode", ["connectivity", "distance"])
def test_kneighbors_graph_of_fitted_rows(mode):
    X = _rows_with_duplicates(seed=11)
    est = ec.NearestNeighbors(n_neighbors=6).fit(X)
    got = est.kneighbors_graph(X, mode=mode)
    ref = est.kneighbors_graph(X.copy(), mode=mode)
    assert (got != ref).nnz == 0
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.data, ref.data)


def test_radius_neighbors_of_fitted_rows_include_each_point():
    X = _rows_with_duplicates(seed=13)
    est = ec.NearestNeighbors(radius=4.5, metric="euclidean").fit(X)
    d_got, i_got = est.radius_neighbors(X)
    d_ref, i_ref = est.radius_neighbors(X.copy())
    mask = brute_within(X, X, 4.5 ** 2, "l2")
    for q in range(len(X)):
        np.testing.assert_array_equal(i_got[q], i_ref[q])
        np.testing.assert_array_equal(d_got[q], d_ref[q])
        np.testing.assert_array_equal(i_got[q], np.flatnonzero(mask[q]))
        assert q in i_got[q]


def test_streamed_fit_with_its_own_rows_as_queries(tmp_path):
    X = _rows_with_duplicates(seed=15)
    path = tmp_path / "x.npy"
    np.save(path, X.astype(np.float64))  # a float64 memory map is streamed block by block
    mm = np.load(path, mmap_mode="r")
    est = ec.NearestNeighbors(n_neighbors=5, memory_limit=1 << 20).fit(mm)
    assert est._streamed
    d_got, i_got = est.kneighbors(mm)
    d_ref, i_ref = ec.NearestNeighbors(n_neighbors=5).fit(X).kneighbors(X.copy())
    np.testing.assert_array_equal(i_got, i_ref)
    np.testing.assert_array_equal(d_got, d_ref)


def test_faiss_backend_with_fitted_rows_as_queries():
    pytest.importorskip("faiss")
    X = _rows_with_duplicates(seed=17)
    est = ec.NearestNeighbors(n_neighbors=4, backend="faiss").fit(X)
    d_got, i_got = est.kneighbors(X)
    d_ref, i_ref = est.kneighbors(X.copy())
    np.testing.assert_array_equal(i_got, i_ref)
    np.testing.assert_array_equal(d_got, d_ref)
