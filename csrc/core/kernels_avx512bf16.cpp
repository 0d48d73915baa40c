// AVX-512 BF16 tile kernels: inputs rounded to bf16 when packed, products summed in fp32 by
// vdpbf16ps (two bf16 products per fp32 lane per instruction: twice the fp32 FMA rate).
// The rounding of the inputs (relative 2^-8 each: bf16 keeps 8 significant bits, so a value
// just under a midpoint such as 1 + 2^-8 moves by 2^-8) is covered by KernelSet::input_rel in the
// error bound of engine.hpp, so every decision that the rounding could flip is re-checked in
// fp64 and results stay exact. Compiled with -mavx512bf16 (+ AVX-512F/BW/VL/DQ).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels.hpp"
#include "kernels_portable.hpp"
#include "kernels_avx512_tile.hpp"

namespace ec {
namespace {

/// bf16 pair words: vdpbf16ps (two products per fp32 lane) on a broadcast pair of A.
struct Bf16Op {
  using Word = std::uint32_t;
  static __m512bh load(const std::uint32_t* b) { return (__m512bh)_mm512_load_si512(b); }
  static __m512bh broadcast(std::uint32_t a) { return (__m512bh)_mm512_set1_epi32(static_cast<int>(a)); }
  static __m512 madd(__m512 acc, __m512bh a, __m512bh b) { return _mm512_dpbf16_ps(acc, a, b); }
};
using Tile = Avx512Tile<Bf16Op>;
constexpr int kMR = Tile::kMR;
constexpr int kNR = Tile::kNR;

/// Round to nearest even; inputs are finite (validated by the callers).
inline std::uint32_t bf16_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return bf16_round_bits(u) >> 16;
}

/// bf16_round_bits on 16 floats' bits at once: the bf16 word of each in its high half.
inline __m512i bf16_round_vec(__m512i u) {
  const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1), keep = _mm512_set1_epi32(-65536);
  return _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(u, bias), _mm512_and_si512(_mm512_srli_epi32(u, 16), one)),
                          keep);
}

/// 8 words (16 values) of a row: bf16 pair words, as bf16_bits.
inline __m256i words8(const float* v) {
  const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(v));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_round_vec(u), 16));
}

/// w[r] holds words (r, 0..7) of an 8 x 8 block; afterwards w[j] holds words (0..7, j).
inline void transpose8x8(__m256i w[8]) {
  __m256i t[8], u[8];
  for (int r = 0; r < 8; r += 2) {
    t[r] = _mm256_unpacklo_epi32(w[r], w[r + 1]);      // rows r, r+1: words 0 1 | 4 5
    t[r + 1] = _mm256_unpackhi_epi32(w[r], w[r + 1]);  // words 2 3 | 6 7
  }
  for (int h = 0; h < 8; h += 4) {  // rows h .. h+3: words j | j + 4 in u[h + j]
    u[h + 0] = _mm256_unpacklo_epi64(t[h], t[h + 2]);
    u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);
    u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);
    u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    w[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
    w[j + 4] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
  }
}

/// Words q0 .. q0 + 7 of 8 rows (x[r]: row r's 16 values from pair q0) into the panel layout:
/// a transpose of 8 x 8 words, then word q0 + j of rows r0 .. r0 + 7 with one store.
inline void put8x8(const float* const* x, std::uint32_t* dst, int width) {
  __m256i w[8];
  for (int r = 0; r < 8; ++r) w[r] = words8(x[r]);
  transpose8x8(w);
  for (int j = 0; j < 8; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j * width), w[j]);
}

/// The same for 4 rows (4 words per store).
inline void put4x8(const float* const* x, std::uint32_t* dst, int width) {
  __m256i w[4], t[4];
  for (int r = 0; r < 4; ++r) w[r] = words8(x[r]);
  t[0] = _mm256_unpacklo_epi32(w[0], w[1]);
  t[1] = _mm256_unpackhi_epi32(w[0], w[1]);
  t[2] = _mm256_unpacklo_epi32(w[2], w[3]);
  t[3] = _mm256_unpackhi_epi32(w[2], w[3]);
  w[0] = _mm256_unpacklo_epi64(t[0], t[2]);  // words 0 | 4
  w[1] = _mm256_unpackhi_epi64(t[0], t[2]);  // 1 | 5
  w[2] = _mm256_unpacklo_epi64(t[1], t[3]);  // 2 | 6
  w[3] = _mm256_unpackhi_epi64(t[1], t[3]);  // 3 | 7
  for (int j = 0; j < 4; ++j) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j * width), _mm256_castsi256_si128(w[j]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (j + 4) * width), _mm256_extracti128_si256(w[j], 1));
  }
}

/// A full panel of unscaled rows (width a multiple of 4, at most 64): 8 (or 4) rows at a time,
/// their words transposed in registers, so each store writes consecutive words of the panel;
/// the rest of each row word by word.
void pack_bf16_full_panel(const float* src, idx_t ld, const idx_t* rows, idx_t p, idx_t d, idx_t depth, int width,
                          std::uint32_t* dst) {
  const float* x[64];
  for (int r = 0; r < width; ++r) x[r] = src + (rows ? rows[p * width + r] : p * width + r) * ld;
  idx_t q = 0;
  for (; 2 * q + 16 <= d; q += 8) {
    int r = 0;
    for (; r + 8 <= width; r += 8) put8x8(x + r, dst + q * width + r, width);
    if (r < width) put4x8(x + r, dst + q * width + r, width);
    for (int t = 0; t < width; ++t) x[t] += 16;
  }
  for (int r = 0; r < width; ++r)
    for (idx_t qq = q; qq < depth; ++qq) {
      const float* row = x[r] - 2 * q;
      const float lo = row[2 * qq];
      const float hi = 2 * qq + 1 < d ? row[2 * qq + 1] : 0.0f;
      dst[qq * width + r] = bf16_bits(lo) | (bf16_bits(hi) << 16);
    }
}

/// One row (scaled by s when `scaled`) into slot r of a panel: without a scale 16 values (8 words)
/// at a time, with the same integer rounding as bf16_bits, then word by word.
void pack_bf16_row(const float* row, float s, bool scaled, idx_t d, idx_t depth, int width, int r,
                   std::uint32_t* dst) {
  idx_t q = 0;
  if (!scaled) {
    alignas(32) std::uint32_t w8[8];
    for (; 2 * q + 16 <= d; q += 8) {
      const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(row + 2 * q));
      const __m512i r16 = _mm512_srli_epi32(bf16_round_vec(u), 16);
      _mm256_store_si256(reinterpret_cast<__m256i*>(w8), _mm512_cvtepi32_epi16(r16));
      for (int t = 0; t < 8; ++t) dst[(q + t) * width + r] = w8[t];
    }
  }
  for (; q < depth; ++q) {
    const float lo = row[2 * q] * s;
    const float hi = 2 * q + 1 < d ? row[2 * q + 1] * s : 0.0f;
    dst[q * width + r] = bf16_bits(lo) | (bf16_bits(hi) << 16);
  }
}

/// Layout: out[p * depth * width + q * width + r] = bf16(v[r][2q]) | bf16(v[r][2q + 1]) << 16,
/// depth = ceil(d / 2); missing values (odd d, padding rows) are zero.
void pack_bf16(const float* src, idx_t ld, const idx_t* rows, const float* scale, idx_t m, idx_t d,
               int width, float* out) {
  const idx_t depth = (d + 1) / 2;
  const idx_t panels = (m + width - 1) / width;
  std::uint32_t* o = reinterpret_cast<std::uint32_t*>(out);
  for (idx_t p = 0; p < panels; ++p) {
    std::uint32_t* dst = o + p * depth * width;
    if (!scale && width % 4 == 0 && width <= 64 && (p + 1) * width <= m) {
      pack_bf16_full_panel(src, ld, rows, p, d, depth, width, dst);
      continue;
    }
    fill_panel_slots(dst, p, width, m, depth, src, ld, rows, scale, [&](int r, const float* row, float s) {
      pack_bf16_row(row, s, scale != nullptr, d, depth, width, r, dst);
    });
  }
}

/// Row-major bf16 words: out[i * depth + q] = the word pack_bf16 writes for row i, pair q.
void pack_rows_bf16(const float* src, idx_t n, idx_t d, float* out) {
  const idx_t depth = (d + 1) / 2;
  std::uint32_t* o = reinterpret_cast<std::uint32_t*>(out);
  for (idx_t i = 0; i < n; ++i) {
    const float* row = src + i * d;
    std::uint32_t* dst = o + i * depth;
    idx_t q = 0;
    for (; 2 * q + 16 <= d; q += 8) {
      const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(row + 2 * q));
      const __m512i r16 = _mm512_srli_epi32(bf16_round_vec(u), 16);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + q), _mm512_cvtepi32_epi16(r16));
    }
    for (; q < depth; ++q) {
      const float lo = row[2 * q];
      const float hi = 2 * q + 1 < d ? row[2 * q + 1] : 0.0f;
      dst[q] = bf16_bits(lo) | (bf16_bits(hi) << 16);
    }
  }
}

/// KernelSet::input_error_sq: 16 values at a time, the rounding as pack_bf16's.
double input_error_sq_bf16(const float* x, idx_t d, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
  idx_t k = 0;
  for (; k < d; k += 16) {
    const __mmask16 m = d - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (d - k)) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    if (scale != 1.0f) v = _mm512_mul_ps(v, vs);
    const __m512i u = _mm512_castps_si512(v);
    const __m512i r = bf16_round_vec(u);
    const __m512 diff = _mm512_sub_ps(v, _mm512_castsi512_ps(r));  // exact
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(diff));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(diff), 1)));
    acc0 = _mm512_fmadd_pd(lo, lo, acc0);
    acc1 = _mm512_fmadd_pd(hi, hi, acc1);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
}

}  // namespace

const KernelSet& avx512bf16_kernels() {
  static const KernelSet ks{"avx512bf16",       kMR,       kNR, 2, 0x1p-8, pack_bf16, Tile::gemm,
                            avx512_kernels().row_min, row_min2_avx512, avx512_kernels().row_filter, dot_avx512,
                            accum_avx512,       Tile::gemm_rows, pack_rows_bf16, input_error_sq_bf16};
  return ks;
}

}  // namespace ec
