#!/usr/bin/env python
"""The AMX kernel set's gemm rate as a fraction of the AMX tdpbf16ps peak, on one core.

* peak: a chain of tile products (four independent 16x16 fp32 accumulators, tdpbf16ps on
  operand tiles already loaded), one core: 16 * 16 * 32 * 2 flops per instruction;
* achieved: the ``amx`` set's pack + product (``_core.tile_rate``) on k-means-assignment-shaped
  tiles, 200,000 x 384 rows against 256 centres, one thread.

Prints both in GFLOP/s and the fraction (bar: >= 50%); exits 1 when the bar is missed. On a CPU
or build without AMX it says so and exits 0 without measuring.

Run::

    python benchmarks/amx_peak.py
    python benchmarks/amx_peak.py --rows 50000 --repeats 3      # shorter
"""

from __future__ import annotations

import argparse
import platform
import sys

BAR = 0.5


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def amx_missing(core) -> str:
    """Why this machine cannot run the amx set ("" when it can)."""
    feats = set(core.build_info()["cpu_features"])
    lacking = sorted({"amx-tile", "amx-bf16", "avx512bf16"} - feats)
    if lacking:
        return f"this CPU ({cpu_model()}) has no AMX: it lacks {', '.join(lacking)} (lscpu: amx_tile, amx_bf16)"
    try:
        core.select_kernels("amx")
    except (ValueError, RuntimeError) as e:  # no AMX kernels in this build, or Linux refused the tiles
        return str(e)
    return ""


def main(argv: list[str] | None = None) -> int:
    """Measures and prints the peak, the achieved rate and their ratio; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the assignment-shaped product")
    ap.add_argument("--centres", type=int, default=256, help="centres (columns of the product)")
    ap.add_argument("--dim", type=int, default=384, help="dimension")
    ap.add_argument("--repeats", type=int, default=5, help="peak measurements (the best is kept)")
    args = ap.parse_args(argv)
    if min(args.rows, args.centres, args.dim, args.repeats) < 1:
        ap.error("--rows, --centres, --dim and --repeats must be >= 1")

    from embedcluster import _core

    why = amx_missing(_core)
    if why:
        print(f"amx_peak: not measured: {why}")
        return 0
    try:
        peak = max(_core._amx_tile_peak(2_000_000) for _ in range(args.repeats))
        rate = _core.tile_rate(args.rows, args.centres, args.dim, n_threads=1)
    finally:
        _core.select_kernels("auto")
    assert rate.kernels == "amx", rate.kernels
    frac = rate.gflops / peak
    print(f"CPU: {cpu_model()}, one core")
    print(f"tdpbf16ps peak:      {peak:9.1f} GFLOP/s")
    print(f"amx gemm {args.rows}x{args.dim} . {args.centres}: {rate.gflops:9.1f} GFLOP/s "
          f"({rate.seconds:.4f} s, pack + product)")
    print(f"fraction of peak:    {frac:9.1%}  (bar >= {BAR:.0%}: {'met' if frac >= BAR else 'MISSED'})")
    return 0 if frac >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
