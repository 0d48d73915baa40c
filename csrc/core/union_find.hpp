// A lock-free union-find over 64-bit indices: links the larger root under the smaller, so the
// partition (and each component's root, its smallest member) does not depend on thread timing.
#pragma once

#include <atomic>
#include <memory>

#include "common.hpp"

namespace ec {

class ConcurrentUnionFind {
 public:
  explicit ConcurrentUnionFind(idx_t n) : n_(n), parent_(new std::atomic<idx_t>[static_cast<std::size_t>(n)]) {
    for (idx_t i = 0; i < n; ++i) parent_[i].store(i, std::memory_order_relaxed);
  }
  idx_t find(idx_t x) const {
    while (true) {
      const idx_t p = parent_[x].load(std::memory_order_acquire);
      if (p == x) return x;
      const idx_t gp = parent_[p].load(std::memory_order_acquire);
      // Path halving; a failed exchange only means another thread shortened it first.
      if (gp != p) {
        idx_t expected = p;
        parent_[x].compare_exchange_weak(expected, gp, std::memory_order_release,
                                         std::memory_order_relaxed);
      }
      x = gp;
    }
  }
  /// Merges the sets of a and b; returns true when they were separate.
  bool unite(idx_t a, idx_t b) {
    while (true) {
      a = find(a);
      b = find(b);
      if (a == b) return false;
      if (a < b) std::swap(a, b);  // a is the larger root: it goes under b
      idx_t expected = a;
      if (parent_[a].compare_exchange_strong(expected, b, std::memory_order_acq_rel)) return true;
    }
  }
  bool same(idx_t a, idx_t b) const {
    while (true) {
      a = find(a);
      b = find(b);
      if (a == b) return true;
      if (parent_[a].load(std::memory_order_acquire) == a) return false;
    }
  }
  idx_t size() const { return n_; }

 private:
  idx_t n_;
  std::unique_ptr<std::atomic<idx_t>[]> parent_;
};

}  // namespace ec
