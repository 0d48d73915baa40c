"""Clustering heads on frozen embeddings (embedcluster.ClusterHead): separation, determinism,
prediction, bad input, save/load, and the pipeline / CLI wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.metrics import adjusted_rand_score  # noqa: E402

import embedcluster as ec  # noqa: E402
from embedcluster.cli import main  # noqa: E402
from embedcluster.pipeline import TransferClustering  # noqa: E402


def blobs(n_per: int = 60, k: int = 4, d: int = 16, seed: int = 0):
    """Clusters around orthogonal directions: far apart in the cosine geometry the head uses."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    centers = 5.0 * np.eye(d)[:k]
    X = centers[y] + rng.normal(scale=0.4, size=(len(y), d))
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


FAST = dict(n_neighbors=8, epochs=15, self_label_epochs=3)


@pytest.mark.parametrize("method", ["scan", "temi"])
@pytest.mark.parametrize("self_label", [False, True])
def test_well_separated_blobs_are_recovered_exactly(method, self_label):
    X, y = blobs()
    head = ec.ClusterHead(4, method, self_label=self_label, random_state=0, **FAST).fit(X)
    # Oracle: the generating labels; ARI 1.0 <=> a perfect match up to renaming (ACC 1.0).
    assert adjusted_rand_score(y, head.labels_) == 1.0
    assert head.labels_.shape == (len(X),) and head.labels_.dtype == np.int64


@pytest.fixture(scope="module", params=["scan", "temi"])
def fitted(request):
    X, _ = blobs(seed=1)
    return X, ec.ClusterHead(4, request.param, random_state=3, **FAST).fit(X)


def test_seeded_fit_is_deterministic_and_predict_matches_labels(fitted):
    X, a = fitted
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    b = ec.ClusterHead(4, a.method, random_state=3, **FAST).fit(X)
    assert torch.equal(torch.rand(3), expected)  # the global torch random state is left alone
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    P = a.predict_proba(X)
    assert P.shape == (len(X), 4) and np.allclose(P.sum(1), 1.0, atol=1e-5)
    # the neighbours are the exact cosine ones (oracle: numpy brute force)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Xn @ Xn.T
    np.fill_diagonal(S, -np.inf)
    top = np.sort(np.argsort(-S, axis=1, kind="stable")[:, :FAST["n_neighbors"]], axis=1)
    np.testing.assert_array_equal(np.sort(a.neighbors_, axis=1), top)


@pytest.mark.parametrize("kw,X,word", [
    ({"n_neighbors": 30}, np.eye(10, 5, dtype=np.float32) + 1, "n_neighbors=30"),
    ({"n_clusters": 1}, None, "n_clusters"),
    ({"method": "kmeans"}, None, "method"),
    ({"confidence": 1.0}, None, "confidence"),
    ({"epochs": 0}, None, "epochs"),
    ({}, "nan", "NaN"),
    ({}, "zero", "all-zero"),
    ({}, np.ones(5, np.float32), "2-D"),
])
def test_bad_input_gives_clear_errors(kw, X, word):
    Xb, _ = blobs()
    if isinstance(X, str):
        Xb = Xb.copy()
        Xb[7] = np.nan if X == "nan" else 0.0
        X = Xb
    elif X is None:
        X = Xb
    params = {"n_clusters": 4, **FAST, **kw}
    with pytest.raises(ValueError, match=word):
        ec.ClusterHead(**params).fit(X)


def test_predict_before_fit_and_wrong_width(fitted):
    X, head = fitted
    with pytest.raises(ValueError, match="not fitted"):
        ec.ClusterHead(4).predict(X)
    with pytest.raises(ValueError, match="16"):
        head.predict(X[:, :8])


def test_save_load_round_trip(tmp_path, fitted):
    X, head = fitted
    head.save(tmp_path / "head")
    back = ec.ClusterHead.load(tmp_path / "head")
    np.testing.assert_array_equal(back.predict_proba(X), head.predict_proba(X))
    assert back.get_params() == head.get_params()
    # a damaged array is refused
    snap = next(p for p in (tmp_path / "head").rglob("head.safetensors"))
    data = bytearray(snap.read_bytes())
    data[-3] ^= 0x55
    snap.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        ec.ClusterHead.load(tmp_path / "head")


def test_pipeline_with_a_head_trains_the_probe_on_its_clusters_and_saves_it(tmp_path):
    X, y = blobs()
    tc = TransferClustering(clusterer=ec.ClusterHead(4, "scan", random_state=0, **FAST), seed=0)
    tc.fit(None, Z=X)
    assert adjusted_rand_score(y, tc.labels_) == 1.0
    assert tc.probe_ is not None and adjusted_rand_score(y, tc.predict(Z=X)) == 1.0
    tc.save(tmp_path / "p")
    back = TransferClustering.load(tmp_path / "p")
    np.testing.assert_array_equal(back.predict(Z=X), tc.predict(Z=X))
    assert isinstance(back.clusterer, ec.ClusterHead)
    np.testing.assert_array_equal(back.clusterer.predict_proba(X), tc.clusterer_.predict_proba(X))


def test_pipeline_by_name_and_without_probe_predicts_with_the_head(tmp_path):
    X, y = blobs()
    tc = TransferClustering(clusterer="temi", n_clusters=4, probe=False, seed=0)
    tc.fit(None, Z=X)
    assert isinstance(tc.clusterer_, ec.ClusterHead) and tc.clusterer_.method == "temi"
    assert adjusted_rand_score(y, tc.labels_) == 1.0
    np.testing.assert_array_equal(tc.predict(Z=X), tc.labels_)
    tc.save(tmp_path / "p")
    np.testing.assert_array_equal(TransferClustering.load(tmp_path / "p").predict(Z=X), tc.labels_)
    with pytest.raises(ValueError, match="clusterer='nope'"):
        TransferClustering(clusterer="nope").fit(None, Z=X)


def test_cli_cluster_with_head(tmp_path, capsys):
    X, y = blobs()
    np.save(tmp_path / "z.npy", X)
    code = main(["cluster", str(tmp_path / "z.npy"), "--head", "scan", "--n-clusters", "4", "--n-neighbors", "8",
                 "--out", str(tmp_path / "l.npy"), "--json"])
    assert code == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert res["head"] == "scan" and res["n_clusters"] == 4
    assert adjusted_rand_score(y, np.load(tmp_path / "l.npy")) == 1.0


@pytest.mark.parametrize("extra,word", [(["--algorithm", "dbscan"], "dbscan"), (["--metric", "l2"], "l2"),
                                        (["--n-clusters", "1"], "n-clusters")])
def test_cli_cluster_head_refuses_what_it_cannot_honour(tmp_path, capsys, extra, word):
    X, _ = blobs()
    np.save(tmp_path / "z.npy", X)
    code = main(["cluster", str(tmp_path / "z.npy"), "--head", "temi", "--out", str(tmp_path / "l.npy"), *extra])
    assert code != 0 and word in capsys.readouterr().err
    assert not (tmp_path / "l.npy").exists()


def test_cli_run_with_head(tmp_path, capsys):
    X, y = blobs()
    np.save(tmp_path / "z.npy", X)
    out = tmp_path / "o"
    code = main(["run", str(tmp_path / "z.npy"), "--head", "scan", "--n-clusters", "4", "--no-report", "--out",
                 str(out), "--no-progress", "--json"])
    assert code == 0, capsys.readouterr().err
    saved = TransferClustering.load(out / "pipeline")
    assert isinstance(saved.clusterer, ec.ClusterHead) and saved.clusterer.method == "scan"
    assert adjusted_rand_score(y, saved.predict(Z=X)) == 1.0
