// AVX-512F tile kernels: a 12x32 register-blocked fp32 micro-kernel (24 zmm accumulators).
// Compiled with -mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma; only called after the CPU check.
#include <immintrin.h>

#include <limits>

#include "kernels.hpp"
#include "kernels_blocking.hpp"

namespace ec {
namespace {

constexpr int kMR = 12;
constexpr int kNR = 32;
constexpr idx_t kKC = 256;  // depth block: a 256x32 slice of B (32 KiB) stays in L1

/// One 12x32 tile over kc depth words; a(k, r) is word k (of this depth block) of row r of A.
template <bool Accumulate, class ASource>
inline void micro_12x32(ASource a, const float* b, idx_t kc, float* c, idx_t ldc) {
  __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) {
    if (Accumulate) {
      acc0[r] = _mm512_loadu_ps(c + r * ldc);
      acc1[r] = _mm512_loadu_ps(c + r * ldc + 16);
    } else {
      acc0[r] = _mm512_setzero_ps();
      acc1[r] = _mm512_setzero_ps();
    }
  }
  for (idx_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b);
    const __m512 b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r) {
      const __m512 av = _mm512_set1_ps(a(k, r));
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
    }
    b += kNR;
  }
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) {
    _mm512_storeu_ps(c + r * ldc, acc0[r]);
    _mm512_storeu_ps(c + r * ldc + 16, acc1[r]);
  }
}

template <class ASource>
inline void micro(ASource a, const float* b, idx_t kc, float* c, idx_t ldc, bool acc) {
  if (acc)
    micro_12x32<true>(a, b, kc, c, ldc);
  else
    micro_12x32<false>(a, b, kc, c, ldc);
}

void gemm_avx512(const float* a, const float* b, idx_t m_pad, idx_t n_pad, idx_t depth, float* c, idx_t ldc) {
  blocked_gemm<kMR, kNR, kKC>(a, b, m_pad, n_pad, depth, c, ldc,
                              [](const float* ap, const float* bp, idx_t kc, float* cp, idx_t ld, bool acc) {
                                micro([ap](idx_t k, int r) { return ap[k * kMR + r]; }, bp, kc, cp, ld, acc);
                              });
}

/// gemm with A read from row pointers (words k0 .. k0 + kc of 12 rows): the same products in
/// the same order as packing those rows, so the same results.
void gemm_rows_avx512(const float* const* a, const float* b, idx_t m_pad, idx_t n_pad, idx_t depth, float* c,
                      idx_t ldc) {
  blocked_gemm_rows<kMR, kNR, kKC>(a, b, m_pad, n_pad, depth, c, ldc,
                                   [](const float* const* rows, idx_t k0, const float* bp, idx_t kc, float* cp,
                                      idx_t ld, bool acc) {
                                     const float* p[kMR];
                                     for (int r = 0; r < kMR; ++r) p[r] = rows[r] + k0;
                                     micro([&p](idx_t k, int r) { return p[r][k]; }, bp, kc, cp, ld, acc);
                                   });
}

float row_min_avx512(const float* c, const float* add, float mul, idx_t n) {
  const __m512 vm = _mm512_set1_ps(mul);
  __m512 best = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  idx_t j = 0;
  for (; j + 16 <= n; j += 16)
    best = _mm512_min_ps(best, _mm512_fmadd_ps(vm, _mm512_loadu_ps(c + j), _mm512_loadu_ps(add + j)));
  if (j < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - j)) - 1u);
    const __m512 v = _mm512_fmadd_ps(vm, _mm512_maskz_loadu_ps(m, c + j), _mm512_maskz_loadu_ps(m, add + j));
    best = _mm512_mask_min_ps(best, m, best, v);
  }
  return _mm512_reduce_min_ps(best);
}

idx_t row_filter_avx512(const float* c, const float* add, float mul, idx_t n, float thr,
                        std::int32_t* idx, float* val) {
  const __m512 vm = _mm512_set1_ps(mul);
  const __m512 vt = _mm512_set1_ps(thr);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  idx_t cnt = 0;
  idx_t j = 0;
  for (; j < n; j += 16) {
    const __mmask16 valid =
        n - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1u);
    const __m512 v = _mm512_fmadd_ps(vm, _mm512_maskz_loadu_ps(valid, c + j),
                                     _mm512_maskz_loadu_ps(valid, add + j));
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(valid, v, vt, _CMP_LE_OQ);
    if (hit) {
      _mm512_mask_compressstoreu_epi32(idx + cnt, hit, ids);
      _mm512_mask_compressstoreu_ps(val + cnt, hit, v);
      cnt += __builtin_popcount(static_cast<unsigned>(hit));
    }
    ids = _mm512_add_epi32(ids, step);
  }
  return cnt;
}

}  // namespace

float dot_avx512(const float* a, const float* b, idx_t d) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  idx_t k = 0;
  for (; k + 32 <= d; k += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), s1);
  }
  for (; k < d; k += 16) {
    const __mmask16 m = d - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (d - k)) - 1u);
    s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k), s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

namespace {
/// Running (minimum, its index, second smallest) per lane.
struct Min2 {
  __m512 m1, m2;
  __m512i a1;
  void init() {
    m1 = m2 = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    a1 = _mm512_setzero_si512();
  }
  void push(__m512 v, __m512i ids) {
    const __mmask16 lt = _mm512_cmp_ps_mask(v, m1, _CMP_LT_OQ);
    m2 = _mm512_mask_blend_ps(lt, _mm512_min_ps(m2, v), m1);  // lanes with a new minimum keep the old one
    m1 = _mm512_mask_blend_ps(lt, m1, v);
    a1 = _mm512_mask_blend_epi32(lt, a1, ids);
  }
  void merge(const Min2& o) {
    const __mmask16 lt = _mm512_cmp_ps_mask(o.m1, m1, _CMP_LT_OQ);
    m2 = _mm512_min_ps(_mm512_min_ps(m2, o.m2), _mm512_max_ps(m1, o.m1));
    m1 = _mm512_mask_blend_ps(lt, m1, o.m1);
    a1 = _mm512_mask_blend_epi32(lt, a1, o.a1);
  }
};
}  // namespace

float row_min2_avx512(const float* c, const float* add, float mul, idx_t n, idx_t* arg, float* second) {
  const float inf = std::numeric_limits<float>::infinity();
  const __m512 vm = _mm512_set1_ps(mul);
  Min2 s[4];
  for (auto& t : s) t.init();
  __m512i ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  idx_t j = 0;
  // Four independent chains (the compare-blend chain is latency bound).
  for (; j + 64 <= n; j += 64) {
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
      s[t].push(_mm512_fmadd_ps(vm, _mm512_loadu_ps(c + j + 16 * t), _mm512_loadu_ps(add + j + 16 * t)), ids);
      ids = _mm512_add_epi32(ids, step);
    }
  }
  for (; j < n; j += 16) {
    const __mmask16 valid =
        n - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1u);
    s[0].push(_mm512_mask_blend_ps(valid, _mm512_set1_ps(inf),
                                   _mm512_fmadd_ps(vm, _mm512_maskz_loadu_ps(valid, c + j),
                                                   _mm512_maskz_loadu_ps(valid, add + j))),
              ids);
    ids = _mm512_add_epi32(ids, step);
  }
  s[0].merge(s[1]);
  s[2].merge(s[3]);
  s[0].merge(s[2]);
  alignas(64) float l1[16], l2[16];
  alignas(64) std::int32_t la[16];
  _mm512_store_ps(l1, s[0].m1);
  _mm512_store_ps(l2, s[0].m2);
  _mm512_store_si512(la, s[0].a1);
  int best = 0;
  for (int t = 1; t < 16; ++t)
    if (l1[t] < l1[best]) best = t;
  float sec = inf;
  for (int t = 0; t < 16; ++t) {
    sec = std::min(sec, l2[t]);
    if (t != best) sec = std::min(sec, l1[t]);
  }
  *arg = la[best];
  *second = sec;
  return l1[best];
}

void accum_avx512(const float* x, idx_t d, double sc, const double* qscale, bool subtract, std::uint64_t* dst) {
  const __m512d vs = _mm512_set1_pd(sc);
  idx_t f = 0;
  for (; f + 8 <= d; f += 8) {
    // Two separate roundings, (x * sc) then * qscale, as in accum_generic; the conversion
    // rounds to nearest even (the default MXCSR mode), like llrint.
    const __m512d v = _mm512_mul_pd(_mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + f)), vs),
                                    _mm512_loadu_pd(qscale + f));
    const __m512i q = _mm512_cvtpd_epi64(v);
    const __m512i o = _mm512_loadu_si512(dst + f);
    _mm512_storeu_si512(dst + f, subtract ? _mm512_sub_epi64(o, q) : _mm512_add_epi64(o, q));
  }
  if (f < d) accum_generic(x + f, d - f, sc, qscale + f, subtract, dst + f);
}

const KernelSet& avx512_kernels() {
  static const KernelSet ks{"avx512", kMR, kNR, 1, 0.0, pack_panels, gemm_avx512, row_min_avx512, row_min2_avx512,
                            row_filter_avx512, dot_avx512, accum_avx512, gemm_rows_avx512, nullptr, nullptr};
  return ks;
}

}  // namespace ec
