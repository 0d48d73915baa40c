"""The on-disk embedding cache: one safetensors file per encoder, data and normalisation, with
a checksum."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .. import _io

logger = logging.getLogger(__name__)


_CACHE_FORMAT = "embedcluster-embeddings/1"


def cache_path(cache_dir: Union[str, os.PathLike], efp: str, dfp: str, normalize: bool) -> Path:
    """Where the embeddings of data ``dfp`` by encoder ``efp`` are cached."""
    return Path(cache_dir) / f"{efp[:16]}-{dfp[:16]}-{normalize}.safetensors"


def write_cache(path: Path, emb: np.ndarray, name: str, efp: str, dfp: str, normalize: bool) -> None:
    """Writes embeddings with what identifies them and their checksum (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.save_safetensors(path, {"embeddings": emb}, {
        "format": _CACHE_FORMAT, "encoder_name": name, "encoder_fingerprint": efp,
        "data_fingerprint": dfp, "normalize": normalize, "shape": list(emb.shape),
        "sha256": hashlib.sha256(emb.data.cast("B")).hexdigest(),
    })


def read_cache(path: Path, efp: str, dfp: str, n: int, normalize: bool) -> Optional[np.ndarray]:
    """The cached embeddings of ``path`` when they were written for this encoder, data and
    normalisation and match their checksum; None (and a warning) otherwise."""
    if not path.is_file():
        return None
    try:
        tensors, meta = _io.load_safetensors(path)
        emb = tensors["embeddings"]
        problems = []
        if meta.get("format") != _CACHE_FORMAT:
            problems.append(f"unknown format {meta.get('format')!r}")
        if meta.get("encoder_fingerprint") != efp or meta.get("data_fingerprint") != dfp \
                or meta.get("normalize") != normalize:
            problems.append("it was written for another encoder or data set")
        if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] != n \
                or list(emb.shape) != meta.get("shape"):
            problems.append(f"shape {emb.shape} / dtype {emb.dtype} do not match")
        elif hashlib.sha256(np.ascontiguousarray(emb).data.cast("B")).hexdigest() \
                != meta.get("sha256"):
            problems.append("the embeddings do not match their checksum")
        if problems:
            raise ValueError("; ".join(problems))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning("embedding cache %s is unusable (%s); embedding again and "
                       "overwriting it", path, e)
        return None
    return np.ascontiguousarray(emb)
