// 8 x 8 transposes of 32-bit words in AVX2 registers, shared by the files compiled with AVX2 or
// AVX-512 flags: the bf16 packer (words of 8 rows into panel order) and KernelSet::transpose.
// The anonymous namespace gives each including file its own copy (see kernels_blocking.hpp).
#pragma once

#include <immintrin.h>

#include "common.hpp"

namespace ec {
namespace {

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

/// KernelSet::transpose: 8 x 8 blocks through registers, the edges one value at a time.
inline void transpose_avx2(const float* src, idx_t lds, idx_t rows, idx_t cols, float* dst, idx_t ldd) {
  const idx_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
  for (idx_t i = 0; i < r8; i += 8)
    for (idx_t j = 0; j < c8; j += 8) {
      __m256i w[8];
      for (int r = 0; r < 8; ++r) w[r] = _mm256_castps_si256(_mm256_loadu_ps(src + (i + r) * lds + j));
      transpose8x8(w);
      for (int r = 0; r < 8; ++r) _mm256_storeu_ps(dst + (j + r) * ldd + i, _mm256_castsi256_ps(w[r]));
    }
  for (idx_t i = 0; i < rows; ++i)
    for (idx_t j = i < r8 ? c8 : 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

}  // namespace
}  // namespace ec
