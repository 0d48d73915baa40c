"""`embedcluster info`: what this installation is."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import set_command


def _cmd_info(args: argparse.Namespace) -> int:
    from ..info import build_info

    info = build_info()
    if args.json:
        from .._io import dumps

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


def add_parser(sub: Any) -> None:
    """The sub-command info."""
    pi = sub.add_parser("info", help="version, build options, CPU features, threads, backends",
                        description="Print what this installation is: version, build options, CPU features "
                                    "seen, threads, OpenMP, whether CUDA was compiled, and the backends available.")
    set_command(pi, _cmd_info, "print the report as JSON")
