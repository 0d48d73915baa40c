// A scalar model of the AMX bf16 tile instructions, running the AMX set's tile loops
// (kernels_amx_tiles.hpp) in the portable build: the kernel set "amx-model", selectable by name
// only (tests, EMBEDCLUSTER_ISA=amx-model), never chosen automatically (it is slow). It tests the
// operand layout, the tile loops and the error bound on machines without AMX.
//
// The modelled tdpbf16ps (Intel SDM, "TDPBF16PS"): for each row m and column n of the
// accumulator, two fp32 partial sums (the even and the odd bf16 of each pair) start at zero and
// take, pair k by pair k, the product of A[m].bf16[2k + e] and B[k].bf16[2n + e] with an fp32
// fused multiply-add, round to nearest even; input denormals count as zero (DAZ) and output
// denormals are flushed to zero (FTZ); then C[m][n] += (even + odd), each sum rounded to nearest
// even with FTZ. A product of two bf16 values is exact in fp32 (8 x 8 significant bits), so the
// fused and the unfused readings agree except where a product underflows. Whatever order the
// hardware sums in, the fp32 accumulation bound of engine.hpp (any order, with or without
// fusing) holds for it and for this model.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels.hpp"
#include "kernels_amx_tiles.hpp"
#include "kernels_portable.hpp"

namespace ec {
namespace {

inline float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

/// A bf16 value as fp32 with denormals treated as zero (keeping the sign).
inline float bf16_daz(std::uint16_t h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  return (u & 0x7F800000u) == 0 ? float_of(u & 0x80000000u) : float_of(u);
}

/// An fp32 result with denormals flushed to zero (keeping the sign).
inline float ftz(float v) { return (bits_of(v) & 0x7F800000u) == 0 ? float_of(bits_of(v) & 0x80000000u) : v; }

/// The tile registers as memory: 8 tiles of 16 rows x 16 dwords; configure/release do nothing
/// (every tile has the one shape the loops configure).
struct ModelTileOps {
  std::uint32_t tile[8][16][16];

  void configure() {}
  void release() {}
  template <int T>
  void zero() {
    std::memset(tile[T], 0, sizeof(tile[T]));
  }
  template <int T>
  void load(const std::uint32_t* p, idx_t stride_bytes) {
    for (int r = 0; r < 16; ++r) std::memcpy(tile[T][r], p + r * (stride_bytes / 4), 64);
  }
  template <int T>
  void store(float* p, idx_t stride_bytes) {
    for (int r = 0; r < 16; ++r) std::memcpy(p + r * (stride_bytes / 4), tile[T][r], 64);
  }
  template <int C, int A, int B>
  void dp() {
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float even = 0.0f, odd = 0.0f;
        for (int k = 0; k < 16; ++k) {
          const std::uint32_t a = tile[A][m][k], b = tile[B][k][n];
          even = ftz(std::fma(bf16_daz(static_cast<std::uint16_t>(a)), bf16_daz(static_cast<std::uint16_t>(b)), even));
          odd = ftz(std::fma(bf16_daz(static_cast<std::uint16_t>(a >> 16)), bf16_daz(static_cast<std::uint16_t>(b >> 16)),
                             odd));
        }
        const float acc = float_of(tile[C][m][n]);
        tile[C][m][n] = bits_of(ftz(acc + ftz(even + odd)));
      }
  }
  static void transpose_panel(const std::uint32_t* panel, idx_t depth, std::uint32_t* out, idx_t kd) {
    transpose_panel_scalar(panel, depth, out, kd);
  }
};

using ModelGemm = AmxGemm<ModelTileOps>;

/// The bf16 pair word of values lo, hi (bf16_round_bits: nearest, ties to even).
inline std::uint32_t pair_word(float lo, float hi) {
  return (bf16_round_bits(bits_of(lo)) >> 16) | bf16_round_bits(bits_of(hi));
}

/// The bf16 packing (the layout of avx512bf16's pack_bf16), one value at a time.
void pack_bf16_scalar(const float* src, idx_t ld, const idx_t* rows, const float* scale, idx_t m, idx_t d, int width,
                      float* out) {
  const idx_t depth = (d + 1) / 2;
  auto* o = reinterpret_cast<std::uint32_t*>(out);
  for (idx_t p = 0; p < (m + width - 1) / width; ++p) {
    std::uint32_t* dst = o + p * depth * width;
    fill_panel_slots(dst, p, width, m, depth, src, ld, rows, scale, [&](int r, const float* row, float s) {
      for (idx_t q = 0; q < depth; ++q) {
        const float lo = scale ? row[2 * q] * s : row[2 * q];
        const float hi = 2 * q + 1 < d ? (scale ? row[2 * q + 1] * s : row[2 * q + 1]) : 0.0f;
        dst[q * width + r] = pair_word(lo, hi);
      }
    });
  }
}

/// KernelSet::pack_rows: row-major pair words.
void pack_rows_bf16_scalar(const float* src, idx_t n, idx_t d, float* out) {
  pack_bf16_scalar(src, d, nullptr, nullptr, n, d, 1, out);
}

}  // namespace

const KernelSet& amx_model_kernels() {
  const KernelSet& g = generic_kernels();
  static const KernelSet ks{"amx-model",   ModelGemm::kMR, ModelGemm::kNR,     2,
                            0x1p-8,        pack_bf16_scalar, ModelGemm::gemm,  g.row_min,
                            g.row_min2,    g.row_filter,     g.dot,            g.accum,
                            ModelGemm::gemm_rows, pack_rows_bf16_scalar, input_error_sq_generic};
  return ks;
}

}  // namespace ec
