"""Command line of embedcluster: demo, embed, cluster, evaluate, probe, run, predict, info, bench.

One module a command group: :mod:`.info`, :mod:`.demo`, :mod:`.steps` (embed, cluster,
evaluate), :mod:`.probe`, :mod:`.run` (with the schema of its config file) and :mod:`.predict`;
:mod:`.bench`; :mod:`._common` holds what they share. Every module imports its heavy dependencies when its
command runs, so ``embedcluster --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from .._interface import command_line
from .._progress import scope as progress_scope
from . import bench, demo, info, predict, probe, run, steps
from ._common import Parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embedcluster`` command."""
    p = Parser(prog="embedcluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # The order of the listing in --help.
    info.add_parser(sub)
    demo.add_parser(sub)
    steps.add_parsers(sub)
    probe.add_parser(sub)
    run.add_parser(sub)
    predict.add_parser(sub)
    bench.add_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``embedcluster`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return int(e.code or 0)
    try:
        # Messages name flags, not Python keywords. Commands with long steps (those that take
        # --quiet) show progress unless quiet; estimators with verbose=None follow. The others
        # (info, demo, evaluate, bench) stay silent.
        with command_line(), progress_scope(not args.quiet if hasattr(args, "quiet") else False):
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

