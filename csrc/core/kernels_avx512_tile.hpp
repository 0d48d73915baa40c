// The 12x32 AVX-512 micro-kernel and its two drivers (A packed in panels, or A read through
// row pointers), shared by the fp32 and the bf16 kernel sets. `Op` supplies what differs: the
// word type, loading 16 words of B, broadcasting one word of A, and the multiply-add (vfmadd
// on fp32, vdpbf16ps on bf16 pairs). Included only by files compiled with AVX-512 flags; the
// anonymous namespace gives each its own copy (see kernels_blocking.hpp).
#pragma once

#include <immintrin.h>

#include "common.hpp"
#include "kernels_blocking.hpp"

namespace ec {
namespace {

template <class Op>
struct Avx512Tile {
  using Word = typename Op::Word;
  static constexpr int kMR = 12;
  static constexpr int kNR = 32;
  static constexpr idx_t kKC = 256;  // depth words per block: a 256x32 slice of B (32 KiB) in L1

  /// One 12x32 tile of C over kc depth words; a(k, r) is word k (of this depth block) of row r.
  template <bool Accumulate, class ASource>
  static inline void micro(ASource a, const Word* b, idx_t kc, float* c, idx_t ldc) {
    __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r) {
      acc0[r] = Accumulate ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps();
      acc1[r] = Accumulate ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
    }
    for (idx_t k = 0; k < kc; ++k) {
      const auto b0 = Op::load(b);
      const auto b1 = Op::load(b + 16);
#pragma GCC unroll 12
      for (int r = 0; r < kMR; ++r) {
        const auto av = Op::broadcast(a(k, r));
        acc0[r] = Op::madd(acc0[r], av, b0);
        acc1[r] = Op::madd(acc1[r], av, b1);
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
  static inline void tile(ASource a, const Word* b, idx_t kc, float* c, idx_t ldc, bool acc) {
    if (acc)
      micro<true>(a, b, kc, c, ldc);
    else
      micro<false>(a, b, kc, c, ldc);
  }

  /// KernelSet::gemm: A packed in panels of kMR rows.
  static void gemm(const float* af, const float* bf, idx_t m_pad, idx_t n_pad, idx_t depth, float* c, idx_t ldc) {
    blocked_gemm<kMR, kNR, kKC>(reinterpret_cast<const Word*>(af), reinterpret_cast<const Word*>(bf), m_pad, n_pad,
                                depth, c, ldc,
                                [](const Word* ap, const Word* bp, idx_t kc, float* cp, idx_t ld, bool acc) {
                                  tile([ap](idx_t k, int r) { return ap[k * kMR + r]; }, bp, kc, cp, ld, acc);
                                });
  }

  /// KernelSet::gemm_rows: A read from row pointers (words k0 .. k0 + kc of kMR rows), the same
  /// products in the same order as packing those rows, so the same results.
  static void gemm_rows(const float* const* af, const float* bf, idx_t m_pad, idx_t n_pad, idx_t depth, float* c,
                        idx_t ldc) {
    blocked_gemm_rows<kMR, kNR, kKC>(reinterpret_cast<const Word* const*>(af), reinterpret_cast<const Word*>(bf),
                                     m_pad, n_pad, depth, c, ldc,
                                     [](const Word* const* rows, idx_t k0, const Word* bp, idx_t kc, float* cp,
                                        idx_t ld, bool acc) {
                                       const Word* p[kMR];
                                       for (int r = 0; r < kMR; ++r) p[r] = rows[r] + k0;
                                       tile([&p](idx_t k, int r) { return p[r][k]; }, bp, kc, cp, ld, acc);
                                     });
  }
};

}  // namespace
}  // namespace ec
