// The host model of the GPU engine: gpu_engine.hpp's algorithms run with every logical GPU
// thread as one iteration of a loop (one at a time, so the atomics are plain operations) and
// every tile product computed as the tensor cores do, TF32 inputs and fp32 accumulation. It is
// built into _core on every machine: the tests check the GPU engine's logic (bands, re-checks,
// lane merges, fixed point, union-find, cluster numbering) against the CPU engine without a GPU.
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "gpu_backend.hpp"

namespace ec {
namespace gpu {

namespace {

/// float -> TF32 (10 explicit mantissa bits), rounding to nearest with ties away from zero
/// (cvt.rna.tf32.f32, what the tensor-core kernel applies to its inputs).
inline float to_tf32(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & ~0x1fffu;
  float r;
  std::memcpy(&r, &u, sizeof(r));
  return r;
}

struct HostDev {
  template <class T>
  T* alloc(idx_t n) {
    return static_cast<T*>(::operator new(sizeof(T) * static_cast<std::size_t>(n)));
  }
  void release(void* p) { ::operator delete(p); }
  void upload(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  void zero(void* dst, std::size_t bytes) { std::memset(dst, 0, bytes); }
  void sync() {}
  template <class F>
  void each(idx_t n, const F& f) {
    for (idx_t i = 0; i < n; ++i) f(i);
  }
  template <class Epi>
  void scan(const float* Q, idx_t nq, const float* Y, idx_t ny, idx_t d, const Epi& epi, typename Epi::Lane* lanes) {
    std::vector<float> q(static_cast<std::size_t>(d));
    for (idx_t i = 0; i < nq; ++i) {
      for (idx_t t = 0; t < d; ++t) q[static_cast<std::size_t>(t)] = to_tf32(Q[i * d + t]);
      for (int s = 0; s < kLanes; ++s) {
        typename Epi::Lane lane;
        epi.begin(lane, i);
        for (idx_t j = s; j < ny; j += kLanes) {
          float g = 0.0f;
          for (idx_t t = 0; t < d; ++t) g += q[static_cast<std::size_t>(t)] * to_tf32(Y[j * d + t]);
          epi.visit(lane, i, j, g);
        }
        lanes[i * kLanes + s] = lane;
      }
    }
  }
};

class ModelBackend : public BackendOver<HostDev> {
 public:
  std::string name() const override { return "host model of the CUDA engine"; }
  bool available(std::string&) override { return true; }
  void set_stream(std::uintptr_t) override {}
};

}  // namespace

Backend& model_backend() {
  static ModelBackend b;
  return b;
}

}  // namespace gpu
}  // namespace ec
