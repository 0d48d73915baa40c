"""embedcluster's own checkpoints (config.json + model.safetensors): written atomically, read
with every shape checked."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .. import _io
from ..data._common import _check_allocation, _existing
from ._common import (
    CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CONFIG_NAME, WEIGHTS_NAME, _is_module, _read_config,
    _sha, _torch,
)
from .encoder import Encoder


# --------------------------------------------------------------------------- checkpoints
def _is_checkpoint_dir(directory: Path) -> bool:
    try:
        cfg = _read_config(directory / CONFIG_NAME)
    except (OSError, ValueError, MemoryError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == CHECKPOINT_FORMAT


def save_checkpoint(module: Any, directory: Union[str, os.PathLike], model_config: dict,
                    embedding_layer: Optional[Union[str, Sequence[str]]] = None) -> Path:
    """Writes an embedcluster checkpoint: ``config.json`` + ``model.safetensors``.

    ``config.json`` holds ``{"format": "embedcluster-checkpoint", "version": 1, "model":
    model_config, "embedding_layer": ..., "weights_sha256": ...}``; ``model_config`` must be
    what ``embedcluster.models.model_from_config`` needs to rebuild ``module``;
    ``embedding_layer`` is a submodule name (or a list of them), or a layer name that the
    module's own ``check_layer`` accepts (``"penultimate"``, ``"concat"``, ... in
    embedcluster.models). Both files are written with :func:`embedcluster._io.atomic_directory`,
    so a reader never sees half a checkpoint. An existing checkpoint (or empty directory) at
    ``directory`` is replaced; any other existing directory is refused.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(model_config, dict):
        raise TypeError("model_config must be a dict (JSON-serialisable)")
    if embedding_layer is not None and not _names_submodules(module, embedding_layer):
        check = getattr(module, "check_layer", None)  # embedcluster.models' own layer names
        if check is None:
            raise ValueError(f"embedding_layer={embedding_layer!r} is not a submodule of "
                             f"{type(module).__name__}")
        check(embedding_layer)
    if embedding_layer is not None and not isinstance(embedding_layer, str):
        embedding_layer = list(embedding_layer)
    config = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
              "model": model_config, "embedding_layer": embedding_layer}
    try:
        _io.dumps(config)
    except (TypeError, ValueError) as e:
        raise TypeError(f"model_config must be JSON-serialisable: {e}") from e
    target = Path(os.fspath(directory))
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not _is_checkpoint_dir(target):
        raise FileExistsError(f"{target} exists and is not an embedcluster checkpoint; refusing "
                              "to replace it (choose another directory)")

    def write(folder: Path) -> None:
        weights = folder / WEIGHTS_NAME
        _io.save_safetensors(weights, module.state_dict(),
                             {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION})
        config["weights_sha256"] = _io.sha256_file(weights)
        _io.save_json(folder / CONFIG_NAME, config)

    return _io.atomic_directory(target, write)


# safetensors dtype names and their sizes in bytes.
_ST_DTYPE_SIZES = _io.SAFETENSORS_DTYPE_SIZES


def _torch_dtype_name(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    return {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
            "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
            "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64",
            "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}.get(name, name)


def _safetensors_spec(path: Path) -> dict:
    """name -> (shape, dtype name) from a safetensors header, read without touching the data.

    Checks what an allocation would be computed from: entry types, non-negative integer
    shapes, known dtypes, and data offsets that hold exactly shape x dtype bytes inside the
    file. The file's content is read (and checked again) by _io.load_safetensors later."""
    header = _io.safetensors_header(_existing(path, "safetensors file"))
    return {name: (tuple(info["shape"]), info["dtype"]) for name, info in header.items()
            if name != "__metadata__"}


def _spec_nbytes(spec: dict) -> int:
    return sum(math.prod(shape) * _ST_DTYPE_SIZES.get(dt, 8) for shape, dt in spec.values())


def _state_spec(state: dict) -> dict:
    """name -> (shape, dtype name) of a state dict (real or meta tensors)."""
    return {k: (tuple(v.shape), _torch_dtype_name(v.dtype)) for k, v in state.items()}


def _compare_spec(expected: dict, found: dict, source: Any, model_name: str,
                  dtypes: bool = True) -> None:
    """ValueError naming the first key where the weights in ``source`` differ from the model
    (names, then shapes, then dtypes), with the full list of differences."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ValueError(
            f"the weights in {source} do not fit {model_name}: first differing key {first!r}; "
            f"missing tensors {missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected "
            f"tensors {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} (were they saved "
            "from another architecture or model config?)")
    _check_field(expected, found, 0, source, model_name, "model",
                 "the config and the weights do not belong together")
    if dtypes:
        _check_field(expected, found, 1, source, model_name, "model", "save the checkpoint again from the model")


def _check_field(expected: dict, found: dict, field: int, source: Any, model_name: str, against: str,
                 advice: str) -> None:
    """ValueError naming the first key of ``expected`` whose shape (``field`` 0) or dtype
    (``field`` 1) differs in ``found`` (every key of ``expected`` is in ``found``), with the
    first ten differences; ``against`` names where the expected values come from."""
    bad = [(k, found[k][field], v[field]) for k, v in expected.items() if _spec_value(found[k], field) != v[field]]
    if bad:
        desc = ", ".join(f"{k}: file {a} vs {against} {b}" for k, a, b in bad[:10])
        raise ValueError(f"the weights in {source} have the wrong {('shapes', 'dtypes')[field]} for {model_name} "
                         f"(first differing key {bad[0][0]!r}): {desc}; {advice}")


def _spec_value(entry: tuple, field: int) -> Any:
    """A spec entry's shape as a tuple (a header may hold lists), or its dtype name."""
    return tuple(entry[0]) if field == 0 else entry[1]


def _load_state_strict(module: Any, state: dict, source: Any) -> None:
    """load_state_dict(strict=True) with a message that lists what differs."""
    _compare_spec(_state_spec(module.state_dict()), _state_spec(state), source,
                  type(module).__name__, dtypes=False)
    module.load_state_dict(state, strict=True)


def _has_meta(module: Any) -> bool:
    return any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))


def _checkpoint_config(directory: Path) -> dict:
    """config.json of a checkpoint, every top-level field checked (type and value)."""
    path = directory / CONFIG_NAME
    config = _read_config(path, "checkpoint config")
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an embedcluster checkpoint config "
                         f"(format should be {CHECKPOINT_FORMAT!r})")
    version = config.get("version")
    if version != CHECKPOINT_VERSION or isinstance(version, bool):
        raise ValueError(f"{directory} is checkpoint format version {version!r}; this embedcluster "
                         f"reads version {CHECKPOINT_VERSION} (upgrade embedcluster to read newer "
                         "checkpoints)")
    if not isinstance(config.get("model"), dict):
        raise ValueError(f"{path} has no 'model' config object (field 'model' is "
                         f"{type(config.get('model')).__name__}); save the checkpoint again")
    sha = config.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError(f"{path}: field 'weights_sha256' should be 64 hexadecimal digits, got "
                         f"{str(sha)[:80]!r}; the file is damaged")
    layer = config.get("embedding_layer")
    if layer is not None and not (isinstance(layer, str) or (
            isinstance(layer, list) and 0 < len(layer) <= 64
            and all(isinstance(x, str) for x in layer))):
        raise ValueError(f"{path}: field 'embedding_layer' should be null, a layer name or a list "
                         f"of up to 64 names, got {str(layer)[:80]}")
    return config


def _load_checkpoint(directory: Path, **kw: Any) -> Encoder:
    torch = _torch()
    config = _checkpoint_config(directory)
    weights = directory / WEIGHTS_NAME
    if not os.path.lexists(weights):
        raise FileNotFoundError(f"checkpoint {directory} has no {WEIGHTS_NAME}")
    weights = _existing(weights, "checkpoint weights")
    weights_sha = _io.sha256_file(weights)
    if config.get("weights_sha256") not in (None, weights_sha):
        raise ValueError(f"{weights} does not match the checksum recorded in config.json: the "
                         "file was changed or damaged; save the checkpoint again")
    try:
        # import_module consults sys.modules first (a package attribute would not be).
        models = importlib.import_module("..models", __package__)
        model_from_config = models.model_from_config
    except (ImportError, AttributeError) as e:
        if isinstance(e, ImportError) and e.name not in (None, "embedcluster.models"):
            raise
        raise ImportError("loading an embedcluster checkpoint needs "
                          "embedcluster.models.model_from_config, which this installation "
                          "lacks") from e
    # The model the config describes is built on the meta device (shapes only, no memory) and
    # compared with the weights' header before anything real is allocated.
    try:
        with torch.device("meta"):
            module = model_from_config(config["model"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{directory / CONFIG_NAME}: field 'model' is not a valid model config: "
                         f"{e}") from e
    if not _is_module(module):
        raise TypeError(f"model_from_config returned a {type(module).__name__}, not a "
                        "torch.nn.Module")
    spec = _safetensors_spec(weights)
    _compare_spec(_state_spec(module.state_dict()), spec, weights, type(module).__name__)
    _check_allocation(2 * _spec_nbytes(spec), f"checkpoint {directory}",
                      hint="free memory, or check that the checkpoint is the one you meant")
    state, _ = _io.load_safetensors(weights, framework="pt")
    _compare_spec(_state_spec(module.state_dict()), _state_spec(state), weights,
                  type(module).__name__)
    module.load_state_dict(state, strict=True, assign=True)
    if _has_meta(module):  # a tensor outside the state dict: build it for real (size checked)
        module = model_from_config(config["model"])
        _load_state_strict(module, state, weights)
    layer = kw.pop("embedding_layer", config.get("embedding_layer"))
    fp = _sha("checkpoint", _io.sha256_file(directory / CONFIG_NAME), weights_sha)
    if layer is not None and not _names_submodules(module, layer):
        # Checkpoint layers are named the way embedcluster.models names them ("penultimate",
        # "concat", "hidden0", ...): let it wrap the module so forward returns that layer.
        with_layer = getattr(models, "with_layer", None)
        if with_layer is None:
            raise ValueError(f"embedding_layer={layer!r} of {directory} is not a submodule of "
                             f"{type(module).__name__}")
        module = with_layer(module, layer)
        fp = _sha(fp, "layer", json.dumps(layer))
        layer = None
    kw.setdefault("name", directory.name)
    return Encoder(module, fingerprint=fp, embedding_layer=layer, **kw)


def _names_submodules(module: Any, layer: Union[str, Sequence[str]]) -> bool:
    names = dict(module.named_modules())
    return all(n in names and n for n in ([layer] if isinstance(layer, str) else layer))
