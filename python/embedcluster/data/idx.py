"""IDX files (plain or gzip), the format of MNIST and Fashion-MNIST."""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

import numpy as np

from ._common import PathLike, _check_allocation, _existing
from .arrays import _encode_labels, _kind_of
from .dataset import Dataset

logger = logging.getLogger(__name__)


_IDX_TYPES: Dict[int, np.dtype] = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
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
    view = buf.data
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


def _looks_idx(p: Path) -> bool:
    name = p.name.lower()
    return (p.suffix.lower() in (".idx", ".gz") or name.endswith("-ubyte")
            or ".idx" in name or "-ubyte." in name)
