"""memory_limit: a call that would need more working memory than allowed raises MemoryError
naming the size, before allocating; under the limit, results do not change."""

from __future__ import annotations

import re

import numpy as np
import pytest

import embedcluster as ec
from embedcluster import _core

from conftest import gaussian_mixture

X, _ = gaussian_mixture(6000, 16, 12, spread=0.5, seed=4)
TINY = 100_000  # bytes


def _needed_mib(exc: BaseException) -> int:
    m = re.search(r"needs about (\d+) MiB \((\d+) bytes\)", str(exc))
    assert m, str(exc)
    return int(m.group(1))


def _needed_bytes(exc: BaseException) -> int:
    return int(re.search(r"\((\d+) bytes\)", str(exc)).group(1))


CALLS = {
    "knn_search": lambda lim: _core.knn_search(X, X, 5, memory_limit=lim),
    "radius_search": lambda lim: _core.radius_search(X, X, 1.0, memory_limit=lim),
    "radius_count": lambda lim: _core.radius_count(X, X, 1.0, memory_limit=lim),
    "kmeans_fit": lambda lim: _core.kmeans_fit(X, 20, memory_limit=lim),
    "kmeans_fit_parallel": lambda lim: _core.kmeans_fit(X, 20, init="k-means||", memory_limit=lim),
    "dbscan_fit": lambda lim: _core.dbscan_fit(X, 1.5, memory_limit=lim),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_core_raises_memory_error_with_the_size(name):
    with pytest.raises(MemoryError, match="needs about .* MiB .* memory_limit") as info:
        CALLS[name](TINY)
    assert isinstance(info.value, _core.MemoryLimitError)
    needed = _needed_mib(info.value)
    # Just above the stated need, the call runs; 0 means no limit.
    CALLS[name](int((needed + 1) * 2**20))
    CALLS[name](0)


def test_estimators_raise_memory_error():
    for est in (ec.KMeans(20, memory_limit=TINY), ec.DBSCAN(1.5, memory_limit=TINY)):
        with pytest.raises(MemoryError, match="needs about"):
            est.fit(X)
    nn = ec.NearestNeighbors(n_neighbors=3, memory_limit=TINY).fit(X)  # fit stores X only
    with pytest.raises(MemoryError, match="needs about"):
        nn.kneighbors()
    with pytest.raises(MemoryError, match="needs about"):
        nn.radius_neighbors(radius=1.0)


def test_impossible_request_fails_before_allocating():
    """Outputs of 2e5 x 1.5e5 neighbours would take ~360 GB: refused under the default limit."""
    db = np.zeros((200_000, 4), np.float32)
    db[:, 0] = np.arange(200_000, dtype=np.float32)
    with pytest.raises(MemoryError, match=r"needs about \d+ MiB"):
        _core.knn_search(db, db, 150_000)


@pytest.mark.parametrize("bad", [-1, "1GB", True, float("nan")])
def test_bad_memory_limit_is_rejected(bad):
    with pytest.raises((ValueError, TypeError), match="memory_limit"):
        _core.knn_search(X, X, 2, memory_limit=bad)
    with pytest.raises(ValueError, match="memory_limit"):
        ec.KMeans(3, memory_limit=bad).fit(X)


def test_dbscan_without_projection_table_gives_the_same_result():
    """A limit that leaves out the optional projection bounds and row copy changes the work, not
    the labels."""
    full = _core.dbscan_fit(X, 1.5, min_samples=5, memory_limit=0)
    with pytest.raises(MemoryError) as info:
        _core.dbscan_fit(X, 1.5, memory_limit=TINY)
    base = _needed_bytes(info.value)
    tight = _core.dbscan_fit(X, 1.5, min_samples=5, memory_limit=base)  # room for the base only
    assert full["projection_bounds"] and not tight["projection_bounds"]
    # the bf16 copy of the rows, where the kernels use bf16 words, is optional too
    assert full["rows_copy"] == (_core.active_kernels() == "avx512bf16") and not tight["rows_copy"]
    np.testing.assert_array_equal(full["labels"], tight["labels"])
    np.testing.assert_array_equal(full["counts"], tight["counts"])
    ref = ec.DBSCAN(1.5, min_samples=5).fit(X)
    np.testing.assert_array_equal(ref.labels_, full["labels"])


def test_knn_self_join_under_a_tight_limit_gives_the_same_result():
    """With room for the one-sided scan only, the self-join still runs (without its per-row
    candidate lists) and returns the same neighbours."""
    with pytest.raises(MemoryError) as info:
        _core.knn_search(X, X, 5, "l2", True, memory_limit=TINY)
    tight = _core.knn_search(X, X, 5, "l2", True, memory_limit=_needed_bytes(info.value))
    free = _core.knn_search(X, X, 5, "l2", True, memory_limit=0)
    np.testing.assert_array_equal(tight[1], free[1])
    np.testing.assert_array_equal(tight[0], free[0])
