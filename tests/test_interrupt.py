"""Ctrl-C (SIGINT) during long native work raises KeyboardInterrupt, leaves the estimator
unfitted and the process usable. (Latency is measured in benchmarks, not asserted here.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import embedcluster as ec
from sklearn.exceptions import NotFittedError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")


def _interrupt_after(seconds: float) -> threading.Timer:
    t = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    t.start()
    return t


@pytest.fixture(autouse=True)
def sigint_raises_keyboard_interrupt():
    """Python's own Ctrl-C handler, whatever the test runner inherited: a shell that starts a
    job in the background (`cmd &`) sets SIGINT to ignored, and Python keeps that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def big():
    # Large enough that every operation below runs for several seconds on two cores.
    return np.random.default_rng(0).standard_normal((120_000, 256)).astype(np.float32)


@pytest.mark.parametrize("what", ["kmeans", "knn", "dbscan"])
def test_sigint_stops_native_work(big, what):
    est = {"kmeans": ec.KMeans(512, init="random", max_iter=300, tol=0, random_state=0),
           "knn": ec.NearestNeighbors(n_neighbors=10),
           "dbscan": ec.DBSCAN(eps=30.0, min_samples=5)}[what]
    timer = _interrupt_after(0.5)
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            if what == "knn":
                est.fit(big).kneighbors()
            else:
                est.fit(big)
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - start
    print(f"{what}: interrupted after {elapsed:.2f} s (signal at 0.5 s)")
    if what != "knn":
        with pytest.raises(NotFittedError):
            est.predict(big[:3])
    # The process is usable: the same kind of work runs to completion afterwards.
    small = big[:2000]
    if what == "knn":
        assert ec.NearestNeighbors(n_neighbors=3).fit(small).kneighbors()[1].shape == (2000, 3)
    else:
        assert len(type(est)(**est.get_params()).set_params(**({"n_clusters": 8} if what == "kmeans" else {}))
                   .fit(small).labels_) == 2000
