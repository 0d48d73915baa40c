// Pruning state of k-means between passes: centre gaps and shifts, and the choice of the mobile group.
#include "internal.hpp"
#include "../tile_driver.hpp"

#include <algorithm>
#include <numeric>

namespace ec {
namespace kmeans_impl {
namespace {

/// Half the distance from each centre to its nearest other centre, a lower bound (from the
/// tile engine with its error bound): a top-1 over the other centres, each row's own excluded;
/// and each centre's neighbour list (the nb_len smallest such bounds, see Prune). The whole
/// set arrives in one tile (ScanShape::set_block 0), so every list is complete after it.
class HalfGapHandler {
 public:
  struct Local {
    std::vector<float> v;                              ///< a centre's tile values (itself: +inf)
    std::vector<std::pair<float, std::int32_t>> near;  ///< nb_len + 1 smallest (tile value, centre)
  };
  HalfGapHandler(const PackedSet& cs, Metric metric, Prune& pr) : cs_(cs), metric_(metric), pr_(pr) {}
  void init(Local& l) const { l.near.reserve(static_cast<std::size_t>(pr_.nb_len + 1)); }
  void begin(Local&, idx_t, idx_t) const {}
  void tile(Local& l, idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm) const {
    const KernelSet& ks = *cs_.ks;
    const idx_t d = cs_.d;
    for (idx_t i = 0; i < qm; ++i) {
      const idx_t ca = q0 + i;
      const double xn = cs_.norm[ca], xsq = xn * xn;
      const double b = f_err_of_tile(
          metric_, row_bound_in(cs_, xsq, cs_.in_err.empty() ? 0.0 : input_error(ks, cs_.src + ca * d, d)), xn);
      // The bounds grow with the tile value (f_of_tile is increasing in it): select on it.
      l.v.resize(static_cast<std::size_t>(bm));
      for (idx_t j = 0; j < bm; ++j) l.v[j] = cs_.add.data()[b0 + j] + cs_.mul * c[i * ldc + j];
      if (ca >= b0 && ca < b0 + bm) l.v[ca - b0] = std::numeric_limits<float>::infinity();
      const auto cap = static_cast<std::size_t>(pr_.nb_len + 1);
      nearest(l, b0, cap);
      auto half = [&](float v) { return 0.5 * dist_lo(metric_, f_of_tile(metric_, v, xsq, xn) - b, d); };
      while (static_cast<idx_t>(l.near.size()) < pr_.nb_len)  // only NaN products leave it short: no bounds
        l.near.push_back({-std::numeric_limits<float>::infinity(), static_cast<std::int32_t>(ca)});
      pr_.half_gap[ca] = half(l.near[0].first);
      for (idx_t t = 0; t < pr_.nb_len; ++t) {
        pr_.nb_half[ca * pr_.nb_len + t] = half(l.near[t].first);
        pr_.nb_ids[ca * pr_.nb_len + t] = l.near[t].second;
      }
      pr_.nb_rest[ca] = l.near.size() == cap ? half(l.near.back().first) : std::numeric_limits<double>::infinity();
    }
  }
  void end(Local&, idx_t, idx_t) const {}
  void finish(Local&) const {}

 private:
  /// The cap smallest of l.v (ascending, at most cap; NaN and +inf left out) into l.near. The
  /// cap-th smallest value is at most the largest of the minima of cap disjoint blocks (cap
  /// distinct values), so only the values up to that are sorted.
  static void nearest(Local& l, idx_t b0, std::size_t cap) {
    const auto n = static_cast<idx_t>(l.v.size()), nb = static_cast<idx_t>(cap);
    float thr = std::numeric_limits<float>::infinity();
    if (n >= nb) {
      thr = -std::numeric_limits<float>::infinity();
      for (idx_t t = 0; t < nb; ++t) {
        const idx_t lo = t * n / nb, hi = (t + 1) * n / nb;
        float m = std::numeric_limits<float>::infinity();
        for (idx_t j = lo; j < hi; ++j) m = std::min(m, l.v[j]);
        thr = std::max(thr, m);
      }
    }
    l.near.clear();
    for (idx_t j = 0; j < n; ++j)
      if (l.v[j] <= thr && l.v[j] < std::numeric_limits<float>::infinity())
        l.near.push_back({l.v[j], static_cast<std::int32_t>(b0 + j)});
    const std::size_t keep = std::min(cap, l.near.size());
    std::partial_sort(l.near.begin(), l.near.begin() + static_cast<std::ptrdiff_t>(keep), l.near.end());
    l.near.resize(keep);
  }

  const PackedSet& cs_;
  const Metric metric_;
  Prune& pr_;
};

}  // namespace

void centre_half_gaps(const PackedSet& cs, const Data& D, Prune& pr) {
  const idx_t k = cs.n;
  pr.half_gap.assign(static_cast<std::size_t>(k), std::numeric_limits<double>::infinity());
  pr.nb_len = k >= 2 ? std::min<idx_t>(k - 1, kNeighbours) : 0;
  pr.nb_ids.resize(static_cast<std::size_t>(k * pr.nb_len));
  pr.nb_half.resize(static_cast<std::size_t>(k * pr.nb_len));
  pr.nb_rest.assign(static_cast<std::size_t>(k), std::numeric_limits<double>::infinity());
  if (k < 2) return;
  ScanShape shape;
  shape.query_block = rows_per_tile(cs.n_pad);
  HalfGapHandler h(cs, D.metric, pr);
  Cancel no_cancel;  // short (k rows): not worth polling
  scan_tiles(cs, cs.src, k, shape, D.threads, no_cancel, h);
}

/// Distance each centre moved (upper bound), and the two largest.
void centre_shifts(const Data& D, const std::vector<float>& oldc, const std::vector<float>& newc, idx_t k,
                   Prune& pr) {
  const idx_t d = D.d;
  pr.shift.assign(static_cast<std::size_t>(k), 0.0);
  for (idx_t c = 0; c < k; ++c) {
    const float* a = oldc.data() + c * d;
    const float* b = newc.data() + c * d;
    double s = 0.0;
    if (D.metric == Metric::L2) {
      for (idx_t f = 0; f < d; ++f) {
        const double t = static_cast<double>(a[f]) - b[f];
        s += t * t;
      }
    } else {  // between the unit vectors a / ||a|| and b / ||b||
      const double na = std::sqrt(sqnorm(a, d)), nb = std::sqrt(sqnorm(b, d));
      for (idx_t f = 0; f < d; ++f) {
        const double t = a[f] / na - b[f] / nb;
        s += t * t;
      }
    }
    pr.shift[c] = s == 0.0 ? 0.0 : std::sqrt(s) * (1.0 + kBoundRel) + 1e-300;
  }
  pr.max1 = pr.max2 = 0.0;
  pr.arg1 = -1;
  for (idx_t c = 0; c < k; ++c) {
    if (pr.shift[c] > pr.max1) {
      pr.max2 = pr.max1;
      pr.max1 = pr.shift[c];
      pr.arg1 = c;
    } else if (pr.shift[c] > pr.max2) {
      pr.max2 = pr.shift[c];
    }
  }
}

/// Per-row cost of the mover stage besides its products, in centre columns (gather, packing,
/// the row's minimum over the mobile centres, its bounds).
constexpr double kMoverRowCost = 16.0;

namespace {

/// The centres ordered for choosing a group: `all` farthest-moved first, `stable` the same
/// order restricted to the centres outside the current mobile group (`was` marks its members).
struct ShiftOrder {
  std::vector<idx_t> old;     ///< the current mobile group
  std::vector<char> was;      ///< per centre: in the current group
  std::vector<idx_t> all;     ///< every centre, farthest first
  std::vector<idx_t> stable;  ///< the centres outside the current group, farthest first

  ShiftOrder(const Prune& pr, idx_t k) : old(pr.movers), was(static_cast<std::size_t>(k), 0) {
    for (idx_t c : old) was[c] = 1;
    auto farther = [&](idx_t a, idx_t b) { return pr.shift[a] != pr.shift[b] ? pr.shift[a] > pr.shift[b] : a < b; };
    all.resize(static_cast<std::size_t>(k));
    std::iota(all.begin(), all.end(), idx_t{0});
    std::sort(all.begin(), all.end(), farther);
    for (idx_t c : all)
      if (!was[c]) stable.push_back(c);
  }
};

/// A candidate group: the first `c` of ShiftOrder::all (reset), or the current group plus the
/// first `c` of ShiftOrder::stable.
struct Candidate {
  bool reset;
  idx_t c;
};

/// The candidate groups: one forced reset (force_movers > 0), none when the bounds are not yet
/// valid, else resets and extensions whose sizes are multiples of nr about 25% apart beyond
/// 8 nr (a few dozen for any k), at most `cap` centres.
std::vector<Candidate> candidate_groups(const Prune& pr, const ShiftOrder& order, idx_t k, idx_t nr, idx_t cap) {
  std::vector<Candidate> cands;
  if (pr.force_movers > 0) {
    cands.push_back({true, cap});
  } else if (pr.force_movers < 0 && pr.valid && k >= 2) {
    auto next = [nr](idx_t c) { return c + std::max(nr, c / 4 / nr * nr); };
    cands.push_back({true, 0});
    for (idx_t c = nr; c <= cap; c = next(c)) cands.push_back({true, c});
    const auto n_old = static_cast<idx_t>(order.old.size());
    const auto n_stable = static_cast<idx_t>(order.stable.size());
    if (n_old > 0)
      for (idx_t c = 0; n_old + c <= cap && c <= n_stable; c = c == 0 ? nr : next(c)) cands.push_back({false, c});
  }
  return cands;
}

/// The largest two shifts and the centre with the largest.
struct TopShifts {
  double s1 = 0.0, s2 = 0.0;
  idx_t arg1 = -1;
};

/// One candidate group as a membership mask, and what the pass needs to know about it.
class GroupMask {
 public:
  GroupMask(const ShiftOrder& order, idx_t k) : order_(order), in_(static_cast<std::size_t>(k)) {}

  void set(const Candidate& g) {
    std::fill(in_.begin(), in_.end(), 0);
    if (!g.reset)
      for (idx_t c : order_.old) in_[c] = 1;
    const std::vector<idx_t>& src = g.reset ? order_.all : order_.stable;
    for (idx_t t = 0; t < g.c; ++t) in_[src[t]] = 1;
  }
  /// Whether the group drops centres of the current one, adds centres to it, and its size.
  void changes(bool& removed, bool& added, idx_t& size) const {
    removed = added = false;
    size = 0;
    for (std::size_t c = 0; c < in_.size(); ++c) {
      removed |= order_.was[c] && !in_[c];
      added |= !order_.was[c] && in_[c];
      size += in_[c];
    }
  }
  /// Largest two shifts of the centres outside the group (member = false) or in it (true).
  TopShifts top_shifts(const std::vector<double>& shift, bool member) const {
    TopShifts t;
    for (std::size_t c = 0; c < in_.size(); ++c) {
      if ((in_[c] != 0) != member) continue;
      if (shift[c] > t.s1) {
        t.s2 = t.s1;
        t.s1 = shift[c];
        t.arg1 = static_cast<idx_t>(c);
      } else if (shift[c] > t.s2) {
        t.s2 = shift[c];
      }
    }
    return t;
  }
  bool contains(idx_t c) const { return in_[c] != 0; }

 private:
  const ShiftOrder& order_;
  std::vector<char> in_;
};

/// A sampled row's bounds: u tightened as the pass would, l and lm as stored, its centre's half
/// gap, and the cost of the local stage when the row would take it (in full rows), else -1.
struct SampledBounds {
  double u, l, lm, hg, local;
};

/// Every (n / 8192)-th row's bounds, for the cost model.
std::vector<SampledBounds> sample_bounds(const PackedSet& cs, const Data& D, const idx_t* labels, const Prune& pr) {
  const idx_t n = D.n;
  const idx_t stride = std::max<idx_t>(1, n / 8192);
  const idx_t ns = (n + stride - 1) / stride;
  const idx_t max_local = local_limit(pr, cs.n_pad);
  std::vector<SampledBounds> rows(static_cast<std::size_t>(ns));
  parallel_for(D.threads, ns, [&](idx_t t) {
    const idx_t i = t * stride, a = labels[i];
    double u = pr.u[i] + pr.shift[a];
    const double hg = pr.half_gap[a];
    if (!(u < std::max(std::min(pr.l[i], pr.lm[i]) - pr.max1, hg)) && (pr.shift[a] > 0.0 || !pr.tight[i]))
      u = std::min(u, dist_hi_fp32(cs, D, i, a));
    double far = 0.0;
    const idx_t s = max_local > 0 ? local_candidates(pr, a, u, far) : -1;
    const double local = s >= 0 && s < max_local
                             ? static_cast<double>((s + 1) * kLocalColumns) / static_cast<double>(cs.n_pad)
                             : -1.0;
    rows[t] = {u, pr.l[i], pr.lm[i], hg, local};
  });
  return rows;
}

/// Estimated work of a pass with the group in `group` over the sampled rows, in full rows: a
/// row costs nothing when its bounds prove it, its local stage's cost when it takes that stage,
/// (|group| + kMoverRowCost) / k_pad when only lm fails, 1 when l fails.
double estimated_cost(const std::vector<SampledBounds>& rows, const GroupMask& group, const Prune& pr,
                      double k_pad) {
  bool removed, added;
  idx_t size;
  group.changes(removed, added, size);
  const double rest_max = group.top_shifts(pr.shift, false).s1;
  const double mobile_max = group.top_shifts(pr.shift, true).s1;
  const double mover_cost = (static_cast<double>(size) + kMoverRowCost) / k_pad;
  double cost = 0.0;
  for (const SampledBounds& r : rows) {
    double l = r.l, lm = r.lm;
    if (size == 0) {
      l = std::min(l, lm) - pr.max1;
      lm = std::numeric_limits<double>::infinity();
    } else {
      if (removed) l = std::min(l, lm);
      if (added) lm = std::min(lm, l);
      l -= rest_max;
      lm -= mobile_max;
    }
    if (r.u < std::max(std::min(l, lm), r.hg)) continue;
    if (r.local >= 0.0) {
      cost += r.local;
      continue;
    }
    cost += r.u < std::max(l, r.hg) ? mover_cost : 1.0;
  }
  return cost;
}

/// The candidate of least estimated cost (a larger group only for a clear gain); the empty
/// reset when there is none, the only one when there is one.
Candidate cheapest_group(const PackedSet& cs, const Data& D, const idx_t* labels, idx_t k, const Prune& pr,
                         const std::vector<Candidate>& cands, GroupMask& group) {
  if (cands.empty()) return {true, 0};
  if (cands.size() == 1) return cands[0];
  const std::vector<SampledBounds> rows = sample_bounds(cs, D, labels, pr);
  const double k_pad = static_cast<double>(round_up(k, D.ks->nr));
  Candidate pick{true, 0};
  double best = std::numeric_limits<double>::infinity();
  for (const Candidate& g : cands) {
    group.set(g);
    const double cost = estimated_cost(rows, group, pr, k_pad);
    if (cost < best * 0.97) {
      best = cost;
      pick = g;
    }
  }
  return pick;
}

/// Stores the chosen group in pr: movers, slot, the groups' largest shifts and the merge flags.
void store_group(const GroupMask& group, idx_t k, Prune& pr) {
  idx_t size;
  group.changes(pr.merge_l, pr.merge_lm, size);
  const TopShifts rest = group.top_shifts(pr.shift, false), mobile = group.top_shifts(pr.shift, true);
  pr.rest1 = rest.s1;
  pr.rest2 = rest.s2;
  pr.rest_arg1 = rest.arg1;
  pr.mob1 = mobile.s1;
  pr.mob2 = mobile.s2;
  pr.mob_arg1 = mobile.arg1;
  pr.movers.clear();
  for (idx_t c = 0; c < k; ++c)
    if (group.contains(c)) pr.movers.push_back(c);
  pr.slot.assign(static_cast<std::size_t>(k), -1);
  for (std::size_t t = 0; t < pr.movers.size(); ++t) pr.slot[pr.movers[t]] = static_cast<std::int32_t>(t);
}

}  // namespace

/// Chooses the mobile group for the next pass (see Prune): either the current group extended
/// by the c stable centres that moved farthest, or (a reset) the c centres that moved farthest,
/// c a multiple of the kernels' panel width (products cost the same up to it) on a grid about
/// 25% apart beyond 8 widths, the group at most k / 2. The choice minimises the estimated work
/// on a sample of rows (estimated_cost). `force_movers` > 0 always resets to the
/// min(force_movers, k - 1) farthest (tests). Sets movers, slot, the groups' largest shifts and
/// the merge flags.
void choose_movers(const PackedSet& cs, const Data& D, const idx_t* labels, idx_t k, Prune& pr) {
  const ShiftOrder order(pr, k);
  const idx_t cap = pr.force_movers > 0 ? std::min<idx_t>(pr.force_movers, k - 1) : k / 2;
  const std::vector<Candidate> cands = candidate_groups(pr, order, k, D.ks->nr, cap);
  GroupMask group(order, k);
  group.set(cheapest_group(cs, D, labels, k, pr, cands, group));
  store_group(group, k, pr);
}

}  // namespace kmeans_impl
}  // namespace ec
