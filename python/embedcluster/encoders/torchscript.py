"""TorchScript files as encoders."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

from ..data._common import _check_allocation, _existing
from ._common import _sha, _torch
from .encoder import Encoder


# --------------------------------------------------------------------------- other loaders
def _looks_like_torchscript(path: Path) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except Exception as e:  # BadZipFile, NotImplementedError, UnicodeDecodeError, ...
        raise ValueError(f"{path} is a damaged zip archive (TorchScript and torch.save files are "
                         f"zip archives): {type(e).__name__}: {str(e)[:200]}; get a fresh copy "
                         "of the file") from e
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _load_torchscript(path: Path, **kw: Any) -> Encoder:
    torch = _torch()
    path = _existing(path, "TorchScript file")
    # The archive's tensors are read into memory: the file, its copy and the module's tensors
    # (at most as large as the records the file holds) must fit.
    _check_allocation(3 * os.stat(path).st_size, f"TorchScript file {path}")
    data = path.read_bytes()
    with warnings.catch_warnings():
        # PyTorch deprecates TorchScript in favour of torch.export; the files still load.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated",
                                category=DeprecationWarning)
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except MemoryError:
            raise
        except Exception as e:  # damaged archives raise RuntimeError, IndexError, ...
            raise ValueError(f"{path} could not be loaded as TorchScript ({type(e).__name__}: "
                             f"{str(e)[:300]}); the file is damaged or not TorchScript") from e
    kw.setdefault("name", path.name)
    fp = _sha("torchscript", hashlib.sha256(data).hexdigest())
    return Encoder(module, fingerprint=fp, **kw)
