"""A program that exits while a daemon thread is inside native work exits cleanly: its own exit
status, no abort ("FATAL: exception not rethrown", "terminate called ..."), whatever the
operation. Each case runs in its own bounded subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX threads and exit codes")

SCRIPT = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import embedcluster as ec
    from embedcluster import _core

    what, ending, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if wait >= 0:
        _core._set_exit_wait(wait)  # 0: finalization starts with the native work still running
    X = np.random.default_rng(0).standard_normal((60000, 128)).astype(np.float32)
    jobs = {
        "knn": lambda: ec.NearestNeighbors(n_neighbors=10).fit(X).kneighbors(X[:40000]),
        "knn_self_join": lambda: ec.NearestNeighbors(n_neighbors=10).fit(X).kneighbors(),
        "kmeans": lambda: ec.KMeans(256, init="random", max_iter=300, tol=0, random_state=0).fit(X),
        "dbscan": lambda: ec.DBSCAN(eps=12.0, min_samples=5).fit(X),
        "radius": lambda: ec.NearestNeighbors(radius=12.5).fit(X).radius_neighbors(X[:40000]),
    }
    t = threading.Thread(target=jobs[what], daemon=True)
    t.start()
    time.sleep(0.3)
    print("in flight at exit:", t.is_alive(), flush=True)
    if ending == "raise":
        raise RuntimeError("the main thread fails while native work runs")
""")

WHATS = ["knn", "knn_self_join", "kmeans", "dbscan", "radius"]


def _run(what: str, ending: str, wait: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", SCRIPT, what, ending, str(wait)], capture_output=True,
                          text=True, timeout=300, env=env)


def _check_clean(r: subprocess.CompletedProcess, expected_rc: int) -> None:
    out = r.stdout + r.stderr
    assert "in flight at exit: True" in r.stdout, out  # the case really had native work running
    assert r.returncode == expected_rc, out
    for word in ("FATAL", "terminate called", "Aborted", "Segmentation", "Exception in thread"):
        assert word not in r.stderr, out  # the stopped worker ends quietly (SystemExit)


@pytest.mark.parametrize("what", WHATS)
def test_exit_with_native_work_in_flight(what):
    _check_clean(_run(what, "return", -1), 0)


@pytest.mark.parametrize("what", WHATS)
def test_exit_without_waiting_for_native_work(what):
    """The atexit hook's wait is bounded: with no wait at all, finalization begins while the
    work runs; the thread that comes back later must not abort the process."""
    _check_clean(_run(what, "return", 0.0), 0)


@pytest.mark.parametrize("what", ["knn", "kmeans"])
def test_main_thread_raises_with_native_work_in_flight(what):
    r = _run(what, "raise", -1)
    _check_clean(r, 1)
    assert "RuntimeError: the main thread fails" in r.stderr
