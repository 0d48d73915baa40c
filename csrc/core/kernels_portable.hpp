// Portable pieces that every kernel file compiles with its own instruction-set flags: the walk
// over a panel's row slots (with the zero padding past the last row) and the scalar epilogue
// loops (the whole of the generic kernels, the tails of the vector ones). Internal linkage: each
// translation unit keeps its own copy, so code built with -mavx2 never stands in for the
// generic build's (an inline function with external linkage would be merged by the linker).
#pragma once

#include <cstdint>

#include "kernels.hpp"

namespace ec {
namespace {

/// Panel p of a packed layout of m rows (`width` slots, `depth` words each; word q of slot r at
/// dst[q * width + r]): put_row(r, row, s) fills slot r from row p * width + r (its source row
/// through the optional gather map `rows`, and its scale factor s, 1 without `scale`); the slots
/// past the last row get zero words.
template <class Word, class PutRow>
inline void fill_panel_slots(Word* dst, idx_t p, int width, idx_t m, idx_t depth, const float* src, idx_t ld,
                             const idx_t* rows, const float* scale, PutRow&& put_row) {
  for (int r = 0; r < width; ++r) {
    const idx_t i = p * width + r;
    if (i >= m) {
      for (idx_t q = 0; q < depth; ++q) dst[q * width + r] = Word(0);
      continue;
    }
    put_row(r, src + (rows ? rows[i] : i) * ld, scale ? scale[i] : 1.0f);
  }
}

/// min(best, add[j] + mul * c[j] for j in [j0, n)).
inline float row_min_scalar(const float* c, const float* add, float mul, idx_t j0, idx_t n, float best) {
  for (idx_t j = j0; j < n; ++j) {
    const float v = add[j] + mul * c[j];
    best = v < best ? v : best;
  }
  return best;
}

/// Appends (j, value) for every value add[j] + mul * c[j] <= thr, j in [j0, n), to idx / val
/// from position cnt; returns the new count.
inline idx_t row_filter_scalar(const float* c, const float* add, float mul, idx_t j0, idx_t n, float thr,
                               std::int32_t* idx, float* val, idx_t cnt) {
  for (idx_t j = j0; j < n; ++j) {
    const float v = add[j] + mul * c[j];
    if (v <= thr) {
      idx[cnt] = static_cast<std::int32_t>(j);
      val[cnt] = v;
      ++cnt;
    }
  }
  return cnt;
}

}  // namespace
}  // namespace ec
