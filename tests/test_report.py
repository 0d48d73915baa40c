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
                        class_names=[str(i) for i in range(10)],
                        comparison=[{"features": "raw pixels", "accuracy": 0.79}], title="digits test")
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
    path = write_report(tmp_path / "r", pred, labels_true=y, embeddings=emb)
    page = path.read_text()
    assert "confusion matrix is not drawn" in page and not (tmp_path / "r" / "confusion.png").exists()
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    from sklearn.metrics import normalized_mutual_info_score

    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred), abs=1e-9)
