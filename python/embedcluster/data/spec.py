"""load(): the one entry point that turns a spec (array, list of texts, name or path) into a
Dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._interface import advice
from .arrays import _encode_labels, load_array, load_npy, load_npy_shards
from .bundled import load_digits_dataset, load_fashion_mnist
from .dataset import Dataset
from .idx import _looks_idx, load_idx
from .images import IMAGE_EXTENSIONS, _image_files, load_image_folder
from .sharded import ShardedArray
from .text import load_table, load_texts


_PYTHON_SPECS = "a numpy array or CPU torch tensor; a list of strings; "
_FILE_SPECS = (
    "'digits'; 'fashion-mnist', 'fashion-mnist:train' or 'fashion-mnist:test'; "
    "a folder of .npy shards; a folder of images (one sub-folder per class, or flat); "
    "a .npy file; an IDX file (.idx, .gz, *-ubyte); a .txt file (one text per line); "
    "a .csv, .tsv, .jsonl or .json table"
)


def _accepted() -> str:
    """What load() accepts, as the user can pass it (on the command line only names and paths)."""
    return advice(_PYTHON_SPECS + _FILE_SPECS, _FILE_SPECS)


def load(spec: Any, **kw: Any) -> Dataset:
    """Load a dataset from whatever ``spec`` is.

    Accepted specs:

    * a :class:`Dataset` (returned as is), a numpy array or CPU torch tensor
      (:func:`load_array`), a list of strings (texts);
    * ``"digits"`` (:func:`load_digits_dataset`);
    * ``"fashion-mnist"``, ``"fashion-mnist:train"``, ``"fashion-mnist:test"``
      (:func:`load_fashion_mnist`, test split by default);
    * a folder holding ``.npy`` files (:func:`load_npy_shards`) or images
      (:func:`load_image_folder`);
    * a file: ``.npy`` (:func:`load_npy`), ``.idx`` / ``.gz`` / ``*-ubyte``
      (:func:`load_idx`), ``.txt`` (:func:`load_texts`), ``.csv`` / ``.tsv`` / ``.jsonl`` /
      ``.json`` (:func:`load_table`).

    Parameters
    ----------
    spec : object
        What to load.
    **kw
        Passed on to the chosen loader.

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        When ``spec`` names a path that does not exist.
    ValueError
        When ``spec`` is none of the accepted kinds.
    """
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, str) for s in spec):
        y, names = _encode_labels(kw.pop("y", None), len(spec))
        if kw:
            raise TypeError(f"unexpected arguments {sorted(kw)} for a list of texts (only y=)")
        return Dataset(X=None, y=y, kind="texts", texts=list(spec), class_names=names,
                       source=f"list of {len(spec)} texts")
    if isinstance(spec, (np.ndarray, ShardedArray)) or \
            type(spec).__module__.split(".")[0] == "torch":
        return load_array(spec, **kw)
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"cannot load a {type(spec).__name__}; accepted: {_accepted()}")
    name = os.fspath(spec)
    key = name.strip().lower().replace("_", "-")
    if key == "digits":
        return load_digits_dataset(**kw)
    if key in ("fashion-mnist", "fashionmnist") or key.startswith(("fashion-mnist:",
                                                                   "fashionmnist:")):
        split = key.split(":", 1)[1] if ":" in key else kw.pop("split", "test")
        return load_fashion_mnist(split=split, **kw)
    p = Path(name).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (accepted: {_accepted()})")
    if p.is_dir():
        if any(f.suffix.lower() == ".npy" and f.is_file() for f in p.iterdir()):
            return load_npy_shards(p, **kw)
        if _image_files(p, recursive=True):
            return load_image_folder(p, **kw)
        raise ValueError(f"folder {p} holds neither .npy shards nor images "
                         f"({', '.join(IMAGE_EXTENSIONS)}); accepted: {_accepted()}")
    ext = p.suffix.lower()
    if ext == ".npy":
        return load_npy(p, **kw)
    if ext == ".txt":
        return load_texts(p, **kw)
    if ext in (".csv", ".tsv", ".jsonl", ".json"):
        return load_table(p, **kw)
    if _looks_idx(p):
        return load_idx(p, **kw)
    raise ValueError(f"don't know how to load {p} (extension {ext or 'none'!r}); accepted: "
                     f"{_accepted()}")
