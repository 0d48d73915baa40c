"""Folders of image files (one sub-folder per class, or flat), decoded with Pillow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .._interface import advice
from ._common import PathLike, _check_allocation, _existing
from .dataset import Dataset

logger = logging.getLogger(__name__)


#: File name extensions (lower case) that :func:`load_image_folder` reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _is_image(p: Path) -> bool:
    # Not is_file(): a FIFO named .png must be refused when it is read, not skipped silently.
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and not p.is_dir()


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if _is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size={size!r} should be an int or a (height, width) pair") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size={size!r} should be positive")
    return h, w


# Pillow modes that hold no colour: a folder of only these loads as one channel by default.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})


def _is_grey(im: Any) -> bool:
    """True when the image holds no colour (a palette image counts when every entry is grey)."""
    if im.mode in _GREY_MODES:
        return True
    if im.mode in ("P", "PA"):
        palette = im.getpalette() or []
        rgb = [palette[i:i + 3] for i in range(0, len(palette) - 2, 3)]
        return bool(rgb) and all(r == g == b for r, g, b in rgb)
    return False


# Modes with more than 8 bits per sample, and the value that maps to 1.0 (PNG stores 16-bit
# grey; Pillow opens it as I;16 / I;16B, or I). 8-bit modes map 255 to 1.0.
_HIGH_BIT_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
                   "I": 65535.0, "F": 1.0}


def _open_image(f: Path) -> Any:
    from PIL import Image

    return Image.open(f)


def _decode_image(im: Any, f: Path, target: tuple[int, int], grayscale: bool,
                  as_float: bool) -> np.ndarray:
    """One image as (H, W, C): uint8, or float32 in [0, 1] when ``as_float``.

    16-bit grey (I;16, I;16B, I) is scaled by 65535, so it lands in the same [0, 1] range as
    8-bit images instead of saturating at 255; palette and alpha modes are composed to RGB
    (alpha dropped), and any other mode is converted by Pillow.
    """
    from PIL import Image

    resample = getattr(Image, "Resampling", Image).BILINEAR
    size = (target[1], target[0])
    channels = 1 if grayscale else 3
    if im.mode in _HIGH_BIT_MODES:
        top = _HIGH_BIT_MODES[im.mode]
        g = im.convert("F")
        if g.size != size:
            g = g.resize(size, resample)
        a = np.asarray(g, dtype=np.float32) / np.float32(top)
        np.clip(a, 0.0, 1.0, out=a)
        a = a.reshape(target[0], target[1], 1)
        if channels == 3:
            a = np.repeat(a, 3, axis=2)
        if not as_float:  # pragma: no cover - callers pass as_float for high-bit images
            raise AssertionError("high-bit image without as_float")
        return a
    mode = "L" if grayscale else "RGB"
    if im.mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
    im = im.convert(mode)
    if im.size != size:
        im = im.resize(size, resample)
    a = np.asarray(im, dtype=np.uint8).reshape(target[0], target[1], channels)
    return a.astype(np.float32) / np.float32(255.0) if as_float else a


def _scan_headers(files: list[Path], target: tuple[int, int] | None) -> tuple:
    """(target size, any 16-bit image, every image grey, bytes of the largest decoded image) from
    the image headers alone: a size mismatch, a damaged file or a size that cannot fit in memory
    is reported before anything is decoded."""
    sizes: dict = {}
    high_bit = False
    all_grey = True
    largest = 0
    for f in files:
        _existing(f, "image")  # a FIFO named .png would block Image.open
        try:
            with _open_image(f) as im:
                sizes.setdefault(im.size, f)
                high_bit |= im.mode in _HIGH_BIT_MODES
                all_grey = all_grey and _is_grey(im)
                largest = max(largest, im.size[0] * im.size[1] * 4 * max(1, len(im.getbands())))
        except Exception as e:  # PIL raises many types for broken files
            raise ValueError(f"cannot read image {f}: {e}; the file is damaged or not an "
                             "image (remove or replace it)") from e
        if target is None and len(sizes) > 1:
            (w0, h0), f0 = next(iter(sizes.items()))
            (w1, h1), f1 = list(sizes.items())[1]
            raise ValueError(f"images differ in size ({f0.name} is {h0}x{w0}, {f1.name} is "
                             f"{h1}x{w1} height x width); "
                             + advice("pass size= (an int or (height, width)) to resize them all",
                                      "pass --image-size (a side such as 64, or HEIGHTxWIDTH) to resize "
                                      "them all"))
    if target is None:
        (w, h), _ = next(iter(sizes.items()))
        target = (h, w)
    return target, high_bit, all_grey, largest


def load_image_folder(path: PathLike, size: int | tuple[int, int] | None = None,
                      grayscale: bool | None = None, *, memory_limit: int | None = None) -> Dataset:
    """Load a folder of images with PIL.

    Two layouts are understood: one sub-folder per class (``root/cat/001.png``; labels follow
    the sorted sub-folder names, searched recursively inside each class folder), or a flat
    folder of images (``y=None``). Files with the extensions in :data:`IMAGE_EXTENSIONS`
    are read in sorted order; other files are ignored.

    Parameters
    ----------
    path : str or Path
        The folder.
    size : int or (height, width), optional
        Resize every image to this size (bilinear). Required when the images differ in size.
    grayscale : bool or None, default None
        None: one channel when every image is grey (modes 1, L, LA, I;16, I, F, or a palette of
        greys), returned as ``(n, H, W)`` like Fashion-MNIST's IDX files, so that raw features
        have ``H * W`` columns; RGB ``(n, H, W, 3)`` as soon as one image has colour. True:
        convert every image to one channel, ``(n, H, W, 1)``. False: RGB. Encoders that want
        three channels (EfficientNet-Lite, torchvision, timm) repeat a grey channel themselves.
    memory_limit : int, optional
        Most bytes the image array (and one decoded image) may take; default the memory the
        system reports as available. Checked from the image headers before decoding.

    Returns
    -------
    Dataset
        ``kind="images"``, ``ids`` the image paths relative to the folder, ``X`` of shape
        ``(n, H, W, C)`` (``(n, H, W)`` for an all-grey folder with ``grayscale=None``): uint8
        when every image has 8 bits per sample; float32 in [0, 1] when any image has 16 bits (PNG ``I;16``), with 8-bit
        images divided by 255 and 16-bit ones by 65535, so both share one scale.

    Raises
    ------
    ValueError
        For an unreadable image (the message names the file), or for images of different
        sizes when ``size`` is not given.
    MemoryError
        When the images would not fit in memory (or ``memory_limit``).
    """
    root = _existing(path, "image folder", folder=True)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder of images")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [(d.name, _image_files(d, recursive=True)) for d in subdirs]
    per_class = [(name, files) for name, files in per_class if files]
    top = _image_files(root, recursive=False)
    if per_class and top:
        raise ValueError(f"{root} holds images both directly ({top[0].name}, ...) and in "
                         f"sub-folders ({per_class[0][0]}/, ...); use one sub-folder per class "
                         "or a flat folder")
    if per_class:
        class_names = [name for name, _ in per_class]
        files = [f for _, fs in per_class for f in fs]
        y = np.concatenate([np.full(len(fs), i, dtype=np.int64)
                            for i, (_, fs) in enumerate(per_class)])
    elif top:
        class_names, files, y = None, top, None
    else:
        raise FileNotFoundError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) "
                                f"found in {root} or its sub-folders")

    target, high_bit, all_grey, largest = _scan_headers(files, _hw(size) if size is not None else None)
    squeeze = grayscale is None and all_grey
    grey = bool(grayscale) or squeeze
    channels = 1 if grey else 3
    dtype = np.dtype(np.float32 if high_bit else np.uint8)
    need = len(files) * target[0] * target[1] * channels * dtype.itemsize
    _check_allocation(need + largest, f"{len(files)} images of {target[0]}x{target[1]}x"
                      f"{channels} ({dtype}) in {root}", memory_limit,
                      advice("pass a smaller size=, load fewer images, or pass a larger memory_limit=",
                             "pass a smaller --image-size, or load fewer images"))
    X = np.empty((len(files), target[0], target[1], channels), dtype=dtype)
    for i, f in enumerate(files):
        _existing(f, "image")
        try:
            with _open_image(f) as im:
                im.load()
                X[i] = _decode_image(im, f, target, grey, high_bit)
        except MemoryError:
            raise
        except Exception as e:
            raise ValueError(f"cannot read image {f}: {e}; the file is damaged or not an "
                             "image (remove or replace it)") from e
    if squeeze:
        X = X[..., 0]
    logger.info("loaded %d images %s %s from %s%s", len(files), X.shape[1:], X.dtype, root,
                f" in {len(class_names)} classes" if class_names else "")
    return Dataset(X=X, y=y, kind="images", class_names=class_names, source=str(root),
                   ids=[f.relative_to(root).as_posix() for f in files])
