"""Identities for the embedding cache: of an encoder (code, weights, files) and of the data it
embeds."""

from __future__ import annotations

import functools
import hashlib
import re
import types
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import _io
from .._io import _is_torch_tensor as _is_tensor
from ._common import _is_module, _is_text_list, _sha, _torch


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
        # The class's __call__ method itself (for its __code__), not a test of callability.
        code = getattr(getattr(type(fn), "__call__", None), "__code__", None)  # noqa: B004
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
