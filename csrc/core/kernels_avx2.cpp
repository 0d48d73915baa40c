// AVX2 + FMA tile kernels: a 6x16 register-blocked fp32 micro-kernel (12 ymm accumulators).
// Compiled with -mavx2 -mfma; only called after the CPU check.
#include <immintrin.h>

#include <limits>

#include "kernels.hpp"
#include "kernels_blocking.hpp"
#include "kernels_portable.hpp"

namespace ec {
namespace {

constexpr int kMR = 6;
constexpr int kNR = 16;
constexpr idx_t kKC = 256;

template <bool Accumulate>
inline void micro_6x16(const float* a, const float* b, idx_t kc, float* c, idx_t ldc) {
  __m256 acc0[kMR], acc1[kMR];
#pragma GCC unroll 6
  for (int r = 0; r < kMR; ++r) {
    if (Accumulate) {
      acc0[r] = _mm256_loadu_ps(c + r * ldc);
      acc1[r] = _mm256_loadu_ps(c + r * ldc + 8);
    } else {
      acc0[r] = _mm256_setzero_ps();
      acc1[r] = _mm256_setzero_ps();
    }
  }
  for (idx_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int r = 0; r < kMR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
    a += kMR;
    b += kNR;
  }
#pragma GCC unroll 6
  for (int r = 0; r < kMR; ++r) {
    _mm256_storeu_ps(c + r * ldc, acc0[r]);
    _mm256_storeu_ps(c + r * ldc + 8, acc1[r]);
  }
}

void gemm_avx2(const float* a, const float* b, idx_t m_pad, idx_t n_pad, idx_t depth, float* c, idx_t ldc) {
  blocked_gemm<kMR, kNR, kKC>(a, b, m_pad, n_pad, depth, c, ldc,
                              [](const float* ap, const float* bp, idx_t kc, float* cp, idx_t ld, bool acc) {
                                if (acc)
                                  micro_6x16<true>(ap, bp, kc, cp, ld);
                                else
                                  micro_6x16<false>(ap, bp, kc, cp, ld);
                              });
}

float row_min_avx2(const float* c, const float* add, float mul, idx_t n) {
  const __m256 vm = _mm256_set1_ps(mul);
  __m256 best = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  idx_t j = 0;
  for (; j + 8 <= n; j += 8)
    best = _mm256_min_ps(best, _mm256_fmadd_ps(vm, _mm256_loadu_ps(c + j), _mm256_loadu_ps(add + j)));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  float out = lanes[0];
  for (int l = 1; l < 8; ++l) out = lanes[l] < out ? lanes[l] : out;
  return row_min_scalar(c, add, mul, j, n, out);
}

idx_t row_filter_avx2(const float* c, const float* add, float mul, idx_t n, float thr,
                      std::int32_t* idx, float* val) {
  const __m256 vm = _mm256_set1_ps(mul);
  const __m256 vt = _mm256_set1_ps(thr);
  idx_t cnt = 0;
  idx_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_fmadd_ps(vm, _mm256_loadu_ps(c + j), _mm256_loadu_ps(add + j));
    int hit = _mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_LE_OQ));
    if (hit) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, v);
      while (hit) {
        const int l = __builtin_ctz(static_cast<unsigned>(hit));
        idx[cnt] = static_cast<std::int32_t>(j + l);
        val[cnt] = lanes[l];
        ++cnt;
        hit &= hit - 1;
      }
    }
  }
  return row_filter_scalar(c, add, mul, j, n, thr, idx, val, cnt);
}

}  // namespace

static float dot_avx2(const float* a, const float* b, idx_t d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  idx_t k = 0;
  for (; k + 16 <= d; k += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), s1);
  }
  for (; k + 8 <= d; k += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
  s0 = _mm256_add_ps(s0, s1);
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  float t[4];
  _mm_storeu_ps(t, h);
  float s = (t[0] + t[1]) + (t[2] + t[3]);
  for (; k < d; ++k) s += a[k] * b[k];
  return s;
}

const KernelSet& avx2_kernels() {
  static const KernelSet ks{"avx2", kMR, kNR, 1, 0.0, pack_panels, gemm_avx2, row_min_avx2, row_min2_generic, row_filter_avx2,
                            dot_avx2, accum_generic, nullptr, nullptr, nullptr};
  return ks;
}

}  // namespace ec
