"""Bounded fuzz of every loader that reads a user's file (slow tier).

Valid small files (IDX plain and gzip'd, .npy, PNG, CSV / JSONL, safetensors and JSON written by
embedcluster._io, an embedcluster encoder checkpoint, a saved pipeline) are mutated by a seeded
mutator (bit flips, interesting integers over header fields, truncation, insertion, deletion,
duplication, and for JSON, values replaced by huge / negative / wrong-typed / deeply nested
ones), a fixed number of cases per file kind. Each load must either succeed or raise one of the
documented types, with a message that names the file:

    ValueError, TypeError, MemoryError, FileNotFoundError, IsADirectoryError, NotADirectoryError

never another exception (zlib.error, struct.error, json's RecursionError, PIL internals, torch's
RuntimeError, ...), never a hang (each case has a 20 s alarm, each kind a wall-clock bound), never
a crash (each kind runs in a child process: a segfault fails the test and names the case), never
an allocation beyond an address-space limit set in the child (RLIMIT_AS: what is in use + 3 GiB),
which turns an unchecked allocation from a header into a MemoryError without the file's name.

Kinds read by embedcluster._io (safetensors, JSON) and pipeline.py are held to the same rule.

Reproduce one case: ``python tests/test_loader_fuzz.py KIND CASE`` prints its outcome and
traceback (KIND from KINDS below).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

ALLOWED = ("ValueError", "TypeError", "MemoryError", "FileNotFoundError", "IsADirectoryError",
           "NotADirectoryError")
# Kind -> (number of cases, owner). Owners other than "loaders" are reported, not failed.
KINDS = {
    "idx": (300, "loaders"),
    "idx_gz": (300, "loaders"),
    "idx_labels": (150, "loaders"),
    "npy": (300, "loaders"),
    "png": (200, "loaders"),
    "csv": (150, "loaders"),
    "jsonl": (150, "loaders"),
    "checkpoint_config": (200, "loaders"),
    "checkpoint_weights": (200, "loaders"),
    "torchscript": (150, "loaders"),
    "safetensors": (300, "_io"),
    "json": (200, "_io"),
    "pipeline_json": (200, "pipeline"),
    "pipeline_arrays": (150, "pipeline"),
    "pipeline_pointer": (100, "_io"),
}
CASE_TIMEOUT_S = 20
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               2 ** 40, 2 ** 63 - 1, 2 ** 64 - 1]


# ----------------------------------------------------------------------------- mutators
def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One to three random edits; half of the positions fall in the first 128 bytes, where
    the headers that decide allocations live."""
    b = bytearray(data)
    ops = []
    for _ in range(rng.randint(1, 3)):
        n = len(b)

        def pos(n: int = n) -> int:
            hi = min(n, 128) if rng.random() < 0.5 else n
            return rng.randrange(max(hi, 1))

        op = rng.choice(["flip", "byte", "int", "truncate", "insert", "delete", "dup"])
        if n == 0:
            op = "insert"
        if op == "flip":
            i = pos()
            b[i] ^= 1 << rng.randrange(8)
        elif op == "byte":
            i = pos()
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == "int":
            i, width = pos(), rng.choice([2, 4, 8])
            v = rng.choice(INTERESTING) % (1 << (8 * width))
            b[i:i + width] = v.to_bytes(width, rng.choice(["little", "big"]))
        elif op == "truncate":
            i = pos()
            del b[i:]
        elif op == "insert":
            i = pos() if n else 0
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == "delete":
            i = pos()
            del b[i:i + rng.randint(1, 64)]
        else:
            i = pos()
            k = rng.randint(1, 256)
            b[i:i] = b[i:i + k]
        ops.append(f"{op}@{i}")
    return bytes(b), ",".join(ops)


HOSTILE_VALUES = [10 ** 30, -1, 0, 2 ** 31, 2 ** 63, 1.5, float("1e308"), True, None, "x", "",
                  [], {}, [1] * 3, "9" * 50, [[[[[[[[[[[]]]]]]]]]]], "a" * 5000, [2 ** 20] * 3]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def mutate_json(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Structure-aware: a value replaced, a key deleted or added; or plain byte edits."""
    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    obj = json.loads(data)
    paths = [p for p in _paths(obj) if p]
    if not paths:
        return mutate_bytes(data, rng)
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    op = rng.choice(["replace", "replace", "delete", "add"])
    if op == "delete":
        del parent[path[-1]]
    elif op == "add" and isinstance(parent, dict):
        parent["fuzz_" + str(rng.randrange(100))] = rng.choice(HOSTILE_VALUES)
    else:
        parent[path[-1]] = rng.choice(HOSTILE_VALUES)
    return json.dumps(obj).encode(), f"json-{op}:{'/'.join(map(str, path))}"


# ----------------------------------------------------------------------------- targets
def _setup(kind: str, root: Path):
    """(file to mutate, mutator, load(path) callable) for a kind; writes the valid seed."""
    import numpy as np

    rng = np.random.default_rng(0)
    if kind in ("idx", "idx_gz", "idx_labels"):
        import gzip
        import struct

        from embedcluster.data import load_idx

        def idx(arr):
            code = {"u1": 8, "i2": 0x0B, "f4": 0x0D}[arr.dtype.str[1:]]
            head = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()

        X = rng.integers(0, 256, (5, 4, 3)).astype(np.uint8)
        if kind == "idx_labels":
            xi = root / "images-idx3-ubyte"
            xi.write_bytes(idx(X))
            target = root / "labels-idx1-ubyte"
            target.write_bytes(idx(np.arange(5, dtype=np.uint8)))
            return target, mutate_bytes, lambda p: load_idx(xi, p)
        raw = idx(X)
        target = root / ("x-idx3-ubyte.gz" if kind == "idx_gz" else "x-idx3-ubyte")
        target.write_bytes(gzip.compress(raw, mtime=0) if kind == "idx_gz" else raw)
        return target, mutate_bytes, load_idx
    if kind == "npy":
        from embedcluster.data import load_npy

        target = root / "x.npy"
        np.save(target, rng.standard_normal((6, 4)).astype(np.float32))
        state = {"n": 0}

        def load(p):
            state["n"] += 1
            return load_npy(p, mmap=bool(state["n"] % 2))

        return target, mutate_bytes, load
    if kind == "png":
        from PIL import Image

        from embedcluster.data import load_image_folder

        folder = root / "imgs"
        folder.mkdir()
        Image.fromarray(rng.integers(0, 256, (6, 5, 3)).astype(np.uint8)).save(folder / "a.png")
        target = folder / "b.png"
        Image.frombytes("I;16", (5, 6), rng.integers(0, 65536, (6, 5)).astype("<u2").tobytes()
                        ).save(target)
        return target, mutate_bytes, lambda p: load_image_folder(folder, grayscale=True)
    if kind in ("csv", "jsonl"):
        from embedcluster.data import load_table

        rows = [{"text": f"item {i}, \"quoted\"", "label": str(i % 2)} for i in range(4)]
        target = root / f"t.{kind}"
        if kind == "csv":
            import csv

            with open(target, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, ["text", "label"])
                w.writeheader()
                w.writerows(rows)
            return target, mutate_bytes, load_table
        target.write_text("\n".join(json.dumps(r) for r in rows) + "\n", "utf-8")
        return target, mutate_bytes, load_table
    if kind == "safetensors":
        from embedcluster import _io

        target = root / "t.safetensors"
        _io.save_safetensors(target, {"a": rng.standard_normal((3, 4)).astype(np.float32),
                                      "b": np.arange(5, dtype=np.int64)}, {"k": [1, 2]})
        state = {"n": 0}

        def load(p):
            state["n"] += 1
            return _io.load_safetensors(p, framework="pt" if state["n"] % 2 else "numpy")

        return target, mutate_bytes, load
    if kind == "json":
        from embedcluster import _io

        target = root / "pipeline.json"
        _io.save_json(target, {"format": "embedcluster-pipeline", "version": 1, "n_clusters": 10,
                               "encoder": {"kind": "raw", "spec": None}, "classes": ["a", "b"],
                               "metrics": {"acc": 0.5, "nmi": [0.1, 0.2]}})
        return target, mutate_json, _io.load_json
    if kind in ("checkpoint_config", "checkpoint_weights"):
        import torch

        from embedcluster import models
        from embedcluster.encoders import load_encoder, save_checkpoint

        torch.manual_seed(0)
        cfg = {"arch": "mlp", "in_shape": [8], "hidden": [6], "embed_dim": 3}
        d = save_checkpoint(models.model_from_config(cfg), root / "ckpt", cfg)
        if kind == "checkpoint_config":
            return d / "config.json", mutate_json, lambda p: load_encoder(p.parent, device="cpu")
        # Without the recorded checksum the header parser, not the checksum, meets the damage.
        conf = json.loads((d / "config.json").read_text())
        conf["weights_sha256"] = None
        (d / "config.json").write_text(json.dumps(conf))
        return d / "model.safetensors", mutate_bytes, lambda p: load_encoder(p.parent, device="cpu")
    if kind == "torchscript":
        import torch

        from embedcluster.encoders import load_encoder

        torch.manual_seed(0)
        target = root / "m.pt"
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3))), target)
        return target, mutate_bytes, lambda p: load_encoder(p, device="cpu")
    if kind in ("pipeline_json", "pipeline_arrays", "pipeline_pointer"):
        import hashlib

        from embedcluster import _io
        from embedcluster.data import load_digits_dataset
        from embedcluster.pipeline import TransferClustering

        ds = load_digits_dataset().subset(list(range(120)))
        tc = TransferClustering(n_clusters=3, normalize=False, progress=False, seed=0).fit(ds)
        snap = Path(tc.save(root / "pipe"))
        top = next(p for p in [snap, *snap.parents] if (p / "CURRENT").is_file()) \
            if not (snap / "CURRENT").is_file() else snap
        pointer = top / "CURRENT"
        signed = pointer.read_bytes()

        def resign(p: Path) -> None:
            """Rewrites the pointer's checksums for the mutated file, so that the parser
            behind them (not only the checksum) meets the damage."""
            if p == pointer:
                try:
                    ptr = json.loads(p.read_bytes())
                except ValueError:
                    return
                if isinstance(ptr, dict):
                    ptr["sha256"] = _io._pointer_digest(ptr)
                    p.write_text(json.dumps(ptr))
                return
            ptr = json.loads(signed)
            ptr["files"][p.relative_to(top / ptr["snapshot"]).as_posix()] = \
                hashlib.sha256(p.read_bytes()).hexdigest()
            ptr["sha256"] = _io._pointer_digest(ptr)
            pointer.write_text(json.dumps(ptr))

        def load(p: Path):
            resign(p)
            try:
                return TransferClustering.load(top)
            finally:
                if p != pointer:
                    pointer.write_bytes(signed)

        if kind == "pipeline_pointer":
            return pointer, mutate_json, load
        name = "pipeline.json" if kind == "pipeline_json" else "arrays.safetensors"
        target = next(top.rglob(name))
        return target, mutate_json if name.endswith(".json") else mutate_bytes, load
    raise ValueError(f"unknown fuzz kind {kind!r}")


class _CaseTimeout(BaseException):
    """Raised by SIGALRM inside a case that runs too long (a hang)."""


def run_kind(kind: str, cases: list[int], report) -> None:
    """Child process: set the limits, then run the cases and report one JSON line each."""
    import resource
    import signal

    import numpy as np  # noqa: F401 - imported before the address-space limit
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    root = Path(tempfile.mkdtemp(prefix=f"fuzz-{kind}-"))
    target, mutator, load = _setup(kind, root)
    valid = target.read_bytes()
    load(target)  # the seed itself must load
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = used + (3 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    def alarm(*_):
        raise _CaseTimeout

    signal.signal(signal.SIGALRM, alarm)
    for i in cases:
        rng = random.Random(f"{kind}-{i}")
        data, ops = mutator(valid, rng)
        target.write_bytes(data)
        sys.stderr.write(f"START {kind} {i} {ops}\n")
        sys.stderr.flush()
        rec = {"kind": kind, "case": i, "ops": ops, "size": len(data)}
        signal.alarm(CASE_TIMEOUT_S)
        try:
            load(target)
            rec["outcome"] = "ok"
        except _CaseTimeout:
            rec.update(outcome="hang", type="timeout", msg=f"over {CASE_TIMEOUT_S} s")
        except BaseException as e:  # noqa: BLE001 - classified below
            name = type(e).__name__
            msg = str(e)
            names_file = target.name in msg or target.parent.name in msg
            ok = name in ALLOWED and names_file and type(e).__module__ == "builtins"
            rec.update(outcome="expected" if ok else "unexpected", type=name, msg=msg[:500],
                       names_file=names_file)
            if not ok:
                rec["traceback"] = traceback.format_exc()[-3000:]
                try:  # text inputs (JSON, CSV) are shown as text, binary ones as hex
                    rec["input_text"] = data.decode("utf-8")[:2000]
                except UnicodeDecodeError:
                    rec["input_hex"] = data.hex() if len(data) <= 2048 else None
                rec["in_io"] = "_io.py" in rec["traceback"]
        finally:
            signal.alarm(0)
        report(rec)
        target.write_bytes(valid)


def _run_child(kind: str, n: int) -> list[dict]:
    proc = subprocess.run([sys.executable, __file__, kind, f"0:{n}"], capture_output=True,
                          text=True, timeout=max(300, n * 2), cwd=Path(__file__).parent)
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.startswith("START")][-1:]
        pytest.fail(f"fuzz child for {kind} died with status {proc.returncode} during "
                    f"{last}; stderr tail:\n{proc.stderr[-3000:]}")
    assert len(recs) == n, proc.stderr[-3000:]
    return recs


def _describe(bad: list[dict]) -> str:
    lines = []
    for r in bad[:8]:
        lines.append(f"case {r['kind']} {r['case']} ({r['ops']}): {r['type']}: {r['msg'][:300]}"
                     + (f"\n  input hex: {r['input_hex'][:400]}" if r.get("input_hex") else "")
                     + (f"\n  input text: {r['input_text'][:400]}" if r.get("input_text") else "")
                     + (f"\n  {r['traceback'].strip().splitlines()[-1]}" if r.get("traceback")
                        else ""))
    return f"{len(bad)} cases failed; reproduce with `python tests/test_loader_fuzz.py KIND CASE`" \
           "\n" + "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [k for k, (_, owner) in KINDS.items() if owner == "loaders"])
def test_loaders_survive_mutated_files(kind):
    n, _ = KINDS[kind]
    recs = _run_child(kind, n)
    bad = [r for r in recs if r["outcome"] in ("unexpected", "hang")]
    assert not bad, _describe(bad)
    # The mutator must reach the error paths, not only produce files that still load.
    assert sum(r["outcome"] == "expected" for r in recs) >= n // 4


@pytest.mark.slow
@pytest.mark.parametrize("kind", [k for k, (_, owner) in KINDS.items() if owner != "loaders"])
def test_safe_files_and_pipelines_survive_mutated_files(kind):
    """safetensors / JSON (embedcluster._io) and saved pipelines (pipeline.py)."""
    n, _ = KINDS[kind]
    recs = _run_child(kind, n)
    bad = [r for r in recs if r["outcome"] in ("unexpected", "hang")]
    assert not bad, _describe(bad)


if __name__ == "__main__":
    kind_arg, which = sys.argv[1], sys.argv[2]
    if ":" in which:
        lo, hi = (int(v) for v in which.split(":"))
        run_kind(kind_arg, list(range(lo, hi)), lambda r: print(json.dumps(r), flush=True))
    else:  # one case, for a person reproducing it
        run_kind(kind_arg, [int(which)],
                 lambda r: print(json.dumps(r, indent=2), r.get("traceback", ""), sep="\n"))
