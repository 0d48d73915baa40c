// AVX-512F tile kernels: a 12x32 register-blocked fp32 micro-kernel (24 zmm accumulators).
// Compiled with -mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma; only called after the CPU check.
#include <immintrin.h>

#include <limits>

#include "kernels.hpp"
#include "kernels_avx512_tile.hpp"

namespace ec {
namespace {

/// fp32 words: vfmadd231ps on broadcast A values.
struct Fp32Op {
  using Word = float;
  static __m512 load(const float* b) { return _mm512_load_ps(b); }
  static __m512 broadcast(float a) { return _mm512_set1_ps(a); }
  static __m512 madd(__m512 acc, __m512 a, __m512 b) { return _mm512_fmadd_ps(a, b, acc); }
};
using Tile = Avx512Tile<Fp32Op>;
constexpr int kMR = Tile::kMR;
constexpr int kNR = Tile::kNR;

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
  static const KernelSet ks{"avx512", kMR, kNR, 1, 0.0, pack_panels, Tile::gemm, row_min_avx512, row_min2_avx512,
                            row_filter_avx512, dot_avx512, accum_avx512, Tile::gemm_rows, nullptr, nullptr};
  return ks;
}

}  // namespace ec
