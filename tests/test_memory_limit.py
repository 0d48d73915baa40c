"""memory_limit: a call that would need more working memory than allowed raises MemoryError
naming the size, before allocating; under the limit, results do not change."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import embedcluster as ec
from embedcluster import _core

from conftest import brute_within, gaussian_mixture, pair_values

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
    "kmeans_init": lambda lim: _core.kmeans_init(X, 20, memory_limit=lim),
    "kmeans_assign": lambda lim: _core.kmeans_assign(X[:20], X, memory_limit=lim),
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


def test_estimator_outputs_are_bounded_too():
    """predict / score (native assignment), transform (an n x k matrix built in numpy),
    kneighbors_graph and radius_neighbors' per-query objects are checked against memory_limit
    before they allocate; with room, the results are those without a limit."""
    km = ec.KMeans(20, random_state=0).fit(X)
    free = (km.predict(X), km.transform(X))
    km.set_params(memory_limit=TINY)
    for call in (lambda: km.predict(X), lambda: km.score(X), lambda: km.transform(X)):
        with pytest.raises(MemoryError, match="needs about"):
            call()
    km.set_params(memory_limit=64 << 20)
    np.testing.assert_array_equal(km.predict(X), free[0])
    np.testing.assert_array_equal(km.transform(X), free[1])
    nn = ec.NearestNeighbors(n_neighbors=3).fit(X)
    graph = nn.kneighbors_graph().toarray()
    nn.set_params(memory_limit=len(X) * 3 * 20)  # the kNN outputs fit, the graph beside them not
    with pytest.raises(MemoryError, match="kneighbors_graph"):
        nn.kneighbors_graph()
    nn.set_params(memory_limit=len(X) * 2000)
    with pytest.raises(MemoryError, match="radius_neighbors"):
        nn.radius_neighbors(np.repeat(X, 20, axis=0), radius=0.5)
    nn.set_params(memory_limit=64 << 20)
    np.testing.assert_array_equal(nn.kneighbors_graph().toarray(), graph)


def test_impossible_request_fails_before_allocating():
    """Outputs of 2e5 x 1.5e5 neighbours would take ~360 GB: refused under the default limit."""
    db = np.zeros((200_000, 4), np.float32)
    db[:, 0] = np.arange(200_000, dtype=np.float32)
    with pytest.raises(MemoryError, match=r"needs about \d+ MiB"):
        _core.knn_search(db, db, 150_000)


BAD_LIMITS = [0.5, 1e-9, 0.999, -1, -0.5, -2**40, float("nan"), float("inf"), -float("inf"), True, False,
              np.bool_(True), "1GB", "0", [1 << 30], np.float64("nan"), 10 ** 400]


@pytest.mark.parametrize("bad", BAD_LIMITS, ids=lambda v: repr(v)[:20])
def test_bad_memory_limit_is_rejected(bad):
    """Only exactly 0 means no limit: a fraction of a byte is an error, not 'no limit'."""
    shown = re.escape(f"memory_limit={bad!r}")
    for call in (lambda: _core.knn_search(X, X, 2, memory_limit=bad),
                 lambda: _core.radius_search(X, X, 1.0, memory_limit=bad),
                 lambda: _core.radius_count(X, X, 1.0, memory_limit=bad),
                 lambda: _core.kmeans_fit(X, 3, memory_limit=bad),
                 lambda: _core.dbscan_fit(X, 1.5, memory_limit=bad)):
        with pytest.raises(ValueError, match=shown):
            call()
    for est in (ec.KMeans(3, memory_limit=bad), ec.DBSCAN(1.5, memory_limit=bad),
                ec.NearestNeighbors(n_neighbors=2, memory_limit=bad)):
        with pytest.raises(ValueError, match=shown):
            est.fit(X)


# Whether a limit is accepted does not depend on the size of the search: a third of X.
X_SMALL = X[:2000]


@pytest.fixture(scope="module")
def unlimited_knn3():
    """The reference for every accepted limit: the same search without a limit (computed once)."""
    return _core.knn_search(X_SMALL, X_SMALL, 3, memory_limit=0)


@pytest.mark.parametrize("good", [0, 0.0, 1 << 40, float(1 << 40), np.int64(1 << 40), np.float32(2.0 ** 40),
                                  np.uint64(1 << 40)])
def test_memory_limit_accepts_numbers_of_bytes(good, unlimited_knn3):
    ref = unlimited_knn3
    got = _core.knn_search(X_SMALL, X_SMALL, 3, memory_limit=good)
    np.testing.assert_array_equal(got[1], ref[1])
    nn = ec.NearestNeighbors(n_neighbors=3, memory_limit=good).fit(X_SMALL)
    np.testing.assert_array_equal(nn.kneighbors(X_SMALL)[1], ref[1])


def test_one_byte_is_a_limit_not_no_limit():
    with pytest.raises(MemoryError, match="needs about"):
        _core.knn_search(X, X, 2, memory_limit=1)
    with pytest.raises(MemoryError, match="needs about"):
        ec.KMeans(3, memory_limit=1.0).fit(X)


def test_dbscan_without_projection_table_gives_the_same_result():
    """A limit that leaves out the optional projection bounds and row copy changes the work, not
    the labels."""
    full = _core.dbscan_fit(X, 1.5, min_samples=5, memory_limit=0)
    with pytest.raises(MemoryError) as info:
        _core.dbscan_fit(X, 1.5, memory_limit=TINY)
    base = _needed_bytes(info.value)
    tight = _core.dbscan_fit(X, 1.5, min_samples=5, memory_limit=base)  # room for the base only
    assert full.projection_bounds and not tight.projection_bounds
    # the bf16 copy of the rows, where the kernels use bf16 words, is optional too
    d, report = X.shape[1], _core.kernel_choice(X.shape[1])
    chosen = [report["forced"]] if report["forced"] else [
        f["chosen"] for f in report["families"]
        if f["family"] == "dbscan" and max(4, (f["d"] - 1).bit_length()) == max(4, (d - 1).bit_length())]
    assert full.rows_copy == (chosen[0] == "avx512bf16") and not tight.rows_copy
    np.testing.assert_array_equal(full.labels, tight.labels)
    np.testing.assert_array_equal(full.counts, tight.counts)
    ref = ec.DBSCAN(1.5, min_samples=5).fit(X)
    np.testing.assert_array_equal(ref.labels_, full.labels)


def test_dbscan_tile_pairs_are_charged_against_the_limit():
    """With an eps that prunes nothing, the tile pairs (T^2 / 2 lists) outgrow the up-front
    estimate: the fit fails with MemoryLimitError naming eps instead of exceeding the limit."""
    Y = np.random.default_rng(0).standard_normal((60000, 4)).astype(np.float32)
    with pytest.raises(MemoryError) as info:
        _core.dbscan_fit(Y, 100.0, memory_limit=TINY)
    with pytest.raises(_core.MemoryLimitError, match=r"DBSCAN with eps=100 .*tile pairs.*smaller eps"):
        _core.dbscan_fit(Y, 100.0, memory_limit=_needed_bytes(info.value))


def test_knn_self_join_under_a_tight_limit_gives_the_same_result():
    """With room for the one-sided scan only, the self-join still runs (without its per-row
    candidate lists) and returns the same neighbours."""
    with pytest.raises(MemoryError) as info:
        _core.knn_search(X, X, 5, "l2", True, memory_limit=TINY)
    tight = _core.knn_search(X, X, 5, "l2", True, memory_limit=_needed_bytes(info.value))
    free = _core.knn_search(X, X, 5, "l2", True, memory_limit=0)
    np.testing.assert_array_equal(tight[1], free[1])
    np.testing.assert_array_equal(tight[0], free[0])


# ---------------------------------------------------------------- radius results within the limit
def test_radius_results_are_charged_against_the_limit():
    """Radius results are data-dependent: a limit with room for the scan but not for the results
    fails with MemoryLimitError naming the radius; with room for them, the results equal an
    exact brute force and those without a limit."""
    rng = np.random.default_rng(7)
    db = rng.standard_normal((700, 12)).astype(np.float32)
    q = rng.standard_normal((300, 12)).astype(np.float32)
    radius = 22.0  # squared distance: about half of all pairs
    within = brute_within(db, q, radius, "l2")
    pairs = int(within.sum())
    assert 0.2 * within.size < pairs < 0.8 * within.size
    with pytest.raises(MemoryError) as info:
        _core.radius_search(db, q, radius, memory_limit=TINY // 10)
    base = _needed_bytes(info.value)  # the scan alone (results are not known in advance)
    with pytest.raises(_core.MemoryLimitError, match=r"radius=22 .*smaller radius.*radius_count.*memory_limit"):
        _core.radius_search(db, q, radius, memory_limit=base + 4 * pairs)
    free = _core.radius_search(db, q, radius, memory_limit=0)
    roomy = _core.radius_search(db, q, radius, memory_limit=base + 64 * pairs + 64 * len(q))
    for a, b in zip(free, roomy):
        np.testing.assert_array_equal(a, b)
    ptr, ind, dist = free
    rows = np.repeat(np.arange(len(q)), np.diff(ptr))
    expect_rows, expect_cols = np.nonzero(within)  # row-major: ascending index per query
    np.testing.assert_array_equal(rows, expect_rows)
    np.testing.assert_array_equal(ind, expect_cols)
    np.testing.assert_allclose(dist, pair_values(db, q, rows, ind, "l2"), rtol=1e-6)
    # radius_count needs no result lists: it runs within the base
    np.testing.assert_array_equal(_core.radius_count(db, q, radius, memory_limit=base), within.sum(1))


def _run_limited(script: str, **env_extra: str) -> subprocess.CompletedProcess:
    """Runs `script` in a fresh interpreter (bounded); the script sets its own RLIMIT_AS."""
    env = dict(os.environ, OMP_NUM_THREADS="2", **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, env=env)


LIMITED_PRELUDE = """
    import resource
    import numpy as np
    import embedcluster as ec
    from embedcluster import _core

    def vsize():
        return int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()

    def limit_address_space(room):
        _core.knn_search(np.ones((500, 8), np.float32), np.ones((50, 8), np.float32), 3)  # threads, arenas
        resource.setrlimit(resource.RLIMIT_AS, (vsize() + room, resource.getrlimit(resource.RLIMIT_AS)[1]))

    def print_limit_errors(*calls):
        for call in calls:
            try:
                call()
            except _core.MemoryLimitError as exc:
                print("limit:", exc)
            else:
                print("no error")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm")
def test_radius_search_stays_within_the_limit_under_rlimit_as():
    """The address space ends 96 MiB above the 200 MiB limit, so results that grew past the
    limit would fail to allocate (or crash): instead the search raises MemoryLimitError, and
    the process goes on working with the same results as before."""
    r = _run_limited(LIMITED_PRELUDE + """
    X = np.random.default_rng(0).standard_normal((20000, 16)).astype(np.float32)
    small = _core.radius_search(X[:2000], X[:300], 20.0)
    limit = 200 << 20
    limit_address_space(limit + (96 << 20))
    print_limit_errors(lambda: _core.radius_search(X, X, 1e9, memory_limit=limit),  # 4e8 pairs: 4.8 GB as CSR
                       lambda: ec.NearestNeighbors(radius=1e4, memory_limit=limit).fit(X).radius_neighbors())
    again = _core.radius_search(X[:2000], X[:300], 20.0, memory_limit=limit)
    print("same:", all(np.array_equal(a, b) for a, b in zip(small, again)))
    """)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert r.stdout.count("limit: radius search with radius=") == 2, out
    assert "memory_limit = 200 MiB" in r.stdout, out
    assert "same: True" in r.stdout, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm")
def test_default_limit_honours_rlimit_as():
    """With 1 GiB of address space left, the default limit falls below it, and a request
    larger than the default fails with MemoryLimitError (up front where its size is known in
    advance), not in an allocation."""
    r = _run_limited(LIMITED_PRELUDE + """
    before = _core.default_memory_limit()
    limit_address_space(1 << 30)
    room = resource.getrlimit(resource.RLIMIT_AS)[0] - vsize()
    default = _core.default_memory_limit()
    print("default below room:", 0 < default < room, default < before, default, room)
    X = np.random.default_rng(0).standard_normal((20000, 8)).astype(np.float32)
    print_limit_errors(lambda: _core.knn_search(X, X, 5000),  # outputs alone: 1.2 GB
                       lambda: ec.NearestNeighbors(n_neighbors=5000).fit(X).kneighbors(),
                       lambda: _core.radius_search(X, X, 1e9))  # 4e8 pairs: fails as its results grow
    print("works:", _core.knn_search(X[:1000], X[:1000], 3)[1].shape)
    """)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "default below room: True True" in r.stdout, out
    assert r.stdout.count("limit: ") == 3 and "needs about" in r.stdout, out
    assert "works: (1000, 3)" in r.stdout, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm")
def test_allocation_failures_anywhere_raise_memory_error():
    """With no memory_limit, an allocation that fails (here: the address space runs out, at
    a sweep of points in every operation, inside parallel regions and out) raises MemoryError;
    the process never aborts and goes on working."""
    r = _run_limited(LIMITED_PRELUDE + """
    X = np.random.default_rng(1).standard_normal((30000, 64)).astype(np.float32)
    B = np.random.default_rng(2).standard_normal((150000, 64)).astype(np.float32)
    ops = {  # radius last: its many small freed lists leave heap space that later calls would reuse
        "kmeans": lambda: _core.kmeans_fit(B, 300, max_iter=2, init="k-means||", memory_limit=0),
        "kmeans_assign": lambda: _core.kmeans_assign(X[:300], B, memory_limit=0),
        "dbscan": lambda: _core.dbscan_fit(X, 9.0, memory_limit=0),
        "knn": lambda: _core.knn_search(X, X[:5000], 50, self_join=False, memory_limit=0),
        "knn_self_join": lambda: _core.knn_search(X, X, 20, memory_limit=0),
        "radius": lambda: _core.radius_search(X, X[:3000], 100.0, memory_limit=0),
    }
    limit_address_space(1 << 40)  # warm-up of threads and arenas at this thread count
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    outcomes = {}
    for name, op in ops.items():
        for room_mib in (1, 3, 6, 10, 16, 24, 40, 64, 100, 160):
            resource.setrlimit(resource.RLIMIT_AS, (vsize() + (room_mib << 20), hard))
            try:
                op()
                outcome = "ok"
            except MemoryError:
                outcome = "MemoryError"
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
            outcomes.setdefault(name, set()).add(outcome)
    print("outcomes:", sorted((k, sorted(v)) for k, v in outcomes.items()))
    print("works:", _core.knn_search(X[:1000], X[:1000], 3)[1].shape)
    """, MALLOC_ARENA_MAX="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_TOP_PAD_="0")
    # (glibc: one arena, and blocks above 64 KiB mapped and unmapped one by one, so that each
    # allocation needs fresh address space instead of reusing what an earlier one freed)
    out = r.stdout + r.stderr
    print(out)
    assert r.returncode == 0, out
    assert "terminate" not in r.stderr and "FATAL" not in r.stderr, out
    assert "works: (1000, 3)" in r.stdout, out
    for name in ("knn", "knn_self_join", "radius", "kmeans", "kmeans_assign", "dbscan"):
        assert f"('{name}', ['MemoryError'" in r.stdout, out  # the sweep reached failing allocations


def _default_limit_in_child(fake_root) -> subprocess.CompletedProcess:
    """A fresh process's _core.default_memory_limit() under the faked cgroup files in fake_root.
    The child loads the engine's extension module by its path, without the package's Python
    layer (scikit-learn, scipy), which the limit does not depend on: a start in a fraction of a
    second instead of seconds."""
    script = ("import importlib.util\n"
              f"spec = importlib.util.spec_from_file_location('embedcluster._core', {_core.__file__!r})\n"
              "core = importlib.util.module_from_spec(spec)\n"
              "spec.loader.exec_module(core)\n"
              "print(core.default_memory_limit())")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, EMBEDCLUSTER_TEST_PROC_CGROUP=str(fake_root / "self_cgroup"),
                                   EMBEDCLUSTER_TEST_CGROUP_ROOT=str(fake_root)))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_default_limit_honours_the_memory_cgroup(tmp_path, version):
    """The default limit is at most 3/4 of what the process's memory cgroup (or an ancestor)
    still allows. The cgroup files are faked (real limits need privileges) through two
    test-only environment variables the core reads."""
    used, limit = 300 << 20, 700 << 20  # 400 MiB of room in the process's own cgroup
    if version == "v2":
        proc = "0::/jobs/mine\n"
        own, parent = tmp_path / "jobs" / "mine", tmp_path / "jobs"
        files = ("memory.max", "memory.current")
    else:
        proc = "12:pids:/x\n4:memory:/jobs/mine\n1:cpu,cpuacct:/x\n"
        own, parent = tmp_path / "memory" / "jobs" / "mine", tmp_path / "memory" / "jobs"
        files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
    own.mkdir(parents=True)
    (own / files[0]).write_text(f"{limit}\n")
    (own / files[1]).write_text(f"{used}\n")
    (parent / files[0]).write_text("max\n" if version == "v2" else "9223372036854771712\n")  # no limit
    (parent / files[1]).write_text(f"{used}\n")
    (tmp_path / "self_cgroup").write_text(proc)
    r = _default_limit_in_child(tmp_path)
    assert r.returncode == 0, r.stderr
    got = float(r.stdout)
    assert 0 < got <= 0.75 * (limit - used)
    avail = int(re.search(r"MemAvailable:\s+(\d+) kB", open("/proc/meminfo").read()).group(1)) * 1024
    if avail > 2 * (limit - used):  # the cgroup is the tightest bound here: exactly its share
        assert got == 0.75 * (limit - used)
    # a tighter ancestor wins
    (parent / files[0]).write_text(f"{used + (100 << 20)}\n")
    r = _default_limit_in_child(tmp_path)
    assert 0 < float(r.stdout) <= 0.75 * (100 << 20), r.stdout + r.stderr
