// DBSCAN's tile bounds: which tile pairs (partner lists) and which rows of a pair can hold a
// neighbour pair, from the tiles' balls, the projection table and the inner-product bounds of
// bounds.hpp. Every bound carries the rounding of the products behind it, so a skipped product
// never held a neighbour pair.
#include <atomic>
#include <cmath>
#include <limits>
#include <string>

#include "bounds.hpp"
#include "internal.hpp"

namespace ec {
namespace dbscan_impl {

void centre_products(const Fit& F, const Layout& L, idx_t t, const PackedSet& cs, BlockProducts& prod, float* out) {
  const idx_t* rows = L.rows(t);
  prod.load_rows(F.source(*cs.ks), rows, L.count[t]);
  prod.multiply(cs.panels.data(), cs.n_pad, out, cs.n_pad);
  if (F.cosine)
    for (idx_t i = 0; i < L.count[t]; ++i) {
      const float inv = static_cast<float>(1.0 / F.xnorm[rows[i]]);
      for (idx_t j = 0; j < cs.n; ++j) out[i * cs.n_pad + j] *= inv;
    }
}

void TileBounds::pack_centres() {
  const idx_t T = L_.ntiles, d = F_.d;
  centre_f_.resize(static_cast<std::size_t>(T * d));
  for (idx_t i = 0; i < T * d; ++i) centre_f_[i] = static_cast<float>(L_.ball_center[i]);
  pack_set(centres_, centre_f_.data(), T, d, Metric::L2, nullptr, F_.threads, &F_.bound_kernels);
  err_ball_rel_ = 4.0 * centres_.rel_err + 1e-6;
  double xmax = 1.0;
  if (!F_.cosine) xmax = *std::max_element(F_.xnorm.begin(), F_.xnorm.end());
  // Rounding of one product x . c_J, taken twice as a margin: fp32, at most rel_err ||x|| ||c_J||
  // (engine.hpp; for cosine the product of unit x, whose extra rounding the rel_err margin
  // covers); bf16, from the actual rounding errors as in row_bound_in (for cosine relative to
  // ||x||, as the products are divided by it).
  const double cmax = std::sqrt(centres_.max_sqnorm);
  err_dot_ = 2.0 * centres_.rel_err * xmax * cmax + 1e-30;
  err_table_ = err_dot_;
  table_bf16_ = false;
  if (F_.pair_kernels.input_rel > 0.0) {
    pack_set(bf16_centres_, centre_f_.data(), T, d, Metric::L2, nullptr, F_.threads, &F_.pair_kernels);
    double row_err_max = 0.0;
    for (idx_t i = 0; i < F_.n; ++i)
      row_err_max = std::max(row_err_max, F_.cosine ? F_.xerr[i] / F_.xnorm[i] : static_cast<double>(F_.xerr[i]));
    const double grow = 1.0 + 0x1p-8;
    const double err_bf16 = 2.0 * ((row_err_max * cmax + xmax * bf16_centres_.in_err_max) * grow * (1.0 + 1e-6) +
                                   fp32_rel_err(d) * xmax * cmax) + 1e-30;
    // The table takes the kernels' own (bf16) products where their rounding is small next to
    // eps (twice as fast; 100k x 384: table 0.12 s -> 0.05 s), else fp32 (data far from the
    // origin, where the rounding of x . c grows).
    table_bf16_ = 4.0 * err_bf16 <= 0.05 * F_.reach * F_.reach;
    if (table_bf16_) err_table_ = err_bf16;
  }
}

void TileBounds::fill_table_row(idx_t t, const float* dots) {
  const idx_t T = L_.ntiles, ld = table_centres().n_pad;
  float* lo_t = lo_.data() + t * T;
  float* hi_t = hi_.data() + t * T;
  std::fill(lo_t, lo_t + T, std::numeric_limits<float>::infinity());
  std::fill(hi_t, hi_t + T, -std::numeric_limits<float>::infinity());
  for (idx_t i = 0; i < L_.count[t]; ++i) {  // row by row: contiguous, vectorised
    const float* v = dots + i * ld;
    for (idx_t j = 0; j < T; ++j) {
      lo_t[j] = std::min(lo_t[j], v[j]);
      hi_t[j] = std::max(hi_t[j], v[j]);
    }
  }
  for (idx_t j = t; j < T; ++j) {  // symmetric: computed once
    const double sep = std::sqrt(sqdist64(L_.ball_center.data() + t * F_.d, L_.ball_center.data() + j * F_.d, F_.d));
    sep_[t * T + j] = sep;
    sep_[j * T + t] = sep;
  }
}

// Inner-product bounds (bounds.hpp) need each tile's smallest and largest row norm (1 for
// cosine: unit-sphere geometry). With c = c_a the maximum of y . c_a over tile b is a table
// entry (hi[b * T + a]); with c = c_b, x . c_b is a partner product.
void TileBounds::norm_ranges() {
  const idx_t T = L_.ntiles;
  nmin_.assign(static_cast<std::size_t>(T), 1.0);
  nmax_.assign(static_cast<std::size_t>(T), 1.0);
  if (F_.cosine) return;
  for (idx_t t = 0; t < T; ++t) {
    nmin_[t] = std::numeric_limits<double>::infinity();
    nmax_[t] = 0.0;
    for (idx_t i = 0; i < L_.count[t]; ++i) {
      nmin_[t] = std::min(nmin_[t], F_.xnorm[L_.rows(t)[i]]);
      nmax_[t] = std::max(nmax_[t], F_.xnorm[L_.rows(t)[i]]);
    }
  }
}

void TileBounds::build_table(bool project) {
  project_ = project;
  if (project_) {
    const idx_t T = L_.ntiles;
    lo_.assign(static_cast<std::size_t>(T * T), 0.0f);
    hi_.assign(lo_.size(), 0.0f);
    sep_.assign(lo_.size(), 0.0);
    const PackedSet& cs = table_centres();
    struct TableScratch {
      BlockProducts prod;
      AlignedBuffer<float> dots;  ///< a tile's rows times every ball centre
    };
    for_each_block<TableScratch>(
        F_.threads, T, 1, F_.cancel,
        [&](TableScratch& s) {
          s.prod.init(table_kernels(), F_.d, kTile);
          s.dots.resize(static_cast<std::size_t>(kTile * cs.n_pad));
        },
        [&](TableScratch& s, idx_t t, const StopCheck&) {
          centre_products(F_, L_, t, cs, s.prod, s.dots.data());
          fill_table_row(t, s.dots.data());
        });
  }
  norm_ranges();
}

bool TileBounds::pair_in_reach(idx_t a, idx_t b) const {
  const idx_t T = L_.ntiles, d = F_.d;
  const double reach = F_.reach;
  const std::vector<double>& rad = L_.ball_radius;
  const double dist_ab =
      project_ ? sep_[a * T + b] : std::sqrt(sqdist64(L_.ball_center.data() + a * d, L_.ball_center.data() + b * d, d));
  const double gap = dist_ab - rad[a] - rad[b];
  if (gap > reach * (1.0 + 1e-7) + 1e-7 * (rad[a] + rad[b])) return false;
  if (!project_) return true;
  const auto ra = s_range(a, a, b), rb = s_range(b, a, b);
  const double w = reach * sep_[a * T + b] * (1.0 + 1e-7) + 4.0 * err_table_;
  if (ra.first > rb.second + w || rb.first > ra.second + w) return false;
  // Every x of a has ||x||^2 >= nmin[a]^2 and ||x - c_a|| <= r_a, and the bound falls as
  // ||x - c_a|| grows: the row-level bound at its weakest holds for the whole tile.
  const double lb_a = sq_lower_by_own_centre(nmin_[a] * nmin_[a], rad[a], nmin_[b], nmax_[b], hi_[b * T + a] + err_table_);
  const double lb_b = sq_lower_by_own_centre(nmin_[b] * nmin_[b], rad[b], nmin_[a], nmax_[a], hi_[a * T + b] + err_table_);
  return !beyond(std::max(lb_a, lb_b), nmax_[a] * nmax_[a] + nmax_[b] * nmax_[b]);
}

// The partner lists and pass 2's flags (9 bytes per tile pair) are data-dependent: the base
// estimate allows `allowance` pairs, but with little pruning (a large eps) there are up to
// T^2 / 2. Pairs beyond the allowance are charged as the lists are built, so that the fit fails
// with MemoryLimitError instead of going past the limit.
void TileBounds::build_partners(double fixed_bytes, double allowance) {
  const idx_t T = L_.ntiles;
  const double limit = F_.p.memory_limit;
  partners_.assign(static_cast<std::size_t>(T), {});
  std::atomic<std::int64_t> pair_slots{0};
  for_each_range(F_.threads, T, 1, 4, F_.cancel, [&](idx_t a0, idx_t a1) {
    for (idx_t a = a0; a < a1; ++a) {
      for (idx_t b = a; b < T; ++b)
        if (a == b || !F_.p.prune || pair_in_reach(a, b)) partners_[a].push_back(b);
      const auto cap = static_cast<std::int64_t>(partners_[a].capacity());
      const double slots = static_cast<double>(pair_slots.fetch_add(cap) + cap);
      if (limit > 0.0 && fixed_bytes + 9.0 * std::max(0.0, slots - allowance) > limit) {
        throw MemoryLimitError("DBSCAN with eps=" + format_number(F_.p.eps) + " on " + std::to_string(F_.n) +
                               " rows finds more tile pairs within reach than memory_limit = " +
                               std::to_string(static_cast<long long>(limit / 1048576.0 + 0.5)) + " MiB holds (" +
                               std::to_string(static_cast<long long>(slots)) + " pairs of " + std::to_string(T) +
                               " tiles so far); use a smaller eps, raise memory_limit, or cluster a sample");
      }
    }
  });
}

idx_t TileBounds::pairs_after_bounds() const {
  idx_t pairs = 0;
  for (const auto& v : partners_) pairs += static_cast<idx_t>(v.size());
  return pairs;
}

void TileBounds::partner_products(idx_t a, PackedSet& cs, BlockProducts& prod, float* out) const {
  pack_set(cs, centre_f_.data(), static_cast<idx_t>(partners_[a].size()), F_.d, Metric::L2, partners_[a].data(), 1,
           &F_.bound_kernels);
  centre_products(F_, L_, a, cs, prod, out);
}

idx_t TileBounds::rows_in_reach(idx_t a, idx_t b, std::size_t pi, const float* centre_dots, idx_t ld,
                                std::vector<idx_t>& act, std::vector<idx_t>* full) const {
  act.clear();
  if (!F_.p.prune) {  // every row of every pair: the reference the pruned runs are tested against
    for (idx_t i = 0; i < L_.count[a]; ++i) act.push_back(i);
    return 0;
  }
  PairReach q;
  q.a = a;
  q.b = b;
  q.col = static_cast<idx_t>(pi);
  q.lim = L_.ball_radius[b] + F_.reach;
  q.csq = centres_.add.data()[b];
  q.csq_a = centres_.add.data()[a];
  q.proj = project_ && a != b;
  if (q.proj) {
    q.range_b = s_range(b, a, b);
    q.w = F_.reach * sep_[a * L_.ntiles + b] * (1.0 + 1e-7) + 2.0 * (err_dot_ + err_table_);
  }
  idx_t ip_pruned = 0;
  for (idx_t i = 0; i < L_.count[a]; ++i) {
    switch (row_reach(q, L_.rows(a)[i], centre_dots + i * ld, full != nullptr)) {
      case RowReach::Active: act.push_back(i); break;
      case RowReach::Full: full->push_back(i); break;
      case RowReach::InnerProductOut: ++ip_pruned; break;
      case RowReach::Out: break;
    }
  }
  return ip_pruned;
}

TileBounds::RowReach TileBounds::row_reach(const PairReach& q, idx_t r, const float* dots, bool want_full) const {
  const idx_t T = L_.ntiles, b = q.b;
  const double rad_b = L_.ball_radius[b];
  const double dot = dots[q.col];
  const double d2 = F_.cosine ? 1.0 + q.csq - 2.0 * dot : F_.xsq[r] + q.csq - 2.0 * dot;
  const double scale = F_.cosine ? 1.0 + q.csq : F_.xsq[r] + q.csq;
  if (!(d2 <= q.lim * q.lim + err_ball_rel_ * scale)) return RowReach::Out;
  if (want_full && std::sqrt(std::max(0.0, d2 + err_ball_rel_ * scale)) + rad_b <= F_.reach_in) return RowReach::Full;
  if (q.a == b) return RowReach::Active;
  const double xs = F_.cosine ? 1.0 : F_.xsq[r], xn = F_.cosine ? 1.0 : F_.xnorm[r];
  const double mag = xs + nmax_[b] * nmax_[b];
  if (beyond(sq_lower_by_tile_centre(xs, xn, dot + err_dot_, rad_b, nmin_[b]), mag)) return RowReach::InnerProductOut;
  if (!q.proj) return RowReach::Active;
  const double dot_a = dots[0];  // column 0: a itself
  const double d2a = xs + q.csq_a - 2.0 * dot_a;
  const double to_own = std::sqrt(std::max(0.0, d2a + err_ball_rel_ * (xs + q.csq_a)));  // >= ||x - c_a||
  if (beyond(sq_lower_by_own_centre(xs, to_own, nmin_[b], nmax_[b], hi_[b * T + q.a] + err_table_), mag))
    return RowReach::InnerProductOut;
  const double sx = dot_a - dot;
  if (sx < q.range_b.first - q.w || sx > q.range_b.second + q.w) return RowReach::Out;
  return RowReach::Active;
}

}  // namespace dbscan_impl
}  // namespace ec
