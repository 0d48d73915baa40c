"""`embedcluster predict`: new data assigned to the clusters of a saved pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List

from ._common import (add_device_option, add_quiet, add_table_options, check_device, check_output_file, data_help, emit,
                      image_size, load_data, save_labels, set_command)


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..transfer.pipeline import TransferClustering

    check_output_file(args.out, "labels")
    check_device(args.device)
    tc = TransferClustering.load(args.pipeline, device=args.device)
    tc.progress = not args.quiet
    notes: List[str] = []
    is_table = Path(args.data).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json")
    ds = load_data({**vars(args), "label_column": "none" if is_table else None}, notes)
    pred = tc.predict(ds, flag_unknown=args.flag_unknown)
    if args.out:
        save_labels(args.out, pred, ds)
    res: Dict[str, Any] = {"n_points": int(len(pred)), "n_unknown": int((pred == -1).sum()), "notes": notes}
    lines = notes + [f"{len(pred)} items predicted" + (f" -> {args.out}" if args.out else "")
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
    pq.add_argument("--out", help="write the labels here: a .npy array, or a .csv file with columns index, item (the "
                    "image path or the text, when DATA has them) and cluster; otherwise they are printed")
    pq.add_argument("--image-size", type=image_size, metavar="SIZE",
                    help="resize a folder of images to SIZE (a side or HEIGHTxWIDTH) as it loads, as at fitting; "
                    "the encoder's own input size is saved with the pipeline")
    add_table_options(pq, labels=False)
    add_device_option(pq)
    pq.add_argument("--flag-unknown", action="store_true", help="label items far from every cluster -1")
    add_quiet(pq)
    set_command(pq, _cmd_predict, "print the result as JSON")
