"""The `embedcluster` command: info, help, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import embedcluster as ec
from embedcluster.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "embedcluster.cli", *args], capture_output=True, text=True)


def test_info_json_reports_the_build():
    r = run("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["version"] == ec.__version__ != "0+unknown"
    assert info["native"] is True and "native" in info["backends"]
    b = info["build"]
    assert b["version"] == ec.__version__  # the engine and the package agree
    assert b["kernels_active"] in b["kernels_available"]
    assert isinstance(b["openmp"], bool) and b["max_threads"] >= 1
    assert "cuda_compiled" in b


def test_info_text(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("embedcluster", "OpenMP", "kernels", "CUDA", "backends", "CPU features"):
        assert word in out


def test_help_and_unknown_command():
    assert run("--help").returncode == 0
    assert "info" in run("--help").stdout
    r = run("nope")
    assert r.returncode != 0 and "invalid choice" in r.stderr


def test_forced_kernel_set_is_reported():
    import os

    env = dict(os.environ, EMBEDCLUSTER_ISA="generic")
    r = subprocess.run([sys.executable, "-m", "embedcluster.cli", "info", "--json"], capture_output=True,
                       text=True, env=env)
    assert json.loads(r.stdout)["build"]["kernels_active"] == "generic"


def test_bad_forced_kernel_set_is_a_clear_error():
    import os

    env = dict(os.environ, EMBEDCLUSTER_ISA="sse9")
    code = "import numpy as np, embedcluster as ec; ec.KMeans(2).fit(np.eye(4, dtype=np.float32))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "EMBEDCLUSTER_ISA=sse9" in r.stderr


@pytest.mark.parametrize("backend", ["native", "faiss"])
def test_backends_listed_are_usable(backend):
    if backend not in ec.build_info()["backends"]:
        pytest.skip(f"{backend} backend not installed")
    import numpy as np

    X = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    assert ec.NearestNeighbors(n_neighbors=2, backend=backend).fit(X).kneighbors()[1].shape == (50, 2)


def test_demo_transfer_story(tmp_path):
    r = run("demo", "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    raw, raw_probe, transferred, tr_probe = res["rows"]
    assert raw["method"].startswith("k-means on raw") and transferred["method"].startswith("k-means on transferred")
    # k-means on raw pixels of digits 5-9 is known to reach about 0.9 accuracy; chance is 0.2.
    assert 0.8 < raw["accuracy"] <= 1.0 and raw["nmi"] > 0.6
    assert transferred["accuracy"] > 0.4  # far above chance, even though raw pixels win here
    for name in ("report/report.html", "report/metrics.json", "pipeline/pipeline.json", "encoder/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert res["total_seconds"] < 600  # sanity only; the 2-minute target is checked by hand


def test_cli_chain_embed_cluster_evaluate_probe_run_predict(tmp_path):
    import numpy as np

    def ok(*args):
        r = run(*args)
        assert r.returncode == 0, r.stderr
        return r

    Z, y, lab = tmp_path / "Z.npy", tmp_path / "y.npy", tmp_path / "lab.npy"
    ok("embed", "digits", "--out", str(Z), "--labels-out", str(y), "--no-progress")
    assert np.load(Z).shape == (1797, 64)
    ok("cluster", str(Z), "--n-clusters", "10", "--out", str(lab))
    ev = json.loads(ok("evaluate", "--labels", str(lab), "--truth", str(y), "--json").stdout)
    from sklearn.metrics import adjusted_rand_score

    assert ev["ari"] == pytest.approx(adjusted_rand_score(np.load(y), np.load(lab)))
    pr = json.loads(ok("probe", str(Z), "--labels", str(lab), "--truth", str(y), "--out", str(tmp_path / "p"),
                       "--json").stdout)
    assert pr["agreement_with_clusters"] > 0.9 and (tmp_path / "p" / "probe.safetensors").is_file()
    res = json.loads(ok("run", "digits", "--out", str(tmp_path / "run"), "--no-progress", "--json").stdout)
    assert res["n_clusters"] == 10 and res["clusters"]["accuracy"] > 0.5
    pred = json.loads(ok("predict", str(tmp_path / "run" / "pipeline"), "digits", "--json", "--no-progress").stdout)
    assert len(pred["labels"]) == 1797


def test_cli_run_from_config_file(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"data": "digits", "n_clusters": 5, "out": str(tmp_path / "o"), "report": False}))
    r = run("run", "--config", str(cfg), "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_clusters"] == 5 and not (tmp_path / "o" / "report").exists()
    cfg.write_text(json.dumps({"data": "digits", "out": "x", "colour": "blue"}))
    r = run("run", "--config", str(cfg))
    assert r.returncode == 2 and "unknown keys" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (("cluster", "missing.npy", "--out", "x.npy"), "does not exist"),
    (("predict", "no-such-pipeline", "digits"), "not a saved embedcluster pipeline"),
    (("run", "--out", "x"), "run needs data"),
])
def test_cli_errors_are_one_line_and_nonzero(args, message):
    r = run(*args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("cmd", ["demo", "embed", "cluster", "evaluate", "probe", "run", "predict", "info"])
def test_every_command_has_help(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: embedcluster " + cmd) and len(r.stdout) > 200
