"""Safe files for the whole package: atomic writes, safetensors and JSON that never pickle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "UnsafePathError",
    "check_output_path",
    "check_input_file",
    "read_bytes_bounded",
    "safetensors_header",
    "sha256_array",
    "sha256_texts",
    "hash_array_into",
    "to_numpy",
    "atomic_directory",
    "dumps",
    "save_snapshot",
    "read_snapshot",
    "read_snapshot_with",
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
# JSON files here are configs and small results; a larger one is damaged or not ours.
_MAX_JSON_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------- path checks
class UnsafePathError(ValueError):
    """An output path that embedcluster refuses to replace, or an input that is not a file."""


def _kind_of_mode(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output_path(path: PathLike) -> Path:
    """Checks that ``path`` may receive a new file: absent, or an existing regular file.

    A directory, a symbolic link, a device node, a FIFO or a socket is never replaced (an atomic
    rename would swap the entry itself, e.g. turn ``/dev/null`` into a regular file): raises
    :class:`UnsafePathError` naming what is there.
    """
    p = Path(os.fspath(path))
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"refusing to write {p}: it is {_kind_of_mode(st.st_mode)}, not a "
                              "regular file; give a path that is a regular file or does not exist")
    return p


def check_input_file(path: PathLike, what: str = "input") -> Path:
    """Checks that ``path`` is an existing regular file (symbolic links to one are followed).

    Reading a FIFO blocks forever and reading a device never ends, so anything else is refused
    before it is opened: FileNotFoundError when absent, :class:`UnsafePathError` otherwise.
    """
    p = Path(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {p} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{what} {p} is {_kind_of_mode(st.st_mode)}, not a regular file")
    return p


def read_bytes_bounded(path: PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file, refused (ValueError) when it holds more than ``max_bytes``."""
    p = check_input_file(path, what)
    with open(p, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{what} {p} is larger than {max_bytes} bytes; it is damaged or not "
                         f"the kind of file expected here")
    return data


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
    target = check_output_path(path)
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
        check_output_path(target)  # nothing else appeared there while writing
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def _filled_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Creates the new folder ``path``, lets ``write`` fill it and fsyncs it; on any failure
    the folder and whatever was written into it are removed."""
    import shutil

    path.mkdir()
    try:
        write(path)
        _fsync_dir(path)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE).

    False where the platform, C library or file system cannot (the caller falls back)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def atomic_directory(target: PathLike, write: Callable[[Path], None]) -> Path:
    """Replaces the directory ``target`` by one that ``write(folder)`` fills, atomically.

    The files are written into a temporary folder beside ``target``, which then takes its place.
    On Linux the two are exchanged in one step (renameat2 with RENAME_EXCHANGE), so ``target``
    always names a whole directory, old or new. Where that is not available the swap takes two
    renames: between them (or after a crash there) ``target`` is absent and the old one lies
    beside it as ``.NAME.*.old``; if the second rename fails the old directory is put back.
    Pipelines use :func:`save_snapshot`. The caller decides whether an existing ``target`` may
    be replaced (this function replaces it).
    """
    import shutil

    target = Path(os.fspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    _filled_dir(tmp, write)
    try:
        if target.exists() and _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        elif target.exists():
            old = target.with_name(f".{target.name}.{secrets.token_hex(6)}.old")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_write_bytes(path: PathLike, data: Union[bytes, bytearray, memoryview]) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(check_input_file(path, "file"), "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# Arrays are hashed in row blocks of about this many bytes, so a memory map larger than RAM is
# never loaded at once.
HASH_CHUNK_BYTES = 64 << 20


def hash_array_into(h: Any, X: Any, chunk_bytes: int = HASH_CHUNK_BYTES) -> None:
    """Feeds ``X``'s shape, little-endian dtype and C-order bytes to the hash object ``h``.

    ``X`` may be a numpy array, a memory map or a lazy array-like with ``shape``, ``dtype`` and
    row slicing (sharded stores); rows are read in blocks of about ``chunk_bytes``. Equal values
    give equal bytes whatever the memory layout, byte order or block size.
    """
    shape = tuple(int(s) for s in X.shape)
    dtype = np.dtype(X.dtype)
    if dtype.hasobject:
        raise TypeError("cannot fingerprint an object array; convert it to a numeric dtype")
    le = dtype.newbyteorder("<") if dtype.byteorder in "<>=" else dtype
    h.update(f"array|{shape}|{le.str}|".encode())
    if not shape:
        h.update(np.ascontiguousarray(X, dtype=le).reshape(-1).view(np.uint8))
        return
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
    step = max(1, int(chunk_bytes) // row_bytes)
    for a in range(0, shape[0], step):
        chunk = np.ascontiguousarray(X[a:a + step])
        if chunk.dtype != le:
            chunk = chunk.astype(le)
        if chunk.size:
            h.update(chunk.reshape(-1).view(np.uint8))


def sha256_array(X: Any, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """Hex SHA-256 of an array's shape, dtype and bytes (see :func:`hash_array_into`): the one
    content hash of arrays (embedding-cache keys, Dataset fingerprints, pipeline checksums)."""
    h = hashlib.sha256()
    hash_array_into(h, X, chunk_bytes)
    return h.hexdigest()


def sha256_texts(texts: Any) -> str:
    """Hex SHA-256 of a sequence of strings, each prefixed with its UTF-8 length, so that
    ``["a b", "c"]`` and ``["a", "b c"]`` differ."""
    h = hashlib.sha256(f"texts|{len(texts)}|".encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- torch -> numpy
def to_numpy(x: Any) -> Any:
    """A torch tensor as a numpy array on the host; anything else is returned as it is.

    Tensors are detached and copied from their device (a GPU encoder's output, labels kept on a
    GPU); bfloat16, which numpy has no type for, becomes float32. Tensors are recognised by
    their module, so torch is never imported here.
    """
    if not (type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")):
        return x
    t = x.detach()
    if str(getattr(t, "dtype", "")) == "torch.bfloat16":
        t = t.float()
    return t.cpu().numpy()


# --------------------------------------------------------------------------- snapshot directories
# A saved directory (a pipeline) is a marker, a pointer and immutable snapshots:
#   root/.embedcluster      {"format": FMT}: says embedcluster owns root (checked before a save)
#   root/CURRENT            {"format", "snapshot", "previous", "files": {relpath: sha256}, "sha256"}
#   root/v-<time>-<token>/  the files of one save, never modified after the pointer names them
# A save writes a new snapshot, then replaces CURRENT with one rename: readers see the old or
# the new snapshot whole, and a crash at any point leaves the previous one loadable. The
# snapshot before the current one is kept for readers still reading it; older ones and the
# leftovers of interrupted saves are removed by the next save.
MARKER_NAME = ".embedcluster"
POINTER_NAME = "CURRENT"
_SNAPSHOT_RE = re.compile(r"^v-[0-9]{8}T[0-9]{6}-[0-9a-f]{12}$")
_POINTER_TMP_RE = re.compile(r"^\.CURRENT\.[0-9a-f]{12}\.tmp$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _what(fmt: str) -> str:
    return fmt.replace("-", " ")  # "embedcluster-pipeline" -> "embedcluster pipeline"


def _has_marker(root: Path, fmt: str) -> bool:
    marker = root / MARKER_NAME
    try:
        if not stat.S_ISREG(os.lstat(marker).st_mode):
            return False
        m = load_json(marker, max_bytes=4096)
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == fmt


def _prepare_root(root: Path, fmt: str) -> None:
    """Creates ``root`` (or adopts an empty directory) with a marker, or checks an existing
    marker; anything else is refused, so a save never replaces what embedcluster did not write."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"refusing to save to {root}: it is {_kind_of_mode(st.st_mode)}; "
                              f"give a new path or a directory written by embedcluster")
    if _has_marker(root, fmt):
        return
    if any(os.scandir(root)):
        raise UnsafePathError(
            f"refusing to save to {root}: the directory exists and is not an {_what(fmt)} written by "
            f"this version of embedcluster (no {MARKER_NAME} marker); nothing in it was touched. "
            "Give a new path or an empty directory")
    save_json(root / MARKER_NAME, {"format": fmt})


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX); concurrent saves to one root take turns."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; saves are still atomic for readers
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _check_relpath(rel: Any, where: str) -> str:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel \
            or any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"{where}: {rel!r} is not a plain relative path inside the directory")
    return rel


def _walk_files(snap: Path) -> Dict[str, Path]:
    """Every file below ``snap`` by relative path; refuses symbolic links and special files, so
    nothing read from a snapshot can lie outside it."""
    out: Dict[str, Path] = {}
    stack = [(snap, "")]
    while stack:
        d, prefix = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                rel = prefix + e.name
                mode = os.lstat(e.path).st_mode
                if stat.S_ISDIR(mode):
                    stack.append((Path(e.path), rel + "/"))
                elif stat.S_ISREG(mode):
                    out[rel] = Path(e.path)
                else:
                    raise ValueError(f"{snap}: {rel} is {_kind_of_mode(mode)}; a saved directory "
                                     "holds only regular files and folders")
    return out


def _manifest(snap: Path) -> Dict[str, str]:
    files = _walk_files(snap)
    out = {}
    for rel, path in sorted(files.items()):
        _fsync_file(path)
        out[rel] = sha256_file(path)
    dirs = {snap} | {p.parent for p in files.values()}
    for d in dirs:
        _fsync_dir(d)
    return out


def _read_pointer(root: Path, fmt: str) -> Optional[dict]:
    p = root / POINTER_NAME
    try:
        os.lstat(p)
    except FileNotFoundError:
        return None
    ptr = load_json(p, max_bytes=16 * 1024 * 1024)
    where = f"{p}"
    if not isinstance(ptr, dict) or ptr.get("format") != fmt:
        raise ValueError(f"{where} is not the pointer of an {_what(fmt)} directory (format field)")
    if ptr.get("sha256") != _pointer_digest(ptr):
        raise ValueError(f"{where} does not match its own sha256 checksum: it was altered or damaged")
    snap = ptr.get("snapshot")
    if not isinstance(snap, str) or not _SNAPSHOT_RE.match(snap):
        raise ValueError(f"{where}: field 'snapshot' should name a v-<time>-<token> folder, got {snap!r}")
    prev = ptr.get("previous")
    if prev is not None and (not isinstance(prev, str) or not _SNAPSHOT_RE.match(prev)):
        raise ValueError(f"{where}: field 'previous' should name a snapshot folder or be null, got {prev!r}")
    files = ptr.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{where}: field 'files' should map file names to sha256 digests")
    for rel, digest in files.items():
        _check_relpath(rel, f"{where} field 'files'")
        if not isinstance(digest, str) or not _SHA_RE.match(digest):
            raise ValueError(f"{where}: field 'files' holds {digest!r} for {rel!r}, not a sha256 digest")
    return ptr


def _pointer_digest(ptr: dict) -> str:
    body = {k: v for k, v in ptr.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def _clean(root: Path, keep: set) -> None:
    """Removes snapshots not in ``keep`` and pointer temporaries: only names embedcluster makes."""
    import shutil

    for e in os.scandir(root):
        if _SNAPSHOT_RE.match(e.name) and e.name not in keep and not e.is_symlink():
            shutil.rmtree(e.path, ignore_errors=True)
        elif _POINTER_TMP_RE.match(e.name):
            with contextlib.suppress(OSError):
                os.unlink(e.path)


def save_snapshot(target: PathLike, fmt: str, write: Callable[[Path], None]) -> Path:
    """Saves a directory of files atomically; returns the new snapshot folder.

    ``write(folder)`` writes the files into a fresh, empty folder. ``target`` must be absent, an
    empty directory or a directory an earlier ``save_snapshot`` with the same ``fmt`` wrote (it
    holds the marker); anything else raises :class:`UnsafePathError` and is left untouched.
    Every file gets a sha256 in the pointer, which :func:`read_snapshot` verifies.
    """
    root = Path(os.fspath(target))
    _prepare_root(root, fmt)
    with _locked(root / MARKER_NAME):
        try:
            current = _read_pointer(root, fmt)
        except ValueError:
            current = None  # a damaged pointer names nothing worth keeping; this save replaces it
        cur = current["snapshot"] if current else None
        _clean(root, keep={cur, current.get("previous") if current else None})
        name = f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(6)}"
        snap = root / name
        _filled_dir(snap, write)
        try:
            files = _manifest(snap)
        except BaseException:
            import shutil

            shutil.rmtree(snap, ignore_errors=True)
            raise
        ptr = {"format": fmt, "snapshot": name, "previous": cur, "files": files}
        save_json(root / POINTER_NAME, {**ptr, "sha256": _pointer_digest(ptr)})
        _clean(root, keep={name, cur})
    return snap


def read_snapshot_with(target: PathLike, fmt: str, read: Callable[[Path], Any]) -> Any:
    """Verifies the current snapshot (:func:`read_snapshot`) and returns ``read(folder)``.

    Saves keep the snapshot before the current one, so a reader is safe for one concurrent
    save; a reader slower than two saves may find its files removed. Then, and only if the
    pointer has moved on meanwhile, the whole read starts again on the new snapshot (bounded);
    any other failure is raised as it is.
    """
    root = Path(os.fspath(target))
    for attempt in range(8):
        snap = read_snapshot(root, fmt)
        try:
            return read(snap)
        except Exception:
            try:
                now = _read_pointer(root, fmt)
            except (OSError, ValueError):
                now = None
            if attempt == 7 or now is None or now["snapshot"] == snap.name:
                raise
    raise AssertionError("unreachable")


def read_snapshot(target: PathLike, fmt: str) -> Path:
    """The current snapshot folder of a directory written by :func:`save_snapshot`, after
    checking that it holds exactly the files the pointer lists, each with its sha256, and no
    symbolic link or special file. A save running meanwhile is waited out (a few retries).

    Raises FileNotFoundError when ``target`` holds no such directory, ValueError when a file
    is missing, added, altered or the pointer is damaged.
    """
    root = Path(os.fspath(target))
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a saved {_what(fmt)} (no such directory)")
    last: Optional[Exception] = None
    for _ in range(8):
        ptr = _read_pointer(root, fmt)
        if ptr is None:
            raise FileNotFoundError(f"{root} is not a saved {_what(fmt)} (no {POINTER_NAME} file)")
        snap = root / ptr["snapshot"]
        try:
            if not stat.S_ISDIR(os.lstat(snap).st_mode):
                raise ValueError(f"{snap} is not a folder")
            found = _walk_files(snap)
            if set(found) != set(ptr["files"]):
                missing = sorted(set(ptr["files"]) - set(found))
                extra = sorted(set(found) - set(ptr["files"]))
                raise ValueError(f"{snap} does not hold the files its pointer lists (missing "
                                 f"{missing[:3]}, unexpected {extra[:3]})")
            for rel, digest in ptr["files"].items():
                if sha256_file(found[rel]) != digest:
                    raise ValueError(f"{found[rel]} does not match its sha256 checksum: the file "
                                     "was altered or damaged after it was saved; save it again")
            return snap
        except (OSError, ValueError) as e:
            # A concurrent save may have moved the pointer on and removed this snapshot.
            last = e
            again = _read_pointer(root, fmt)
            if again is not None and again["snapshot"] != ptr["snapshot"]:
                continue
            if isinstance(e, FileNotFoundError):
                raise ValueError(f"{root}: the snapshot {ptr['snapshot']} named by {POINTER_NAME} is "
                                 "missing; the directory is damaged") from e
            raise
    raise ValueError(f"{root} kept changing while it was read ({last}); try again")


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


def dumps(obj: Any, *, allow_nan: bool = False, indent: Union[int, None] = 2) -> str:
    """The one JSON encoder: sorted keys, numpy scalars and arrays and paths as plain JSON,
    anything else a TypeError; NaN and infinity only with ``allow_nan``."""
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
    text = dumps(obj, allow_nan=allow_nan, indent=indent) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def load_json(path: PathLike, *, max_bytes: int = _MAX_JSON_BYTES) -> Any:
    """Reads a JSON file; ValueError names the file and the position when it is damaged.

    Only a regular file of at most ``max_bytes`` is read; nesting too deep for Python's parser
    is a ValueError too.
    """
    p = Path(os.fspath(path))
    raw = read_bytes_bounded(p, max_bytes, "JSON file")
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
    except RecursionError:
        raise ValueError(f"{p} is nested too deeply to be a JSON file written by embedcluster; "
                         "it is corrupt") from None


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
    header = {METADATA_KEY: dumps(dict(metadata or {}), allow_nan=False, indent=None)}
    with atomic_path(path) as tmp:
        if any(_is_torch_tensor(v) for v in tensors.values()):
            from safetensors.torch import save_file as save_torch_file

            save_torch_file(_torch_tensors_for_save(tensors), os.fspath(tmp), metadata=header)
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.fspath(tmp),
                      metadata=header)


# safetensors dtype codes numpy can hold, those only torch can, and their item sizes.
_NUMPY_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "U32": 4, "I32": 4,
                 "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_TORCH_ONLY_DTYPES = {"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
SAFETENSORS_DTYPE_SIZES = {**_NUMPY_DTYPES, **_TORCH_ONLY_DTYPES}


def safetensors_header(p: PathLike) -> dict:
    """The header of a safetensors file, read and checked without touching the tensor data
    (what an allocation would be computed from): see :func:`_read_header`."""
    return _read_header(Path(os.fspath(p)))


def _read_header(p: Path) -> dict:
    """Parses and checks a safetensors header so that damage gives a message, not a panic:
    every entry's dtype is known and its offsets span exactly its shape's bytes, the entries
    tile the data without gaps or overlaps."""
    p = check_input_file(p, "safetensors file")
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{what}: its header is not valid JSON ({type(e).__name__}); the file "
                         "is corrupt") from e
    if not isinstance(header, dict):
        raise ValueError(f"{what}: its header is not a JSON object")
    data_len = size - 8 - n
    end = 0
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(info, dict) and isinstance(info.get("dtype"), str) \
            and isinstance(info.get("shape"), list) and isinstance(info.get("data_offsets"), list) \
            and len(info["data_offsets"]) == 2 \
            and all(type(v) is int and v >= 0 for v in info["shape"] + info["data_offsets"])
        if not ok:
            raise ValueError(f"{what}: header entry {name!r} is malformed (it needs a dtype, a "
                             "shape of non-negative integers and two data offsets)")
        dtype, shape = info["dtype"], info["shape"]
        lo, hi = info["data_offsets"]
        itemsize = SAFETENSORS_DTYPE_SIZES.get(dtype)
        if itemsize is None:
            raise ValueError(f"{what}: entry {name!r} has dtype {dtype!r}, which embedcluster "
                             "does not know; the file is corrupt or from a newer writer")
        count = 1
        for s_ in shape:
            count *= s_
        if hi < lo or count * itemsize != hi - lo:
            raise ValueError(f"{what}: entry {name!r} declares shape {shape} of {dtype} "
                             f"({count * itemsize} bytes) but spans [{lo}, {hi}); the file is corrupt")
        spans.append((lo, hi, name))
        end = max(end, hi)
    spans.sort()
    for (_, hi0, a), (lo1, _, b) in zip(spans, spans[1:]):
        if lo1 < hi0:
            raise ValueError(f"{what}: entries {a!r} and {b!r} overlap; the file is corrupt")
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
    if not p.exists():
        raise FileNotFoundError(f"no safetensors file at {p}")
    header = _read_header(p)
    if fw == "numpy":
        torch_only = sorted(k for k, v in header.items()
                            if k != "__metadata__" and v["dtype"] in _TORCH_ONLY_DTYPES)
        if torch_only:
            dt = header[torch_only[0]]["dtype"]
            raise ValueError(f"{p} holds {dt} tensors ({', '.join(torch_only[:3])}), which numpy "
                             "cannot represent; load it with framework='pt'")
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
        raise ValueError(f"{p} could not be read as safetensors: {e}") from e
    return tensors, metadata
