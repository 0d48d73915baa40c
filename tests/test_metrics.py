"""Tests for embedcluster.metrics.

Oracles are independent of the implementation: hand-computed values, brute force
over permutations, and scikit-learn (skipped when it is not installed).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from embedcluster import metrics
from embedcluster.metrics import internal, matching
from embedcluster.metrics import (
    ari,
    cluster_accuracy,
    clustering_report,
    confusion_matrix,
    davies_bouldin,
    match_clusters,
    nmi,
    per_class_report,
    purity,
    silhouette_sampled,
    v_measure,
)


def _blobs(rng, n_per, centers, scale=0.5):
    centers = np.asarray(centers, dtype=np.float64)
    X = np.concatenate([c + scale * rng.standard_normal((n_per, centers.shape[1])) for c in centers])
    y = np.repeat(np.arange(len(centers)), n_per)
    return X, y


# --------------------------------------------------------------------------- #
# Hand-computed cases
# --------------------------------------------------------------------------- #
def test_public_api_is_exported():
    expected = {
        "confusion_matrix", "match_clusters", "cluster_accuracy", "nmi", "ari",
        "v_measure", "purity", "per_class_report", "clustering_report", "name_classes",
        "silhouette_sampled", "davies_bouldin",
    }
    assert set(metrics.__all__) == expected
    for name in expected:
        assert callable(getattr(metrics, name))


def test_permuted_labels_are_perfect():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    perm = {0: 7, 1: 3, 2: 5, 3: 1}
    pred = np.array([perm[v] for v in y])
    assert cluster_accuracy(y, pred) == 1.0
    assert nmi(y, pred) == pytest.approx(1.0, abs=1e-12)
    assert ari(y, pred) == 1.0
    assert v_measure(y, pred) == pytest.approx(1.0, abs=1e-12)
    assert purity(y, pred) == 1.0
    assert match_clusters(y, pred) == {7: 0, 3: 1, 5: 2, 1: 3}


def test_two_by_two_hand_computed():
    # contingency [[2, 1], [0, 3]]
    y = [0, 0, 0, 1, 1, 1]
    p = [0, 0, 1, 1, 1, 1]
    m, t, c = confusion_matrix(y, p)
    assert m.dtype == np.int64
    assert m.tolist() == [[2, 1], [0, 3]]
    assert t.tolist() == [0, 1] and c.tolist() == [0, 1]
    assert match_clusters(y, p) == {0: 0, 1: 1}
    assert cluster_accuracy(y, p) == pytest.approx(5 / 6)
    assert purity(y, p) == pytest.approx(5 / 6)
    # ARI: sum C(n_ij,2)=4, sum C(a_i,2)=6, sum C(b_j,2)=7, C(6,2)=15
    # expected = 6*7/15 = 2.8, max = 6.5 -> (4-2.8)/(6.5-2.8) = 12/37
    assert ari(y, p) == pytest.approx(12 / 37, abs=1e-14)
    # MI = 1/3 ln2 - 1/6 ln2 + 1/2 ln(3/2); H(true) = ln 2;
    # H(pred) = -(1/3 ln 1/3 + 2/3 ln 2/3)
    mi = math.log(2) / 6 + 0.5 * math.log(1.5)
    h_t = math.log(2)
    h_p = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert nmi(y, p) == pytest.approx(mi / ((h_t + h_p) / 2), abs=1e-14)
    assert nmi(y, p, average_method="min") == pytest.approx(mi / min(h_t, h_p), abs=1e-14)
    assert nmi(y, p, average_method="max") == pytest.approx(mi / max(h_t, h_p), abs=1e-14)
    assert nmi(y, p, average_method="geometric") == pytest.approx(mi / math.sqrt(h_t * h_p), abs=1e-14)
    h, comp = mi / h_t, mi / h_p
    assert v_measure(y, p) == pytest.approx(2 * h * comp / (h + comp), abs=1e-14)
    assert v_measure(y, p, beta=2.0) == pytest.approx(3 * h * comp / (2 * h + comp), abs=1e-14)

    rep = per_class_report(y, p)
    assert rep[0] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                      "support": 3, "matched_cluster": 0}
    assert rep[1] == {"precision": 0.75, "recall": 1.0, "f1": pytest.approx(6 / 7),
                      "support": 3, "matched_cluster": 1}


def test_rectangular_more_clusters_than_classes():
    y = [0, 0, 1, 1]
    p = [0, 1, 2, 2]
    m, t, c = confusion_matrix(y, p)
    assert m.shape == (2, 3)
    assert m.tolist() == [[1, 1, 0], [0, 0, 2]]
    mapping = match_clusters(y, p)
    assert set(mapping) == {0, 1, 2}
    assert mapping[2] == 1
    assert sorted([mapping[0], mapping[1]]) == [-1, 0]
    assert cluster_accuracy(y, p) == pytest.approx(0.75)
    assert purity(y, p) == 1.0
    rep = per_class_report(y, p)
    assert rep[1]["matched_cluster"] == 2 and rep[1]["f1"] == 1.0
    assert rep[0]["matched_cluster"] in (0, 1)
    assert rep[0]["precision"] == 1.0 and rep[0]["recall"] == 0.5


def test_rectangular_more_classes_than_clusters():
    y = [0, 0, 1, 1, 2, 2]
    p = [0, 0, 0, 0, 1, 1]
    m, _, _ = confusion_matrix(y, p)
    assert m.shape == (3, 2)
    assert cluster_accuracy(y, p) == pytest.approx(4 / 6)
    assert match_clusters(y, p)[1] == 2
    rep = per_class_report(y, p)
    unmatched = [cls for cls, r in rep.items() if r["matched_cluster"] is None]
    assert len(unmatched) == 1 and unmatched[0] in (0, 1)
    assert rep[unmatched[0]]["precision"] == rep[unmatched[0]]["recall"] == rep[unmatched[0]]["f1"] == 0.0
    assert rep[unmatched[0]]["support"] == 2


def test_noise_is_its_own_cluster():
    y = [0, 0, 0, 1, 1, 1]
    p = [-1, -1, 0, 1, 1, -1]
    m, t, c = confusion_matrix(y, p)
    assert c.tolist() == [-1, 0, 1]
    assert m.tolist() == [[2, 1, 0], [1, 0, 2]]
    # best matching: class 0 <-> noise (2), class 1 <-> cluster 1 (2)
    assert match_clusters(y, p) == {-1: 0, 0: -1, 1: 1}
    assert cluster_accuracy(y, p) == pytest.approx(4 / 6)
    rep = clustering_report(y, p)
    assert rep["n_clusters"] == 2 and rep["n_noise"] == 3 and rep["n_classes"] == 2
    # -1 is treated exactly like a relabelled ordinary cluster
    p_relabelled = [5 if v == -1 else v for v in p]
    assert nmi(y, p) == pytest.approx(nmi(y, p_relabelled), abs=1e-15)
    assert ari(y, p) == pytest.approx(ari(y, p_relabelled), abs=1e-15)
    assert purity(y, p) == purity(y, p_relabelled)


def test_single_cluster_and_single_class_edge_cases():
    assert nmi([1, 1, 1], [0, 0, 0]) == 1.0
    assert ari([1, 1, 1], [0, 0, 0]) == 1.0
    assert v_measure([1, 1, 1], [0, 0, 0]) == 1.0
    assert nmi([0, 1, 2], [0, 0, 0]) == 0.0
    # all singletons vs one class: homogeneous but not complete
    assert purity([0, 0, 0], [0, 1, 2]) == 1.0
    assert cluster_accuracy([0, 0, 0], [0, 1, 2]) == pytest.approx(1 / 3)
    assert ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-15)


def test_string_true_labels_and_input_types():
    y_str = ["cat", "cat", "dog", "dog", "eel"]
    y_int = [0, 0, 1, 1, 2]
    p = [2, 2, 0, 1, 1]
    m, t, _ = confusion_matrix(y_str, p)
    assert t.tolist() == ["cat", "dog", "eel"]
    assert m.tolist() == confusion_matrix(y_int, p)[0].tolist()
    assert cluster_accuracy(y_str, p) == cluster_accuracy(y_int, p)
    assert nmi(y_str, p) == nmi(y_int, p)
    mapping = match_clusters(y_str, p)
    assert mapping[2] == "cat" and isinstance(mapping[2], str)
    # numpy arrays, integer-valued floats and tuples are all accepted
    assert (cluster_accuracy(np.array(y_int, dtype=np.int32), np.array(p, dtype=np.float64))
            == cluster_accuracy(y_int, p))
    assert ari(tuple(y_int), np.array(p, dtype=np.uint8)) == ari(y_int, p)


class _FakeTensor:
    """Mimics a CPU torch tensor (module name starting with 'torch')."""

    __module__ = "torch.fake"

    def __init__(self, data):
        self._data = np.asarray(data)
        self.calls = []

    def detach(self):
        self.calls.append("detach")
        return self

    def cpu(self):
        self.calls.append("cpu")
        return self

    def numpy(self):
        self.calls.append("numpy")
        return self._data

    def __array__(self, *a, **k):  # pragma: no cover - must not be used
        raise AssertionError("tensor should be converted via detach().cpu().numpy()")


def test_torch_like_tensors_are_converted():
    y, p = [0, 0, 1, 1], [1, 1, 0, 0]
    ty, tp = _FakeTensor(y), _FakeTensor(p)
    assert cluster_accuracy(ty, tp) == 1.0
    assert ty.calls == ["detach", "cpu", "numpy"]
    X = np.array([[0.0, 0], [0, 1], [5, 5], [5, 6]])
    assert davies_bouldin(_FakeTensor(X), _FakeTensor(p)) == davies_bouldin(X, p)


def test_real_torch_tensors():
    torch = pytest.importorskip("torch")
    y = torch.tensor([0, 0, 1, 1, 2])
    p = torch.tensor([1, 1, 0, 0, 0])
    assert cluster_accuracy(y, p) == cluster_accuracy([0, 0, 1, 1, 2], [1, 1, 0, 0, 0])


def test_clustering_report_is_json_serialisable():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.1, -1, y)
    rep = clustering_report(y, p)
    assert set(rep) >= {"accuracy", "nmi", "ari", "v_measure", "purity", "n_clusters",
                        "n_classes", "per_class"}
    text = json.dumps(rep)
    back = json.loads(text)
    assert back["accuracy"] == rep["accuracy"]
    for key in ("accuracy", "nmi", "ari", "v_measure", "purity"):
        assert type(rep[key]) is float
    for key in ("n_clusters", "n_noise", "n_classes", "n_samples"):
        assert type(rep[key]) is int
    assert rep["accuracy"] == cluster_accuracy(y, p)
    assert rep["nmi"] == nmi(y, p)
    assert rep["ari"] == ari(y, p)
    assert rep["v_measure"] == v_measure(y, p)
    assert rep["purity"] == purity(y, p)
    assert rep["per_class"] == per_class_report(y, p)
    assert all(type(k) is int for k in rep["per_class"])
    assert rep["n_clusters"] == 4 and rep["n_classes"] == 4
    assert rep["n_noise"] == int(np.sum(p == -1))
    assert json.loads(json.dumps(clustering_report(["a", "b", "b"], [0, 1, 1])))["per_class"]["b"]["f1"] == 1.0


# --------------------------------------------------------------------------- #
# Brute-force oracle for accuracy
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("k_true,k_pred", [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (3, 5), (5, 3), (2, 6)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_matches_brute_force(k_true, k_pred, seed):
    rng = np.random.default_rng(seed * 100 + k_true * 10 + k_pred)
    n = 60
    y = rng.integers(0, k_true, n)
    # noisy copy of y so matching is non-trivial
    p = np.where(rng.random(n) < 0.5, y % k_pred, rng.integers(0, k_pred, n))
    cls, clu = np.unique(y), np.unique(p)
    best = 0
    if len(cls) <= len(clu):
        for perm in itertools.permutations(clu, len(cls)):
            best = max(best, sum(int(np.sum((y == c) & (p == q))) for c, q in zip(cls, perm)))
    else:
        for perm in itertools.permutations(cls, len(clu)):
            best = max(best, sum(int(np.sum((y == c) & (p == q))) for c, q in zip(perm, clu)))
    assert cluster_accuracy(y, p) == pytest.approx(best / n, abs=1e-15)
    # the returned matching realises that optimum
    mapping = match_clusters(y, p)
    assert sum(int(np.sum((p == q) & (y == c))) for q, c in mapping.items() if c != -1) == best
    matched = [c for c in mapping.values() if c != -1]
    assert len(matched) == len(set(matched)) == min(len(cls), len(clu))


# --------------------------------------------------------------------------- #
# scikit-learn oracle
# --------------------------------------------------------------------------- #
_SIZES = [(1, 1, 1), (5, 2, 3), (50, 3, 7), (200, 10, 10), (1000, 7, 30), (5000, 50, 20)]


@pytest.mark.parametrize("n,k_true,k_pred", _SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_information_metrics_match_sklearn(n, k_true, k_pred, seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed + n)
    y = rng.integers(0, k_true, n)
    p = rng.integers(-1, k_pred - 1, n) if k_pred > 1 else np.zeros(n, dtype=int)
    # half the time make the prediction correlated with the truth
    if seed == 1:
        p = np.where(rng.random(n) < 0.7, y % max(k_pred, 1), p)
    for method in ("min", "geometric", "arithmetic", "max"):
        assert nmi(y, p, average_method=method) == pytest.approx(
            skm.normalized_mutual_info_score(y, p, average_method=method), abs=1e-10
        )
    assert ari(y, p) == pytest.approx(skm.adjusted_rand_score(y, p), abs=1e-10)
    for beta in (0.5, 1.0, 2.0):
        assert v_measure(y, p, beta=beta) == pytest.approx(skm.v_measure_score(y, p, beta=beta), abs=1e-10)


def test_information_metrics_with_string_labels_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(11)
    y = rng.choice(np.array(["a", "bb", "c", "dd"]), 300)
    p = rng.integers(0, 5, 300)
    assert nmi(y, p) == pytest.approx(skm.normalized_mutual_info_score(y, p), abs=1e-10)
    assert ari(y, p) == pytest.approx(skm.adjusted_rand_score(y, p), abs=1e-10)
    assert v_measure(y, p) == pytest.approx(skm.v_measure_score(y, p), abs=1e-10)


def test_confusion_matrix_matches_sklearn_contingency():
    skc = pytest.importorskip("sklearn.metrics.cluster")
    rng = np.random.default_rng(5)
    y = rng.integers(0, 6, 500)
    p = rng.integers(-1, 9, 500)
    m, _, _ = confusion_matrix(y, p)
    np.testing.assert_array_equal(m, skc.contingency_matrix(y, p))


@pytest.mark.parametrize("k_true,k_pred", [(4, 4), (3, 6), (6, 3)])
def test_per_class_report_matches_sklearn(k_true, k_pred):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(k_true * 7 + k_pred)
    n = 400
    y = rng.integers(0, k_true, n)
    p = np.where(rng.random(n) < 0.6, (y + 1) % k_pred, rng.integers(0, k_pred, n))
    mapping = match_clusters(y, p)
    sentinel = -999  # unmatched clusters predict a class that does not exist
    remapped = np.array([mapping[v] if mapping[v] != -1 else sentinel for v in p])
    classes = np.unique(y)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(
        y, remapped, labels=classes, zero_division=0
    )
    rep = per_class_report(y, p)
    assert list(rep) == classes.tolist()
    for i, c in enumerate(classes):
        assert rep[c]["precision"] == pytest.approx(prec[i], abs=1e-12)
        assert rep[c]["recall"] == pytest.approx(rec[i], abs=1e-12)
        assert rep[c]["f1"] == pytest.approx(f1[i], abs=1e-12)
        assert rep[c]["support"] == sup[i]
    # accuracy is sklearn's accuracy on the remapped predictions
    assert cluster_accuracy(y, p) == pytest.approx(skm.accuracy_score(y, remapped), abs=1e-15)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine", "manhattan"])
@pytest.mark.parametrize("noise", [False, True])
def test_silhouette_matches_sklearn(metric, noise):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    X, y = _blobs(rng, 60, [[0, 0, 0], [3, 0, 1], [0, 4, 2], [1, 1, 1]], scale=0.8)
    labels = y.copy()
    if noise:
        labels[rng.random(len(labels)) < 0.1] = -1
    labels[0] = 9  # a singleton cluster (silhouette 0 by convention)
    X[5] = X[6]  # duplicate points
    expected = skm.silhouette_score(X, labels, metric=metric)
    got = silhouette_sampled(X, labels, sample_size=10_000, metric=metric)
    assert got == pytest.approx(expected, abs=1e-10)
    assert silhouette_sampled(X, labels, sample_size=None, metric=metric) == got
    assert silhouette_sampled(X, labels, sample_size=len(X), metric=metric) == got


def test_silhouette_chunking_does_not_change_result(monkeypatch):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    X, y = _blobs(rng, 50, [[0, 0], [2, 2], [4, 0]], scale=1.0)
    full = silhouette_sampled(X, y)
    monkeypatch.setattr(internal, "_CHUNK_BYTES", 8 * 7 * len(X))  # 7-row chunks
    for metric in ("euclidean", "manhattan"):
        assert silhouette_sampled(X, y, metric=metric) == pytest.approx(
            skm.silhouette_score(X, y, metric=metric), abs=1e-10
        )
    assert silhouette_sampled(X, y) == pytest.approx(full, abs=1e-12)


def test_silhouette_subsampling_is_seeded():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    X, y = _blobs(rng, 400, [[0, 0], [6, 0], [0, 6]], scale=1.0)
    a = silhouette_sampled(X, y, sample_size=150, random_state=7)
    b = silhouette_sampled(X, y, sample_size=150, random_state=7)
    c = silhouette_sampled(X, y, sample_size=150, random_state=8)
    assert a == b
    assert a != c
    full = skm.silhouette_score(X, y)
    assert abs(a - full) < 0.05 and abs(c - full) < 0.05
    # float32 input and torch-like input give the same seeded result
    assert silhouette_sampled(X.astype(np.float32), y, sample_size=150, random_state=7) == pytest.approx(a, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_davies_bouldin_matches_sklearn(seed, monkeypatch):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    X, y = _blobs(rng, 40, rng.normal(0, 3, size=(5, 8)), scale=1.0)
    y = y.copy()
    y[rng.random(len(y)) < 0.05] = -1
    expected = skm.davies_bouldin_score(X, y)
    assert davies_bouldin(X, y) == pytest.approx(expected, rel=1e-9)
    monkeypatch.setattr(internal, "_CHUNK_BYTES", 8 * 8 * 3)  # tiny chunks
    assert davies_bouldin(X, y) == pytest.approx(expected, rel=1e-9)
    assert davies_bouldin(X, y.astype(str)) == pytest.approx(expected, rel=1e-9)


def test_davies_bouldin_degenerate_is_zero():
    skm = pytest.importorskip("sklearn.metrics")
    X = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    y = [0, 0, 1, 1]
    assert davies_bouldin(X, y) == 0.0 == skm.davies_bouldin_score(X, y)


def test_davies_bouldin_hand_computed():
    # clusters {(0,0),(2,0)} and {(10,0),(10,2)}: s = 1, 1; centroid distance = sqrt(81+1)
    X = [[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 2.0]]
    assert davies_bouldin(X, [0, 0, 1, 1]) == pytest.approx(2 / math.sqrt(82), abs=1e-14)


def test_silhouette_hand_computed():
    # 1-D points: cluster A = {0, 1}, cluster B = {10, 12}
    X = np.array([[0.0], [1.0], [10.0], [12.0]])
    y = [0, 0, 1, 1]
    s = [
        (11.0 - 1.0) / 11.0,  # x=0:  a=1, b=(10+12)/2=11
        (10.0 - 1.0) / 10.0,  # x=1:  a=1, b=(9+11)/2=10
        (9.5 - 2.0) / 9.5,  # x=10: a=2, b=(10+9)/2=9.5
        (11.5 - 2.0) / 11.5,  # x=12: a=2, b=(12+11)/2=11.5
    ]
    assert silhouette_sampled(X, y) == pytest.approx(sum(s) / 4, abs=1e-14)


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def test_length_mismatch_message():
    with pytest.raises(ValueError, match=r"^labels_true has 10 samples but labels_pred has 9$"):
        cluster_accuracy(list(range(10)), list(range(9)))
    with pytest.raises(ValueError, match="X has 4 samples but labels has 3"):
        davies_bouldin(np.zeros((4, 2)), [0, 1, 1])


@pytest.mark.parametrize("func", [confusion_matrix, match_clusters, cluster_accuracy, nmi, ari,
                                  v_measure, purity, per_class_report, clustering_report])
def test_bad_labels_raise(func):
    with pytest.raises(ValueError, match="labels_true is empty"):
        func([], [])
    with pytest.raises(ValueError, match=r"labels_pred must be a 1-D .* shape \(2, 2\)"):
        func([0, 1, 0, 1], [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="labels_true must be a 1-D"):
        func(3, [0])
    with pytest.raises(ValueError, match="labels_true contains NaN .* at index 1"):
        func([0.0, np.nan, 1.0], [0, 1, 1])
    with pytest.raises(ValueError, match="labels_pred contains NaN .* at index 2"):
        func([0, 1, 1], np.array([0, 1, None], dtype=object))
    with pytest.raises(ValueError, match=r"labels_pred must contain integer-like values; found 0.5 at index 1"):
        func([0, 1], [1.0, 0.5])
    with pytest.raises(ValueError, match="labels_pred contains an infinite value at index 0"):
        func([0, 1], [np.inf, 1.0])
    with pytest.raises(TypeError, match="labels_pred must contain integer cluster ids, got string"):
        func([0, 1], ["a", "b"])
    with pytest.raises(TypeError, match="labels_true must contain .* dtype complex128"):
        func(np.array([1 + 1j, 2]), [0, 1])
    with pytest.raises(TypeError, match="labels_true must contain"):
        func(np.array([{}, 1], dtype=object), [0, 1])


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="average_method must be one of .* got 'mean'"):
        nmi([0, 1], [0, 1], average_method="mean")
    with pytest.raises(ValueError, match="beta must be a finite real number >= 0, got -1"):
        v_measure([0, 1], [0, 1], beta=-1)
    with pytest.raises(ValueError, match="beta must be"):
        v_measure([0, 1], [0, 1], beta=float("nan"))


def test_bad_label_free_inputs_raise():
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="metric must be one of .* got 'chebyshev'"):
        silhouette_sampled(X, y, metric="chebyshev")
    with pytest.raises(ValueError, match="sample_size must be a positive integer or None, got 0"):
        silhouette_sampled(X, y, sample_size=0)
    with pytest.raises(ValueError, match="sample_size must be"):
        silhouette_sampled(X, y, sample_size=2.5)
    with pytest.raises(ValueError, match=r"X must be a 2-D array .* got shape \(20,\)"):
        silhouette_sampled(X[:, 0], y)
    with pytest.raises(ValueError, match="between 2 and n_samples - 1 .* got 1"):
        silhouette_sampled(X, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="between 2 and n_samples - 1 .* got 20"):
        davies_bouldin(X, np.arange(20))
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        silhouette_sampled(Xn, y)
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        davies_bouldin(Xn, y)
    with pytest.raises(TypeError, match="X must be numeric"):
        davies_bouldin(np.array([["a", "b"], ["c", "d"], ["e", "f"]]), [0, 1, 1])
    with pytest.raises(ValueError, match="labels contains NaN"):
        davies_bouldin(X, np.where(np.arange(20) == 4, np.nan, y))


# --------------------------------------------------------------------------- #
# Bounded allocations: classes of label input (issue 11)
# --------------------------------------------------------------------------- #
def _peak_mib(fn):
    """Result of fn() and the peak of traced allocations (numpy's included) in MiB."""
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _many_labels(n_classes=30_000, per=3, moved=0.2, seed=0):
    """n_classes classes of `per` samples; clusters: a random relabelling of the classes, with a
    share of samples moved to fresh singleton clusters. The optimal matching pairs each class
    with its own cluster, or with a singleton of it when all its samples moved: the best
    accuracy is sum_c max(stayed_c, [moved_c > 0]) / n."""
    rng = np.random.default_rng(seed)
    yt = np.repeat(np.arange(n_classes), per)
    yp = rng.permutation(n_classes)[yt]
    mv = rng.random(len(yt)) < moved
    yp[mv] = n_classes + np.arange(mv.sum())
    stayed = np.bincount(yt[~mv], minlength=n_classes)
    any_moved = np.bincount(yt[mv], minlength=n_classes) > 0
    best = np.maximum(stayed, any_moved).sum() / len(yt)
    return yt, yp, best


def test_many_distinct_labels_report_is_exact_and_small():
    """30,000 classes x ~48,000 clusters: a dense table would take 11 GiB; the report works on
    the sparse one and matches scikit-learn (NMI, ARI, V-measure, purity via its contingency)
    and the known optimum of the matching, with a peak of traced memory under 64 MiB."""
    skm = pytest.importorskip("sklearn.metrics")
    yt, yp, best = _many_labels()
    rep, peak = _peak_mib(lambda: clustering_report(yt, yp))
    assert peak < 64, peak
    assert rep["accuracy"] == pytest.approx(best, abs=1e-12)
    assert rep["nmi"] == pytest.approx(skm.normalized_mutual_info_score(yt, yp), abs=1e-10)
    assert rep["ari"] == pytest.approx(skm.adjusted_rand_score(yt, yp), abs=1e-10)
    assert rep["v_measure"] == pytest.approx(skm.v_measure_score(yt, yp), abs=1e-10)
    c = skm.cluster.contingency_matrix(yt, yp, sparse=True)
    assert rep["purity"] == pytest.approx(c.max(axis=0).sum() / len(yt), abs=1e-12)
    assert rep["n_classes"] == 30_000 and len(rep["per_class"]) == 30_000
    per = rep["per_class"]
    assert sum(v["recall"] * v["support"] for v in per.values()) == pytest.approx(best * len(yt))


def test_many_distinct_labels_dense_confusion_matrix_raises_before_allocating():
    yt, yp, _ = _many_labels(n_classes=30_000, per=1, moved=0.0)
    with pytest.raises(MemoryError, match=r"30000 x 30000 int64 table.*sparse=True"):
        _peak_mib(lambda: confusion_matrix(yt, yp, memory_limit=1 << 30))
    (m, t, p), peak = _peak_mib(lambda: confusion_matrix(yt, yp, sparse=True))
    assert peak < 16 and m.shape == (30_000, 30_000) and m.nnz == 30_000
    skc = pytest.importorskip("sklearn.metrics.cluster")
    ref = skc.contingency_matrix(yt, yp, sparse=True)
    assert (m != ref).nnz == 0
    with pytest.raises(ValueError, match="memory_limit"):
        confusion_matrix([0, 1], [0, 1], memory_limit=-5)


@pytest.mark.parametrize("k_true,k_pred", [(40, 40), (25, 60), (60, 25), (1, 30), (30, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_matching_finds_the_dense_optimum(monkeypatch, k_true, k_pred, seed):
    """The sparse matching (used for large tables) reaches the accuracy of the dense
    Hungarian on every shape, with noise and string labels, and its per-class counts agree."""
    rng = np.random.default_rng(seed)
    yt = rng.integers(0, k_true, 700).astype(str)
    yp = np.where(rng.random(700) < 0.7, rng.integers(0, k_pred, 700), rng.integers(-1, 3, 700))
    dense_acc = cluster_accuracy(yt, yp)
    dense_rep = per_class_report(yt, yp)
    monkeypatch.setattr(matching, "_DENSE_MATCH_CELLS", 0)
    assert cluster_accuracy(yt, yp) == dense_acc
    rep = per_class_report(yt, yp)
    assert sum(r["recall"] * r["support"] for r in rep.values()) == \
        pytest.approx(sum(r["recall"] * r["support"] for r in dense_rep.values()))
    mapping = match_clusters(yt, yp)
    assert len({v for v in mapping.values() if v != -1}) == sum(v != -1 for v in mapping.values())


@pytest.mark.parametrize("kind", ["huge", "negative", "int64_extremes", "float_integral", "strings"])
def test_label_values_never_size_an_allocation(kind):
    """Labels are encoded by their distinct values: values like 4e9, negatives, the int64
    extremes, integral floats and strings give scikit-learn's results with small memory."""
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    base_t, base_p = rng.integers(0, 5, 400), rng.integers(0, 7, 400)
    vt = {"huge": np.array([4e9, 4e9 + 1, 7e12, 1 << 40, 2**62], np.int64),
          "negative": np.array([-5, -4_000_000_000, -1, -2**40, -7]),
          "int64_extremes": np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max]),
          "float_integral": np.array([-3.0, 4e9, 1e15, 0.0, 2.0]),
          "strings": np.array(["cat", "dog", "ant", "", "zebra"])}[kind]
    vp = np.array([2**62, -2**62, 5_000_000_000, -1, 0, 123456789012, 7])
    if kind == "float_integral":
        vp = np.array([-1e15, -1.0, 0.0, 3e9, 8.0, 1e12, 2.0])
    yt, yp = vt[base_t], vp[base_p]
    rep, peak = _peak_mib(lambda: clustering_report(yt, yp))
    assert peak < 8, peak
    assert rep["nmi"] == pytest.approx(skm.normalized_mutual_info_score(yt, yp), abs=1e-12)
    assert rep["ari"] == pytest.approx(skm.adjusted_rand_score(yt, yp), abs=1e-12)
    assert rep["v_measure"] == pytest.approx(skm.v_measure_score(yt, yp), abs=1e-12)
    assert rep["accuracy"] == cluster_accuracy(base_t, base_p)  # only the partition matters
    m, t, p = confusion_matrix(yt, yp)
    np.testing.assert_array_equal(m, skm.cluster.contingency_matrix(yt, yp))
    assert m.shape == (5, 7)
    assert rep["n_noise"] == int((yp == -1).sum())


def test_davies_bouldin_with_many_clusters_keeps_memory_bounded():
    """k close to n: the k x k centroid distances (800 MB here) are never stored."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, 2))
    labels = np.repeat(np.arange(10_000), 2)
    value, peak = _peak_mib(lambda: davies_bouldin(X, labels))
    assert peak < 100, peak
    # the same value as the unblocked definition on a subset that fits (scikit-learn)
    skm = pytest.importorskip("sklearn.metrics")
    assert davies_bouldin(X[:2000], labels[:2000]) == pytest.approx(
        skm.davies_bouldin_score(X[:2000], labels[:2000]), rel=1e-10)
    assert value > 0
    with pytest.raises(MemoryError, match="davies_bouldin.*memory_limit"):
        davies_bouldin(X, labels, memory_limit=1000)
    with pytest.raises(MemoryError, match="sample_size"):
        silhouette_sampled(X, labels, sample_size=None, memory_limit=1000)


def test_clustering_report_under_an_address_space_limit(tmp_path):
    """The 30,000-label report in a subprocess whose address space allows only ~1.5 GiB more
    than it holds after the imports: a dense table (11 GiB) would fail with MemoryError."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os, resource, sys
        import numpy as np
        import scipy.sparse.csgraph, scipy.optimize
        from embedcluster import metrics
        sys.path.insert(0, sys.argv[1])
        from test_metrics import _many_labels
        yt, yp, best = _many_labels()
        used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (used + (3 << 29), resource.getrlimit(resource.RLIMIT_AS)[1]))
        rep = metrics.clustering_report(yt, yp)
        assert abs(rep["accuracy"] - best) < 1e-12, (rep["accuracy"], best)
        try:
            metrics.confusion_matrix(yt, yp)
        except MemoryError as e:
            assert "sparse=True" in str(e), e
        else:
            raise SystemExit("no MemoryError")
        print("ok")
    """)
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    r = subprocess.run([sys.executable, "-c", script, tests_dir], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
