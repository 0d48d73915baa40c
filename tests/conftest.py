"""Shared fixtures and independent oracles (numpy brute force in float64)."""

from __future__ import annotations

import numpy as np
import pytest

from embedcluster import _core


@pytest.fixture(params=_core.build_info()["kernels_available"])
def kernel_set(request):
    """Runs a test once per kernel set this CPU supports (generic, avx2, avx512)."""
    _core.select_kernels(request.param)
    yield request.param
    _core.select_kernels("auto")


def brute_values(db: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """float64 'smaller is closer' values: squared L2, minus dot product, or 1 - cos."""
    a, b = q.astype(np.float64), db.astype(np.float64)
    if metric == "l2":
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    dot = a @ b.T
    if metric == "ip":
        return -dot
    return 1.0 - dot / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None, :]


def brute_knn(db: np.ndarray, q: np.ndarray, k: int, metric: str, exclude_self: bool = False):
    """Exact top-k by float64 brute force; ties go to the lower index (stable sort)."""
    v = brute_values(db, q, metric)
    if exclude_self:
        v[np.arange(len(q)), np.arange(len(q))] = np.inf
    idx = np.argsort(v, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(v, idx, 1), idx


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
