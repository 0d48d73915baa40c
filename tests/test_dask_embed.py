"""embedcluster.dask.embed on a real distributed.LocalCluster (conftest.py's session-scoped
``client``: 2 worker processes x 1 thread): embeddings bit-identical to Encoder.encode on the
concatenated rows in one process (one torch thread, as on the workers) for uneven chunkings and
bag partitions, the encoder shipped without pickled torch modules and built once per worker,
the result flowing into embedcluster.dask.KMeans, and clear errors for bad input.

The encoders are small models built here (nothing is downloaded)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
pytest.importorskip("distributed")
torch = pytest.importorskip("torch")

import embedcluster  # noqa: E402
import embedcluster.dask as ecd  # noqa: E402
from embedcluster import _dask_embed  # noqa: E402
from embedcluster.encoders import Encoder, ImagePreprocess, load_encoder, save_checkpoint  # noqa: E402
from embedcluster.models import model_from_config, with_layer  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """The one-process references run with one torch thread, as the workers do (n_threads=1)."""


def mlp_encoder(seed=0, d=32):
    torch.manual_seed(seed)
    return Encoder(model_from_config({"arch": "mlp", "in_shape": [d], "hidden": [64, 48], "embed_dim": 24}),
                   device="cpu")


def cnn_layer_encoder():
    """A CNN's "concat" layer on NHWC uint8 images (ImagePreprocess makes NCHW floats)."""
    torch.manual_seed(1)
    model = model_from_config({"arch": "cnn", "in_shape": [3, 12, 12], "channels": [4, 8], "embed_dim": 6})
    return Encoder(with_layer(model, "concat"), device="cpu", preprocess=ImagePreprocess(mean=(0.5,), std=(0.25,)))


def text_model(texts):
    return np.array([[len(t), sum(map(ord, t)) % 97, t.count("a"), 1.0] for t in texts], dtype=np.float32)


def features(n=1000, d=32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def images(n=300, seed=2):
    return np.random.default_rng(seed).integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)


def texts_of(ids):
    return [f"item {i} " + "a" * (i % 7) for i in ids]


def assert_bits(got, ref):
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("chunks", [(1000,), (1, 2, 997), (0, 300, 0, 700), 77, (500, 499, 1)])
def test_array_chunkings_give_the_one_process_embedding(client, chunks):
    enc, X = mlp_encoder(), features()
    ref = enc.encode(X, batch_size=64, progress=False)
    data = da.from_array(X, chunks=(chunks, 32))
    emb = ecd.embed(enc, data, batch_size=64)
    assert isinstance(emb, da.Array) and emb.dtype == np.float32 and emb.shape == (1000, 24)
    assert emb.chunks == (data.chunks[0], (24,))
    assert_bits(emb.compute(), ref)


def test_normalize_and_column_chunks(client):
    enc, X = mlp_encoder(seed=3), features(400, 32, seed=4)
    ref = enc.encode(X, batch_size=50, normalize=True, progress=False)
    emb = ecd.embed(enc, da.from_array(X, chunks=((130, 270), (10, 22))), batch_size=50, normalize=True)
    assert emb.chunks[0] == (130, 270)
    assert_bits(emb.compute(), ref)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, rtol=1e-6)


def test_uint8_images_with_a_layer_of_a_cnn(client):
    enc, X = cnn_layer_encoder(), images()
    ref = enc.encode(X, batch_size=32, progress=False)
    emb = ecd.embed(enc, da.from_array(X, chunks=((50, 1, 249), 12, (6, 6), 3)), batch_size=32)
    assert emb.shape == ref.shape and emb.chunks[0] == (50, 1, 249)
    assert_bits(emb.compute(), ref)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_torchscript_module_and_checkpoint_path(client, tmp_path):
    torch.manual_seed(5)
    X = features(300, 16, seed=6)
    scripted = torch.jit.trace(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh()).eval(),
                               torch.zeros(2, 16))
    enc = Encoder(scripted, device="cpu")
    assert_bits(ecd.embed(enc, da.from_array(X, chunks=((7, 290, 3), 16)), batch_size=16).compute(),
                enc.encode(X, batch_size=16, progress=False))
    model = mlp_encoder(seed=7, d=16).model
    folder = save_checkpoint(model, tmp_path / "ckpt", model.config, embedding_layer="penultimate")
    ref = load_encoder(folder, device="cpu").encode(X, batch_size=40, progress=False)
    # A path: each worker loads it from its own file system (here the same machine).
    assert_bits(ecd.embed(str(folder), da.from_array(X, chunks=100), batch_size=40).compute(), ref)


def test_bag_of_texts_with_an_empty_partition(client):
    ids = db.from_sequence(range(120), npartitions=6).filter(lambda i: i >= 20)  # partition 0 empty
    bag = ids.map(lambda i: texts_of([i])[0])
    enc = Encoder(text_model, modality="text", device="cpu")
    ref = enc.encode(texts_of(range(20, 120)), batch_size=8, progress=False)
    emb = ecd.embed(enc, bag, batch_size=8)
    assert emb.chunks == ((0, 20, 20, 20, 20, 20), (4,))
    assert_bits(emb.compute(), ref)
    strings = da.from_array(np.array(texts_of(range(50)), dtype=object), chunks=((3, 40, 7),))
    assert_bits(ecd.embed(enc, strings, batch_size=8).compute(),
                enc.encode(texts_of(range(50)), batch_size=8, progress=False))


def test_bag_of_images(client):
    X = images(90, seed=8)
    bag = db.from_sequence(range(90), npartitions=4).map(lambda i, X=X: X[i])
    enc = cnn_layer_encoder()
    emb = ecd.embed(enc, bag, batch_size=16)
    assert emb.chunks[0] == _partition_lengths(bag)
    assert_bits(emb.compute(), enc.encode(X, batch_size=16, progress=False))


def _partition_lengths(bag):
    return tuple(bag.map_partitions(lambda p: [len(list(p))]).compute())


@pytest.mark.parametrize("source", ["array", "bag"])
def test_embeddings_flow_into_dask_kmeans(client, source):
    enc, X = mlp_encoder(seed=9), features(700, 32, seed=10)
    ref = enc.encode(X, batch_size=64, progress=False)
    if source == "array":
        emb = ecd.embed(enc, da.from_array(X, chunks=((5, 400, 295), 32)), batch_size=64)
    else:
        emb = ecd.embed(enc, db.from_sequence(list(X), npartitions=5), batch_size=64)
    init = ref[:8].copy()
    km = ecd.KMeans(8, init=init, max_iter=15, client=client).fit(emb)
    one = embedcluster.KMeans(8, init=init, max_iter=15).fit(ref)
    np.testing.assert_array_equal(km.cluster_centers_, one.cluster_centers_)
    np.testing.assert_array_equal(km.labels_, one.labels_)
    assert km.inertia_ == one.inertia_ and km.n_iter_ == one.n_iter_
    # An independent check of the labels: each row's nearest centre by float64 brute force.
    d2 = ((ref.astype(np.float64)[:, None, :] - km.cluster_centers_.astype(np.float64)[None]) ** 2).sum(-1)
    best = d2.min(axis=1, keepdims=True)
    clear = (np.sort(d2, axis=1)[:, 1] - best[:, 0]) > 1e-3 * (1 + best[:, 0])
    np.testing.assert_array_equal(km.labels_[clear], d2.argmin(axis=1)[clear])


def built_per_worker(client):
    return client.run(lambda: collections.Counter(_dask_embed.encoders_built))


def test_each_worker_builds_the_encoder_once_and_runs_one_torch_thread(client):
    enc, X = mlp_encoder(seed=11), features(800, 32, seed=12)
    before = built_per_worker(client)
    for chunks in (100, (3, 797), 401):
        ecd.embed(enc, da.from_array(X, chunks=(chunks, 32)), batch_size=32).compute()
    after = built_per_worker(client)
    new = {w: after[w] - before.get(w, collections.Counter()) for w in after}
    assert sum(sum(c.values()) for c in new.values()) >= 1
    assert all(count == 1 for c in new.values() for count in c.values())
    assert set(client.run(lambda: __import__("torch").get_num_threads()).values()) == {1}


def test_the_graph_carries_checkpoint_bytes_not_a_torch_module():
    enc = mlp_encoder(seed=13)
    emb = ecd.embed(enc, da.zeros((100, 32), chunks=30, dtype=np.float32), batch_size=16)
    values = [getattr(node, "value", node) for node in dict(emb.__dask_graph__()).values()]  # dask wraps data
    recipes = [v for v in values if isinstance(v, _dask_embed._EncoderRecipe)]
    assert len(recipes) == 1
    (recipe,) = recipes
    assert sorted(recipe.files) == ["config.json", "model.safetensors"] and recipe.model is None
    assert not any(isinstance(v, torch.nn.Module) for v in recipe.options.values())
    assert recipe.dim == 24


def test_batch_aligned_chunks():
    aligned = _dask_embed._batch_aligned_chunks
    assert aligned((1, 2, 997), 64) == (1000,)
    assert aligned((0, 500, 0, 500), 64) == (512, 488)
    assert aligned((640, 360), 64) == (640, 360)
    assert aligned((77,) * 4, 10) == (80, 70, 80, 78)


def test_spec_whose_files_differ_on_a_worker_is_refused(tmp_path):
    model = mlp_encoder(seed=14, d=8).model
    folder = save_checkpoint(model, tmp_path / "ckpt", model.config)
    recipe = _dask_embed._EncoderRecipe("x", "array", 24, spec=str(folder), fingerprint="0" * 64)
    with pytest.raises(ValueError, match="the files differ; install the same model files"):
        _dask_embed._build_encoder(recipe, "cpu")


def test_errors(client):
    enc = mlp_encoder()
    X = da.from_array(features(100), chunks=50)
    with pytest.raises(TypeError, match="data must be a dask array or a dask bag, got numpy.ndarray"):
        ecd.embed(enc, features(100))
    with pytest.raises(ValueError, match=r"data of shape \(0,\): expected vectors"):
        ecd.embed(enc, da.zeros(10, chunks=5))
    with pytest.raises(TypeError, match="is not numeric"):
        ecd.embed(enc, da.from_array(np.array([["a"] * 32] * 4, dtype=object), chunks=2))
    with pytest.raises(ValueError, match="data holds 0 rows; nothing to embed"):
        ecd.embed(enc, da.zeros((0, 32), chunks=5, dtype=np.float32))
    with pytest.raises(ValueError, match="data holds 0 rows; nothing to embed"):
        ecd.embed(enc, db.from_sequence(range(4), npartitions=2).filter(lambda i: i > 9))
    with pytest.raises(ValueError, match="unknown chunk sizes; call data.compute_chunk_sizes"):
        ecd.embed(enc, X[X[:, 0] > 0])
    with pytest.raises(ValueError, match="batch_size=0 should be a positive integer"):
        ecd.embed(enc, X, batch_size=0)
    with pytest.raises(ValueError, match="n_threads=0 should be a positive integer or None"):
        ecd.embed(enc, X, n_threads=0)
    with pytest.raises(ValueError, match="encoder_kwargs cannot be applied"):
        ecd.embed(enc, X, encoder_kwargs={"name": "x"})
    with pytest.raises(ValueError, match="pass device= to embed"):
        ecd.embed("any", X, encoder_kwargs={"device": "cpu"})
    with pytest.raises(TypeError, match="torch modules are never pickled to the workers.*Linear"):
        ecd.embed(torch.nn.Linear(32, 4), X)
    text = Encoder(text_model, modality="text", device="cpu")
    with pytest.raises(ValueError, match="embeds texts: pass a dask bag of str"):
        ecd.embed(text, X)
    with pytest.raises(TypeError, match="a text encoder embeds a bag of str; the bag's first item is a int"):
        ecd.embed(text, db.from_sequence(range(4), npartitions=2))
    with pytest.raises(TypeError, match="embeds a bag of numeric arrays"):
        ecd.embed(enc, db.from_sequence([{"a": 1}], npartitions=1))
    mixed = db.from_sequence([np.zeros(32, np.float32)] * 3 + [np.zeros(31, np.float32)], npartitions=2)
    with pytest.raises(ValueError, match="every item must have the same shape and dtype"):
        ecd.embed(enc, mixed).compute()


@pytest.mark.slow
def test_hugging_face_text_folder_on_a_bag(client, tmp_path):
    """A path each worker loads itself (a tiny BERT saved here). Padding follows the longest
    text of a batch, so keeping the one-process batches matters most for text models."""
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "item", "a", "aa", "aaa"] + [str(i) for i in range(10)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(15)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                                           num_attention_heads=2, intermediate_size=32)).eval()
    model.save_pretrained(tmp_path / "bert")
    transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "bert")
    spec = f"hf:{tmp_path / 'bert'}"
    texts = [f"item {i} " + " ".join(["a"] * (i % 5)) for i in range(60)]
    ref = load_encoder(spec, device="cpu").encode(texts, batch_size=8, progress=False)
    emb = ecd.embed(spec, db.from_sequence(texts, npartitions=7), batch_size=8)
    assert_bits(emb.compute(), ref)
