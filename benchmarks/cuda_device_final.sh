#!/usr/bin/env bash
# The last short run of a lease: build, a native backtrace of the CPU engine's crash on that
# machine (cuda-gdb, which also debugs host code), the GPU-vs-oracles check and the bars.
set -uo pipefail
OUT=${OUT:-$PWD/cuda-check-out}; mkdir -p "$OUT"; REPO=$PWD
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16 CMAKE_ARGS="-DEMBEDCLUSTER_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90"
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -q . >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
cd /tmp || exit 1
timeout 40 cuda-gdb -batch -ex run -ex bt -ex "info registers rip" --args python3 -c "
import numpy as np; from embedcluster import _core
X=np.random.default_rng(0).normal(size=(3000,13)).astype(np.float32)
_core.knn_search(X, X[::3].copy(), 9, 'l2', n_threads=1); print('cpu knn ok')" >"$OUT/gdb.log" 2>&1
grep -E "^#[0-9]+|SIG|cpu knn ok" "$OUT/gdb.log" | head -25
python3 "$REPO/benchmarks/cuda_oracle_check.py" 2>&1 | tail -6
python3 "$REPO/benchmarks/cuda_bars.py" --no-cpu --repeats 3 --out "$OUT/bars.json" 2>&1 | tee "$OUT/bars.log" | tail -8
echo "all done: $(( $(date +%s) - t0 )) s"
