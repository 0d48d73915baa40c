"""Bad input gets a clear error, never a crash or silent garbage."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import embedcluster as ec
from embedcluster import _core

ESTIMATORS = [
    lambda: ec.KMeans(2, random_state=0),
    lambda: ec.DBSCAN(eps=0.5, min_samples=2),
    lambda: ec.NearestNeighbors(n_neighbors=2),
]
X_OK = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)


@pytest.mark.parametrize("make", ESTIMATORS)
@pytest.mark.parametrize("bad,exc,match", [
    (np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]]), ValueError, "NaN or infinity"),
    (np.array([[1.0, np.inf], [0.0, 1.0], [2.0, 2.0]]), ValueError, "NaN or infinity"),
    (np.zeros((0, 3)), ValueError, "0 sample"),
    (np.zeros((5, 0)), ValueError, "0 feature"),
    (np.zeros(5), ValueError, "Expected 2D array"),
    (np.zeros((2, 2, 2)), ValueError, "Expected 2D array"),
    (np.ones((4, 2), dtype=complex), ValueError, "Complex data not supported"),
    (np.ones((4, 2), dtype=bool), TypeError, "boolean"),
    (np.array([["a", "b"], ["c", "d"]], dtype=object), TypeError, "dtype"),
    (np.array([[1e300, 0.0], [0.0, 1.0], [1.0, 1.0]]), ValueError, "float32"),
])
def test_bad_input_raises_clear_error(make, bad, exc, match):
    with pytest.raises(exc, match=match):
        make().fit(bad)


def test_core_rejects_bad_arrays_with_advice():
    x64 = np.ones((4, 3))
    with pytest.raises(ValueError, match="float32.*astype"):
        _core.knn_search(x64, x64, 1)
    xf = np.asfortranarray(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="ascontiguousarray"):
        _core.kmeans_fit(xf, 2)
    with pytest.raises(ValueError, match="2-D"):
        _core.dbscan_fit(np.ones(4, np.float32), 0.5)
    bad = np.ones((4, 3), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2, column 1"):
        _core.kmeans_fit(bad, 2)
    with pytest.raises(ValueError, match="features"):
        _core.knn_search(np.ones((4, 3), np.float32), np.ones((2, 4), np.float32), 1)
    with pytest.raises(ValueError, match="unknown metric"):
        _core.knn_search(np.ones((4, 3), np.float32), np.ones((2, 3), np.float32), 1, "manhattan")


def test_kmeans_parameter_errors():
    with pytest.raises(ValueError, match="n_samples=5 should be >= n_clusters=10"):
        ec.KMeans(10).fit(X_OK[:5])
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="n_clusters"):
            ec.KMeans(bad).fit(X_OK)
    with pytest.raises(ValueError, match="init"):
        ec.KMeans(2, init="nope").fit(X_OK)
    with pytest.raises(ValueError, match="shape"):
        ec.KMeans(2, init=np.zeros((3, 3), np.float32)).fit(X_OK)
    with pytest.raises(ValueError, match="sample_weight"):
        ec.KMeans(2).fit(X_OK, sample_weight=-np.ones(20))
    with pytest.raises(ValueError, match="metric"):
        ec.KMeans(2, metric="manhattan").fit(X_OK)
    with pytest.raises(ValueError, match="zero norm"):
        ec.KMeans(2, metric="cosine").fit(np.vstack([X_OK, np.zeros((1, 3), np.float32)]))


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf")])
def test_dbscan_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match="eps"):
        ec.DBSCAN(eps=eps).fit(X_OK)


def test_dbscan_min_samples_and_metric():
    with pytest.raises(ValueError, match="min_samples"):
        ec.DBSCAN(min_samples=0).fit(X_OK)
    with pytest.raises(ValueError, match="metric"):
        ec.DBSCAN(metric="inner_product").fit(X_OK)


def test_kneighbors_errors():
    nn = ec.NearestNeighbors(n_neighbors=3).fit(X_OK)
    with pytest.raises(ValueError, match="n_neighbors"):
        nn.kneighbors(n_neighbors=0)
    with pytest.raises(ValueError, match="n_samples_fit"):
        nn.kneighbors(n_neighbors=20)  # the self-join leaves 19
    with pytest.raises(ValueError, match="X has 4 features, but NearestNeighbors is expecting 3"):
        nn.kneighbors(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="radius"):
        nn.radius_neighbors(radius=-1.0)


@pytest.mark.parametrize("make", ESTIMATORS[:2])
def test_predict_checks_feature_count(make):
    est = make().fit(X_OK)
    with pytest.raises(ValueError, match="X has 5 features"):
        est.predict(np.ones((3, 5), np.float32))


def test_float64_int_fortran_and_readonly_input_are_converted_visibly(caplog):
    X64 = X_OK.astype(np.float64)
    with caplog.at_level(logging.INFO, logger="embedcluster"):
        a = ec.KMeans(2, random_state=0).fit(X64)
    assert "converting float64 to float32" in caplog.text
    b = ec.KMeans(2, random_state=0).fit(X_OK)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    Xi = (X_OK * 10).astype(np.int64)
    np.testing.assert_array_equal(
        ec.KMeans(2, random_state=0).fit(Xi).labels_, ec.KMeans(2, random_state=0).fit(Xi.astype(np.float32)).labels_
    )
    XF = np.asfortranarray(X_OK)
    np.testing.assert_array_equal(ec.KMeans(2, random_state=0).fit(XF).labels_, b.labels_)
    ro = X_OK.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(ec.KMeans(2, random_state=0).fit(ro).labels_, b.labels_)


def test_non_contiguous_view_is_handled():
    big = np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32)
    view = big[::2, ::2]
    nn = ec.NearestNeighbors(n_neighbors=2).fit(view)
    ref = ec.NearestNeighbors(n_neighbors=2).fit(np.ascontiguousarray(view))
    np.testing.assert_array_equal(nn.kneighbors()[1], ref.kneighbors()[1])


def test_degenerate_data_all_identical_points():
    X = np.ones((30, 4), np.float32)
    with pytest.warns(Warning):
        km = ec.KMeans(3, random_state=0).fit(X)
    assert km.inertia_ == pytest.approx(0.0, abs=1e-6)
    db = ec.DBSCAN(eps=0.1, min_samples=5).fit(X)
    assert (db.labels_ == 0).all()
    d, i = ec.NearestNeighbors(n_neighbors=3).fit(X).kneighbors()
    assert (d == 0).all()
    np.testing.assert_array_equal(i[0], [1, 2, 3])  # ties go to the lower index


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        ec.KMeans(2, backend="gpu").fit(X_OK)


@pytest.mark.parametrize("make", ESTIMATORS)
def test_values_too_large_for_float_tiles_are_rejected(make):
    X = X_OK.copy()
    X[3, 1] = 3e38  # a valid float32, but its square overflows float32 arithmetic
    with pytest.raises(ValueError, match="too large for float32"):
        est = make().fit(X)
        if isinstance(est, ec.NearestNeighbors):
            est.kneighbors()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("call", ["knn", "radius", "radius_count", "dbscan", "kmeans", "assign"])
def test_direct_core_calls_name_nan_or_infinity(call, bad):
    """The engine's own check (the bindings only convert types) names the cause and the row."""
    from embedcluster import _core

    X = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    X[7, 2] = bad
    calls = {
        "knn": lambda: _core.knn_search(X, X, 3),
        "radius": lambda: _core.radius_search(X, X, 1.0),
        "radius_count": lambda: _core.radius_count(X, X, 1.0),
        "dbscan": lambda: _core.dbscan_fit(X, 1.0),
        "kmeans": lambda: _core.kmeans_fit(X, 3),
        "assign": lambda: _core.kmeans_assign(X[:3] if np.isfinite(X[:3]).all() else X[10:13], X),
    }
    with pytest.raises(ValueError, match="NaN or infinity"):
        calls[call]()


# --------------------------------------------------------------------------- issue 16: messages per interface, devices
def test_too_many_clusters_names_the_keyword_in_python_and_the_flag_in_the_cli():
    from embedcluster._interface import command_line

    with pytest.raises(ValueError, match=r"n_samples=20 should be >= n_clusters=30"):
        ec.KMeans(30).fit(X_OK)
    with command_line(), pytest.raises(ValueError, match=r"--n-clusters 30 .* 20 points; choose --n-clusters 20"):
        ec.KMeans(30).fit(X_OK)


def test_interface_is_python_outside_the_command_line():
    from embedcluster._interface import advice, command_line, in_command_line

    assert not in_command_line() and advice("kw=", "--flag") == "kw="
    with command_line():
        assert in_command_line() and advice("kw=", "--flag") == "--flag"
    assert not in_command_line()


def test_transfer_clustering_takes_a_device_keyword():
    pytest.importorskip("torch")
    from embedcluster.transfer.pipeline import TransferClustering

    tc = TransferClustering(n_clusters=2, probe=False, device="cpu", progress=False).fit(X_OK)
    assert tc.device == "cpu" and tc.labels_.shape == (20,)
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        TransferClustering(device="gpu0")


def test_cuda_device_without_cuda_is_one_clear_valueerror():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this torch sees a GPU")
    from embedcluster._interface import command_line
    from embedcluster.encoders import Encoder, resolve_device
    from embedcluster.transfer.pipeline import TransferClustering

    for call in (lambda: resolve_device("cuda"), lambda: resolve_device("cuda:1"),
                 lambda: TransferClustering(device="cuda"),
                 lambda: Encoder(torch.nn.Linear(3, 2), device="cuda")):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "device='cuda" in msg and "device='cpu'" in msg, msg
        assert ("without CUDA" in msg) == (torch.version.cuda is None), msg
    with command_line(), pytest.raises(ValueError, match="--device cuda asks for a GPU.*--device cpu"):
        resolve_device("cuda")
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") == resolve_device(None) == "cpu"


def test_cuda_index_beyond_the_gpus_is_refused():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from embedcluster.encoders import resolve_device

    n = torch.cuda.device_count()
    assert resolve_device(f"cuda:{n - 1}") == f"cuda:{n - 1}"
    with pytest.raises(ValueError, match=f"GPU {n}, but torch sees {n}"):
        resolve_device(f"cuda:{n}")


def test_selection_candidates_take_the_device():
    torch = pytest.importorskip("torch")
    from embedcluster.transfer.select import candidate_representations

    X = np.random.default_rng(0).random((10, 4, 4)).astype(np.float32)
    out = candidate_representations(X, torch.nn.Flatten(), device="cpu")
    np.testing.assert_allclose(out["Flatten(start_dim=1, end_dim=-1)"][0], X.reshape(10, -1))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' asks for a GPU"):
            candidate_representations(X, torch.nn.Flatten(), device="cuda")
