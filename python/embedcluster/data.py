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

Files are not trusted. Every loader checks, before opening a path, that it is a regular file
(or a folder where one is expected): a FIFO, socket or device would block or stream forever.
Headers (IDX dims, .npy shape and dtype, image sizes) are checked against the file's size and
against the memory available (or ``memory_limit=``) before anything is allocated from them, and
the data must end where the header says. Damage gives ``ValueError`` naming the file (and the
line or record for texts), a size that cannot fit gives ``MemoryError``, a missing file
``FileNotFoundError``; no ``zlib``, ``struct``, ``csv`` or PIL exception escapes.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import math
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np

from . import _io

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

# Hashing and conversion read arrays in blocks of about this many bytes, so a memory map of
# many GB is never resident at once.
_HASH_CHUNK_BYTES = _io.HASH_CHUNK_BYTES

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

        The digest is :func:`embedcluster._io.sha256_array` of the samples (or
        :func:`~embedcluster._io.sha256_texts` of the texts), the same that
        ``embedcluster.encoders.data_fingerprint`` gives a bare array: equal content gives the
        same digest whatever file, shard layout, byte order or array type holds it. Labels, class names and ``source`` are not
        part of the digest: they do not change an embedding.

        Returns
        -------
        str
            64 hexadecimal characters.
        """
        if self.kind == "texts":
            return _io.sha256_texts(self.texts)
        return _io.sha256_array(self.X, _HASH_CHUNK_BYTES)

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

def _existing(path: PathLike, what: str, hint: str = "", folder: bool = False) -> Path:
    """``path`` as a Path after checking, without opening it, that it is a regular file (or a
    folder when ``folder``): a FIFO, socket or device would block or stream forever."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {p}" + (f"; {hint}" if hint else "")) from None
    except OSError as e:
        raise ValueError(f"cannot read {what} {p}: {e.strerror or e}") from e
    if folder and stat.S_ISDIR(st.st_mode):
        return p
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{what} {p} is a folder; pass a file")
        raise ValueError(f"{what} {p} is {_file_type(st.st_mode)}, not a regular "
                         f"{'folder or file' if folder else 'file'}; embedcluster reads only "
                         "regular files (copy the data into a file first)")
    return p


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _memory_budget(memory_limit: int | None = None) -> float:
    """Bytes a loader may allocate: ``memory_limit`` when given (0: no limit), else the
    engine's default limit (:func:`embedcluster._backend.memory_budget`: available memory,
    RLIMIT_AS and cgroup room)."""
    from ._backend import memory_budget

    return memory_budget(memory_limit)


def _check_allocation(nbytes: int, what: str, memory_limit: int | None = None,
                      hint: str = "") -> None:
    """MemoryError before allocating ``nbytes`` (computed from a file's header) when they exceed
    the budget of :func:`_memory_budget`."""
    budget = _memory_budget(memory_limit)
    if nbytes > budget:
        limit = "memory_limit" if memory_limit is not None else "the available memory"
        raise MemoryError(f"{what} needs about {nbytes >> 20} MiB ({nbytes} bytes), more than "
                          f"{limit} ({int(budget) >> 20} MiB); "
                          + (hint or "free memory, pass a larger memory_limit=, or check that "
                                     "the file is not damaged"))


def _to_numpy(a: Any) -> Any:
    """numpy arrays pass through (memmaps stay memmaps); torch tensors become host arrays."""
    if isinstance(a, (np.ndarray, ShardedArray)):
        return a
    return np.asarray(_io.to_numpy(a))


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
    y = np.asarray(_to_numpy(y))
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
    X = _to_numpy(X)
    if X.dtype == object:
        raise ValueError("X has dtype object; pass a numeric array (texts go through "
                         "load_texts or load([...strings]))")
    kind = kind or _kind_of(X)
    yy, names = _encode_labels(y, int(X.shape[0]) if len(X.shape) else 0)
    if class_names is not None:
        names = list(class_names)
    return Dataset(X=X, y=yy, kind=kind, class_names=names, source=source)


_NPY_MAGIC = b"\x93NUMPY"
# First bytes of files that are often renamed .npy by mistake, for a message that says what
# the file is instead of blaming pickle.
_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
               (b"GIF8", "a GIF image"), (b"PK\x03\x04", "a zip archive (.npz?)"),
               (b"\x1f\x8b", "a gzip file"), (b"\x80", "a Python pickle"),
               (b"BM", "a BMP image"), (b"RIFF", "a RIFF (WebP / WAV) file"),
               (b"%PDF", "a PDF document"), (b"\x00\x00\x08", "an IDX file"))


def _describe_bytes(head: bytes) -> str:
    for sig, name in _SIGNATURES:
        if head.startswith(sig):
            return name
    if head[:1] in (b"{", b"["):
        return "JSON text"
    return f"a file starting with bytes {head[:8].hex()}"


def _npy_header(f: Any, version: tuple) -> tuple:
    """(shape, fortran_order, dtype) from numpy's own header parser (which evaluates the
    header with ast.literal_eval only, never pickle)."""
    fmt = np.lib.format
    if version == (1, 0):
        return fmt.read_array_header_1_0(f)
    if version == (2, 0):
        return fmt.read_array_header_2_0(f)
    impl = getattr(fmt, "_read_array_header", None)
    if impl is None:  # numpy >= 2 keeps it in the private module
        from numpy.lib import _format_impl

        impl = _format_impl._read_array_header
    return impl(f, version)


def _load_npy_file(path: Path, mmap: bool, memory_limit: int | None = None,
                   labels: bool = False) -> np.ndarray:
    """Reads (or memory-maps) one .npy file after checking its header against the file: the
    magic string, a numeric dtype (object arrays need pickle and are refused), and a data size
    that matches the file's size, all before anything is allocated."""
    what = "labels file" if labels else ".npy file"
    p = _existing(path, what)
    size = os.stat(p).st_size
    try:
        with open(p, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
            if head != _NPY_MAGIC:
                if head.startswith(b"PK\x03\x04"):
                    raise ValueError(f"{p} is an .npz archive, not a .npy file; save one of its "
                                     "arrays with np.save and pass that")
                raise ValueError(f"{p} is not a .npy file: it looks like {_describe_bytes(head)} "
                                 "(a .npy file starts with \\x93NUMPY); pass an array written "
                                 "by np.save")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"{p} has .npy format version {version}; numpy writes 1.0 to "
                                 "3.0")
            shape, fortran, dtype = _npy_header(f, version)
            offset = f.tell()
    except Exception as e:  # numpy's parser raises ValueError, SyntaxError, tokenize.TokenError...
        if isinstance(e, ValueError) and str(e).startswith(str(p)):
            raise
        raise ValueError(f"{p} is not a valid .npy file: its header is damaged ({e}); write it "
                         "again with np.save") from e
    if dtype.hasobject:
        raise ValueError(f"{p} holds an array of Python objects (dtype {dtype}); embedcluster "
                         "reads only numeric arrays (and string labels), because object arrays "
                         "are stored with pickle, which can run code: save a numeric array "
                         "(e.g. X.astype(np.float32)) with np.save")
    kinds = "biufUS" if labels else "biuf"
    if dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{p} holds dtype {dtype}; {'labels' if labels else 'data'} must be "
                         f"{'integers or strings' if labels else 'numbers (bool, int or float)'}")
    if dtype.itemsize == 0:
        raise ValueError(f"{p} holds dtype {dtype} of size 0; save a non-empty dtype")
    nbytes = math.prod(shape) * dtype.itemsize
    if size - offset != nbytes:
        if size - offset < nbytes:
            raise ValueError(f"{p} is truncated: its header declares shape {shape} {dtype} "
                             f"({nbytes} bytes of data) but only {size - offset} bytes follow; "
                             "write it again")
        raise ValueError(f"{p} has {size - offset - nbytes} bytes after the data its header "
                         f"declares (shape {shape}, {dtype}); the file is damaged")
    if not mmap:
        _check_allocation(nbytes, f"{p} (shape {shape}, {dtype})", memory_limit,
                          "pass mmap=True to read it from disk on demand, free memory, or "
                          "pass a larger memory_limit=")
    try:
        arr = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{p} could not be read as a .npy file ({e}); write it again with "
                         "np.save") from e
    if not isinstance(arr, np.ndarray):  # pragma: no cover - the magic check rules it out
        raise ValueError(f"{p} is not a .npy file")
    return arr


def load_npy(path: PathLike, labels: PathLike | None = None, mmap: bool = True, *,
             memory_limit: int | None = None) -> Dataset:
    """Load a ``.npy`` array, memory-mapped by default so it is read from disk on demand.

    Parameters
    ----------
    path : str or Path
        ``(n, d)`` vectors or ``(n, H, W[, C])`` images. Pickled (object) arrays are refused.
    labels : str or Path, optional
        A ``.npy`` file with one integer (or string) label per row; read into memory.
    mmap : bool, default True
        Memory-map ``X`` (``np.load(mmap_mode="r")``) instead of reading it.
    memory_limit : int, optional
        Most bytes an array read into memory may take (``mmap=False``, and labels); default
        the memory the system reports as available.

    The header is checked against the file before anything is read: a file that is not a
    .npy file, an object (pickled) array, or a size that differs from what the header declares
    raises ValueError naming the file.

    Returns
    -------
    Dataset
    """
    p = _existing(path, ".npy file")
    X = _load_npy_file(p, mmap, memory_limit)
    y = names = None
    if labels is not None:
        lp = _existing(labels, "labels file")
        y, names = _encode_labels(_load_npy_file(lp, mmap=False, memory_limit=memory_limit,
                                                 labels=True),
                                  int(X.shape[0]) if X.ndim else 0, name=f"labels in {lp.name}")
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
    root = _existing(folder, "shard folder", folder=True)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; use load_npy for a single file")
    label_files = sorted(f for f in root.glob(labels_pattern) if not f.is_dir()) \
        if labels_pattern else []
    if labels_pattern and not label_files:
        raise FileNotFoundError(f"no label files matching {labels_pattern!r} in {root}")
    # Not is_file(): a FIFO named like a shard must be refused (by _load_npy_file), not skipped.
    files = sorted(f for f in root.glob(pattern) if not f.is_dir() and f not in set(label_files))
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
            part = _load_npy_file(f, mmap=False, labels=True)
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
    # Not is_file(): a FIFO named .png must be refused when it is read, not skipped silently.
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and not p.is_dir()


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


# Modes with more than 8 bits per sample, and the value that maps to 1.0 (PNG stores 16-bit
# grey; Pillow opens it as I;16 / I;16B, or I). 8-bit modes map 255 to 1.0.
_HIGH_BIT_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
                   "I": 65535.0, "F": 1.0}


def _open_image(f: Path) -> Any:
    from PIL import Image

    return Image.open(f)


def _decode_image(im: Any, f: Path, target: tuple[int, int], grayscale: bool,
                  as_float: bool) -> np.ndarray:
    """One image as (H, W, C): uint8, or float32 in [0, 1] when ``as_float``.

    16-bit grey (I;16, I;16B, I) is scaled by 65535, so it lands in the same [0, 1] range as
    8-bit images instead of saturating at 255; palette and alpha modes are composed to RGB
    (alpha dropped), and any other mode is converted by Pillow.
    """
    from PIL import Image

    resample = getattr(getattr(Image, "Resampling", Image), "BILINEAR")
    size = (target[1], target[0])
    channels = 1 if grayscale else 3
    if im.mode in _HIGH_BIT_MODES:
        top = _HIGH_BIT_MODES[im.mode]
        g = im.convert("F")
        if g.size != size:
            g = g.resize(size, resample)
        a = np.asarray(g, dtype=np.float32) / np.float32(top)
        np.clip(a, 0.0, 1.0, out=a)
        a = a.reshape(target[0], target[1], 1)
        if channels == 3:
            a = np.repeat(a, 3, axis=2)
        if not as_float:  # pragma: no cover - callers pass as_float for high-bit images
            raise AssertionError("high-bit image without as_float")
        return a
    mode = "L" if grayscale else "RGB"
    if im.mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
    im = im.convert(mode)
    if im.size != size:
        im = im.resize(size, resample)
    a = np.asarray(im, dtype=np.uint8).reshape(target[0], target[1], channels)
    return a.astype(np.float32) / np.float32(255.0) if as_float else a


def load_image_folder(path: PathLike, size: int | tuple[int, int] | None = None,
                      grayscale: bool = False, *, memory_limit: int | None = None) -> Dataset:
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
    memory_limit : int, optional
        Most bytes the image array (and one decoded image) may take; default the memory the
        system reports as available. Checked from the image headers before decoding.

    Returns
    -------
    Dataset
        ``kind="images"``, ``X`` of shape ``(n, H, W, C)``: uint8 when every image has 8 bits
        per sample; float32 in [0, 1] when any image has 16 bits (PNG ``I;16``), with 8-bit
        images divided by 255 and 16-bit ones by 65535, so both share one scale.

    Raises
    ------
    ValueError
        For an unreadable image (the message names the file), or for images of different
        sizes when ``size`` is not given.
    MemoryError
        When the images would not fit in memory (or ``memory_limit``).
    """
    root = _existing(path, "image folder", folder=True)
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
    # Read only the headers first: a size mismatch, a bit depth, a damaged file or a size that
    # cannot fit in memory is reported before anything is decoded.
    sizes: dict = {}
    high_bit = False
    largest = 0
    for f in files:
        _existing(f, "image")  # a FIFO named .png would block Image.open
        try:
            with _open_image(f) as im:
                sizes.setdefault(im.size, f)
                high_bit |= im.mode in _HIGH_BIT_MODES
                largest = max(largest, im.size[0] * im.size[1] * 4 * max(1, len(im.getbands())))
        except Exception as e:  # PIL raises many types for broken files
            raise ValueError(f"cannot read image {f}: {e}; the file is damaged or not an "
                             "image (remove or replace it)") from e
        if target is None and len(sizes) > 1:
            (w0, h0), f0 = next(iter(sizes.items()))
            (w1, h1), f1 = list(sizes.items())[1]
            raise ValueError(f"images differ in size ({f0.name} is {h0}x{w0}, {f1.name} is "
                             f"{h1}x{w1} height x width); pass size= (an int or "
                             "(height, width)) to resize them all")
    if target is None:
        (w, h), _ = next(iter(sizes.items()))
        target = (h, w)
    channels = 1 if grayscale else 3
    dtype = np.dtype(np.float32 if high_bit else np.uint8)
    need = len(files) * target[0] * target[1] * channels * dtype.itemsize
    _check_allocation(need + largest, f"{len(files)} images of {target[0]}x{target[1]}x"
                      f"{channels} ({dtype}) in {root}", memory_limit,
                      "pass a smaller size=, load fewer images, or pass a larger memory_limit=")
    X = np.empty((len(files), target[0], target[1], channels), dtype=dtype)
    for i, f in enumerate(files):
        _existing(f, "image")
        try:
            with _open_image(f) as im:
                im.load()
                X[i] = _decode_image(im, f, target, grayscale, high_bit)
        except MemoryError:
            raise
        except Exception as e:
            raise ValueError(f"cannot read image {f}: {e}; the file is damaged or not an "
                             "image (remove or replace it)") from e
    logger.info("loaded %d images %s %s from %s%s", len(files), X.shape[1:], X.dtype, root,
                f" in {len(class_names)} classes" if class_names else "")
    return Dataset(X=X, y=y, kind="images", class_names=class_names, source=str(root))


# --------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# A Dataset holds 1-D labels and 2-D to 4-D samples, so an IDX header declaring more dims is
# either damaged or not for us.
_IDX_MAX_DIMS = 4
# Deflate cannot expand data by more than about 1032:1, so a gzip'd file whose header declares
# more than this many times its compressed size is damaged: refuse it before allocating.
_DEFLATE_MAX_RATIO = 1040
_READ_CHUNK = 1 << 20
_GZIP_ERRORS = (zlib.error, EOFError, gzip.BadGzipFile, OSError)


@dataclass(frozen=True)
class _IdxHeader:
    path: Path
    gz: bool
    dtype: np.dtype
    dims: tuple
    offset: int      # bytes of header in the (decompressed) stream
    nbytes: int      # bytes of data the header declares


@contextlib.contextmanager
def _idx_stream(p: Path) -> Iterator[tuple[Any, bool]]:
    """The decompressed byte stream of an IDX file (gzip detected from the first bytes)."""
    with open(p, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if not gz:
            yield f, False
            return
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            yield g, True


def _read_exact(stream: Any, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _gzip_damaged(p: Path, e: BaseException) -> ValueError:
    return ValueError(f"{p} is a damaged or truncated gzip file ({type(e).__name__}: {e}); "
                      "get a fresh copy of the file")


def _idx_header(path: PathLike, what: str = "IDX file") -> _IdxHeader:
    """Reads and checks only the header of an IDX file: magic, type code, dims, and the size
    the dims imply against the file's size. Nothing is allocated from the header's values."""
    p = _existing(path, what)
    size = os.stat(p).st_size
    try:
        with _idx_stream(p) as (stream, gz):
            head = _read_exact(stream, 4)
            if len(head) < 4:
                raise ValueError(f"{p} is too short ({len(head)} bytes) to be an IDX file")
            zero, code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or code not in _IDX_TYPES:
                raise ValueError(f"{p} is not an IDX file: bad magic number 0x{head.hex()} "
                                 "(expected 0x0000, then a type code 08/09/0B/0C/0D/0E and the "
                                 "number of dims)")
            if not 1 <= ndim <= _IDX_MAX_DIMS:
                raise ValueError(f"{p}: its IDX header declares {ndim} dims; embedcluster reads "
                                 f"IDX files of 1 to {_IDX_MAX_DIMS} dims (labels, vectors or "
                                 "images); the file is damaged or not a data set")
            raw = _read_exact(stream, 4 * ndim)
    except _GZIP_ERRORS as e:
        raise _gzip_damaged(p, e) from e
    if len(raw) < 4 * ndim:
        raise ValueError(f"{p} is truncated: its header declares {ndim} dims but ends after "
                         f"{4 + len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw)
    dtype = _IDX_TYPES[code]
    offset = 4 + 4 * ndim
    nbytes = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if not gz and size != offset + nbytes:
        if size < offset + nbytes:
            raise ValueError(f"{p} is truncated: dims {dims} need {nbytes} bytes of data, found "
                             f"{size - offset}")
        raise ValueError(f"{p} has {size - offset - nbytes} bytes after the data declared by its "
                         f"dims {dims}; the file is damaged or not an IDX file")
    if gz and offset + nbytes > _DEFLATE_MAX_RATIO * size + (1 << 16):
        raise ValueError(f"{p} is truncated or damaged: its header declares dims {dims} "
                         f"({nbytes} bytes), more than a {size}-byte gzip file can hold")
    return _IdxHeader(p, gz, dtype, tuple(int(d) for d in dims), offset, nbytes)


def _read_idx_data(h: _IdxHeader) -> np.ndarray:
    """The data of an IDX file whose header was checked by :func:`_idx_header`, read in bounded
    chunks; the stream must hold exactly the declared bytes."""
    p = h.path
    buf = np.empty(h.nbytes, dtype=np.uint8)
    view = memoryview(buf)
    pos = 0
    try:
        with _idx_stream(p) as (stream, _):
            if len(_read_exact(stream, h.offset)) != h.offset:
                raise ValueError(f"{p} changed while it was read; try again")
            while pos < h.nbytes:
                got = stream.readinto(view[pos:pos + _READ_CHUNK])
                if not got:
                    break
                pos += got
            extra = stream.read(1) if pos == h.nbytes else b""
    except _GZIP_ERRORS as e:
        raise _gzip_damaged(p, e) from e
    finally:
        view.release()
    if pos < h.nbytes:
        raise ValueError(f"{p} is truncated: dims {h.dims} need {h.nbytes} bytes of data, found "
                         f"{pos}")
    if extra:
        raise ValueError(f"{p} holds more data than its dims {h.dims} declare; the file is "
                         "damaged or not an IDX file")
    arr = buf.view(h.dtype).reshape(h.dims)
    if not h.dtype.isnative:  # big-endian on disk: swap in place, no second copy
        arr = arr.byteswap(inplace=True).view(h.dtype.newbyteorder("="))
    return arr


def _read_idx(path: PathLike, memory_limit: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not, detected from its first bytes)."""
    h = _idx_header(path)
    _check_allocation(h.nbytes, f"{h.path} (IDX dims {h.dims})", memory_limit)
    return _read_idx_data(h)


def load_idx(images_path: PathLike, labels_path: PathLike | None = None, *,
             class_names: Sequence[str] | None = None,
             memory_limit: int | None = None) -> Dataset:
    """Load IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or not.

    Compression is detected from the file's first bytes, not its name. The headers are read
    and checked first (magic number, type code, 1 to 4 dims, sample / label counts, and the
    size the dims imply against the file), and the memory they need against ``memory_limit``
    (default: the available memory) before anything is allocated; the data are then read in
    bounded chunks and must end exactly where the header says.

    Parameters
    ----------
    images_path : str or Path
        IDX file of samples: 3-D ``(n, H, W)`` images (or 2-D vectors, 4-D images).
    labels_path : str or Path, optional
        1-D IDX file with one label per sample.
    class_names : sequence of str, optional
        Names of the label values.
    memory_limit : int, optional
        Most bytes the arrays may take; default the memory the system reports as available.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        For a bad magic number, damaged gzip data, truncated or over-long data, or mismatched
        sample / label counts; the message names the file.
    MemoryError
        When the arrays the headers declare would not fit in memory (or ``memory_limit``).
    """
    hx = _idx_header(images_path)
    if len(hx.dims) == 1:
        raise ValueError(f"{hx.path} is a 1-D IDX file (labels?); pass it as labels_path")
    hy = None
    need = hx.nbytes
    if labels_path is not None:
        hy = _idx_header(labels_path, "IDX labels file")
        if len(hy.dims) != 1:
            raise ValueError(f"{hy.path} has shape {hy.dims}; a labels IDX file is 1-D")
        if hy.dims[0] != hx.dims[0]:
            raise ValueError(f"{hy.path} has {hy.dims[0]} labels but {hx.path} has "
                             f"{hx.dims[0]} samples; pass the labels file that belongs to the "
                             "images")
        need += hy.nbytes + 8 * hy.dims[0]
    _check_allocation(need, f"{hx.path} (IDX dims {hx.dims})", memory_limit)
    X = _read_idx_data(hx)
    y = None
    if hy is not None:
        y, _ = _encode_labels(_read_idx_data(hy), hx.dims[0], name=f"labels in {hy.path}")
    logger.info("loaded IDX %s %s from %s", X.shape, X.dtype, hx.path)
    return Dataset(X=X, y=y, kind=_kind_of(X),
                   class_names=list(class_names) if class_names is not None else None,
                   source=str(hx.path))


def load_fashion_mnist(split: str = "test", root: PathLike | None = None, *,
                       memory_limit: int | None = None) -> Dataset:
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
    memory_limit : int, optional
        Passed to :func:`load_idx`.

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
        # exists(), not is_file(): a FIFO or folder in its place is reported as such below.
        found = next((folder / (stem + ext) for ext in (".gz", "")
                      if os.path.lexists(folder / (stem + ext))), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}.gz not found in {folder}; install it with "
                "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass root= a folder "
                "with the four IDX files (train-images-idx3-ubyte.gz, "
                "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                "t10k-labels-idx1-ubyte.gz)")
        paths.append(found)
    ds = load_idx(paths[0], paths[1], class_names=FASHION_MNIST_CLASSES,
                  memory_limit=memory_limit)
    ds.source = f"Fashion-MNIST {split} ({folder})"
    return ds


# --------------------------------------------------------------------------------------------
# Texts and tables
# --------------------------------------------------------------------------------------------

def _read_text(p: Path, memory_limit: int | None = None) -> str:
    # A str takes up to 4 bytes per character, plus the bytes read: bound both up front.
    _check_allocation(5 * os.stat(p).st_size, f"text file {p}", memory_limit)
    raw = p.read_bytes()
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw[:nul].count(b"\n") + 1
        raise ValueError(f"{p} holds a NUL byte (byte {nul}, line {line}): "
                         "it is binary, or UTF-16 / UTF-32 text; save it as UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{p} is not valid UTF-8 (byte {e.start}, line {line}: {e.reason}); "
                         f"re-encode it, e.g. `iconv -f latin1 -t utf-8 {p.name}`") from e


def _empty_records(p: Path, empty: list[int], column: str | None, word: str) -> ValueError:
    first = ", ".join(str(i) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
    where = f" in column {column!r}" if column else ""
    return ValueError(f"{p}: {len(empty)} {word}{'s' if len(empty) > 1 else ''} ({first}) "
                      f"{'have' if len(empty) > 1 else 'has'} an empty text{where}; an empty "
                      "text has no meaning to embed: fill them in or remove those rows")


def load_texts(path: PathLike) -> Dataset:
    """Load a UTF-8 text file with one text per line (blank lines skipped, whitespace stripped).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Dataset
        ``kind="texts"``, ``y=None``.

    Raises
    ------
    ValueError
        For a file that is not UTF-8 (naming the line) or that holds no text at all.
    """
    p = _existing(path, "text file")
    texts = [line.strip() for line in _read_text(p).splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{p} holds no text (every line is empty); write one text per line")
    logger.info("loaded %d texts from %s", len(texts), p)
    return Dataset(X=None, kind="texts", texts=texts, source=str(p))


def _json_value(p: Path, text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} {where} is not valid JSON: {e}") from e
    except (ValueError, RecursionError) as e:  # integers too long, nesting too deep
        raise ValueError(f"{p} {where} is not usable JSON ({type(e).__name__}: "
                         f"{str(e)[:200]})") from e


def _table_rows(p: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """Rows (``(where, dict)``, where names the line or record) and column names of a CSV/TSV
    or JSON-lines / JSON-array file."""
    ext = p.suffix.lower()
    if ext in (".csv", ".tsv"):
        text = _read_text(p)
        # newline="" keeps line breaks inside quoted fields, as the csv module expects.
        reader = csv.DictReader(io.StringIO(text, newline=""),
                                delimiter="\t" if ext == ".tsv" else ",", strict=True)
        rows: list = []
        try:
            columns = list(reader.fieldnames or [])
            for r in reader:
                rows.append((f"line {reader.line_num}", r))
        except csv.Error as e:
            hint = ("split the text or store the table as JSON lines (.jsonl)"
                    if "field limit" in str(e) or "larger than" in str(e) else
                    "check the quoting (a field with commas, quotes or line breaks must be "
                    "quoted, and quotes inside it doubled)")
            raise ValueError(f"{p} line {reader.line_num} is not valid "
                             f"{'TSV' if ext == '.tsv' else 'CSV'}: {e}; {hint}") from e
        if len(set(columns)) != len(columns):
            dup = sorted({c for c in columns if columns.count(c) > 1})
            raise ValueError(f"{p}: the header row names column(s) {dup} more than once; give "
                             "every column its own name")
        for where, r in rows:
            if None in r:  # more fields than header columns
                raise ValueError(f"{p} {where} has {len(columns) + len(r[None])} fields but the "
                                 f"header has {len(columns)}; quote fields that hold the "
                                 "delimiter")
        return rows, columns
    if ext in (".jsonl", ".json"):
        text = _read_text(p)
        rows = []
        if ext == ".json" and text.lstrip().startswith("["):
            values = _json_value(p, text, "")
            rows = [(f"record {i}", r) for i, r in enumerate(values, 1)]
        else:
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                rows.append((f"line {lineno}", _json_value(p, line, f"line {lineno}")))
        for where, r in rows:
            if not isinstance(r, dict):
                raise ValueError(f"{p} {where} is a JSON {type(r).__name__}; each record must be "
                                 "a JSON object such as {\"text\": ..., \"label\": ...}")
        columns = list(dict.fromkeys(k for _, r in rows for k in r))
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
    empty: list[int] = []
    for i, (where, r) in enumerate(rows, 1):
        t = r.get(text_column)
        if t is None:
            raise ValueError(f"{p} record {i} ({where}) has no value in column {text_column!r}")
        if isinstance(t, (list, dict, bool)):
            raise ValueError(f"{p} record {i} ({where}): the text in column {text_column!r} is "
                             f"a JSON {type(t).__name__}; it must be a string")
        t = str(t)
        if not t.strip():
            empty.append(i)
        texts.append(t)
        if label_column is not None:
            lab = r.get(label_column)
            if lab is None or (isinstance(lab, str) and not lab.strip()):
                raise ValueError(f"{p} record {i} ({where}) has no label in column "
                                 f"{label_column!r}")
            if isinstance(lab, (list, dict)):
                raise ValueError(f"{p} record {i} ({where}): label {str(lab)[:80]!r} must be a "
                                 "string or number")
            raw_labels.append(lab.strip() if isinstance(lab, str) else lab)
    if empty:
        raise _empty_records(p, empty, text_column, "record")
    if not texts:
        raise ValueError(f"{p} holds no records; a table needs a header row and one row per text")
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
    d = math.prod(int(s) for s in X.shape[1:])
    # X may be a memory map far larger than RAM; the float32 copy is not.
    _check_allocation(4 * n * d, f"the float32 feature matrix of {ds.source or 'the data'} "
                      f"({n} x {d})", hint="use a subset of the data, or free memory")
    out = np.empty((n, d), dtype=np.float32)
    scale = X.dtype == np.uint8
    step = max(1, _HASH_CHUNK_BYTES // max(1, d * 4))
    for a in range(0, n, step):
        block = np.asarray(X[a:a + step]).reshape(-1, d)
        np.copyto(out[a:a + block.shape[0]], block, casting="unsafe")
        if scale:
            out[a:a + block.shape[0]] /= np.float32(255.0)
    return out
