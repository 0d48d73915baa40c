"""`embedcluster bench` on tiny sizes: the report's fields, the agreement checks failing when a
peer's results differ, missing peers reported, and usage errors as one line with exit code 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from embedcluster import bench
from embedcluster.cli import main

from test_cli import _one_line_error

TINY = ["bench", "--n", "400", "--d", "12", "--k", "6", "--iters", "5", "--n-neighbors", "4",
        "--repeats", "1", "--no-openblas-retry"]


def _run(tmp_path, capsys, *extra):
    out = tmp_path / "bench.json"
    code = main([*TINY, "--out", str(out), *extra])
    printed = capsys.readouterr()
    return code, json.loads(out.read_text()), printed


def test_tiny_run_writes_the_promised_report(tmp_path, capsys):
    code, rep, printed = _run(tmp_path, capsys)
    assert code == 0, printed.err
    env = rep["environment"]
    assert env["cpu"]["model"] and isinstance(env["cpu"]["flags"], list) and env["cpu"]["simd"]
    assert env["kernel_sets"]["available"] and env["kernel_sets"]["active"] in env["kernel_sets"]["available"]
    assert env["versions"]["embedcluster"] and env["versions"]["numpy"] == np.__version__
    assert env["threads"]["every_engine"] >= 1
    assert set(rep["cases"]) == {"kmeans", "knn", "dbscan"}
    for case, res in rep["cases"].items():
        assert res["n"] == 400 and res["d"] == 12
        ours = res["engines"]["embedcluster"]
        assert ours["ratio"] == 1.0 and len(ours["times_s"]) == 1 and ours["median_s"] > 0
        for name, run in res["engines"].items():
            assert run["agrees"] is not False, (case, name, run["check"])
    assert rep["disagreements"] == []
    for peer, module in (("faiss", "faiss"), ("scikit-learn", "sklearn")):
        present = peer not in rep["peers_missing"]
        assert present == _importable(module)
    if "scikit-learn" not in rep["peers_missing"]:
        assert rep["cases"]["kmeans"]["engines"]["embedcluster"]["agrees"] is True
        assert rep["cases"]["dbscan"]["engines"]["scikit-learn"]["agrees"] is True
    table = printed.out
    assert "median s" in table and "ratio" in table and env["cpu"]["model"] in table


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_json_flag_prints_the_report(capsys):
    code = main([*TINY, "--cases", "knn", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0 and list(rep["cases"]) == ["knn"]


def _needs(module: str) -> None:
    pytest.importorskip(module)


def test_kmeans_check_fails_when_scikit_learn_ends_elsewhere(tmp_path, capsys, monkeypatch):
    _needs("sklearn")
    real = bench.sklearn_kmeans
    monkeypatch.setattr(bench, "sklearn_kmeans", lambda X, C0, cfg: real(X, C0, cfg) + np.float32(0.05))
    code, rep, printed = _run(tmp_path, capsys, "--cases", "kmeans")
    assert code == 1
    assert rep["cases"]["kmeans"]["engines"]["embedcluster"]["agrees"] is False
    assert rep["disagreements"] == ["kmeans/embedcluster"]
    assert "DISAGREE" in printed.out


@pytest.mark.parametrize("peer,module,runner", [("faiss", "faiss", "faiss_knn"),
                                                ("scikit-learn", "sklearn", "sklearn_knn")])
def test_knn_check_fails_when_a_peer_returns_other_neighbours(tmp_path, capsys, monkeypatch, peer, module, runner):
    _needs(module)
    real = getattr(bench, runner)

    def swapped(X, cfg):
        D, ids = real(X, cfg)
        ids = ids.copy()
        ids[7, [0, -1]] = ids[7, [-1, 0]]  # one row's nearest and farthest swapped, distances kept
        return D, ids

    monkeypatch.setattr(bench, runner, swapped)
    code, rep, _ = _run(tmp_path, capsys, "--cases", "knn")
    assert code == 1
    assert rep["cases"]["knn"]["engines"][peer]["agrees"] is False


def test_dbscan_check_fails_when_core_points_differ(tmp_path, capsys, monkeypatch):
    _needs("sklearn")
    real = bench.sklearn_dbscan
    monkeypatch.setattr(bench, "sklearn_dbscan", lambda X, cfg: real(X, cfg)[1:])
    code, rep, _ = _run(tmp_path, capsys, "--cases", "dbscan")
    assert code == 1
    assert rep["cases"]["dbscan"]["engines"]["scikit-learn"]["agrees"] is False


def test_knn_same_up_to_ties_accepts_only_rows_at_equal_distance():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    D = np.array([[1.0, 1.0], [1.0, 1.4142135], [1.0, 1.4142135], [2.0, 3.0]])
    ids = np.array([[1, 2], [0, 2], [0, 1], [1, 0]])
    assert bench.knn_same_up_to_ties(X, D, ids, ids) == 1.0
    tie = ids.copy()
    tie[0] = [2, 1]  # rows 1 and 2 are both at distance 1 from row 0
    assert bench.knn_same_up_to_ties(X, D, ids, tie) == 1.0
    swap = ids.copy()
    swap[3] = [0, 1]  # distances 3 and 2: not a tie
    assert bench.knn_same_up_to_ties(X, D, ids, swap) == 0.75
    missing = ids.copy()
    missing[1, 1] = -1
    assert bench.knn_same_up_to_ties(X, D, ids, missing) == 0.75


def test_missing_peer_is_reported_with_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    code, rep, printed = _run(tmp_path, capsys, "--cases", "knn")
    assert code == 0
    assert "pip install faiss-cpu" in rep["peers_missing"]["faiss"]
    assert "faiss" not in rep["cases"]["knn"]["engines"]
    assert "pip install faiss-cpu" in printed.out


def test_faiss_in_a_child_process_with_another_openblas_core():
    _needs("faiss")
    cfg = bench.Config(cases=("kmeans", "knn", "dbscan"), n=300, d=8, k=4, iters=3, n_neighbors=3, repeats=1)
    child = bench.faiss_in_child(cfg, "Haswell")
    assert set(child) == {"kmeans", "knn"}  # faiss has no DBSCAN
    X = bench.case_data("knn", cfg)
    D, ids = child["knn"]["output"]
    D_ref, ids_ref = bench.faiss_knn(X, cfg)
    assert bench.knn_same_up_to_ties(X, D_ref, ids_ref, ids) == 1.0
    assert child["kmeans"]["output"].shape == (4, 8) and len(child["kmeans"]["times"]) == 1


def test_faiss_shown_both_ways_when_its_openblas_does_not_know_the_cpu(tmp_path, capsys, monkeypatch):
    _needs("faiss")
    fake = {"owner": "faiss", "user_api": "blas", "version": "0.3.15", "architecture": "Zen", "simd": "sse"}
    monkeypatch.setattr(bench, "narrow_blas", lambda cpu, libs: [fake])
    out = tmp_path / "bench.json"
    code = main([*TINY[:-1], "--cases", "knn,dbscan", "--out", str(out)])
    rep = json.loads(out.read_text())
    assert code == 0, capsys.readouterr().err
    assert any("does not recognise this CPU" in w for w in rep["warnings"])
    tuned = [name for name in rep["cases"]["knn"]["engines"] if name.startswith("faiss (OPENBLAS_CORETYPE=")]
    assert len(tuned) == 1 and rep["cases"]["knn"]["engines"][tuned[0]]["agrees"] is True
    assert "faiss" not in rep["cases"]["dbscan"]["engines"]


@pytest.mark.parametrize("argv,word", [
    (["bench", "--cases", "kmeans,svm"], "svm"),
    (["bench", "--cases", ""], "--cases"),
    (["bench", "--n", "0"], "--n"),
    (["bench", "--repeats", "-1"], "--repeats"),
    (["bench", "--eps", "nan"], "--eps"),
    (["bench", "--threads", "two"], "--threads"),
    (["bench", "--cases", "kmeans", "--n", "5", "--k", "10"], "--k"),
    (["bench", "--cases", "knn", "--n", "5", "--n-neighbors", "5"], "--n-neighbors"),
    (["bench", "--out", "/nonexistent-folder/x.json"], "does not exist"),
])
def test_bad_arguments_are_one_line_errors(capsys, argv, word):
    code = main(argv)
    _one_line_error(code, capsys.readouterr().err, word)
