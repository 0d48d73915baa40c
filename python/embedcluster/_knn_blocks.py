"""Exact k-nearest-neighbour search over row blocks: the block-pair tasks and their merge, shared by
the out-of-core :class:`embedcluster.NearestNeighbors` (blocks read one at a time) and
:class:`embedcluster.dask.NearestNeighbors` (blocks on Dask workers).

Why the merge is exact: ``_core.knn_search(..., exact_values=True)`` returns each query's k best
database rows of a block as (fp64 ranking value, index), ascending, where the value is the exact
evaluation of the float32 pair (the negated dot product for "ip") and depends on the two rows
only. The single call's answer is the first k of all pairs in (value, global index) order, so the
first k of the union of every block's k best, in the same order, is that answer bit for bit, in
any merge order (the order is total: indices are distinct). Reported float32 distances are
``float32(value)`` (``float32(-value)`` for "ip"), as the engine rounds them.

A block with fewer rows than k contributes what it has, padded with (+inf, -1), which sorts after
every real pair (real values are finite).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ._backend import EngineMetric, Precision, _core

TopK = Tuple[np.ndarray, np.ndarray]  # (fp64 ranking values, int64 global indices), both (rows, k)


@dataclass(frozen=True)
class EngineArgs:
    """What every block-pair call passes to the engine besides the rows."""

    metric: EngineMetric
    n_threads: int = 0
    precision: Precision = "auto"
    memory_limit: Any = None


def block_bounds(n: int, block_rows: int) -> List[Tuple[int, int]]:
    """[start, stop) of consecutive blocks of at most block_rows rows covering n rows."""
    if block_rows < 1:
        raise ValueError(f"block_rows={block_rows} should be >= 1")
    return [(a, min(n, a + block_rows)) for a in range(0, n, block_rows)]


def bounds_of_sizes(sizes: Sequence[int]) -> List[Tuple[int, int]]:
    """[start, stop) of consecutive blocks of the given sizes (a dask array's row chunks)."""
    ends = np.cumsum([0] + [int(s) for s in sizes])
    return [(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def empty_topk(rows: int, k: int) -> TopK:
    """k padding entries per row: (+inf, -1)."""
    return np.full((rows, k), np.inf), np.full((rows, k), -1, dtype=np.int64)


def pair_topk(db: np.ndarray, queries: np.ndarray, k: int, db_offset: int, diagonal: bool,
              args: EngineArgs) -> TopK:
    """Each query's k best rows of one database block (global indices db_offset + j).

    ``diagonal``: the queries are this very block (the self-join's block against itself): each row
    leaves itself out. The block may hold fewer than k rows (fewer than k + 1 on the diagonal):
    the missing entries are (+inf, -1).
    """
    nq = int(queries.shape[0])
    avail = int(db.shape[0]) - (1 if diagonal else 0)
    kk = min(k, avail)
    if nq == 0 or kk <= 0:
        return empty_topk(nq, k)
    vals, idx = _core.knn_search(db, queries, kk, args.metric, diagonal, args.n_threads, args.precision,
                                 args.memory_limit, True, exact_values=True)
    idx += db_offset
    if kk == k:
        return vals, idx
    pad_v, pad_i = empty_topk(nq, k - kk)
    return np.hstack([vals, pad_v]), np.hstack([idx, pad_i])


def merge_topk(parts: Sequence[TopK], k: int) -> TopK:
    """The first k of the parts' entries per row in (value, index) order (exact, any part order)."""
    if len(parts) == 1:
        return parts[0]
    vals = np.concatenate([p[0] for p in parts], axis=1)
    idx = np.concatenate([p[1] for p in parts], axis=1)
    order = np.lexsort((idx, vals), axis=-1)[:, :k]
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


def reported_distances(vals: np.ndarray, metric: str) -> np.ndarray:
    """The engine's float32 distances of exact ranking values (the dot product for "ip")."""
    return (-vals if metric == "ip" else vals).astype(np.float32)


@dataclass(frozen=True)
class PairPlan:
    """Which database blocks each query block meets. In a self-join the query blocks are the
    database blocks and block i meets itself on the diagonal (each row leaves itself out)."""

    query_bounds: List[Tuple[int, int]]
    db_bounds: List[Tuple[int, int]]
    self_join: bool

    def pairs(self, i: int) -> Iterator[Tuple[int, bool]]:
        """(database block j, diagonal) for query block i, j ascending."""
        for j in range(len(self.db_bounds)):
            yield j, self.self_join and i == j


def tree_merge(parts: List[Any], merge: Callable[[Any, Any], Any]) -> Any:
    """Merges adjacent parts pairwise, level by level, in a fixed order (Dask: the shape of the
    task tree does not depend on which task finishes first)."""
    while len(parts) > 1:
        nxt = [merge(parts[t], parts[t + 1]) for t in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def knn_over_blocks(plan: PairPlan, query_block: Callable[[int], np.ndarray],
                    db_block: Callable[[int], np.ndarray], k: int, args: EngineArgs,
                    progress: Optional[Callable[[int, int], None]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """kNN of every query against every database block, blocks read one at a time in this
    process: (float32 reported distances, int64 indices), each (n_queries, k).

    Private memory: the outputs, one query block and one database block (each as the caller's
    reader returns it), the engine's buffers for one call, and two (rows, k) partial results.
    """
    nq = plan.query_bounds[-1][1] if plan.query_bounds else 0
    dist = np.empty((nq, k), dtype=np.float32)
    ind = np.empty((nq, k), dtype=np.int64)
    for i, (a, b) in enumerate(plan.query_bounds):
        q = query_block(i)
        acc: Optional[TopK] = None
        for j, diagonal in plan.pairs(i):
            db = q if diagonal else db_block(j)
            part = pair_topk(db, q, k, plan.db_bounds[j][0], diagonal, args)
            acc = part if acc is None else merge_topk([acc, part], k)
            del db
        assert acc is not None
        dist[a:b] = reported_distances(acc[0], args.metric)
        ind[a:b] = acc[1]
        if progress is not None:
            progress(i + 1, len(plan.query_bounds))
    return dist, ind


def radius_over_blocks(plan: PairPlan, query_block: Callable[[int], np.ndarray],
                       db_block: Callable[[int], np.ndarray], radius: float,
                       args: EngineArgs) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radius search of every query against every database block, as one CSR (indptr, indices,
    engine distances) with each query's indices ascending, as ``_core.radius_search`` gives it."""
    counts, indices, dists = [], [], []
    for i, (a, b) in enumerate(plan.query_bounds):
        q = query_block(i)
        rows, inds, ds = [], [], []
        for j, diagonal in plan.pairs(i):
            db = q if diagonal else db_block(j)
            ptr, ind, dist = _core.radius_search(db, q, radius, args.metric, diagonal, args.n_threads,
                                                 args.precision, args.memory_limit)
            rows.append(np.repeat(np.arange(b - a), np.diff(ptr)))
            inds.append(ind + plan.db_bounds[j][0])
            ds.append(dist)
            del db
        row = np.concatenate(rows)
        order = np.argsort(row, kind="stable")  # blocks come in ascending order: indices stay ascending
        counts.append(np.bincount(row, minlength=b - a))
        indices.append(np.concatenate(inds)[order])
        dists.append(np.concatenate(ds)[order])
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return indptr, np.concatenate(indices).astype(np.int64), np.concatenate(dists).astype(np.float32)
