"""The Dataset every loader returns, and its feature matrix for clustering without an encoder."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import _io
from . import _common
from ._common import KINDS, _as_index, _check_allocation


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
    ids : list of str or None
        A name for each sample that finds it in its source: for an image folder, each image's
        path relative to the folder. None when the position (0, 1, ...) is the only name.
    """

    X: Any = None
    y: np.ndarray | None = None
    kind: str = "vectors"
    texts: list[str] | None = None
    class_names: list[str] | None = None
    source: str = ""
    ids: list[str] | None = None

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
        if self.ids is not None:
            self.ids = [str(i) for i in self.ids]
            if len(self.ids) != len(self):
                raise ValueError(f"ids has {len(self.ids)} entries; it must have {len(self)}, one per sample")

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
        same digest whatever file, shard layout, byte order or array type holds it. Labels, class
        names and ``source`` are not part of the digest: they do not change an embedding.

        Returns
        -------
        str
            64 hexadecimal characters.
        """
        if self.kind == "texts":
            return _io.sha256_texts(self.texts)
        return _io.sha256_array(self.X, _common._HASH_CHUNK_BYTES)

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
        ids = None if self.ids is None else [self.ids[i] for i in sel]
        return replace(self, X=X, y=y, texts=texts, ids=ids,
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
    step = max(1, _common._HASH_CHUNK_BYTES // max(1, d * 4))
    for a in range(0, n, step):
        block = np.asarray(X[a:a + step]).reshape(-1, d)
        np.copyto(out[a:a + block.shape[0]], block, casting="unsafe")
        if scale:
            out[a:a + block.shape[0]] /= np.float32(255.0)
    return out
