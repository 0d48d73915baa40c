"""Arrays and tensors in memory, .npy files (memory-mapped, header checked) and folders of .npy
shards."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import _io
from .._interface import advice
from ._common import PathLike, _check_allocation, _existing, _sorted_unique, describe_bytes
from .dataset import Dataset
from .sharded import ShardedArray

logger = logging.getLogger(__name__)


def _to_numpy(a: Any) -> Any:
    """numpy arrays pass through (memmaps stay memmaps); torch tensors become host arrays."""
    if isinstance(a, (np.ndarray, ShardedArray)):
        return a
    return np.asarray(_io.to_numpy(a))


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
    hint = "" if nd != 1 else " " + advice("(for a single feature use X.reshape(-1, 1))",
                                           "(save a single feature as a 2-D array of shape (n, 1))")
    raise ValueError(f"X has shape {tuple(X.shape)}; expected (n, d) vectors or (n, H, W) / "
                     f"(n, H, W, C) images{hint}")


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

        impl = _format_impl._read_array_header  # type: ignore[attr-defined]  # absent from numpy's stubs
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
            head = f.read(64)
            if head[:len(_NPY_MAGIC)] != _NPY_MAGIC:
                if head.startswith(b"PK\x03\x04"):
                    raise ValueError(f"{p} is a zip archive (an .npz file or a torch.save file), not a "
                                     ".npy file; save the array alone with np.save and pass that")
                looks = describe_bytes(head) if head else "an empty file"
                raise ValueError(f"{p} is not a .npy file: it looks like {looks} (a .npy file starts "
                                 "with \\x93NUMPY); pass an array written by np.save")
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
                          advice("pass mmap=True to read it from disk on demand, free memory, or "
                                 "pass a larger memory_limit=", "free memory, or check that the file is not damaged"))
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
