"""DBSCAN on a Dask cluster: the grouped DBSCAN of :mod:`embedcluster._dbscan_groups` with its
groups and pair tasks on the workers (``embedcluster.dask.DBSCAN`` is the public face)."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from ._backend import EngineMetric
from ._dbscan_groups import (Executor, Geometry, _first, _second, assign_groups, dbscan_over_groups, group_centres,
                             partner_pairs, sample_positions)
from ._progress import Progress
from .dask import _block_f32, _nbytes, finished


def _take_task(block: np.ndarray, local: np.ndarray) -> np.ndarray:
    return block[local]


def _split_task(block: np.ndarray, offset: int, centres: np.ndarray, geo: Geometry, n_threads: int):
    """A chunk's rows split by group: (per-group row counts, per-group largest distance from the
    centre, {group: (global ids, rows)})."""
    labels, dist = assign_groups(block, centres, geo, n_threads)
    G = len(centres)
    hist = np.bincount(labels, minlength=G)
    rmax = np.zeros(G)
    np.maximum.at(rmax, labels, dist)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(hist)])
    pieces = {int(g): (offset + order[bounds[g]:bounds[g + 1]], block[order[bounds[g]:bounds[g + 1]]])
              for g in np.flatnonzero(hist)}
    return hist, rmax, pieces


def _summary_task(split):
    return split[0], split[1]


def _group_task(g: int, *splits):
    """Group g's (global ids ascending, rows), from the chunks that hold some of it, in chunk order."""
    parts = [s[2][g] for s in splits]
    return np.concatenate([p[0] for p in parts]), np.ascontiguousarray(np.concatenate([p[1] for p in parts]))


class DaskGroups(Executor):
    """The groups as futures on the workers: built from the chunks of a dask array by one split
    task per chunk and one gather task per group (the rows move between workers once)."""

    runs_at_submit = False

    def __init__(self, client: Any, X: Any, geo: Geometry, n_threads: int, verbose: Any = None):
        self.client, self.n_threads = client, n_threads
        self.held: list = []
        self.bytes_received = 0
        if len(X.chunks[1]) != 1:
            X = X.rechunk({1: -1})  # a chunk holds whole rows
        sizes = [int(c) for c in X.chunks[0]]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        blocks = self._hold(client.compute(X.map_blocks(_block_f32, dtype=np.float32).to_delayed().ravel().tolist()))
        n = int(offsets[-1])
        pos = sample_positions(n)
        chunk_of = np.searchsorted(offsets, pos, side="right") - 1
        picks = [self.submit(_take_task, blocks[c], pos[chunk_of == c] - offsets[c]) for c in np.unique(chunk_of)]
        centres = group_centres(np.concatenate(self.gather(picks)), n, geo, n_threads)
        splits = [self.submit(_split_task, b, int(o), centres, geo, n_threads) for b, o in zip(blocks, offsets)]
        with Progress("DBSCAN grouping rows", total=len(splits), verbose=verbose, unit="block") as shown:
            for _ in self.finished(splits, shown.ticker()):
                shown.update(1)
        summaries = self.gather([self.submit(_summary_task, s) for s in splits])
        hists = np.stack([s[0] for s in summaries])
        self.sizes = hists.sum(axis=0)
        radii = np.max(np.stack([s[1] for s in summaries]), axis=0)
        self.pairs = partner_pairs(centres, radii, self.sizes, geo.reach)
        self.groups = {int(g): self.submit(_group_task, int(g), *[s for s, h in zip(splits, hists) if h[g] > 0])
                       for g in np.flatnonzero(self.sizes)}
        self._rows = {g: self.submit(_second, f) for g, f in self.groups.items()}
        self._ids = {g: self.submit(_first, f) for g, f in self.groups.items()}
        # The groups hold the rows from here on: drop the chunks and their splits.
        self.held = list(self.groups.values()) + list(self._rows.values()) + list(self._ids.values())
        del blocks, splits
        self.n, self.n_groups = n, len(centres)

    def _hold(self, futures: Sequence[Any]) -> list:
        self.held.extend(futures)
        return list(futures)

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self._hold([self.client.submit(fn, *args, pure=False)])[0]

    def gather(self, handles: Sequence[Any]) -> list:
        out = self.client.gather(list(handles))
        self.bytes_received += sum(_nbytes(o) for o in out)
        return out

    def completed(self, handles: Iterable[Any], tick: Optional[Callable[[], None]] = None):
        for _, result in finished(list(handles), tick, with_results=True):
            self.bytes_received += _nbytes(result)
            yield result

    def finished(self, handles: Sequence[Any], tick: Optional[Callable[[], None]] = None) -> Iterable[Any]:
        return finished(handles, tick)

    def rows(self, g: int) -> Any:
        return self._rows[g]

    def ids(self, g: int) -> Any:
        return self._ids[g]

    def cancel(self) -> None:
        self.client.cancel(self.held)

    def release(self) -> None:
        self.held, self.groups, self._rows, self._ids = [], {}, {}, {}


def fit_on_dask(client: Any, X: Any, eps: float, min_samples: int, metric: EngineMetric, n_threads: int,
                max_component_bytes: float, verbose: Any = None):
    """(GroupedDbscan, DaskGroups, seconds): DBSCAN of the dask array X on the client's cluster;
    ``verbose``: progress on the client as the tasks finish (see :mod:`embedcluster._progress`)."""
    geo = Geometry(metric, float(eps))
    t = time.perf_counter()
    ex = DaskGroups(client, X, geo, n_threads, verbose)
    try:
        max_rows = int(max_component_bytes // (4 * X.shape[1]))
        r = dbscan_over_groups(ex, ex.n, ex.pairs, ex.sizes, geo, min_samples, n_threads, max_rows, verbose)
    except BaseException:
        ex.cancel()
        raise
    seconds = time.perf_counter() - t
    ex.release()
    return r, ex, seconds
