"""Batches to model inputs: pixel scaling and ImageNet-style image preprocessing."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import numpy as np

from .._interface import advice
from ._common import IMAGENET_MEAN, IMAGENET_STD, _torch


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


def _size_pair(size: Any) -> Optional[tuple]:
    """None, or an image size (an integer or a (height, width) pair) as a checked pair."""
    if size is None:
        return None
    sizes: Optional[List[Any]] = [size, size] if np.isscalar(size) else list(size) \
        if isinstance(size, (list, tuple)) else None
    if sizes is None or len(sizes) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            and 1 <= v <= _MAX_IMAGE_SIDE for v in sizes):
        raise ValueError(f"image size={str(size)[:80]} should be an integer or a "
                         f"(height, width) pair of integers from 1 to {_MAX_IMAGE_SIDE}")
    return tuple(int(v) for v in sizes)


def _side(value: Any, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 1 <= value <= _MAX_IMAGE_SIDE:
        raise ValueError(f"{name}={str(value)[:80]} should be an integer from 1 to "
                         f"{_MAX_IMAGE_SIDE}")
    return int(value)


class ImagePreprocess:
    """Images -> normalised float NCHW tensors for torchvision / timm / Hugging Face vision models.

    Accepts (n, H, W) grey, (n, H, W, C) or (n, C, H, W) batches, uint8 (scaled to [0, 1]) or
    float; grey becomes 3 channels (repeated), an alpha channel is dropped, ``size`` resizes
    (bilinear, antialiased), then ``(x - mean) / std`` per channel.

    Without ``size``, ``min_side`` / ``max_side`` bound each image side instead: a side below
    ``min_side`` is enlarged to it and one above ``max_side`` reduced to it (each side on its
    own), and images within the bounds keep their size. ``invert=True`` maps ``x`` to
    ``1 - x`` (on [0, 1] values) before the normalisation: dark-on-white images (scans,
    product photos on white such as Fashion-MNIST) become light-on-dark or the other way.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 size: Optional[Union[int, Sequence[int]]] = None, *, invert: bool = False,
                 min_side: Optional[int] = None, max_side: Optional[int] = None) -> None:
        # These often come from a model's preprocessor_config.json: checked, since the size
        # decides how large every resized batch is.
        self.mean = _floats(mean, "mean", positive=False)
        self.std = _floats(std, "std", positive=True)
        self.size = _size_pair(size)
        self.invert = bool(invert)
        self.min_side = _side(min_side, "min_side")
        self.max_side = _side(max_side, "max_side")
        if self.min_side and self.max_side and self.min_side > self.max_side:
            raise ValueError(f"min_side={self.min_side} is larger than max_side={self.max_side}")
        extra = "".join(f", {k}={v}" for k, v in (("invert", self.invert),
                                                   ("min_side", self.min_side),
                                                   ("max_side", self.max_side)) if v)
        self.fingerprint = (f"ImagePreprocess(mean={self.mean}, std={self.std}, size={self.size}"
                            f"{extra})")

    def __repr__(self) -> str:
        return self.fingerprint

    def _target_size(self, shape: tuple) -> tuple:
        """(height, width) a batch of ``shape`` (height, width) is resized to."""
        if self.size is not None:
            return self.size
        lo, hi = self.min_side or 1, self.max_side or _MAX_IMAGE_SIDE
        return tuple(min(max(int(side), lo), hi) for side in shape)

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
                             f"{x.shape} " + advice("(reshape flat vectors into images first)",
                                                    "(save the images as an (n, H, W) or (n, H, W, C) array, or "
                                                    "cluster flat vectors without --encoder)"))
        t = torch.from_numpy(np.ascontiguousarray(x))
        if t.shape[1] == 4:
            t = t[:, :3]
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        if self.invert:
            t = 1.0 - t
        size = self._target_size(tuple(t.shape[-2:]))
        if tuple(t.shape[-2:]) != size:
            t = torch.nn.functional.interpolate(t, size=size, mode="bilinear",
                                                align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=t.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=t.dtype).view(1, -1, 1, 1)
        return (t - mean) / std
