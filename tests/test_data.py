"""Tests for embedcluster.data: every loader against data written here by independent code
(struct for IDX, PIL for images, csv/json for tables) and the real Fashion-MNIST files."""

from __future__ import annotations

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from embedcluster.data import _common
from embedcluster.data import (
    Dataset, ShardedArray, as_feature_matrix, load, load_array, load_digits_dataset,
    load_fashion_mnist, load_idx, load_image_folder, load_npy, load_npy_shards, load_table,
    load_texts,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist not installed: apt-get install dataset-fashion-mnist")


# --------------------------------------------------------------------------------- IDX

_IDX_CODE = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
             np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of arr, written from the format's definition with struct."""
    code = _IDX_CODE[arr.dtype.newbyteorder("=")]
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_roundtrip(tmp_path, gz, dtype):
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((7, 5, 3)) * 40).astype(dtype)
    y = rng.integers(0, 4, 7).astype(np.uint8)
    # Names that lie about compression: detection must use the magic bytes.
    xi = write_idx(tmp_path / ("images-idx3-ubyte" if gz else "images.gz"), X, gz)
    yi = write_idx(tmp_path / "labels.idx", y, gz)
    ds = load_idx(xi, yi)
    assert ds.kind == "images" and ds.X.shape == (7, 5, 3)
    assert ds.X.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(ds.X, X)
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.y, y)
    assert load_idx(xi).y is None


def test_idx_2d_is_vectors(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    ds = load_idx(write_idx(tmp_path / "v.idx", X, gz=False))
    assert ds.kind == "vectors"
    np.testing.assert_array_equal(ds.X, X)


def test_idx_truncated_and_bad(tmp_path):
    X = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    raw = idx_bytes(X)
    cut = tmp_path / "cut-ubyte"
    cut.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        load_idx(cut)
    cut.write_bytes(raw[:10])  # inside the dims header
    with pytest.raises(ValueError, match="truncated"):
        load_idx(cut)
    cutgz = tmp_path / "cut.gz"
    cutgz.write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(ValueError, match="cut.gz"):
        load_idx(cutgz)
    bad = tmp_path / "bad-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x03" + raw[4:])
    with pytest.raises(ValueError, match="magic"):
        load_idx(bad)
    bad.write_bytes(raw[:2] + b"\x07" + raw[3:])  # unknown type code
    with pytest.raises(ValueError, match="magic"):
        load_idx(bad)
    long = tmp_path / "long-ubyte"
    long.write_bytes(raw + b"\0\0")
    with pytest.raises(ValueError, match="2 bytes after"):
        load_idx(long)
    tiny = tmp_path / "tiny-ubyte"
    tiny.write_bytes(b"\0\0")
    with pytest.raises(ValueError, match="too short"):
        load_idx(tiny)


def test_idx_label_errors(tmp_path):
    X = write_idx(tmp_path / "x-ubyte", np.zeros((3, 2, 2), np.uint8), gz=True)
    y4 = write_idx(tmp_path / "y-ubyte", np.zeros(4, np.uint8), gz=True)
    with pytest.raises(ValueError, match="4 labels .* 3 samples"):
        load_idx(X, y4)
    with pytest.raises(ValueError, match="labels_path"):
        load_idx(y4)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_idx(X, tmp_path / "nope")


# --------------------------------------------------------------------------------- Fashion-MNIST

def _raw_fmnist(name: str, offset: int) -> np.ndarray:
    """Independent reader: skip the fixed-size header of the gzip'd file."""
    with gzip.open(FMNIST / name) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@needs_fmnist
def test_fashion_mnist_test_split():
    ds = load_fashion_mnist("test")
    assert ds.kind == "images" and ds.X.shape == (10_000, 28, 28) and ds.X.dtype == np.uint8
    assert len(ds) == 10_000
    assert ds.y.dtype == np.int64 and ds.y.min() == 0 and ds.y.max() == 9
    np.testing.assert_array_equal(np.bincount(ds.y), np.full(10, 1000))
    assert ds.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                              "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    # The published first test labels: ankle boot, pullover, trouser, trouser, shirt, ...
    np.testing.assert_array_equal(ds.y[:10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
    np.testing.assert_array_equal(ds.X.reshape(-1), _raw_fmnist("t10k-images-idx3-ubyte.gz", 16))
    np.testing.assert_array_equal(ds.y, _raw_fmnist("t10k-labels-idx1-ubyte.gz", 8))
    assert abs(ds.X.mean() / 255 - 0.2868) < 0.003  # the data set's known mean intensity


@needs_fmnist
def test_fashion_mnist_train_split_and_load():
    ds = load("fashion-mnist:train")
    assert ds.X.shape == (60_000, 28, 28) and ds.X.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.y), np.full(10, 6000))
    assert abs(ds.X.mean() / 255 - 0.2860) < 0.003
    assert "train" in ds.source
    assert len(load("fashion-mnist")) == 10_000  # test split by default


def test_fashion_mnist_missing_and_custom_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*root="):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("valid", root=tmp_path)
    # A root holding the files (one uncompressed, one gzip'd) works.
    X = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", X, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 3], np.uint8), gz=True)
    ds = load("fashion-mnist:test", root=tmp_path)
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, [9, 0, 3])
    assert ds.class_names[9] == "Ankle boot"


# --------------------------------------------------------------------------------- npy

def test_load_npy_memmap(tmp_path):
    X = np.random.default_rng(1).standard_normal((50, 6)).astype(np.float32)
    y = np.arange(50) % 3
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    ds = load_npy(tmp_path / "x.npy", labels=tmp_path / "y.npy")
    assert isinstance(ds.X, np.memmap) and ds.X.mode == "r"
    assert Path(ds.X.filename) == (tmp_path / "x.npy").resolve()
    assert ds.kind == "vectors" and len(ds) == 50
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    with pytest.raises(ValueError):
        ds.X[0, 0] = 1.0  # read-only: the file cannot be changed through the dataset
    eager = load_npy(tmp_path / "x.npy", mmap=False)
    assert not isinstance(eager.X, np.memmap)
    np.testing.assert_array_equal(eager.X, X)


def test_load_npy_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_npy(tmp_path / "missing.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_npy(tmp_path / "obj.npy")
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        load_npy(tmp_path / "x.npy", labels=tmp_path / "y.npy")
    np.save(tmp_path / "flat.npy", np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="reshape"):
        load_npy(tmp_path / "flat.npy")


def _write_shards(folder: Path, parts: list[np.ndarray], prefix: str = "part") -> None:
    folder.mkdir(exist_ok=True)
    # Written in reverse order so only name sorting can put them right.
    for i in reversed(range(len(parts))):
        np.save(folder / f"{prefix}-{i:03d}.npy", parts[i])


def test_shards_concatenate(tmp_path):
    rng = np.random.default_rng(2)
    parts = [rng.standard_normal((n, 4, 3)).astype(np.float32) for n in (5, 0, 8, 3)]
    ref = np.concatenate(parts)
    _write_shards(tmp_path / "s", parts)
    ds = load_npy_shards(tmp_path / "s")
    X = ds.X
    assert isinstance(X, ShardedArray)
    assert all(isinstance(s, np.memmap) for s in X.shards)  # nothing read into memory
    assert X.shape == ref.shape and X.dtype == ref.dtype and len(X) == 16 and X.ndim == 3
    assert X.nbytes == ref.nbytes and ds.kind == "images"
    np.testing.assert_array_equal(np.asarray(X), ref)
    np.testing.assert_array_equal(np.asarray(X, dtype=np.float64), ref.astype(np.float64))
    for i in (0, 4, 5, 12, 15, -1, -16, np.int64(7)):
        np.testing.assert_array_equal(X[i], ref[i])
    for sl in (slice(None), slice(3, 9), slice(4, 6), slice(None, None, 3), slice(14, 2, -2),
               slice(-4, None), slice(10, 3), slice(100, 200)):
        np.testing.assert_array_equal(X[sl], ref[sl])
    for idx in ([15, 0, 5, 5, -2], np.array([], dtype=np.int64), np.arange(16)[::-1]):
        np.testing.assert_array_equal(X[idx], ref[idx])
    mask = rng.random(16) < 0.5
    np.testing.assert_array_equal(X[mask], ref[mask])
    np.testing.assert_array_equal(X[2:12, 1], ref[2:12, 1])
    np.testing.assert_array_equal(X[6, 2, 1], ref[6, 2, 1])
    np.testing.assert_array_equal(X[[1, 9], :, 0], ref[[1, 9], :, 0])
    np.testing.assert_array_equal(np.stack(list(X)), ref)
    for bad in (16, -17, [0, 16]):
        with pytest.raises(IndexError):
            X[bad]
    with pytest.raises(IndexError):
        X[np.ones(15, bool)]


def test_shards_labels_and_single(tmp_path):
    parts = [np.full((n, 2), n, np.int16) for n in (3, 4)]
    _write_shards(tmp_path / "s", parts, prefix="emb")
    _write_shards(tmp_path / "s", [np.array([0, 1, 2]), np.array([2, 1, 0, 0])], prefix="labels")
    ds = load_npy_shards(tmp_path / "s", labels_pattern="labels*.npy")
    assert ds.kind == "vectors" and ds.X.shape == (7, 2)  # label files excluded from the data
    np.testing.assert_array_equal(ds.y, [0, 1, 2, 2, 1, 0, 0])
    with pytest.raises(FileNotFoundError, match="lab_"):
        load_npy_shards(tmp_path / "s", labels_pattern="lab_*.npy")
    one = tmp_path / "one"
    _write_shards(one, [np.ones((3, 2), np.float32)])
    assert isinstance(load_npy_shards(one).X, np.memmap)


def test_shards_mismatch_and_missing(tmp_path):
    d = tmp_path / "s"
    _write_shards(d, [np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)])
    with pytest.raises(ValueError, match="trailing shape"):
        load_npy_shards(d)
    d2 = tmp_path / "t"
    _write_shards(d2, [np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float64)])
    with pytest.raises(ValueError, match="dtype"):
        load_npy_shards(d2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\*\.npy"):
        load_npy_shards(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_npy_shards(tmp_path / "absent")


# --------------------------------------------------------------------------------- fingerprint

def test_fingerprint(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", X.copy())
    _write_shards(tmp_path / "s", [X[:13], X[13:30], X[30:]])
    fa = load_npy(tmp_path / "a.npy").fingerprint()
    assert len(fa) == 64 and int(fa, 16) >= 0
    assert load_npy(tmp_path / "a.npy").fingerprint() == fa  # stable across calls and loads
    assert load_npy(tmp_path / "b.npy").fingerprint() == fa  # same content, other file
    assert load_npy_shards(tmp_path / "s").fingerprint() == fa  # other layout
    assert load_array(X, np.arange(40)).fingerprint() == fa  # labels are not part of it
    assert load_array(X.astype(">f4")).fingerprint() == fa  # byte order is not either
    monkeypatch.setattr(_common, "_HASH_CHUNK_BYTES", 64)  # many small chunks: same digest
    assert load_npy(tmp_path / "a.npy").fingerprint() == fa
    assert load_npy_shards(tmp_path / "s").fingerprint() == fa
    Y = X.copy()
    Y[37, 4] = np.nextafter(Y[37, 4], np.float32(np.inf))
    np.save(tmp_path / "c.npy", Y)
    assert load_npy(tmp_path / "c.npy").fingerprint() != fa
    assert load_array(X.view(np.int32)).fingerprint() != fa  # same bytes, other dtype
    assert load_array(X.reshape(40, 5, 1)).fingerprint() != fa  # same bytes, other shape
    t1 = load(["a b", "c"]).fingerprint()
    assert t1 == load(["a b", "c"]).fingerprint()
    assert t1 != load(["a", "b c"]).fingerprint() and t1 != load(["a b", "c", ""]).fingerprint()


# --------------------------------------------------------------------------------- images

COLORS = {"cat": (200, 30, 40), "dog": (10, 220, 90), "owl": (100, 100, 100)}


def _png(path: Path, color, size=(6, 4), fmt=None):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def test_image_folder_classes(tmp_path):
    # Classes written out of order, with mixed extensions, a nested folder and a non-image file.
    for name in ("owl", "cat", "dog"):
        for i in range(3 if name != "dog" else 2):
            _png(tmp_path / name / f"{i}.png", COLORS[name])
    _png(tmp_path / "cat" / "nested" / "9.bmp", COLORS["cat"])
    (tmp_path / "cat" / "README.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    ds = load_image_folder(tmp_path)
    assert ds.class_names == ["cat", "dog", "owl"]
    assert ds.kind == "images" and ds.X.dtype == np.uint8 and ds.X.shape == (9, 4, 6, 3)
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 0, 1, 1, 2, 2, 2])
    for xi, yi in zip(ds.X, ds.y):
        assert (xi == np.array(COLORS[ds.class_names[yi]], np.uint8)).all()
    gray = load_image_folder(tmp_path, grayscale=True)
    assert gray.X.shape == (9, 4, 6, 1)
    assert (gray.X[gray.y == 2] == 100).all()  # a grey pixel keeps its value
    assert load(tmp_path).class_names == ["cat", "dog", "owl"]


def test_image_folder_flat_and_resize(tmp_path):
    _png(tmp_path / "b.jpg", (255, 255, 255), size=(8, 8), fmt="JPEG")
    _png(tmp_path / "a.png", (0, 0, 255), size=(16, 10))
    _png(tmp_path / "c.gif", (255, 0, 0), size=(5, 5), fmt="GIF")
    with pytest.raises(ValueError, match="size="):
        load_image_folder(tmp_path)
    ds = load_image_folder(tmp_path, size=(12, 7))
    assert ds.y is None and ds.class_names is None
    assert ds.X.shape == (3, 12, 7, 3)
    assert (ds.X[0] == [0, 0, 255]).all()  # a.png first: sorted paths
    assert (ds.X[1] >= 250).all()  # the white jpeg, resized
    assert (ds.X[2] == [255, 0, 0]).all()
    assert load_image_folder(tmp_path, size=5).X.shape == (3, 5, 5, 3)
    with pytest.raises(ValueError, match="size="):
        load_image_folder(tmp_path, size=(0, 3))


def test_image_folder_errors(tmp_path):
    _png(tmp_path / "ok.png", (1, 2, 3))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path, size=4)
    # A valid header with truncated pixel data is caught when decoding.
    from PIL import Image
    noise = np.random.default_rng(5).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "ok.png")
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match="broken.png.*truncated"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "absent")
    mixed = tmp_path / "mixed"
    _png(mixed / "top.png", (0, 0, 0))
    _png(mixed / "cls" / "x.png", (0, 0, 0))
    with pytest.raises(ValueError, match="sub-folder"):
        load_image_folder(mixed)


# --------------------------------------------------------------------------------- texts, tables

def test_load_texts(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("\ufefffirst line\n\n  second, with spaces  \r\n   \nthird ünïcode\n", "utf-8")
    ds = load_texts(p)
    assert ds.kind == "texts" and ds.X is None and ds.y is None
    assert ds.texts == ["first line", "second, with spaces", "third ünïcode"]
    assert len(ds) == 3 and load(p).texts == ds.texts
    p.write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="UTF-8"):
        load_texts(p)


ROWS = [{"id": "1", "text": "red shirt, cotton", "label": "shirt"},
        {"id": "2", "text": "blue\njeans", "label": "trousers"},
        {"id": "3", "text": "green shirt", "label": "shirt"}]


def test_load_csv_and_tsv(tmp_path):
    for ext, delim in ((".csv", ","), (".tsv", "\t")):
        p = tmp_path / f"t{ext}"
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["id", "text", "label"], delimiter=delim)
            w.writeheader()
            w.writerows(ROWS)
        ds = load_table(p, label_column="label")
        assert ds.texts == [r["text"] for r in ROWS]  # quoted comma and newline survive
        assert ds.class_names == ["shirt", "trousers"]
        np.testing.assert_array_equal(ds.y, [0, 1, 0])
        auto = load(p)  # a column named "label" is read by default
        np.testing.assert_array_equal(auto.y, ds.y)
        plain = load_table(p, label_column=None)
        assert plain.y is None and plain.texts == ds.texts
        with pytest.raises(ValueError, match=r"available columns: \['id', 'text', 'label'\]"):
            load_table(p, text_column="body")
        with pytest.raises(ValueError, match="'category'.*available columns"):
            load_table(p, label_column="category")


def test_load_jsonl(tmp_path):
    p = tmp_path / "t.jsonl"
    recs = [{"body": "a", "y": 10}, {"body": "b", "y": 2}, {"body": "c", "y": 10, "extra": 1}]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n", "utf-8")
    ds = load_table(p, text_column="body", label_column="y")
    assert ds.texts == ["a", "b", "c"]
    assert ds.class_names == ["2", "10"]  # numeric order, not string order
    np.testing.assert_array_equal(ds.y, [1, 0, 1])
    assert load(p, text_column="body").y is None
    with pytest.raises(ValueError, match=r"\['body', 'y', 'extra'\]"):
        load_table(p)
    arr = tmp_path / "t.json"
    arr.write_text(json.dumps(recs), "utf-8")
    assert load_table(arr, text_column="body").texts == ["a", "b", "c"]
    p.write_text('{"text": "x"}\n{"text": \n', "utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_table(p)
    p.write_text('{"text": "x", "label": "a"}\n{"text": "y"}\n', "utf-8")
    with pytest.raises(ValueError, match="record 2"):
        load_table(p, label_column="label")


# --------------------------------------------------------------------------------- digits, arrays

def test_digits():
    from sklearn.datasets import load_digits
    ref = load_digits()
    ds = load_digits_dataset()
    assert ds.kind == "images" and ds.X.shape == (1797, 8, 8) and ds.X.dtype == np.uint8
    assert ds.X.min() == 0 and ds.X.max() == 255
    # scikit-learn's 17 grey levels 0..16, each scaled to 0..255 and rounded: still 17 levels.
    np.testing.assert_array_equal(ds.X.reshape(1797, 64), np.rint(ref.data * 255 / 16))
    assert len(np.unique(ds.X)) == 17
    np.testing.assert_array_equal(ds.y, ref.target)
    assert ds.y.dtype == np.int64 and ds.class_names == [str(i) for i in range(10)]
    assert load("digits").fingerprint() == ds.fingerprint()


def test_load_array_and_subsets():
    X = np.arange(24, dtype=np.float32).reshape(6, 4)
    ds = load_array(X, ["b", "a", "c", "a", "b", "b"])
    assert ds.X is X and ds.kind == "vectors"
    assert ds.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.y, [1, 0, 2, 0, 1, 1])
    sub = ds.subset([5, 0])
    np.testing.assert_array_equal(sub.X, X[[5, 0]])
    np.testing.assert_array_equal(sub.y, [1, 1])
    assert sub.class_names == ds.class_names and len(sub) == 2
    sel = ds.select_classes([2, 0])
    np.testing.assert_array_equal(sel.X, X[[1, 2, 3]])
    np.testing.assert_array_equal(sel.y, [0, 2, 0])  # original label values kept
    np.testing.assert_array_equal(ds.select_classes(["c"]).y, [2])
    with pytest.raises(ValueError, match="do not occur"):
        ds.select_classes([7])
    with pytest.raises(ValueError, match="y=None"):
        load_array(X).select_classes([0])
    with pytest.raises(ValueError, match=r"\(6,\)"):
        ds.subset(np.ones(5, bool))
    with pytest.raises(IndexError):
        ds.subset([6])
    images = load_array(np.zeros((3, 5, 5), np.uint8))
    assert images.kind == "images" and images.y is None
    with pytest.raises(ValueError, match="one label per sample"):
        load_array(X, [0, 1])
    with pytest.raises(ValueError, match="non-integer"):
        load_array(X, np.linspace(0, 1, 6))
    texts = load(["x", "y", "z"], y=[1, 1, 0])
    np.testing.assert_array_equal(texts.subset(np.array([True, False, True])).y, [1, 0])
    assert texts.select_classes([0]).texts == ["z"]


def test_load_array_torch():
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    ds = load(t)
    assert isinstance(ds.X, np.ndarray) and ds.X.dtype == np.float32
    np.testing.assert_array_equal(ds.X, t.numpy())
    ds = load_array(t, torch.tensor([0, 1, 1]))
    np.testing.assert_array_equal(ds.y, [0, 1, 1])


def test_as_feature_matrix():
    u8 = np.random.default_rng(4).integers(0, 256, (5, 3, 2, 3)).astype(np.uint8)
    F = as_feature_matrix(load_array(u8))
    assert F.dtype == np.float32 and F.shape == (5, 18)
    np.testing.assert_allclose(F, u8.reshape(5, 18) / 255.0, rtol=1e-6)
    assert F.max() <= 1.0
    digits = as_feature_matrix(load_digits_dataset())  # uint8 images: rescaled to [0, 1] like any
    assert digits.shape == (1797, 64) and digits.max() == 1.0
    v = np.arange(6, dtype=np.float64).reshape(3, 2)
    np.testing.assert_array_equal(as_feature_matrix(load_array(v)), v.astype(np.float32))
    with pytest.raises(ValueError, match="encoder"):
        as_feature_matrix(load(["a"]))


def test_as_feature_matrix_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "_HASH_CHUNK_BYTES", 100)
    parts = [np.full((n, 2, 2), n, np.uint8) for n in (3, 7, 1)]
    _write_shards(tmp_path / "s", parts)
    F = as_feature_matrix(load(tmp_path / "s"))
    np.testing.assert_allclose(F, np.concatenate(parts).reshape(11, 4) / 255.0, rtol=1e-6)


# --------------------------------------------------------------------------------- dispatch

def test_load_dispatch(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    assert isinstance(load(tmp_path / "x.npy").X, np.memmap)
    assert isinstance(load(str(tmp_path / "x.npy"), mmap=False).X, np.ndarray)
    shards = tmp_path / "shards"
    _write_shards(shards, [np.zeros((2, 3), np.float32), np.ones((1, 3), np.float32)])
    assert load(shards).X.shape == (3, 3)
    imgs = tmp_path / "imgs"
    _png(imgs / "k" / "0.png", (5, 5, 5))
    assert load(imgs).X.shape == (1, 4, 6, 3)
    write_idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 2, 2), np.uint8), gz=False)
    write_idx(tmp_path / "x.gz", np.zeros((2, 2, 2), np.uint8), gz=True)
    write_idx(tmp_path / "x.idx", np.zeros((2, 2, 2), np.uint8), gz=False)
    for name in ("x-idx3-ubyte", "x.gz", "x.idx"):
        assert load(tmp_path / name).X.shape == (2, 2, 2)
    (tmp_path / "t.txt").write_text("a\nb\n")
    assert load(tmp_path / "t.txt").texts == ["a", "b"]
    (tmp_path / "t.csv").write_text("text,label\nhi,x\n")
    assert load(tmp_path / "t.csv", label_column="label").class_names == ["x"]
    (tmp_path / "t.jsonl").write_text('{"text": "hi"}\n')
    assert load(tmp_path / "t.jsonl").texts == ["hi"]
    arr = np.ones((2, 2))
    assert load(arr).X is arr
    ds = load("digits")
    assert load(ds) is ds


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="accepted"):
        load(tmp_path / "missing.npy")
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"\.npy.*\.csv"):
        load(tmp_path / "model.bin")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x")
    with pytest.raises(ValueError, match="neither"):
        load(tmp_path / "docs")
    with pytest.raises(ValueError, match="accepted"):
        load(42)


def test_dataset_validation():
    with pytest.raises(ValueError, match="kind"):
        Dataset(X=np.zeros((2, 2)), kind="audio")
    with pytest.raises(ValueError, match="texts="):
        Dataset(kind="texts")
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        Dataset(X=np.zeros((2, 2, 2)), kind="vectors")
    ds = Dataset(X=np.zeros((2, 2)), y=[0, 1])
    assert ds.y.dtype == np.int64 and "vectors" in repr(ds)


# --------------------------------------------------------------------------------- trust (issue 11)
# Every class of damaged or hostile input gives ValueError / MemoryError / FileNotFoundError
# naming the file, before anything is allocated from the file's own numbers, and never hangs.

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from conftest import call_bounded_on_fifo  # noqa: E402
import zlib  # noqa: E402

from PIL import Image  # noqa: E402

VALID_IDX_CODES = {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}


def _idx_header(code: int, dims) -> bytes:
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def test_idx_every_invalid_type_code_and_ndim_is_refused(tmp_path):
    p = tmp_path / "x-ubyte"
    for code in range(256):
        if code in VALID_IDX_CODES:
            continue
        p.write_bytes(_idx_header(code, (1, 1)) + b"\0")
        with pytest.raises(ValueError, match="x-ubyte.*magic"):
            load_idx(p)
    for ndim in (0, 5, 17, 255):
        p.write_bytes(struct.pack(">HBB", 0, 8, ndim) + b"\0" * (4 * ndim + 8))
        with pytest.raises(ValueError, match=f"x-ubyte.*{ndim} dims"):
            load_idx(p)
    for first in (1, 0x100, 0xFFFF):  # the two leading bytes must be zero
        p.write_bytes(struct.pack(">HBB", first, 8, 1) + struct.pack(">I", 1) + b"\0")
        with pytest.raises(ValueError, match="magic"):
            load_idx(p)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims", [(0xFFFFFFFF,) * 4, (2 ** 31, 2 ** 31, 2), (100_000, 10_000, 10_000),
                                  (60_000, 28, 28)])
def test_idx_huge_dims_refused_before_allocating(tmp_path, gz, dims):
    """A header declaring far more data than the file holds (products overflowing 64 bits
    included) is refused from the header alone: the file is a few bytes."""
    raw = _idx_header(0x0E, dims) + b"\0" * 64
    p = tmp_path / ("h.gz" if gz else "h-ubyte")
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match=r"h(\.gz|-ubyte).*(truncated|damaged)"):
        load_idx(p)


def test_idx_allocation_is_bounded_by_memory_limit(tmp_path):
    X = np.zeros((50, 28, 28), np.uint8)
    for gz in (False, True):
        p = write_idx(tmp_path / f"m{gz}-ubyte", X, gz)
        with pytest.raises(MemoryError, match=rf"m{gz}-ubyte.*39200 bytes.*memory_limit"):
            load_idx(p, memory_limit=39_199)
        assert load_idx(p, memory_limit=39_200).X.shape == (50, 28, 28)
    y = write_idx(tmp_path / "y-ubyte", np.zeros(50, np.uint8), gz=False)
    with pytest.raises(MemoryError):  # images + labels (+ their int64 copy) are counted together
        load_idx(tmp_path / "mFalse-ubyte", y, memory_limit=39_200 + 50)
    with pytest.raises(ValueError, match="memory_limit"):
        load_idx(tmp_path / "mFalse-ubyte", memory_limit=-1)


def test_idx_gzip_header_lies_checked_in_a_subprocess_under_a_memory_cap(tmp_path):
    """A 1 KB gzip file whose header declares 8 GB must be refused without trying: under an
    address-space limit of 1 GB any such allocation would show as MemoryError instead."""
    raw = _idx_header(0x08, (8, 1 << 15, 1 << 15)) + b"\0" * 1000
    p = tmp_path / "lie.gz"
    p.write_bytes(gzip.compress(raw))
    code = (
        "import resource, sys\n"
        "from embedcluster.data import load_idx\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "try:\n"
        f"    load_idx({str(p)!r})\n"
        "except ValueError as e:\n"
        "    print('VALUE', e)\n"
        "except MemoryError as e:\n"
        "    print('MEMORY', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("VALUE") and "lie.gz" in out.stdout, out.stdout + out.stderr


def test_idx_damaged_gzip_anywhere_is_a_value_error(tmp_path):
    """Every byte of the deflate stream and trailer flipped in turn: zlib.error, EOFError,
    BadGzipFile and CRC errors all come back as ValueError naming the file (bytes 4..9, the
    gzip header's time and flags, may change without damage)."""
    rng = np.random.default_rng(3)
    raw = idx_bytes(rng.integers(0, 256, (6, 7, 5)).astype(np.uint8))
    good = gzip.compress(raw, mtime=0)
    p = tmp_path / "d.gz"
    for i in range(10, len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x5A
        p.write_bytes(bytes(bad))
        try:
            ds = load_idx(p)
        except ValueError as e:
            assert "d.gz" in str(e)
        else:  # only a flip that leaves the data intact may load, and then it must be exact
            np.testing.assert_array_equal(ds.X.reshape(-1), np.frombuffer(raw[16:], np.uint8))
    for cut in range(1, len(good)):
        p.write_bytes(good[:cut])
        with pytest.raises(ValueError, match="d.gz"):
            load_idx(p)


def test_idx_gzip_stream_longer_or_shorter_than_header(tmp_path):
    raw = idx_bytes(np.zeros((4, 3, 3), np.uint8))
    p = tmp_path / "s.gz"
    p.write_bytes(gzip.compress(raw + b"\1"))
    with pytest.raises(ValueError, match="s.gz.*more data"):
        load_idx(p)
    p.write_bytes(gzip.compress(raw) + gzip.compress(b"\0\0\0"))  # a second gzip member
    with pytest.raises(ValueError, match="s.gz.*more data"):
        load_idx(p)
    p.write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(ValueError, match="s.gz.*truncated"):
        load_idx(p)
    p.write_bytes(gzip.compress(raw) + b"trailing garbage")
    with pytest.raises(ValueError, match="s.gz"):
        load_idx(p)
    # A raw deflate stream with a gzip magic but a broken header.
    p.write_bytes(b"\x1f\x8b" + zlib.compress(raw)[2:])
    with pytest.raises(ValueError, match="s.gz"):
        load_idx(p)


def test_idx_labels_must_match_images(tmp_path):
    X = write_idx(tmp_path / "x-ubyte", np.zeros((3, 2, 2), np.uint8), gz=False)
    y2d = write_idx(tmp_path / "y2-ubyte", np.zeros((3, 2), np.uint8), gz=False)
    with pytest.raises(ValueError, match="y2-ubyte.*1-D"):
        load_idx(X, y2d)
    yf = write_idx(tmp_path / "yf-ubyte", np.array([0.5, 1, 2], np.float32), gz=False)
    with pytest.raises(ValueError, match="yf-ubyte.*non-integer"):
        load_idx(X, yf)
    y2 = write_idx(tmp_path / "y-ubyte", np.zeros(2, np.uint8), gz=True)
    with pytest.raises(ValueError, match="2 labels but .*x-ubyte has 3 samples"):
        load_idx(X, y2)


NOT_NPY = {
    "png": lambda p: Image.new("L", (3, 3)).save(p, format="PNG"),
    "jpeg": lambda p: Image.new("RGB", (3, 3)).save(p, format="JPEG"),
    "gzip": lambda p: p.write_bytes(gzip.compress(b"hello")),
    "npz": lambda p: np.savez(open(p, "wb"), a=np.zeros(3)),
    "pickle": lambda p: p.write_bytes(__import__("pickle").dumps([1, 2])),
    "text": lambda p: p.write_text("1,2,3\n"),
    "empty": lambda p: p.write_bytes(b""),
    "idx": lambda p: p.write_bytes(idx_bytes(np.zeros((2, 2), np.uint8))),
}


@pytest.mark.parametrize("kind", sorted(NOT_NPY))
def test_non_npy_files_named_npy_are_called_what_they_are(tmp_path, kind):
    p = tmp_path / "x.npy"
    NOT_NPY[kind](p)
    for call in (lambda: load_npy(p), lambda: load_npy(p, mmap=False), lambda: load(p)):
        with pytest.raises(ValueError, match="x.npy.*not a .npy file|x.npy is an .npz") as e:
            call()
        assert "allow_pickle" not in str(e.value) and "pickled" not in str(e.value)


def test_object_and_structured_npy_refused_without_suggesting_pickle(tmp_path):
    p = tmp_path / "o.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="o.npy.*objects") as e:
        load_npy(p)
    assert "allow_pickle" not in str(e.value)
    np.save(p, np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]))
    with pytest.raises(ValueError, match="o.npy.*dtype"):
        load_npy(p)
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    np.save(p, np.array(["a", None, "b"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="o.npy.*objects"):
        load_npy(tmp_path / "x.npy", labels=p)
    np.save(p, np.array(["a", "b", "a"]))  # string labels are fine
    assert load_npy(tmp_path / "x.npy", labels=p).class_names == ["a", "b"]


@pytest.mark.parametrize("mmap", [True, False])
def test_npy_size_must_match_header(tmp_path, mmap):
    good = tmp_path / "g.npy"
    np.save(good, np.arange(60, dtype=np.float64).reshape(10, 6))
    raw = good.read_bytes()
    p = tmp_path / "t.npy"
    for cut in (1, 7, 8, 479, 480):
        p.write_bytes(raw[:-cut])
        with pytest.raises(ValueError, match="t.npy.*(truncated|damaged)"):
            load_npy(p, mmap=mmap)
    p.write_bytes(raw + b"\0" * 8)
    with pytest.raises(ValueError, match="t.npy.*8 bytes after"):
        load_npy(p, mmap=mmap)
    # A header declaring an enormous shape over a tiny file: refused from the header.
    hdr = b"{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999, 100000), }"
    hdr = hdr + b" " * (64 * 2 - 10 - len(hdr) - 1) + b"\n"
    p.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr + b"\0" * 32)
    with pytest.raises(ValueError, match="t.npy is truncated"):
        load_npy(p, mmap=mmap)
    with pytest.raises(MemoryError, match="g.npy.*memory_limit"):
        load_npy(good, mmap=False, memory_limit=100)
    assert load_npy(good, mmap=mmap, memory_limit=480).X.shape == (10, 6)


def _bounded(fn, fifo: Path):
    return call_bounded_on_fifo(fn, fifo)


def _fifo_cases(tmp_path: Path) -> list:
    cases = []
    for name, call in (("x.npy", load_npy), ("x-ubyte", load_idx), ("x.gz", load_idx),
                       ("x.txt", load_texts), ("x.csv", load_table), ("x.jsonl", load_table),
                       ("y.npy", load), ("y.txt", load), ("y.csv", load), ("y.idx", load)):
        f = tmp_path / name
        if not f.exists():
            os.mkfifo(f)
        cases.append((name, f, lambda f=f, call=call: call(f)))
    # labels given as a FIFO
    np.save(tmp_path / "X.npy", np.zeros((3, 2), np.float32))
    cases.append(("labels npy", tmp_path / "x.npy",
                  lambda: load_npy(tmp_path / "X.npy", labels=tmp_path / "x.npy")))
    xi = write_idx(tmp_path / "X-ubyte", np.zeros((3, 2, 2), np.uint8), gz=False)
    cases.append(("labels idx", tmp_path / "x-ubyte", lambda: load_idx(xi, tmp_path / "x-ubyte")))
    # a FIFO inside folders: an image folder, a shard folder, Fashion-MNIST's root
    imgs = tmp_path / "imgs"
    _png(imgs / "a.png", (1, 2, 3))
    os.mkfifo(imgs / "b.png")
    cases.append(("image folder", imgs / "b.png", lambda: load_image_folder(imgs)))
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "a.npy", np.zeros((2, 2), np.float32))
    os.mkfifo(shards / "b.npy")
    cases.append(("shards", shards / "b.npy", lambda: load_npy_shards(shards)))
    fm = tmp_path / "fm"
    fm.mkdir()
    os.mkfifo(fm / "t10k-images-idx3-ubyte.gz")
    write_idx(fm / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8), gz=True)
    cases.append(("fashion root", fm / "t10k-images-idx3-ubyte.gz",
                  lambda: load_fashion_mnist("test", root=fm)))
    return cases


def test_fifos_are_refused_before_opening(tmp_path):
    for name, fifo, call in _fifo_cases(tmp_path):
        with pytest.raises(ValueError, match="FIFO") as e:
            _bounded(call, fifo)
        assert fifo.name in str(e.value), name


def test_fifo_refusal_holds_in_a_fresh_process(tmp_path):
    """The same refusal with a hard wall-clock bound: a regression hangs a child, not the run."""
    f = tmp_path / "p.npy"
    os.mkfifo(f)
    code = ("from embedcluster.data import load\n"
            "try:\n"
            f"    load({str(f)!r})\n"
            "except ValueError as e:\n"
            "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "refused:" in out.stdout and "FIFO" in out.stdout, out.stdout + out.stderr


def test_devices_and_sockets_are_refused(tmp_path):
    import socket

    with pytest.raises(ValueError, match="character device"):
        load_texts("/dev/zero")
    with pytest.raises(ValueError, match="character device"):
        load_npy("/dev/zero")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / "s.csv"
    try:
        s.bind(os.fspath(path))
        with pytest.raises(ValueError, match="socket"):
            load_table(path)
    finally:
        s.close()
    with pytest.raises(IsADirectoryError, match="folder"):
        load_texts(tmp_path)


def _png16(path: Path, arr: np.ndarray, mode: str = "I;16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes(mode, (arr.shape[1], arr.shape[0]),
                         arr.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    im.save(path, format="PNG")


def test_16_bit_png_scaled_like_8_bit(tmp_path):
    """16-bit grey PNGs (Pillow: I;16 / I;16B / I) land in [0, 1] by /65535 beside 8-bit /255,
    instead of saturating at 255; the oracle is the array that was written."""
    v16 = np.array([[0, 257, 32768], [65535, 1000, 50000]], np.uint16)
    v8 = np.array([[0, 1, 128], [255, 10, 200]], np.uint8)
    _png16(tmp_path / "a" / "x16.png", v16)
    _png16(tmp_path / "a" / "x16b.png", v16, mode="I;16B")
    (tmp_path / "b").mkdir()
    Image.fromarray(v8).save(tmp_path / "b" / "x8.png")
    for p in (tmp_path / "a" / "x16.png", tmp_path / "a" / "x16b.png"):
        assert Image.open(p).mode in ("I;16", "I;16B", "I")
    ds = load_image_folder(tmp_path, grayscale=True)
    assert ds.X.dtype == np.float32 and ds.X.shape == (3, 2, 3, 1)
    np.testing.assert_allclose(ds.X[0, ..., 0], v16 / 65535.0, rtol=1e-6)
    np.testing.assert_allclose(ds.X[1, ..., 0], v16 / 65535.0, rtol=1e-6)
    np.testing.assert_allclose(ds.X[2, ..., 0], v8 / 255.0, rtol=1e-6)
    assert ds.X.max() <= 1.0 and ds.X.min() >= 0.0
    rgb = load_image_folder(tmp_path, grayscale=False)  # grey repeated into three channels
    assert rgb.X.shape == (3, 2, 3, 3)
    auto = load_image_folder(tmp_path)  # an all-grey folder: one channel, as (n, H, W)
    np.testing.assert_array_equal(auto.X, ds.X[..., 0])
    for c in range(3):
        np.testing.assert_allclose(rgb.X[0, ..., c], v16 / 65535.0, rtol=1e-6)
    # Resized 16-bit images keep the scale (a constant image stays constant).
    _png16(tmp_path / "c" / "k.png", np.full((8, 8), 30000, np.uint16))
    small = load_image_folder(tmp_path / "c", size=4, grayscale=True)
    np.testing.assert_allclose(small.X, 30000 / 65535.0, rtol=1e-5)
    # as_feature_matrix keeps float images as they are: both scales agree there too.
    np.testing.assert_allclose(as_feature_matrix(ds)[2], (v8 / 255.0).reshape(-1), rtol=1e-6)
    # 8-bit folders stay uint8.
    assert load_image_folder(tmp_path / "b").X.dtype == np.uint8


def test_palette_alpha_and_grey_modes(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], np.uint8)
    alpha = np.array([[255, 0], [128, 7]], np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    pal = Image.fromarray(rgb, mode="RGB").quantize(4)
    pal.save(tmp_path / "p.png")
    grey = np.array([[0, 50], [100, 255]], np.uint8)
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(tmp_path / "la.png")
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    Image.fromarray(grey > 60).save(tmp_path / "one.png")  # mode "1"
    ds = load_image_folder(tmp_path)
    # sorted names: l.png, la.png, one.png, p.png, rgba.png
    assert ds.X.dtype == np.uint8 and ds.X.shape == (5, 2, 2, 3)
    np.testing.assert_array_equal(ds.X[0], np.repeat(grey[..., None], 3, 2))
    np.testing.assert_array_equal(ds.X[1], np.repeat(grey[..., None], 3, 2))  # alpha dropped
    np.testing.assert_array_equal(ds.X[2], np.repeat(np.where(grey > 60, 255, 0)[..., None], 3, 2))
    palette = np.array(pal.getpalette()[:12], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(ds.X[3], palette[np.asarray(pal)])
    np.testing.assert_array_equal(ds.X[4], rgb)  # colour kept, alpha dropped
    g = load_image_folder(tmp_path, grayscale=True)
    np.testing.assert_array_equal(g.X[0, ..., 0], grey)
    np.testing.assert_array_equal(g.X[1, ..., 0], grey)


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n",
                                     b"GIF89a\x01\x00", b"\xff\xd8\xff\xe0"])
def test_non_images_named_png_are_value_errors(tmp_path, content):
    _png(tmp_path / "ok.png", (1, 2, 3))
    (tmp_path / "bad.png").write_bytes(content)
    for size in (None, 4):
        with pytest.raises(ValueError, match="bad.png"):
            load_image_folder(tmp_path, size=size)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_allocation_bounded(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", (1, 2, 3), size=(100, 100))
    with pytest.raises(MemoryError, match="3 images of 100x100x3"):
        load_image_folder(tmp_path, memory_limit=90_000)
    # A header declaring a 60000 x 60000 image over a few hundred bytes: refused before decoding.
    big = Image.new("L", (1, 1))
    big.save(tmp_path / "3.png")
    raw = bytearray((tmp_path / "3.png").read_bytes())
    raw[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height (CRC now wrong)
    (tmp_path / "3.png").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"3\.png"):
        load_image_folder(tmp_path, size=10, memory_limit=10_000_000)
    # With a correct CRC, Pillow's own bomb limit refuses 60000 x 60000 ...
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    (tmp_path / "3.png").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"3\.png.*decompression bomb"):
        load_image_folder(tmp_path, size=10, memory_limit=10_000_000)
    # ... and below it (10000 x 10000, 400 MB as float) the header is checked against memory
    # before the pixels are decoded.
    raw[16:24] = struct.pack(">II", 10000, 10000)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    (tmp_path / "3.png").write_bytes(bytes(raw))
    with pytest.raises(MemoryError, match="needs about"):
        load_image_folder(tmp_path, size=10, memory_limit=10_000_000)


def _write(p: Path, text: str) -> Path:
    p.write_text(text, "utf-8")
    return p


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".json"])
@pytest.mark.parametrize("blank", ["", " ", "\t \n "])
def test_empty_texts_are_refused_with_record_numbers(tmp_path, ext, blank):
    texts = ["fine", blank, "also fine", blank, blank]
    p = tmp_path / f"t{ext}"
    if ext in (".csv", ".tsv"):
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t" if ext == ".tsv" else ",")
            w.writerow(["text"])
            w.writerows([[t] for t in texts])
    elif ext == ".jsonl":
        _write(p, "\n".join(json.dumps({"text": t}) for t in texts))
    else:
        _write(p, json.dumps([{"text": t} for t in texts]))
    with pytest.raises(ValueError, match=r"t\.\w+: 3 records \(2, 4, 5\) have an empty text"):
        load_table(p)


@pytest.mark.parametrize("body,where,what", [
    ('text\n"unterminated\n', "line", "CSV"),
    ('text\n"a"b\n', "line 2", "CSV"),
    ("text\n" + "x" * 200_000 + "\n", "line", "CSV"),
    ("text,label\na,1,extra\n", "line 2", "fields"),
    ("text,text\na,b\n", "", "more than once"),
])
def test_malformed_csv_names_file_and_line(tmp_path, body, where, what):
    p = _write(tmp_path / "bad.csv", body)
    with pytest.raises(ValueError, match=f"bad.csv.*{where}.*{what}|bad.csv.*{what}"):
        load_table(p)


@pytest.mark.parametrize("raw,match", [
    (b"text\nab\x00c\n", r"NUL byte \(byte 7, line 2\)"),
    ("text\nx\n".encode("utf-16"), "NUL byte"),
    (b"text\ncaf\xe9\n", r"not valid UTF-8 \(byte 8, line 2"),
])
def test_binary_and_undecodable_text_files(tmp_path, raw, match):
    for name in ("b.csv", "b.txt", "b.jsonl"):
        p = tmp_path / name
        p.write_bytes(raw)
        with pytest.raises(ValueError, match=f"{name}.*{match}"):
            load(p)


@pytest.mark.parametrize("line", ["[1, 2]", "3", '"text"', "null", "true"])
def test_jsonl_records_that_are_not_objects(tmp_path, line):
    p = _write(tmp_path / "r.jsonl", '{"text": "a"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl line 3 is a JSON \w+; each record must be"):
        load_table(p)
    arr = _write(tmp_path / "r.json", f'[{{"text": "a"}}, {line}]')
    with pytest.raises(ValueError, match=r"r.json record 2 is a JSON"):
        load_table(arr)


@pytest.mark.parametrize("line", ["[" * 100_000, '{"text": ' + "9" * 5000 + "}",
                                  '{"text": ["a"]}', '{"text": {"a": 1}}'])
def test_hostile_json_values(tmp_path, line):
    p = _write(tmp_path / "h.jsonl", line + "\n")
    with pytest.raises(ValueError, match="h.jsonl.*(line 1|record 1)"):
        load_table(p)


def test_texts_without_any_text(tmp_path):
    with pytest.raises(ValueError, match="e.txt holds no text"):
        load_texts(_write(tmp_path / "e.txt", "\n  \n\t\n"))
    with pytest.raises(ValueError, match="e.csv holds no records"):
        load_table(_write(tmp_path / "e.csv", "text\n"))


def test_feature_matrix_of_a_huge_memory_map_is_bounded(tmp_path):
    """A legitimate .npy larger than memory is memory-mapped (a sparse file here); the float32
    copy that as_feature_matrix would make is refused before it is allocated."""
    p = tmp_path / "huge.npy"
    rows = int(_common._memory_budget()) // (4 << 12) + 1024  # just more than memory
    X = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(rows, 1 << 12))
    del X  # tens of GiB apparent size, a few KiB on disk
    ds = load_npy(p)
    assert ds.X.shape == (rows, 1 << 12)
    with pytest.raises(MemoryError, match="feature matrix .*huge.npy"):
        as_feature_matrix(ds)
    with pytest.raises(MemoryError, match="huge.npy.*mmap=True"):
        load_npy(p, mmap=False)


# --------------------------------------------------------------------------- issue 16: grey images, columns, sniffing
def test_grey_png_folder_loads_one_channel(tmp_path):
    """Fashion-MNIST-like grey PNGs: (n, 28, 28) uint8 and 784 raw features, the pixels written."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"{i}.png")
    ds = load(tmp_path)
    assert ds.X.shape == (5, 28, 28) and ds.X.dtype == np.uint8
    np.testing.assert_array_equal(ds.X, pixels)
    F = as_feature_matrix(ds)
    assert F.shape == (5, 784)
    np.testing.assert_allclose(F, pixels.reshape(5, -1) / 255.0, rtol=1e-6)
    assert ds.ids == [f"{i}.png" for i in range(5)]
    assert ds.subset([4, 1]).ids == ["4.png", "1.png"]
    # One colour image makes the folder RGB; grayscale=True keeps the explicit (n, H, W, 1).
    Image.new("RGB", (28, 28), (200, 10, 10)).save(tmp_path / "z.png")
    assert load(tmp_path).X.shape == (6, 28, 28, 3)
    assert load_image_folder(tmp_path, grayscale=True).X.shape == (6, 28, 28, 1)


def test_grey_palette_and_class_folders_keep_one_channel(tmp_path):
    grey = np.array([[0, 80], [160, 255]], np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(grey).convert("P").save(tmp_path / "a" / "p.png")
    Image.fromarray(grey).save(tmp_path / "a" / "l.png")
    (tmp_path / "b").mkdir()
    Image.fromarray(grey).save(tmp_path / "b" / "x.png")
    ds = load_image_folder(tmp_path)
    assert ds.X.shape == (3, 2, 2) and ds.class_names == ["a", "b"]
    np.testing.assert_array_equal(ds.X, np.stack([grey] * 3))
    assert ds.ids == ["a/l.png", "a/p.png", "b/x.png"]


def test_rgb_encoders_get_three_channels_from_grey(tmp_path):
    pytest.importorskip("torch")
    from embedcluster.encoders import ImagePreprocess

    grey = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    x = ImagePreprocess(mean=(0, 0, 0), std=(1, 1, 1))(grey).numpy()
    assert x.shape == (2, 3, 8, 8)
    for c in range(3):
        np.testing.assert_allclose(x[:, c], grey / 255.0, rtol=1e-6)


def test_missing_text_column_names_the_keyword_in_python_and_the_flag_in_the_cli(tmp_path):
    from embedcluster._interface import command_line

    p = tmp_path / "t.csv"
    p.write_text("description,section\na long description of a package,libs\nshort,utils\n")
    with pytest.raises(ValueError) as e:
        load(p)
    msg = str(e.value)
    assert "text_column='text'" in msg and "['description', 'section']" in msg and "'description'" in msg
    assert "--text-column" not in msg
    with command_line(), pytest.raises(ValueError) as e:
        load(p)
    msg = str(e.value)
    assert "--text-column" in msg and "'description', 'section'" in msg and "text_column=" not in msg
    assert load_table(p, text_column="description", label_column="section").class_names == ["libs", "utils"]
    from embedcluster.data.text import table_columns

    assert table_columns(p) == ["description", "section"]


def test_mixed_sizes_message_names_size_or_image_size(tmp_path):
    from embedcluster._interface import command_line

    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    Image.new("L", (5, 4)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"pass size= \(an int"):
        load(tmp_path)
    with command_line(), pytest.raises(ValueError, match="pass --image-size") as e:
        load(tmp_path)
    assert "size=" not in str(e.value)


SNIFFED = {
    "PNG image": lambda p: Image.new("L", (3, 3)).save(p, format="PNG"),
    "JPEG image": lambda p: Image.new("RGB", (3, 3)).save(p, format="JPEG"),
    "gzip file": lambda p: p.write_bytes(gzip.compress(b"hello")),
    "zip archive": lambda p: np.savez(open(p, "wb"), a=np.zeros(3)),
    "Python pickle": lambda p: p.write_bytes(__import__("pickle").dumps([1, 2], protocol=4)),
    ".npy array": lambda p: np.save(open(p, "wb"), np.zeros(3)),
}


@pytest.mark.parametrize("looks,ext", [(looks, ext) for looks in sorted(SNIFFED)
                                      for ext in (".npy", ".csv", ".txt", ".jsonl")
                                      if (looks, ext) != (".npy array", ".npy")])
def test_files_under_the_wrong_name_are_called_what_they_are(tmp_path, looks, ext):
    p = tmp_path / ("x" + ext)
    SNIFFED[looks](p)
    with pytest.raises(ValueError) as e:
        load(p)
    msg = str(e.value)
    assert looks in msg, msg
    assert "allow_pickle" not in msg and "pickled" not in msg


def test_describe_bytes_on_known_signatures():
    from embedcluster.data._common import describe_bytes

    assert describe_bytes(b"\x89PNG\r\n\x1a\n") == "a PNG image"
    assert describe_bytes(b"\x93NUMPY\x01\x00") == "a .npy array (np.save)"
    assert describe_bytes(b"text,label\n") == "UTF-8 text"
    assert describe_bytes(b"caf\xc3") == "UTF-8 text"  # a character cut by the end of the sample
    assert describe_bytes(b"\x80\x04\x95") == "a Python pickle"
    assert describe_bytes(b"\xde\xad\xbe\xef\x00") == "a file starting with bytes deadbeef00"


def test_table_without_a_label_column_says_so_in_the_log(tmp_path, caplog):
    import logging

    p = tmp_path / "t.csv"
    p.write_text("text,section\nsome text,libs\n")
    with caplog.at_level(logging.INFO, logger="embedcluster"):
        ds = load(p)
    assert ds.y is None
    assert "no column 'label'" in caplog.text and "text, section" in caplog.text and "label_column=" in caplog.text
