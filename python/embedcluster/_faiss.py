"""FAISS implementations of the estimators' operations: the fallback backend.

Used when ``backend="faiss"`` is asked for, or by ``backend="auto"`` when the native engine is
missing. Results follow the same conventions as the native engine (squared L2 / dot / cosine
distance values, noise -1), but FAISS does not promise exact tie-breaking or eps boundaries.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def _faiss():
    import faiss

    return faiss


def _normalized(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if (n == 0).any():
        raise ValueError(f"row {int(np.argmax(n[:, 0] == 0))} has zero norm; the cosine metric is undefined for it")
    return np.ascontiguousarray(x / n, dtype=np.float32)


def _index(d: int, metric: str):
    faiss = _faiss()
    return faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)


def knn(db: np.ndarray, q: np.ndarray, k: int, metric: str, exclude_self: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Exact kNN with IndexFlat; returns values in the native engine's units."""
    if metric == "cosine":
        db, q = _normalized(db), _normalized(q)
    index = _index(db.shape[1], metric)
    index.add(db)
    kk = k + 1 if exclude_self else k
    dist, idx = index.search(q, kk)
    if exclude_self:
        keep = np.ones_like(idx, dtype=bool)
        own = idx == np.arange(q.shape[0])[:, None]
        has_own = own.any(axis=1)
        keep[has_own] = ~own[has_own]
        keep[~has_own, -1] = False
        dist = dist[keep].reshape(q.shape[0], k)
        idx = idx[keep].reshape(q.shape[0], k)
    if metric == "cosine":
        dist = 1.0 - dist
    return dist.astype(np.float32), idx.astype(np.int64)


def radius(db: np.ndarray, q: np.ndarray, r: float, metric: str, exclude_self: bool):
    """Range search; L2 radius on squared distances, cosine radius on 1 - cos. CSR out."""
    if metric == "cosine":
        db, q = _normalized(db), _normalized(q)
    index = _index(db.shape[1], metric)
    index.add(db)
    if metric == "l2":
        # FAISS keeps d < radius; nudge up so the boundary is inclusive like the native engine.
        lims, dist, idx = index.range_search(q, float(np.nextafter(np.float32(r), np.float32(np.inf))))
    else:
        lims, dist, idx = index.range_search(q, float(np.nextafter(np.float32(1.0 - r), np.float32(-np.inf))))
        dist = 1.0 - dist
    lims = lims.astype(np.int64)
    idx = idx.astype(np.int64)
    out_ptr, out_idx, out_d = [0], [], []
    for i in range(q.shape[0]):
        s, e = lims[i], lims[i + 1]
        ii, dd = idx[s:e], dist[s:e]
        if exclude_self:
            m = ii != i
            ii, dd = ii[m], dd[m]
        order = np.argsort(ii, kind="stable")
        out_idx.append(ii[order])
        out_d.append(dd[order])
        out_ptr.append(out_ptr[-1] + len(ii))

    def cat(parts, dt):
        return np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)

    return np.asarray(out_ptr, np.int64), cat(out_idx, np.int64), cat(out_d, np.float32)


def kmeans(x: np.ndarray, k: int, max_iter: int, metric: str, init: Optional[np.ndarray], seed: int,
           sample_weight: Optional[np.ndarray]):
    """faiss.Kmeans on all points (no subsampling); returns (centers, labels, inertia, n_iter)."""
    faiss = _faiss()
    xx = _normalized(x) if metric == "cosine" else x
    km = faiss.Kmeans(x.shape[1], k, niter=max_iter, seed=seed % (2**31), spherical=metric == "cosine",
                      max_points_per_centroid=max(1, (x.shape[0] + k - 1) // k) + 1, verbose=False)
    km.train(xx, weights=sample_weight, init_centroids=init)
    centers = np.ascontiguousarray(km.centroids, dtype=np.float32)
    index = _index(x.shape[1], "l2" if metric == "l2" else "ip")
    index.add(centers)
    d, lab = index.search(xx, 1)
    dist = d[:, 0].astype(np.float64) if metric == "l2" else 1.0 - d[:, 0].astype(np.float64)
    w = np.ones(x.shape[0]) if sample_weight is None else sample_weight.astype(np.float64)
    return centers, lab[:, 0].astype(np.int64), float((np.maximum(dist, 0) * w).sum()), max_iter


def dbscan(x: np.ndarray, eps: float, min_samples: int, metric: str):
    """DBSCAN from a FAISS range search (stores the neighbourhood graph: O(edges) memory)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    r = eps * eps if metric == "l2" else eps
    ptr, idx, dist = radius(x, x, r, metric, exclude_self=False)
    n = x.shape[0]
    counts = np.diff(ptr)
    core = counts >= min_samples
    rows = np.repeat(np.arange(n), counts)
    cc = core[rows] & core[idx]
    g = csr_matrix((np.ones(int(cc.sum()), np.int8), (rows[cc], idx[cc])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    labels = np.full(n, -1, np.int64)
    core_idx = np.flatnonzero(core)
    _, first = np.unique(comp[core_idx], return_index=True)
    order = np.argsort(core_idx[first])
    remap = {int(comp[core_idx[first[o]]]): lab for lab, o in enumerate(order)}
    labels[core_idx] = [remap[int(c)] for c in comp[core_idx]]
    # Border points: nearest core neighbour (ties: lower index).
    bc = (~core[rows]) & core[idx]
    br, bi, bd = rows[bc], idx[bc], dist[bc]
    o = np.lexsort((bi, bd, br))
    br, bi = br[o], bi[o]
    firsts = np.r_[True, br[1:] != br[:-1]] if len(br) else np.zeros(0, bool)
    labels[br[firsts]] = labels[bi[firsts]]
    return labels, core.astype(np.uint8), counts
