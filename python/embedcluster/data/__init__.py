"""Data sources for the transfer-clustering pipeline: arrays, .npy files and shards, image
folders, IDX files (Fashion-MNIST), texts, CSV/JSONL tables and scikit-learn's digits.

Everything is read from local files; nothing is ever downloaded. A missing file raises
:class:`FileNotFoundError` with a message that says how to get it.

Every loader returns a :class:`Dataset`:

* ``kind="images"``: ``X`` of shape ``(n, H, W)`` or ``(n, H, W, C)`` (uint8 or float32),
* ``kind="vectors"``: ``X`` of shape ``(n, d)``,
* ``kind="texts"``: ``X`` is ``None`` and ``texts`` holds the strings,

with optional integer labels ``y`` (int64) and their ``class_names``. Large arrays stay on
disk: ``.npy`` files are memory-mapped and folders of ``.npy`` shards are exposed through
:class:`ShardedArray`, a read-only view that concatenates them lazily.

Files are not trusted. Every loader checks, before opening a path, that it is a regular file
(or a folder where one is expected): a FIFO, socket or device would block or stream forever.
Headers (IDX dims, .npy shape and dtype, image sizes) are checked against the file's size and
against the memory available (or ``memory_limit=``) before anything is allocated from them, and
the data must end where the header says. Damage gives ``ValueError`` naming the file (and the
line or record for texts), a size that cannot fit gives ``MemoryError``, a missing file
``FileNotFoundError``; no ``zlib``, ``struct``, ``csv`` or PIL exception escapes.


The loaders live in one module per source format: :mod:`.arrays` (arrays, tensors, .npy files
and shards), :mod:`.images`, :mod:`.idx`, :mod:`.text` (texts and tables), :mod:`.bundled`
(digits, Fashion-MNIST), with :mod:`.dataset` (the Dataset), :mod:`.sharded` (ShardedArray),
:mod:`.spec` (``load``) and :mod:`._common` (the checks they share).
"""

from __future__ import annotations

from .arrays import load_array, load_npy, load_npy_shards
from .bundled import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, load_digits_dataset, load_fashion_mnist
from .dataset import Dataset, as_feature_matrix
from .idx import load_idx
from .images import IMAGE_EXTENSIONS, load_image_folder
from .sharded import ShardedArray
from .spec import load
from .text import load_table, load_texts

__all__ = [
    "Dataset",
    "ShardedArray",
    "load",
    "load_array",
    "load_npy",
    "load_npy_shards",
    "load_image_folder",
    "load_idx",
    "load_fashion_mnist",
    "load_texts",
    "load_table",
    "load_digits_dataset",
    "as_feature_matrix",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "IMAGE_EXTENSIONS",
]
