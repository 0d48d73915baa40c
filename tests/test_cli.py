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


def test_demo_runs_and_scores_real_clusters():
    r = run("demo", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    by = {row["method"].split(",")[0] + row["method"].split(",")[1]: row for row in res["rows"]}
    km = by["k-means L2"]
    # k-means on raw digit pixels is known to reach about 0.8 accuracy; chance is about 0.1.
    assert 0.6 < km["accuracy"] <= 1.0 and 0.5 < km["nmi"] <= 1.0
    assert res["knn10_label_agreement"] > 0.9
