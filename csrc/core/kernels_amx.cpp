// AMX bf16 tile kernels: the tile loops of kernels_amx_tiles.hpp on the AMX instructions
// (tdpbf16ps: 16 x 16 fp32 accumulators, 16 x 32 bf16 operands, fp32 accumulation). Inputs are
// rounded to bf16 by avx512bf16's packing (the same words, the same input_rel 2^-8 and the same
// input_error_sq), so the error bound and the fp64 re-check are those of the avx512bf16 set and
// results stay identical; the epilogues are the AVX-512 ones. Compiled with -mamx-tile
// -mamx-bf16 (+ AVX-512 BF16); used only when the CPU has AMX and the Linux kernel grants the
// process the tile data state, and only when asked for by name (see dispatch.cpp).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels.hpp"
#include "kernels_amx_tiles.hpp"

namespace ec {
namespace {

// Linux's arch_prctl codes for the dynamically enabled XSAVE features (asm/prctl.h, Linux 5.16).
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

/// out rows 0..15 (stride out_ld) = columns of the 16 x 16 dword block at in (row stride in_ld).
inline void transpose16(const std::uint32_t* in, idx_t in_ld, std::uint32_t* out, idx_t out_ld) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    const __m512i a = _mm512_loadu_si512(in + i * in_ld), b = _mm512_loadu_si512(in + (i + 1) * in_ld);
    t[i] = _mm512_unpacklo_epi32(a, b);      // per 128-bit lane: a0 b0 a1 b1
    t[i + 1] = _mm512_unpackhi_epi32(a, b);  // a2 b2 a3 b3
  }
  for (int g = 0; g < 16; g += 4) {  // u[g + j], lane L: column 4L + j of rows g .. g + 3
    u[g + 0] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // column 4L + j: lane L of u[j], u[4 + j], u[8 + j], u[12 + j]
    const __m512i lo01 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44), hi01 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xEE);
    const __m512i lo23 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44),
                  hi23 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xEE);
    _mm512_storeu_si512(out + (0 + j) * out_ld, _mm512_shuffle_i32x4(lo01, lo23, 0x88));
    _mm512_storeu_si512(out + (4 + j) * out_ld, _mm512_shuffle_i32x4(lo01, lo23, 0xDD));
    _mm512_storeu_si512(out + (8 + j) * out_ld, _mm512_shuffle_i32x4(hi01, hi23, 0x88));
    _mm512_storeu_si512(out + (12 + j) * out_ld, _mm512_shuffle_i32x4(hi01, hi23, 0xDD));
  }
}

// The AMX intrinsics of GCC and Clang take tile numbers as literal tokens, so each templated
// operation picks its literal with `if constexpr`.
#define EC_AMX_TILE_SWITCH(T, OP) \
  if constexpr (T == 0) OP(0);    \
  else if constexpr (T == 1) OP(1); \
  else if constexpr (T == 2) OP(2); \
  else if constexpr (T == 3) OP(3); \
  else if constexpr (T == 4) OP(4); \
  else if constexpr (T == 5) OP(5); \
  else if constexpr (T == 6) OP(6); \
  else OP(7)

/// The real tile instructions.
struct AmxTileOps {
  void configure() {
    static const AmxTileConfig cfg;
    _tile_loadconfig(&cfg);
  }
  void release() { _tile_release(); }
  template <int T>
  void zero() {
#define EC_AMX_ZERO(t) _tile_zero(t)
    EC_AMX_TILE_SWITCH(T, EC_AMX_ZERO);
#undef EC_AMX_ZERO
  }
  template <int T>
  void load(const std::uint32_t* p, idx_t stride_bytes) {
#define EC_AMX_LOAD(t) _tile_loadd(t, p, stride_bytes)
    EC_AMX_TILE_SWITCH(T, EC_AMX_LOAD);
#undef EC_AMX_LOAD
  }
  template <int T>
  void store(float* p, idx_t stride_bytes) {
#define EC_AMX_STORE(t) _tile_stored(t, p, stride_bytes)
    EC_AMX_TILE_SWITCH(T, EC_AMX_STORE);
#undef EC_AMX_STORE
  }
  /// tdpbf16ps for the four (accumulator, A, B) triples of AmxGemm::block.
  template <int C, int A, int B>
  void dp() {
    static_assert((C == 0 && A == 4 && B == 6) || (C == 1 && A == 4 && B == 7) || (C == 2 && A == 5 && B == 6) ||
                      (C == 3 && A == 5 && B == 7),
                  "AmxGemm::block's tile triples only");
    if constexpr (C == 0) _tile_dpbf16ps(0, 4, 6);
    else if constexpr (C == 1) _tile_dpbf16ps(1, 4, 7);
    else if constexpr (C == 2) _tile_dpbf16ps(2, 5, 6);
    else _tile_dpbf16ps(3, 5, 7);
  }
  static void transpose_panel(const std::uint32_t* panel, idx_t depth, std::uint32_t* out, idx_t kd) {
    amx_transpose_panel(panel, depth, out, kd);
  }
};
#undef EC_AMX_TILE_SWITCH

using Gemm = AmxGemm<AmxTileOps>;

/// Asks Linux for the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), once
/// per process (the permission covers every thread); throws when the kernel refuses it.
void request_tile_permission() {
  static std::once_flag once;
  static int refused = 0;
  std::call_once(once, [] {
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) refused = errno;
  });
  if (refused)
    throw std::runtime_error(std::string("kernel set 'amx': Linux refused this process the AMX tile data state "
                                         "(arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): ") +
                             std::strerror(refused) + "); AMX needs Linux 5.16 or later");
}

}  // namespace

void amx_transpose_panel(const std::uint32_t* panel, idx_t depth, std::uint32_t* out, idx_t kd) {
  constexpr int kRows = 32;
  const idx_t full = depth / 16 * 16;
  for (idx_t q0 = 0; q0 < full; q0 += 16)
    for (int r0 = 0; r0 < kRows; r0 += 16) transpose16(panel + q0 * kRows + r0, kRows, out + r0 * kd + q0, kd);
  for (int r = 0; r < kRows; ++r) {
    for (idx_t q = full; q < depth; ++q) out[r * kd + q] = panel[q * kRows + r];
    for (idx_t q = depth; q < kd; ++q) out[r * kd + q] = 0;
  }
}

const KernelSet& amx_kernels() {
  request_tile_permission();
  const KernelSet& bf = avx512bf16_kernels();
  static const KernelSet ks{"amx",       Gemm::kMR,     Gemm::kNR,      2,         0x1p-8,
                            bf.pack,     Gemm::gemm,    bf.row_min,     bf.row_min2, bf.row_filter,
                            bf.dot,      bf.accum,      Gemm::gemm_rows, bf.pack_rows, bf.input_error_sq};
  return ks;
}

double amx_tile_peak_gflops(long long iterations) {
  request_tile_permission();
  alignas(64) std::uint32_t operand[16 * 16];
  for (auto& w : operand) w = 0x3F803F80u;  // the bf16 pair (1, 1): nonzero data, sums stay finite
  alignas(64) float sink[16 * 16];
  AmxTileOps ops;
  ops.configure();
  ops.zero<0>();
  ops.zero<1>();
  ops.zero<2>();
  ops.zero<3>();
  ops.load<4>(operand, 64);
  ops.load<5>(operand, 64);
  ops.load<6>(operand, 64);
  ops.load<7>(operand, 64);
  const auto t0 = std::chrono::steady_clock::now();
  for (long long i = 0; i < iterations; ++i) {  // four independent accumulator chains
    ops.dp<0, 4, 6>();
    ops.dp<1, 4, 7>();
    ops.dp<2, 5, 6>();
    ops.dp<3, 5, 7>();
  }
  ops.store<0>(sink, 64);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ops.release();
  // Each tdpbf16ps: 16 x 16 outputs x 32 products, 2 flops each.
  return static_cast<double>(iterations) * 4.0 * 16.0 * 16.0 * 32.0 * 2.0 / seconds * 1e-9;
}

}  // namespace ec
