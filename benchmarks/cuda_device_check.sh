#!/usr/bin/env bash
# One prepared run on a lent GPU machine (issue 17): build with the CUDA engine, run the GPU
# tests (and their host-model twins), then the bars benchmark. Logs and results go to $OUT
# (or ./cuda-check-out). Usage, from the repository root: bash benchmarks/cuda_device_check.sh
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
# The CPU engine is the identity oracle: find a kernel set that runs here (a crash is reported).
for isa in auto avx512bf16 avx512 avx2 generic; do
  if [ "$isa" = auto ]; then unset EMBEDCLUSTER_ISA; else export EMBEDCLUSTER_ISA=$isa; fi
  if python3 -X faulthandler "$REPO/benchmarks/cuda_bars.py" --cpu-smoke >"$OUT/smoke-$isa.log" 2>&1; then
    echo "CPU engine smoke test passed with kernels: $isa"; break
  fi
  echo "CPU engine smoke test FAILED with kernels: $isa"; tail -5 "$OUT/smoke-$isa.log"
done
python3 -m pytest -q -p no:cacheprovider -p xdist -n 4 -m "cuda or not slow" "$REPO/tests/test_cuda_engine.py" 2>&1 | tee "$OUT/tests.log" | tail -30
echo "tests done: $(( $(date +%s) - t0 )) s"
CUDA_BARS_CPU_WAIT=${CUDA_BARS_CPU_WAIT:-150} python3 "$REPO/benchmarks/cuda_bars.py" --out "$OUT/bars.json" "$@" 2>&1 | tee "$OUT/bars.log"
echo "all done: $(( $(date +%s) - t0 )) s"
