// The CUDA device policy of the GPU engine (gpu_engine.hpp): memory, launches on the caller's
// stream, and the tensor-core tile scan, whose fused epilogue hands every product to the
// algorithm's lane state without writing the product matrix to memory.
//
// Tile scan: a block owns BM query rows and walks all columns in tiles of BN. Per tile, eight
// warps compute the BM x BN products with TF32 WMMA (m16n16k8, fp32 accumulation; each warp a
// 32 x 32 sub-tile), store them to shared memory, and the block's threads, kLanes per row,
// visit them. The query rows stay in shared memory for the whole walk when they fit.
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "gpu_backend.hpp"

namespace ec {
namespace gpu {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

constexpr int kThreads = 256;
constexpr int BM = kThreads / kLanes;  // query rows per block
constexpr int BN = 64;                 // columns per tile
constexpr int KC = 32;                 // depth per staging step
constexpr int LDK = KC + 4;            // shared-memory row strides (floats), padded against bank conflicts
constexpr int LDS = BN + 4;
static_assert(BM == 128, "the warp layout below covers 128 x 64 tiles");
constexpr int kMaxResidentBytes = 200 * 1024;

template <class F>
__global__ void each_kernel(idx_t n, F f) {
  for (idx_t i = static_cast<idx_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<idx_t>(gridDim.x) * blockDim.x)
    f(i);
}

/// Stages rows [r0, r0 + rows) x depth [k0, k0 + kc) of A (row-major, n x d) into S (stride ld),
/// zero outside A.
__device__ inline void stage(float* S, int ld, const float* __restrict__ A, idx_t n, idx_t d, idx_t r0, int rows,
                             idx_t k0, int kc) {
  for (int e = threadIdx.x; e < rows * kc; e += kThreads) {
    const int rr = e / kc, kk = e % kc;
    const idx_t gi = r0 + rr, gk = k0 + kk;
    S[rr * ld + kk] = (gi < n && gk < d) ? A[gi * d + gk] : 0.0f;
  }
}

template <class Epi>
__global__ void __launch_bounds__(kThreads) scan_kernel(const float* __restrict__ Q, idx_t nq,
                                                        const float* __restrict__ Y, idx_t ny, idx_t d, Epi epi,
                                                        typename Epi::Lane* lanes, int ldq, bool resident) {
  using namespace nvcuda;
  extern __shared__ __align__(128) float smem[];
  float* Qs = smem;                // BM x ldq
  float* Ys = Qs + BM * ldq;       // BN x LDK
  float* S = Ys + BN * LDK;        // BM x LDS
  const int tid = threadIdx.x, warp = tid >> 5;
  const idx_t row0 = static_cast<idx_t>(blockIdx.x) * BM;
  const int r = tid / kLanes, s = tid % kLanes;
  const idx_t i = row0 + r;
  const bool active = i < nq;
  typename Epi::Lane lane;
  if (active) epi.begin(lane, i);
  const int wr = warp / 2, wc = warp % 2;  // this warp's 32 x 32 sub-tile
  const idx_t dpad = (d + KC - 1) / KC * KC;
  if (resident) {
    stage(Qs, ldq, Q, nq, d, row0, BM, 0, static_cast<int>(dpad));
    __syncthreads();
  }
  for (idx_t col0 = 0; col0 < ny; col0 += BN) {
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int v = 0; v < 2; ++v) wmma::fill_fragment(acc[u][v], 0.0f);
    for (idx_t k0 = 0; k0 < dpad; k0 += KC) {
      if (!resident) stage(Qs, ldq, Q, nq, d, row0, BM, k0, KC);
      stage(Ys, LDK, Y, ny, d, col0, BN, k0, KC);
      __syncthreads();
      const float* qk = Qs + (resident ? k0 : 0);
#pragma unroll
      for (int kk = 0; kk < KC; kk += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          wmma::load_matrix_sync(a[u], qk + (wr * 32 + u * 16) * ldq + kk, ldq);
#pragma unroll
          for (int t = 0; t < a[u].num_elements; ++t) a[u].x[t] = wmma::__float_to_tf32(a[u].x[t]);
          wmma::load_matrix_sync(b[u], Ys + (wc * 32 + u * 16) * LDK + kk, LDK);
#pragma unroll
          for (int t = 0; t < b[u].num_elements; ++t) b[u].x[t] = wmma::__float_to_tf32(b[u].x[t]);
        }
#pragma unroll
        for (int u = 0; u < 2; ++u)
#pragma unroll
          for (int v = 0; v < 2; ++v) wmma::mma_sync(acc[u][v], a[u], b[v], acc[u][v]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int v = 0; v < 2; ++v)
        wmma::store_matrix_sync(S + (wr * 32 + u * 16) * LDS + wc * 32 + v * 16, acc[u][v], LDS, wmma::mem_row_major);
    __syncthreads();
    if (active) {
      const idx_t jn = ny - col0 < BN ? ny - col0 : BN;
      for (int c = s; c < jn; c += kLanes) epi.visit(lane, i, col0 + c, S[r * LDS + c]);
    }
    __syncthreads();
  }
  if (active) lanes[i * kLanes + s] = lane;
}

struct CudaDev {
  cudaStream_t stream = nullptr;

  template <class T>
  T* alloc(idx_t n) {
    void* p = nullptr;
    check(cudaMalloc(&p, std::max<std::size_t>(1, sizeof(T) * static_cast<std::size_t>(n))), "cudaMalloc");
    return static_cast<T*>(p);
  }
  void release(void* p) { cudaFree(p); }
  void upload(void* dst, const void* src, std::size_t bytes) {
    // From pageable host memory the copy is staged before the call returns: src may go.
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), "upload");
  }
  void download(void* dst, const void* src, std::size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream), "download");
    sync();
  }
  void zero(void* dst, std::size_t bytes) { check(cudaMemsetAsync(dst, 0, bytes, stream), "memset"); }
  void sync() { check(cudaStreamSynchronize(stream), "kernel"); }

  template <class F>
  void each(idx_t n, const F& f) {
    if (n <= 0) return;
    const idx_t blocks = std::min<idx_t>((n + kThreads - 1) / kThreads, idx_t{1} << 20);
    each_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(n, f);
    check(cudaGetLastError(), "launch");
  }

  template <class Epi>
  void scan(const float* Q, idx_t nq, const float* Y, idx_t ny, idx_t d, const Epi& epi, typename Epi::Lane* lanes) {
    if (nq <= 0) return;
    const idx_t dpad = (d + KC - 1) / KC * KC;
    const std::size_t tail = sizeof(float) * static_cast<std::size_t>(BN * LDK + BM * LDS);
    const std::size_t full = sizeof(float) * static_cast<std::size_t>(BM * (dpad + 4));
    const bool resident = full + tail <= static_cast<std::size_t>(kMaxResidentBytes);
    const int ldq = resident ? static_cast<int>(dpad + 4) : LDK;
    const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(BM) * ldq + tail;
    check(cudaFuncSetAttribute(scan_kernel<Epi>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          "shared memory size");
    const idx_t blocks = (nq + BM - 1) / BM;
    scan_kernel<Epi><<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(Q, nq, Y, ny, d, epi, lanes, ldq,
                                                                                 resident);
    check(cudaGetLastError(), "tile scan launch");
  }
};

class CudaBackend : public BackendOver<CudaDev> {
 public:
  std::string name() const override { return "CUDA"; }
  bool available(std::string& why) override {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      why = std::string("no usable CUDA driver or device (") + cudaGetErrorString(e) + ")";
      cudaGetLastError();
      return false;
    }
    if (n == 0) {
      why = "no CUDA device";
      return false;
    }
    cudaDeviceProp p;
    check(cudaGetDeviceProperties(&p, 0), "device properties");
    if (p.major < 8) {
      why = std::string(p.name) + " has compute capability " + std::to_string(p.major) + "." + std::to_string(p.minor) +
            "; the engine's TF32 tensor-core tiles need 8.0 or later";
      return false;
    }
    return true;
  }
  void set_stream(std::uintptr_t s) override { dev.stream = reinterpret_cast<cudaStream_t>(s); }
};

}  // namespace

Backend& cuda_backend() {
  static CudaBackend b;
  return b;
}

std::string cuda_device_summary() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return "";
  }
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return "";
  return std::string(p.name) + ", compute capability " + std::to_string(p.major) + "." + std::to_string(p.minor) + ", " +
         std::to_string(p.multiProcessorCount) + " multiprocessors, " +
         std::to_string(static_cast<long long>(p.totalGlobalMem >> 20)) + " MiB";
}

}  // namespace gpu
}  // namespace ec
