"""Encoders built from configs, pretraining, checkpoints and linear probes (layer 5).

Oracles: scikit-learn (LogisticRegression, KMeans, digits), numpy brute force for margins, and
the safetensors file layout read byte by byte. Everything is seeded and small (CPU, seconds).
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="pretraining and probes need torch")
pytest.importorskip("safetensors", reason="checkpoints need safetensors")

from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from sklearn.cluster import KMeans as SkKMeans  # noqa: E402
from sklearn.datasets import load_digits, make_blobs  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from embedcluster.models import model_from_config, normalize_config, with_layer  # noqa: E402
from embedcluster.encoders import load_encoder, save_checkpoint  # noqa: E402
from embedcluster.pretrain import encode, pretrain_self_supervised, pretrain_supervised  # noqa: E402
from embedcluster.probe import (  # noqa: E402
    LinearProbe,
    center_margins,
    linear_evaluation,
    select_confident,
    self_label,
)

MLP = {"arch": "mlp", "in_shape": [64], "hidden": [128, 64], "embed_dim": 32}
CNN_DIGITS = {"arch": "cnn", "in_shape": [1, 8, 8], "channels": [8, 16], "embed_dim": 16}


# These models are tiny: one intra-op thread (see conftest), which also keeps runs comparable.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


@pytest.fixture(scope="module")
def supervised_0_4(digits):
    X, y = digits
    keep = y < 5
    enc, hist = pretrain_supervised(X[keep], y[keep], MLP, epochs=8, batch_size=64, seed=0,
                                    progress=False)
    return enc, hist, X[keep], y[keep]


def hungarian_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    k = int(max(y.max(), pred.max())) + 1
    m = np.zeros((k, k))
    np.add.at(m, (pred, y), 1)
    r, c = linear_sum_assignment(-m)
    return float(m[r, c].sum() / len(y))


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("config, x_shape", [
    ({"arch": "mlp", "in_shape": [64], "hidden": [256, 128], "embed_dim": 64}, (5, 64)),
    ({"arch": "mlp", "in_shape": [64], "hidden": [256, 128], "embed_dim": 64}, (5, 8, 8)),
    ({"arch": "cnn", "in_shape": [1, 28, 28], "channels": [32, 64], "embed_dim": 128}, (5, 1, 28, 28)),
    ({"arch": "cnn", "in_shape": [1, 28, 28], "channels": [32, 64], "embed_dim": 128}, (5, 28, 28)),
    ({"arch": "cnn", "in_shape": [3, 9, 7], "channels": [4, 4, 4], "hidden": [10], "embed_dim": 6},
     (5, 3, 9, 7)),
])
def test_model_shapes_and_layers(config, x_shape):
    torch.manual_seed(0)
    model = model_from_config(config).eval()
    x = torch.rand(x_shape)
    z = model(x)
    assert z.shape == (5, config["embed_dim"]) and z.dtype == torch.float32
    assert model.layer_names[-1] == "embedding"
    # every named layer, 'penultimate' and 'concat' report the width they return
    for layer in [*model.layer_names, "penultimate", "concat"]:
        f = model.features(x, layer)
        assert f.shape == (5, model.layer_dim(layer)), layer
    assert torch.equal(model.features(x, "embedding"), z)
    assert torch.equal(model.features(x, "penultimate"), model.features(x, model.layer_names[-2]))
    # concat: each part L2-normalised and scaled by 1/sqrt(parts) -> rows of unit norm
    norms = model.features(x, "concat").norm(dim=1)
    assert torch.allclose(norms, torch.ones(5), atol=1e-5)
    assert torch.equal(with_layer(model, "penultimate")(x), model.features(x, "penultimate"))


def test_model_config_errors():
    with pytest.raises(ValueError, match="arch='resnet'"):
        model_from_config({"arch": "resnet", "in_shape": [3, 32, 32]})
    with pytest.raises(ValueError, match="in_shape"):
        model_from_config({"arch": "mlp", "hidden": [8]})
    with pytest.raises(ValueError, match="unknown field"):
        model_from_config({"arch": "mlp", "in_shape": [4], "channels": [8]})
    model = model_from_config({"arch": "mlp", "in_shape": [64], "hidden": [], "embed_dim": 8})
    with pytest.raises(ValueError, match="does not match in_shape"):
        model(torch.zeros(2, 63))
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.zeros(2, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="penultimate"):
        model.features(torch.zeros(2, 64), "penultimate")
    with pytest.raises(ValueError, match="unknown layer"):
        model.features(torch.zeros(2, 64), "conv0")
    # the complete config fills defaults, so checkpoints do not depend on later defaults
    full = normalize_config({"arch": "cnn", "in_shape": [28, 28]})
    assert full["in_shape"] == [1, 28, 28] and full["channels"] and full["norm"] == "batch"


# ----------------------------------------------------------------------------- pretraining
def test_supervised_pretraining_gives_separable_embeddings(supervised_0_4):
    enc, hist, X, y = supervised_0_4
    assert not enc.training and hist["epochs_run"] == 8 and not hist["stopped_early"]
    assert hist["loss"][-1] < hist["loss"][0]
    assert list(hist["classes"]) == [0, 1, 2, 3, 4]
    Z = encode(enc, X)
    assert Z.shape == (len(X), MLP["embed_dim"]) and Z.dtype == np.float32
    assert LinearProbe(epochs=30).fit(Z, y).score(Z, y) > 0.9
    # an earlier layer is exposed too, for transfer beyond the source classes
    assert encode(enc, X, layer="penultimate").shape == (len(X), MLP["hidden"][-1])


def test_supervised_pretraining_is_reproducible(digits):
    X, y = digits
    X, y = X[:300], y[:300]
    rng_before = torch.random.get_rng_state()
    kw = dict(epochs=2, batch_size=32, progress=False)
    a, _ = pretrain_supervised(X, y, MLP, seed=3, **kw)
    b, _ = pretrain_supervised(X, y, MLP, seed=3, **kw)
    c, _ = pretrain_supervised(X, y, MLP, seed=4, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # the caller's global RNG is left as it was
    assert torch.equal(torch.random.get_rng_state(), rng_before)


@pytest.mark.parametrize("method, config, image", [
    ("autoencoder", MLP, False),
    ("contrastive", MLP, False),
    ("contrastive", CNN_DIGITS, True),
    ("autoencoder", CNN_DIGITS, True),
])
def test_self_supervised_loss_decreases(digits, method, config, image):
    X, _ = digits
    X = X[:600]
    if image:  # uint8 (n, H, W) images: scaled to [0, 1], one channel added
        X = np.round(X * 255).astype(np.uint8).reshape(-1, 8, 8)
    enc, hist = pretrain_self_supervised(X, config, method, epochs=4, batch_size=128, seed=0,
                                         progress=False)
    assert hist["epochs_run"] == 4 and len(hist["loss"]) == 4
    assert all(math.isfinite(v) for v in hist["loss"])
    assert hist["loss"][-1] < hist["loss"][0]
    assert encode(enc, X).shape == (600, config["embed_dim"])


def test_contrastive_image_augmentation_on_flat_input_and_time_budget(digits):
    X, _ = digits
    enc, hist = pretrain_self_supervised(X[:200], MLP, "contrastive", image_shape=(8, 8), epochs=50,
                                         time_budget_s=1e-9, progress=False)
    # the budget is checked after each batch: one batch ran, then training stopped
    assert hist["stopped_early"] and hist["epochs_run"] == 1 and len(hist["loss"]) == 1
    with pytest.raises(ValueError, match="image_shape"):
        pretrain_self_supervised(X[:20], MLP, "contrastive", image_shape=(7, 7), progress=False)
    with pytest.raises(ValueError, match="method"):
        pretrain_self_supervised(X[:20], MLP, "byol", progress=False)
    with pytest.raises(ValueError, match="augment"):
        pretrain_self_supervised(X[:20], MLP, "contrastive", augment={"blur": 1}, progress=False)


# ----------------------------------------------------------------------------- checkpoints
def _safetensors_layout_is_complete(path: str) -> bool:
    """True when the file is exactly an 8-byte header length, a JSON header and the tensor
    bytes it declares: nothing else (no pickle) can hide in it."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return len(blob) == 8 + n + max(ends)


def test_checkpoint_roundtrip(tmp_path, digits):
    """A pretrained encoder saved with embedcluster.encoders.save_checkpoint comes back from
    model_from_config + the safetensors file (strict) with identical outputs."""
    X, y = digits
    config = {"arch": "cnn", "in_shape": [1, 8, 8], "channels": [4, 8], "hidden": [12], "embed_dim": 6}
    enc, _ = pretrain_supervised(X[:200], y[:200], config, epochs=1, batch_size=50, progress=False)
    assert enc.config == normalize_config(config)  # the complete config travels with the model
    target = tmp_path / "ckpt"
    save_checkpoint(enc, target, enc.config, embedding_layer="penultimate")
    assert sorted(os.listdir(target)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory left behind
    meta = json.loads((target / "config.json").read_text())
    assert meta["format"] == "embedcluster-checkpoint" and meta["version"] == 1
    assert meta["model"] == normalize_config(config) and meta["embedding_layer"] == "penultimate"
    assert _safetensors_layout_is_complete(str(target / "model.safetensors"))

    rebuilt = model_from_config(meta["model"])
    rebuilt.load_state_dict(load_file(str(target / "model.safetensors")), strict=True)
    rebuilt.eval()
    x = torch.from_numpy(X[:64].reshape(-1, 8, 8))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), enc(x))  # batch-norm running statistics came back too
        assert torch.equal(rebuilt.features(x, meta["embedding_layer"]), enc.features(x, "penultimate"))
    # the library's loader applies the checkpoint's embedding_layer (flat rows are reshaped)
    loaded = load_encoder(str(target), device="cpu")
    assert np.array_equal(loaded.encode(X[:64], progress=False),
                          encode(enc, X[:64], layer="penultimate"))


# ----------------------------------------------------------------------------- linear probe
def test_probe_matches_logistic_regression_on_blobs():
    X, y = make_blobs(n_samples=800, n_features=10, centers=5, cluster_std=4.0, random_state=0)
    Xtr, ytr, Xte, yte = X[:500], y[:500], X[500:], y[500:]
    ref = LogisticRegression(max_iter=2000).fit(Xtr, ytr).score(Xte, yte)
    probe = LinearProbe(epochs=60, seed=0).fit(Xtr, ytr)
    got = probe.score(Xte, yte)
    assert 0.6 < ref < 0.99  # a problem where the probe's quality shows
    assert abs(got - ref) <= 0.05
    assert probe.predict_proba(Xte).shape == (300, 5)
    assert np.allclose(probe.predict_proba(Xte).sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="expecting 10 features"):
        probe.predict(Xte[:, :9])


@pytest.mark.parametrize("labels", ["int", "str"])
def test_probe_export_roundtrip(tmp_path, labels):
    X, y = make_blobs(n_samples=300, n_features=6, centers=3, random_state=1)
    if labels == "str":
        y = np.array(["cat", "dog", "emu"])[y]
    probe = LinearProbe(epochs=20).fit(X, y)
    arrays, config = probe.to_arrays()
    # the pipeline's storage: safetensors for arrays, JSON for the rest
    np_save_file(arrays, str(tmp_path / "probe.safetensors"))
    config = json.loads(json.dumps(config))
    back = LinearProbe.from_arrays(np_load_file(str(tmp_path / "probe.safetensors")), config)
    assert np.array_equal(back.predict(X), probe.predict(X))
    assert np.array_equal(back.predict_proba(X), probe.predict_proba(X))
    assert back.get_params() == probe.get_params()
    assert set(back.predict(X)) <= set(y)
    with pytest.raises(ValueError, match="linear_probe"):
        LinearProbe.from_arrays(arrays, {**config, "kind": "mlp"})


def test_probe_is_reproducible_and_honours_sample_weight():
    X, y = make_blobs(n_samples=200, n_features=4, centers=2, random_state=2)
    a = LinearProbe(epochs=10, seed=5).fit(X, y)
    b = LinearProbe(epochs=10, seed=5).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)
    # rows of weight zero change nothing: one full batch, no standardisation, so the weighted
    # loss is exactly the loss on the kept rows
    flipped = 1 - y[:50]
    Xw, yw = np.vstack([X, X[:50]]), np.r_[y, flipped]
    w = np.r_[np.ones(len(X)), np.zeros(50)]
    kw = dict(epochs=30, batch_size=1000, standardize="none")
    ref = LinearProbe(**kw).fit(X, y)
    got = LinearProbe(**kw).fit(Xw, yw, sample_weight=w)
    # up to float rounding, which Adam's normalised steps amplify (~1e-3 here), while the same
    # rows with weight one move the probabilities by ~0.08
    unweighted = LinearProbe(**kw).fit(Xw, yw)
    assert np.abs(got.predict_proba(X) - ref.predict_proba(X)).max() < 5e-3
    assert np.abs(unweighted.predict_proba(X) - ref.predict_proba(X)).max() > 5e-2
    with pytest.raises(ValueError, match="n_classes=2"):
        LinearProbe(2).fit(X, y + 1)


def test_linear_evaluation_on_digits(digits):
    X, y = digits
    acc = linear_evaluation(X[:1000], y[:1000], X[1000:], y[1000:], epochs=40)
    ref = LogisticRegression(max_iter=3000).fit(X[:1000], y[:1000]).score(X[1000:], y[1000:])
    assert acc > 0.9 and abs(acc - ref) <= 0.03


# ----------------------------------------------------------------------------- self-labeling
def _brute_margins(Z, labels, centers):
    own, margin = [], []
    for z, lab in zip(Z, labels):
        d = [math.dist(z, c) for c in centers]
        if lab < 0:
            own.append(np.nan), margin.append(np.nan)
            continue
        own.append(d[lab])
        margin.append(min(d[j] for j in range(len(d)) if j != lab) - d[lab])
    return np.array(own), np.array(margin)


def test_select_confident_hand_example():
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0]])
    Z = np.array([[0, 0], [-2, 0], [1, 0], [1.5, 1],   # cluster 0: margins 4, 4, 2, 0.89
                  [3, 0], [6, 0], [2.5, 0], [1, 0],    # cluster 1: margins 2, 4, 1, -2
                  [0, 9],                              # cluster 2: margin 8
                  [5, 5]], dtype=np.float64)           # noise
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, -1])
    own, margin = center_margins(Z, labels, centers)
    b_own, b_margin = _brute_margins(Z, labels, centers)
    assert np.allclose(own, b_own, equal_nan=True) and np.allclose(margin, b_margin, equal_nan=True)
    assert np.allclose(margin[:9], [4, 4, 2, math.sqrt(7.25) - math.sqrt(3.25), 2, 4, 1, -2, 8])

    # top half of each cluster by margin (at least one point per cluster), noise never
    expected = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 0], bool)
    assert np.array_equal(select_confident(Z, labels, centers, fraction=0.5), expected)
    # a tie in margin (points 0 and 1, both 4) goes to the point nearer its centre
    m = select_confident(Z, labels, centers, fraction=0.25)
    assert np.array_equal(np.nonzero(m)[0], [0, 5, 8])
    # an absolute margin threshold, alone and with a fraction
    assert np.array_equal(np.nonzero(select_confident(Z, labels, centers, fraction=None, margin=1.5))[0],
                          [0, 1, 2, 4, 5, 8])
    assert np.array_equal(np.nonzero(select_confident(Z, labels, centers, fraction=0.5, margin=4.5))[0], [8])
    with pytest.raises(ValueError, match="fraction"):
        select_confident(Z, labels, centers, fraction=0.0)
    with pytest.raises(ValueError, match="labels should be in"):
        select_confident(Z, labels + 5, centers)


def test_select_confident_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((97, 5))
    centers = rng.standard_normal((4, 5))
    labels = np.argmin(((Z[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    _, b_margin = _brute_margins(Z, labels, centers)
    mask = select_confident(Z, labels, centers, fraction=0.3)
    for c in range(4):
        rows = np.nonzero(labels == c)[0]
        top = rows[np.argsort(-b_margin[rows], kind="stable")[: math.ceil(0.3 * len(rows))]]
        assert set(np.nonzero(mask & (labels == c))[0]) == set(top)


@pytest.mark.parametrize("weighting, tolerance", [("margin", 0.0), ("select", 0.015)])
def test_self_label_on_digits_keeps_or_improves_kmeans(digits, weighting, tolerance):
    """Raw pixels + scikit-learn k-means. Soft margin weighting improves on the k-means labels;
    hard selection of the top half stays within 1.5 points (k-means is itself a linear
    classifier on these features, see self_label's Notes)."""
    X, y = digits
    km = SkKMeans(10, n_init=3, random_state=0).fit(X)
    base = hungarian_accuracy(y, km.labels_)
    probe, history = self_label(X, km.labels_, km.cluster_centers_, n_rounds=2, fraction=0.5,
                                weighting=weighting, epochs=30)
    assert len(history) == 3 and np.array_equal(history[0], km.labels_)
    assert np.array_equal(history[-1], probe.predict(X))
    assert list(probe.classes_) == list(range(10))
    assert hungarian_accuracy(y, history[1]) >= base - tolerance
    if weighting == "margin":
        assert hungarian_accuracy(y, history[2]) >= base


# ----------------------------------------------------------------------------- bounded allocations
def _traced_peak_mib(fn):
    """fn()'s result (or exception) and the peak of traced allocations (numpy's) in MiB."""
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - returned for the caller to check
            out = e
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("values", [
    [4_000_000_000, 4_000_000_007, 2**62],        # huge
    [-3, -4_000_000_000, 5],                        # negative
    [0.5, -2.25, 1e12],                             # non-integer
    ["cat", "dog", "emu"],                          # strings
])
def test_probe_labels_are_encoded_by_distinct_values(values):
    """n_classes=None: any label values; the probe has one output per distinct value, predicts
    the values themselves and agrees with scikit-learn's LogisticRegression on the same task."""
    X, y = make_blobs(n_samples=600, n_features=6, centers=3, cluster_std=2.0, random_state=4)
    yv = np.array(values)[y]
    probe = LinearProbe(epochs=30, seed=0).fit(X[:400], yv[:400])
    assert list(probe.classes_) == sorted(values) and probe.coef_.shape == (3, 6)
    # scikit-learn on the same task (it takes no continuous labels, so on the class codes)
    ref = LogisticRegression(max_iter=2000).fit(X[:400], y[:400]).score(X[400:], y[400:])
    assert set(probe.predict(X[400:])) <= set(values)
    assert abs(probe.score(X[400:], yv[400:]) - ref) <= 0.05


def test_probe_n_classes_is_checked_before_anything_is_allocated():
    X, y = make_blobs(n_samples=100, n_features=4, centers=2, random_state=2)
    big = np.where(y == 0, 0, 4_000_000_000)
    err, peak = _traced_peak_mib(lambda: LinearProbe(10, epochs=1).fit(X, big))
    assert isinstance(err, ValueError) and "n_classes=10" in str(err) and peak < 1
    err, peak = _traced_peak_mib(lambda: LinearProbe(10, epochs=1).fit(X, y - 1))  # noise label -1
    assert isinstance(err, ValueError) and "drop noise points" in str(err) and peak < 1
    # n_classes itself sizes the weights: 4e9 x 4 x 16 bytes is refused with a way out
    err, peak = _traced_peak_mib(lambda: LinearProbe(4_000_000_000, epochs=1).fit(X, y))
    assert isinstance(err, MemoryError) and "n_classes=None" in str(err) and peak < 1, err
    for bad in (2.5, True, "3"):
        with pytest.raises(ValueError, match="n_classes"):
            LinearProbe(bad, epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="y should hold integers"):
        LinearProbe(2, epochs=1).fit(X, y.astype(np.float64))
    with pytest.raises(ValueError, match="NaN"):
        LinearProbe(epochs=1).fit(X, np.where(y == 0, np.nan, 1.0))


def test_probe_many_distinct_labels_bounded_by_memory_limit():
    """50,000 distinct labels x 384 features: 16 bytes x k x d (1.2 GiB) is checked against the
    budget before torch allocates anything."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50_000, 384)).astype(np.float32)
    y = rng.permutation(50_000) * 7 + 3
    err, peak = _traced_peak_mib(lambda: LinearProbe(epochs=1, memory_limit=512 << 20).fit(X, y))
    assert isinstance(err, MemoryError) and "50000 classes x 384 features" in str(err), err
    assert peak < 64  # O(n d) input checks and np.unique's O(n) work only


def test_probe_prediction_in_blocks_equals_one_block(monkeypatch):
    from embedcluster import probe as probe_mod

    X, y = make_blobs(n_samples=500, n_features=8, centers=4, random_state=3)
    p = LinearProbe(epochs=5, seed=0).fit(X, y)
    whole, proba = p.predict(X), p.predict_proba(X)
    monkeypatch.setattr(probe_mod, "_BLOCK_BYTES", 4 * 16 * 7)  # 7 rows per block
    assert len(p._blocks(len(X))) > 50
    np.testing.assert_array_equal(p.predict(X), whole)
    np.testing.assert_allclose(p._max_proba(X), proba.max(1), rtol=1e-6)
    own, margin = center_margins(X, y, np.stack([X[y == c].mean(0) for c in range(4)]))
    monkeypatch.setattr(probe_mod, "_BLOCK_BYTES", 10**9)
    own2, margin2 = center_margins(X, y, np.stack([X[y == c].mean(0) for c in range(4)]))
    np.testing.assert_allclose(own, own2, rtol=1e-12)
    np.testing.assert_allclose(margin, margin2, rtol=1e-9, atol=1e-12)


def test_grouped_selection_and_weights_equal_a_pass_per_group():
    """The sorted implementations of the per-group top fraction and soft weights equal the
    plain definition (one pass per group), with noise rows and thousands of groups."""
    from embedcluster.probe import _soft_weights, _top_fraction_per_group

    rng = np.random.default_rng(1)
    groups = rng.integers(-1, 3000, 20_000)
    score = rng.standard_normal(20_000).round(2)  # ties in score
    tiebreak = rng.random(20_000)
    for fraction in (0.01, 0.3, 1.0):
        got = _top_fraction_per_group(groups, (tiebreak, -score), fraction)
        want = np.zeros(len(groups), bool)
        order = np.lexsort((np.arange(len(groups)), tiebreak, -score))
        for g in np.unique(groups[groups >= 0]):
            rows = order[groups[order] == g]
            want[rows[: max(1, math.ceil(fraction * len(rows)))]] = True
        np.testing.assert_array_equal(got, want)
        w = _soft_weights(groups, score, fraction)
        ref = np.zeros(len(groups))
        for g in np.unique(groups[groups >= 0]):
            rows = groups == g
            q = np.quantile(score[rows], 1.0 - fraction)
            ref[rows] = np.clip(score[rows] / q, 0.0, 1.0) if q > 0 else (score[rows] > 0)
        np.testing.assert_array_equal(w, ref)


def test_probe_under_an_address_space_limit():
    """In a subprocess whose address space allows ~1 GiB more than the imports took: label
    values of 4e9 train normally (classes are the distinct values), and n_classes=3e9 raises
    the probe's MemoryError instead of an allocation failure."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os, resource
        import numpy as np
        import torch
        from embedcluster.probe import LinearProbe
        rng = np.random.default_rng(0)
        X = rng.standard_normal((300, 8)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64)
        torch.set_num_threads(1)
        LinearProbe(epochs=1).fit(X[:10], y[:10])  # torch's lazy set-up before the limit
        used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
        p = LinearProbe(epochs=100).fit(X, y * 4_000_000_000 + 5)
        assert list(p.classes_) == [5, 4_000_000_005], p.classes_
        assert (p.predict(X) == y * 4_000_000_000 + 5).mean() > 0.9
        try:
            LinearProbe(3_000_000_000, epochs=1).fit(X, y)
        except MemoryError as e:
            assert "n_classes=None" in str(e), e
        else:
            raise SystemExit("no MemoryError")
        print("ok")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
