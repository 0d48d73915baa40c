// The GPU engine behind one plain C++ interface, so that the Python bindings (compiled by the
// host compiler) serve the CUDA device (cuda_device.cu, module _cuda) and the host model
// (model_device.cpp, in _core for the CPU tests) alike. Pointers are device pointers of the
// backend (host pointers for the model).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gpu_engine.hpp"

namespace ec {
namespace gpu {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  /// Whether the backend can run here (a CUDA device is present); `why` says why not.
  virtual bool available(std::string& why) = 0;
  virtual void* alloc(std::size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual void upload(void* dst, const void* src, std::size_t bytes) = 0;
  virtual void download(void* dst, const void* src, std::size_t bytes) = 0;
  /// The stream later calls run on (the caller's cudaStream_t as an integer; 0: the default).
  virtual void set_stream(std::uintptr_t stream) = 0;
  virtual void sync() = 0;

  virtual ChunkStatsOut kmeans_stats(const float* X, idx_t n, idx_t d, const float* w, int metric, idx_t row_offset,
                                     double* xsq, double* xnorm) = 0;
  virtual std::vector<std::uint64_t> kmeans_moments(const float* X, idx_t n, idx_t d, int metric, const double* xnorm,
                                                    const std::vector<double>& s1, const std::vector<double>& s2) = 0;
  virtual idx_t kmeans_pass(ChunkState& st, const float* X, const float* w, const float* centres, idx_t k,
                            const double* qscale, double wscale, int metric, std::vector<std::uint64_t>& sums) = 0;
  virtual std::vector<float> kmeans_label_distances(const ChunkState& st, const float* X, const float* centres, idx_t k,
                                                    int metric) = 0;
  virtual std::vector<std::uint64_t> kmeans_objective(const ChunkState& st, const float* X, const float* w,
                                                      const float* centres, idx_t k, double scale, int metric) = 0;
  virtual void knn_search(const float* Y, idx_t ny, const float* Q, idx_t nq, idx_t d, int k, int metric, bool self,
                          float* out_d, std::int64_t* out_i) = 0;
  /// `stop` is called between launches; it throws to stop the call.
  virtual DbscanOut dbscan(const float* X, idx_t n, idx_t d, double eps, int min_samples, int metric,
                           const std::function<void()>& stop) = 0;
};

/// A Backend over a device policy (gpu_engine.hpp).
template <class Dev>
class BackendOver : public Backend {
 public:
  Dev dev;
  void* alloc(std::size_t bytes) override { return dev.template alloc<unsigned char>(static_cast<idx_t>(bytes)); }
  void release(void* p) override { dev.release(p); }
  void upload(void* dst, const void* src, std::size_t bytes) override { dev.upload(dst, src, bytes); }
  void download(void* dst, const void* src, std::size_t bytes) override { dev.download(dst, src, bytes); }
  void sync() override { dev.sync(); }

  ChunkStatsOut kmeans_stats(const float* X, idx_t n, idx_t d, const float* w, int metric, idx_t row_offset, double* xsq,
                             double* xnorm) override {
    return gpu::kmeans_stats(dev, X, n, d, w, metric, row_offset, xsq, xnorm);
  }
  std::vector<std::uint64_t> kmeans_moments(const float* X, idx_t n, idx_t d, int metric, const double* xnorm,
                                            const std::vector<double>& s1, const std::vector<double>& s2) override {
    return gpu::kmeans_moments(dev, X, n, d, metric, xnorm, s1, s2);
  }
  idx_t kmeans_pass(ChunkState& st, const float* X, const float* w, const float* centres, idx_t k, const double* qscale,
                    double wscale, int metric, std::vector<std::uint64_t>& sums) override {
    return gpu::kmeans_pass(dev, st, X, w, centres, k, qscale, wscale, metric, sums);
  }
  std::vector<float> kmeans_label_distances(const ChunkState& st, const float* X, const float* centres, idx_t k,
                                            int metric) override {
    return gpu::kmeans_label_distances(dev, st, X, centres, k, metric);
  }
  std::vector<std::uint64_t> kmeans_objective(const ChunkState& st, const float* X, const float* w, const float* centres,
                                              idx_t k, double scale, int metric) override {
    return gpu::kmeans_objective(dev, st, X, w, centres, k, scale, metric);
  }
  void knn_search(const float* Y, idx_t ny, const float* Q, idx_t nq, idx_t d, int k, int metric, bool self,
                  float* out_d, std::int64_t* out_i) override {
    gpu::knn_search(dev, Y, ny, Q, nq, d, k, metric, self, out_d, out_i);
  }
  DbscanOut dbscan(const float* X, idx_t n, idx_t d, double eps, int min_samples, int metric,
                   const std::function<void()>& stop) override {
    const std::function<void()> synced_stop = [&] {
      dev.sync();
      stop();
    };
    return gpu::dbscan(dev, X, n, d, eps, min_samples, metric, synced_stop);
  }
};

/// The host model (always built).
Backend& model_backend();
/// The CUDA device (module _cuda only).
Backend& cuda_backend();

}  // namespace gpu
}  // namespace ec
