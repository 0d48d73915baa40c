"""ShardedArray: several arrays (memory-mapped .npy shards) read as one, without copying."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np


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
