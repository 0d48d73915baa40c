// embedcluster._core: the thin boundary between Python and the native engine. One file per
// algorithm (knn, kmeans, dbscan), the build's description (info) and the shared conversions
// and GIL handling (common); python/embedcluster/_core.pyi lists everything bound here.
#include "common.hpp"
#include "../cuda/gpu_bindings.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "embedcluster native engine (float32, C-contiguous arrays in, numpy arrays and result objects out). "
            "memory_limit (bytes; None: default_memory_limit() at the call; 0: no limit) bounds each call's "
            "working memory: a call that would need more raises MemoryLimitError (a MemoryError) naming the size. "
            "Values are not scanned for NaN / infinity here: the estimators check their input.";
  ecpy::bind_knn(m);
  ecpy::bind_kmeans(m);
  ecpy::bind_kmeans_chunk(m);
  ecpy::bind_dbscan(m);
  ecpy::bind_info(m);
  // The GPU engine's host model: the CPU tests check its logic against this engine.
  auto model = m.def_submodule("cuda_model", "Host model of the CUDA engine (same algorithms, loops instead of GPU threads).");
  ecgpu::bind_gpu_backend(model, ec::gpu::model_backend(), false);
  ecpy::bind_common(m);  // last: it registers the atexit hook, once everything else is bound
}
