"""Data sources for the transfer-clustering pipeline: arrays, .npy files and shards, image
folders, IDX files (Fashion-MNIST), texts, CSV/JSONL tables and scikit-learn's digits.

Everything is read from local files; nothing is ever downloaded. A missing file raises
:class:`FileNotFoundError` with a message that says how to get it.

Every loader returns a :class:`Dataset`:

* ``kind="images"``: ``X`` of shape ``(n, H, W)`` or ``(n, H, W, C)`` (uint8 or float32),
* ``kind="vectors"``: ``X`` of shape ``(n, d)``,
* ``kind="texts"``: ``X`` is ``None`` and ``texts`` holds the strings,

with optional integer labels ``y`` (int64) and their ``class_names``. Large arrays stay on
disk: ``.npy`` files are memory-mapped and folders of ``.npy`` shards are exposed through
:class:`ShardedArray`, a read-only view that concatenates them lazily.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np

__all__ = [
    "Dataset",
    "ShardedArray",
    "load",
    "load_array",
    "load_npy",
    "load_npy_shards",
    "load_image_folder",
    "load_idx",
    "load_fashion_mnist",
    "load_texts",
    "load_table",
    "load_digits_dataset",
    "as_feature_matrix",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

KINDS = ("images", "vectors", "texts")

#: File name extensions (lower case) that :func:`load_image_folder` reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

#: Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

#: The ten Fashion-MNIST classes, in label order 0..9.
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Hashing reads arrays in blocks of about this many bytes, so a memory map of many GB is
# never resident at once.
_HASH_CHUNK_BYTES = 64 << 20

_ACCEPTED_SPECS = (
    "a numpy array or CPU torch tensor; a list of strings; "
    "'digits'; 'fashion-mnist', 'fashion-mnist:train' or 'fashion-mnist:test'; "
    "a folder of .npy shards; a folder of images (one sub-folder per class, or flat); "
    "a .npy file; an IDX file (.idx, .gz, *-ubyte); a .txt file (one text per line); "
    "a .csv, .tsv, .jsonl or .json table"
)


# --------------------------------------------------------------------------------------------
# Sharded arrays
# --------------------------------------------------------------------------------------------

class ShardedArray:
    """Read-only view of several arrays concatenated along the first axis, without copying.

    The shards (typically memory-mapped ``.npy`` files) must share dtype and trailing shape.
    Indexing with an integer returns one row from its shard; a slice, an integer index array
    or a boolean mask returns a new in-memory :class:`numpy.ndarray` holding only the rows
    asked for. ``np.asarray(view)`` materialises the whole array.

    Parameters
    ----------
    shards : sequence of array-like
        The pieces, in order. Each must have at least one dimension.

    Examples
    --------
    >>> a = ShardedArray([np.zeros((2, 3)), np.ones((1, 3))])
    >>> a.shape, a[1:3].sum()
    ((3, 3), 3.0)
    """

    def __init__(self, shards: Sequence[Any]) -> None:
        shards = list(shards)
        if not shards:
            raise ValueError("ShardedArray needs at least one shard")
        first = shards[0]
        for i, s in enumerate(shards):
            if np.ndim(s) == 0:
                raise ValueError(f"shard {i} is a 0-d array; shards need a first (row) axis")
            if s.dtype != first.dtype:
                raise ValueError(f"shard {i} has dtype {s.dtype} but shard 0 has {first.dtype}; "
                                 "all shards must share one dtype")
            if s.shape[1:] != first.shape[1:]:
                raise ValueError(f"shard {i} has rows of shape {s.shape[1:]} but shard 0 has "
                                 f"{first.shape[1:]}; all shards must share the trailing shape")
        self._shards = shards
        lengths = np.array([s.shape[0] for s in shards], dtype=np.int64)
        # _offsets[i] is the global index of shard i's first row; _offsets[-1] is the length.
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    @property
    def shards(self) -> list:
        """The underlying arrays, in order."""
        return list(self._shards)

    @property
    def shape(self) -> tuple:
        """Shape of the concatenated array."""
        return (int(self._offsets[-1]),) + tuple(self._shards[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        """Element dtype shared by all shards."""
        return self._shards[0].dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Size of the concatenated data in bytes."""
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self._shards)})"

    def __iter__(self) -> Iterator[Any]:
        for s in self._shards:
            yield from s

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy is False:
            raise ValueError("a ShardedArray cannot be viewed as one ndarray without a copy")
        out = np.concatenate([np.asarray(s) for s in self._shards], axis=0)
        return out if dtype is None else out.astype(dtype, copy=False)

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new contiguous array (0 <= start <= stop <= len)."""
        out = np.empty((max(stop - start, 0),) + self.shape[1:], dtype=self.dtype)
        if stop <= start:
            return out
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        pos = start
        for i in range(first, len(self._shards)):
            lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
            if lo >= stop:
                break
            a, b = max(pos, lo), min(stop, hi)
            if b > a:
                out[a - start:b - start] = self._shards[i][a - lo:b - lo]
                pos = b
        return out

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """Rows at the (already validated, non-negative) integer positions ``idx``."""
        out = np.empty((idx.shape[0],) + self.shape[1:], dtype=self.dtype)
        if idx.size == 0:
            return out
        which = np.searchsorted(self._offsets, idx, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            local = idx[sel] - self._offsets[s]
            out[sel] = self._shards[int(s)][local]
        return out

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            if not key:
                return np.asarray(self)
            head, rest = key[0], key[1:]
            rows = self[head]
            if not rest:
                return rows
            if isinstance(head, (int, np.integer)):
                return rows[rest]
            return rows[(slice(None),) + rest]
        n = len(self)
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            i = int(key)
            if i < -n or i >= n:
                raise IndexError(f"index {i} is out of bounds for axis 0 with size {n}")
            i %= n
            s = int(np.searchsorted(self._offsets, i, side="right")) - 1
            return self._shards[s][i - int(self._offsets[s])]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._rows(start, max(start, stop))
            return self._take(np.arange(start, stop, step, dtype=np.int64))
        if key is None or key is Ellipsis:
            raise TypeError("ShardedArray supports integers, slices, integer index arrays and "
                            "boolean masks on the first axis; use np.asarray(x) for more")
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean mask has shape {idx.shape}; it must be ({n},)")
            return self._take(np.flatnonzero(idx).astype(np.int64))
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"only integers, slices, integer arrays and boolean masks are "
                             f"valid indices, not dtype {idx.dtype}")
        if idx.ndim != 1:
            raise IndexError(f"index arrays must be 1-D, got shape {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"index {bad} is out of bounds for axis 0 with size {n}")
        return self._take(np.where(idx < 0, idx + n, idx))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Dataset:
    """Samples (images, vectors or texts) with optional integer labels.

    Parameters
    ----------
    X : ndarray, numpy.memmap, ShardedArray or None
        The samples: ``(n, H, W)`` or ``(n, H, W, C)`` for images, ``(n, d)`` for vectors,
        ``None`` for texts.
    y : ndarray of int64, shape (n,), or None
        Labels, when known. ``class_names[y[i]]`` names sample ``i``'s class when both exist.
    kind : {"images", "vectors", "texts"}
        What the samples are.
    texts : list of str or None
        The texts, for ``kind="texts"``.
    class_names : list of str or None
        Name of each label value (index = label).
    source : str
        Human-readable description of where the data came from.
    """

    X: Any = None
    y: np.ndarray | None = None
    kind: str = "vectors"
    texts: list[str] | None = None
    class_names: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} should be one of {KINDS}")
        if self.kind == "texts":
            if self.texts is None:
                raise ValueError("a Dataset with kind='texts' needs texts= (a list of str)")
            self.texts = list(self.texts)
        elif self.X is None:
            raise ValueError(f"a Dataset with kind={self.kind!r} needs X")
        else:
            nd = len(self.X.shape)
            if self.kind == "vectors" and nd != 2:
                raise ValueError(f"vectors need X of shape (n, d), got shape {tuple(self.X.shape)}")
            if self.kind == "images" and nd not in (3, 4):
                raise ValueError("images need X of shape (n, H, W) or (n, H, W, C), got shape "
                                 f"{tuple(self.X.shape)}")
        if self.y is not None:
            y = np.asarray(self.y)
            if y.ndim != 1 or y.shape[0] != len(self):
                raise ValueError(f"y has shape {y.shape}; it must be ({len(self)},), one label "
                                 "per sample")
            self.y = y.astype(np.int64, copy=False)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]

    def __len__(self) -> int:
        if self.kind == "texts":
            return len(self.texts)  # type: ignore[arg-type]
        return int(self.X.shape[0])

    def __repr__(self) -> str:
        shape = f"n={len(self)}" if self.kind == "texts" else \
            f"shape={tuple(self.X.shape)}, dtype={self.X.dtype}"
        labels = "unlabeled" if self.y is None else \
            f"{len(self.class_names) if self.class_names else len(np.unique(self.y))} classes"
        return f"Dataset({self.kind}, {shape}, {labels}, source={self.source!r})"

    def fingerprint(self) -> str:
        """A stable SHA-256 hex digest of the samples, for use as an embedding-cache key.

        Arrays are hashed from their shape, dtype (little-endian) and bytes in blocks of about
        64 MiB, so a memory map larger than RAM is never loaded at once; equal content gives
        the same digest whatever file, shard layout or array type holds it. Texts are hashed
        one by one, each prefixed with its length. Labels, class names and ``source`` are not
        part of the digest: they do not change an embedding.

        Returns
        -------
        str
            64 hexadecimal characters.
        """
        h = hashlib.sha256(b"embedcluster.Dataset v1\0")
        h.update(self.kind.encode() + b"\0")
        if self.kind == "texts":
            h.update(len(self.texts).to_bytes(8, "little"))  # type: ignore[arg-type]
            for t in self.texts:  # type: ignore[union-attr]
                b = t.encode("utf-8", "surrogatepass")
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
            return h.hexdigest()
        X = self.X
        shape = tuple(int(s) for s in X.shape)
        dtype = np.dtype(X.dtype)
        le = dtype.newbyteorder("<")  # one byte order, so equal values hash equal anywhere
        h.update(f"{shape}|{le.str}\0".encode())
        n = shape[0]
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        step = max(1, _HASH_CHUNK_BYTES // row_bytes)
        for a in range(0, n, step):
            chunk = np.ascontiguousarray(X[a:a + step])
            if chunk.dtype != le:
                chunk = chunk.astype(le)
            h.update(chunk.reshape(-1).view(np.uint8))
        return h.hexdigest()

    def subset(self, mask_or_indices: Any) -> Dataset:
        """A new Dataset with the samples chosen by a boolean mask or integer indices.

        Parameters
        ----------
        mask_or_indices : array-like of bool, shape (n,), or array-like of int
            Which samples to keep (indices keep their order and may repeat).

        Returns
        -------
        Dataset
            Same kind, labels and class names; arrays are copied into memory.
        """
        sel = _as_index(mask_or_indices, len(self))
        texts = X = None
        if self.kind == "texts":
            texts = [self.texts[i] for i in sel]  # type: ignore[index]
        else:
            X = self.X[sel]
        y = None if self.y is None else self.y[sel]
        return replace(self, X=X, y=y, texts=texts,
                       class_names=None if self.class_names is None else list(self.class_names),
                       source=f"{self.source} [subset of {len(sel)}]")

    def select_classes(self, classes: Any) -> Dataset:
        """The subset of samples whose label is in ``classes``; label values are kept.

        Parameters
        ----------
        classes : iterable of int or str
            Label values, or class names from ``class_names``.

        Returns
        -------
        Dataset
        """
        if self.y is None:
            raise ValueError("select_classes needs labels, but this dataset has y=None")
        if isinstance(classes, (str, int, np.integer)):
            classes = [classes]
        values = []
        for c in classes:
            if isinstance(c, str):
                if not self.class_names or c not in self.class_names:
                    raise ValueError(f"unknown class name {c!r}; known: {self.class_names}")
                values.append(self.class_names.index(c))
            else:
                values.append(int(c))
        present = set(np.unique(self.y).tolist())
        missing = [v for v in values if v not in present]
        if missing:
            raise ValueError(f"classes {missing} do not occur in y; labels present: "
                             f"{sorted(present)}")
        return self.subset(np.isin(self.y, values))


def _as_index(key: Any, n: int) -> np.ndarray:
    """Boolean mask of length n or integer indices -> int64 positions, bounds-checked."""
    idx = np.asarray(key)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"boolean mask has shape {idx.shape}; it must be ({n},)")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
        raise ValueError(f"expected a boolean mask of shape ({n},) or a 1-D array of integer "
                         f"indices, got dtype {idx.dtype} shape {idx.shape}")
    idx = idx.astype(np.int64)
    if idx.min() < -n or idx.max() >= n:
        raise IndexError(f"indices must lie in [-{n}, {n}), got min {idx.min()} max {idx.max()}")
    return np.where(idx < 0, idx + n, idx)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _existing(path: PathLike, what: str, hint: str = "") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}" + (f"; {hint}" if hint else ""))
    return p


def _to_numpy(a: Any, name: str) -> Any:
    """numpy arrays pass through (memmaps stay memmaps); CPU torch tensors become arrays."""
    if isinstance(a, (np.ndarray, ShardedArray)):
        return a
    if type(a).__module__.split(".")[0] == "torch":
        device = getattr(a, "device", None)
        if device is not None and getattr(device, "type", "cpu") != "cpu":
            raise ValueError(f"{name} is a torch tensor on {device}; move it to the CPU first "
                             f"({name}.cpu())")
        return a.detach().numpy()
    return np.asarray(a)


def _sorted_unique(values: Sequence[Any]) -> list:
    """Unique labels, in numeric order when all are integers (or integer strings), else by text."""
    uniq = list(dict.fromkeys(values))

    def as_int(v: Any) -> int | None:
        if isinstance(v, (bool, np.bool_)):
            return None
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, str) and re.fullmatch(r"\s*[-+]?\d+\s*", v):
            return int(v)
        return None

    ints = [as_int(v) for v in uniq]
    if all(i is not None for i in ints):
        return [v for _, v in sorted(zip(ints, uniq), key=lambda t: (t[0], str(t[1])))]
    return sorted(uniq, key=lambda v: (str(v), type(v).__name__))


def _encode_labels(y: Any, n: int, name: str = "y") -> tuple[np.ndarray | None, list[str] | None]:
    """Labels -> (int64 array, class names or None). Strings map to sorted unique names."""
    if y is None:
        return None, None
    y = np.asarray(_to_numpy(y, name))
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} has shape {y.shape}; it must be ({n},), one label per sample")
    if y.dtype.kind in "US":
        names = _sorted_unique(y.tolist())
        lookup = {v: i for i, v in enumerate(names)}
        return np.array([lookup[v] for v in y.tolist()], dtype=np.int64), [str(v) for v in names]
    if y.dtype.kind == "b":
        return y.astype(np.int64), None
    if y.dtype.kind in "iu":
        return y.astype(np.int64, copy=False), None
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{name} holds non-integer values; labels must be integers")
        return y.astype(np.int64), None
    raise ValueError(f"{name} has dtype {y.dtype}; labels must be integers or strings")


def _kind_of(X: Any) -> str:
    nd = len(X.shape)
    if nd == 2:
        return "vectors"
    if nd in (3, 4):
        return "images"
    raise ValueError(f"X has shape {tuple(X.shape)}; expected (n, d) vectors or (n, H, W) / "
                     "(n, H, W, C) images (for a single feature use X.reshape(-1, 1))")


# --------------------------------------------------------------------------------------------
# Arrays and .npy
# --------------------------------------------------------------------------------------------

def load_array(X: Any, y: Any = None, *, kind: str | None = None,
               class_names: Sequence[str] | None = None, source: str = "array") -> Dataset:
    """Wrap in-memory arrays (or CPU torch tensors) as a :class:`Dataset`.

    Parameters
    ----------
    X : array-like or torch.Tensor
        ``(n, d)`` vectors or ``(n, H, W[, C])`` images. numpy arrays and memory maps are
        used as they are (no copy).
    y : array-like or torch.Tensor, optional
        Integer labels, or strings (mapped to sorted class names).
    kind : {"images", "vectors"}, optional
        Inferred from ``X.ndim`` when not given (2 -> vectors, 3 or 4 -> images).
    class_names : sequence of str, optional
        Names of the label values (overrides names derived from string labels).
    source : str
        Description stored in the dataset.

    Returns
    -------
    Dataset
    """
    X = _to_numpy(X, "X")
    if X.dtype == object:
        raise ValueError("X has dtype object; pass a numeric array (texts go through "
                         "load_texts or load([...strings]))")
    kind = kind or _kind_of(X)
    yy, names = _encode_labels(y, int(X.shape[0]) if len(X.shape) else 0)
    if class_names is not None:
        names = list(class_names)
    return Dataset(X=X, y=yy, kind=kind, class_names=names, source=source)


def _load_npy_file(path: Path, mmap: bool) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:  # object arrays, or a pickle file
        raise ValueError(f"cannot read {path} without pickle ({e}); embedcluster never loads "
                         "pickled data: save a numeric array with np.save") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is not a valid .npy file: {e}") from e
    if not isinstance(arr, np.ndarray):  # .npz archive
        arr.close()
        raise ValueError(f"{path} is an .npz archive; pass one of its arrays saved as .npy")
    return arr


def load_npy(path: PathLike, labels: PathLike | None = None, mmap: bool = True) -> Dataset:
    """Load a ``.npy`` array, memory-mapped by default so it is read from disk on demand.

    Parameters
    ----------
    path : str or Path
        ``(n, d)`` vectors or ``(n, H, W[, C])`` images. Pickled (object) arrays are refused.
    labels : str or Path, optional
        A ``.npy`` file with one integer (or string) label per row; read into memory.
    mmap : bool, default True
        Memory-map ``X`` (``np.load(mmap_mode="r")``) instead of reading it.

    Returns
    -------
    Dataset
    """
    p = _existing(path, ".npy file")
    X = _load_npy_file(p, mmap)
    y = names = None
    if labels is not None:
        lp = _existing(labels, "labels file")
        y, names = _encode_labels(_load_npy_file(lp, mmap=False), int(X.shape[0]) if X.ndim else 0,
                                  name=f"labels in {lp.name}")
    ds = Dataset(X=X, y=y, kind=_kind_of(X), class_names=names, source=str(p))
    logger.info("loaded %s %s from %s%s", X.shape, X.dtype, p, " (memory-mapped)" if mmap else "")
    return ds


def load_npy_shards(folder: PathLike, pattern: str = "*.npy",
                    labels_pattern: str | None = None) -> Dataset:
    """Load a folder of ``.npy`` shards as one array, without reading them into memory.

    Shards are sorted by file name, memory-mapped, and joined by a :class:`ShardedArray`
    view (a single shard is returned as its memory map). They must share dtype and
    trailing shape.

    Parameters
    ----------
    folder : str or Path
        Folder holding the shards.
    pattern : str, default "*.npy"
        Glob pattern of the data shards. Files matching ``labels_pattern`` are excluded.
    labels_pattern : str, optional
        Glob pattern of label shards (e.g. ``"labels*.npy"``), sorted by name, whose
        concatenation gives one label per row.

    Returns
    -------
    Dataset
    """
    root = _existing(folder, "shard folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; use load_npy for a single file")
    label_files = sorted(f for f in root.glob(labels_pattern) if f.is_file()) \
        if labels_pattern else []
    if labels_pattern and not label_files:
        raise FileNotFoundError(f"no label files matching {labels_pattern!r} in {root}")
    files = sorted(f for f in root.glob(pattern) if f.is_file() and f not in set(label_files))
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} in {root}")
    shards = [_load_npy_file(f, mmap=True) for f in files]
    try:
        X = shards[0] if len(shards) == 1 else ShardedArray(shards)
    except ValueError as e:
        raise ValueError(f"shards in {root} do not fit together ({[f.name for f in files]}): "
                         f"{e}") from e
    y = names = None
    if labels_pattern:
        parts = []
        for f in label_files:
            part = _load_npy_file(f, mmap=False)
            if part.ndim != 1:
                raise ValueError(f"label shard {f} has shape {part.shape}; it must be 1-D")
            parts.append(part)
        y, names = _encode_labels(np.concatenate(parts), len(X),
                                  name=f"labels from {len(label_files)} files")
    logger.info("loaded %d shards %s %s from %s", len(files), tuple(X.shape), X.dtype, root)
    return Dataset(X=X, y=y, kind=_kind_of(X), class_names=names,
                   source=f"{root} ({len(files)} shards matching {pattern!r})")


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if _is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size={size!r} should be an int or a (height, width) pair") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size={size!r} should be positive")
    return h, w


def load_image_folder(path: PathLike, size: int | tuple[int, int] | None = None,
                      grayscale: bool = False) -> Dataset:
    """Load a folder of images with PIL.

    Two layouts are understood: one sub-folder per class (``root/cat/001.png``; labels follow
    the sorted sub-folder names, searched recursively inside each class folder), or a flat
    folder of images (``y=None``). Files with the extensions in :data:`IMAGE_EXTENSIONS`
    are read in sorted order; other files are ignored.

    Parameters
    ----------
    path : str or Path
        The folder.
    size : int or (height, width), optional
        Resize every image to this size (bilinear). Required when the images differ in size.
    grayscale : bool, default False
        Convert to one channel (``C=1``) instead of RGB (``C=3``).

    Returns
    -------
    Dataset
        ``kind="images"``, ``X`` uint8 of shape ``(n, H, W, C)``.

    Raises
    ------
    ValueError
        For an unreadable image (the message names the file), or for images of different
        sizes when ``size`` is not given.
    """
    from PIL import Image

    root = _existing(path, "image folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder of images")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, _image_files(d, recursive=True)) for d in subdirs]
    per_class = [(name, files) for name, files in per_class if files]
    top = _image_files(root, recursive=False)
    if per_class and top:
        raise ValueError(f"{root} holds images both directly ({top[0].name}, ...) and in "
                         f"sub-folders ({per_class[0][0]}/, ...); use one sub-folder per class "
                         "or a flat folder")
    if per_class:
        class_names = [name for name, _ in per_class]
        files = [f for _, fs in per_class for f in fs]
        y = np.concatenate([np.full(len(fs), i, dtype=np.int64)
                            for i, (_, fs) in enumerate(per_class)])
    elif top:
        class_names, files, y = None, top, None
    else:
        raise FileNotFoundError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) "
                                f"found in {root} or its sub-folders")

    target = _hw(size) if size is not None else None
    if target is None:
        # Read only the headers first so a size mismatch is reported before decoding anything.
        sizes = {}
        for f in files:
            try:
                with Image.open(f) as im:
                    sizes.setdefault(im.size, f)
            except Exception as e:  # PIL raises many types for broken files
                raise ValueError(f"cannot read image {f}: {e}") from e
            if len(sizes) > 1:
                (w0, h0), f0 = next(iter(sizes.items()))
                (w1, h1), f1 = list(sizes.items())[1]
                raise ValueError(f"images differ in size ({f0.name} is {h0}x{w0}, {f1.name} is "
                                 f"{h1}x{w1} height x width); pass size= (an int or "
                                 "(height, width)) to resize them all")
        (w, h), _ = next(iter(sizes.items()))
        target = (h, w)
    channels = 1 if grayscale else 3
    mode = "L" if grayscale else "RGB"
    resample = getattr(getattr(Image, "Resampling", Image), "BILINEAR")
    X = np.empty((len(files), target[0], target[1], channels), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.load()
                if im.mode in ("P", "PA", "LA", "RGBA") and not grayscale:
                    im = im.convert("RGBA").convert("RGB")
                im = im.convert(mode)
                if im.size != (target[1], target[0]):
                    im = im.resize((target[1], target[0]), resample)
                X[i] = np.asarray(im, dtype=np.uint8).reshape(target[0], target[1], channels)
        except Exception as e:
            raise ValueError(f"cannot read image {f}: {e}") from e
    logger.info("loaded %d images %s from %s%s", len(files), X.shape[1:], root,
                f" in {len(class_names)} classes" if class_names else "")
    return Dataset(X=X, y=y, kind="images", class_names=class_names, source=str(root))


# --------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_idx(path: PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not, detected from its first bytes)."""
    p = _existing(path, "IDX file")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise ValueError(f"{p} is a damaged or truncated gzip file: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"{p} is too short ({len(raw)} bytes) to be an IDX file")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"{p} is not an IDX file: bad magic number 0x{raw[:4].hex()} (expected "
                         "0x0000 then a type code 08/09/0B/0C/0D/0E and the number of dims)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{p} is truncated: its header declares {ndim} dims but the file has "
                         f"only {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise ValueError(f"{p} is truncated: dims {dims} need {expected} bytes of data, found "
                         f"{got}")
    if got > expected:
        raise ValueError(f"{p} has {got - expected} bytes after the data declared by its dims "
                         f"{dims}; the file is damaged or not an IDX file")
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def load_idx(images_path: PathLike, labels_path: PathLike | None = None, *,
             class_names: Sequence[str] | None = None) -> Dataset:
    """Load IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or not.

    Compression is detected from the file's first bytes, not its name. The magic number,
    the dimensions and the data size are all checked.

    Parameters
    ----------
    images_path : str or Path
        IDX file of samples: 3-D ``(n, H, W)`` images (or 2-D vectors, 4-D images).
    labels_path : str or Path, optional
        1-D IDX file with one label per sample.
    class_names : sequence of str, optional
        Names of the label values.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        For a bad magic number, truncated or over-long data, or mismatched sample / label counts.
    """
    X = _read_idx(images_path)
    if X.ndim == 1:
        raise ValueError(f"{images_path} is a 1-D IDX file (labels?); pass it as labels_path")
    y = None
    if labels_path is not None:
        lab = _read_idx(labels_path)
        if lab.ndim != 1:
            raise ValueError(f"{labels_path} has shape {lab.shape}; a labels IDX file is 1-D")
        if lab.shape[0] != X.shape[0]:
            raise ValueError(f"{labels_path} has {lab.shape[0]} labels but {images_path} has "
                             f"{X.shape[0]} samples")
        y = lab.astype(np.int64)
    logger.info("loaded IDX %s %s from %s", X.shape, X.dtype, images_path)
    return Dataset(X=X, y=y, kind=_kind_of(X),
                   class_names=list(class_names) if class_names is not None else None,
                   source=str(images_path))


def load_fashion_mnist(split: str = "test", root: PathLike | None = None) -> Dataset:
    """Load Fashion-MNIST (28x28 uint8 grey images, 10 clothing classes) from IDX files.

    Parameters
    ----------
    split : {"test", "train"}, default "test"
        10,000 test images or 60,000 training images.
    root : str or Path, optional
        Folder with ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (uncompressed copies
        without ``.gz`` also work). Defaults to :data:`FASHION_MNIST_ROOT`, where Debian's
        ``dataset-fashion-mnist`` package installs them.

    Returns
    -------
    Dataset
        ``X`` uint8 ``(n, 28, 28)``, ``y`` in 0..9, ``class_names`` = :data:`FASHION_MNIST_CLASSES`.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"split={split!r} should be 'test' or 'train'")
    folder = Path(root if root is not None else FASHION_MNIST_ROOT).expanduser()
    paths = []
    for stem in _FASHION_FILES[split]:
        found = next((folder / (stem + ext) for ext in (".gz", "")
                      if (folder / (stem + ext)).is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}.gz not found in {folder}; install it with "
                "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass root= a folder "
                "with the four IDX files (train-images-idx3-ubyte.gz, "
                "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                "t10k-labels-idx1-ubyte.gz)")
        paths.append(found)
    ds = load_idx(paths[0], paths[1], class_names=FASHION_MNIST_CLASSES)
    ds.source = f"Fashion-MNIST {split} ({folder})"
    return ds


# --------------------------------------------------------------------------------------------
# Texts and tables
# --------------------------------------------------------------------------------------------

def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not valid UTF-8 ({e}); re-encode it, e.g. "
                         f"`iconv -f latin1 -t utf-8 {p.name}`") from e


def load_texts(path: PathLike) -> Dataset:
    """Load a UTF-8 text file with one text per line (blank lines skipped, whitespace stripped).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Dataset
        ``kind="texts"``, ``y=None``.
    """
    p = _existing(path, "text file")
    texts = [line.strip() for line in _read_text(p).splitlines()]
    texts = [t for t in texts if t]
    logger.info("loaded %d texts from %s", len(texts), p)
    return Dataset(X=None, kind="texts", texts=texts, source=str(p))


def _table_rows(p: Path) -> tuple[list[dict], list[str]]:
    """Rows (dicts) and column names of a CSV/TSV or JSON-lines / JSON-array file."""
    ext = p.suffix.lower()
    if ext in (".csv", ".tsv"):
        text = _read_text(p)
        # newline="" keeps line breaks inside quoted fields, as the csv module expects.
        reader = csv.DictReader(io.StringIO(text, newline=""),
                                delimiter="\t" if ext == ".tsv" else ",")
        columns = list(reader.fieldnames or [])
        return list(reader), columns
    if ext in (".jsonl", ".json"):
        text = _read_text(p)
        rows: list = []
        if ext == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p} is not valid JSON: {e}") from e
        else:
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p} line {lineno} is not valid JSON: {e}") from e
        for i, r in enumerate(rows, 1):
            if not isinstance(r, dict):
                raise ValueError(f"{p} record {i} is a {type(r).__name__}; each record must be "
                                 "a JSON object such as {\"text\": ..., \"label\": ...}")
        columns = list(dict.fromkeys(k for r in rows for k in r))
        return rows, columns
    raise ValueError(f"{p}: unknown table extension {ext!r}; use .csv, .tsv, .jsonl or .json")


def load_table(path: PathLike, text_column: str = "text",
               label_column: str | None = "auto") -> Dataset:
    """Load texts (and optional labels) from a CSV, TSV, JSON-lines or JSON file.

    The format follows the extension: ``.csv`` / ``.tsv`` (read with :mod:`csv`, header row
    required), ``.jsonl`` (one JSON object per line) or ``.json`` (JSON lines, or one array
    of objects).

    Parameters
    ----------
    path : str or Path
    text_column : str, default "text"
        Column holding the texts (required in every row).
    label_column : str, "auto" or None, default "auto"
        Column holding class labels; they map to ints in the order of
        ``class_names`` = the sorted unique labels (numeric order when all are integers).
        "auto" uses a column named ``label`` when there is one; None reads no labels.

    Returns
    -------
    Dataset
        ``kind="texts"``.
    """
    p = _existing(path, "table file")
    rows, columns = _table_rows(p)
    if label_column == "auto":
        label_column = "label" if "label" in columns else None
    for col, what in ((text_column, "text_column"), (label_column, "label_column")):
        if col is not None and col not in columns:
            raise ValueError(f"{what}={col!r} is not a column of {p}; available columns: "
                             f"{columns}")
    texts: list[str] = []
    raw_labels: list = []
    for i, r in enumerate(rows, 1):
        t = r.get(text_column)
        if t is None:
            raise ValueError(f"{p} record {i} has no value in column {text_column!r}")
        texts.append(str(t))
        if label_column is not None:
            lab = r.get(label_column)
            if lab is None or (isinstance(lab, str) and not lab.strip()):
                raise ValueError(f"{p} record {i} has no label in column {label_column!r}")
            if isinstance(lab, (list, dict)):
                raise ValueError(f"{p} record {i}: label {lab!r} must be a string or number")
            raw_labels.append(lab.strip() if isinstance(lab, str) else lab)
    y = names = None
    if label_column is not None:
        order = _sorted_unique(raw_labels)
        lookup = {v: k for k, v in enumerate(order)}
        y = np.array([lookup[v] for v in raw_labels], dtype=np.int64)
        names = [str(v) for v in order]
    logger.info("loaded %d texts from %s%s", len(texts), p,
                f" with {len(names)} classes" if names else "")
    return Dataset(X=None, y=y, kind="texts", texts=texts, class_names=names, source=str(p))


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------

def load_digits_dataset() -> Dataset:
    """scikit-learn's 1,797 handwritten digits as 8x8 float32 images (values 0..16), labelled.

    Returns
    -------
    Dataset
        ``X`` float32 ``(1797, 8, 8)``, ``y`` in 0..9, ``class_names`` "0".."9".
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset(X=d.images.astype(np.float32), y=d.target.astype(np.int64), kind="images",
                   class_names=[str(i) for i in range(10)],
                   source="scikit-learn load_digits (1797 8x8 images)")


# --------------------------------------------------------------------------------------------
# Dispatch and features
# --------------------------------------------------------------------------------------------

def _looks_idx(p: Path) -> bool:
    name = p.name.lower()
    return (p.suffix.lower() in (".idx", ".gz") or name.endswith("-ubyte")
            or ".idx" in name or "-ubyte." in name)


def load(spec: Any, **kw: Any) -> Dataset:
    """Load a dataset from whatever ``spec`` is.

    Accepted specs:

    * a :class:`Dataset` (returned as is), a numpy array or CPU torch tensor
      (:func:`load_array`), a list of strings (texts);
    * ``"digits"`` (:func:`load_digits_dataset`);
    * ``"fashion-mnist"``, ``"fashion-mnist:train"``, ``"fashion-mnist:test"``
      (:func:`load_fashion_mnist`, test split by default);
    * a folder holding ``.npy`` files (:func:`load_npy_shards`) or images
      (:func:`load_image_folder`);
    * a file: ``.npy`` (:func:`load_npy`), ``.idx`` / ``.gz`` / ``*-ubyte``
      (:func:`load_idx`), ``.txt`` (:func:`load_texts`), ``.csv`` / ``.tsv`` / ``.jsonl`` /
      ``.json`` (:func:`load_table`).

    Parameters
    ----------
    spec : object
        What to load.
    **kw
        Passed on to the chosen loader.

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        When ``spec`` names a path that does not exist.
    ValueError
        When ``spec`` is none of the accepted kinds.
    """
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, str) for s in spec):
        y, names = _encode_labels(kw.pop("y", None), len(spec))
        if kw:
            raise TypeError(f"unexpected arguments {sorted(kw)} for a list of texts (only y=)")
        return Dataset(X=None, y=y, kind="texts", texts=list(spec), class_names=names,
                       source=f"list of {len(spec)} texts")
    if isinstance(spec, (np.ndarray, ShardedArray)) or \
            type(spec).__module__.split(".")[0] == "torch":
        return load_array(spec, **kw)
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"cannot load a {type(spec).__name__}; accepted: {_ACCEPTED_SPECS}")
    name = os.fspath(spec)
    key = name.strip().lower().replace("_", "-")
    if key == "digits":
        return load_digits_dataset(**kw)
    if key in ("fashion-mnist", "fashionmnist") or key.startswith(("fashion-mnist:",
                                                                   "fashionmnist:")):
        split = key.split(":", 1)[1] if ":" in key else kw.pop("split", "test")
        return load_fashion_mnist(split=split, **kw)
    p = Path(name).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (accepted: {_ACCEPTED_SPECS})")
    if p.is_dir():
        if any(f.suffix.lower() == ".npy" and f.is_file() for f in p.iterdir()):
            return load_npy_shards(p, **kw)
        if _image_files(p, recursive=True):
            return load_image_folder(p, **kw)
        raise ValueError(f"folder {p} holds neither .npy shards nor images "
                         f"({', '.join(IMAGE_EXTENSIONS)}); accepted: {_ACCEPTED_SPECS}")
    ext = p.suffix.lower()
    if ext == ".npy":
        return load_npy(p, **kw)
    if ext == ".txt":
        return load_texts(p, **kw)
    if ext in (".csv", ".tsv", ".jsonl", ".json"):
        return load_table(p, **kw)
    if _looks_idx(p):
        return load_idx(p, **kw)
    raise ValueError(f"don't know how to load {p} (extension {ext or 'none'!r}); accepted: "
                     f"{_ACCEPTED_SPECS}")


def as_feature_matrix(ds: Dataset) -> np.ndarray:
    """Raw features as a float32 ``(n, d)`` matrix, for "raw pixels" baselines.

    Images are flattened; uint8 values are scaled to [0, 1], other dtypes are cast as they
    are. Conversion runs in blocks, so no float64 copy of the data is ever made.

    Parameters
    ----------
    ds : Dataset
        Images or vectors.

    Returns
    -------
    ndarray of float32, shape (n, d)
    """
    if ds.kind == "texts":
        raise ValueError("texts have no raw feature matrix; embed them with an encoder first")
    X = ds.X
    n = int(X.shape[0])
    d = int(np.prod(X.shape[1:], dtype=np.int64))
    out = np.empty((n, d), dtype=np.float32)
    scale = X.dtype == np.uint8
    step = max(1, _HASH_CHUNK_BYTES // max(1, d * 4))
    for a in range(0, n, step):
        block = np.asarray(X[a:a + step]).reshape(-1, d)
        np.copyto(out[a:a + block.shape[0]], block, casting="unsafe")
        if scale:
            out[a:a + block.shape[0]] /= np.float32(255.0)
    return out
