"""Safe files for the whole package: atomic writes, safetensors and JSON that never pickle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import struct
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "save_safetensors",
    "load_safetensors",
    "save_json",
    "load_json",
    "sha256_file",
]

# The user's metadata travels as one JSON string under this key of the safetensors header, so
# nested values and non-string types survive the str -> str map the format allows.
METADATA_KEY = "embedcluster"
# A real header is a few KiB per thousand tensors; anything near this is a damaged length field.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- atomic writes
def _fsync_dir(directory: Path) -> None:
    """Makes a rename durable; silently skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp_file(target: Path) -> Path:
    """Creates an empty, exclusive temp file beside ``target``; mode 0o666 minus the umask, like
    an ordinary ``open(path, "w")`` (mkstemp's 0o600 would leak onto the final file)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise FileNotFoundError(
                f"cannot write {target}: directory {target.parent} does not exist; create it first"
            ) from None
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a unique temporary file beside {target}")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path in the directory of ``path``; write the file there.

    When the ``with`` block ends normally the temp file is flushed to disk (fsync), renamed over
    ``path`` with :func:`os.replace` (atomic on POSIX and Windows) and the directory is fsynced,
    so readers see either the old file or the complete new one, even after a crash. If the block
    raises, ``path`` is left untouched and the temp file is removed.

    Examples
    --------
    >>> with atomic_path("table.csv") as tmp:          # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    target = Path(os.fspath(path))
    if target.is_dir():
        raise IsADirectoryError(f"cannot write a file at {target}: it is a directory")
    tmp = _new_temp_file(target)
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp} for {target}")
        # Writers that replace the file themselves (safetensors does) leave mkstemp's 0o600.
        if tmp.stat().st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: PathLike, data: Union[bytes, bytearray, memoryview]) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- JSON
def _json_default(obj: Any) -> Any:
    """numpy scalars / arrays and paths are common in results; turn them into plain JSON."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable: {obj!r:.80}")


def _dumps(obj: Any, *, allow_nan: bool, indent: Union[int, None]) -> str:
    try:
        return json.dumps(obj, indent=indent, sort_keys=True, allow_nan=allow_nan,
                          default=_json_default, ensure_ascii=False)
    except ValueError as e:
        if "Out of range float" in str(e):
            raise ValueError(
                "the object holds NaN or infinity, which strict JSON cannot represent; replace "
                "them with None, or pass allow_nan=True to write non-standard JSON"
            ) from e
        raise


def save_json(path: PathLike, obj: Any, *, allow_nan: bool = False, indent: int = 2) -> None:
    """Writes ``obj`` as UTF-8 JSON (sorted keys, trailing newline) atomically.

    numpy scalars and arrays and paths are converted; NaN / infinity raise ValueError unless
    ``allow_nan=True`` (strict JSON has no such values and browsers refuse them).
    """
    text = _dumps(obj, allow_nan=allow_nan, indent=indent) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def load_json(path: PathLike) -> Any:
    """Reads a JSON file; ValueError names the file and the position when it is damaged."""
    p = Path(os.fspath(path))
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not a UTF-8 JSON file (byte {e.start} cannot be decoded)") from e
    if not text.strip():
        raise ValueError(f"{p} is empty; expected JSON (the file may have been truncated)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; "
            "the file may be truncated or corrupt"
        ) from e


# --------------------------------------------------------------------------- safetensors
def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # no torch imported means no tensor can exist
    return torch is not None and isinstance(x, torch.Tensor)


def _torch_tensors_for_save(tensors: Mapping[str, Any]) -> dict:
    """CPU, contiguous, detached tensors; clones a tensor whose storage was already seen,
    because safetensors refuses shared memory (tied weights)."""
    import torch

    out, seen = {}, set()
    for name, value in tensors.items():
        t = value.detach() if _is_torch_tensor(value) else torch.from_numpy(np.ascontiguousarray(value))
        t = t.to("cpu").contiguous()
        if t.numel():
            storage = t.untyped_storage().data_ptr()
            if storage in seen:
                t = t.clone()
            else:
                seen.add(storage)
        out[name] = t
    return out


def save_safetensors(path: PathLike, tensors: Mapping[str, Any],
                     metadata: Union[Mapping[str, Any], None] = None) -> None:
    """Writes ``tensors`` (numpy arrays and/or torch tensors) to a safetensors file atomically.

    ``metadata`` is any JSON-serialisable mapping; it is stored as one JSON string under the
    key ``"embedcluster"`` of the safetensors header and comes back from
    :func:`load_safetensors` as the same dict. Arrays are written in their own dtype;
    non-contiguous or GPU tensors are copied to contiguous CPU memory first.
    """
    if not isinstance(tensors, Mapping) or not tensors:
        raise ValueError("tensors must be a non-empty dict of name -> array")
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if not (isinstance(value, np.ndarray) or _is_torch_tensor(value)):
            raise TypeError(f"tensor {name!r} is a {type(value).__name__}; expected a numpy "
                            "array or a torch tensor")
    header = {METADATA_KEY: _dumps(dict(metadata or {}), allow_nan=False, indent=None)}
    with atomic_path(path) as tmp:
        if any(_is_torch_tensor(v) for v in tensors.values()):
            from safetensors.torch import save_file

            save_file(_torch_tensors_for_save(tensors), os.fspath(tmp), metadata=header)
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.fspath(tmp),
                      metadata=header)


def _read_header(p: Path) -> dict:
    """Parses and checks a safetensors header so that damage gives a message, not a panic."""
    size = p.stat().st_size
    what = f"{p} is not a valid safetensors file"
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{what}: it holds only {size} bytes (truncated or empty)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER_BYTES or n > size - 8:
            raise ValueError(f"{what}: header length field says {n} bytes but the file holds "
                             f"{size} bytes (truncated, or not a safetensors file)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: its header is not valid JSON ({e}); the file is corrupt") from e
    if not isinstance(header, dict):
        raise ValueError(f"{what}: its header is not a JSON object")
    data_len = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = (int(v) for v in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            str(info["dtype"])
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{what}: entry {name!r} of its header is malformed") from e
        if not 0 <= lo <= hi or any(s < 0 for s in shape):
            raise ValueError(f"{what}: entry {name!r} has impossible offsets or shape")
        end = max(end, hi)
    if end > data_len:
        raise ValueError(f"{p} is truncated: its header describes {end} bytes of tensor data but "
                         f"only {data_len} follow; write the file again")
    if end < data_len:
        raise ValueError(f"{what}: {data_len - end} unexpected bytes follow the tensor data "
                         "(the file was appended to or is corrupt)")
    return header


def load_safetensors(path: PathLike, *, framework: str = "numpy",
                     device: str = "cpu") -> tuple[dict, dict]:
    """Reads a safetensors file; returns ``(tensors, metadata)``.

    Parameters
    ----------
    path : file written by :func:`save_safetensors` or any other safetensors writer.
    framework : ``"numpy"`` (default) gives numpy arrays, ``"pt"`` gives torch tensors (needed
        for dtypes numpy lacks, such as bfloat16).
    device : torch device for ``framework="pt"``.

    Returns
    -------
    tensors : dict name -> array
    metadata : the dict given to :func:`save_safetensors`; for files from other writers, the raw
        string -> string metadata of the header (empty if none).

    Raises
    ------
    FileNotFoundError if the file is missing; ValueError if it is truncated, corrupt or not a
    safetensors file.
    """
    if framework not in ("numpy", "np", "pt", "torch"):
        raise ValueError(f"framework={framework!r} should be 'numpy' or 'pt'")
    fw = "numpy" if framework in ("numpy", "np") else "pt"
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"no safetensors file at {p}")
    header = _read_header(p)
    raw_meta = header.get("__metadata__") or {}
    if not isinstance(raw_meta, dict):
        raise ValueError(f"{p} is not a valid safetensors file: __metadata__ is not an object")
    if METADATA_KEY in raw_meta:
        try:
            metadata = json.loads(raw_meta[METADATA_KEY])
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: the embedcluster metadata in its header is not valid JSON; "
                             "the file is corrupt") from e
    else:
        metadata = dict(raw_meta)

    from safetensors import safe_open

    tensors: dict = {}
    try:
        kwargs = {"device": device} if fw == "pt" else {}
        with safe_open(os.fspath(p), framework=fw, **kwargs) as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    except Exception as e:  # SafetensorError is not a ValueError subclass; name the file
        if fw == "numpy" and ("bf16" in str(e).lower() or "bfloat16" in str(e).lower()):
            raise ValueError(f"{p} holds bfloat16 tensors, which numpy cannot represent; "
                             "load it with framework='pt'") from e
        raise ValueError(f"{p} could not be read as safetensors: {e}") from e
    return tensors, metadata
