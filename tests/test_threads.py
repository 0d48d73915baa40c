"""Concurrent calls from several Python threads give the same results as sequential calls, and
the GIL is released during native work."""

from __future__ import annotations

import threading

import numpy as np

import embedcluster as ec
from embedcluster import _core


def _jobs(X):
    return {
        "kmeans": lambda: ec.KMeans(12, random_state=1).fit(X).cluster_centers_,
        "dbscan": lambda: ec.DBSCAN(eps=9.0, min_samples=5).fit(X).labels_,
        "knn": lambda: ec.NearestNeighbors(n_neighbors=7).fit(X).kneighbors()[1],
        "radius": lambda: _core.radius_count(X, X[:500], 80.0),
    }


def test_concurrent_calls_equal_sequential_calls():
    X = np.random.default_rng(3).standard_normal((6000, 48)).astype(np.float32)
    jobs = _jobs(X)
    sequential = {name: fn() for name, fn in jobs.items()}
    results, errors = {}, []

    def run(name):
        try:
            results[name] = jobs[name]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((name, exc))

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, ref in sequential.items():
        np.testing.assert_array_equal(results[name], ref, err_msg=name)


def test_gil_is_released_during_native_work():
    X = np.random.default_rng(4).standard_normal((30000, 128)).astype(np.float32)
    ticks = 0
    done = threading.Event()

    def worker():
        ec.NearestNeighbors(n_neighbors=5, n_threads=1).fit(X).kneighbors()
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    while not done.is_set():  # pure-Python work: runs only if the native call let go of the GIL
        ticks += 1
        done.wait(0.001)
    t.join()
    assert ticks > 20
