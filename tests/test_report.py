"""The HTML report: files, content, and a real render in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from sklearn.datasets import load_digits

import embedcluster as ec
from embedcluster.report import top_terms, write_report


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    d = load_digits()
    X = d.data.astype(np.float32)
    km = ec.KMeans(10, n_init=4, random_state=0).fit(X)
    out = tmp_path_factory.mktemp("report")
    path = write_report(out, km.labels_, labels_true=d.target, embeddings=X, images=d.images,
                        class_names=[f"digit {i}" for i in range(10)],
                        comparison=[{"features": "raw pixels", "accuracy": 0.79, "nmi": 0.7, "ari": 0.6,
                                     "seconds": 1.5}], title="digits test", map_method="pca")
    return out, path, km


def test_report_files_and_metrics(digits_report):
    out, path, km = digits_report
    for name in ("report.html", "metrics.json", "confusion.png", "sizes.png", "map.png", "samples.png"):
        assert (out / name).stat().st_size > 1000, name
    m = json.loads((out / "metrics.json").read_text())
    from sklearn.metrics import adjusted_rand_score

    assert m["metrics"]["ari"] == pytest.approx(adjusted_rand_score(load_digits().target, km.labels_))
    assert m["n_clusters"] == 10
    doc = path.read_text()
    assert doc.count("data:image/png;base64,") == 4  # confusion, sizes, map, samples: all embedded
    assert "http" not in doc.replace("http-equiv", "")  # self-contained: nothing fetched


def test_text_report_has_top_terms_and_escapes_html(tmp_path):
    texts = ["the cat sat on the mat", "a cat and a kitten", "<b>stock</b> market crash", "stock prices fall"]
    path = write_report(tmp_path, [0, 0, 1, 1], texts=texts)
    doc = path.read_text()
    assert "&lt;b&gt;stock&lt;/b&gt;" in doc and "<b>stock</b>" not in doc
    terms = top_terms(texts, np.array([0, 0, 1, 1]))
    assert "cat" in terms[0] and "stock" in terms[1]


def test_length_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="labels_true has 3 rows"):
        write_report(tmp_path, [0, 1], labels_true=[0, 1, 1])


def test_report_renders_in_headless_chromium(digits_report):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    from PIL import Image

    out, path, _ = digits_report
    shot = out / "screenshot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000",
                        path.as_uri()], check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2000, 1280)
    # A rendered page: mostly white background with dark text and plots, not a blank canvas.
    assert img.std() > 20 and (img < 100).mean() > 0.005


def test_many_classes_and_clusters_skip_the_confusion_plot(tmp_path):
    """Thousands of labels: the report is written with metrics from the sparse table and says
    why the confusion matrix is not drawn, instead of building a dense classes x clusters plot."""
    rng = np.random.default_rng(0)
    n = 1500
    y = rng.integers(0, 250, n)
    pred = rng.integers(0, 300, n)
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    path = write_report(tmp_path / "r", pred, labels_true=y, embeddings=emb, map_method="pca")
    page = path.read_text()
    assert "confusion matrix is not drawn" in page and not (tmp_path / "r" / "confusion.png").exists()
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    from sklearn.metrics import normalized_mutual_info_score

    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred), abs=1e-9)


def test_pca_map_equals_sklearn_pca_up_to_sign():
    from sklearn.decomposition import PCA

    from embedcluster.report import map_2d

    X = load_digits().data.astype(np.float32)
    xy, rows, method, axes = map_2d(X, "pca")
    assert method == "pca" and axes == ("PC 1", "PC 2") and np.array_equal(rows, np.arange(len(X)))
    ref = PCA(n_components=2).fit_transform(X.astype(np.float64))
    for j in range(2):
        sign = np.sign(ref[:, j] @ xy[:, j])
        np.testing.assert_allclose(sign * xy[:, j], ref[:, j], atol=1e-6 * np.abs(ref).max())
    xy, rows, _, _ = map_2d(X, "pca", max_points=500)  # a fixed sample of rows, mapped by their own PCA
    assert len(rows) == 500 and np.all(np.diff(rows) > 0)
    ref = PCA(n_components=2).fit_transform(X[rows].astype(np.float64))
    np.testing.assert_allclose(np.abs(xy), np.abs(ref), atol=1e-6 * np.abs(ref).max())


def test_true_class_panel_only_with_labels(digits_report, tmp_path):
    from PIL import Image

    out, _, km = digits_report
    X = load_digits().data.astype(np.float32)
    write_report(tmp_path, km.labels_, embeddings=X, map_method="pca")
    without = json.loads((tmp_path / "metrics.json").read_text())["map"]
    with_labels = json.loads((out / "metrics.json").read_text())["map"]
    assert without["panels"] == ["cluster"] and with_labels["panels"] == ["cluster", "true class"]
    assert without["method"] == with_labels["method"] == "pca"
    # Side by side: the map with labels is about twice as wide as the one without.
    w1, w2 = Image.open(tmp_path / "map.png").size[0], Image.open(out / "map.png").size[0]
    assert 1.7 < w2 / w1 < 2.3
    assert "by true class" not in (tmp_path / "report.html").read_text()
    assert "right: by true class" in (out / "report.html").read_text()


def test_class_names_in_tables_and_metrics_json(digits_report):
    out, path, km = digits_report
    from sklearn.metrics import f1_score

    per = json.loads((out / "metrics.json").read_text())["metrics"]["per_class"]
    assert sorted(per) == sorted(f"digit {i}" for i in range(10))
    # The entry named "digit 3" is class 3's: its F1 against its matched cluster, by scikit-learn.
    y = load_digits().target
    matched = per["digit 3"]["matched_cluster"]
    assert per["digit 3"]["f1"] == pytest.approx(f1_score(y == 3, km.labels_ == matched))
    doc = path.read_text()
    assert all(f"<td>digit {i}</td>" in doc for i in range(10))


def test_headers_have_one_spelling(digits_report):
    import re

    _, path, _ = digits_report
    headers = re.findall(r"<th>([^<]*)</th>", path.read_text())
    assert headers.count("ACC") == 2 and headers.count("NMI") == 2 and headers.count("ARI") == 2  # both tables
    assert "time (s)" in headers
    assert not set(headers) & {"accuracy", "nmi", "ari", "seconds", "accuracy (Hungarian)", "f1"}


def test_name_classes():
    from embedcluster.metrics import clustering_report, name_classes

    y, pred = np.array([0, 0, 1, 1, 2]), np.array([1, 1, 0, 0, 0])
    rep = clustering_report(y, pred, class_names=["cat", "dog", "eel"])
    assert list(rep["per_class"]) == ["cat", "dog", "eel"]
    assert rep["per_class"]["cat"] == clustering_report(y, pred)["per_class"][0]
    assert list(name_classes({0: 1, 5: 2}, ["a"])) == ["a", 5]  # an index without a name stays
    assert name_classes({"x": 1}, ["a"]) == {"x": 1}  # names already
    with pytest.raises(ValueError, match="same name"):
        name_classes({0: 1, 1: 2}, ["a", "a"])


def test_bad_map_method_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="map_method='tsne'"):
        write_report(tmp_path, [0, 1], map_method="tsne")


def test_pipeline_times_the_probe(one_torch_thread):
    """The demo's probe rows show fit_seconds_["probe"] (they showed 0.000: the probe trained
    inside fit and its time was not measured)."""
    pytest.importorskip("torch")
    from embedcluster.transfer.pipeline import TransferClustering

    Z = load_digits().data.astype(np.float32)[:300]
    tc = TransferClustering(n_clusters=5, progress=False, probe_epochs=5).fit(None, Z=Z)
    assert tc.fit_seconds_["probe"] > 0 and tc.fit_seconds_["cluster"] > 0
    no_probe = TransferClustering(n_clusters=5, probe=False, progress=False).fit(None, Z=Z)
    assert no_probe.fit_seconds_["probe"] == 0.0


@pytest.mark.slow
def test_umap_map_when_installed(tmp_path):
    pytest.importorskip("umap")
    d = load_digits()
    X = d.data.astype(np.float32)
    write_report(tmp_path, d.target, labels_true=d.target, embeddings=X)  # map_method="auto"
    m = json.loads((tmp_path / "metrics.json").read_text())["map"]
    assert m["method"] == "umap" and m["panels"] == ["cluster", "true class"]
    assert "UMAP" in (tmp_path / "report.html").read_text()


def test_run_keys_per_class_results_by_class_name(tmp_path, capsys):
    """`embedcluster run` on a folder of images with one sub-folder per class: OUT/metrics.json
    and the report's metrics.json key the per-class results by folder name, and the report's
    tables name the classes."""
    from PIL import Image

    from embedcluster.cli import main

    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("mid", 128), ("light", 215)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(level + rng.normal(0, 10, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i:02d}.png")
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "imgs"), "--n-clusters", "3", "--no-probe", "--no-normalize", "--map", "pca",
                 "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    run_metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(run_metrics["clusters"]["per_class"]) == ["dark", "light", "mid"]
    assert run_metrics["clusters"]["accuracy"] == 1.0  # three grey levels: an easy, exact check of the keys
    report_metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert report_metrics["metrics"]["per_class"] == run_metrics["clusters"]["per_class"]
    assert report_metrics["map"] == {"method": "pca", "representation": None, "n_points": 60,
                                     "panels": ["cluster", "true class"]}
    page = (out / "report" / "report.html").read_text()
    assert all(f"<td>{name}</td>" in page for name in ("dark", "mid", "light"))
