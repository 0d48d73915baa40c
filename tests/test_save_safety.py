"""Saved pipelines: nothing of the user's is replaced, tampering is refused, saves are atomic
for readers and crash-safe at every step (fault injection), outputs that are not regular files
are refused."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedcluster import _io
from embedcluster.data import load_digits_dataset
from embedcluster.pipeline import TransferClustering


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="module")
def fitted(digits):
    return TransferClustering(n_clusters=6, normalize=False, progress=False, probe_epochs=5, seed=0).fit(digits)


def _tree(root: Path) -> dict:
    """Every entry below root (not following links) -> file bytes, link target or None (folder)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            out[rel] = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
    return out


def _snapshot(root: Path) -> Path:
    return root / json.loads((root / "CURRENT").read_text())["snapshot"]


def _reseal(root: Path) -> None:
    """Recomputes the pointer's checksums after an edit, so that only the other checks can
    catch it (what an attacker who understands the format would do)."""
    ptr = json.loads((root / "CURRENT").read_text())
    snap = root / ptr["snapshot"]
    ptr["files"] = {str(p.relative_to(snap)): hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in sorted(snap.rglob("*")) if p.is_file() and not p.is_symlink()}
    ptr["sha256"] = _io._pointer_digest(ptr)
    (root / "CURRENT").write_text(json.dumps(ptr))


# --------------------------------------------------------------------------- what a save may replace
@pytest.mark.parametrize("what", ["dir-with-files", "nested-dir", "regular-file", "symlink-to-dir",
                                  "symlink-to-file", "fifo", "old-format-pipeline"])
def test_save_never_replaces_what_embedcluster_did_not_write(tmp_path, fitted, what):
    target = tmp_path / "target"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("user data")
    if what == "dir-with-files":
        target.mkdir()
        (target / "thesis.tex").write_text("years of work")
    elif what == "nested-dir":
        (target / "a" / "b").mkdir(parents=True)
    elif what == "regular-file":
        target.write_text("a regular file")
    elif what == "symlink-to-dir":
        target.symlink_to(outside, target_is_directory=True)
    elif what == "symlink-to-file":
        target.symlink_to(outside / "keep.txt")
    elif what == "fifo":
        os.mkfifo(target)
    else:  # format 1 wrote pipeline.json + arrays.safetensors at the top, with no marker
        target.mkdir()
        (target / "pipeline.json").write_text(json.dumps({"format": "embedcluster-pipeline", "version": 1}))
        (target / "arrays.safetensors").write_bytes(b"x" * 100)
    before, before_out = _tree(tmp_path), _tree(outside)
    with pytest.raises(_io.UnsafePathError, match="refusing to save"):
        fitted.save(target)
    assert _tree(tmp_path) == before and _tree(outside) == before_out


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_save_to_a_device_node_is_refused(fitted, device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist on this system")
    with pytest.raises(_io.UnsafePathError, match="character device"):
        fitted.save(device)
    assert Path(device).is_char_device()


def test_empty_directory_is_adopted_and_resaves_replace_only_what_embedcluster_wrote(tmp_path, digits, fitted):
    target = tmp_path / "p"
    target.mkdir()
    fitted.save(target)
    (target / "NOTES.txt").write_text("the user's own notes")  # a user file beside the save
    other = TransferClustering(n_clusters=3, normalize=False, progress=False, probe_epochs=5).fit(digits)
    for tc in (other, fitted, other):
        tc.save(target)
    assert (target / "NOTES.txt").read_text() == "the user's own notes"
    np.testing.assert_array_equal(TransferClustering.load(target).centers_, other.centers_)
    snaps = [p for p in target.iterdir() if p.name.startswith("v-")]
    assert len(snaps) == 2  # the current one and the one before it, for readers still reading it


def test_leftovers_of_interrupted_saves_are_removed_by_the_next_save(tmp_path, fitted):
    target = tmp_path / "p"
    fitted.save(target)
    orphan = target / "v-20260101T000000-0123456789ab"
    orphan.mkdir()
    (orphan / "arrays.safetensors").write_bytes(b"partial")
    (target / ".CURRENT.0123456789ab.tmp").write_bytes(b"{")
    (target / "v-not-ours").mkdir()  # not a name embedcluster makes: left alone
    fitted.save(target)
    names = sorted(p.name for p in target.iterdir())
    assert not orphan.exists() and ".CURRENT.0123456789ab.tmp" not in names
    assert "v-not-ours" in names


# --------------------------------------------------------------------------- outputs of single files
@pytest.mark.parametrize("what", ["directory", "symlink", "fifo", "device"])
def test_atomic_file_writes_refuse_anything_but_a_regular_file(tmp_path, what):
    target = tmp_path / "out.npy"
    if what == "directory":
        target.mkdir()
    elif what == "symlink":
        (tmp_path / "real.npy").write_bytes(b"keep")
        target.symlink_to(tmp_path / "real.npy")
    elif what == "fifo":
        os.mkfifo(target)
    else:
        if not os.path.exists("/dev/null"):
            pytest.skip("no /dev/null")
        target = Path("/dev/null")
    before = _tree(tmp_path)
    for write in (lambda: _io.atomic_write_bytes(target, b"new"), lambda: _io.save_json(target, {"a": 1}),
                  lambda: _io.save_safetensors(target, {"a": np.zeros(3, np.float32)})):
        with pytest.raises(_io.UnsafePathError, match="refusing to write"):
            write()
    assert _tree(tmp_path) == before
    if what == "device":
        assert target.is_char_device()


def test_cli_refuses_a_device_node_as_output(tmp_path):
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    Z = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    np.save(tmp_path / "z.npy", Z)
    r = subprocess.run([sys.executable, "-m", "embedcluster.cli", "cluster", str(tmp_path / "z.npy"),
                        "--n-clusters", "2", "--out", "/dev/null"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "character device" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert Path("/dev/null").is_char_device()


# --------------------------------------------------------------------------- tampered pipelines
def _flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset % len(b)] ^= 0x01
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("name", ["arrays.safetensors", "pipeline.json", "CURRENT"])
def test_any_flipped_byte_is_refused(tmp_path, fitted, name):
    fitted.save(tmp_path / "p")
    f = (tmp_path / "p" / name) if name == "CURRENT" else _snapshot(tmp_path / "p") / name
    size = f.stat().st_size
    offsets = sorted(set(np.linspace(0, size - 1, 25).astype(int).tolist()))
    for off in offsets:
        original = f.read_bytes()
        _flip(f, off)
        with pytest.raises((ValueError, FileNotFoundError)):
            TransferClustering.load(tmp_path / "p")
        f.write_bytes(original)
    TransferClustering.load(tmp_path / "p")  # restored: loads again


def test_arrays_with_consistent_checksums_but_bad_values_are_refused(tmp_path, fitted):
    """NaN probe weights would make every prediction class 0; the loader refuses them even when
    every checksum was recomputed to match."""
    fitted.save(tmp_path / "p")
    snap = _snapshot(tmp_path / "p")
    arrays, meta = _io.load_safetensors(snap / "arrays.safetensors")
    arrays["probe.weight"][0, 0] = np.nan
    _io.save_safetensors(snap / "arrays.safetensors", arrays, meta)
    cfg = json.loads((snap / "pipeline.json").read_text())
    cfg["arrays"] = {k: _io.sha256_array(v) for k, v in arrays.items()}
    (snap / "pipeline.json").write_text(json.dumps(cfg))
    _reseal(tmp_path / "p")
    with pytest.raises(ValueError, match="NaN or infinity"):
        TransferClustering.load(tmp_path / "p")


BAD_FIELDS = [
    ("normalize", "false"), ("normalize", 1), ("normalize", None),
    ("unknown_threshold", float("nan")), ("unknown_threshold", float("inf")), ("unknown_threshold", -1.0),
    ("unknown_threshold", "0.5"), ("unknown_quantile", 0.0), ("unknown_quantile", 1.5),
    ("n_features", 2.9), ("n_features", 0), ("n_features", 65), ("n_features", True), ("seed", "0"),
    ("seed", 1.5), ("version", 1), ("version", "2"), ("format", "other"), ("probe", "no"), ("probe", []),
    ("encoder", []), ("encoder", {"kind": "hub"}), ("encoder", {"kind": "raw", "path": "/etc"}),
    ("encoder", {"kind": "local", "path": "../outside", "fingerprint": "x", "name": "x"}),
    ("encoder", {"kind": "local", "path": "/abs/encoder", "fingerprint": "x", "name": "x"}),
    ("encoder", {"kind": "local", "path": "encoder/../../x", "fingerprint": "x", "name": "x"}),
    ("arrays", {}), ("arrays", None), ("extra_field", 1), ("-missing-", "seed"), ("-missing-", "probe"),
    ("-missing-", "encoder"),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_every_config_field_is_type_and_range_checked(tmp_path, fitted, field, value):
    fitted.save(tmp_path / "p")
    snap = _snapshot(tmp_path / "p")
    cfg = json.loads((snap / "pipeline.json").read_text())
    if field == "-missing-":
        del cfg[value]
        field = value
    else:
        cfg[field] = value
    (snap / "pipeline.json").write_text(json.dumps(cfg))  # NaN / inf written as JSON's extensions
    _reseal(tmp_path / "p")
    with pytest.raises(ValueError) as err:
        TransferClustering.load(tmp_path / "p")
    assert field in str(err.value) or "encoder" in str(err.value)


@pytest.mark.parametrize("probe_field,value", [("classes", [0, 0, 1, 2, 3, 4]), ("classes", ["a"] * 6),
                                                ("classes", []), ("n_features", 3), ("params", {"evil": 1}),
                                                ("params", {"epochs": [1]}), ("kind", "other")])
def test_probe_config_is_checked(tmp_path, fitted, probe_field, value):
    fitted.save(tmp_path / "p")
    snap = _snapshot(tmp_path / "p")
    cfg = json.loads((snap / "pipeline.json").read_text())
    cfg["probe"][probe_field] = value
    (snap / "pipeline.json").write_text(json.dumps(cfg))
    _reseal(tmp_path / "p")
    with pytest.raises(ValueError):
        TransferClustering.load(tmp_path / "p")


@pytest.mark.parametrize("text", ["[]", "null", "1", '"s"', "[" * 50000 + "]" * 50000, '{"format": {"a": ['])
def test_malformed_json_structure_gives_a_clear_error(tmp_path, fitted, text):
    fitted.save(tmp_path / "p")
    (_snapshot(tmp_path / "p") / "pipeline.json").write_text(text)
    _reseal(tmp_path / "p")
    with pytest.raises(ValueError):
        TransferClustering.load(tmp_path / "p")


@pytest.mark.parametrize("pointer", [
    {"format": "embedcluster-pipeline", "snapshot": "../../etc", "files": {"a": "0" * 64}},
    {"format": "embedcluster-pipeline", "snapshot": "/etc", "files": {"a": "0" * 64}},
    {"format": "embedcluster-pipeline", "snapshot": None, "files": {}},
    {"format": "x"},
    [],
    {"format": "embedcluster-pipeline", "snapshot": "v-20260101T000000-0123456789ab", "files": {"../x": "0" * 64}},
])
def test_a_damaged_pointer_is_refused(tmp_path, fitted, pointer):
    """Even with a matching self-checksum, a pointer naming anything but a snapshot folder of
    the directory is refused."""
    fitted.save(tmp_path / "p")
    if isinstance(pointer, dict):
        pointer = {**pointer, "sha256": _io._pointer_digest(pointer)}
    (tmp_path / "p" / "CURRENT").write_text(json.dumps(pointer))
    with pytest.raises(ValueError):
        TransferClustering.load(tmp_path / "p")


@pytest.mark.parametrize("how", ["symlink-file", "symlink-dir", "extra-file", "fifo"])
def test_links_and_unlisted_files_inside_a_pipeline_are_refused(tmp_path, digits, how):
    torch = pytest.importorskip("torch")
    from embedcluster.encoders import save_checkpoint
    from embedcluster.models import model_from_config

    torch.manual_seed(0)
    config = {"arch": "mlp", "in_shape": [8, 8], "hidden": [16], "embed_dim": 8}
    ckpt = save_checkpoint(model_from_config(config), tmp_path / "enc", config)
    tc = TransferClustering(encoder=str(ckpt), n_clusters=4, progress=False, probe=False).fit(digits)
    tc.save(tmp_path / "p")
    snap = _snapshot(tmp_path / "p")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes((snap / "encoder" / "model.safetensors").read_bytes())
    if how == "symlink-file":
        (snap / "encoder" / "model.safetensors").unlink()
        (snap / "encoder" / "model.safetensors").symlink_to(outside / "model.safetensors")
    elif how == "symlink-dir":
        import shutil

        shutil.copy(snap / "encoder" / "config.json", outside / "config.json")
        shutil.rmtree(snap / "encoder")
        (snap / "encoder").symlink_to(outside, target_is_directory=True)
    elif how == "extra-file":
        (snap / "encoder" / "modules.json").write_text("[]")
    else:
        os.mkfifo(snap / "encoder" / "pipe")
    with pytest.raises(ValueError):
        TransferClustering.load(tmp_path / "p")
    if how.startswith("symlink"):  # refused even with fresh checksums: nothing is read through a link
        _reseal(tmp_path / "p")
        with pytest.raises(ValueError):
            TransferClustering.load(tmp_path / "p")


def test_format_1_pipeline_gives_a_clear_error(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "pipeline.json").write_text(json.dumps({"format": "embedcluster-pipeline", "version": 1}))
    with pytest.raises(ValueError, match="older embedcluster"):
        TransferClustering.load(tmp_path / "old")


# --------------------------------------------------------------------------- atomicity and crashes
_CHILD_SETUP = textwrap.dedent("""
    import os, sys, signal, json
    import numpy as np
    from embedcluster.data import load_digits_dataset
    from embedcluster.pipeline import TransferClustering
    ds = load_digits_dataset()
    def fit(k):
        return TransferClustering(n_clusters=k, normalize=False, progress=False, probe_epochs=3, seed=0).fit(ds)
""")


def test_readers_during_saves_see_a_whole_pipeline(tmp_path, digits):
    """A writer saves two pipelines in turn while this process loads: every load succeeds and
    is exactly one of the two (bounded: 20 saves, loads until the writer ends)."""
    a = TransferClustering(n_clusters=3, normalize=False, progress=False, probe_epochs=3, seed=0).fit(digits)
    b = TransferClustering(n_clusters=5, normalize=False, progress=False, probe_epochs=3, seed=0).fit(digits)
    a.save(tmp_path / "p")
    writer = subprocess.Popen([sys.executable, "-c", _CHILD_SETUP + textwrap.dedent(f"""
        a, b = fit(3), fit(5)
        print("ready", flush=True)
        for i in range(20):
            (b if i % 2 == 0 else a).save({str(tmp_path / 'p')!r})
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        loads = 0
        while writer.poll() is None and loads < 2000:
            got = TransferClustering.load(tmp_path / "p")
            assert any(np.array_equal(got.centers_, x.centers_) for x in (a, b))
            assert got.probe_.coef_.shape[0] == got.centers_.shape[0]
            loads += 1
        assert writer.wait(timeout=300) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert loads > 0
    np.testing.assert_array_equal(TransferClustering.load(tmp_path / "p").centers_, a.centers_)


@pytest.mark.slow
def test_a_kill_at_any_step_of_a_save_leaves_a_loadable_pipeline(tmp_path, digits):
    """Fault injection: the child process kills itself (SIGKILL) at the n-th file-system step
    of a save (file creation, write, fsync, rename, mkdir, removal), for n = 1, 2, ... until a
    save completes. After every kill the folder loads as the old or the new pipeline, and the
    next save removes what the killed one left behind."""
    old = TransferClustering(n_clusters=3, normalize=False, progress=False, probe_epochs=3, seed=0).fit(digits)
    new = TransferClustering(n_clusters=5, normalize=False, progress=False, probe_epochs=3, seed=0).fit(digits)
    target = tmp_path / "p"
    new.save(tmp_path / "src")
    child = textwrap.dedent(f"""
        import builtins, os, shutil, signal, sys
        from embedcluster.pipeline import TransferClustering
        n_kill = int(sys.argv[1])
        tc = TransferClustering.load({str(tmp_path / "src")!r})
        count = [0]
        def step(fn):
            def wrapped(*a, **k):
                count[0] += 1
                if count[0] == n_kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*a, **k)
            return wrapped
        for name in ("replace", "rename", "mkdir", "fsync", "unlink", "rmdir", "open"):
            setattr(os, name, step(getattr(os, name)))
        builtins.open = step(builtins.open)
        shutil.rmtree = step(shutil.rmtree)
        shutil.copyfile = step(shutil.copyfile)
        tc.save({str(target)!r})
        print("completed", count[0])
    """)
    killed = 0
    for n in range(1, 400):
        old.save(target)
        r = subprocess.run([sys.executable, "-c", child, str(n)], capture_output=True, text=True, timeout=300)
        got = TransferClustering.load(target)
        if r.returncode == 0:
            assert "completed" in r.stdout
            np.testing.assert_array_equal(got.centers_, new.centers_)
            break
        assert r.returncode == -signal.SIGKILL, r.stderr
        killed += 1
        assert any(np.array_equal(got.centers_, x.centers_) for x in (old, new))
    else:
        pytest.fail("the save never completed")
    assert killed >= 10  # the save has at least this many steps: every one was tried
    old.save(target)  # cleans up
    names = sorted(p.name for p in target.iterdir())
    assert names[:2] == [".embedcluster", "CURRENT"] and len(names) == 4  # marker, pointer, 2 snapshots


def test_a_reader_slower_than_two_saves_starts_again_on_the_new_snapshot(tmp_path, digits, fitted):
    """Saves keep one previous snapshot; a reader overtaken by two saves finds its files gone
    and reads the new snapshot instead of failing (deterministic: the saves run inside the read)."""
    other = TransferClustering(n_clusters=3, normalize=False, progress=False, probe_epochs=3, seed=0).fit(digits)
    fitted.save(tmp_path / "p")
    calls = []

    def read(snap):
        calls.append(snap.name)
        if len(calls) == 1:
            other.save(tmp_path / "p")
            other.save(tmp_path / "p")  # the snapshot being read is removed now
        return _io.load_safetensors(snap / "arrays.safetensors")[0]["centers"]

    centers = _io.read_snapshot_with(tmp_path / "p", "embedcluster-pipeline", read)
    assert len(calls) == 2 and calls[0] != calls[1]
    np.testing.assert_array_equal(centers, other.centers_)
    # A failure that is not caused by a moving pointer is raised as it is.
    with pytest.raises(KeyError):
        _io.read_snapshot_with(tmp_path / "p", "embedcluster-pipeline", lambda snap: {}["x"])


def test_directory_replacement_never_leaves_the_path_empty(tmp_path, monkeypatch):
    """atomic_directory (encoder checkpoints) swaps old and new in one step where the system can:
    no moment without a directory at the path, no leftovers; elsewhere, two renames."""
    target = tmp_path / "ckpt"
    _io.atomic_directory(target, lambda p: (p / "f").write_text("old"))
    seen = []
    real_replace = os.replace

    def watching_replace(a, b):
        seen.append(target.is_dir())
        real_replace(a, b)
        seen.append(target.is_dir())

    monkeypatch.setattr(os, "replace", watching_replace)
    _io.atomic_directory(target, lambda p: (p / "f").write_text("new"))
    assert (target / "f").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    if sys.platform.startswith("linux"):
        assert seen == [], "Linux swaps with renameat2(RENAME_EXCHANGE), not renames"
    # Without the exchange (another system, or a file system without it): two renames, same result.
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    _io.atomic_directory(target, lambda p: (p / "f").write_text("newer"))
    assert (target / "f").read_text() == "newer"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert False in seen  # the window the exchange closes
