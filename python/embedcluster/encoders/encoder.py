"""Encoder: a model plus batching, progress, layer selection and the embedding cache."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .. import _io
from .._io import _is_torch_tensor as _is_tensor
from .._interface import advice
from .._progress import Progress
from ._common import _is_module, _is_sentence_transformer, _sha, _torch, resolve_device
from .cache import cache_path, read_cache, write_cache
from .fingerprint import _array_of, _callable_identity, _module_digest, _texts_of, data_fingerprint
from .preprocess import _default_preprocess

logger = logging.getLogger(__name__)


def _to_rows(out: Any, n: int, who: str) -> np.ndarray:
    """An encoder's batch output as a float32 (n, d) array."""
    if isinstance(out, tuple) and out and (_is_tensor(out[0]) or isinstance(out[0], np.ndarray)):
        out = out[0]  # (embeddings, logits, ...) from a module: the first output is the embedding
    if isinstance(out, dict):
        raise TypeError(f"{who} returned a dict (keys {list(out)[:6]}); wrap it so that it returns "
                        "a tensor of embeddings, or " + advice("pass embedding_layer=", "pass --layer NAME"))
    out = np.asarray(_io.to_numpy(out), dtype=np.float32)
    if out.ndim == 0 or out.shape[0] != n:
        raise ValueError(f"{who} returned shape {out.shape} for a batch of {n} rows; it must "
                         "return one embedding per row")
    return out.reshape(n, -1)


class _StopForward(Exception):
    """Raised by a hook once every requested layer has been seen: the rest of the network is
    skipped."""


# --------------------------------------------------------------------------- Encoder
class Encoder:
    """Something that maps a batch of data to embeddings, plus batching, progress and a cache.

    Parameters
    ----------
    model : torch.nn.Module, sentence_transformers.SentenceTransformer, or any callable that maps
        a batch (numpy array, or list of str for ``modality="text"``) to an array or tensor with
        one row per item. Modules are moved to ``device`` and run in eval mode.
    name : shown in logs and progress bars; defaults to the class or function name.
    device : ``"cuda"``, ``"cuda:N"``, ``"cpu"``, ``"auto"``, ... ; default (None or "auto"): CUDA
        when available, else CPU. A CUDA device that the installed torch cannot use raises
        ValueError before the model moves (:func:`embedcluster.encoders.resolve_device`).
    preprocess : callable applied to each batch before the model. Default: uint8 scaled to
        [0, 1] float32, other arrays cast to float32; texts unchanged.
    version : user label mixed into the fingerprint of a callable: bump it when the callable's
        behaviour changes in a way its code does not show (for example new weights it closes
        over), so the cache does not return stale embeddings.
    embedding_layer : name (or names) of submodules whose output is the embedding (flattened,
        concatenated) instead of the module's final output; the forward pass stops there.
    modality : ``"array"`` (images or vectors) or ``"text"`` (lists of strings).
    fingerprint : identity of the model when it came from a file (loaders set it).

    Attributes
    ----------
    name, device, modality, model, kind, fingerprint
        ``fingerprint`` is a sha256 hex string of the model's identity: for modules the class
        name and state_dict tensors (recomputed on access, so changed weights give a new one);
        for files the file hash; for callables ``module.qualname``, a bytecode hash and
        ``version``. ``embedding_layer`` and a custom ``preprocess`` are mixed in.
    """

    _input_dtype: Any = None  # dtype of the module's first float parameter, set per encode

    def __init__(self, model: Any, *, name: Optional[str] = None, device: Optional[str] = None,
                 preprocess: Optional[Callable] = None, version: Optional[str] = None,
                 embedding_layer: Optional[Union[str, Sequence[str]]] = None,
                 modality: Optional[str] = None, fingerprint: Optional[str] = None) -> None:
        if _is_sentence_transformer(model):
            self.kind = "sentence-transformers"
        elif _is_module(model):
            self.kind = "module"
        elif callable(model):
            self.kind = "callable"
        else:
            raise TypeError(f"model must be a torch.nn.Module or a callable, got "
                            f"{type(model).__name__}")
        if modality is None:
            modality = "text" if self.kind == "sentence-transformers" else "array"
        if modality not in ("array", "text"):
            raise ValueError(f"modality={modality!r} should be 'array' or 'text'")
        if self.kind == "sentence-transformers" and modality != "text":
            raise ValueError("a sentence-transformers model embeds texts: modality must be 'text'")
        if preprocess is not None and not callable(preprocess):
            raise TypeError("preprocess must be callable (batch -> array or tensor)")
        self.model = model
        self.modality = modality
        self.preprocess = preprocess
        self.version = None if version is None else str(version)
        if isinstance(embedding_layer, str):
            embedding_layer = [embedding_layer]
        self.embedding_layer = list(embedding_layer) if embedding_layer else None
        self._fixed_fingerprint = fingerprint
        if name is None:
            name = (type(model).__name__ if self.kind != "callable"
                    else getattr(model, "__qualname__", type(model).__name__))
        self.name = str(name)
        self.device = resolve_device(device)
        if self.embedding_layer is not None:
            self._check_layers()
        if self.kind == "module":
            model.to(self.device)
            model.eval()

    def __repr__(self) -> str:
        return (f"Encoder(name={self.name!r}, kind={self.kind!r}, modality={self.modality!r}, "
                f"device={self.device!r})")

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        if self._fixed_fingerprint is not None:
            base = self._fixed_fingerprint
        elif self.kind in ("module", "sentence-transformers"):
            base = _module_digest(self.model)
        else:
            base = _callable_identity(self.model)
        parts = [self.kind, self.modality, base]
        if self.version is not None:
            parts.append("version=" + self.version)
        if self.embedding_layer:
            parts.append("layers=" + ",".join(self.embedding_layer))
        if self.preprocess is not None:
            parts.append("preprocess=" + _callable_identity(self.preprocess))
        return _sha(*parts)

    def _check_layers(self) -> None:
        if self.kind != "module":
            raise ValueError("embedding_layer needs a torch.nn.Module encoder")
        torch = _torch()
        if isinstance(self.model, torch.jit.ScriptModule):
            raise ValueError("embedding_layer is not supported for TorchScript modules (they take "
                             "no hooks); script a model whose forward returns that layer")
        names = [n for n, _ in self.model.named_modules() if n]
        for layer in self.embedding_layer or []:
            if layer not in names:
                raise ValueError(f"{advice('embedding_layer', '--layer')}={layer!r} is not a submodule of "
                                 f"{type(self.model).__name__}; its submodules are: "
                                 f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")

    # ------------------------------------------------------------------ embedding
    def _forward_layers(self, x: Any) -> Any:
        torch = _torch()
        captured: dict = {}
        wanted = self.embedding_layer or []

        def hook_for(layer: str):
            def hook(_mod, _inp, out):
                captured.setdefault(layer, out)
                if len(captured) == len(wanted):
                    raise _StopForward
            return hook

        handles = [self.model.get_submodule(layer).register_forward_hook(hook_for(layer))
                   for layer in wanted]
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            for hd in handles:
                hd.remove()
        missing = [layer for layer in wanted if layer not in captured]
        if missing:
            raise ValueError(f"embedding_layer {missing} never ran in {type(self.model).__name__}"
                             ".forward; choose a submodule that the forward pass calls")
        parts = []
        for layer in wanted:
            out = captured[layer]
            if isinstance(out, (tuple, list)):
                out = out[0]
            parts.append(out.reshape(out.shape[0], -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _embed_batch(self, batch: Any) -> np.ndarray:
        n = len(batch)
        x = (self.preprocess or _default_preprocess)(batch)
        if self.kind == "sentence-transformers":
            out = self.model.encode(list(x), batch_size=max(1, n), convert_to_numpy=True,
                                    show_progress_bar=False, normalize_embeddings=False)
        elif self.kind == "module" and self.modality == "array":
            torch = _torch()
            if not isinstance(x, torch.Tensor):
                x = torch.from_numpy(np.ascontiguousarray(x))
            x = x.to(self.device)
            if x.is_floating_point() and self._input_dtype is not None:
                x = x.to(self._input_dtype)
            out = self._forward_layers(x) if self.embedding_layer else self.model(x)
        else:
            out = self.model(x)
        return _to_rows(out, n, f"encoder {self.name!r}")

    def _items(self, data: Any) -> Any:
        if self.modality == "text":
            texts = _texts_of(data)
            if texts is None:
                raise ValueError(f"encoder {self.name!r} embeds texts, but the data is "
                                 f"{getattr(data, 'kind', type(data).__name__)} without texts; "
                                 + advice("pass a list of strings or a Dataset with .texts",
                                          "pass a .txt, .csv or .jsonl file of texts as DATA, or an image "
                                          "encoder such as --encoder efficientnet-lite0"))
            empty = [i for i, t in enumerate(texts) if not t.strip()]
            if empty:
                first = ", ".join(str(i) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
                raise ValueError(f"{len(empty)} of the {len(texts)} texts are empty or only "
                                 f"whitespace (indices {first}); an empty text has no meaning to "
                                 "embed (its embedding would be the model's bias alone): remove "
                                 "or fill in those texts")
            return texts
        X = _array_of(data)
        if X is None:
            raise ValueError(f"encoder {self.name!r} takes arrays (images or vectors), but the data "
                             "holds texts; use a text encoder such as "
                             + advice("load_encoder('all-MiniLM-L6-v2')",
                                      "all-MiniLM-L6-v2 (--encoder all-MiniLM-L6-v2 in run and embed)"))
        if len(X.shape) < 2:
            raise ValueError(f"data of shape {tuple(X.shape)}: expected vectors (n, d) or images "
                             "(n, H, W) / (n, H, W, C)")
        kind = np.dtype(X.dtype).kind
        if kind not in "biuf":
            raise TypeError(f"data dtype {X.dtype} is not numeric; expected uint8 or float images "
                            "or float vectors")
        return X

    def _embed_all(self, items: Any, batch_size: int, progress: Any) -> np.ndarray:
        n = len(items)
        out: Optional[np.ndarray] = None
        torch = sys.modules.get("torch")
        if torch is None and self.kind != "callable":
            torch = _torch()
        grad_off = torch.inference_mode() if torch is not None else contextlib.nullcontext()
        was_training = self.model.training if self.kind == "module" else None
        if self.kind == "module":
            self.model.eval()
            self._input_dtype = next((p.dtype for p in self.model.parameters()
                                      if p.is_floating_point()), None)
        bar = Progress(f"embedding ({self.name})", total=n, verbose=progress, unit="row")
        try:
            with grad_off:
                for i in range(0, n, batch_size):
                    batch = items[i:i + batch_size]
                    if not isinstance(batch, list):
                        batch = np.asarray(batch)
                    emb = self._embed_batch(batch)
                    if out is None:
                        out = np.empty((n, emb.shape[1]), dtype=np.float32)
                    elif emb.shape[1] != out.shape[1]:
                        raise ValueError(f"encoder {self.name!r} returned {emb.shape[1]} dims for "
                                         f"rows {i}..{i + len(emb)} but {out.shape[1]} before")
                    out[i:i + len(emb)] = emb
                    bar.update(len(emb))
        finally:
            bar.close()
            if was_training:
                self.model.train(True)
        assert out is not None
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise ValueError(f"encoder {self.name!r} produced NaN or infinite values in "
                             f"{int(bad.sum())} rows (first: {int(np.flatnonzero(bad)[0])}); "
                             "check the input scaling and the model")
        return out

    def encode(self, data: Any, batch_size: int = 256, normalize: bool = False,
               progress: Any = True, cache_dir: Optional[Union[str, os.PathLike]] = None
               ) -> np.ndarray:
        """Embeds ``data``; returns a float32 array of shape (n, d).

        Parameters
        ----------
        data : numpy array of images (n, H, W) / (n, H, W, C) (uint8 or float) or vectors
            (n, d); a list of strings (text encoders); or a Dataset with ``.X`` / ``.texts``.
        batch_size : rows per forward pass.
        normalize : scale every row to unit L2 norm (zero rows stay zero).
        progress : show progress on stderr: a bar in a terminal, else a log line every ~10 s
            or tenth of the rows (see ``embedcluster._progress``); False: silent; None: as the
            caller (the command line, ``TransferClustering``) shows progress.
        cache_dir : if given, embeddings are stored there as
            ``<encoder fingerprint[:16]>-<data fingerprint[:16]>-<normalize>.safetensors`` and
            loaded instead of embedding again; a damaged cache file is logged and rewritten.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} should be a positive integer")
        items = self._items(data)
        n = len(items)
        if n == 0:
            raise ValueError("data holds 0 rows; nothing to embed")
        normalize = bool(normalize)
        cache_file = None
        if cache_dir is not None:
            efp, dfp = self.fingerprint, data_fingerprint(data)
            cache_file = cache_path(cache_dir, efp, dfp, normalize)
            cached = read_cache(cache_file, efp, dfp, n, normalize)
            if cached is not None:
                logger.info("embedding cache hit: %s", cache_file)
                return cached
        emb = self._embed_all(items, int(batch_size), progress)
        if normalize:
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            np.divide(emb, norms, out=emb, where=norms > 0)
        if cache_file is not None:
            write_cache(cache_file, emb, self.name, efp, dfp, normalize)
            logger.info("embeddings cached in %s", cache_file)
        return emb
