"""Embedding a dask array or bag with an embedcluster encoder on the Dask workers.

The encoder reaches the workers as a recipe, never as a pickled torch module:

- an :class:`~embedcluster.encoders.Encoder` around one of embedcluster's own models (MLP, CNN,
  a layer of one) travels as checkpoint bytes (``config.json`` + ``model.safetensors``, what
  :func:`~embedcluster.encoders.save_checkpoint` writes); a TorchScript module as the bytes
  ``torch.jit.save`` writes. Each worker process rebuilds it once with
  :func:`~embedcluster.encoders.load_encoder` (weights read by safetensors or TorchScript,
  nothing unpickled) and keeps it for the next tasks;
- a path or name that ``load_encoder`` takes (checkpoint folder, TorchScript file, Hugging
  Face or sentence-transformers folder, ``"all-MiniLM-L6-v2"``, ``"torchvision:..."`` with
  local weights) is loaded by every worker from its own file system, and its fingerprint
  (a hash of the files) must equal the one the client computed;
- a plain callable travels as Dask ships any task function (cloudpickle).

Rows are embedded in the batches a one-process ``Encoder.encode(all_rows, batch_size)`` would
use (rows ``[j * batch_size, (j + 1) * batch_size)``): the input is rechunked so that block edges
fall on those batch edges, and the embeddings are rechunked back to the input's chunks. Which
rows share a batch can change the bits: on the development machine (PyTorch 2.13 CPU) a batch
of 1 to 3 rows gives results 1 ulp away from the same rows inside a larger batch, and with two
threads more batch sizes do. Keeping the batches makes the result bit-identical to the
one-process run on the same device with the same number of torch threads.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import os
import platform
import shutil
import sys
import tempfile
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .encoders._common import _is_module, _sha


@dataclasses.dataclass(frozen=True)
class _EncoderRecipe:
    """What a worker needs to build the encoder: model files (bytes), a spec to load, or a
    callable, plus the Encoder options; ``digest`` names it in the workers' caches."""

    digest: str
    modality: str
    dim: int
    files: Optional[Dict[str, bytes]] = None
    spec: Optional[str] = None
    fingerprint: Optional[str] = None  # of the spec's encoder on the client
    model: Any = None
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __dask_tokenize__(self) -> str:
        return self.digest


# ---- Worker side: one encoder per (recipe, device) per process, built on first use.

_CACHE_SIZE = 2
_cache: collections.OrderedDict[Tuple[str, str], Tuple[Any, threading.Lock]] = collections.OrderedDict()
_cache_lock = threading.Lock()
# Encoders built in this process, by recipe digest (tests read it on the workers).
encoders_built: collections.Counter[str] = collections.Counter()


def _build_encoder(recipe: _EncoderRecipe, device: str) -> Any:
    from .encoders import load_encoder

    if recipe.model is not None:
        return load_encoder(recipe.model, device=device, **recipe.options)
    if recipe.spec is not None:
        enc = load_encoder(recipe.spec, device=device, **recipe.options)
        if enc.fingerprint != recipe.fingerprint:
            raise ValueError(f"the encoder {recipe.spec!r} on this worker (host {platform.node()}) "
                             f"has fingerprint {enc.fingerprint[:16]}, the client's "
                             f"{str(recipe.fingerprint)[:16]}: the files differ; install the same model "
                             "files at the same path on every worker")
        return enc
    assert recipe.files is not None
    folder = Path(tempfile.mkdtemp(prefix="embedcluster-encoder-"))
    try:
        for name, data in recipe.files.items():
            (folder / name).write_bytes(data)
        target = folder / "model.pt" if "model.pt" in recipe.files else folder
        return load_encoder(target, device=device, **recipe.options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _worker_encoder(recipe: _EncoderRecipe, device: Optional[str]) -> Tuple[Any, Optional[threading.Lock]]:
    """The encoder of ``recipe`` in this process and, when its forward pass may not run in two
    threads at once (hooks on a shared module), a lock to hold while encoding."""
    from .encoders import best_device

    device = device or best_device()
    if recipe.model is not None:
        # A callable is cheap to wrap, and two closures of one function share a fingerprint:
        # never cached.
        return _build_encoder(recipe, device), None
    key = (recipe.digest, device)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
        else:
            enc = _build_encoder(recipe, device)
            encoders_built[recipe.digest] += 1
            _cache[key] = (enc, threading.Lock())
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        enc, lock = _cache[key]
    # embedding_layer registers hooks on the module for each batch: one thread at a time.
    return enc, lock if enc.embedding_layer else None


def _set_torch_threads(n_threads: Optional[int]) -> None:
    torch = sys.modules.get("torch")
    if n_threads is not None and torch is not None and torch.get_num_threads() != n_threads:
        torch.set_num_threads(n_threads)


def _embed_block(block: np.ndarray, recipe: _EncoderRecipe, device: Optional[str], batch_size: int,
                 normalize: bool, n_threads: Optional[int]) -> np.ndarray:
    """Task: the embeddings (len(block), dim) float32 of one block of items."""
    enc, lock = _worker_encoder(recipe, device)
    _set_torch_threads(n_threads)
    if len(block) == 0:
        return np.empty((0, recipe.dim), dtype=np.float32)
    data = list(block) if recipe.modality == "text" else block
    with lock or contextlib.nullcontext():
        out = enc.encode(data, batch_size=batch_size, normalize=normalize, progress=False)
    if out.shape[1] != recipe.dim:
        raise ValueError(f"encoder {enc.name!r} returned {out.shape[1]} dims on a worker but "
                         f"{recipe.dim} on the client")
    return out


# ---- Client side: the recipe.

def _options_identity(options: Dict[str, Any]) -> str:
    parts = []
    for key, value in sorted(options.items()):
        if callable(value) and not isinstance(getattr(value, "fingerprint", None), str):
            # Two callables of the same code may differ in what they capture: a digest of its
            # own for every recipe, so no worker reuses an encoder built for another call.
            value = uuid.uuid4().hex
        parts.append(f"{key}={getattr(value, 'fingerprint', value)!r}")
    return ";".join(parts)


def _checkpoint_files(enc: Any) -> Optional[Dict[str, bytes]]:
    """The model of ``enc`` as files load_encoder reads back without unpickling: a checkpoint
    folder for embedcluster's models, a TorchScript file for script modules; None for others."""
    if enc.kind != "module":
        return None
    import torch

    model = enc.model
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # PyTorch deprecates TorchScript in favour of torch.export; the archives still load.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.save.*deprecated", category=DeprecationWarning)
            torch.jit.save(model, buffer)
        return {"model.pt": buffer.getvalue()}
    from .encoders import save_checkpoint
    from .transfer import models

    if isinstance(model, models.LayerSelect) and isinstance(model.encoder, (models.MLPEncoder, models.CNNEncoder)):
        if enc.embedding_layer:
            raise ValueError("an encoder that both selects a layer of an embedcluster model (with_layer) "
                             "and hooks embedding_layer cannot be shipped to Dask workers; use one of the two")
        inner, layer = model.encoder, model.layer
    elif isinstance(model, (models.MLPEncoder, models.CNNEncoder)):
        inner, layer = model, None
    else:
        return None
    with tempfile.TemporaryDirectory(prefix="embedcluster-encoder-") as tmp:
        folder = save_checkpoint(inner, Path(tmp) / "checkpoint", inner.config, embedding_layer=layer)
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


_SHIPPABLE = ("embedcluster.dask.embed takes an Encoder around one of embedcluster's models (MLP, CNN, a "
              "checkpoint) or a TorchScript module, a plain callable, or a path or name that load_encoder "
              "takes and every worker can read (Hugging Face, sentence-transformers, torchvision or timm "
              "with local weights); torch modules are never pickled to the workers")


def _recipe(encoder: Any, encoder_kwargs: Optional[dict]) -> Tuple[_EncoderRecipe, Any]:
    """The recipe of ``encoder`` (its dim still 0) and the encoder the workers will run, built
    on the client's CPU from that recipe (for the checks and the probe of the dimension)."""
    from .encoders import Encoder, load_encoder

    kwargs = dict(encoder_kwargs or {})
    if "device" in kwargs:
        raise ValueError("pass device= to embed (the workers' device), not in encoder_kwargs")
    if isinstance(encoder, (str, os.PathLike)):
        enc = load_encoder(encoder, device="cpu", **kwargs)
        digest = _sha("spec", os.fspath(encoder), enc.fingerprint, _options_identity(kwargs))
        return _EncoderRecipe(digest, enc.modality, 0, spec=os.fspath(encoder), fingerprint=enc.fingerprint,
                              options=kwargs), enc
    if not isinstance(encoder, Encoder):
        if not (_is_module(encoder) or callable(encoder)):
            raise TypeError(f"encoder must be an embedcluster Encoder, a path or name for load_encoder, "
                            f"a torch module or a callable, got {type(encoder).__name__}")
        encoder = load_encoder(encoder, **kwargs)
    elif kwargs:
        raise ValueError("encoder is already an Encoder; encoder_kwargs cannot be applied")
    options: Dict[str, Any] = {"name": encoder.name, "modality": encoder.modality,
                               "preprocess": encoder.preprocess, "version": encoder.version}
    if encoder.embedding_layer:
        options["embedding_layer"] = list(encoder.embedding_layer)
    if encoder.kind == "callable":
        recipe = _EncoderRecipe(uuid.uuid4().hex, encoder.modality, 0, model=encoder.model, options=options)
        return recipe, encoder
    files = _checkpoint_files(encoder)
    if files is None:
        raise TypeError(f"{_SHIPPABLE}; got an Encoder around a {type(encoder.model).__name__}: save it with "
                        "save_checkpoint, script or trace it (torch.jit), or pass the path it was loaded from")
    digest = _sha("files", *(f"{name}:{hashlib.sha256(data).hexdigest()}" for name, data in sorted(files.items())),
                  _options_identity(options))
    recipe = _EncoderRecipe(digest, encoder.modality, 0, files=files, options=options)
    return recipe, _checked_rebuild(recipe, encoder)


def _checked_rebuild(recipe: _EncoderRecipe, encoder: Any) -> Any:
    """The recipe's encoder built on the client's CPU, as each worker will build it; its
    weights must be the original's."""
    import torch

    rebuilt = _build_encoder(recipe, "cpu")
    a, b = encoder.model, rebuilt.model
    scripted = isinstance(a, torch.jit.ScriptModule)  # a traced module loads back as RecursiveScriptModule
    sa, sb = a.state_dict(), b.state_dict()
    same = (scripted or type(a) is type(b)) and list(sa) == list(sb) and all(
        sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k])
        for k in sa)
    if not same:
        raise ValueError(f"encoder {encoder.name!r} rebuilt from its checkpoint differs from the original "
                         f"({type(b).__name__} vs {type(a).__name__}, or other weights); was the module "
                         "changed after it was built from its config?")
    return rebuilt


# ---- Client side: the input as a dask array whose blocks hold whole batches.

def _batch_aligned_chunks(row_chunks: Tuple[int, ...], batch_size: int) -> Tuple[int, ...]:
    """Row chunks whose inner edges are the multiples of ``batch_size`` nearest to the edges of
    ``row_chunks`` (blocks smaller than half a batch merge into a neighbour)."""
    n = int(sum(row_chunks))
    edges = {(int(e) + batch_size // 2) // batch_size * batch_size for e in np.cumsum(row_chunks)[:-1]}
    inner = sorted(e for e in edges if 0 < e < n)
    bounds = [0, *inner, n]
    return tuple(int(b - a) for a, b in zip(bounds[:-1], bounds[1:]))


def _partition_summary(items: Any) -> Tuple[int, Any]:
    """Task: a bag partition's length and first item (None when empty)."""
    items = list(items)
    return len(items), (items[0] if items else None)


def _text_partition(items: Any) -> np.ndarray:
    """Task: a bag partition of texts as a 1-D object array."""
    items = list(items)
    bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"a text encoder embeds a bag of str, and item {bad} of a partition is a "
                        f"{type(items[bad]).__name__}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _array_partition(items: Any, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Task: a bag partition of arrays stacked as (len, *shape), each item checked."""
    rows = [np.asarray(item) for item in items]
    for i, row in enumerate(rows):
        if row.shape != shape or row.dtype != dtype:
            raise ValueError(f"item {i} of a bag partition has shape {row.shape} and dtype {row.dtype}, the "
                             f"bag's first item {shape} and {dtype}: every item must have the same shape "
                             "and dtype")
    return np.stack(rows) if rows else np.empty((0, *shape), dtype=dtype)


def _bag_as_array(bag: Any, modality: str) -> Tuple[Any, Any, Tuple[int, ...]]:
    """A dask bag as a dask array of its items (texts: 1-D object array), its first item and
    its partitions' lengths (computed here; dask drops the empty ones from the array's blocks)."""
    import dask
    import dask.array as da

    parts = bag.to_delayed()
    summaries = dask.compute(*[dask.delayed(_partition_summary)(p) for p in parts])
    lengths = [int(m) for m, _ in summaries]
    first = next((item for m, item in summaries if m), None)
    if first is None:
        raise ValueError("data holds 0 rows; nothing to embed")
    if modality == "text":
        if not isinstance(first, str):
            raise TypeError(f"a text encoder embeds a bag of str; the bag's first item is a {type(first).__name__}")
        blocks = [da.from_delayed(dask.delayed(_text_partition)(p), (m,), dtype=object) for p, m in zip(parts, lengths)]
    else:
        sample = np.asarray(first)
        if sample.dtype.kind not in "biuf":
            raise TypeError(f"an array encoder embeds a bag of numeric arrays (images or vectors); the bag's "
                            f"first item is a {type(first).__name__} of dtype {sample.dtype}")
        blocks = [da.from_delayed(dask.delayed(_array_partition)(p, sample.shape, sample.dtype), (m, *sample.shape),
                                  dtype=sample.dtype) for p, m in zip(parts, lengths)]
    return da.concatenate(blocks, axis=0), first, tuple(lengths)


def _checked_array(X: Any, enc: Any) -> Any:
    """The dask array ``X`` checked against the encoder's modality, with whole rows per block."""
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError("data has unknown chunk sizes; call data.compute_chunk_sizes() (or persist it and "
                         "then compute_chunk_sizes) before embedding it")
    if enc.modality == "text":
        if X.ndim != 1 or np.dtype(X.dtype).kind not in "OUS":
            raise ValueError(f"encoder {enc.name!r} embeds texts: pass a dask bag of str or a 1-D dask array "
                             f"of str, not a {X.ndim}-D dask array of {X.dtype}")
    else:
        enc._items(np.zeros((0, *X.shape[1:]), dtype=X.dtype))  # the Encoder's own shape and dtype errors
    if X.shape[0] == 0:
        raise ValueError("data holds 0 rows; nothing to embed")
    if X.ndim > 1 and any(len(c) != 1 for c in X.chunks[1:]):
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    return X


def _probe_dim(enc: Any, sample: Any) -> int:
    """The embedding dimension, from one item (of the data, or made up) run through the encoder
    on the client."""
    out = enc.encode(sample, batch_size=max(1, len(sample)), progress=False)
    return int(out.shape[1])


def _check_positive(value: Any, name: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} should be {what}")


def embed(encoder: Any, data: Any, *, batch_size: int = 256, normalize: bool = False,
          device: Optional[str] = None, n_threads: Optional[int] = 1,
          encoder_kwargs: Optional[dict] = None) -> Any:
    """Embeds a dask array or a dask bag on the Dask workers; returns a lazy dask array
    (n, dim) float32 with one block per input block (or bag partition).

    The result is bit-identical to ``Encoder.encode(all_rows, batch_size=batch_size,
    normalize=normalize)`` in one process on the same device with ``torch.set_num_threads(n_threads)``,
    for any chunking, and flows straight into :class:`embedcluster.dask.KMeans`.

    Parameters
    ----------
    encoder : Encoder, path or name, torch module or callable
        - an :class:`~embedcluster.encoders.Encoder` (or a module / callable, wrapped by
          ``load_encoder(encoder, **encoder_kwargs)``) around one of embedcluster's models (MLP,
          CNN, a checkpoint, a layer of one) or a TorchScript module: shipped to the workers as
          checkpoint or TorchScript bytes in the task graph (once per worker) and rebuilt there
          without unpickling; other torch modules are refused (save them with
          ``save_checkpoint``, script or trace them, or pass the path they came from);
        - a path or name that :func:`~embedcluster.encoders.load_encoder` takes: loaded on the
          client, and by every worker from its own file system at the same path; the files must
          be the same (their fingerprints are compared);
        - a plain callable (batch -> embeddings): pickled to the workers as Dask does for any task.
        Each worker process builds the encoder once and keeps it (the two most recent).
    data : dask.array.Array or dask.bag.Bag
        An array of rows: images (n, H, W) / (n, H, W, C) uint8 or float, or vectors (n, d),
        chunked in any way along the rows (column chunks are merged); for a text encoder a 1-D
        array of str. A bag of items: str for a text encoder, arrays of one shape and dtype for
        an array encoder; the partitions' lengths are computed first (one pass over the bag:
        persist it when producing it is costly), and the result is a dask array with one block
        per partition, of known sizes.
    batch_size : rows per forward pass. Blocks are rechunked so that each holds whole batches
        of the one-process run (and the embeddings back to the input's blocks): which rows share
        a batch can change the last bits of a row's embedding.
    normalize : scale every row to unit L2 norm, as ``Encoder.encode`` does.
    device : the workers' torch device; None: each worker's best (CUDA when it has one).
    n_threads : torch threads of each worker process, set by every task (``torch.set_num_threads``
        is process-wide): 1 suits one Dask thread per core; None leaves torch's setting alone.
    encoder_kwargs : keyword arguments of ``load_encoder`` when ``encoder`` is a path, name,
        module or callable (``preprocess``, ``embedding_layer``, ``weights``, ...).
    """
    import dask.array as da
    import dask.bag as db
    from dask import delayed

    _check_positive(batch_size, "batch_size", "a positive integer")
    if n_threads is not None:
        _check_positive(n_threads, "n_threads", "a positive integer or None")
    if not isinstance(data, (da.Array, db.Bag)):
        raise TypeError(f"data must be a dask array or a dask bag, got {type(data).__module__}."
                        f"{type(data).__name__}; for data in memory call encoder.encode(data), or wrap it "
                        "with dask.array.from_array(data, chunks=...)")
    recipe, enc = _recipe(encoder, encoder_kwargs)
    if isinstance(data, db.Bag):
        X, first, row_chunks = _bag_as_array(data, recipe.modality)
        sample = [first] if recipe.modality == "text" else np.asarray(first)[None]
    else:
        X = _checked_array(data, enc)
        row_chunks = tuple(int(c) for c in X.chunks[0])
        # A row of ones, not zeros: an encoder that divides by a row's norm stays finite.
        sample = ["embedcluster"] if recipe.modality == "text" else np.ones((1, *X.shape[1:]), dtype=X.dtype)
    recipe = dataclasses.replace(recipe, dim=_probe_dim(enc, sample))
    aligned = _batch_aligned_chunks(row_chunks, int(batch_size))
    blocks = X if X.chunks[0] == aligned else X.rechunk({0: aligned})
    axes = {"new_axis": 1} if X.ndim == 1 else {"drop_axis": list(range(2, X.ndim))} if X.ndim > 2 else {}
    out = blocks.map_blocks(_embed_block, delayed(recipe, pure=True), device, int(batch_size), bool(normalize),
                            n_threads, dtype=np.float32, chunks=(aligned, (recipe.dim,)),
                            meta=np.empty((0, 0), dtype=np.float32), token="embed", **axes)
    return out if aligned == row_chunks else out.rechunk({0: row_chunks})
