"""Command line: ``embedcluster info`` (and, as the package grows, the whole pipeline)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embedcluster`` command."""
    p = argparse.ArgumentParser(prog="embedcluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pi = sub.add_parser("info", help="version, build options, CPU features, threads, backends",
                        description="Print what this installation is: version, build options, CPU features "
                                    "seen, threads, OpenMP, whether CUDA was compiled, and the backends available.")
    pi.add_argument("--json", action="store_true", help="print the report as JSON")
    pi.set_defaults(func=_cmd_info)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``embedcluster`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError, MemoryError) as exc:
        print(f"embedcluster {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"embedcluster {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
