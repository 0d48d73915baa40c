// The tile engine: packed point sets, error bounds of the fast products, exact fp64 re-checks,
// and the parallel driver that streams query blocks against a packed set.
//
// Exactness. A tile value is v = add[j] + mul * dot_f(x, y_j) where dot_f is the kernel's
// fp32 dot product. For the L2 metric add[j] = ||y_j||^2 (fp32, from an fp64 sum) and mul = -2,
// so v + ||x||^2 approximates ||x - y_j||^2. Classic floating-point analysis (Higham, "Accuracy
// and Stability of Numerical Algorithms", eq. 3.5) bounds an fp32 dot product of length d,
// accumulated in any order with or without FMA, by |dot_f - dot| <= gamma_{2d} sum|x_k y_k|
// <= gamma_{2d} ||x|| ||y||, gamma_m = m u / (1 - m u), u = 2^-24. Since 2||x|| ||y|| <=
// ||x||^2 + ||y||^2 and the norms and the final multiply-add each add at most a few units of
// roundoff relative to ||x||^2 + ||y||^2:
//     |v - v_exact| <= B(x) = rel_err(d) * (||x||^2 + max_j ||y_j||^2),
//     rel_err(d) = (4 d + 32) u       (a safe over-estimate of gamma_{2d} + 8u).
// For the inner product (mul = -1, add = 0) |v - v_exact| <= rel_err ||x|| max_j ||y_j||, and
// for cosine the packed rows are unit vectors, so the bound is rel_err ||x|| (1 + 4u).
// A kernel that rounds its inputs (bf16) adds 2 * input_rel * ||x|| ||y|| to the dot product's
// error, which tile_rel_err(d, kernels) includes.
// Hence a decision can differ from the exact one only for candidates whose approximate values
// lie within 2B of the decision threshold (the best value for argmin, the k-th best for top-k,
// the radius for eps); exactly those candidates are re-evaluated in fp64 from the original
// float32 inputs. Results are therefore those of an fp64 brute force on the fp32 data (ties
// broken by the lower index), whatever kernel computed the tiles. A kernel with a larger error
// (bf16) only changes rel_err.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <cstring>
#include <vector>

#include "common.hpp"
#include "kernels.hpp"

namespace ec {

/// Relative error bound of a tile value for vectors of dimension d (see the file comment).
inline double tile_rel_err(idx_t d, const KernelSet& ks) {
  // fp32 accumulation of d products, plus the rounding of both inputs when the kernel packs
  // them in a narrower type (bf16 keeps 8 significant bits: each value within a relative
  // 2^-8, so each product within 2 * 2^-8 + 2^-16 of the exact one).
  return (4.0 * static_cast<double>(d) + 32.0) * 0x1p-24 + 2.02 * ks.input_rel;
}

/// Sum of f(k) over k < d in fp64, in a fixed order that does not depend on the instruction
/// set: eight interleaved partial sums, then a fixed tree (the compiler can vectorise it).
template <class F>
inline double sum8(idx_t d, F f) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  idx_t k = 0;
  for (; k + 8 <= d; k += 8)
    for (int t = 0; t < 8; ++t) acc[t] += f(k + t);
  double s = 0.0;
  for (; k < d; ++k) s += f(k);
  return s + (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
}

/// Squared norm of a float32 row, summed in fp64.
inline double sqnorm(const float* x, idx_t d) {
  return sum8(d, [x](idx_t k) { return static_cast<double>(x[k]) * x[k]; });
}

/// Squared distance of two fp64 rows.
inline double sqdist64(const double* a, const double* b, idx_t d) {
  return sum8(d, [a, b](idx_t k) { return (a[k] - b[k]) * (a[k] - b[k]); });
}

/// Largest squared row norm the tiles accept: products of two such rows stay far below
/// FLT_MAX (3.4e38) in fp32 and bf16, so no tile value overflows to inf or NaN.
constexpr double kMaxSqNorm = 1e36;

/// Fails with a clear message when a squared norm is too large for the float tiles.
inline void check_sqnorm(double sq, idx_t row, const char* what) {
  // A float32 row's fp64 squared norm is finite exactly when all its values are.
  if (!std::isfinite(sq))
    fail(std::string(what) + " row " + std::to_string(row) +
         " contains NaN or infinity; remove or impute those values");
  if (!(sq <= kMaxSqNorm))
    fail(std::string(what) + " row " + std::to_string(row) + " has norm " + std::to_string(std::sqrt(sq)) +
         ", too large for float32 arithmetic (limit 1e18); rescale the data, e.g. divide by its largest value");
}

/// Checks every squared norm (first offending row reported).
inline void check_sqnorms(const std::vector<double>& sq, const char* what, const idx_t* rows = nullptr) {
  for (std::size_t i = 0; i < sq.size(); ++i)
    if (!(sq[i] <= kMaxSqNorm)) check_sqnorm(sq[i], rows ? rows[i] : static_cast<idx_t>(i), what);
}

/// The exact (fp64) ranking value of a pair in the metric's "smaller is closer" form:
/// L2: ||x - y||^2; IP: -x.y; Cosine: 1 - x.y / (||x|| ||y||).
/// Sums are taken in a fixed order (eight interleaved partial sums, then a fixed tree) that does
/// not depend on the instruction set, so every build path gets the same bits; the independent
/// partial sums let the compiler vectorise.
inline double exact_value(Metric m, const float* x, const float* y, idx_t d, double xnorm,
                          double ynorm) {
  if (m == Metric::L2)
    return sum8(d, [x, y](idx_t k) {
      const double v = static_cast<double>(x[k]) - y[k];
      return v * v;
    });
  const double s = sum8(d, [x, y](idx_t k) { return static_cast<double>(x[k]) * y[k]; });
  if (m == Metric::IP) return -s;
  return 1.0 - s / (xnorm * ynorm);
}

/// A set of rows packed into kernel panels, with what the epilogues and re-checks need.
struct PackedSet {
  Metric metric = Metric::L2;
  idx_t n = 0, d = 0, n_pad = 0;
  AlignedBuffer<float> panels;  ///< n_pad * depth(d) words, panels of kernels().nr rows
  AlignedBuffer<float> add;     ///< per row: ||y||^2 (L2) or 0; +inf for padding rows
  float mul = -2.0f;            ///< multiplier of the dot product in a tile value
  double rel_err = 0.0;         ///< relative error bound of its tile values (tile_rel_err of the kernel set that packed it)
  const KernelSet* ks = nullptr;  ///< the kernel set that packed it (products must use the same)
  double max_sqnorm = 0.0;      ///< max ||y||^2 over packed rows (1 for cosine)
  std::vector<double> norm;     ///< ||y|| of the original rows, fp64 (for exact re-checks)
  const float* src = nullptr;   ///< the original rows (row-major, stride d), for re-checks
  const idx_t* rows = nullptr;  ///< optional gather map: packed row i is src row rows[i]
  /// Kernels that round their inputs (bf16): each packed row's rounding error ||y' - y^||
  /// (y' the float row as packed, scaled for cosine; y^ its rounded words), rounded up, and
  /// the largest of them. Empty / 0 for fp32 kernels.
  std::vector<float> in_err;
  double in_err_max = 0.0;

  const float* row(idx_t i) const { return src + (rows ? rows[i] : i) * d; }
};

/// Packs n rows of y (optionally gathered through `rows`) for metric m. For cosine the packed
/// rows are normalised to unit length; zero rows are rejected there.
void pack_set(PackedSet& out, const float* y, idx_t n, idx_t d, Metric m, const idx_t* rows,
              int threads, const KernelSet* ks = nullptr);

/// Re-usable per-row candidate list for top-k selection with exact re-check.
/// Keeps every candidate whose tile value is within `window` (= 2B) of the current k-th best.
class RowCands {
 public:
  struct Cand {
    float v;
    idx_t j;
  };
  /// `slack`: candidates kept beyond 2k before a compaction (memory vs compaction work).
  void reset(int k, float window, int slack = 64) {
    k_ = k;
    slack_ = slack;
    window_ = window;
    thr_ = std::numeric_limits<float>::infinity();
    c_.clear();
    c_.reserve(static_cast<std::size_t>(2 * k + slack));  // exactly what a list can hold: no doubling
  }
  float threshold() const { return thr_; }
  void add(float v, idx_t j) {
    c_.push_back({v, j});
    if (static_cast<int>(c_.size()) >= 2 * k_ + slack_) compact();
  }
  /// Sets the threshold to the k-th best value + window and drops what lies beyond it.
  void compact() {
    if (static_cast<int>(c_.size()) < k_) return;
    std::nth_element(c_.begin(), c_.begin() + (k_ - 1), c_.end(),
                     [](const Cand& a, const Cand& b) { return a.v < b.v; });
    const float kth = c_[k_ - 1].v;
    thr_ = kth + window_;
    c_.erase(std::remove_if(c_.begin(), c_.end(), [&](const Cand& c) { return c.v > thr_; }),
             c_.end());
  }
  std::vector<Cand>& cands() { return c_; }

 private:
  int k_ = 1;
  int slack_ = 64;
  float window_ = 0.0f;
  float thr_ = std::numeric_limits<float>::infinity();
  std::vector<Cand> c_;
};

/// Final exact selection: evaluates every kept candidate in fp64 and writes the k best
/// (exact value, index) pairs in ascending order.
void select_exact(RowCands& rc, int k, const float* x, double xnorm, const PackedSet& set,
                  std::vector<std::pair<double, idx_t>>& scratch, double* out_val, idx_t* out_idx);

/// Window half-width B(x) for a query row with squared norm xsq against `set`, for products
/// with relative error bound e (set.rel_err for the set's tiles).
inline float row_bound_rel(const PackedSet& set, double xsq, double e) {
  double b;
  if (set.metric == Metric::L2)
    b = e * (xsq + set.max_sqnorm);
  else if (set.metric == Metric::IP)
    b = e * std::sqrt(xsq * set.max_sqnorm);
  else
    b = e * std::sqrt(xsq) * (1.0 + 1e-6);
  // Rounding B itself to float must not shrink it; a tiny floor keeps all-zero data exact too.
  return static_cast<float>(b * (1.0 + 1e-6)) + std::numeric_limits<float>::min();
}

/// Window half-width B(x) of the set's tile values.
inline float row_bound(const PackedSet& set, double xsq) { return row_bound_rel(set, xsq, set.rel_err); }

/// The relative error bound of an fp32 product of length d (KernelSet::dot or fp32 tiles).
inline double fp32_rel_err(idx_t d) { return (4.0 * static_cast<double>(d) + 32.0) * 0x1p-24; }

/// ||x' - round(x')|| for x' = x * scale (float products, as the packers compute them) and
/// round the rounding of the kernel set `ks` (bf16), in fp64 and rounded up: the rounding error
/// of a row when ks packs it. 0 for kernels that keep fp32.
inline double input_error(const KernelSet& ks, const float* x, idx_t d, float scale = 1.0f) {
  if (ks.input_rel == 0.0) return 0.0;
  const double sq = ks.input_error_sq ? ks.input_error_sq(x, d, scale) : input_error_sq_generic(x, d, scale);
  return std::sqrt(sq) * (1.0 + 1e-12);
}

/// B(x) for a row x (squared norm xsq, rounding error e_x from input_error) against `set`:
/// with kernels that round their inputs, the rounding part of the bound from the rows' actual
/// errors instead of the worst case. For the exact dot product and the rounded one,
///   |x . y - x^ . y^| <= ||x - x^|| ||y^|| + ||x|| ||y - y^|| <= e_x M + ||x|| e_max,
/// M >= every ||y^|| and ||x||. The form is symmetric (e_x <= e_max, ||x^|| <= (1 + 2^-8) ||x||),
/// so a product used for both of its rows (the kNN self-join) is within both rows' bounds. The
/// fp32 accumulation of the rounded products keeps the fp32 bound (with its margin), and L2
/// values carry the dot product twice. Typical rows err by half the worst case or less.
inline float row_bound_in(const PackedSet& set, double xsq, double e_x) {
  if (set.in_err.empty()) return row_bound(set, xsq);
  const double grow = 1.0 + 0x1p-8;
  const double m = std::sqrt(set.max_sqnorm) * grow;
  const double in = e_x * m + std::sqrt(xsq) * grow * set.in_err_max;
  const double c = set.metric == Metric::L2 ? 2.0 : 1.0;
  return row_bound_rel(set, xsq, fp32_rel_err(set.d)) + static_cast<float>(c * in * (1.0 + 1e-6));
}

/// The tile-form value (add[j] + mul * x.y_j) of row j of `set` from an fp32 product
/// (KernelSet::dot) instead of the packed tile; its error is within row_bound_rel(.., fp32_rel_err).
inline double fp32_value(const PackedSet& set, const float* x, idx_t j) {
  const double dt = set.ks->dot(x, set.row(j), set.d);
  return set.metric == Metric::L2       ? static_cast<double>(set.add.data()[j]) - 2.0 * dt
         : set.metric == Metric::Cosine ? -dt / set.norm[j]
                                        : -dt;
}

/// Narrows a candidate list (indices into `set`, all within 2B of the best tile value) with
/// fp32 products, which are far tighter than bf16 tiles: keeps only the candidates whose fp32
/// value lies within 2 B32 of the best fp32 value. Every candidate that could be the exact
/// best survives (same argument as for the tiles). Returns the new count.
inline idx_t narrow_fp32(const PackedSet& set, const float* x, double xsq, std::int32_t* idx, idx_t cnt,
                         double* scratch) {
  const double b32 = row_bound_rel(set, xsq, fp32_rel_err(set.d));
  double best = std::numeric_limits<double>::infinity();
  for (idx_t t = 0; t < cnt; ++t) {
    const double v = fp32_value(set, x, idx[t]);
    scratch[t] = v;
    best = std::min(best, v);
  }
  idx_t kept = 0;
  for (idx_t t = 0; t < cnt; ++t)
    if (scratch[t] <= best + 2.0 * b32) idx[kept++] = idx[t];
  return kept;
}

/// Rate of the tile products alone (a benchmark helper): `rows` random rows, packed 144 at a
/// time (the k-means query tile) and multiplied by `cols` packed rows of dimension d, on
/// `threads` threads, without any epilogue; the fastest of three runs after a warm-up.
/// gflops = 2 * rows * cols * d / seconds.
struct TileRate {
  double seconds = 0.0, gflops = 0.0;
  std::string kernels;
};
TileRate tile_product_rate(idx_t rows, idx_t cols, idx_t d, const KernelSet* kernel_set, int threads);

/// Per-thread buffers for one query block: packed rows and the tile of products.
struct TileScratch {
  AlignedBuffer<float> a;
  AlignedBuffer<float> c;
  AlignedBuffer<float> p;           ///< extra products (DBSCAN: rows x ball centres)
  std::vector<idx_t> rows;          ///< gathered row indices
  std::vector<std::int32_t> idx;
  std::vector<float> val;
  std::vector<double> dval;         ///< fp32 re-check values (narrow_fp32)
  std::vector<const float*> ptrs;   ///< row pointers for KernelSet::gemm_rows
};

}  // namespace ec
