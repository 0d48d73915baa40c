"""Shared fixtures and independent oracles: brute force whose every decision is exact.

Why not plain float64 numpy: a BLAS product ``a @ b.T`` rounds a row's dot products by the row's
position in the blocked kernel, and the kernel depends on the CPU (and on OPENBLAS_CORETYPE).
Two identical rows can get values an ulp apart, so an oracle that ranks or thresholds BLAS
values breaks exact ties one way on one machine and the other way on the next. Here BLAS only
narrows: its error is bounded (Higham, eq. 3.5: |fl(a.b) - a.b| <= gamma_d sum|a_k b_k| in any
summation order, with or without FMA), and every decision that the bound leaves open (the order
of two candidates, the k-th neighbour, a radius or eps, an argmin) is taken in exact integer
arithmetic: every float is an integer times a power of two. Exact ties go to the lower index.
Returned values are correctly rounded from the exact ones (L2, inner product; math.fsum of the
products, which are exact in float64 for float32 inputs) or computed from them in a fixed
order (cosine), so a value depends on its two rows only, never on their positions.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from operator import mul

import numpy as np
import pytest

from embedcluster import _core

METRICS = ("l2", "ip", "cosine")

# ----------------------------------------------------------------------------- speed tiers
# The default run (pyproject's addopts: -m "not slow") is the fast tier; `-m slow` runs the rest.
# A test file marks its own slow tests with @pytest.mark.slow. The tests below live in files
# whose owners keep them as they are; they join the slow tier here, by node id (parameters
# included or not), each with the reason.
SLOW_TESTS = {
    # Seven CLI processes in a row (embed, cluster, evaluate, probe, run, predict), each starting
    # Python with torch: the whole transfer chain end to end. The CLI contract (errors, help,
    # config checks) stays in the fast tier.
    "tests/test_cli.py::test_cli_chain_embed_cluster_evaluate_probe_run_predict":
        "the whole CLI chain in subprocesses",
    # Embeds the 1797 digits with EfficientNet-Lite0, fits two pipelines with probes and writes
    # the HTML report: the full demo.
    "tests/test_cli.py::test_demo_transfer_story": "the full demo in a subprocess",
    # A full `embedcluster run` from a config file (embedding, clustering, probe, save).
    "tests/test_cli.py::test_cli_run_from_config_file": "a full run in a subprocess",
    # Fault injection: the address space runs out at a sweep of points in every operation,
    # each a native call on 30k-150k rows in a limited subprocess.
    "tests/test_memory_limit.py::test_allocation_failures_anywhere_raise_memory_error":
        "a sweep of injected allocation failures",
}


@pytest.hookimpl(tryfirst=True)  # before the -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in SLOW_TESTS or item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module's in-process training (probes, small encoders).
    Their tensors are tiny: with two threads on a 2-core machine, thread hand-offs, and torch's
    threads contending with the engine's OpenMP threads, take most of the time (a pipeline fit
    of the digits: ~10x slower under load). No-op without torch; the count is restored."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The CPU runs the `amx` kernel set when named (AMX tiles with bf16, and AVX-512 BF16).
HAS_AMX = {"amx-tile", "amx-bf16", "avx512bf16"} <= set(_core.build_info()["cpu_features"])


@pytest.fixture(params=_core.build_info()["kernels_available"])
def kernel_set(request):
    """Runs a test once per kernel set this CPU supports (generic, avx2, avx512)."""
    _core.select_kernels(request.param)
    yield request.param
    _core.select_kernels("auto")


# ----------------------------------------------------------------------------- fast, bounded
def _gamma(m: int) -> float:
    u = 2.0 ** -53
    return m * u / (1.0 - m * u)


def approx_values(db: np.ndarray, q: np.ndarray, metric: str, perturb=None):
    """float64 'smaller is closer' values by BLAS (squared L2, minus dot product, 1 - cos) and
    err[i], a bound on |value - exact value| over row i. For narrowing and for choosing
    thresholds only: the last ulps depend on the BLAS kernel and on row positions.

    perturb(dot) may alter the BLAS dot products within their error bound (tests of the oracle).
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} should be one of {METRICS}")
    a = np.asarray(q, np.float64)
    b = np.asarray(db, np.float64)
    d = a.shape[1]
    g = 4.0 * _gamma(d + 4)  # fourfold margin over the products, sums, norms and the epilogue
    na2 = (a * a).sum(1)
    nb2 = (b * b).sum(1)
    dot = a @ b.T
    if perturb is not None:
        dot = perturb(dot)
    bmax = float(nb2.max()) if len(nb2) else 0.0
    if metric == "ip":
        return -dot, g * np.sqrt(na2) * math.sqrt(bmax) + 1e-300
    if metric == "l2":
        v = na2[:, None] + nb2[None, :] - 2.0 * dot
        return v, g * (na2 + bmax) + 1e-300
    if (na2 == 0).any() or (nb2 == 0).any():
        raise ValueError("cosine oracle: a row of zeros has no direction")
    v = 1.0 - dot / np.sqrt(na2)[:, None] / np.sqrt(nb2)[None, :]
    return v, np.full(len(a), g)


# ----------------------------------------------------------------------------- exact
class _Exact:
    """Exact keys and limit tests for pairs (query row i, database row j).

    Every finite value of both arrays times 2**shift is an integer, so sums of products are
    exact Python integers (all scaled by the same power of two, which orders do not see)."""

    def __init__(self, db: np.ndarray, q: np.ndarray, metric: str):
        self.metric = metric
        self.db, self.q = np.asarray(db), np.asarray(q)
        shift = 0
        for arr in (self.db, self.q):
            nz = np.asarray(arr, np.float64)
            nz = nz[nz != 0]
            if nz.size:
                shift = max(shift, int(53 - np.frexp(nz)[1].min()))
        self.shift = shift
        self.scale2 = 1 << (2 * shift)  # products carry 2**(2 shift)
        self._rows: dict = {}
        self._sq: dict = {}

    def _ints(self, which: str, i: int) -> list:
        key = (which, i)
        r = self._rows.get(key)
        if r is None:
            row = (self.q if which == "q" else self.db)[i]
            s = self.shift
            r = []
            for x in np.asarray(row, np.float64).tolist():
                num, den = x.as_integer_ratio()
                r.append((num << s) // den)
            self._rows[key] = r
        return r

    def _sqnorm(self, which: str, i: int) -> int:
        key = (which, i)
        v = self._sq.get(key)
        if v is None:
            r = self._ints(which, i)
            v = self._sq[key] = sum(map(mul, r, r))
        return v

    def _dot(self, i: int, j: int) -> int:
        return sum(map(mul, self._ints("q", i), self._ints("db", j)))

    def key(self, i: int, j: int):
        """Exact value in an order-preserving form: smaller is closer, equal is a real tie."""
        if self.metric == "l2":
            x, y = self._ints("q", i), self._ints("db", j)
            return sum((s - t) * (s - t) for s, t in zip(x, y))
        s = self._dot(i, j)
        if self.metric == "ip":
            return -s
        # 1 - s / sqrt(|x|^2 |y|^2) for fixed x orders as -sign(s) s^2 / |y|^2
        ny = self._sqnorm("db", j)
        if ny == 0 or self._sqnorm("q", i) == 0:
            raise ValueError("cosine oracle: a row of zeros has no direction")
        return Fraction(-s * abs(s), ny)

    def within(self, i: int, j: int, limit: float) -> bool:
        """Exact value <= limit (limit taken as the exact binary number it is)."""
        lim = Fraction(limit)
        if self.metric == "l2":
            return self.key(i, j) <= lim * self.scale2
        s = self._dot(i, j)
        if self.metric == "ip":
            return -s <= lim * self.scale2
        nx, ny = self._sqnorm("q", i), self._sqnorm("db", j)
        c = 1 - lim  # 1 - cos <= limit  <=>  s / sqrt(nx ny) >= c
        if c <= 0:
            return s >= 0 or s * s <= c * c * nx * ny
        return s > 0 and s * s >= c * c * nx * ny

    def value(self, i: int, j: int) -> float:
        """Correctly rounded exact value (L2, ip); cosine from correctly rounded sums."""
        if self.metric == "l2":
            return self.key(i, j) / self.scale2
        s = self._dot(i, j) / self.scale2
        if self.metric == "ip":
            return -s
        nx, ny = self._sqnorm("q", i) / self.scale2, self._sqnorm("db", j) / self.scale2
        return 1.0 - s / (math.sqrt(nx) * math.sqrt(ny))


def pair_values(db: np.ndarray, q: np.ndarray, rows, cols, metric: str) -> np.ndarray:
    """Values of the pairs (q[rows[t]], db[cols[t]]): correctly rounded from the exact value
    (L2, inner product) or from correctly rounded sums in a fixed order (cosine); they depend
    on the two rows only. float32 inputs take math.fsum of exact float64 products."""
    rows, cols = np.asarray(rows, np.int64).ravel(), np.asarray(cols, np.int64).ravel()
    out = np.empty(len(rows))
    if len(rows) == 0:
        return out
    if np.asarray(db).dtype != np.float32 or np.asarray(q).dtype != np.float32:
        ex = _Exact(db, q, metric)
        return np.array([ex.value(int(i), int(j)) for i, j in zip(rows, cols)])
    fsum = math.fsum
    step = max(1, 2_000_000 // max(1, q.shape[1]))
    for lo in range(0, len(rows), step):
        a = np.asarray(q, np.float64)[rows[lo:lo + step]]
        b = np.asarray(db, np.float64)[cols[lo:lo + step]]
        p = a * b  # exact: two float32 significands need 48 bits
        if metric == "l2":
            terms = np.concatenate([a * a, b * b, -2.0 * p], axis=1)
            out[lo:lo + step] = [fsum(t) for t in terms.tolist()]
        elif metric == "ip":
            out[lo:lo + step] = [-fsum(t) for t in p.tolist()]
        else:
            s = np.array([fsum(t) for t in p.tolist()])
            na = np.sqrt([fsum(t) for t in (a * a).tolist()])
            nb = np.sqrt([fsum(t) for t in (b * b).tolist()])
            out[lo:lo + step] = 1.0 - s / (na * nb)
    return out


# ----------------------------------------------------------------------------- oracles
def _exact_order(ex: _Exact, i: int, order: np.ndarray, s: np.ndarray, tol: float, k: int, complete: bool):
    """First k of `order` (candidates sorted by approximate value s) in exact order.

    Consecutive values more than tol = 2 err apart are in the exact order already, so only runs
    of near-equal values are re-sorted by exact key, then index (ties to the lower index).
    Returns None when `order` is not all candidates and the run through position k-1 reaches
    its end (the next candidate might belong to the run)."""
    near = np.diff(s) <= tol  # inf - inf is nan: never near
    e = k
    while e < len(order) and near[e - 1]:
        e += 1
    if e == len(order) and not complete:
        return None
    if not near[: e - 1].any():
        return order[:k]
    run = np.concatenate([[0], np.cumsum(~near[: e - 1])])
    size = np.bincount(run)
    keys = [(run[p], ex.key(i, int(order[p])) if size[run[p]] > 1 else 0, int(order[p])) for p in range(e)]
    keys.sort()
    return np.array([t[2] for t in keys[:k]], np.int64)


def brute_knn(db: np.ndarray, q: np.ndarray, k: int, metric: str, exclude_self: bool = False,
              perturb=None):
    """Exact top-k: nearest first, exact ties to the lower index. Returns (values, indices);
    values as pair_values gives them. exclude_self drops pair (i, i)."""
    db, q = np.asarray(db), np.asarray(q)
    v, err = approx_values(db, q, metric, perturb)
    n = v.shape[1]
    if exclude_self:
        v[np.arange(len(q)), np.arange(len(q))] = np.inf
    ex = _Exact(db, q, metric)
    m = n if n <= 4096 else min(n, k + 64)
    part = None if m == n else np.argpartition(v, m - 1, axis=1)[:, :m]
    idx = np.empty((len(q), k), np.int64)
    for i in range(len(q)):
        vi = v[i]
        for cand in ((part[i] if part is not None else None), None):
            c = np.arange(n) if cand is None else cand
            o = c[np.lexsort((c, vi[c]))]
            got = _exact_order(ex, i, o, vi[o], 2.0 * err[i], k, complete=cand is None)
            if got is not None:
                break
        idx[i] = got
    vals = pair_values(db, q, np.repeat(np.arange(len(q)), k), idx.ravel(), metric).reshape(idx.shape)
    return vals, idx


def brute_within(db: np.ndarray, q: np.ndarray, limit: float, metric: str, perturb=None) -> np.ndarray:
    """Exact mask value(q[i], db[j]) <= limit (inclusive), shape (len(q), len(db))."""
    db, q = np.asarray(db), np.asarray(q)
    v, err = approx_values(db, q, metric, perturb)
    e = err[:, None]
    out = v < limit - e
    amb = np.argwhere((v >= limit - e) & (v <= limit + e))
    if len(amb):
        ex = _Exact(db, q, metric)
        for i, j in amb.tolist():
            out[i, j] = ex.within(i, j, limit)
    return out


def brute_argmin(db: np.ndarray, q: np.ndarray, metric: str = "l2", mask=None, perturb=None) -> np.ndarray:
    """Exact nearest db row for each query (ties to the lower index), among mask[i] when given;
    -1 for a row without candidates. Inputs may be float64 (k-means centres)."""
    db, q = np.asarray(db), np.asarray(q)
    v, err = approx_values(db, q, metric, perturb)
    if mask is not None:
        v = np.where(mask, v, np.inf)
    best = v.min(1) if v.shape[1] else np.full(len(q), np.inf)
    out = np.argmin(v, 1) if v.shape[1] else np.full(len(q), -1)
    out = np.where(np.isfinite(best), out, -1)
    amb = (v <= (best + 2.0 * err)[:, None]).sum(1) > 1
    if amb.any():
        ex = _Exact(db, q, metric)
        for i in np.flatnonzero(amb & np.isfinite(best)):
            cand = np.flatnonzero(v[i] <= best[i] + 2.0 * err[i])
            out[i] = min((ex.key(int(i), int(j)), int(j)) for j in cand)[1]
    return out


def gaussian_mixture(n: int, d: int, k: int, spread: float, seed: int, noise_frac: float = 0.0,
                     unit: bool = False):
    """Clusters around k random centres (plus uniform noise rows), float32, with labels (-1 noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4.0
    if unit:
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_noise = int(n * noise_frac)
    lab = rng.integers(0, k, n - n_noise)
    X = centres[lab] + rng.standard_normal((n - n_noise, d)) * spread
    lo, hi = centres.min() - 3 * spread, centres.max() + 3 * spread
    noise = rng.uniform(lo, hi, (n_noise, d))
    X = np.vstack([X, noise])
    y = np.r_[lab, -np.ones(n_noise, int)]
    if unit:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return X[perm].astype(np.float32), y[perm]


def call_bounded_on_fifo(fn, fifo, timeout: float = 30.0):
    """Runs ``fn`` in a thread and returns its value (or raises its exception). If it blocks,
    as a reader of the FIFO ``fifo`` would, a writer is opened to release it and the test fails
    instead of hanging."""
    import os
    import threading

    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"{getattr(fn, '__name__', 'the call')} blocked on the FIFO {fifo}")
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture(scope="session")
def client():
    """One distributed.LocalCluster (2 worker processes x 1 thread) for every Dask test module."""
    distributed = pytest.importorskip("distributed")
    # Workers inherit the environment: one OpenMP thread each, as a deployment would set it.
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=40)
        c = distributed.Client(cluster)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    yield c
    c.close()
    cluster.close()
