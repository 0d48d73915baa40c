// DBSCAN's border rule in one word: a non-core row joins its nearest core row, by float32
// distance and then the lower row, chosen by an atomic minimum over packed keys (used by the
// in-memory DBSCAN's pass 2 and by radius_pair_links).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "common.hpp"

namespace ec {

/// (distance, row) packed so that unsigned order is the rule's: float32(max(0, exact)) (whose
/// bits order as the non-negative floats do), then the row (< 2^32).
inline std::uint64_t border_key(double exact, idx_t row) {
  const float dist = static_cast<float>(std::max(0.0, exact));
  std::uint32_t bits;
  std::memcpy(&bits, &dist, sizeof(bits));
  return (static_cast<std::uint64_t>(bits) << 32) | static_cast<std::uint64_t>(row);
}

/// No candidate yet.
constexpr std::uint64_t kNoBorder = ~std::uint64_t{0};

inline void atomic_min(std::atomic<std::uint64_t>& a, std::uint64_t v) {
  std::uint64_t cur = a.load(std::memory_order_relaxed);
  while (v < cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

}  // namespace ec
