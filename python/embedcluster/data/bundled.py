"""The data sets found on this machine: scikit-learn's digits and Debian's Fashion-MNIST."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._interface import advice
from ._common import PathLike
from .dataset import Dataset
from .idx import load_idx


#: Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


#: The ten Fashion-MNIST classes, in label order 0..9.
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_fashion_mnist(split: str = "test", root: PathLike | None = None, *,
                       memory_limit: int | None = None) -> Dataset:
    """Load Fashion-MNIST (28x28 uint8 grey images, 10 clothing classes) from IDX files.

    Parameters
    ----------
    split : {"test", "train"}, default "test"
        10,000 test images or 60,000 training images.
    root : str or Path, optional
        Folder with ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (uncompressed copies
        without ``.gz`` also work). Defaults to :data:`FASHION_MNIST_ROOT`, where Debian's
        ``dataset-fashion-mnist`` package installs them.
    memory_limit : int, optional
        Passed to :func:`load_idx`.

    Returns
    -------
    Dataset
        ``X`` uint8 ``(n, 28, 28)``, ``y`` in 0..9, ``class_names`` = :data:`FASHION_MNIST_CLASSES`.
    """
    if split not in _FASHION_FILES:
        raise ValueError(advice(f"split={split!r} should be 'test' or 'train'",
                                f"fashion-mnist:{split} names no split; use fashion-mnist:test or fashion-mnist:train"))
    folder = Path(root if root is not None else FASHION_MNIST_ROOT).expanduser()
    paths = []
    for stem in _FASHION_FILES[split]:
        # exists(), not is_file(): a FIFO or folder in its place is reported as such below.
        found = next((folder / (stem + ext) for ext in (".gz", "")
                      if os.path.lexists(folder / (stem + ext))), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}.gz not found in {folder}; install it with "
                "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or "
                + advice("pass root= a folder with the four IDX files (train-images-idx3-ubyte.gz, "
                         "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
                         "pass the images' IDX file as DATA (e.g. t10k-images-idx3-ubyte.gz, with "
                         "t10k-labels-idx1-ubyte.gz beside it)"))
        paths.append(found)
    ds = load_idx(paths[0], paths[1], class_names=FASHION_MNIST_CLASSES,
                  memory_limit=memory_limit)
    ds.source = f"Fashion-MNIST {split} ({folder})"
    return ds


def load_digits_dataset() -> Dataset:
    """scikit-learn's 1,797 handwritten digits as 8x8 uint8 images, labelled.

    scikit-learn stores 17 grey levels (0..16); they are scaled to 0..255 (rounded), the range of
    every other image loader here and the one image encoders read, so that an encoder given
    ``load("digits")`` sees the strokes as ink rather than saturated.

    Returns
    -------
    Dataset
        ``X`` uint8 ``(1797, 8, 8)``, ``y`` in 0..9, ``class_names`` "0".."9".
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return Dataset(X=images, y=d.target.astype(np.int64), kind="images",
                   class_names=[str(i) for i in range(10)],
                   source="scikit-learn load_digits (1797 8x8 images)")
