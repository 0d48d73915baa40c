// The cache blocking shared by the SIMD tile kernels: B panel by B panel, a depth block at a
// time (so a KC x NR slice of B stays in L1), every micro-tile of A against it. Included by
// each kernel file (compiled with its own instruction-set flags); the anonymous namespace gives
// every file its own copy, so no code built for one instruction set leaks into another.
#pragma once

#include "common.hpp"

namespace ec {
namespace {

/// `micro(a, b, kc, c, ldc, accumulate)` computes one MR x NR tile over `kc` depth words.
template <int MR, int NR, idx_t KC, class Word, class Micro>
inline void blocked_gemm(const Word* a, const Word* b, idx_t m_pad, idx_t n_pad, idx_t depth, float* c,
                         idx_t ldc, Micro micro) {
  for (idx_t jp = 0; jp < n_pad; jp += NR) {
    const Word* bp = b + jp * depth;
    for (idx_t k0 = 0; k0 < depth; k0 += KC) {
      const idx_t kc = depth - k0 < KC ? depth - k0 : KC;
      for (idx_t ip = 0; ip < m_pad; ip += MR)
        micro(a + ip * depth + k0 * MR, bp + k0 * NR, kc, c + ip * ldc + jp, ldc, k0 > 0);
    }
  }
}

/// The same blocking with A given as row pointers (`a[i]` points at row i's depth words):
/// `micro(rows, k0, b, kc, c, ldc, accumulate)` computes one MR x NR tile over words
/// [k0, k0 + kc) of the MR rows rows[0..MR).
template <int MR, int NR, idx_t KC, class Word, class Micro>
inline void blocked_gemm_rows(const Word* const* a, const Word* b, idx_t m_pad, idx_t n_pad, idx_t depth,
                              float* c, idx_t ldc, Micro micro) {
  for (idx_t jp = 0; jp < n_pad; jp += NR) {
    const Word* bp = b + jp * depth;
    for (idx_t k0 = 0; k0 < depth; k0 += KC) {
      const idx_t kc = depth - k0 < KC ? depth - k0 : KC;
      for (idx_t ip = 0; ip < m_pad; ip += MR)
        micro(a + ip, k0, bp + k0 * NR, kc, c + ip * ldc + jp, ldc, k0 > 0);
    }
  }
}

}  // namespace
}  // namespace ec
