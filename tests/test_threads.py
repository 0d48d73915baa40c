"""Concurrent calls from several Python threads give the same results as sequential calls, and
the GIL is released during native work."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm")
def test_too_many_threads_raise_instead_of_ending_the_process():
    """Under an address-space limit, 1000 threads (8 MiB of stack each) cannot start: libgomp
    would print 'Thread creation failed' and end the process. Each call raises MemoryError
    naming n_threads instead, and the process goes on with the same results on 2 threads."""
    script = textwrap.dedent("""
        import resource
        import numpy as np
        import embedcluster as ec
        from embedcluster import _core

        X = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
        jobs = {
            "kmeans": lambda t: ec.KMeans(8, random_state=0, n_threads=t).fit(X).labels_,
            "knn": lambda t: ec.NearestNeighbors(n_neighbors=4, n_threads=t).fit(X).kneighbors()[1],
            "dbscan": lambda t: ec.DBSCAN(eps=4.0, n_threads=t).fit(X).labels_,
            "radius": lambda t: _core.radius_count(X, X, 20.0, n_threads=t),
        }
        ref = {name: job(2) for name, job in jobs.items()}
        vsize = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vsize + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
        for name, job in jobs.items():
            try:
                job(1000)
                print(name, "no error")
            except MemoryError as exc:
                print(name, "raised:", type(exc).__name__, exc)
            print(name, "same after:", np.array_equal(job(2), ref[name]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Thread creation failed" not in r.stderr, out
    for name in ("kmeans", "knn", "dbscan", "radius"):
        assert f"{name} raised: ThreadStartError n_threads=1000: only" in r.stdout, out
        assert "use a smaller n_threads" in r.stdout, out
        assert f"{name} same after: True" in r.stdout, out
