#!/usr/bin/env bash
# One prepared run on a lent GPU machine (issue 17): build with the CUDA engine, check the GPU
# against independent oracles, run the GPU tests (and their host-model twins), then the bars.
# Logs and results go to $OUT (or ./cuda-check-out). Usage, from the repository root:
#     bash benchmarks/cuda_device_check.sh [cuda_bars.py arguments]
set -uo pipefail
OUT=${OUT:-$PWD/cuda-check-out}
mkdir -p "$OUT"
REPO=$PWD
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
export CMAKE_ARGS="-DEMBEDCLUSTER_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"
lscpu | grep -m1 "Model name" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -q . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
cd /tmp || exit 1
python3 -c "import embedcluster, embedcluster._cuda as c; print(embedcluster.__file__, c.available(), c.device_summary())"
python3 "$REPO/benchmarks/cuda_oracle_check.py" 2>&1 | tee "$OUT/oracles.log"
python3 -m pytest -q -p no:cacheprovider -m "cuda or not slow" "$REPO/tests/test_cuda_engine.py" 2>&1 | tee "$OUT/tests.log" | tail -30
echo "tests done: $(( $(date +%s) - t0 )) s"
CUDA_BARS_CPU_WAIT=${CUDA_BARS_CPU_WAIT:-150} python3 "$REPO/benchmarks/cuda_bars.py" --out "$OUT/bars.json" "$@" 2>&1 | tee "$OUT/bars.log"
echo "all done: $(( $(date +%s) - t0 )) s"
