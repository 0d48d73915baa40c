"""Checks every loader shares: paths that must be regular files or folders, allocations within
the memory budget, label encoding helpers."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from .. import _io
from .._interface import advice


PathLike = Union[str, "os.PathLike[str]"]


KINDS = ("images", "vectors", "texts")


# Hashing and conversion read arrays in blocks of about this many bytes, so a memory map of
# many GB is never resident at once.
_HASH_CHUNK_BYTES = _io.HASH_CHUNK_BYTES


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


# First bytes of files that are often passed under the wrong name, for a message that says what
# the file looks like instead of blaming its format (or suggesting an unsafe way to read it).
_SIGNATURES = ((b"\x93NUMPY", "a .npy array (np.save)"), (b"\x89PNG", "a PNG image"),
               (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"PK\x03\x04", "a zip archive (an .npz file, a torch.save file or a .zip)"),
               (b"\x1f\x8b", "a gzip file"), (b"BZh", "a bzip2 file"), (b"\xfd7zXZ", "an xz file"),
               (b"\x28\xb5\x2f\xfd", "a zstd file"), (b"7z\xbc\xaf", "a 7-zip archive"),
               (b"\x80\x02", "a Python pickle"), (b"\x80\x03", "a Python pickle"),
               (b"\x80\x04", "a Python pickle"), (b"\x80\x05", "a Python pickle"),
               (b"BM", "a BMP image"), (b"RIFF", "a RIFF (WebP / WAV) file"), (b"%PDF", "a PDF document"),
               (b"SQLite format 3", "an SQLite database"), (b"\x7fELF", "an executable (ELF)"),
               (b"\x00\x00\x08", "an IDX file"), (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"))


def describe_bytes(head: bytes) -> str:
    """What a file that starts with ``head`` (its first 16 bytes or more) looks like: "a PNG
    image", "a gzip file", "JSON text", "UTF-8 text", ..., or its first bytes in hex."""
    for sig, name in _SIGNATURES:
        if head.startswith(sig):
            return name
    if head[:1] in (b"{", b"["):
        return "JSON text"
    if head and b"\0" not in head:
        try:
            head.decode("utf-8")
            return "UTF-8 text"
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 3:  # a character cut by the end of the sample
                return "UTF-8 text"
    return f"a file starting with bytes {head[:8].hex()}"


def file_looks_like(path: PathLike) -> str:
    """:func:`describe_bytes` of the file's first 64 bytes ("an empty file" when it has none)."""
    with open(path, "rb") as f:
        head = f.read(64)
    return describe_bytes(head) if head else "an empty file"


def _memory_budget(memory_limit: int | None = None) -> float:
    """Bytes a loader may allocate: ``memory_limit`` when given (0: no limit), else the
    engine's default limit (:func:`embedcluster._backend.memory_budget`: available memory,
    RLIMIT_AS and cgroup room)."""
    from .._backend import memory_budget

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
                          + (hint or advice("free memory, pass a larger memory_limit=, or check that "
                                            "the file is not damaged",
                                            "free memory, or check that the file is not damaged")))


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
