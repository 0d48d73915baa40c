"""Progress of long steps: the engine's progress callback (k-means, kNN, DBSCAN), the reporter
(a bar in a terminal, log lines otherwise, nothing when quiet), ``verbose`` / ``--quiet``, and
results that do not depend on any of it. Oracles: the same call without progress, numpy brute
force and scikit-learn."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from sklearn.cluster import DBSCAN as SkDBSCAN

import embedcluster as ec
from embedcluster import _core, _progress
from embedcluster.cli import main


@pytest.fixture
def every_poll():
    """The engine reports at every poll (not every 50 ms), so short calls report many times."""
    previous = _core._set_poll_interval(0.0)
    yield
    _core._set_poll_interval(previous)


@pytest.fixture
def log_at_once(monkeypatch):
    """The reporter writes its log lines without waiting (thresholds in seconds set to 0)."""
    for name in ("LOG_AFTER_S", "LOG_MIN_GAP_S", "LOG_EVERY_S"):
        monkeypatch.setattr(_progress, name, 0.0)


def _blobs(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 6.0
    return (centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)


def _check_reports(calls: list) -> None:
    """Within each step (name, index), done and total never go down and done <= total; the last
    report is complete (done == total > 0)."""
    assert calls, "no progress report"
    for step, index, count, done, total in calls:
        assert isinstance(step, str) and 0 <= done <= total and 0 <= index <= count
    for a, b in zip(calls, calls[1:]):
        if a[:2] == b[:2]:
            assert b[3] >= a[3] and b[4] >= a[4], (a, b)
    last = calls[-1]
    assert last[3] == last[4] > 0, last


def test_kmeans_reports_seeding_then_each_iteration(every_poll):
    X = _blobs(3000, 16, 6)
    calls: list = []
    r = _core.kmeans_fit(X, 6, max_iter=50, seed=3, n_threads=1, progress=lambda *a: calls.append(a))
    _check_reports(calls)
    steps = [c[0] for c in calls]
    assert steps[0] == "k-means++ seeding" and "k-means iteration" in steps
    iterations = [c[1] for c in calls if c[0] == "k-means iteration"]
    assert iterations == sorted(iterations) and max(iterations) == r.n_iter
    assert {c[2] for c in calls if c[0] == "k-means iteration"} == {50}
    seeding = [c[1] for c in calls if c[0] == "k-means++ seeding"]
    assert seeding == sorted(seeding) and max(seeding) == 6
    # The same result as without progress; labels are the nearest returned centre (numpy).
    plain = _core.kmeans_fit(X, 6, max_iter=50, seed=3, n_threads=1)
    assert np.array_equal(r.labels, plain.labels) and np.array_equal(r.centers, plain.centers)
    assert r.inertia == plain.inertia
    d2 = ((X[:, None, :].astype(np.float64) - r.centers[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(r.labels, d2.argmin(1))


def test_kmeans_parallel_seeding_keeps_its_inner_kmeans_in_its_step(every_poll):
    """k-means|| refines its candidates with a small k-means: that counts into the seeding step,
    so each run shows seeding, then its own iterations from 1, in order."""
    X = _blobs(4000, 8, 5)
    calls: list = []
    r = _core.kmeans_fit(X, 5, max_iter=30, n_init=2, init="k-means||", seed=1, n_threads=1,
                         progress=lambda *a: calls.append(a))
    _check_reports(calls)
    order = {"k-means|| seeding": 0, "k-means iteration": 1, "k-means final assignment": 2}
    assert {c[0] for c in calls} <= set(order)
    positions = [(order[c[0]], c[1]) for c in calls]
    backwards = [i for i in range(1, len(positions)) if positions[i] < positions[i - 1]]
    assert len(backwards) == 1 and calls[backwards[0]][0] == "k-means|| seeding"  # the second run
    plain = _core.kmeans_fit(X, 5, max_iter=30, n_init=2, init="k-means||", seed=1, n_threads=1)
    assert np.array_equal(r.labels, plain.labels) and np.array_equal(r.centers, plain.centers)


@pytest.mark.parametrize("self_join", [False, True])
def test_knn_reports_blocks_up_to_the_total(every_poll, self_join):
    rng = np.random.default_rng(1)
    db = rng.standard_normal((1500, 12)).astype(np.float32)
    q = db if self_join else rng.standard_normal((700, 12)).astype(np.float32)
    calls: list = []
    dist, idx = _core.knn_search(db, q, 4, n_threads=1, progress=lambda *a: calls.append(a))
    _check_reports(calls)
    assert {c[:3] for c in calls} == {("kNN search", 0, 0)}
    plain_dist, plain_idx = _core.knn_search(db, q, 4, n_threads=1)
    assert np.array_equal(idx, plain_idx) and np.array_equal(dist, plain_dist)
    d2 = ((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(idx, np.argsort(d2, axis=1, kind="stable")[:, :4])


def test_dbscan_reports_its_four_steps_in_order(every_poll):
    X = _blobs(2500, 8, 5, seed=2)
    calls: list = []
    r = _core.dbscan_fit(X, 2.5, 5, n_threads=1, progress=lambda *a: calls.append(a))
    _check_reports(calls)
    indices = [c[1] for c in calls]
    assert indices == sorted(indices) and set(indices) == {1, 2, 3, 4}
    assert {c[2] for c in calls} == {4} and calls[-1][0] == "DBSCAN clusters"
    plain = _core.dbscan_fit(X, 2.5, 5, n_threads=1)
    assert np.array_equal(r.labels, plain.labels) and np.array_equal(r.is_core, plain.is_core)
    sk = SkDBSCAN(eps=2.5, min_samples=5).fit(X)
    assert np.array_equal(np.flatnonzero(r.is_core), np.sort(sk.core_sample_indices_))


def test_final_report_comes_even_at_the_default_pace():
    X = _blobs(500, 4, 3)
    calls: list = []
    _core.knn_search(X, X[:50], 3, progress=lambda *a: calls.append(a))
    assert calls and calls[-1][3] == calls[-1][4] > 0


def test_an_exception_in_the_callback_stops_the_work_and_propagates(every_poll):
    X = _blobs(3000, 16, 4)

    def fail(*report):
        if report[3] >= 2:
            raise RuntimeError("progress callback failed")

    with pytest.raises(RuntimeError, match="progress callback failed"):
        _core.knn_search(X, X[:1000], 3, n_threads=1, progress=fail)
    _core.knn_search(X, X[:10], 3)  # the engine is still usable


def _kmeans(verbose):
    return ec.KMeans(4, n_init=2, random_state=0, verbose=verbose).fit(_blobs(2000, 8, 4))


def test_verbose_writes_log_lines_to_stderr_when_not_a_terminal(capsys, log_at_once):
    _kmeans(1)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("embedcluster: k-means")]
    assert lines, err
    assert any("iteration" in line and "%" in line for line in lines), lines
    assert "done in" in lines[-1] and "iterations" in lines[-1]


def test_log_lines_go_to_the_embedcluster_logger_when_it_takes_info(caplog, capsys, log_at_once):
    with caplog.at_level(logging.INFO, logger="embedcluster"):
        ec.DBSCAN(eps=2.5, verbose=True).fit(_blobs(2000, 8, 4))
    messages = [r.getMessage() for r in caplog.records if r.name == "embedcluster"]
    assert any(m.startswith("DBSCAN") and "%" in m for m in messages), messages
    assert "embedcluster:" not in capsys.readouterr().err  # not twice


@pytest.mark.parametrize("verbose", [0, False, None])
def test_quiet_writes_nothing(capsys, caplog, log_at_once, verbose):
    with caplog.at_level(logging.INFO, logger="embedcluster"):
        _kmeans(verbose)
        with _progress.scope(False):
            ec.NearestNeighbors(n_neighbors=3, verbose=verbose).fit(_blobs(500, 4, 2)).kneighbors()
    assert capsys.readouterr().err == ""
    assert not [r for r in caplog.records if r.name == "embedcluster"]


def test_verbose_none_follows_the_enclosing_scope_and_an_explicit_value_wins(capsys, log_at_once):
    with _progress.scope(True):
        _kmeans(None)
    assert "embedcluster: k-means" in capsys.readouterr().err
    with _progress.scope(True):
        _kmeans(0)
    assert capsys.readouterr().err == ""


def test_results_do_not_depend_on_verbose(capsys, log_at_once, every_poll):
    X = _blobs(2000, 8, 4, seed=5)
    a, b = (ec.KMeans(4, n_init=3, random_state=1, verbose=v).fit(X) for v in (0, 1))
    assert np.array_equal(a.labels_, b.labels_) and np.array_equal(a.cluster_centers_, b.cluster_centers_)
    a, b = (ec.DBSCAN(eps=2.0, verbose=v).fit(X) for v in (0, 1))
    assert np.array_equal(a.labels_, b.labels_)
    a, b = (ec.NearestNeighbors(n_neighbors=5, verbose=v).fit(X) for v in (0, 1))
    for (da, ia), (db, ib) in ((a.kneighbors(), b.kneighbors()), (a.kneighbors(X[:100]), b.kneighbors(X[:100]))):
        assert np.array_equal(ia, ib) and np.array_equal(da, db)


def test_bad_verbose_is_a_clear_error():
    with pytest.raises(ValueError, match="verbose"):
        ec.KMeans(2, verbose=-1).fit(_blobs(50, 2, 2))


def test_terminal_shows_a_bar(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(_progress, "_terminal", lambda: True)
    monkeypatch.setattr(_progress, "BAR_DELAY_S", 0.0)
    _kmeans(1)
    err = capsys.readouterr().err
    assert "k-means" in err and "%|" in err
    assert "embedcluster: " not in err  # a bar, not log lines


def test_counted_progress_and_named_steps(capsys, log_at_once):
    with _progress.Progress("embedding (test)", total=10, verbose=1, unit="row") as shown:
        for _ in range(5):
            shown.update(2)
    err = capsys.readouterr().err.splitlines()
    assert "embedcluster: embedding (test) 10/10 rows, 100%" in err
    assert list(_progress.shown_range(3, "epochs", verbose=0)) == [0, 1, 2]
    steps = _progress.Progress("report", total=2, verbose=1, unit="step")
    steps.begin("metrics")
    steps.begin("2-D map")
    steps.close()
    err = capsys.readouterr().err
    assert "embedcluster: report: 2-D map 1/2 steps, 50%" in err


def test_encoder_logs_when_not_a_terminal(capsys, log_at_once):
    from embedcluster.encoders import Encoder

    def double(batch):
        return np.asarray(batch, np.float32) * 2.0

    enc = Encoder(double, name="double")
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    out = enc.encode(X, batch_size=5)
    assert np.array_equal(out, X * 2.0)
    assert "embedcluster: embedding (double) 20/20 rows, 100%" in capsys.readouterr().err.splitlines()
    assert np.array_equal(enc.encode(X, batch_size=5, progress=False), X * 2.0)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flag", [None, "--quiet", "--no-progress", "-q"])
def test_cli_shows_progress_unless_quiet(tmp_path, capsys, log_at_once, flag):
    emb = tmp_path / "emb.npy"
    np.save(emb, _blobs(1500, 8, 3))
    argv = ["cluster", str(emb), "--n-clusters", "3", "--out", str(tmp_path / "labels.npy")]
    assert main(argv + ([flag] if flag else [])) == 0
    err = capsys.readouterr().err
    if flag:
        assert err == ""
    else:
        assert "embedcluster: k-means" in err
    labels = np.load(tmp_path / "labels.npy")
    plain = ec.KMeans(3, n_init=10, random_state=0).fit(np.load(emb)).labels_
    assert np.array_equal(labels, plain)


def test_ctrl_c_still_stops_native_work_that_reports_progress(capsys, log_at_once):
    """The poll that reports progress is the one that checks for Ctrl-C: with progress shown,
    SIGINT still raises KeyboardInterrupt out of the native fit."""
    import os
    import signal
    import threading

    if os.name != "posix":
        pytest.skip("needs POSIX signals")
    X = np.random.default_rng(0).standard_normal((60_000, 128)).astype(np.float32)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ec.KMeans(256, init="random", max_iter=300, tol=0, random_state=0, verbose=1).fit(X)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert "embedcluster: k-means" in capsys.readouterr().err


def test_cluster_head_reports_neighbours_and_epochs(capsys, log_at_once, monkeypatch):
    pytest.importorskip("torch")
    from embedcluster.transfer import heads

    # A few optimiser steps are enough to see the epochs reported (the fast tier stays fast).
    monkeypatch.setattr(heads, "_MIN_STEPS", 4)
    monkeypatch.setattr(heads, "_MIN_SELF_LABEL_STEPS", 2)
    Z = _blobs(300, 8, 3, seed=4)
    kw = dict(n_neighbors=5, epochs=2, n_heads=1, self_label_epochs=1, random_state=0)
    quiet = ec.ClusterHead(3, "scan", verbose=0, **kw).fit(Z)
    assert capsys.readouterr().err == ""
    shown = ec.ClusterHead(3, "scan", verbose=1, **kw).fit(Z)
    err = capsys.readouterr().err
    assert "embedcluster: kNN search" in err and "embedcluster: ClusterHead scan training" in err
    assert np.array_equal(quiet.labels_, shown.labels_)
    assert "verbose" not in shown.to_arrays()[1]["params"]  # a display setting, not saved


@pytest.mark.parametrize("progress", [True, False])
def test_transfer_clustering_progress_reaches_its_clusterer_and_probe(capsys, log_at_once, progress):
    pytest.importorskip("torch")
    from embedcluster.transfer.pipeline import TransferClustering

    Z = _blobs(400, 8, 3, seed=6)
    tc = TransferClustering(n_clusters=3, probe_epochs=3, progress=progress).fit(None, Z=Z)
    err = capsys.readouterr().err
    if progress:
        assert "embedcluster: k-means" in err and "embedcluster: probe training" in err
    else:
        assert err == ""
    quiet = TransferClustering(n_clusters=3, probe_epochs=3, verbose=0).fit(None, Z=Z)
    assert capsys.readouterr().err == ""
    assert np.array_equal(tc.labels_, quiet.labels_)
    assert np.array_equal(tc.predict(Z=Z), quiet.predict(Z=Z))


# ---- Work over chunks: streamed DBSCAN and k-means (memory maps, shards) and the Dask estimators.

_COUNTED = re.compile(r"^embedcluster: (.*) (\d+)/(\d+) ([a-z ]+), \d+%$")


def _counted_steps(err: str) -> dict:
    """The (done, total) reports of each counted step, keyed by its name (a k-means run number
    left out: the runs of one fit are one count): one list per time the step ran (its
    "... done in" line ends it)."""
    steps: dict = {}
    ended: set = set()
    for line in err.splitlines():
        m = _COUNTED.match(line)
        if m:
            name = re.sub(r" \(run \d+/\d+\)$", "", m.group(1))
            runs = steps.setdefault(name, [])
            if not runs or name in ended:
                runs.append([])
                ended.discard(name)
            runs[-1].append((int(m.group(2)), int(m.group(3))))
        elif line.startswith("embedcluster: ") and " done in " in line:
            ended.add(line[len("embedcluster: "):line.index(" done in ")])
    return steps


def _check_counts(steps: dict, names: list) -> None:
    """The named steps reported, each time with done counts that never go down, one total,
    and a last report at its total."""
    for name in names:
        assert name in steps, (name, sorted(steps))
        for reports in steps[name]:
            dones = [d for d, _ in reports]
            assert dones == sorted(dones), (name, reports)
            assert len({t for _, t in reports}) == 1 and reports[-1][0] == reports[-1][1] > 0, (name, reports)


def _no_lines(err: str, caplog) -> None:
    assert not [line for line in err.splitlines() if line.startswith("embedcluster:")], err
    assert not [r for r in caplog.records if r.name == "embedcluster"]


@pytest.fixture
def small_groups(monkeypatch):
    from embedcluster import _dbscan_groups

    monkeypatch.setattr(_dbscan_groups, "GROUP_ROWS", 250)  # many groups and pairs on small data


@pytest.mark.parametrize("whole", [False, True])
def test_streamed_dbscan_reports_its_passes_pairs_and_components(tmp_path, capsys, caplog, log_at_once, small_groups,
                                                                 monkeypatch, whole):
    import embedcluster.cluster.dbscan as dbscan_module

    X = _blobs(3000, 8, 5, seed=7)
    np.save(tmp_path / "x.npy", X)
    src = np.load(tmp_path / "x.npy", mmap_mode="r")
    monkeypatch.setattr(dbscan_module, "_streams", lambda X, limit: True)  # streamed although small
    kw = dict(eps=2.5, min_samples=5, memory_limit=None if whole else 1000, scratch_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="embedcluster"):
        quiet = ec.DBSCAN(**kw, verbose=0).fit(src)
    _no_lines(capsys.readouterr().err, caplog)
    shown = ec.DBSCAN(**kw, verbose=1).fit(src)
    err = capsys.readouterr().err
    steps = _counted_steps(err)
    phases = ["DBSCAN grouping rows", "DBSCAN writing the grouped copy"]
    phases += ["DBSCAN whole components"] if whole else ["DBSCAN group pairs: neighbour counts",
                                                         "DBSCAN group pairs: links"]
    _check_counts(steps, phases)
    assert steps["DBSCAN grouping rows"] == [[(a, 3000) for a in range(3000, 3001)]]  # one block of rows
    if whole:
        n_whole = shown.stats_["groups_components_whole"]
        assert steps["DBSCAN whole components"][0][-1][1] == n_whole
        assert f"embedcluster: DBSCAN whole component {n_whole}/{n_whole}: DBSCAN clusters 4/4, 100%" in err
    else:
        assert steps["DBSCAN group pairs: neighbour counts"][0][-1][1] == shown.stats_["groups_pairs"]
        assert steps["DBSCAN group pairs: links"][0][-1][1] == shown.stats_["groups_pairs_linked"]
    assert np.array_equal(shown.labels_, quiet.labels_)
    sk = SkDBSCAN(eps=2.5, min_samples=5).fit(X)
    assert np.array_equal(shown.core_sample_indices_, sk.core_sample_indices_)
    assert np.array_equal(shown.labels_ == -1, sk.labels_ == -1)


def test_streamed_kmeans_reports_seeding_rounds_and_iterations(tmp_path, capsys, caplog, log_at_once, monkeypatch):
    import embedcluster._chunked as chunked
    from embedcluster.data.sharded import ShardedArray

    X = _blobs(2000, 8, 4, seed=8)
    for i, (a, b) in enumerate([(0, 700), (700, 2000)]):
        np.save(tmp_path / f"s{i}.npy", X[a:b])
    shards = ShardedArray([np.load(tmp_path / f"s{i}.npy", mmap_mode="r") for i in range(2)])
    kw = dict(n_init=2, max_iter=40, random_state=3)
    with caplog.at_level(logging.INFO, logger="embedcluster"):
        quiet = ec.KMeans(4, **kw, verbose=0).fit(shards)
    _no_lines(capsys.readouterr().err, caplog)
    iterations: list = []  # counted where the loop reports them
    real = chunked.lloyd_over_chunks

    def counting(runner, init, p, progress=None, stats=None):
        def report(it, changed, shift):
            iterations.append(it)
            progress(it, changed, shift)

        return real(runner, init, p, report, stats)

    monkeypatch.setattr(chunked, "lloyd_over_chunks", counting)
    shown = ec.KMeans(4, **kw, verbose=1).fit(shards)
    err = capsys.readouterr().err
    steps = _counted_steps(err)
    _check_counts(steps, ["k-means|| seeding", "k-means"])
    assert len(steps["k-means|| seeding"]) == 2  # once a run
    assert steps["k-means"] == [steps["k-means"][0]] and steps["k-means"][0][-1] == (80, 80) and "(run 2/2)" in err
    assert iterations.count(1) == 2 and err.splitlines()[-1].endswith(f"({len(iterations)} iterations)")
    assert np.array_equal(shown.labels_, quiet.labels_)
    assert np.array_equal(shown.cluster_centers_, quiet.cluster_centers_)
    plain = ec.KMeans(4, init="k-means||", **kw).fit(X)  # the in-memory fit, same seeding
    assert np.array_equal(shown.labels_, plain.labels_)
    d2 = ((X[:, None, :].astype(np.float64) - shown.cluster_centers_[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(shown.labels_, d2.argmin(1))


def test_dask_estimators_report_as_results_arrive(client, capsys, caplog, log_at_once, small_groups):
    da = pytest.importorskip("dask.array")
    import embedcluster.dask as ecd

    X = _blobs(2400, 8, 4, seed=9)
    dX = da.from_array(X, chunks=(700, 8))

    def fit_all(verbose):
        return (ecd.KMeans(4, init="k-means||", n_init=2, max_iter=30, random_state=2, client=client,
                           verbose=verbose).fit(dX),
                ecd.NearestNeighbors(n_neighbors=4, client=client, verbose=verbose).fit(dX).kneighbors(),
                ecd.DBSCAN(eps=2.5, min_samples=5, max_component_bytes=0, client=client, verbose=verbose).fit(dX))

    with caplog.at_level(logging.INFO, logger="embedcluster"):
        fits = {0: fit_all(0)}
    _no_lines(capsys.readouterr().err, caplog)
    fits[1] = fit_all(1)
    steps = _counted_steps(capsys.readouterr().err)
    _check_counts(steps, ["k-means|| seeding", "k-means", "kNN search", "DBSCAN grouping rows",
                          "DBSCAN group pairs: neighbour counts", "DBSCAN group pairs: links"])
    assert steps["k-means"][0][-1] == (60, 60)
    assert steps["kNN search"][0][-1] == (4, 4) and steps["DBSCAN grouping rows"][0][-1] == (4, 4)  # 4 chunks
    (km0, (d0, i0), db0), (km1, (d1, i1), db1) = fits[0], fits[1]
    assert np.array_equal(km0.labels_, km1.labels_) and np.array_equal(km0.cluster_centers_, km1.cluster_centers_)
    assert np.array_equal(d0, d1) and np.array_equal(i0, i1)
    assert np.array_equal(db0.labels_, db1.labels_)
    assert steps["DBSCAN group pairs: neighbour counts"][0][-1][1] == db1.n_pairs_
    # the oracles: the in-memory fits
    assert np.array_equal(km1.labels_, ec.KMeans(4, init="k-means||", n_init=2, max_iter=30,
                                                 random_state=2).fit(X).labels_)
    assert np.array_equal(i1, ec.NearestNeighbors(n_neighbors=4).fit(X).kneighbors()[1])
    sk = SkDBSCAN(eps=2.5, min_samples=5).fit(X)
    assert np.array_equal(db1.core_sample_indices_, sk.core_sample_indices_)
    assert np.array_equal(db1.labels_ == -1, sk.labels_ == -1)


def test_waits_on_dask_tasks_tick_until_a_result_comes(client):
    """While a Dask step waits and no task finishes, the wait calls its tick (the progress
    heartbeat); here the task waits for an event that only the tick sets."""
    distributed = pytest.importorskip("distributed")
    import embedcluster.dask as ecd

    def wait_then_answer(name):
        from distributed import Event

        Event(name).wait()
        return 7

    event = distributed.Event("test-progress-tick", client=client)
    future = client.submit(wait_then_answer, "test-progress-tick", pure=False)
    ticks: list = []

    def tick():
        ticks.append(1)
        event.set()

    got = list(ecd.finished([future], tick, with_results=True))
    assert ticks and [r for _, r in got] == [7]
    assert [f.result() for f in ecd.finished([client.submit(abs, -3)])] == [3]  # no tick: no polling
