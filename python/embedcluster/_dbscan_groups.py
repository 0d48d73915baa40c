"""DBSCAN over groups of rows: for data that is not one in-memory array.

The rows are split into groups of nearby rows (a k-means of a sample of them gives the group
centres; every row joins its nearest centre), and each group gets a bounding ball (its centre
and the largest distance of a member from it). Only pairs of groups whose balls come within eps
of each other can hold neighbours, and each such pair is one task on the engine's exact calls:

1. ``radius_count`` / ``radius_count_both`` count every row's neighbours within eps (the row
   itself included); a row with at least ``min_samples`` is a core point.
2. ``radius_pair_links`` unions the core points within eps of each other and finds each non-core
   row's nearest core point within eps (float32 distance, then the lower row index).

The driver unions the components over all pairs (the root of a component is its lowest row),
numbers the clusters in the order of their lowest core row and gives each border point its
nearest core point's cluster: exactly the labels of :class:`embedcluster.DBSCAN` on the same
rows, whatever the grouping, since the grouping only decides which pairs are skipped, and a
skipped pair provably holds no neighbours.

Where the groups live is an executor's business: in this process (rows reordered into a scratch
file when they come from disk) or on the workers of a Dask cluster (``embedcluster.dask.DBSCAN``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from . import _core
from ._backend import EngineMetric, Precision
from ._progress import NativeCallback, Progress

GROUP_ROWS = 8192  # rows per group: the unit of a pair task
SAMPLE_ROWS_PER_GROUP = 48  # rows of the sample the group centres are fitted on, per group
GROUPING_ITERATIONS = 10
# A group wider on the sample than SPLIT_FACTOR times the median group is split, SPLIT_ROUNDS times at most.
SPLIT_FACTOR = 1.5
SPLIT_ROUNDS = 3
# Margins of the ball test, far above fp64's rounding of the centre distances and radii.
_REL_MARGIN = 1e-6
_NORM_MARGIN = 1e-9


@dataclass
class Geometry:
    """The metric as the grouping sees it: Euclidean distances between rows (unit rows for
    cosine), and the reach that two rows within eps can be apart in that space."""

    metric: EngineMetric  # "l2" or "cosine"
    eps: float

    @property
    def engine_radius(self) -> float:
        """The radius of the engine's calls: a squared distance for l2, 1 - cos for cosine."""
        return self.eps * self.eps if self.metric == "l2" else self.eps

    @property
    def reach(self) -> float:
        return self.eps if self.metric == "l2" else float(np.sqrt(2.0 * self.eps))

    def rows64(self, block: np.ndarray) -> np.ndarray:
        """Rows in the grouping's space, fp64 (unit rows for cosine)."""
        x = np.asarray(block, dtype=np.float64)
        if self.metric == "cosine":
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x


def sample_positions(n: int) -> np.ndarray:
    """Evenly spaced rows the group centres are fitted on (ascending, distinct)."""
    groups = -(-n // GROUP_ROWS)
    size = min(n, max(groups * SAMPLE_ROWS_PER_GROUP, 1))
    return np.unique(np.linspace(0, n - 1, size).astype(np.int64))


def group_centres(sample: np.ndarray, n: int, geo: Geometry, n_threads: int = 0) -> np.ndarray:
    """float32 (G, d) centres of about n / GROUP_ROWS groups, fitted on a sample of the rows.

    Only the work depends on them (which pairs of groups are compared), never the result.
    """
    from .cluster.kmeans import KMeans

    U = np.ascontiguousarray(geo.rows64(sample), dtype=np.float32)
    groups = -(-n // GROUP_ROWS)
    if groups > 1:
        groups = min(groups, len(np.unique(U, axis=0)))
    if groups <= 1:
        return U.mean(axis=0, dtype=np.float64, keepdims=True).astype(np.float32)
    # k-means++ (k-means|| on large samples) seeds every well-separated cluster of rows: a group
    # spread over two clusters would have a ball that reaches far more partners.
    km = KMeans(groups, init="auto", n_init=1, max_iter=GROUPING_ITERATIONS, tol=0.0, random_state=0,
                n_threads=n_threads or None)
    centres = np.ascontiguousarray(km.fit(U).cluster_centers_, dtype=np.float32)
    return split_wide_groups(U, centres, n_threads)


def split_wide_groups(U: np.ndarray, centres: np.ndarray, n_threads: int = 0) -> np.ndarray:
    """The centres with every group much wider on the sample than the typical group split in two.

    k-means can leave one centre between two clusters of rows; that group's ball then reaches
    nearly every other group's, and each of those pairs costs a full pair task. Splitting it on
    the sample (a 2-means of its sample rows) gives two tight groups instead.
    """
    from .cluster.kmeans import KMeans

    for _ in range(SPLIT_ROUNDS):
        d2, idx = _core.knn_search(centres, U, 1, "l2", n_threads=n_threads, exact_values=True)
        lab, dist = idx[:, 0], np.sqrt(np.maximum(d2[:, 0], 0.0))
        width = np.zeros(len(centres))
        np.maximum.at(width, lab, dist)
        counts = np.bincount(lab, minlength=len(centres))
        if not (counts > 0).any():
            break
        typical = float(np.median(width[counts > 0]))
        wide = np.flatnonzero((width > SPLIT_FACTOR * typical) & (counts >= 2))
        if len(wide) == 0:
            break
        extra = []
        for g in wide.tolist():
            rows = U[lab == g]
            if len(np.unique(rows, axis=0)) < 2:
                continue
            two = KMeans(2, n_init=1, max_iter=GROUPING_ITERATIONS, random_state=0,
                         n_threads=n_threads or None).fit(rows).cluster_centers_
            centres[g] = two[0]
            extra.append(two[1])
        if not extra:
            break
        centres = np.ascontiguousarray(np.vstack([centres, np.asarray(extra, np.float32)]), dtype=np.float32)
    return centres


def assign_groups(block: np.ndarray, centres: np.ndarray, geo: Geometry,
                  n_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group (its nearest centre) and an upper bound on its distance from that
    centre: the engine's fp64 value for the float32 row (l2), or for its float32 unit row plus
    that rounding's bound (cosine: ||u - float32(u)|| <= 2^-24 for a unit u; twice that here)."""
    if geo.metric == "l2":
        U, slack = np.ascontiguousarray(block, dtype=np.float32), 0.0
    else:
        U, slack = np.ascontiguousarray(geo.rows64(block), dtype=np.float32), 2.0**-23
    d2, idx = _core.knn_search(centres, U, 1, "l2", n_threads=n_threads, exact_values=True)
    return idx[:, 0], np.sqrt(np.maximum(d2[:, 0], 0.0)) + slack


def partner_pairs(centres: np.ndarray, radii: np.ndarray, sizes: np.ndarray, reach: float) -> np.ndarray:
    """(P, 2) pairs g <= h of non-empty groups whose balls come within `reach`, sorted."""
    C = centres.astype(np.float64)
    sq = np.einsum("ij,ij->i", C, C)
    live = np.flatnonzero(sizes > 0)
    out = []
    for a in range(0, len(live), 256):
        ga = live[a:a + 256]
        hb = live[live >= ga[0]]
        d2 = sq[ga, None] + sq[None, hb] - 2.0 * (C[ga] @ C[hb].T)
        lim = (radii[ga, None] + radii[None, hb] + reach) * (1.0 + _REL_MARGIN)
        near = d2 <= lim * lim + _NORM_MARGIN * (sq[ga, None] + sq[None, hb]) + 1e-300
        i, j = np.nonzero(near & (hb[None, :] >= ga[:, None]))
        out.append(np.stack([ga[i], hb[j]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


# ---- Tasks (module-level functions: Dask workers import them by name).

# The pair tasks use fp32 tiles: bf16's error band (a fraction 2^-8 of the squared norms) holds
# most pairs of rows far from the origin, and each pair in the band is re-checked in fp64.
PAIR_PRECISION: Precision = "fp32"

def count_task(xa: np.ndarray, xb: Optional[np.ndarray], radius: float, metric: EngineMetric, n_threads: int):
    """Neighbour counts within the pair: (counts of a's rows, counts of b's rows or None for a
    group with itself, where each row counts itself)."""
    if xb is None:
        return _core.radius_count(xa, xa, radius, metric, n_threads=n_threads, precision=PAIR_PRECISION), None
    ca, cb = _core.radius_count_both(xb, xa, radius, metric, n_threads=n_threads, precision=PAIR_PRECISION)
    return ca, cb


def link_task(xa: np.ndarray, ids_a: np.ndarray, core_a: np.ndarray, xb: Optional[np.ndarray],
              ids_b: Optional[np.ndarray], core_b: Optional[np.ndarray], radius: float, metric: EngineMetric,
              n_threads: int):
    """The pair's links in global row ids: (edge_u, edge_v) joining core rows, and per non-core
    row with a core row within eps: (rows, nearest core rows, float32 distances), one entry a row."""
    same = xb is None
    xb_, ids_b_, core_b_ = (xa, ids_a, core_a) if same else (xb, ids_b, core_b)
    assert ids_b_ is not None and core_b_ is not None and xb_ is not None
    comp, q_core, q_dist, db_core, db_dist = _core.radius_pair_links(
        xb_, xa, radius, core_a.view(np.uint8), core_b_.view(np.uint8), metric, n_threads=n_threads,
        precision=PAIR_PRECISION)
    nodes = np.concatenate([ids_a, ids_b_])
    joined = np.flatnonzero((comp >= 0) & (comp != np.arange(len(comp))))
    edge_u, edge_v = nodes[joined], nodes[comp[joined]]
    qa, qb = np.flatnonzero(q_core >= 0), np.flatnonzero(db_core >= 0)
    rows = np.concatenate([ids_a[qa], ids_b_[qb]])
    cores = np.concatenate([ids_b_[q_core[qa]], ids_a[db_core[qb]]])
    dists = np.concatenate([q_dist[qa], db_dist[qb]])
    if same:  # a row may appear on both sides: keep its better candidate
        rows, cores, dists = nearest_per_row(rows, cores, dists)
    return edge_u, edge_v, rows, cores, dists


def nearest_per_row(rows: np.ndarray, cores: np.ndarray, dists: np.ndarray):
    """One candidate per row: the smallest distance, then the lowest core row."""
    order = np.lexsort((cores, dists, rows))
    rows, cores, dists = rows[order], cores[order], dists[order]
    first = np.ones(len(rows), bool)
    first[1:] = rows[1:] != rows[:-1]
    return rows[first], cores[first], dists[first]


# ---- The driver.

class Executor:
    """Runs tasks where the groups are. This one runs them at once in this process; the Dask
    executor submits them to a cluster. ``rows(g)`` / ``ids(g)`` are whatever the tasks take."""

    def submit(self, fn: Callable, *args: Any) -> Any:
        return fn(*args)

    def gather(self, handles: Sequence[Any]) -> list:
        return list(handles)

    def completed(self, handles: Iterable[Any], tick: Optional[Callable[[], None]] = None) -> Iterable[Any]:
        """The tasks' results as they finish (any order). Local tasks run as the iterable is
        consumed, so passing a generator of submits runs them one at a time. ``tick()``: called
        now and then while tasks elsewhere run and none finishes (progress that says so)."""
        return iter(handles)

    #: Tasks run inside :meth:`submit` (done when it returns), rather than somewhere else later.
    runs_at_submit = True

    def finished(self, handles: Sequence[Any], tick: Optional[Callable[[], None]] = None) -> Iterable[Any]:
        """Each handle once its task has finished (any order), without fetching its result
        (``tick`` as in :meth:`completed`)."""
        return iter(handles)

    def rows(self, g: int) -> Any:
        raise NotImplementedError

    def ids(self, g: int) -> Any:
        raise NotImplementedError


class ForestUnion:
    """Union-find over n rows in numpy: every root is the lowest row of its component."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: np.ndarray) -> np.ndarray:
        p = self.parent
        r = p[x]
        while True:
            rr = p[r]
            if np.array_equal(rr, r):
                return r
            r = rr

    def union(self, u: np.ndarray, v: np.ndarray) -> None:
        touched = np.concatenate([u, v])
        while len(u):
            ru, rv = self.find(u), self.find(v)
            apart = ru != rv
            if not apart.any():
                break
            lo, hi = np.minimum(ru[apart], rv[apart]), np.maximum(ru[apart], rv[apart])
            np.minimum.at(self.parent, hi, lo)
            u, v = hi, lo  # an edge whose hi got another, lower root is joined on the next round
        if len(touched):  # path compression: later finds start next to the roots
            self.parent[touched] = self.find(touched)

    def roots(self) -> np.ndarray:
        p = self.parent
        while True:
            pp = p[p]
            if np.array_equal(pp, p):
                return p
            p = pp


@dataclass
class GroupedDbscan:
    labels: np.ndarray
    is_core: np.ndarray
    pairs: int
    pairs_linked: int  # pairs that went through the pair tasks' links
    components: int  # sets of groups fitted whole in memory


def dbscan_over_groups(ex: Executor, n: int, pairs: np.ndarray, sizes: np.ndarray, geo: Geometry,
                       min_samples: int, n_threads: int = 0, max_component_rows: int = 0,
                       verbose: Any = None) -> GroupedDbscan:
    """DBSCAN's labels and core flags of n rows split into groups (`sizes` rows each), from
    the pairs of groups that may hold neighbours.

    Groups that no pair links to the rest form independent DBSCAN problems: each such set of
    at most `max_component_rows` rows is one in-memory ``dbscan_fit`` (its neighbours are all
    inside it); the other groups go through the pair tasks. ``verbose``: progress of the
    components and of the pairs (see :mod:`embedcluster._progress`).
    """
    forest = ForestUnion(n)
    is_core = np.zeros(n, bool)
    best_core = np.full(n, -1, np.int64)
    whole, split = partner_components(pairs, sizes, max_component_rows)
    tasks = component_tasks(ex, whole, geo, min_samples, n_threads, verbose)
    with Progress("DBSCAN whole components", total=len(whole), verbose=verbose, unit="component") as shown:
        for ids, core, labels in ex.completed(tasks, shown.ticker()):
            join_component(forest, is_core, best_core, ids, core, labels)
            shown.update(1)
    in_split = np.zeros(len(sizes), bool)
    in_split[[g for c in split for g in c]] = True
    linked = link_pairs(ex, forest, is_core, best_core, pairs[in_split[pairs[:, 0]]], geo, min_samples, n_threads,
                        verbose)
    return GroupedDbscan(number_clusters(forest.roots(), is_core, best_core), is_core, len(pairs), linked,
                         len(whole))


def partner_components(pairs: np.ndarray, sizes: np.ndarray, max_rows: int) -> tuple[list, list]:
    """The non-empty groups in sets that no pair connects (each sorted): those of at most
    max_rows rows, and the others."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    G = len(sizes)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(G, G))
    _, comp = connected_components(graph, directed=False)
    live = np.flatnonzero(sizes > 0)
    sets: dict = {}
    for g in live:
        sets.setdefault(int(comp[g]), []).append(int(g))
    whole = [c for c in sets.values() if sizes[c].sum() <= max_rows]
    split = [c for c in sets.values() if sizes[c].sum() > max_rows]
    return whole, split


def component_tasks(ex: Executor, whole: list, geo: Geometry, min_samples: int, n_threads: int,
                    verbose: Any) -> Iterator[Any]:
    """The component task of each set in `whole`, submitted one at a time as the caller asks.
    Tasks in this process show the engine's progress of their fit (a large set can take a
    while); elsewhere the caller's wait shows that work goes on."""
    for i, c in enumerate(whole, 1):
        shown = verbose if ex.runs_at_submit else False
        with Progress(f"DBSCAN whole component {i}/{len(whole)}", verbose=shown) as inner:
            yield ex.submit(component_task, geo, min_samples, n_threads, inner.callback(), len(c),
                            *[ex.rows(g) for g in c], *[ex.ids(g) for g in c])


def component_task(geo: Geometry, min_samples: int, n_threads: int, progress: Optional[NativeCallback], count: int,
                   *parts):
    """The in-memory DBSCAN of a set of groups with no neighbours outside it: (global ids
    ascending, core flags, labels numbered within the set). Rows are put in global order so
    that the fit's ties (the lower row) are the global fit's. ``progress``: the engine's
    callback (None: none)."""
    ids = np.concatenate(parts[count:])
    order = np.argsort(ids, kind="stable")
    X = np.ascontiguousarray(np.concatenate(parts[:count])[order], dtype=np.float32)
    r = _core.dbscan_fit(X, geo.eps, min_samples, geo.metric, n_threads=n_threads, progress=progress)
    return ids[order], np.asarray(r.is_core, dtype=bool), np.asarray(r.labels, dtype=np.int64)


def join_component(forest: ForestUnion, is_core: np.ndarray, best_core: np.ndarray, ids: np.ndarray,
                   core: np.ndarray, labels: np.ndarray) -> None:
    """Records a set's own DBSCAN: its cores joined to their cluster's lowest core row, its
    border rows pointed at that row."""
    is_core[ids] = core
    if not core.any():
        return
    first_core = np.full(labels.max() + 1, np.iinfo(np.int64).max, np.int64)
    core_pos = np.flatnonzero(core)
    np.minimum.at(first_core, labels[core_pos], ids[core_pos])
    forest.union(ids[core_pos], first_core[labels[core_pos]])
    border = np.flatnonzero(~core & (labels >= 0))
    best_core[ids[border]] = first_core[labels[border]]


def core_flags(ex: Executor, pairs: np.ndarray, radius: float, metric: EngineMetric, min_samples: int,
               n_threads: int, verbose: Any = None) -> dict:
    """The count tasks over `pairs` (sorted by (g, h)): {group: its rows' core flags (a handle)}."""
    # Each group's counts are summed as its pairs finish: a group's last pair is (g, h) with the
    # largest h when it is the first of the pair, and pairs come sorted by (g, h).
    counts: dict = {}
    core: dict = {}
    last_first = {int(g): i for i, g in enumerate(pairs[:, 0])}
    count_tasks = []
    with Progress("DBSCAN group pairs: neighbour counts", total=len(pairs), verbose=verbose, unit="pair") as shown:
        for i, (g, h) in enumerate(pairs.tolist()):
            r = ex.submit(count_task, ex.rows(g), None if g == h else ex.rows(h), radius, metric, n_threads)
            count_tasks.append(r)
            if ex.runs_at_submit:
                shown.update(1)
            for side, grp in ((_first, g), (_second, h)) if g != h else ((_first, g),):
                part = ex.submit(side, r)
                counts[grp] = part if grp not in counts else ex.submit(_add, counts[grp], part)
            if last_first.get(g) == i:  # no later pair adds to g
                core[g] = ex.submit(_at_least, counts.pop(g), min_samples)
        for grp in list(counts):  # groups that are never the first of a pair after their last count
            core[grp] = ex.submit(_at_least, counts.pop(grp), min_samples)
        if not ex.runs_at_submit:
            for _ in ex.finished(count_tasks, shown.ticker()):
                shown.update(1)
    return core


def link_pairs(ex: Executor, forest: ForestUnion, is_core: np.ndarray, best_core: np.ndarray, pairs: np.ndarray,
               geo: Geometry, min_samples: int, n_threads: int, verbose: Any = None) -> int:
    """The pair tasks over `pairs` (sorted by (g, h)): counts, core flags, then links into the
    forest and the border candidates. Returns the pairs linked."""
    radius, metric = geo.engine_radius, geo.metric
    core = core_flags(ex, pairs, radius, metric, min_samples, n_threads, verbose)
    live = sorted(core)
    has_core = dict(zip(live, ex.gather([ex.submit(np.any, core[g]) for g in live])))
    linked = [(int(g), int(h)) for g, h in pairs if has_core[int(g)] or has_core[int(h)]]
    links = (ex.submit(link_task, ex.rows(g), ex.ids(g), core[g], None if g == h else ex.rows(h),
                       None if g == h else ex.ids(h), None if g == h else core[h], radius, metric, n_threads)
             for g, h in linked)
    best_dist = np.full(len(best_core), np.inf, np.float32)
    with Progress("DBSCAN group pairs: links", total=len(linked), verbose=verbose, unit="pair") as shown:
        for edge_u, edge_v, rows, cores, dists in ex.completed(links, shown.ticker()):
            forest.union(edge_u, edge_v)
            better = (dists < best_dist[rows]) | ((dists == best_dist[rows]) & (cores < best_core[rows]))
            best_dist[rows[better]], best_core[rows[better]] = dists[better], cores[better]
            shown.update(1)
    for ids, flags in zip(ex.gather([ex.ids(g) for g in live]), ex.gather([core[g] for g in live])):
        is_core[ids] = flags
    return len(linked)


def number_clusters(roots: np.ndarray, is_core: np.ndarray, nearest_core: np.ndarray) -> np.ndarray:
    """Clusters numbered in the order of their lowest core row (each root is its component's
    lowest row); border rows take their nearest core row's cluster; -1 for noise."""
    labels = np.full(len(roots), -1, np.int64)
    core_rows = np.flatnonzero(is_core)
    _, labels[core_rows] = np.unique(roots[core_rows], return_inverse=True)
    border = np.flatnonzero(~is_core & (nearest_core >= 0))
    labels[border] = labels[nearest_core[border]]
    return labels


def _add(a, b):
    return a + b


def _at_least(counts, min_samples):
    return counts >= min_samples


def _first(r):
    return r[0]


def _second(r):
    return r[1]


# ---- In this process: rows streamed from disk, grouped into a scratch copy.

# Rows of X held and sorted in memory at a time when writing the scratch copy: a quarter of the
# memory budget, at most SPAN_BYTES, at least MIN_SPAN_ROWS rows.
SPAN_BYTES = 1 << 29
MIN_SPAN_ROWS = 4096


def span_rows_for(d: int, budget: float) -> int:
    return max(MIN_SPAN_ROWS, int(min(budget / 4, SPAN_BYTES) // (4 * d)))


class SpanGroups(Executor):
    """The groups in the scratch copy: X was read one span of rows at a time and each span was
    written out sorted by group, so group g is one run of rows per span (runs[s, g] rows at
    offsets[s, g]); its rows are those runs read back in span order, ascending row index. Tasks
    run at once."""

    RECENT = 4  # gathered groups kept: pairs come sorted by their first group, which repeats

    def __init__(self, store: np.ndarray, order: np.ndarray, offsets: np.ndarray, runs: np.ndarray):
        self.store, self.order, self.offsets, self.runs = store, order, offsets, runs
        self._recent: dict = {}

    def _gather(self, source: np.ndarray, g: int) -> np.ndarray:
        key = (source is self.store, g)
        if key in self._recent:
            return self._recent[key]
        spans = np.flatnonzero(self.runs[:, g])
        parts = [source[self.offsets[s, g]:self.offsets[s, g] + self.runs[s, g]] for s in spans]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else source[:0]
        if len(self._recent) >= self.RECENT:
            self._recent.pop(next(iter(self._recent)))
        self._recent[key] = out
        return out

    def rows(self, g: int) -> np.ndarray:
        return self._gather(self.store, g)

    def ids(self, g: int) -> np.ndarray:
        return self._gather(self.order, g)


def read_rows(X: Any, a: int, b: int) -> np.ndarray:
    return np.ascontiguousarray(X[a:b], dtype=np.float32)


def write_spans(X: Any, labels: np.ndarray, n_groups: int, path: Any, span_rows: int,
                block_rows: int, shown: Optional[Progress] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writes X's rows as float32 to the .npy file `path`, span by span, each span's rows sorted
    by group (stable): every write appends, so the copy goes at the disk's sequential speed.
    Returns (the row index at each position of the copy, offsets, runs) as SpanGroups takes;
    ``shown`` counts the rows written."""
    n, d = int(X.shape[0]), int(X.shape[1])
    n_spans = max(1, -(-n // span_rows))
    offsets = np.zeros((n_spans, n_groups), np.int64)
    runs = np.zeros((n_spans, n_groups), np.int64)
    order = np.empty(n, np.int64)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        for s, a in enumerate(range(0, n, span_rows)):
            b = min(n, a + span_rows)
            perm = np.argsort(labels[a:b], kind="stable")
            runs[s] = np.bincount(labels[a:b], minlength=n_groups)
            offsets[s] = a + np.concatenate([[0], np.cumsum(runs[s])[:-1]])
            order[a:b] = a + perm
            span = read_rows(X, a, b)
            for c in range(0, b - a, block_rows):  # the sorted rows written a block at a time
                f.write(span[perm[c:c + block_rows]].tobytes())
            del span
            if shown is not None:
                shown.update(b - a)
    return order, offsets, runs


def fit_streamed(X: Any, eps: float, min_samples: int, metric: EngineMetric, scratch: Any, n_threads: int = 0,
                 block_rows: int = 1 << 16, max_component_rows: int = 0,
                 span_rows: int = 1 << 18, verbose: Any = None) -> GroupedDbscan:
    """DBSCAN of X (a memory map or ShardedArray) through a grouped copy in the folder `scratch`
    (a file of X's rows as float32, which the caller removes); `span_rows` rows of X are held
    and sorted in memory at a time to write it. ``verbose``: progress of the passes over the
    rows, the components and the group pairs (see :mod:`embedcluster._progress`)."""
    from pathlib import Path

    geo = Geometry(metric, float(eps))
    n = int(X.shape[0])
    sample = np.ascontiguousarray(X[sample_positions(n)], dtype=np.float32)
    centres = group_centres(sample, n, geo, n_threads)
    n_groups = len(centres)
    labels = np.empty(n, np.int64)
    radii = np.zeros(n_groups)
    with Progress("DBSCAN grouping rows", total=n, verbose=verbose, unit="row") as shown:
        for a in range(0, n, block_rows):
            b = min(n, a + block_rows)
            lab, dist = assign_groups(read_rows(X, a, b), centres, geo, n_threads)
            labels[a:b] = lab
            np.maximum.at(radii, lab, dist)
            shown.update(b - a)
    sizes = np.bincount(labels, minlength=n_groups)
    path = Path(scratch) / "grouped_rows.npy"
    with Progress("DBSCAN writing the grouped copy", total=n, verbose=verbose, unit="row") as shown:
        order, offsets, runs = write_spans(X, labels, n_groups, path, max(1, span_rows), block_rows, shown)
    del labels
    store = np.load(path, mmap_mode="r")
    pairs = partner_pairs(centres, radii, sizes, geo.reach)
    try:
        return dbscan_over_groups(SpanGroups(store, order, offsets, runs), n, pairs, sizes, geo, min_samples,
                                  n_threads, max_component_rows, verbose)
    finally:
        del store


class RowSelection:
    """Rows ``X[index]`` of a large input, read when asked for (the core rows of a streamed fit
    that would not fit in memory): ``len``, ``shape``, ``dtype``, slicing (an in-memory float32
    array of those rows) and ``np.asarray`` (all of them)."""

    def __init__(self, X: Any, index: np.ndarray):
        self._X, self.index = X, index
        self.shape = (len(index), int(X.shape[1]))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.ascontiguousarray(self._X[self.index[key]], dtype=np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def nearest_over_blocks(rows: Any, Q: np.ndarray, metric: EngineMetric, block_rows: int,
                        n_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The nearest of `rows` (anything sliceable by rows) to each query, read `block_rows` at a
    time: (float32 distance as knn_search reports it, index), exactly the single call's."""
    best_val = np.full(len(Q), np.inf)
    best_idx = np.full(len(Q), -1, np.int64)
    for a in range(0, len(rows), block_rows):
        val, idx = _core.knn_search(rows[a:a + block_rows], Q, 1, metric, n_threads=n_threads, exact_values=True)
        val, idx = val[:, 0], idx[:, 0] + a
        better = (val < best_val) | ((val == best_val) & (idx < best_idx))
        best_val[better], best_idx[better] = val[better], idx[better]
    return best_val.astype(np.float32), best_idx
