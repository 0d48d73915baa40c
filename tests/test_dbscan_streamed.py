"""DBSCAN over groups of rows (memory maps and shards too large for memory): the labels, core
points and predictions of the in-memory fit, checked against it and against scikit-learn."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.cluster import DBSCAN as SkDBSCAN

import embedcluster._dbscan_groups as groups
import embedcluster.cluster.dbscan as dbscan_module
from embedcluster import DBSCAN
from embedcluster.data.sharded import ShardedArray


@pytest.fixture
def small_groups(monkeypatch):
    monkeypatch.setattr(groups, "GROUP_ROWS", 250)  # many groups on small data
    monkeypatch.setattr(groups, "SPAN_BYTES", 40_000)  # and the scratch copy written in several spans
    monkeypatch.setattr(groups, "MIN_SPAN_ROWS", 500)


def data(n=3000, d=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 6
    X = centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d)) * rng.choice([0.5, 1.0, 2.0], size=(n, 1))
    X[: n // 10] = rng.uniform(-15, 15, size=(n // 10, d))  # noise
    X[n // 2: n // 2 + 6] = X[n // 2 + 7]  # duplicates: ties everywhere
    return rng.permutation(X).astype(np.float32)


def as_memmap(X, path):
    np.save(path, X)
    return np.load(path, mmap_mode="r")


def as_shards(X, folder):
    cuts = [0, 7, len(X) // 3, len(X) // 3 + 1, len(X)]
    parts = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        np.save(folder / f"s{i}.npy", X[a:b].astype(np.float64))
        parts.append(np.load(folder / f"s{i}.npy", mmap_mode="r"))
    return ShardedArray(parts)


def same_partition(a, b):
    """Two labelings of the same rows name the same groups (cluster ids may differ)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


CASES = [("euclidean", 2.2, 6), ("euclidean", 4.0, 20), ("cosine", 0.015, 5), ("euclidean", 1.0, 1)]


@pytest.mark.parametrize("metric,eps,min_samples", CASES)
@pytest.mark.parametrize("kind,path", [("memmap", "pairs"), ("shards", "pairs"), ("memmap", "whole")])
def test_streamed_fit_equals_in_memory_fit(tmp_path, small_groups, monkeypatch, metric, eps, min_samples, kind, path):
    X = data()
    src = as_memmap(X, tmp_path / "x.npy") if kind == "memmap" else as_shards(X, tmp_path)
    ref = DBSCAN(eps=eps, min_samples=min_samples, metric=metric).fit(X)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "keep.txt").write_text("the user's")
    # "pairs": a memory limit too small to fit any set of groups whole; "whole": streamed, but
    # every independent set of groups fits and is fitted in memory.
    if path == "whole":
        monkeypatch.setattr(dbscan_module, "_streams", lambda X, limit: True)
    limit = 1000 if path == "pairs" else None
    got = DBSCAN(eps=eps, min_samples=min_samples, metric=metric, memory_limit=limit, scratch_dir=scratch).fit(src)
    assert got.stats_["groups_pairs"] > 0  # it went through the groups
    if path == "pairs":
        assert got.stats_["groups_components_whole"] == 0
    else:
        assert got.stats_["groups_components_whole"] > 0 and got.stats_["groups_pairs_linked"] == 0
    np.testing.assert_array_equal(got.labels_, ref.labels_)
    np.testing.assert_array_equal(got.core_sample_indices_, ref.core_sample_indices_)
    np.testing.assert_array_equal(np.asarray(got.components_), ref.components_)
    assert got.n_clusters_ == ref.n_clusters_
    assert os.listdir(scratch) == ["keep.txt"]  # its own folder removed, nothing else touched
    # the oracle: scikit-learn's core points and the partition of the core points
    sk = SkDBSCAN(eps=eps, min_samples=min_samples, metric=metric).fit(X.astype(np.float64))
    np.testing.assert_array_equal(got.core_sample_indices_, sk.core_sample_indices_)
    core = got.core_sample_indices_
    assert same_partition(got.labels_[core], sk.labels_[core])
    np.testing.assert_array_equal(got.labels_ == -1, sk.labels_ == -1)
    Q = X[::5] + np.float32(0.3)
    np.testing.assert_array_equal(got.predict(Q), ref.predict(Q))


@pytest.mark.parametrize("span_rows", [1, 7, 1000, 5000])
def test_scratch_copy_holds_each_group_in_row_order(tmp_path, span_rows):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2100, 5))  # float64: the copy is float32
    labels = rng.integers(0, 9, len(X))
    labels[labels == 4] = 5  # an empty group
    order, offsets, runs = groups.write_spans(X, labels, 10, tmp_path / "g.npy", span_rows, block_rows=64)
    store = np.load(tmp_path / "g.npy", mmap_mode="r")
    np.testing.assert_array_equal(store, X[order].astype(np.float32))
    assert sorted(order) == list(range(len(X)))
    ex = groups.SpanGroups(store, order, offsets, runs)
    for g in range(10):
        np.testing.assert_array_equal(ex.ids(g), np.flatnonzero(labels == g))
        np.testing.assert_array_equal(ex.rows(g), X[labels == g].astype(np.float32))


def test_well_separated_groups_skip_pairs(tmp_path, small_groups):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(4000, 8)) * 0.3 + rng.integers(0, 20, size=(4000, 1)) * 10.0).astype(np.float32)
    got = DBSCAN(eps=0.5, min_samples=4, memory_limit=1000).fit(as_memmap(X, tmp_path / "x.npy"))
    n_groups = -(-len(X) // groups.GROUP_ROWS)
    assert got.stats_["groups_pairs"] < n_groups * (n_groups + 1) // 2 // 2
    np.testing.assert_array_equal(got.labels_, DBSCAN(eps=0.5, min_samples=4).fit(X).labels_)


def test_small_inputs_stay_in_memory(tmp_path):
    X = data(n=500)
    got = DBSCAN(eps=2.2, min_samples=6).fit(as_memmap(X, tmp_path / "x.npy"))
    assert "groups_pairs" not in got.stats_ and isinstance(got.components_, np.ndarray)


def test_core_rows_too_large_for_memory_are_read_when_asked(tmp_path, small_groups, monkeypatch):
    X = data(n=1500)
    monkeypatch.setattr(dbscan_module, "memory_budget", lambda limit: 64.0)
    got = DBSCAN(eps=2.2, min_samples=6).fit(as_memmap(X, tmp_path / "x.npy"))
    ref = DBSCAN(eps=2.2, min_samples=6).fit(X)
    assert isinstance(got.components_, groups.RowSelection)
    assert got.components_.shape == ref.components_.shape
    np.testing.assert_array_equal(got.components_[3:9], ref.components_[3:9])
    monkeypatch.setattr(dbscan_module, "STREAM_ROWS", 97)  # predict reads the core rows in many blocks
    Q = X[::3] - np.float32(0.2)
    np.testing.assert_array_equal(got.predict(Q), ref.predict(Q))


def test_not_enough_scratch_space_is_a_clear_error(tmp_path, monkeypatch):
    X = as_memmap(data(n=400), tmp_path / "x.npy")
    real = dbscan_module.shutil.disk_usage
    monkeypatch.setattr(dbscan_module.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(OSError, match="scratch_dir"):
        DBSCAN(eps=1.0, memory_limit=1000).fit(X)
    with pytest.raises(ValueError, match="not a folder"):
        DBSCAN(eps=1.0, memory_limit=1000, scratch_dir=tmp_path / "missing").fit(X)
    with pytest.raises(ValueError, match="backend='native'"):
        DBSCAN(eps=1.0, memory_limit=1000, backend="faiss").fit(X)


def test_forest_union_matches_connected_components():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(5)
    n = 2000
    forest = groups.ForestUnion(n)
    edges = []
    for _ in range(6):
        u, v = rng.integers(0, n, 300), rng.integers(0, n, 300)
        forest.union(u, v)
        edges.append((u, v))
    u = np.concatenate([e[0] for e in edges])
    v = np.concatenate([e[1] for e in edges])
    _, lab = connected_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)), directed=False)
    roots = forest.roots()
    lowest = {}
    for i in range(n):
        lowest.setdefault(lab[i], i)
    np.testing.assert_array_equal(roots, [lowest[lab[i]] for i in range(n)])


@pytest.mark.parametrize("kind", ["memmap", "shards"])
def test_streamed_auto_eps_equals_in_memory(tmp_path, small_groups, monkeypatch, kind):
    """eps="auto" on streamed input: the k-distance curve from the streamed exact kNN, so the
    same eps_ and labels as the in-memory fit."""
    X = data(n=1500)
    src = as_memmap(X, tmp_path / "x.npy") if kind == "memmap" else as_shards(X, tmp_path)
    ref = DBSCAN(eps="auto", min_samples=6).fit(X)
    monkeypatch.setattr(dbscan_module, "_streams", lambda X, limit: True)
    got = DBSCAN(eps="auto", min_samples=6, memory_limit=1 << 22, scratch_dir=tmp_path).fit(src)
    assert got.stats_["groups_pairs"] > 0  # it went through the groups
    assert got.eps_ == ref.eps_
    np.testing.assert_array_equal(got.labels_, ref.labels_)
