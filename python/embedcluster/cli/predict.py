"""`embedcluster predict`: new data assigned to the clusters of a saved pipeline."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from ._common import add_quiet, check_output_file, data_help, emit, save_npy, set_command


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..data import load
    from ..transfer.pipeline import TransferClustering

    check_output_file(args.out, "labels")
    tc = TransferClustering.load(args.pipeline)
    tc.progress = not args.quiet
    ds = load(args.data)
    pred = tc.predict(ds, flag_unknown=args.flag_unknown)
    if args.out:
        save_npy(args.out, pred)
    res: Dict[str, Any] = {"n_points": int(len(pred)), "n_unknown": int((pred == -1).sum())}
    lines = [f"{len(pred)} items predicted" + (f" -> {args.out}" if args.out else "")
             + (f"; {res['n_unknown']} flagged unknown" if args.flag_unknown else "")]
    if not args.out:
        res["labels"] = pred.tolist()
        lines.append(" ".join(map(str, pred.tolist()[:50])) + (" ..." if len(pred) > 50 else ""))
    return emit(args, res, lines)


def add_parser(sub: Any) -> None:
    """The sub-command predict."""
    pq = sub.add_parser("predict", help="assign new data to the clusters of a saved pipeline",
                        description="Load a pipeline saved by `run` (or TransferClustering.save) and predict the "
                                    "cluster of every item of DATA. With --flag-unknown, items farther from every "
                                    "cluster centre than the pipeline's threshold get -1.")
    pq.add_argument("pipeline", help="pipeline folder")
    pq.add_argument("data", help=data_help("DATA"))
    pq.add_argument("--out", help="write the labels here (.npy); otherwise they are printed")
    pq.add_argument("--flag-unknown", action="store_true", help="label items far from every cluster -1")
    add_quiet(pq)
    set_command(pq, _cmd_predict, "print the result as JSON")
