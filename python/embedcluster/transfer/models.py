"""Small PyTorch encoders that embedcluster builds itself (MLP and CNN), described by a JSON config.

A config is a plain dict, so a checkpoint is ``config.json`` + ``model.safetensors`` and never
pickle::

    {"arch": "mlp", "in_shape": [64], "hidden": [256, 128], "embed_dim": 64}
    {"arch": "cnn", "in_shape": [1, 28, 28], "channels": [32, 64], "embed_dim": 128}

Every encoder maps a float tensor ``(n, *in_shape)`` to embeddings ``(n, embed_dim)``; its
``config`` attribute is the complete config (defaults filled in), which is what a checkpoint
should store: ``embedcluster.encoders.save_checkpoint(model, directory, model.config)``.

Which layer to embed with
-------------------------
The last layer of an encoder trained on a source task specialises to that task and can transfer
worse than raw pixels (DESIGN.md, "Data sets here"), while earlier layers keep more general
features. So every encoder names its layers and exposes them through ``features(x, layer)``:

- ``"embedding"``: the final linear output (what ``forward`` returns);
- a block name from ``layer_names`` (``"hidden0"``, ``"hidden1"`` for the MLP; ``"conv0"``,
  ``"conv1"``, ``"fc0"`` for the CNN; convolutional maps are global-average-pooled to
  ``(n, channels)``);
- ``"penultimate"``: the block just before the embedding;
- ``"concat"``: every block and the embedding, or a list of names: the chosen parts, each
  L2-normalised per row and scaled by ``1/sqrt(n_parts)`` before concatenation, so that every
  part weighs the same in Euclidean distances whatever its width or scale and each row has
  unit norm (k-means on the concatenation then compares like with like).

:func:`with_layer` wraps an encoder so that ``forward`` returns a chosen layer; a checkpoint's
``embedding_layer`` entry names the layer the same way.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

ARCHS = ("mlp", "cnn")
LayerSpec = Union[str, Sequence[str]]

_MLP_DEFAULTS: Dict[str, Any] = {"hidden": [256, 128], "embed_dim": 64, "norm": "batch"}
_CNN_DEFAULTS: Dict[str, Any] = {"channels": [32, 64], "hidden": [], "embed_dim": 128, "norm": "batch"}
_NORMS = ("batch", "layer", "none")


# Bounds on a config's fields, so that nothing read from a file can ask for an absurd model
# before its total size is even computed (that total is then checked against memory).
_MAX_WIDTH = 1 << 20          # units of a layer, channels, embedding or input dimension
_MAX_LAYERS = 64              # entries of hidden / channels
_MAX_IN_FEATURES = 1 << 31    # product of in_shape


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (
        hasattr(v, "dtype") and getattr(v, "shape", None) == () and str(v.dtype).startswith(("int", "uint")))


def _positive_int(value: Any, name: str) -> int:
    if not _is_int(value):
        raise ValueError(f"{name}={value!r} should be an integer (got a {type(value).__name__})")
    v = int(value)
    if not 1 <= v <= _MAX_WIDTH:
        raise ValueError(f"{name}={v} should be between 1 and {_MAX_WIDTH}")
    return v


def _positive_ints(value: Any, name: str, allow_empty: bool) -> List[int]:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name}={value!r} should be a list of positive integers")
    items = list(value)
    if len(items) > _MAX_LAYERS:
        raise ValueError(f"{name} has {len(items)} entries; at most {_MAX_LAYERS} are allowed")
    if not items and not allow_empty:
        raise ValueError(f"{name}={items!r} should be a non-empty list of positive integers")
    return [_positive_int(v, f"{name}[{i}]") for i, v in enumerate(items)]


def normalize_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Returns the complete config (defaults filled in, values checked) for ``model_from_config``.

    Checkpoints store this complete form, so a later change of a default cannot change what a
    saved checkpoint builds. Every field is checked for type and range (integers only, widths
    1 to 2**20, at most 64 layers, an input of at most 2**31 values) so that a config read from
    a file cannot describe an absurd model.

    Raises
    ------
    ValueError
        For an unknown ``arch`` or a malformed field; the message names the field and the rule.
    """
    if not isinstance(config, dict):
        raise ValueError(f"model config should be a dict, got {type(config).__name__}")
    arch = config.get("arch")
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not a known encoder architecture; use one of {ARCHS}")
    defaults = _MLP_DEFAULTS if arch == "mlp" else _CNN_DEFAULTS
    allowed = {"arch", "in_shape", *defaults}
    unknown = sorted(str(k) for k in set(config) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in a {arch!r} config; allowed: {sorted(allowed)}")
    if "in_shape" not in config:
        raise ValueError(f"a {arch!r} config needs 'in_shape', e.g. [64] or [1, 28, 28]")
    out: Dict[str, Any] = {"arch": arch}
    out["in_shape"] = _positive_ints(config["in_shape"], "in_shape", allow_empty=False)
    if math.prod(out["in_shape"]) > _MAX_IN_FEATURES:
        raise ValueError(f"in_shape={out['in_shape']} describes {math.prod(out['in_shape'])} "
                         f"input values; at most {_MAX_IN_FEATURES} are allowed")
    if arch == "cnn":
        shape = out["in_shape"]
        if len(shape) == 2:  # (H, W): one channel
            out["in_shape"] = [1, *shape]
        elif len(shape) != 3:
            raise ValueError(f"in_shape={shape} for arch='cnn' should be [C, H, W] or [H, W]")
        out["channels"] = _positive_ints(config.get("channels", defaults["channels"]), "channels",
                                         allow_empty=False)
    elif len(out["in_shape"]) > 4:
        raise ValueError(f"in_shape={out['in_shape']} has {len(out['in_shape'])} dims; an "
                         "'mlp' takes vectors or images (1 to 4 dims)")
    out["hidden"] = _positive_ints(config.get("hidden", defaults["hidden"]), "hidden", allow_empty=True)
    out["embed_dim"] = _positive_int(config.get("embed_dim", defaults["embed_dim"]), "embed_dim")
    out["norm"] = config.get("norm", defaults["norm"])
    if not isinstance(out["norm"], str) or out["norm"] not in _NORMS:
        raise ValueError(f"norm={out['norm']!r} should be one of {_NORMS}")
    return out


def config_nbytes(config: Dict[str, Any]) -> int:
    """Bytes of the parameters and buffers the config's model holds, computed by building it
    on torch's ``meta`` device (no memory is allocated)."""
    full = normalize_config(copy.deepcopy(config))
    with torch.device("meta"):
        module = MLPEncoder(full) if full["arch"] == "mlp" else CNNEncoder(full)
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _norm1d(kind: str, width: int) -> nn.Module:
    return {"batch": lambda: nn.BatchNorm1d(width), "layer": lambda: nn.LayerNorm(width),
            "none": nn.Identity}[kind]()


def _norm2d(kind: str, channels: int) -> nn.Module:
    # GroupNorm(1, C) normalises over (C, H, W) per sample: LayerNorm for feature maps.
    return {"batch": lambda: nn.BatchNorm2d(channels), "layer": lambda: nn.GroupNorm(1, channels),
            "none": nn.Identity}[kind]()


class _Encoder(nn.Module):
    """Shared layer selection: subclasses fill ``blocks`` (named) and ``head`` (the embedding)."""

    config: Dict[str, Any]
    blocks: nn.ModuleDict
    head: nn.Linear

    @property
    def layer_names(self) -> List[str]:
        """Names accepted by :meth:`features`, input side first, ending with ``"embedding"``."""
        return [*self.blocks.keys(), "embedding"]

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def _resolve(self, layer: LayerSpec) -> List[str]:
        names = self.layer_names
        if isinstance(layer, str):
            if layer == "concat":
                return names
            if layer == "penultimate":
                if len(names) < 2:
                    raise ValueError("layer='penultimate' needs at least one block before the "
                                     "embedding; this encoder has none (hidden=[])")
                return [names[-2]]
            parts = [layer]
        else:
            parts = list(layer)
            if not parts:
                raise ValueError("layer should name at least one layer")
        bad = [p for p in parts if p not in names]
        if bad:
            raise ValueError(f"unknown layer(s) {bad}; use 'embedding', 'penultimate', 'concat' "
                             f"or names from {names}")
        return parts

    def check_layer(self, layer: LayerSpec) -> None:
        """Raises ValueError when ``layer`` does not name a layer of this encoder."""
        self._resolve(layer)

    def layer_dim(self, layer: LayerSpec = "embedding") -> int:
        """Width of ``features(x, layer)``."""
        widths = {name: self._block_width(i) for i, name in enumerate(self.blocks.keys())}
        widths["embedding"] = self.embed_dim
        return sum(widths[p] for p in self._resolve(layer))

    def _block_width(self, i: int) -> int:
        raise NotImplementedError

    def features(self, x: torch.Tensor, layer: LayerSpec = "embedding") -> torch.Tensor:
        """Activations of ``layer`` (see the module docstring) as ``(n, width)``.

        A single layer comes back as is; several (``"concat"`` or a list) are each L2-normalised
        per row, scaled by ``1/sqrt(n_parts)`` and concatenated.
        """
        parts = self._resolve(layer)
        wanted = set(parts)
        last = max(self.layer_names.index(p) for p in parts)
        got: Dict[str, torch.Tensor] = {}
        h = self._prepare(x)
        for i, (name, block) in enumerate(self.blocks.items()):
            if i > last:
                break
            h = block(h)
            if name in wanted:
                got[name] = self._pool(h)
        if "embedding" in wanted:
            got["embedding"] = self.head(self._pool(h))
        return self._combine(parts, got)

    @staticmethod
    def _combine(parts: List[str], got: Dict[str, torch.Tensor]) -> torch.Tensor:
        """One layer as is; several each L2-normalised, scaled by 1/sqrt(n) and concatenated."""
        if len(parts) == 1:
            return got[parts[0]]
        scale = 1.0 / math.sqrt(len(parts))
        return torch.cat([F.normalize(got[p], dim=1) * scale for p in parts], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, "embedding")

    def extra_repr(self) -> str:
        return f"config={self.config}"


class MLPEncoder(_Encoder):
    """Dense encoder: ``hidden`` blocks of Linear → norm → ReLU, then Linear to ``embed_dim``.

    Input ``(n, *in_shape)`` is flattened, so an MLP also takes images.
    """

    def __init__(self, config: Dict[str, Any]) -> None:
        super().__init__()
        self.config = normalize_config({**config, "arch": "mlp"})
        self.in_features = math.prod(self.config["in_shape"])
        self.blocks = nn.ModuleDict()
        width = self.in_features
        for i, h in enumerate(self.config["hidden"]):
            self.blocks[f"hidden{i}"] = nn.Sequential(
                nn.Linear(width, h), _norm1d(self.config["norm"], h), nn.ReLU(inplace=True))
            width = h
        self.head = nn.Linear(width, self.config["embed_dim"])

    def _block_width(self, i: int) -> int:
        return self.config["hidden"][i]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise ValueError(f"encoder input should be a float tensor, got {x.dtype}; scale "
                             "uint8 images to [0, 1] first (x.float() / 255)")
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(f"input of shape {tuple(x.shape)} does not match in_shape="
                             f"{self.config['in_shape']}; expected (n, *in_shape)")
        return x.reshape(x.shape[0], self.in_features)


class CNNEncoder(_Encoder):
    """Convolutional encoder: per entry of ``channels`` a 3×3 conv → norm → ReLU → 2×2 max-pool,
    then global average pooling, optional ``hidden`` Linear → norm → ReLU blocks, and a Linear to
    ``embed_dim``. ``(n, H, W)`` input is taken as one channel, and flat ``(n, C*H*W)`` rows
    are reshaped to ``in_shape``.
    """

    def __init__(self, config: Dict[str, Any]) -> None:
        super().__init__()
        self.config = normalize_config({**config, "arch": "cnn"})
        c_in, _, _ = self.config["in_shape"]
        norm = self.config["norm"]
        self.blocks = nn.ModuleDict()
        self._widths: List[int] = []
        self._n_conv = len(self.config["channels"])
        for i, c in enumerate(self.config["channels"]):
            # ceil_mode keeps odd and tiny maps (8×8 digits after three pools) non-empty.
            self.blocks[f"conv{i}"] = nn.Sequential(
                nn.Conv2d(c_in, c, 3, padding=1, bias=norm == "none"), _norm2d(norm, c),
                nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True))
            self._widths.append(c)
            c_in = c
        width = c_in
        for i, h in enumerate(self.config["hidden"]):
            self.blocks[f"fc{i}"] = _FlattenThen(nn.Sequential(
                nn.Linear(width, h), _norm1d(norm, h), nn.ReLU(inplace=True)))
            self._widths.append(h)
            width = h
        self.head = nn.Linear(width, self.config["embed_dim"])

    def _block_width(self, i: int) -> int:
        return self._widths[i]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise ValueError(f"encoder input should be a float tensor, got {x.dtype}; scale "
                             "uint8 images to [0, 1] first (x.float() / 255)")
        shape = self.config["in_shape"]
        if x.dim() == 3 and shape[0] == 1 and list(x.shape[1:]) == shape[1:]:
            x = x.unsqueeze(1)
        elif x.dim() == 2 and x.shape[1] == math.prod(shape):  # flat rows (n, C*H*W)
            x = x.reshape(x.shape[0], *shape)
        if x.dim() != 4 or list(x.shape[1:]) != shape:
            raise ValueError(f"input of shape {tuple(x.shape)} does not match in_shape={shape}; "
                             "expected (n, C, H, W), (n, H, W) for one channel, or flat rows")
        return x

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(2, 3)) if h.dim() == 4 else h


class _FlattenThen(nn.Module):
    """Global-average-pools a feature map (once, at the first dense block) and applies ``body``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.body(h.mean(dim=(2, 3)) if h.dim() == 4 else h)


class LayerSelect(nn.Module):
    """``forward(x)`` = ``encoder.features(x, layer)``; the state dict is the encoder's own
    (prefixed ``encoder.``)."""

    def __init__(self, encoder: _Encoder, layer: LayerSpec) -> None:
        super().__init__()
        encoder.check_layer(layer)
        self.encoder = encoder
        self.layer = layer if isinstance(layer, str) else list(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x, self.layer)


def with_layer(encoder: nn.Module, layer: LayerSpec | None) -> nn.Module:
    """Returns ``encoder`` itself for ``None`` / ``"embedding"``, else a :class:`LayerSelect`."""
    if layer is None or layer == "embedding":
        return encoder
    if not isinstance(encoder, _Encoder):
        raise ValueError(f"layer={layer!r} needs an embedcluster encoder (MLPEncoder / CNNEncoder), "
                         f"got {type(encoder).__name__}")
    return LayerSelect(encoder, layer)


def model_from_config(config: Dict[str, Any], *, memory_limit: int | None = None) -> nn.Module:
    """Builds an untrained encoder from a config dict (see the module docstring).

    Weights come from torch's global RNG; seed it (``torch.manual_seed``) for reproducible
    initialisation, or load a state dict. The model's size is computed on torch's ``meta``
    device first and checked against ``memory_limit`` (default: the available memory) before
    anything real is allocated; inside ``with torch.device("meta")`` nothing is allocated and
    the check is skipped.

    Raises
    ------
    ValueError
        For an unknown ``arch`` (``"mlp"`` and ``"cnn"`` are known) or a malformed field.
    MemoryError
        When the model would not fit in memory (or ``memory_limit``).
    """
    full = normalize_config(copy.deepcopy(config))
    if torch.get_default_device().type != "meta":
        from ..data._common import _check_allocation

        _check_allocation(config_nbytes(full), f"an {full['arch']!r} encoder with config {full}",
                          memory_limit, "choose smaller layers, free memory, or pass a larger "
                          "memory_limit=")
    return MLPEncoder(full) if full["arch"] == "mlp" else CNNEncoder(full)


__all__ = ["ARCHS", "MLPEncoder", "CNNEncoder", "LayerSelect", "config_nbytes",
           "model_from_config", "normalize_config", "with_layer"]
