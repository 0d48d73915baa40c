// The AMX tile loops, written once over a "tile ops" policy: the real AMX instructions
// (kernels_amx.cpp, compiled with -mamx-tile -mamx-bf16) or a scalar model of them that follows
// the architecture's semantics (kernels_amx_model.cpp, portable), so the loops and the operand
// layout are tested on every machine.
//
// Tiles. All eight tile registers are configured as 16 rows x 64 bytes (palette 1): an fp32
// accumulator tile is 16 x 16 values, an operand tile 16 rows of 16 bf16 pairs. tdpbf16ps
// C += A . B reads A row-major (row m: 16 pair words of A's row m) and B pair-major (row k:
// pair k of 16 columns); the B panels of the bf16 packing (avx512bf16's pack_bf16: word q of
// panel slot r at q * nr + r) are already pair-major, so a 16 x 16 block of a panel is one tile
// load with a stride of nr words. A's packed panels are pair-major too, so each A panel is
// transposed once per product into a row-major scratch (32 rows x depth rounded up to 16
// words, zero padded) and reused against every B panel.
//
// Register use: accumulators 0..3 (a 32 x 32 block of C, 2 x 2 tiles), A tiles 4, 5 (rows 0-15
// and 16-31), B tiles 6, 7 (columns 0-15 and 16-31): 4 loads per 4 tile products. The
// accumulators stay in their tiles over the whole depth, so C is written once.
//
// Policy interface (`Ops`): configure() (load the 64-byte palette-1 configuration),
// zero<T>(), load<T>(ptr, stride_bytes), dp<C, A, B>() (tdpbf16ps), store<T>(ptr, stride_bytes),
// release(); transpose_panel(panel, depth, out, kd) writes A's row-major scratch.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "common.hpp"

namespace ec {
namespace {

/// The 64-byte tile configuration (palette 1): all eight tiles 16 rows x 64 bytes.
struct AmxTileConfig {
  std::uint8_t palette_id = 1;
  std::uint8_t start_row = 0;
  std::uint8_t reserved0[14] = {};
  std::uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};  ///< bytes per row of tiles 0..7 (8..15 unused)
  std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};     ///< rows of tiles 0..7
};
static_assert(sizeof(AmxTileConfig) == 64, "the tile configuration is 64 bytes");

/// Row-major scratch of an A panel from its pair-major words: out[r * kd + q] = panel[q * 32 + r]
/// for q < depth, zero for depth <= q < kd. The portable version; the AMX ops use a vector one.
inline void transpose_panel_scalar(const std::uint32_t* panel, idx_t depth, std::uint32_t* out, idx_t kd) {
  constexpr int kRows = 32;
  for (int r = 0; r < kRows; ++r)
    for (idx_t q = depth; q < kd; ++q) out[r * kd + q] = 0;
  for (idx_t q = 0; q < depth; ++q)
    for (int r = 0; r < kRows; ++r) out[r * kd + q] = panel[q * kRows + r];
}

template <class Ops>
struct AmxGemm {
  static constexpr int kMR = 32;   ///< rows of A per panel: two 16-row tiles
  static constexpr int kNR = 32;   ///< rows of B per panel: two 16-column tiles
  static constexpr idx_t kKW = 16;  ///< pair words per tile row (64 bytes)

  /// Per-thread scratch: A's row-major panel and B's zero-padded last depth block per panel.
  struct Scratch {
    std::vector<std::uint32_t> a_rows, b_tails;
  };
  static Scratch& scratch() {
    static thread_local Scratch s;
    return s;
  }

  /// B panels' last depth block (depth % 16 pair rows), copied and zero padded to 16 rows, so a
  /// tile load never reads past the panel; empty when depth is a multiple of 16.
  static void copy_b_tails(const std::uint32_t* b, idx_t n_pad, idx_t depth, std::vector<std::uint32_t>& tails) {
    const idx_t full = depth / kKW, rest = depth - full * kKW;
    tails.clear();
    if (rest == 0) return;
    const idx_t panels = n_pad / kNR;
    tails.assign(static_cast<std::size_t>(panels * kKW * kNR), 0u);
    for (idx_t p = 0; p < panels; ++p)
      std::memcpy(tails.data() + p * kKW * kNR, b + p * kNR * depth + full * kKW * kNR,
                  static_cast<std::size_t>(rest * kNR) * sizeof(std::uint32_t));
  }

  /// C block (32 x 32 at c) = A's row-major scratch (32 rows of kd words) times one B panel.
  static void block(Ops& ops, const std::uint32_t* a_rows, idx_t kd, const std::uint32_t* b, const std::uint32_t* b_tail,
                    idx_t depth, float* c, idx_t ldc) {
    ops.template zero<0>();
    ops.template zero<1>();
    ops.template zero<2>();
    ops.template zero<3>();
    const idx_t full = depth / kKW, a_stride = kd * 4, b_stride = kNR * 4;
    for (idx_t kb = 0; kb < kd / kKW; ++kb) {
      const std::uint32_t* bk = kb < full ? b + kb * kKW * kNR : b_tail;
      ops.template load<4>(a_rows + kb * kKW, a_stride);
      ops.template load<5>(a_rows + 16 * kd + kb * kKW, a_stride);
      ops.template load<6>(bk, b_stride);
      ops.template load<7>(bk + 16, b_stride);
      ops.template dp<0, 4, 6>();
      ops.template dp<1, 4, 7>();
      ops.template dp<2, 5, 6>();
      ops.template dp<3, 5, 7>();
    }
    const idx_t c_stride = ldc * 4;
    ops.template store<0>(c, c_stride);
    ops.template store<1>(c + 16, c_stride);
    ops.template store<2>(c + 16 * ldc, c_stride);
    ops.template store<3>(c + 16 * ldc + 16, c_stride);
  }

  /// Every A panel (its row-major scratch filled by fill_a(ip, scratch, kd)) against every
  /// B panel. The tile configuration is per thread, so each call loads it and releases it.
  template <class FillA>
  static void run(const std::uint32_t* b, idx_t m_pad, idx_t n_pad, idx_t depth, float* c, idx_t ldc, FillA fill_a) {
    if (m_pad == 0 || n_pad == 0) return;
    const idx_t kd = round_up(depth < 1 ? 1 : depth, kKW);
    Scratch& s = scratch();
    s.a_rows.resize(static_cast<std::size_t>(kMR * kd));
    copy_b_tails(b, n_pad, depth, s.b_tails);
    Ops ops;
    ops.configure();
    for (idx_t ip = 0; ip < m_pad; ip += kMR) {
      fill_a(ip, s.a_rows.data(), kd);
      for (idx_t jp = 0; jp < n_pad; jp += kNR) {
        const std::uint32_t* tail = s.b_tails.empty() ? nullptr : s.b_tails.data() + (jp / kNR) * kKW * kNR;
        block(ops, s.a_rows.data(), kd, b + jp * depth, tail, depth, c + ip * ldc + jp, ldc);
      }
    }
    ops.release();
  }

  /// KernelSet::gemm: A packed in pair-major panels of kMR rows (pack_bf16).
  static void gemm(const float* af, const float* bf, idx_t m_pad, idx_t n_pad, idx_t depth, float* c, idx_t ldc) {
    const auto* a = reinterpret_cast<const std::uint32_t*>(af);
    run(reinterpret_cast<const std::uint32_t*>(bf), m_pad, n_pad, depth, c, ldc,
        [a, depth](idx_t ip, std::uint32_t* out, idx_t kd) { Ops::transpose_panel(a + ip * depth, depth, out, kd); });
  }

  /// KernelSet::gemm_rows: A's rows from pointers (pack_rows words); the scratch holds the
  /// same words as gemm's, so the products are bit-identical.
  static void gemm_rows(const float* const* af, const float* bf, idx_t m_pad, idx_t n_pad, idx_t depth, float* c,
                        idx_t ldc) {
    run(reinterpret_cast<const std::uint32_t*>(bf), m_pad, n_pad, depth, c, ldc,
        [af, depth](idx_t ip, std::uint32_t* out, idx_t kd) {
          for (int r = 0; r < kMR; ++r) {
            std::uint32_t* dst = out + r * kd;
            std::memcpy(dst, af[ip + r], static_cast<std::size_t>(depth) * sizeof(std::uint32_t));
            for (idx_t q = depth; q < kd; ++q) dst[q] = 0;
          }
        });
  }
};

}  // namespace
}  // namespace ec
