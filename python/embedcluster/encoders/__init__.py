"""Pretrained-encoder adapters: images, vectors or texts -> float32 embeddings, cached on disk.

Modules: :mod:`.encoder` (the Encoder: batching, progress, layers), :mod:`.cache` (the
embedding cache), :mod:`.fingerprint` (identities of encoders and data), :mod:`.preprocess`,
and one loader per kind of model: :mod:`.checkpoint` (embedcluster's own), :mod:`.torchscript`,
:mod:`.huggingface` (Hugging Face, sentence-transformers), :mod:`.vision` (torchvision, timm),
with :mod:`.loader` (``load_encoder``) choosing among them.
"""

from __future__ import annotations

from ._common import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, best_device, resolve_device
from .checkpoint import save_checkpoint
from .encoder import Encoder
from .fingerprint import data_fingerprint
from .huggingface import _minilm_dir  # noqa: F401 - the MiniLM tests find the package with it
from .loader import load_encoder
from .preprocess import ImagePreprocess

__all__ = [
    "Encoder",
    "ImagePreprocess",
    "load_encoder",
    "save_checkpoint",
    "data_fingerprint",
    "best_device",
    "resolve_device",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
]
