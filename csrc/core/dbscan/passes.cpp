// DBSCAN's two passes over the tile pairs left by the bounds, each a body of the tile driver
// (for_each_block over the first tile of the pairs, BlockProducts for the products). Pass 1
// counts neighbours (each unordered tile pair once); pass 2 unions core-core pairs and records
// each border point's nearest core point. Pass 2 skips pairs whose core points are already known
// to be in one component, and a union-find over each pair's slots stops a pair as soon as its
// core points are joined. Every decision within the kernels' error band is re-checked in fp64
// (see engine.hpp), so the result is that of an exact brute force.
#include <atomic>
#include <cstring>
#include <memory>
#include <optional>

#include "../border_key.hpp"
#include "internal.hpp"

namespace ec {
namespace dbscan_impl {
namespace {

/// One thread's buffers for a pass over tile pairs.
struct PassScratch {
  BlockProducts centre_prod;        ///< tile a's rows (bound kernels)
  BlockProducts pair_prod;          ///< tile a's active rows (pair kernels)
  AlignedBuffer<float> centre_dots; ///< tile a's rows times its partners' centres
  AlignedBuffer<float> pair_tile;   ///< active rows times tile b's rows
  PackedSet partner_centres;        ///< tile a's partners' centres
  std::vector<idx_t> active, full;  ///< slots of tile a: rows that need products, rows with all of b
  std::vector<idx_t> rows;          ///< the active rows
  std::vector<std::int32_t> idx;    ///< candidates of a row (slots of tile b)
  std::vector<float> val;

  void init(const Fit& F, const TileBounds& B) {
    centre_prod.init(F.bound_kernels, F.d, kTile);
    pair_prod.init(F.pair_kernels, F.d, kTile);
    centre_dots.resize(static_cast<std::size_t>(kTile * B.max_centre_cols()));
    pair_tile.resize(static_cast<std::size_t>(kTile * kTile));
    idx.resize(kTile);
    val.resize(kTile);
    rows.resize(kTile);
  }
  /// Column count of centre_dots' rows (the partner products of the current tile).
  idx_t centre_ld() const { return partner_centres.n_pad; }
};

/// The neighbour pairs between the active rows of tile a and all rows of tile b: calls
/// on_pair(row_i, row_j, exact, slot_i, slot_j) once per unordered pair within eps; `exact` is
/// the fp64 metric value when it was computed (inside the error band), else -1; the slots are
/// the rows' positions in tiles a and b. With `chunk` > 0 the rows go through the product
/// `chunk` at a time, and the visit ends early once stop() is true.
class NeighbourPairs {
 public:
  NeighbourPairs(const Fit& F, const Layout& L, const PackedSet& set)
      : F_(F), L_(L), set_(set), src_(F.source(F.pair_kernels)), narrow_(F.pair_kernels.input_rel > 0.0),
        eps_metric_(F.cosine ? F.p.eps : F.p.eps * F.p.eps), depth_(F.pair_kernels.depth(F.d)) {}

  template <class OnPair, class Stop>
  void visit(idx_t a, idx_t b, const std::vector<idx_t>& act, PassScratch& s, idx_t chunk, OnPair&& on_pair,
             Stop&& stop) const {
    const idx_t na = static_cast<idx_t>(act.size());
    for (idx_t i = 0; i < na; ++i) s.rows[i] = L_.rows(a)[act[i]];
    const idx_t step = chunk > 0 ? chunk : na;
    for (idx_t i0 = 0; i0 < na; i0 += step) {
      if (i0 > 0 && stop()) return;
      const idx_t m = std::min(step, na - i0);
      s.pair_prod.load_rows(src_, s.rows.data() + i0, m);
      s.pair_prod.multiply(set_.panels.data() + b * kTile * depth_, kTile, s.pair_tile.data(), kTile);
      for (idx_t i = i0; i < i0 + m; ++i)
        row_pairs(a, b, act[i], s.rows[i], s.pair_tile.data() + (i - i0) * kTile, s, on_pair);
    }
  }

 private:
  /// The pairs of one row (slot slot_i of tile a, row ri) from its products with tile b.
  template <class OnPair>
  void row_pairs(idx_t a, idx_t b, idx_t slot_i, idx_t ri, const float* products, PassScratch& s,
                 OnPair& on_pair) const {
    const double thr = F_.cosine ? -(1.0 - F_.p.eps) * F_.xnorm[ri] : eps_metric_ - F_.xsq[ri];
    const float band = row_bound_in(set_, F_.xsq[ri], F_.xerr.empty() ? 0.0 : F_.xerr[ri]);
    const double band32 = narrow_ ? row_bound_rel(set_, F_.xsq[ri], fp32_rel_err(F_.d)) : 0.0;
    const idx_t cnt = F_.pair_kernels.row_filter(products, set_.add.data() + b * kTile, set_.mul, kTile,
                                                 static_cast<float>(thr) + band, s.idx.data(), s.val.data());
    for (idx_t t = 0; t < cnt; ++t) {
      const idx_t jj = s.idx[t];
      if (a == b && jj <= slot_i) continue;  // each unordered pair once; self counted apart
      const idx_t rj = L_.rows(b)[jj];
      double exact = -1.0;
      if (!(s.val[t] < static_cast<float>(thr) - band) && !in_band_neighbours(ri, rj, b * kTile + jj, thr, band32, exact))
        continue;
      on_pair(ri, rj, exact, slot_i, jj);
    }
  }

  /// A candidate inside the tile's error band: an fp32 product decides unless it is within its
  /// own (much narrower) band, where the fp64 value (then stored in `exact`) does.
  bool in_band_neighbours(idx_t ri, idx_t rj, idx_t slot_j, double thr, double band32, double& exact) const {
    const idx_t d = F_.d;
    if (narrow_) {
      const double v32 = fp32_value(set_, F_.x + ri * d, slot_j);
      if (v32 > thr + band32) return false;
      if (v32 < thr - band32) return true;
    }
    exact = exact_value(F_.p.metric, F_.x + ri * d, F_.x + rj * d, d, F_.xnorm[ri], F_.xnorm[rj]);
    return exact <= eps_metric_;
  }

  const Fit& F_;
  const Layout& L_;
  const PackedSet& set_;  ///< the pair tiles
  const RowSource src_;
  const bool narrow_;        ///< the pair kernels are bf16: fp32 products narrow their band
  const double eps_metric_;  ///< eps as a metric value (squared for L2)
  const idx_t depth_;
};

/// Pass 1, per first tile a of its pairs: neighbour counts, counted per slot first (one atomic
/// add per row and tile pair, not per neighbour pair), and which partner pairs held a neighbour pair.
class CountPass {
 public:
  struct Local {
    PassScratch s;
    idx_t slot_counts[2 * kTile];  ///< neighbours found per slot of the pair's two tiles
    idx_t pairs_computed = 0, rows_computed = 0, rows_all_neighbours = 0, rows_pruned_inner_product = 0;
  };

  CountPass(const Fit& F, const Layout& L, const TileBounds& B, const NeighbourPairs& pairs,
            std::atomic<idx_t>* counts, CountResult& res)
      : F_(F), L_(L), B_(B), pairs_(pairs), counts_(counts), res_(res) {}

  void init(Local& l) const { l.s.init(F_, B_); }

  void tile(Local& l, idx_t a) const {
    if (F_.p.prune) B_.partner_products(a, l.s.partner_centres, l.s.centre_prod, l.s.centre_dots.data());
    for (std::size_t pi = 0; pi < B_.partners(a).size(); ++pi)
      if (count_pair(l, a, pi)) res_.linked[a][pi] = 1;
  }

  void finish(Local& l) const {
    res_.pairs_computed += l.pairs_computed;
    res_.rows_computed += l.rows_computed;
    res_.rows_all_neighbours += l.rows_all_neighbours;
    res_.rows_pruned_inner_product += l.rows_pruned_inner_product;
  }

 private:
  /// Counts the neighbour pairs of tile a and its partner pi; true when there was one.
  bool count_pair(Local& l, idx_t a, std::size_t pi) const {
    PassScratch& s = l.s;
    const idx_t b = B_.partners(a)[pi];
    s.full.clear();
    l.rows_pruned_inner_product +=
        B_.rows_in_reach(a, b, pi, s.centre_dots.data(), s.centre_ld(), s.active, a != b && F_.p.prune ? &s.full : nullptr);
    if (s.active.empty() && s.full.empty()) return false;
    idx_t* const count_a = l.slot_counts;
    std::fill(count_a, count_a + 2 * kTile, 0);
    idx_t* const count_b = a == b ? count_a : count_a + kTile;
    bool any = false;
    if (!s.full.empty()) {  // every row of b is a neighbour of these rows: no products
      for (const idx_t i : s.full) count_a[i] += L_.count[b];
      const idx_t nf = static_cast<idx_t>(s.full.size());
      for (idx_t t = 0; t < L_.count[b]; ++t) count_b[t] += nf;
      any = true;
      l.rows_all_neighbours += nf;
    }
    if (!s.active.empty()) {
      ++l.pairs_computed;
      l.rows_computed += static_cast<idx_t>(s.active.size());
      pairs_.visit(a, b, s.active, s, 0, [&](idx_t, idx_t, double, idx_t si, idx_t sj) {
        ++count_a[si];
        ++count_b[sj];
        any = true;
      }, [] { return false; });
    }
    if (!any) return false;
    add_counts(a, count_a);
    if (a != b) add_counts(b, count_b);
    return true;
  }

  void add_counts(idx_t t, const idx_t* slot_counts) const {
    for (idx_t s = 0; s < L_.count[t]; ++s)
      if (slot_counts[s]) counts_[L_.rows(t)[s]].fetch_add(slot_counts[s], std::memory_order_relaxed);
  }

  const Fit& F_;
  const Layout& L_;
  const TileBounds& B_;
  const NeighbourPairs& pairs_;
  std::atomic<idx_t>* counts_;
  CountResult& res_;
};

/// Union-find over the slots of one tile pair (tile a's slots, then tile b's at kTile + slot),
/// for pass 2's core-core links: seeded with the clusters the shared union-find already knows,
/// it passes on only the links that join two of its groups, so a tile pair costs at most one
/// shared union per group instead of one per neighbour pair. `groups` counts the groups of core
/// slots: at 1, no further core-core pair between the two tiles can change anything.
class SlotUnion {
 public:
  SlotUnion(const Layout& L, const std::vector<std::uint8_t>& is_core, ConcurrentUnionFind& uf)
      : L_(L), is_core_(is_core), uf_(uf) {}

  void seed(idx_t a, idx_t b) {
    roots_.clear();
    add_core_slots(a, 0);
    if (b != a) add_core_slots(b, static_cast<int>(kTile));
    for (int v = 0; v < 2 * kTile; ++v) parent_[v] = static_cast<std::int16_t>(v);
    std::sort(roots_.begin(), roots_.end());
    groups = 0;
    for (std::size_t i = 0; i < roots_.size(); ++i) {
      if (i == 0 || roots_[i].first != roots_[i - 1].first) {
        ++groups;
        rep_ = roots_[i].second;
      } else {
        parent_[roots_[i].second] = static_cast<std::int16_t>(rep_);
      }
    }
  }

  /// Joins the groups of slots u and v; true when they were apart.
  bool unite(int u, int v) {
    u = find(u);
    v = find(v);
    if (u == v) return false;
    parent_[std::max(u, v)] = static_cast<std::int16_t>(std::min(u, v));
    --groups;
    return true;
  }

  idx_t groups = 0;

 private:
  /// The core slots of tile t (numbered from `base`) with their shared roots.
  void add_core_slots(idx_t t, int base) {
    for (idx_t s = 0; s < L_.count[t]; ++s) {
      const idx_t r = L_.rows(t)[s];
      if (is_core_[r]) roots_.emplace_back(uf_.find(r), base + static_cast<int>(s));
    }
  }
  int find(int v) {
    while (parent_[v] != v) {
      parent_[v] = parent_[parent_[v]];
      v = parent_[v];
    }
    return v;
  }
  const Layout& L_;
  const std::vector<std::uint8_t>& is_core_;
  ConcurrentUnionFind& uf_;
  std::vector<std::pair<idx_t, int>> roots_;
  std::int16_t parent_[2 * kTile];
  int rep_ = 0;
};

/// What pass 2 knows about each tile after pass 1: whether it has core points (and its first),
/// and whether it has non-core points with neighbours (possible border points).
struct TileFacts {
  std::vector<std::uint8_t> has_core, has_border;
  std::vector<idx_t> first_core;

  TileFacts(const Layout& L, const DbscanResult& out) {
    const idx_t T = L.ntiles;
    has_core.assign(static_cast<std::size_t>(T), 0);
    has_border.assign(static_cast<std::size_t>(T), 0);
    first_core.assign(static_cast<std::size_t>(T), -1);
    for (idx_t t = 0; t < T; ++t)
      for (idx_t s = 0; s < L.count[t]; ++s) {
        const idx_t r = L.rows(t)[s];
        if (out.is_core[r]) {
          has_core[t] = 1;
          if (first_core[t] < 0) first_core[t] = r;
        } else if (out.counts[r] > 1) {
          has_border[t] = 1;
        }
      }
  }
};

/// Pass 2, per first tile a of its pairs, in two phases: the diagonal pairs (a, a) first, so
/// that most tiles are internally merged before the off-diagonal pairs are tested, then the rest.
class JoinPass {
 public:
  struct Local {
    PassScratch s;
    std::optional<SlotUnion> slots;
    idx_t pairs_computed = 0;
  };

  JoinPass(const Fit& F, const Layout& L, const TileBounds& B, const NeighbourPairs& pairs, const CountResult& counted,
           const DbscanResult& out, ConcurrentUnionFind& uf, std::atomic<std::uint64_t>* nearest_core)
      : F_(F), L_(L), B_(B), pairs_(pairs), counted_(counted), out_(out), uf_(uf), nearest_core_(nearest_core),
        facts_(L, out), merged_(static_cast<std::size_t>(L.ntiles)) {
    for (auto& m : merged_) m.store(0);
  }

  void init(Local& l) const {
    l.s.init(F_, B_);
    l.slots.emplace(L_, out_.is_core, uf_);
  }

  void tile(Local& l, idx_t a, bool diagonal) {
    bool have_products = false;
    for (std::size_t pi = 0; pi < B_.partners(a).size(); ++pi) {
      const idx_t b = B_.partners(a)[pi];
      if (diagonal != (a == b) || !may_change(a, b, pi)) continue;
      if (!have_products && F_.p.prune) {
        B_.partner_products(a, l.s.partner_centres, l.s.centre_prod, l.s.centre_dots.data());
        have_products = true;
      }
      join_pair(l, a, b, pi);
    }
  }

  void finish(Local& l) { pairs_computed += l.pairs_computed; }

  idx_t pairs_computed = 0;

 private:
  /// False when the pair cannot change a cluster or a border point: no neighbour pair at all,
  /// no core point, or only core points of both tiles already in one cluster.
  bool may_change(idx_t a, idx_t b, std::size_t pi) {
    const TileFacts& f = facts_;
    if (!counted_.linked[a][pi]) return false;
    if (!f.has_core[a] && !f.has_core[b]) return false;
    const bool borders = f.has_border[a] || f.has_border[b];
    if (!borders && (!f.has_core[a] || !f.has_core[b])) return false;
    return borders || !tile_merged(a) || !tile_merged(b) || !uf_.same(f.first_core[a], f.first_core[b]);
  }

  /// True when every core point of tile t is in one component (components only grow: stays true).
  bool tile_merged(idx_t t) {
    if (merged_[t].load(std::memory_order_relaxed)) return true;
    const idx_t root = uf_.find(facts_.first_core[t]);
    for (idx_t s = 0; s < L_.count[t]; ++s) {
      const idx_t r = L_.rows(t)[s];
      if (out_.is_core[r] && uf_.find(r) != root) return false;
    }
    merged_[t].store(1, std::memory_order_relaxed);
    return true;
  }

  void join_pair(Local& l, idx_t a, idx_t b, std::size_t pi) {
    PassScratch& s = l.s;
    B_.rows_in_reach(a, b, pi, s.centre_dots.data(), s.centre_ld(), s.active, nullptr);
    if (s.active.empty()) return;
    SlotUnion& su = *l.slots;
    su.seed(a, b);
    const bool borders = facts_.has_border[a] || facts_.has_border[b];
    const auto done = [&] { return su.groups <= 1 && !borders; };
    if (done()) return;  // every core point of both tiles already in one cluster
    ++l.pairs_computed;
    pairs_.visit(a, b, s.active, s, kPass2Chunk, [&](idx_t ri, idx_t rj, double exact, idx_t si, idx_t sj) {
      const bool ci = out_.is_core[ri], cj = out_.is_core[rj];
      if (ci && cj) {
        if (su.unite(static_cast<int>(si), static_cast<int>(a == b ? sj : kTile + sj))) uf_.unite(ri, rj);
      } else if (ci != cj) {
        const idx_t core = ci ? ri : rj, bp = ci ? rj : ri;
        if (exact < 0.0)
          exact = exact_value(F_.p.metric, F_.x + bp * F_.d, F_.x + core * F_.d, F_.d, F_.xnorm[bp], F_.xnorm[core]);
        atomic_min(nearest_core_[bp], border_key(exact, core));
      }
    }, done);
  }

  const Fit& F_;
  const Layout& L_;
  const TileBounds& B_;
  const NeighbourPairs& pairs_;
  const CountResult& counted_;
  const DbscanResult& out_;
  ConcurrentUnionFind& uf_;
  std::atomic<std::uint64_t>* nearest_core_;
  const TileFacts facts_;
  std::vector<std::atomic<std::uint8_t>> merged_;  ///< per tile: tile_merged proven
};

}  // namespace

CountResult count_neighbours(const Fit& F, const Layout& L, const PackedSet& set, const TileBounds& B,
                             DbscanResult& out) {
  const idx_t n = F.n, T = L.ntiles;
  std::unique_ptr<std::atomic<idx_t>[]> counts(new std::atomic<idx_t>[static_cast<std::size_t>(n)]);
  for (idx_t i = 0; i < n; ++i) counts[i].store(1, std::memory_order_relaxed);
  CountResult res;
  res.linked.resize(static_cast<std::size_t>(T));
  for (idx_t a = 0; a < T; ++a) res.linked[a].assign(B.partners(a).size(), 0);
  const NeighbourPairs pairs(F, L, set);
  CountPass pass(F, L, B, pairs, counts.get(), res);
  for_each_block<CountPass::Local>(
      F.threads, T, 1, F.cancel, [&](CountPass::Local& l) { pass.init(l); },
      [&](CountPass::Local& l, idx_t a, const StopCheck&) { pass.tile(l, a); },
      [&](CountPass::Local& l) { pass.finish(l); });
  out.counts.resize(static_cast<std::size_t>(n));
  out.is_core.assign(static_cast<std::size_t>(n), 0);
  for (idx_t i = 0; i < n; ++i) {
    out.counts[i] = counts[i].load(std::memory_order_relaxed);
    out.is_core[i] = out.counts[i] >= F.p.min_samples ? 1 : 0;
  }
  return res;
}

idx_t join_clusters(const Fit& F, const Layout& L, const PackedSet& set, const TileBounds& B, const CountResult& counted,
                    const DbscanResult& out, ConcurrentUnionFind& uf, std::atomic<std::uint64_t>* nearest_core) {
  const NeighbourPairs pairs(F, L, set);
  JoinPass pass(F, L, B, pairs, counted, out, uf, nearest_core);
  for (const bool diagonal : {true, false})
    for_each_block<JoinPass::Local>(
        F.threads, L.ntiles, 1, F.cancel, [&](JoinPass::Local& l) { pass.init(l); },
        [&](JoinPass::Local& l, idx_t a, const StopCheck&) { pass.tile(l, a, diagonal); },
        [&](JoinPass::Local& l) { pass.finish(l); });
  return pass.pairs_computed;
}

}  // namespace dbscan_impl
}  // namespace ec
