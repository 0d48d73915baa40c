"""`embedcluster bench`: embedcluster side by side with faiss-cpu and scikit-learn on this machine
(the cases, data and checks live in :mod:`embedcluster.bench`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List

from ._common import POSITIVE, check_output_file, int_at_least, real_in, set_command

CASE_NAMES = ("kmeans", "knn", "dbscan")


def _cases(text: str) -> List[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASE_NAMES))
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown or [text]}; choose from {','.join(CASE_NAMES)}")
    return list(dict.fromkeys(cases))


def _check_sizes(cfg: Any) -> None:
    """Sizes each case needs, checked before any work."""
    for case in cfg.cases:
        n = cfg.size(case)
        if case == "kmeans" and cfg.k > n:
            raise ValueError(f"--k {cfg.k} needs --n >= {cfg.k} rows (kmeans has n={n})")
        if case == "knn" and cfg.n_neighbors + 1 > n:
            raise ValueError(f"--n-neighbors {cfg.n_neighbors} needs --n >= {cfg.n_neighbors + 1} rows "
                             f"(knn has n={n}; each point leaves itself out)")


def _table(report: Dict[str, Any]) -> List[str]:
    """The printed table: one line per case and engine."""
    lines = [f"{'case':8s} {'engine':34s} {'median s':>9s} {'ratio':>7s}  check"]
    for case, res in report["cases"].items():
        for name, run in res["engines"].items():
            check = {True: "ok", False: "DISAGREES", None: ""}[run["agrees"]]
            ratio = "" if run["ratio"] is None else f"{run['ratio']:.2f}x"
            lines.append(f"{case:8s} {name:34s} {run['median_s']:9.3f} {ratio:>7s}  "
                         f"{check}{': ' if check and run['check'] else ''}{run['check']}")
    return lines


def _header(report: Dict[str, Any]) -> List[str]:
    env, cfg = report["environment"], report["config"]
    cpu, ks, ver = env["cpu"], env["kernel_sets"], env["versions"]
    sizes = ", ".join(f"{c} n={r['n']:,}" for c, r in report["cases"].items())
    lines = [f"embedcluster bench: {cpu['model']} ({cpu['simd']}; {', '.join(cpu['flags'])}), "
             f"{env['threads']['every_engine']} threads for every engine",
             f"  kernel sets: available {', '.join(ks.get('available', []))}; active {ks.get('active')}"
             + (f"; chosen {ks['chosen']}" if "chosen" in ks else ""),
             "  versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v),
             f"  {sizes}; d={cfg['d']}, k={cfg['k']} ({cfg['iters']} Lloyd iterations), "
             f"{cfg['n_neighbors']}-NN, DBSCAN eps={cfg['eps']} min_samples={cfg['min_samples']}; "
             f"median of {cfg['repeats']}"]
    for name, why in report["peers_missing"].items():
        lines.append(f"  {name}: {why}")
    return lines


def _cmd_bench(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    from .. import bench

    cfg = bench.Config(cases=tuple(args.cases), n=args.n, d=args.d, k=args.k, iters=args.iters,
                       n_neighbors=args.n_neighbors, eps=args.eps, min_samples=args.min_samples,
                       repeats=args.repeats, threads=args.threads, seed=args.seed)
    _check_sizes(cfg)
    log = (lambda s: None) if args.json else (lambda s: print(f"... {s}", file=sys.stderr, flush=True))
    report = bench.run_benchmark(cfg, log=log, faiss_both_ways=not args.no_openblas_retry)
    disagree = [f"{case}/{name}" for case, res in report["cases"].items()
                for name, run in res["engines"].items() if run["agrees"] is False]
    report["disagreements"] = disagree
    if args.out:
        import json

        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=bench.json_default)
            f.write("\n")
    if args.json:
        from .._io import dumps

        print(dumps(report, allow_nan=True))
    else:
        lines = _header(report) + [""] + _table(report)
        lines += [f"WARNING: {w}" for w in report["warnings"]]
        lines.append("ratio = engine time / embedcluster time (> 1: embedcluster is faster)")
        if disagree:
            lines.append(f"RESULTS DISAGREE: {', '.join(disagree)}")
        if args.out:
            lines.append(f"wrote {args.out}")
        print("\n".join(lines))
    return 1 if disagree else 0


def add_parser(sub: Any) -> None:
    """The sub-command bench."""
    pb = sub.add_parser(
        "bench", help="time k-means, kNN and DBSCAN against faiss-cpu and scikit-learn on this machine",
        description="Time embedcluster's k-means, exact kNN self-join and DBSCAN on synthetic embeddings "
                    "(unit vectors in clusters, generated here) beside faiss-cpu and scikit-learn when they "
                    "are installed, in one process, on the same threads; print medians, ratios and whether "
                    "the results agree (k-means inertia vs scikit-learn's Lloyd from the same init, "
                    "neighbours identical up to ties, identical DBSCAN core points). Exit code 1 when a "
                    "check fails. The defaults take about two minutes on two cores.")
    pb.add_argument("--cases", type=_cases, default=list(CASE_NAMES),
                    help="comma-separated cases among kmeans,knn,dbscan (default: all)")
    pb.add_argument("--n", type=POSITIVE, default=None,
                    help="rows of every case (default: kmeans 50000, knn 20000, dbscan 10000)")
    pb.add_argument("--d", type=POSITIVE, default=384, help="dimensions (default 384)")
    pb.add_argument("--k", type=POSITIVE, default=100, help="k-means clusters (default 100)")
    pb.add_argument("--iters", type=POSITIVE, default=20, help="k-means Lloyd iterations, tol=0 (default 20)")
    pb.add_argument("--n-neighbors", type=POSITIVE, default=10, help="neighbours of the kNN case (default 10)")
    pb.add_argument("--eps", type=real_in(0.0), default=0.9, help="DBSCAN eps, Euclidean (default 0.9)")
    pb.add_argument("--min-samples", type=POSITIVE, default=10, help="DBSCAN min_samples (default 10)")
    pb.add_argument("--repeats", type=POSITIVE, default=3, help="timed runs per engine; medians (default 3)")
    pb.add_argument("--threads", type=int_at_least(0), default=0,
                    help="threads of every engine (default 0: every usable core)")
    pb.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the data and initial centres")
    pb.add_argument("--out", default=None, help="also write the report as JSON to this file")
    pb.add_argument("--no-openblas-retry", action="store_true",
                    help="do not time faiss again with OPENBLAS_CORETYPE set when its OpenBLAS does not "
                         "recognise the CPU (the warning stays)")
    set_command(pb, _cmd_bench, "print the report as JSON instead of the table")
