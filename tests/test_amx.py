"""The AMX kernel set (issue 14): its tile loops through the scalar model of the AMX
instructions ("amx-model", every machine) against a numpy fp64 oracle and against the engine's
fp32 results; the real AMX set only where the CPU has AMX."""
from __future__ import annotations

import numpy as np
import pytest

import embedcluster as ec
from embedcluster import _core

from conftest import HAS_AMX, gaussian_mixture

needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX (lscpu: amx_tile)")


def bf16_nearest(x: np.ndarray) -> np.ndarray:
    """Each float32 rounded to the nearest bf16 (ties to an even last bit), found by comparing
    the two bf16 neighbours in fp64 (finite inputs away from the overflow threshold)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    below = (u & 0xFFFF0000).astype(np.uint32).view(np.float32).astype(np.float64)
    above = ((u & 0xFFFF0000) + 0x10000).astype(np.uint32).view(np.float32).astype(np.float64)
    v = x.astype(np.float64)
    d_below, d_above = np.abs(v - below), np.abs(v - above)
    below_even = ((u >> 16) & 1) == 0
    take_above = (d_above < d_below) | ((d_above == d_below) & ~below_even)
    return np.where(take_above, above, below).astype(np.float32)


def accumulation_bound(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """fp32 accumulation of d products in any order (Higham 3.5, as engine.hpp's rel_err):
    (4 d + 32) 2^-24 sum_k |a_k b_k| for every pair of rows."""
    d = a.shape[1]
    return (4 * d + 32) * 2.0**-24 * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)).T)


SHAPES = [(1, 1, 1), (5, 3, 7), (33, 40, 31), (32, 32, 32), (40, 70, 33), (64, 33, 384), (17, 9, 1100)]


@pytest.mark.parametrize("m,n,d", SHAPES)
def test_model_product_against_fp64_oracle(m, n, d):
    rng = np.random.default_rng(m * 1000 + n * 10 + d)
    a = rng.standard_normal((m, d)).astype(np.float32)
    b = rng.standard_normal((n, d)).astype(np.float32)
    c = _core._kernel_product("amx-model", a, b)
    assert c.shape == (m, n) and c.dtype == np.float32
    # Against the products of the bf16-rounded inputs: only the fp32 accumulation may differ.
    ar, br = bf16_nearest(a), bf16_nearest(b)
    exact_rounded = ar.astype(np.float64) @ br.astype(np.float64).T
    assert np.all(np.abs(c - exact_rounded) <= accumulation_bound(ar, br))
    # Against the exact products of the inputs: the engine's bound with input_rel = 2^-8.
    exact = a.astype(np.float64) @ b.astype(np.float64).T
    norms = np.linalg.norm(a.astype(np.float64), axis=1)[:, None] * np.linalg.norm(b.astype(np.float64), axis=1)
    assert np.all(np.abs(c - exact) <= ((4 * d + 32) * 2.0**-24 + 2.02 * 2.0**-8) * norms)


@pytest.mark.parametrize("m,n,d", SHAPES)
def test_model_gathered_rows_equal_packed(m, n, d):
    rng = np.random.default_rng(d)
    a = rng.standard_normal((m, d)).astype(np.float32)
    b = rng.standard_normal((n, d)).astype(np.float32)
    packed = _core._kernel_product("amx-model", a, b)
    gathered = _core._kernel_product("amx-model", a, b, gathered=True)
    np.testing.assert_array_equal(packed.view(np.uint32), gathered.view(np.uint32))


def test_model_flushes_denormals_like_tdpbf16ps():
    # Input denormals count as zero (DAZ); a product below the fp32 normal range is flushed (FTZ).
    tiny = np.float32(2.0**-130)  # a bf16 denormal
    assert _core._kernel_product("amx-model", np.array([[tiny]]), np.array([[np.float32(4.0)]]))[0, 0] == 0.0
    small = np.float32(2.0**-70)
    assert _core._kernel_product("amx-model", np.array([[small]]), np.array([[small]]))[0, 0] == 0.0
    normal = np.float32(2.0**-60)
    assert _core._kernel_product("amx-model", np.array([[normal]]), np.array([[normal]]))[0, 0] == np.float32(2.0**-120)


def _engine_results(X: np.ndarray, name: str):
    _core.select_kernels(name)
    try:
        assert _core.active_kernels() == name
        km = ec.KMeans(12, init="k-means||", random_state=0, n_threads=2).fit(X)
        db = ec.DBSCAN(eps=0.25, min_samples=6).fit(X)
        d, i = ec.NearestNeighbors(n_neighbors=8).fit(X).kneighbors()
        dc, ic = ec.NearestNeighbors(n_neighbors=5, metric="cosine").fit(X).kneighbors(X[:200])
    finally:
        _core.select_kernels("auto")
    return (km.cluster_centers_, km.labels_, km.inertia_, db.labels_, i, d, ic, dc)


def _assert_engine_identical(name: str):
    X, _ = gaussian_mixture(1500, 40, 12, 0.05, seed=4, unit=True)
    X = np.vstack([X, X[:40]])  # exact duplicates: ties everywhere
    ref = _engine_results(X, "generic")
    got = _engine_results(X, name)
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_engine_through_the_model_is_bit_identical_to_fp32():
    _assert_engine_identical("amx-model")


def test_amx_is_never_chosen_automatically():
    info = _core.build_info()
    assert "amx" not in info["kernels_available"] and "amx-model" not in info["kernels_available"]
    _core.select_kernels("auto")
    assert _core.active_kernels() not in ("amx", "amx-model")


@pytest.mark.skipif(HAS_AMX, reason="checks the error on a CPU without AMX")
def test_forcing_amx_without_amx_is_a_clear_error():
    with pytest.raises(ValueError, match="kernel set 'amx', which this CPU or build cannot run.*no AMX"):
        _core.select_kernels("amx")
    with pytest.raises(RuntimeError, match="no AMX"):
        _core._amx_tile_peak(10)
    assert _core.active_kernels() != "amx"


@needs_amx
@pytest.mark.parametrize("m,n,d", SHAPES)
def test_amx_product_within_the_bound_of_the_model(m, n, d):
    rng = np.random.default_rng(7 + d)
    a = rng.standard_normal((m, d)).astype(np.float32)
    b = rng.standard_normal((n, d)).astype(np.float32)
    c = _core._kernel_product("amx", a, b)
    ar, br = bf16_nearest(a), bf16_nearest(b)
    exact_rounded = ar.astype(np.float64) @ br.astype(np.float64).T
    assert np.all(np.abs(c - exact_rounded) <= accumulation_bound(ar, br))
    gathered = _core._kernel_product("amx", a, b, gathered=True)
    np.testing.assert_array_equal(c.view(np.uint32), gathered.view(np.uint32))


@needs_amx
def test_engine_through_amx_is_bit_identical_to_fp32():
    _assert_engine_identical("amx")


@needs_amx
def test_amx_tile_peak_runs():
    assert _core._amx_tile_peak(1000) > 0.0


def test_a_set_used_only_when_named_is_self_tested_when_named():
    _core.select_kernels("amx-model")
    try:
        tests = {t["name"]: t for t in _core.kernel_choice()["self_tests"]}
    finally:
        _core.select_kernels("auto")
    assert tests["amx-model"]["passed"] is True and 0.0 <= tests["amx-model"]["worst_error_ratio"] < 1.0
    assert "amx-model" not in _core.build_info()["kernels_available"]
