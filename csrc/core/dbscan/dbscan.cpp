// dbscan_fit: DBSCAN on the tile engine. Points are ordered by a coarse k-means partition and cut
// into tiles of kTile rows, each with a bounding ball (layout.cpp); the tile bounds keep only the
// tile pairs, and the rows of a pair, that can hold a neighbour pair (tile_bounds.cpp); pass 1
// counts neighbours and pass 2 joins core points and attaches border points (passes.cpp). This
// file checks the parameters, estimates the memory and runs the steps in order.
#include <cmath>
#include <memory>
#include <string>

#include "../border_key.hpp"
#include "internal.hpp"

namespace ec {
namespace dbscan_impl {
namespace {

void check_params(const DbscanParams& p, idx_t n, idx_t d) {
  if (n <= 0) fail("DBSCAN needs at least one row (got an empty array)");
  if (d <= 0) fail("DBSCAN needs at least one feature");
  if (!(p.eps > 0.0) || !std::isfinite(p.eps)) fail("eps=" + std::to_string(p.eps) + " should be a finite number > 0");
  if (p.min_samples < 1) fail("min_samples=" + std::to_string(p.min_samples) + " should be >= 1");
  if (p.metric == Metric::IP) fail("DBSCAN supports metric 'l2' or 'cosine'");
  if (p.metric == Metric::Cosine && p.eps >= 2.0)
    fail("eps=" + std::to_string(p.eps) + " is >= 2, the largest cosine distance: every pair would be neighbours");
  if (n >= (idx_t{1} << 31)) fail("DBSCAN supports up to 2^31 - 1 rows per call");
}

/// Working memory without the optional parts (projection table, rows copy) and the tile pairs
/// beyond the allowance: per row (norms, partition, layout, counts, flags, union-find, labels),
/// the packed copies, the tiles' balls and partner lists, and per-thread tiles.
struct MemoryPlan {
  double tiles = 0.0;  ///< tiles, estimated as 1.25 n / kTile plus one per coarse cluster
  double base = 0.0;   ///< bytes

  explicit MemoryPlan(const Fit& F) {
    const double n = static_cast<double>(F.n), d = static_cast<double>(F.d);
    tiles = 1.25 * n / kTile + std::min(4096.0, n / (2 * kTile)) + 1.0;
    base = 100.0 * n + tiles * kTile * (static_cast<double>(F.pair_kernels.depth(F.d)) * 4.0 + 16.0) +
           tiles * (d * 16.0 + 24.0 + 64.0 * 9.0) +
           F.threads * static_cast<double>(kTile) *
               (static_cast<double>(F.bound_kernels.depth(F.d)) + kTile + tiles) * 4.0;
  }
  /// Tile pairs the base allows (64 per tile).
  double pair_allowance() const { return tiles * 64.0; }
};

void row_norms(Fit& F) {
  F.xsq.resize(static_cast<std::size_t>(F.n));
  F.xnorm.resize(static_cast<std::size_t>(F.n));
  for_each_range(F.threads, F.n, 1024, 1, F.cancel, [&](idx_t i0, idx_t i1) {
    for (idx_t i = i0; i < i1; ++i) {
      F.xsq[i] = sqnorm(F.x + i * F.d, F.d);
      F.xnorm[i] = std::sqrt(F.xsq[i]);
    }
  });
  check_sqnorms(F.xsq, "data");
  if (F.cosine)
    for (idx_t i = 0; i < F.n; ++i)
      if (F.xsq[i] == 0.0) fail("row " + std::to_string(i) + " has zero norm; the cosine metric is undefined for it");
}

/// The pair tiles: every tile's slots packed with the pair kernels; padding slots never match.
void pack_pair_tiles(const Fit& F, const Layout& L, PackedSet& set) {
  pack_set(set, F.x, L.ntiles * kTile, F.d, F.p.metric, L.slot_rows.data(), F.threads, &F.pair_kernels);
  for (idx_t t = 0; t < L.ntiles; ++t)
    for (idx_t s = L.count[t]; s < kTile; ++s) set.add.data()[t * kTile + s] = std::numeric_limits<float>::infinity();
}

/// Each row's bf16 rounding error, for the per-row bounds of bf16 products (row_bound_in): the
/// packed set's own for L2 (its slots are the rows, unscaled), recomputed for cosine (the set
/// holds unit rows, the products take the rows as they are).
void row_errors(Fit& F, const Layout& L, const PackedSet& set) {
  if (!(F.pair_kernels.input_rel > 0.0)) return;
  F.xerr.resize(static_cast<std::size_t>(F.n));
  if (!F.cosine) {
    for (idx_t t = 0; t < L.ntiles; ++t)
      for (idx_t i = 0; i < L.count[t]; ++i) F.xerr[L.rows(t)[i]] = set.in_err[t * kTile + i];
    return;
  }
  for_each_range(F.threads, F.n, 256, 1, F.cancel, [&](idx_t i0, idx_t i1) {
    for (idx_t i = i0; i < i1; ++i)
      F.xerr[i] = static_cast<float>(input_error(F.pair_kernels, F.x + i * F.d, F.d) * (1.0 + 1e-6));
  });
}

/// The rows in the pair kernels' word format, row-major, so that gathered rows need no packing
/// (KernelSet::gemm_rows).
void copy_pair_words(Fit& F) {
  const idx_t depth = F.pair_kernels.depth(F.d);
  F.pair_words.resize(static_cast<std::size_t>(F.n * depth));
  for_each_range(F.threads, F.n, 256, 1, F.cancel, [&](idx_t i0, idx_t i1) {
    F.pair_kernels.pack_rows(F.x + i0 * F.d, i1 - i0, F.d, F.pair_words.data() + i0 * depth);
  });
}

/// Labels: clusters numbered in the order of their lowest core row; border points take their
/// nearest core point's.
void number_clusters(const Fit& F, ConcurrentUnionFind& uf, const std::atomic<std::uint64_t>* nearest_core,
                     DbscanResult& out) {
  const idx_t n = F.n;
  out.labels.assign(static_cast<std::size_t>(n), -1);
  std::vector<idx_t> root_label(static_cast<std::size_t>(n), -1);
  idx_t next = 0;
  for (idx_t i = 0; i < n; ++i) {
    if (!out.is_core[i]) continue;
    const idx_t r = uf.find(i);
    if (root_label[r] < 0) root_label[r] = next++;
    out.labels[i] = root_label[r];
  }
  for (idx_t i = 0; i < n; ++i) {
    if (out.is_core[i]) continue;
    const std::uint64_t key = nearest_core[i].load(std::memory_order_relaxed);
    if (key != kNoBorder) out.labels[i] = out.labels[static_cast<idx_t>(key & 0xFFFFFFFFull)];
  }
  out.n_clusters = next;
}

}  // namespace
}  // namespace dbscan_impl

void dbscan_fit(const DbscanParams& p, const float* x, idx_t n, idx_t d, DbscanResult& out, Cancel& cancel) {
  using namespace dbscan_impl;
  check_params(p, n, d);
  Fit F(p, x, n, d, cancel);
  const MemoryPlan mem(F);
  check_memory(mem.base, p.memory_limit, "DBSCAN on " + std::to_string(n) + " x " + std::to_string(d));
  // Four steps for the progress report; the coarse k-means counts into the first.
  cancel.step("DBSCAN layout", 1, 4);
  row_norms(F);

  std::vector<float> coarse_dist;
  const auto coarse = [&] {
    const HoldSteps hold(cancel);
    return coarse_labels(F, coarse_dist);
  }();
  const Layout L = make_layout(F, coarse, coarse_dist);
  const idx_t T = L.ntiles;
  PackedSet set;
  pack_pair_tiles(F, L, set);
  const double reach_eps = F.cosine ? std::sqrt(2.0 * p.eps) : p.eps;
  F.reach = reach_eps * (1.0 + 1e-9) + 1e-12;
  F.reach_in = reach_eps * (1.0 - 1e-7);
  row_errors(F, L, set);

  cancel.step("DBSCAN tile bounds", 2, 4);
  TileBounds B(F, L);
  B.pack_centres();
  // The optional parts, each dropped when it would not fit the memory limit: the projection
  // table (16 bytes per pair of tiles), then the rows copy in the pair kernels' bf16 words
  // (half the input; without it rows are packed per product).
  const double table = TileBounds::table_bytes(T);
  const bool project = p.prune && table <= 1024.0e6 && (p.memory_limit <= 0.0 || mem.base + table <= p.memory_limit);
  const double words_copy = static_cast<double>(n) * F.pair_kernels.depth(d) * 4.0;
  F.rows_copy = F.pair_kernels.gemm_rows && F.pair_kernels.per_word != 1 &&
                (p.memory_limit <= 0.0 || mem.base + (project ? table : 0.0) + words_copy <= p.memory_limit);
  if (F.rows_copy) copy_pair_words(F);
  B.build_table(project);
  B.build_partners(mem.base + (project ? table : 0.0) + (F.rows_copy ? words_copy : 0.0), mem.pair_allowance());

  cancel.step("DBSCAN neighbour counts", 3, 4);
  const CountResult counted = count_neighbours(F, L, set, B, out);
  ConcurrentUnionFind uf(n);
  std::unique_ptr<std::atomic<std::uint64_t>[]> nearest_core(new std::atomic<std::uint64_t>[static_cast<std::size_t>(n)]);
  for (idx_t i = 0; i < n; ++i) nearest_core[i].store(kNoBorder, std::memory_order_relaxed);
  cancel.step("DBSCAN clusters", 4, 4);
  out.pairs_computed_pass2 = join_clusters(F, L, set, B, counted, out, uf, nearest_core.get());
  number_clusters(F, uf, nearest_core.get(), out);

  out.tile_pairs = T * (T + 1) / 2;
  out.pairs_computed_pass1 = counted.pairs_computed;
  out.rows_computed_pass1 = counted.rows_computed;
  out.rows_all_neighbours_pass1 = counted.rows_all_neighbours;
  out.rows_pruned_inner_product_pass1 = counted.rows_pruned_inner_product;
  out.pairs_after_bounds = B.pairs_after_bounds();
  out.projection_bounds = project;
  out.rows_copy = F.rows_copy;
}

}  // namespace ec
