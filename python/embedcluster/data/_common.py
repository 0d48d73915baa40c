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
                          + (hint or "free memory, pass a larger memory_limit=, or check that "
                                     "the file is not damaged"))


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
