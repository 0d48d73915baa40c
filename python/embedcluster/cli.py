"""Command line of embedcluster: demo, embed, cluster, evaluate, probe, run, predict, info."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line on stderr, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} should be >= {lo}")
        return v
    return parse


def _real_in(lo: float, hi: float = math.inf, lo_open: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or (v <= lo if lo_open else v < lo) or v > hi:
            rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi == math.inf else ']'}"
            raise argparse.ArgumentTypeError(f"{text} should be a finite number in {rng}")
        return v
    return parse


_POSITIVE = _int_at_least(1)


def _require(modules: List[str], why: str) -> None:
    """Fails before any work when an optional dependency is missing."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            pip = {"matplotlib": "matplotlib", "torch": "torch==2.13.0", "safetensors": "safetensors",
                   "PIL": "pillow", "tqdm": "tqdm"}.get(name, name)
            raise ImportError(f"{why} needs {name}, which is not installed ({e}); install it with "
                              f"pip install {pip}, or pip install 'embedcluster[transfer]'") from None


def _output_file(path: Optional[str], what: str) -> None:
    """Checks an output file path before any work: its folder exists, and the path is absent
    or a regular file (a directory, link, device or FIFO is never replaced)."""
    if path is None:
        return
    from ._io import check_output_path

    p = check_output_path(path)
    if not p.parent.is_dir():
        raise FileNotFoundError(f"cannot write {what} {p}: folder {p.parent} does not exist; create it first")


def _output_dir(path: Optional[str], what: str) -> None:
    """An output folder must be absent or a real directory (not a file, link or device)."""
    if path is None:
        return
    import stat

    from ._io import UnsafePathError

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{what} {path} exists and is not a directory; give a folder path")


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import build_info

    info = build_info()
    if args.json:
        from ._io import dumps

        print(dumps(info, allow_nan=True))
        return 0
    b = info["build"]
    print(f"embedcluster {info['version']}  (Python {info['python']}, {info['platform']})")
    if info["native"]:
        print(f"  native engine : {b.get('compiler', '?')}; flags: {b.get('build_flags', '?')}")
        print(f"  OpenMP        : {'yes (' + str(b.get('openmp_version')) + ')' if b.get('openmp') else 'no'}; "
              f"threads: {b.get('max_threads')} of {info['cpu_count']} CPUs")
        print(f"  CPU features  : {', '.join(b.get('cpu_features', [])) or 'none detected'}")
        print(f"  kernels       : {b.get('kernels_active')} (available: {', '.join(b.get('kernels_available', []))})")
        print(f"  -march=native : {'yes' if b.get('march_native') else 'no (portable build, run-time dispatch)'}")
        print(f"  CUDA          : {'compiled' if b.get('cuda_compiled') else 'not compiled'}")
    else:
        print(f"  native engine : NOT AVAILABLE ({info['native_error']})")
    print(f"  backends      : {', '.join(info['backends']) or 'none'}")
    for k, v in sorted(info["environment"].items()):
        print(f"  env {k}={v}")
    return 0


def _emit(args: argparse.Namespace, result: Dict[str, Any], lines: List[str]) -> int:
    """Prints the result as JSON (--json) or as human lines."""
    if getattr(args, "json", False):
        from ._io import dumps

        print(dumps(result, allow_nan=True))
    else:
        for line in lines:
            print(line)
    return 0


def _load_npy(path: str, what: str):
    """Embeddings (2-D, memory-mapped) or labels (1-D integers), with the .npy header checked
    against the file before anything is read (embedcluster.data)."""
    import numpy as np

    from .data.arrays import _load_npy_file

    if what == "embeddings":
        arr = _load_npy_file(Path(path), mmap=True)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"embeddings file {path} should hold a non-empty 2-D array (n, d), got shape {arr.shape}")
        return arr
    arr = _load_npy_file(Path(path), mmap=False, labels=True)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} file {path} should hold a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    return arr


def _save_npy(path: str, arr) -> None:
    import io

    import numpy as np

    from ._io import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _metric_line(name: str, rep: Dict[str, Any]) -> str:
    return f"{name:44s} ACC {rep['accuracy']:.3f}  NMI {rep['nmi']:.3f}  ARI {rep['ari']:.3f}"


def _cmd_embed(args: argparse.Namespace) -> int:
    from .data import load
    from .pipeline import TransferClustering

    _output_file(args.out, "embeddings")
    _output_file(args.labels_out, "labels")
    if args.encoder:
        _require(["torch"], "an encoder")
    ds = load(args.data)
    tc = TransferClustering(encoder=args.encoder, normalize=args.normalize, batch_size=args.batch_size,
                            cache_dir=args.cache_dir, progress=not args.no_progress)
    Z = tc.embed(ds)
    _save_npy(args.out, Z)
    if ds.y is not None and args.labels_out:
        _save_npy(args.labels_out, ds.y)
    return _emit(args, {"out": args.out, "shape": list(Z.shape), "source": ds.source},
                 [f"embedded {len(Z)} items from {ds.source} -> {args.out} {tuple(Z.shape)}"])


def _cmd_cluster(args: argparse.Namespace) -> int:
    from .cluster import DBSCAN, KMeans

    _output_file(args.out, "labels")
    Z = _load_npy(args.embeddings, "embeddings")
    if args.algorithm == "kmeans":
        est = KMeans(args.n_clusters, n_init=args.n_init, metric=args.metric, random_state=args.seed)
    else:
        est = DBSCAN(eps=args.eps, min_samples=args.min_samples,
                     metric="euclidean" if args.metric == "l2" else args.metric)
    labels = est.fit(Z).labels_
    _save_npy(args.out, labels)
    res = {"out": args.out, "n_points": int(len(labels)), "n_clusters": int(len(set(labels.tolist()) - {-1})),
           "n_noise": int((labels == -1).sum())}
    if args.algorithm == "kmeans":
        res["inertia"] = est.inertia_
        res["n_iter"] = est.n_iter_
    return _emit(args, res, [f"{res['n_clusters']} clusters, {res['n_noise']} noise points -> {args.out}"])


def _same_length(a, b, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} entries but {name_b} has {len(b)}; they must describe the same points")


def _truth(spec: str):
    if spec.endswith(".npy"):
        return _load_npy(spec, "labels")
    from .data import load

    y = load(spec).y
    if y is None:
        raise ValueError(f"{spec} has no labels to evaluate against")
    return y


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import metrics

    pred = _load_npy(args.labels, "labels")
    truth = _truth(args.truth)
    _same_length(pred, truth, args.labels, args.truth)
    rep = metrics.clustering_report(truth, pred)
    lines = [_metric_line("clusters", rep), f"  purity {rep['purity']:.3f}  V-measure {rep['v_measure']:.3f}"]
    return _emit(args, rep, lines)


def _cmd_probe(args: argparse.Namespace) -> int:
    _output_dir(args.out, "--out")
    _require(["torch"], "training a probe")
    import numpy as np

    from . import metrics
    from ._io import save_json, save_safetensors
    from .probe import self_label

    Z = np.ascontiguousarray(_load_npy(args.embeddings, "embeddings"), np.float32)
    labels = _load_npy(args.labels, "labels").astype(np.int64)
    _same_length(labels, Z, args.labels, args.embeddings)
    truth = _truth(args.truth) if args.truth else None
    if truth is not None:
        _same_length(truth, Z, args.truth, args.embeddings)
    if labels.min() < -1:
        raise ValueError(f"{args.labels} holds label {labels.min()}; cluster labels are >= 0, and -1 marks noise")
    ids, inverse = np.unique(labels, return_inverse=True)  # by distinct value, never by the largest
    if ids[0] == -1:
        ids, inverse = ids[1:], inverse - 1
    if len(ids) == 0:
        raise ValueError(f"{args.labels} holds only noise (-1); there is no cluster to train a probe on")
    lab = np.where(labels >= 0, inverse, -1)
    centers = np.stack([Z[lab == i].mean(0) for i in range(len(ids))])
    probe, _ = self_label(Z, lab, centers, n_rounds=args.rounds, fraction=args.fraction, weighting=args.weighting,
                          epochs=args.epochs, seed=args.seed)
    arrays, cfg = probe.to_arrays()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(out / "probe.safetensors", arrays, {"format": "embedcluster-probe"})
    save_json(out / "probe.json", {**cfg, "cluster_ids": ids.tolist()})
    pred = ids[probe.predict(Z)]
    res: Dict[str, Any] = {"out": str(out), "agreement_with_clusters": float((pred == labels).mean())}
    lines = [f"probe trained on {len(Z)} points ({len(ids)} clusters) -> {out}",
             f"agrees with the clusters on {res['agreement_with_clusters']:.3f} of the points"]
    if truth is not None:
        y = truth
        res["clusters"] = metrics.clustering_report(y, labels)
        res["probe"] = metrics.clustering_report(y, pred)
        lines += [_metric_line("clusters", res["clusters"]), _metric_line("probe", res["probe"])]
    return _emit(args, res, lines)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Every key a run config may hold: (check, the rule as the message states it).
_RUN_KEYS: Dict[str, Any] = {
    "data": (lambda v: isinstance(v, str) and v != "", "a data path or name (string)"),
    "encoder": (lambda v: v is None or (isinstance(v, str) and v != ""), "an encoder spec (string) or null"),
    "n_clusters": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 (or null: the number of classes)"),
    "algorithm": (lambda v: v in ("kmeans", "dbscan"), "'kmeans' or 'dbscan'"),
    "eps": (lambda v: _is_real(v) and v > 0, "a finite number > 0"),
    "min_samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "normalize": (lambda v: isinstance(v, bool), "true or false"),
    "probe": (lambda v: isinstance(v, bool), "true or false"),
    "probe_rounds": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "out": (lambda v: isinstance(v, str) and v != "", "an output folder (string)"),
    "cache_dir": (lambda v: v is None or (isinstance(v, str) and v != ""), "a folder (string) or null"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2 ** 32, "an integer in [0, 2^32)"),
    "report": (lambda v: isinstance(v, bool), "true or false"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}


def _check_run_config(cfg: Any, source: str) -> Dict[str, Any]:
    """Every key known and every value of the right type and range, before any work."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source} should hold a JSON object of settings, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(_RUN_KEYS))
    if unknown:
        raise ValueError(f"unknown keys in {source}: {unknown}; known: {sorted(_RUN_KEYS)}")
    for key, value in cfg.items():
        check, rule = _RUN_KEYS[key]
        if not check(value):
            raise ValueError(f"{source}: {key!r} is {json.dumps(value)}; it should be {rule}")
    return cfg


def _run_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Flags on top of a JSON config file when one is given (flags win); validated whole."""
    cfg: Dict[str, Any] = {}
    if args.config:
        from ._io import load_json

        cfg = dict(_check_run_config(load_json(args.config), args.config))
    for k in ("data", "encoder", "n_clusters", "algorithm", "eps", "min_samples", "out", "cache_dir", "seed",
              "batch_size", "probe_rounds"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    if args.no_normalize:
        cfg["normalize"] = False
    if args.no_probe:
        cfg["probe"] = False
    if args.no_report:
        cfg["report"] = False
    for need in ("data", "out"):
        if need not in cfg:
            raise ValueError(f"run needs {need}: pass {'DATA' if need == 'data' else '--out'} or put "
                             f"{need!r} in the config file")
    if cfg.get("algorithm", "kmeans") != "dbscan" and ("eps" in cfg or "min_samples" in cfg):
        raise ValueError("eps and min_samples are DBSCAN settings; add algorithm 'dbscan' (--algorithm dbscan) "
                         "or remove them")
    _check_run_config(cfg, "the run settings")
    _output_dir(cfg["out"], "--out")
    needs = (["torch"] if cfg.get("encoder") or cfg.get("probe", True) else []) + \
        (["matplotlib"] if cfg.get("report", True) else [])
    _require(needs, "this run (encoder, probe or report)")
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _run_config(args)  # validated, optional dependencies present, before any work
    from .cluster import DBSCAN, KMeans
    from .data import load
    from .pipeline import TransferClustering
    from .report import write_report

    ds = load(cfg["data"])
    k = cfg.get("n_clusters") or (len(ds.class_names) if ds.class_names else 8)
    seed = cfg.get("seed", 0)
    clusterer = (DBSCAN(eps=cfg.get("eps", 0.5), min_samples=cfg.get("min_samples", 5))
                 if cfg.get("algorithm", "kmeans") == "dbscan" else KMeans(k, n_init=10, random_state=seed))
    tc = TransferClustering(encoder=cfg.get("encoder"), clusterer=clusterer, probe=cfg.get("probe", True),
                            normalize=cfg.get("normalize", True), probe_rounds=cfg.get("probe_rounds", 1),
                            cache_dir=cfg.get("cache_dir"), batch_size=cfg.get("batch_size", 256),
                            progress=not args.no_progress, seed=seed)
    tc.fit(ds)
    out = Path(cfg["out"])
    tc.save(out / "pipeline")
    res: Dict[str, Any] = {"data": ds.source, "n_points": len(ds), "n_clusters": int(tc.centers_.shape[0]),
                           "pipeline": str(out / "pipeline")}
    lines = [f"{len(ds)} items from {ds.source}: {res['n_clusters']} clusters; pipeline saved to {out / 'pipeline'}"]
    if ds.y is not None:
        ev = tc.evaluate(y=ds.y)
        res.update(ev)
        lines.append(_metric_line("clusters", ev["clusters"]))
        if "probe" in ev:
            lines.append(_metric_line("probe on pseudo-labels", ev["probe"]))
    if cfg.get("report", True):
        path = write_report(out / "report", tc.labels_, labels_true=ds.y, embeddings=tc.embeddings_,
                            images=ds.X if ds.kind == "images" else None, texts=ds.texts,
                            class_names=ds.class_names, title=f"embedcluster run: {ds.source}")
        res["report"] = str(path)
        lines.append(f"report: {path}")
    from ._io import save_json

    save_json(out / "metrics.json", res)
    return _emit(args, res, lines)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .data import load
    from .pipeline import TransferClustering

    _output_file(args.out, "labels")
    tc = TransferClustering.load(args.pipeline)
    tc.progress = not args.no_progress
    ds = load(args.data)
    pred = tc.predict(ds, flag_unknown=args.flag_unknown)
    if args.out:
        _save_npy(args.out, pred)
    res: Dict[str, Any] = {"n_points": int(len(pred)), "n_unknown": int((pred == -1).sum())}
    lines = [f"{len(pred)} items predicted" + (f" -> {args.out}" if args.out else "")
             + (f"; {res['n_unknown']} flagged unknown" if args.flag_unknown else "")]
    if not args.out:
        res["labels"] = pred.tolist()
        lines.append(" ".join(map(str, pred.tolist()[:50])) + (" ..." if len(pred) > 50 else ""))
    return _emit(args, res, lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    """The transfer story on scikit-learn's digits (shipped with scikit-learn, no download)."""
    _output_dir(args.out, "--out")
    _require(["torch", "matplotlib"], "the demo")
    import time

    import numpy as np

    from . import metrics
    from .data import Dataset, load_digits_dataset
    from .encoders import save_checkpoint
    from .pipeline import TransferClustering
    from .pretrain import pretrain_supervised
    from .report import write_report

    t0 = time.perf_counter()
    digits = load_digits_dataset()
    # 8x8 images with values 0..16 -> uint8 0..255, the scale every encoder here expects.
    img = np.rint(np.asarray(digits.X, np.float32) * (255.0 / 16.0)).astype(np.uint8)
    ds = Dataset(X=img, y=digits.y, kind="images", class_names=digits.class_names, source="digits")
    source, target = ds.select_classes([0, 1, 2, 3, 4]), ds.select_classes([5, 6, 7, 8, 9])
    out = Path(args.out)
    rows: List[Dict[str, Any]] = []

    def score(name: str, labels, seconds: float) -> Dict[str, Any]:
        rep = metrics.clustering_report(target.y, labels)
        row = {"method": name, "accuracy": rep["accuracy"], "nmi": rep["nmi"], "ari": rep["ari"], "seconds": seconds}
        rows.append(row)
        return row

    t = time.perf_counter()
    raw = TransferClustering(n_clusters=5, normalize=False, progress=False, seed=args.seed).fit(target)
    score("k-means on raw pixels", raw.labels_, time.perf_counter() - t)
    score("  + linear probe on pseudo-labels", raw.probe_.predict(raw.embeddings_), 0.0)

    # The source task: an MLP trained with labels on digits 0-4 only.
    t = time.perf_counter()
    config = {"arch": "mlp", "in_shape": [8, 8], "hidden": [256, 128], "embed_dim": 64}
    enc, _ = pretrain_supervised(source.X, source.y, config, epochs=30, seed=args.seed, progress=False)
    ckpt = save_checkpoint(enc, out / "encoder", enc.config, embedding_layer="concat")
    pre_s = time.perf_counter() - t
    t = time.perf_counter()
    tc = TransferClustering(encoder=str(ckpt), n_clusters=5, progress=False, seed=args.seed).fit(target)
    score("k-means on transferred embeddings (0-4 encoder)", tc.labels_, time.perf_counter() - t)
    score("  + linear probe on pseudo-labels", tc.probe_.predict(tc.embeddings_), 0.0)
    tc.save(out / "pipeline")
    report = write_report(out / "report", tc.labels_, labels_true=target.y, embeddings=tc.embeddings_,
                          images=target.X, class_names=target.class_names, comparison=rows,
                          title="embedcluster demo: transfer from digits 0-4 to unseen digits 5-9",
                          notes=["An MLP was trained with labels on digits 0-4 (the source task), then used "
                                 "without labels to cluster digits 5-9, which it never saw. The maps and "
                                 "samples below are for the transferred embeddings."])
    result = {"rows": rows, "pretrain_seconds": pre_s, "total_seconds": time.perf_counter() - t0,
              "report": str(report), "pipeline": str(out / "pipeline"), "encoder": str(ckpt)}
    if args.json:
        from ._io import dumps

        print(dumps(result, allow_nan=True))
        return 0
    print("embedcluster demo: scikit-learn digits. Source task: digits 0-4 with labels (an MLP is trained);")
    print("target: digits 5-9, never seen by the encoder, clustered without labels (k=5).")
    print("Labels of 5-9 are used only to score.\n")
    print(f"{'method':50s} {'ACC':>6s} {'NMI':>6s} {'ARI':>6s}")
    for r in rows:
        print(f"{r['method']:50s} {r['accuracy']:6.3f} {r['nmi']:6.3f} {r['ari']:6.3f}")
    raw_best = max(r["accuracy"] for r in rows[:2])
    tr_best = max(r["accuracy"] for r in rows[2:])
    if raw_best >= tr_best:
        print(f"\nRaw pixels win here (ACC {raw_best:.3f} vs {tr_best:.3f}): 8x8 digits are already a good feature")
        print("space, and an encoder trained to separate 0-4 discards part of what separates 5-9. That is why the")
        print("raw baseline is always shown beside the transferred features.")
    else:
        print(f"\nThe transferred features win (ACC {tr_best:.3f} vs {raw_best:.3f} on raw pixels).")
    print(f"\npretraining {pre_s:.1f}s, total {result['total_seconds']:.1f}s")
    print(f"report:   {report}\npipeline: {out / 'pipeline'}  (embedcluster predict {out / 'pipeline'} DATA)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embedcluster`` command."""
    p = _Parser(prog="embedcluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pi = sub.add_parser("info", help="version, build options, CPU features, threads, backends",
                        description="Print what this installation is: version, build options, CPU features "
                                    "seen, threads, OpenMP, whether CUDA was compiled, and the backends available.")
    pi.add_argument("--json", action="store_true", help="print the report as JSON")
    pi.set_defaults(func=_cmd_info)
    pd = sub.add_parser("demo", help="the transfer story on scikit-learn's digits, with a report",
                        description="Pretrain an encoder with labels on digits 0-4 (the source task), cluster digits "
                                    "5-9 that it never saw without labels, and compare k-means on raw pixels, on the "
                                    "transferred embeddings, and after a linear probe trained on the pseudo-labels "
                                    "(accuracy after Hungarian matching, NMI, ARI). Writes an HTML report, the "
                                    "encoder checkpoint and the fitted pipeline. No download.")
    pd.add_argument("--out", default="embedcluster-demo", help="output folder (default ./embedcluster-demo)")
    pd.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    pd.add_argument("--json", action="store_true", help="print the results as JSON")
    pd.set_defaults(func=_cmd_demo)

    def data_help(what: str) -> str:
        return (f"{what}: a .npy file, a folder of .npy shards or images, IDX files, a .txt / .csv / .jsonl file, "
                "'digits' or 'fashion-mnist[:train|test]'")

    pe = sub.add_parser("embed", help="embed a data set with an encoder", description="Embed DATA with ENCODER and "
                        "save the embeddings as a .npy file (float32). Embeddings are cached on disk with --cache-dir.")
    pe.add_argument("data", help=data_help("DATA"))
    pe.add_argument("--encoder", help="TorchScript file, embedcluster checkpoint folder, sentence-transformers "
                    "folder, 'all-MiniLM-L6-v2', 'torchvision:NAME' / 'timm:NAME' with local weights; none: raw features")
    pe.add_argument("--out", required=True, help="where to write the embeddings (.npy)")
    pe.add_argument("--labels-out", help="also write the data's true labels here (.npy), when it has them")
    pe.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    pe.add_argument("--batch-size", type=_POSITIVE, default=256, help="items per forward pass (default 256)")
    pe.add_argument("--cache-dir", help="embedding cache folder: a second run with the same encoder and data is instant")
    pe.add_argument("--no-progress", action="store_true", help="no progress bar")
    pe.add_argument("--json", action="store_true", help="print the result as JSON")
    pe.set_defaults(func=_cmd_embed)

    pc = sub.add_parser("cluster", help="cluster embeddings (k-means or DBSCAN)",
                        description="Cluster the rows of EMBEDDINGS (.npy) and write the labels (.npy, -1 = noise).")
    pc.add_argument("embeddings", help="embeddings (.npy, n x d)")
    pc.add_argument("--algorithm", choices=["kmeans", "dbscan"], default="kmeans", help="default kmeans")
    pc.add_argument("--n-clusters", type=_POSITIVE, default=8, help="k for k-means (default 8)")
    pc.add_argument("--n-init", type=_POSITIVE, default=10, help="k-means restarts, the lowest inertia wins (default 10)")
    pc.add_argument("--eps", type=_real_in(0.0), default=0.5, help="DBSCAN radius (default 0.5)")
    pc.add_argument("--min-samples", type=_POSITIVE, default=5, help="DBSCAN core threshold (default 5)")
    pc.add_argument("--metric", choices=["l2", "cosine"], default="l2", help="default l2")
    pc.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    pc.add_argument("--out", required=True, help="where to write the labels (.npy)")
    pc.add_argument("--json", action="store_true", help="print the result as JSON")
    pc.set_defaults(func=_cmd_cluster)

    pv = sub.add_parser("evaluate", help="score cluster labels against true labels",
                        description="Accuracy after Hungarian matching, NMI, ARI, V-measure, purity and per-class "
                                    "precision / recall / F1 of LABELS against TRUTH.")
    pv.add_argument("--labels", required=True, help="predicted cluster labels (.npy)")
    pv.add_argument("--truth", required=True, help="true labels (.npy) or " + data_help("a data set with labels"))
    pv.add_argument("--json", action="store_true", help="print the full report as JSON")
    pv.set_defaults(func=_cmd_evaluate)

    pp = sub.add_parser("probe", help="train a linear probe on cluster pseudo-labels",
                        description="Train a linear probe on EMBEDDINGS with the cluster LABELS as pseudo-labels "
                                    "(points weighted by their distance margin, optional self-labeling rounds) and "
                                    "save it (safetensors + JSON).")
    pp.add_argument("embeddings", help="embeddings (.npy)")
    pp.add_argument("--labels", required=True, help="cluster labels (.npy); -1 (noise) is not trained on")
    pp.add_argument("--out", required=True, help="output folder for probe.safetensors + probe.json")
    pp.add_argument("--truth", help="true labels (.npy or a data set) to score clusters and probe")
    pp.add_argument("--rounds", type=_POSITIVE, default=1, help="self-labeling rounds (default 1)")
    pp.add_argument("--fraction", type=_real_in(0.0, 1.0), default=0.5, help="confident share per cluster (default 0.5)")
    pp.add_argument("--weighting", choices=["margin", "select"], default="margin",
                    help="margin: every point weighted by confidence (default); select: confident points only")
    pp.add_argument("--epochs", type=_POSITIVE, default=100, help="probe training epochs (default 100)")
    pp.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    pp.add_argument("--json", action="store_true", help="print the result as JSON")
    pp.set_defaults(func=_cmd_probe)

    pr = sub.add_parser("run", help="the whole chain: embed, cluster, probe, evaluate, save, report",
                        description="Embed DATA, cluster, train the probe, evaluate when labels exist, save the "
                                    "pipeline (OUT/pipeline), the metrics (OUT/metrics.json) and the HTML report "
                                    "(OUT/report). Settings come from flags and/or a JSON config file (--config) "
                                    "with the same names (flags win).")
    pr.add_argument("data", nargs="?", help=data_help("DATA"))
    pr.add_argument("--config", help="JSON file with any of: data, encoder, n_clusters, algorithm, eps, "
                    "min_samples, normalize, probe, probe_rounds, out, cache_dir, seed, report, batch_size")
    pr.add_argument("--encoder", help="encoder spec (see `embedcluster embed --help`); none: raw features")
    pr.add_argument("--n-clusters", type=_POSITIVE, help="k (default: the number of classes when known, else 8)")
    pr.add_argument("--algorithm", choices=["kmeans", "dbscan"], help="default kmeans")
    pr.add_argument("--eps", type=_real_in(0.0), help="DBSCAN radius")
    pr.add_argument("--min-samples", type=_POSITIVE, help="DBSCAN core threshold")
    pr.add_argument("--probe-rounds", type=_POSITIVE, help="self-labeling rounds (default 1)")
    pr.add_argument("--no-normalize", action="store_true", help="do not L2-normalise embeddings")
    pr.add_argument("--no-probe", action="store_true", help="no linear probe")
    pr.add_argument("--no-report", action="store_true", help="no HTML report")
    pr.add_argument("--cache-dir", help="embedding cache folder")
    pr.add_argument("--batch-size", type=_POSITIVE, help="items per forward pass (default 256)")
    pr.add_argument("--seed", type=_int_at_least(0), help="random seed (default 0)")
    pr.add_argument("--out", help="output folder")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.add_argument("--json", action="store_true", help="print the results as JSON")
    pr.set_defaults(func=_cmd_run)

    pq = sub.add_parser("predict", help="assign new data to the clusters of a saved pipeline",
                        description="Load a pipeline saved by `run` (or TransferClustering.save) and predict the "
                                    "cluster of every item of DATA. With --flag-unknown, items farther from every "
                                    "cluster centre than the pipeline's threshold get -1.")
    pq.add_argument("pipeline", help="pipeline folder")
    pq.add_argument("data", help=data_help("DATA"))
    pq.add_argument("--out", help="write the labels here (.npy); otherwise they are printed")
    pq.add_argument("--flag-unknown", action="store_true", help="label items far from every cluster -1")
    pq.add_argument("--no-progress", action="store_true", help="no progress bar")
    pq.add_argument("--json", action="store_true", help="print the result as JSON")
    pq.set_defaults(func=_cmd_predict)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``embedcluster`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"embedcluster {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the contract: one line on stderr, exit code 2, never a traceback
        print(f"embedcluster {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        logging.getLogger("embedcluster").debug("error details", exc_info=True)
        return 2


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    known = (ValueError, TypeError, FileNotFoundError, ImportError, MemoryError, PermissionError)
    if not text:
        text = type(exc).__name__
    elif not isinstance(exc, known):
        text = f"{type(exc).__name__}: {text}"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
