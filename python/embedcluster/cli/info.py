"""`embedcluster info`: what this installation is."""

from __future__ import annotations

import argparse
from typing import Any, Dict, List

from ._common import set_command


def _kernel_lines(kernels: Dict[str, Any], warnings: List[str]) -> List[str]:
    """The self-tests and the choice per operation family, as report lines."""
    tests = ", ".join(f"{t['name']} {'ok' if t['passed'] else 'FAILED'}" for t in kernels.get("self_tests", []))
    lines = [f"  self-test     : {tests}"]
    lines += [f"  WARNING       : {w}" for w in warnings]
    if kernels.get("forced"):
        lines.append(f"  kernel choice : {kernels['forced']} forced for every family "
                     "(EMBEDCLUSTER_ISA or select_kernels)")
        return lines
    lines.append("  kernel choice : per family, the set measured fastest "
                 "(GFLOP/s on the family's tile; ~ a strip's estimate)")
    for f in kernels.get("families", []):
        rates = ", ".join(f"{r['name']} {'~' * r['from_strip']}{r['gflops']:.1f}" for r in f["rates"])
        rows, cols = f["tile"]
        lines.append(f"    {f['family']:<7} d={f['d']:<5} {rows}x{cols}: {f['chosen']:<11} ({rates})")
    if kernels.get("manual_only"):
        manual = ", ".join(kernels["manual_only"])
        lines.append(f"    never chosen automatically (force with EMBEDCLUSTER_ISA): {manual}")
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    from ..info import build_info

    info = build_info(args.dim)
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
        print("\n".join(_kernel_lines(info["kernels"], info["kernel_warnings"])))
        print(f"  -march=native : {'yes' if b.get('march_native') else 'no (portable build, run-time dispatch)'}")
    else:
        print(f"  native engine : NOT AVAILABLE ({info['native_error']})")
    c = info["cuda"]
    cuda_line = ("not compiled (no CUDA compiler at build time)" if not c["compiled"]
                 else f"available: {c['device']}" if c["available"] else f"compiled, cannot run here: {c['why_not']}")
    print(f"  CUDA engine   : {cuda_line}")
    print(f"  backends      : {', '.join(info['backends']) or 'none'}")
    for k, v in sorted(info["environment"].items()):
        print(f"  env {k}={v}")
    return 0


def add_parser(sub: Any) -> None:
    """The sub-command info."""
    pi = sub.add_parser("info", help="version, build options, CPU features, threads, backends",
                        description="Print what this installation is: version, build options, CPU features "
                                    "seen, threads, OpenMP, whether CUDA was compiled, and the backends available.")
    pi.add_argument("--dim", type=int, default=384, metavar="D",
                    help="depth (embedding dimension) at which to measure the kernel sets (default 384)")
    set_command(pi, _cmd_info, "print the report as JSON")
