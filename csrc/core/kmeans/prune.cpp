// Pruning state of k-means between passes: centre gaps and shifts, and the choice of the mobile group.
#include "internal.hpp"
#include "../tile_driver.hpp"

#include <numeric>

namespace ec {
namespace kmeans_impl {
namespace {

/// Half the distance from each centre to its nearest other centre, a lower bound (from the
/// tile engine with its error bound): a top-1 over the other centres, each row's own excluded.
class HalfGapHandler {
 public:
  struct Local {};
  HalfGapHandler(const PackedSet& cs, Metric metric, std::vector<double>& out) : cs_(cs), metric_(metric), out_(out) {}
  void init(Local&) const {}
  void begin(Local&, idx_t, idx_t) const {}
  void tile(Local&, idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm) const {
    const KernelSet& ks = *cs_.ks;
    const idx_t d = cs_.d;
    for (idx_t i = 0; i < qm; ++i) {
      const idx_t ca = q0 + i;
      const double xn = cs_.norm[ca], xsq = xn * xn;
      const double b = f_err_of_tile(
          metric_, row_bound_in(cs_, xsq, cs_.in_err.empty() ? 0.0 : input_error(ks, cs_.src + ca * d, d)), xn);
      double best = std::numeric_limits<double>::infinity();
      for (idx_t j = 0; j < bm; ++j) {
        if (b0 + j == ca) continue;
        const float v = cs_.add.data()[b0 + j] + cs_.mul * c[i * ldc + j];
        best = std::min(best, f_of_tile(metric_, v, xsq, xn) - b);
      }
      out_[ca] = 0.5 * dist_lo(metric_, best, d);
    }
  }
  void end(Local&, idx_t, idx_t) const {}
  void finish(Local&) const {}

 private:
  const PackedSet& cs_;
  const Metric metric_;
  std::vector<double>& out_;
};

}  // namespace

void centre_half_gaps(const PackedSet& cs, const Data& D, std::vector<double>& out) {
  const idx_t k = cs.n;
  out.assign(static_cast<std::size_t>(k), std::numeric_limits<double>::infinity());
  if (k < 2) return;
  ScanShape shape;
  shape.query_block = rows_per_tile(cs.n_pad);
  HalfGapHandler h(cs, D.metric, out);
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

/// Chooses the mobile group for the next pass (see Prune): either the current group extended
/// by the c stable centres that moved farthest, or (a reset) the c centres that moved farthest,
/// c a multiple of the kernels' panel width (products cost the same up to it) on a grid about
/// 25% apart beyond 8 widths, the group at most k / 2. The choice minimises the estimated work on a sample of rows: a row costs nothing when
/// its bounds (u tightened as in the pass) prove it, (|group| + kMoverRowCost) / k_pad of a full
/// row when only lm fails (its mobile products are assumed to prove it), and a full row when l
/// fails. `force_movers` > 0 always resets to the min(force_movers, k - 1) farthest (tests).
/// Sets movers, slot, the groups' largest shifts and the merge flags.
void choose_movers(const PackedSet& cs, const Data& D, const idx_t* labels, idx_t k, Prune& pr) {
  const std::vector<idx_t> old = pr.movers;
  std::vector<char> was(static_cast<std::size_t>(k), 0);
  for (idx_t c : old) was[c] = 1;
  const idx_t n = D.n, nr = D.ks->nr;
  const idx_t cap = pr.force_movers > 0 ? std::min<idx_t>(pr.force_movers, k - 1) : k / 2;
  auto farther = [&](idx_t a, idx_t b) { return pr.shift[a] != pr.shift[b] ? pr.shift[a] > pr.shift[b] : a < b; };
  std::vector<idx_t> all(static_cast<std::size_t>(k));  // every centre, farthest first
  std::iota(all.begin(), all.end(), idx_t{0});
  std::sort(all.begin(), all.end(), farther);
  std::vector<idx_t> stable;  // the stable centres, farthest first
  for (idx_t c : all)
    if (!was[c]) stable.push_back(c);
  // Candidate groups: (reset, c). A group is the first c of `all` (reset) or old + the first c of `stable`.
  struct Cand {
    bool reset;
    idx_t c;
  };
  std::vector<Cand> cands;
  if (pr.force_movers > 0) {
    cands.push_back({true, cap});
  } else if (pr.force_movers < 0 && pr.valid && k >= 2) {
    // Sizes: multiples of nr, about 25% apart beyond 8 nr (a few dozen candidates for any k).
    auto next = [nr](idx_t c) { return c + std::max(nr, c / 4 / nr * nr); };
    cands.push_back({true, 0});
    for (idx_t c = nr; c <= cap; c = next(c)) cands.push_back({true, c});
    if (!old.empty())
      for (idx_t c = 0; static_cast<idx_t>(old.size()) + c <= cap && c <= static_cast<idx_t>(stable.size());
           c = c == 0 ? nr : next(c))
        cands.push_back({false, c});
  }
  std::vector<char> in(static_cast<std::size_t>(k));
  auto group_of = [&](const Cand& g) {
    std::fill(in.begin(), in.end(), 0);
    if (!g.reset)
      for (idx_t c : old) in[c] = 1;
    const std::vector<idx_t>& src = g.reset ? all : stable;
    for (idx_t t = 0; t < g.c; ++t) in[src[t]] = 1;
  };
  // Whether the group in `in` drops centres of the old one, adds centres to it, and its size.
  auto changes = [&](bool& removed, bool& added, idx_t& size) {
    removed = added = false;
    size = 0;
    for (idx_t c = 0; c < k; ++c) {
      removed |= was[c] && !in[c];
      added |= !was[c] && in[c];
      size += in[c];
    }
  };
  // Largest two shifts (and the argmax) of the centres with in[c] == want.
  auto top2 = [&](char want, double& s1, double& s2, idx_t& a1) {
    s1 = s2 = 0.0;
    a1 = -1;
    for (idx_t c = 0; c < k; ++c) {
      if (in[c] != want) continue;
      if (pr.shift[c] > s1) {
        s2 = s1;
        s1 = pr.shift[c];
        a1 = c;
      } else if (pr.shift[c] > s2) {
        s2 = pr.shift[c];
      }
    }
  };
  Cand pick{true, 0};
  if (cands.size() == 1) {
    pick = cands[0];
  } else if (cands.size() > 1) {
    // The sample: u tightened as the pass would, l and lm as stored.
    const idx_t stride = std::max<idx_t>(1, n / 8192);
    struct Row {
      double u, l, lm, hg;
    };
    const idx_t ns = (n + stride - 1) / stride;
    std::vector<Row> rows(static_cast<std::size_t>(ns));
    parallel_for(D.threads, ns, [&](idx_t t) {
      const idx_t i = t * stride, a = labels[i];
      double u = pr.u[i] + pr.shift[a];
      const double hg = pr.half_gap[a];
      if (!(u < std::max(std::min(pr.l[i], pr.lm[i]) - pr.max1, hg)) && (pr.shift[a] > 0.0 || !pr.tight[i]))
        u = std::min(u, dist_hi_fp32(cs, D, i, a));
      rows[t] = {u, pr.l[i], pr.lm[i], hg};
    });
    const double k_pad = static_cast<double>(round_up(k, nr));
    double best = std::numeric_limits<double>::infinity();
    for (const Cand& g : cands) {
      group_of(g);
      bool removed, added;
      idx_t size;
      changes(removed, added, size);
      double r1, r2, m1, m2;
      idx_t ra, ma;
      top2(0, r1, r2, ra);
      top2(1, m1, m2, ma);
      const double mover_cost = (static_cast<double>(size) + kMoverRowCost) / k_pad;
      double cost = 0.0;
      for (const Row& r : rows) {
        double l = r.l, lm = r.lm;
        if (size == 0) {
          l = std::min(l, lm) - pr.max1;
          lm = std::numeric_limits<double>::infinity();
        } else {
          if (removed) l = std::min(l, lm);
          if (added) lm = std::min(lm, l);
          l -= r1;
          lm -= m1;
        }
        if (r.u < std::max(std::min(l, lm), r.hg)) continue;
        cost += r.u < std::max(l, r.hg) ? mover_cost : 1.0;
      }
      if (cost < best * 0.97) {  // a larger group only for a clear gain
        best = cost;
        pick = g;
      }
    }
  }
  group_of(pick);
  idx_t size;
  changes(pr.merge_l, pr.merge_lm, size);
  top2(0, pr.rest1, pr.rest2, pr.rest_arg1);
  top2(1, pr.mob1, pr.mob2, pr.mob_arg1);
  pr.movers.clear();
  for (idx_t c = 0; c < k; ++c)
    if (in[c]) pr.movers.push_back(c);
  pr.slot.assign(static_cast<std::size_t>(k), -1);
  for (std::size_t t = 0; t < pr.movers.size(); ++t) pr.slot[pr.movers[t]] = static_cast<std::int32_t>(t);
}

}  // namespace kmeans_impl
}  // namespace ec
