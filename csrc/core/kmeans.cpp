// k-means on the tile engine. Determinism: centre sums are accumulated in fixed point (64-bit
// integers, see Accum), whose sums do not depend on their order, so the same seed gives
// bit-identical results on any number of threads, with or without pruning, and the pruned
// passes only update the sums of rows that changed cluster.
#include "kmeans.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "engine.hpp"
#include "tile_driver.hpp"

namespace ec {
namespace {

constexpr idx_t kRangeUnit = 4096;          // rows per work range (at least)
constexpr int kMaxRanges = 64;              // ranges at most (load balance for many threads)

/// Query rows per tile for k centres: the tile of products (rows x k) stays within ~256 KiB.
idx_t rows_per_tile(idx_t k_pad) {
  idx_t r = (256 * 1024 / 4) / k_pad;
  r = r / 12 * 12;
  return std::max<idx_t>(12, std::min<idx_t>(144, r));
}

struct Range {
  idx_t r0, r1;
};

struct Data {
  const float* x;
  idx_t n, d;
  const float* w;             // may be null
  std::vector<double> xsq;    // ||x_i||^2
  std::vector<double> xnorm;  // ||x_i|| (cosine)
  std::vector<float> xerr;    // bf16 kernels: each row's rounding error (input_error), else empty
  // x itself for fp32 sets with KernelSet::gemm_rows (gathered rows need no packing); null:
  // pack them. (A bf16 copy for bf16 sets cost more to write than the packing it saved:
  // 200k x 384 k=256, 0.68 s -> 0.76 s.)
  const float* words = nullptr;
  std::vector<double> colmax;  // per feature: max_i |x_if| * row scale (Accum's fixed-point scales)
  double wmax = 0.0;           // max_i w_i
  Metric metric;
  int threads;
  const KernelSet* ks;        // the tile kernels for this fit
  double weight(idx_t i) const { return w ? static_cast<double>(w[i]) : 1.0; }
};

std::vector<Range> make_ranges(idx_t n) {
  const idx_t nr = std::max<idx_t>(1, std::min<idx_t>(kMaxRanges, n / kRangeUnit));
  std::vector<Range> rs(static_cast<std::size_t>(nr));
  for (idx_t r = 0; r < nr; ++r) {
    rs[r].r0 = n * r / nr;
    rs[r].r1 = n * (r + 1) / nr;
  }
  return rs;
}

/// Centre sums in fixed point. Row i adds q_if = round(w_i' x_if * qscale_f) to its cluster's
/// sum (w_i' = w_i, or w_i / ||x_i|| for cosine), qscale_f = 2^e_f chosen so that
/// n * max_i |w_i' x_if| * qscale_f < 2^61: every partial sum, in any order, fits in an int64,
/// and the rounding error of a sum is at most n * 2^-62 * max |w' x_f| (far below the float32
/// rounding of the final centres). Weights are accumulated the same way (counts when
/// unweighted). Each thread owns its accumulators (mod 2^64); their sum is exact.
struct Accum {
  idx_t k = 0, d = 0;
  std::vector<double> qscale;   // d
  double wscale = 1.0;
  std::vector<std::vector<std::uint64_t>> t;  // per thread: k * d sums, then k weights

  void init(const Data& D, idx_t kk) {
    k = kk;
    d = D.d;
    const std::vector<double>& mx = D.colmax;  // maxima do not depend on the order
    const double wmax = D.wmax;
    auto pow2_below = [&](double m) {  // 2^e with static_cast<double>(n) * m * 2^e < 2^61
      if (!(m > 0.0)) return 1.0;
      int e = 0;
      std::frexp(static_cast<double>(D.n) * m, &e);  // n * m < 2^e
      return std::ldexp(1.0, std::max(-1000, std::min(1000, 61 - e)));
    };
    qscale.resize(static_cast<std::size_t>(d));
    for (idx_t f = 0; f < d; ++f) qscale[f] = pow2_below(mx[f]);
    wscale = D.w ? pow2_below(wmax) : 1.0;
    t.assign(static_cast<std::size_t>(D.threads), std::vector<std::uint64_t>(static_cast<std::size_t>(k * d + k)));
  }
  static double row_scale(const Data& D, idx_t i) {
    const double w = D.weight(i);
    return D.metric == Metric::Cosine ? w / D.xnorm[i] : w;
  }
  void clear() {
    for (auto& v : t) std::fill(v.begin(), v.end(), 0);
  }
  /// Adds (or removes) row i to (from) cluster c in thread tid's accumulators.
  void add(const Data& D, const KernelSet& ks, int tid, idx_t i, idx_t c, bool subtract) {
    std::uint64_t* a = t[static_cast<std::size_t>(tid)].data();
    ks.accum(D.x + i * d, d, row_scale(D, i), qscale.data(), subtract, a + c * d);
    const auto wq = static_cast<std::uint64_t>(D.w ? std::llrint(D.weight(i) * wscale) : 1);
    a[k * d + c] = subtract ? a[k * d + c] - wq : a[k * d + c] + wq;
  }
  /// The exact totals, converted to fp64 (one rounding each).
  void totals(std::vector<double>& sums, std::vector<double>& wsum, int threads) const {
    parallel_for(threads, k, [&](idx_t c) {
      for (idx_t f = 0; f < d; ++f) {
        std::uint64_t s = 0;
        for (const auto& v : t) s += v[c * d + f];
        sums[c * d + f] = static_cast<double>(static_cast<std::int64_t>(s)) / qscale[f];
      }
      std::uint64_t w = 0;
      for (const auto& v : t) w += v[k * d + c];
      wsum[c] = static_cast<double>(static_cast<std::int64_t>(w)) / wscale;
    });
  }
};

/// Bounds for exact pruning of the assignment (Hamerly 2010, "Making k-means even faster"),
/// kept in Euclidean distance: L2 uses ||x - c||, cosine the distance between the unit vectors
/// x/||x|| and c/||c|| (so 1 - cos = D^2 / 2). Per row, u >= D(x, own centre) and l <= D(x, c_j)
/// for every other centre j (with a mobile group: l for the stable centres, lm for the mobile
/// ones, see below). When centres move by shift_j, u grows by the row's own centre's shift and
/// l shrinks by the largest other shift (triangle inequality). A row whose
/// u < max(min(l, lm), half_gap[own]) keeps its centre: every other centre is strictly farther
/// (half_gap[a] = half the distance from centre a to its nearest other centre). Every bound
/// carries a relative margin of 1e-9 (far above the fp64 rounding of the exact values, which
/// is below d * 2^-53), so a row is skipped only when the exact fp64 argmin of the full pass
/// would return the same centre: pruned and unpruned fits are bit-identical.
struct Prune {
  std::vector<double> u, l;      ///< per row
  std::vector<double> shift;     ///< per centre: distance moved by the last update (upper bound)
  std::vector<double> half_gap;  ///< per centre: lower bound of half the gap to its nearest other centre
  double max1 = 0.0, max2 = 0.0; ///< largest and second largest shift
  idx_t arg1 = -1;               ///< the centre with the largest shift
  bool valid = false;            ///< u and l hold bounds (false before the first full pass)
  idx_t rows_computed = 0;       ///< rows whose full distance row was computed (all passes)
  // Mobile group (Yinyang with two groups, Ding et al. 2015, chosen per pass): the centres
  // that keep moving far (a cluster split, or a centre drifting between two groups), while most
  // have settled. l bounds the distances to the other stable centres, lm those to the other
  // mobile ones; each shrinks by its own group's largest shift, so one centre's jump no longer
  // defeats the test of every row. A row that fails only on lm gets its products against the
  // mobile centres (the mover stage), which renews lm. See choose_movers.
  std::vector<double> lm;             ///< per row: lower bound over the mobile centres (+inf: none)
  std::vector<char> tight;            ///< per row: u comes from a product with the own centre as it is now
  std::vector<idx_t> movers;          ///< the mobile centres this pass, ascending; empty: none
  std::vector<std::int32_t> slot;     ///< per centre: its index in movers, or -1
  PackedSet mv;                       ///< the mobile centres, packed (same kernel set as the centres)
  double rest1 = 0.0, rest2 = 0.0;    ///< largest and second largest shift of a stable centre
  idx_t rest_arg1 = -1;
  double mob1 = 0.0, mob2 = 0.0;      ///< the same among the mobile centres
  idx_t mob_arg1 = -1;
  bool merge_l = false;               ///< centres left the mobile group: l = min(l, lm) first
  bool merge_lm = false;              ///< centres joined it: lm = min(lm, l) (after merge_l)
  int force_movers = -1;              ///< KMeansParams::movers
  idx_t rows_movers = 0;              ///< rows whose mover products were computed (all passes)
};

constexpr double kBoundRel = 1e-9;

/// fp64 rounding of a cosine value 1 - s / (||x|| ||c||) is absolute (cancellation near 1):
/// at most about d * 2^-53; this is a generous allowance for it.
inline double cos_abs_err(idx_t d) { return 4e-16 * static_cast<double>(d) + 1e-15; }

/// Upper and lower bounds of the Euclidean distance behind a metric value f (exact fp64 value
/// or a lower bound of it).
inline double dist_hi(Metric m, double f, idx_t d) {
  if (m == Metric::L2) return std::sqrt(std::max(0.0, f) * (1.0 + kBoundRel));
  return std::sqrt(2.0 * (std::max(0.0, f) + cos_abs_err(d)) * (1.0 + kBoundRel));
}
inline double dist_lo(Metric m, double f, idx_t d) {
  if (m == Metric::L2) return std::sqrt(std::max(0.0, f * (1.0 - kBoundRel)));
  return std::sqrt(std::max(0.0, 2.0 * (f - cos_abs_err(d)) * (1.0 - kBoundRel)));
}

/// Metric value f implied by a tile value v of a row (squared norm xsq, norm xn) and the
/// bound of its error: L2 f = v + ||x||^2; cosine f = 1 + v / ||x|| (packed centres are unit).
inline double f_of_tile(Metric m, double v, double xsq, double xn) {
  return m == Metric::L2 ? v + xsq : 1.0 + v / xn;
}
inline double f_err_of_tile(Metric m, double b, double xn) { return m == Metric::L2 ? b : b / xn; }

/// Upper bound of the distance from a row to centre j, from an fp32 product and its error bound.
inline double dist_hi_fp32(const PackedSet& cs, const Data& D, idx_t row, idx_t j) {
  const double xn = D.metric == Metric::Cosine ? D.xnorm[row] : 0.0;
  const double f_hi = f_of_tile(D.metric, fp32_value(cs, D.x + row * D.d, j), D.xsq[row], xn) +
                      f_err_of_tile(D.metric, row_bound_eps(cs, D.xsq[row], eps_rel_fp32(D.d)), xn);
  return dist_hi(D.metric, f_hi, D.d);
}

/// One assignment pass over a range of rows, as a handler of the tile driver (for_each_block
/// with BlockProducts). For every row: exact nearest centre and (when `mind` is given) its
/// exact fp64 distance. With `acc`, keeps the centre sums current: a full pass (`acc_full`)
/// adds every row to the (cleared) sums, otherwise only rows whose label changed move from
/// their old cluster's sums to the new one's. With `pr` holding valid bounds, rows whose bounds
/// prove their centre unchanged skip the distance products (the pruned pass).
class AssignPass {
 public:
  struct Local {
    BlockProducts prod;
    AlignedBuffer<float> c;           ///< products with every centre (row i at i * k_pad)
    AlignedBuffer<float> p;           ///< products with the mobile centres (row i at i * nm_pad)
    std::vector<std::int32_t> idx;    ///< candidate centres of a row
    std::vector<float> val;
    std::vector<double> dval;         ///< fp32 re-check values (narrow_fp32)
    std::vector<std::pair<double, idx_t>> exact;  ///< fp64 values of the last candidates
    std::vector<idx_t> rows;          ///< rows waiting for the products with every centre
    std::vector<idx_t> queue;         ///< rows waiting for the mover products
    idx_t computed = 0, mover_rows = 0, changed = 0;
    int tid = 0;
  };

  AssignPass(const PackedSet& cs, const Data& D, idx_t* labels, float* mind, Accum* acc, bool acc_full, Prune* pr)
      : cs_(cs), D_(D), ks_(*D.ks), labels_(labels), mind_(mind), acc_(acc), acc_full_(acc_full), pr_(pr),
        test_(pr && pr->valid), movers_(test_ && !pr->movers.empty()), k_(cs.n), k_pad_(cs.n_pad),
        mc_(rows_per_tile(cs.n_pad)), nm_(movers_ ? pr->mv.n : 0), nm_pad_(movers_ ? pr->mv.n_pad : 0),
        src_{D.x, D.d, D.words} {}

  void init(Local& l) const {
#ifdef _OPENMP
    l.tid = omp_get_thread_num();
#endif
    l.prod.init(ks_, D_.d, mc_);
    l.c.resize(static_cast<std::size_t>(mc_ * k_pad_));
    l.idx.resize(static_cast<std::size_t>(k_pad_));
    l.val.resize(static_cast<std::size_t>(k_pad_));
    if (movers_) {
      l.p.resize(static_cast<std::size_t>(round_up(mc_, ks_.mr) * nm_pad_));
      l.queue.reserve(static_cast<std::size_t>(mc_));
    }
  }

  /// Rows r0 .. r1: the bound test row by row, products for a tile's worth of rows at a time
  /// (while the rows read by the test are still in cache).
  void range(Local& l, idx_t r0, idx_t r1, const StopCheck& stop) const {
    l.rows.clear();
    bool stopped = false;  // another block failed or the fit was cancelled: leave the range
    for (idx_t row = r0; row < r1 && !stopped; ++row) {
      const Need need = test_ ? bound_test(l, row) : Need::All;
      if (need == Need::Movers) {
        l.queue.push_back(row);
        if (static_cast<idx_t>(l.queue.size()) == mc_) stopped = !mover_stage(l, stop);
      } else if (need == Need::All) {
        stopped = !compute(l, row, stop);
      }
    }
    if (!stopped) stopped = !mover_stage(l, stop);
    if (stopped) return;
    if (!l.rows.empty()) {
      resolve(l, l.rows.data(), static_cast<idx_t>(l.rows.size()));
      l.computed += static_cast<idx_t>(l.rows.size());
    }
    if (acc_ && acc_full_)
      for (idx_t row = r0; row < r1; ++row) acc_->add(D_, ks_, l.tid, row, labels_[row], false);
  }

  void finish(Local& l) {
    computed += l.computed;
    mover_rows += l.mover_rows;
    changed += l.changed;
  }

  idx_t computed = 0, mover_rows = 0, changed = 0;

 private:
  enum class Need { None, Movers, All };

  /// Queues a row for the products with every centre; resolves the queue when it holds a tile.
  /// False when the pass should stop.
  bool compute(Local& l, idx_t row, const StopCheck& stop) const {
    l.rows.push_back(row);
    if (static_cast<idx_t>(l.rows.size()) < mc_) return true;
    if (stop()) return false;
    resolve(l, l.rows.data(), mc_);
    l.computed += mc_;
    l.rows.clear();
    return true;
  }

  /// Whether the bounds prove the row's centre (updating them as the centres moved), or only
  /// the mobile centres' bound fails (the mover stage may renew it), or the row needs every product.
  Need bound_test(Local&, idx_t row) const {
    Prune& pr = *pr_;
    const idx_t a = labels_[row];
    const double u = pr.u[row] + pr.shift[a];
    if (pr.shift[a] > 0.0) pr.tight[row] = 0;
    double l = pr.l[row], lm = pr.lm[row];
    if (movers_) {  // group changes, then each group's largest shift
      if (pr.merge_l) l = std::min(l, lm);
      if (pr.merge_lm) lm = std::min(lm, l);
      l -= a == pr.rest_arg1 ? pr.rest2 : pr.rest1;
      lm -= a == pr.mob_arg1 ? pr.mob2 : pr.mob1;
    } else {
      l = std::min(l, lm) - (a == pr.arg1 ? pr.max2 : pr.max1);
      lm = std::numeric_limits<double>::infinity();
    }
    pr.l[row] = l;
    pr.lm[row] = lm;
    const double hg = pr.half_gap[a];
    const double thr = std::max(std::min(l, lm), hg);
    if (u < thr) {
      pr.u[row] = u;
      return Need::None;
    }
    // Tighten u to (an fp32 upper bound of) the distance to the own centre, test again,
    // unless u already came from a product with this centre.
    double ut = u;
    if (!pr.tight[row]) {
      ut = std::min(u, dist_hi_fp32(cs_, D_, row, a));
      pr.u[row] = ut;
      pr.tight[row] = 1;
      if (ut < thr) return Need::None;
    }
    if (movers_ && ut < std::max(l, hg)) return Need::Movers;
    return Need::All;
  }

  /// Mover stage for the queued rows (u tightened and stored, l and lm updated and stored):
  /// their products against the mobile centres renew lm: the best product over mobile centres
  /// other than the own one, less its error bound (and u, when the own centre is mobile, from
  /// its product plus the bound). Rows still unproven go on to every product. False when the
  /// pass should stop.
  bool mover_stage(Local& l, const StopCheck& stop) const {
    const idx_t qm = static_cast<idx_t>(l.queue.size());
    if (qm == 0) return true;
    Prune& pr = *pr_;
    const Metric metric = D_.metric;
    const idx_t d = D_.d;
    l.prod.load_rows(src_, l.queue.data(), qm);
    l.prod.multiply(pr.mv.panels.data(), pr.mv.n_pad, l.p.data(), pr.mv.n_pad);
    l.mover_rows += qm;
    bool go_on = true;
    for (idx_t i = 0; i < qm; ++i) {
      const idx_t row = l.queue[i], a = labels_[row];
      const double xn = metric == Metric::Cosine ? D_.xnorm[row] : 0.0;
      const float* prow = l.p.data() + i * nm_pad_;
      const double fe =
          f_err_of_tile(metric, row_bound_in(pr.mv, D_.xsq[row], D_.xerr.empty() ? 0.0 : D_.xerr[row]), xn);
      idx_t arg = 0;
      float second = 0.0f;
      const float m = ks_.row_min2(prow, pr.mv.add.data(), pr.mv.mul, nm_, &arg, &second);
      const std::int32_t sa = pr.slot[a];
      const float other = sa == arg ? second : m;  // best value over mobile centres other than a
      double lm = std::numeric_limits<double>::infinity();
      if (other < std::numeric_limits<float>::infinity())
        lm = dist_lo(metric, f_of_tile(metric, other, D_.xsq[row], xn) - fe, d);
      double u = pr.u[row];
      if (sa >= 0) {
        const float va = pr.mv.add.data()[sa] + pr.mv.mul * prow[sa];
        u = std::min(u, dist_hi(metric, f_of_tile(metric, va, D_.xsq[row], xn) + fe, d));
      }
      pr.lm[row] = lm;
      pr.u[row] = u;
      if (go_on && !(u < std::max(std::min(pr.l[row], lm), pr.half_gap[a]))) go_on = compute(l, row, stop);
    }
    l.queue.clear();
    return go_on;
  }

  /// Resolves rows[0..qm): their products against every centre, exact nearest centre,
  /// bounds and moved sums.
  void resolve(Local& l, const idx_t* rows, idx_t qm) const {
    l.prod.load_rows(src_, rows, qm);
    l.prod.multiply(cs_.panels.data(), cs_.n_pad, l.c.data(), cs_.n_pad);
    for (idx_t i = 0; i < qm; ++i) resolve_row(l, rows[i], l.c.data() + i * k_pad_);
  }

  /// The exact nearest centre of one row from its tile of products (crow), with the fp32 and
  /// fp64 re-checks of near-ties; then its label, sums, distance and bounds.
  void resolve_row(Local& l, idx_t row, const float* crow) const {
    const Metric metric = D_.metric;
    const idx_t d = D_.d;
    idx_t arg = 0;
    float second = 0.0f;
    const float m = ks_.row_min2(crow, cs_.add.data(), cs_.mul, k_, &arg, &second);
    const float b = row_bound_in(cs_, D_.xsq[row], D_.xerr.empty() ? 0.0 : D_.xerr[row]);
    idx_t cnt = 1;
    if (second > m + 2.0f * b)  // no near-tie: the tile's best is the exact best
      l.idx[0] = static_cast<std::int32_t>(arg);
    else
      cnt = ks_.row_filter(crow, cs_.add.data(), cs_.mul, k_, m + 2.0f * b, l.idx.data(), l.val.data());
    idx_t lab;
    double dist = -1.0;
    const double xn = metric == Metric::Cosine ? D_.xnorm[row] : 0.0;
    idx_t ncand = cnt;
    if (cnt == 0) {  // cannot happen with checked norms; never index an empty list
      for (idx_t j = 0; j < k_; ++j) l.idx[j] = static_cast<std::int32_t>(j);
      ncand = k_;
    }
    if (ncand > 1 && ks_.input_rel > 0.0) {
      l.dval.resize(static_cast<std::size_t>(ncand));
      ncand = narrow_fp32(cs_, D_.x + row * d, D_.xsq[row], l.idx.data(), ncand, l.dval.data());
    }
    if (ncand == 1) {
      lab = l.idx[0];
    } else {
      l.exact.clear();
      for (idx_t t = 0; t < ncand; ++t)
        l.exact.emplace_back(exact_value(metric, D_.x + row * d, cs_.row(l.idx[t]), d, xn, cs_.norm[l.idx[t]]),
                             l.idx[t]);
      const auto best = *std::min_element(l.exact.begin(), l.exact.end());
      lab = best.second;
      dist = std::max(0.0, best.first);
    }
    if (acc_ && !acc_full_ && labels_[row] != lab) {
      acc_->add(D_, ks_, l.tid, row, labels_[row], true);
      acc_->add(D_, ks_, l.tid, row, lab, false);
    }
    l.changed += labels_[row] != lab;
    labels_[row] = lab;
    if (mind_ && dist < 0.0)  // exact, whichever kernel made the tile
      dist = std::max(0.0, exact_value(metric, D_.x + row * d, cs_.row(lab), d, xn, cs_.norm[lab]));
    if (mind_) mind_[row] = static_cast<float>(dist);
    if (pr_) store_bounds(row, lab, dist, cnt, arg, m, second, b);
  }

  /// The row's bounds after its products: u from the exact distance when known; else, when the
  /// tile alone decided (no near-tie), the tile value plus its bound (row_bound_in is tight
  /// enough: the same rows are proven as with an fp32 product); else an fp32 product plus its
  /// bound. l from the second best tile value (any centre but the chosen one) less its bound.
  void store_bounds(idx_t row, idx_t lab, double dist, idx_t cnt, idx_t arg, float m, float second, float b) const {
    Prune& pr = *pr_;
    const Metric metric = D_.metric;
    const idx_t d = D_.d;
    const double xn = metric == Metric::Cosine ? D_.xnorm[row] : 0.0;
    if (dist >= 0.0)
      pr.u[row] = dist_hi(metric, dist, d);
    else if (cnt == 1 && lab == arg)
      pr.u[row] = dist_hi(metric, f_of_tile(metric, m, D_.xsq[row], xn) + f_err_of_tile(metric, b, xn), d);
    else
      pr.u[row] = dist_hi_fp32(cs_, D_, row, lab);
    const float v2 = lab == arg ? second : m;  // best tile value over centres other than lab
    pr.l[row] = k_ > 1 ? dist_lo(metric, f_of_tile(metric, v2, D_.xsq[row], xn) - f_err_of_tile(metric, b, xn), d)
                       : std::numeric_limits<double>::infinity();
    pr.lm[row] = pr.l[row];  // a bound for every other centre, mobile or not
    pr.tight[row] = 1;
  }

  const PackedSet& cs_;
  const Data& D_;
  const KernelSet& ks_;
  idx_t* labels_;
  float* mind_;
  Accum* acc_;
  const bool acc_full_;
  Prune* pr_;
  const bool test_, movers_;
  const idx_t k_, k_pad_, mc_, nm_, nm_pad_;
  const RowSource src_;
};

/// One assignment pass (see AssignPass) over the ranges, in parallel. Returns how many labels changed.
idx_t assign_pass(const PackedSet& cs, const Data& D, idx_t* labels, float* mind, Accum* acc, bool acc_full,
                  const std::vector<Range>& ranges, Cancel& cancel, Prune* pr = nullptr) {
  AssignPass pass(cs, D, labels, mind, acc, acc_full, pr);
  for_each_block<AssignPass::Local>(
      D.threads, static_cast<idx_t>(ranges.size()), 1, cancel, [&](AssignPass::Local& l) { pass.init(l); },
      [&](AssignPass::Local& l, idx_t r, const StopCheck& stop) { pass.range(l, ranges[r].r0, ranges[r].r1, stop); },
      [&](AssignPass::Local& l) { pass.finish(l); });
  if (pr) {
    pr->rows_computed += pass.computed;
    pr->rows_movers += pass.mover_rows;
    pr->valid = true;
  }
  return pass.changed;
}

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

void prepare(Data& D, const float* x, idx_t n, idx_t d, const float* w, Metric m, int threads,
             const KernelSet* ks = nullptr) {
  D.ks = ks ? ks : &kernels();
  D.x = x;
  D.n = n;
  D.d = d;
  D.w = w;
  D.metric = m;
  D.threads = threads;
  D.xsq.resize(static_cast<std::size_t>(n));
  if (m == Metric::Cosine) D.xnorm.resize(static_cast<std::size_t>(n));
  const bool rounds = D.ks->input_rel > 0.0;
  D.xerr.assign(rounds ? static_cast<std::size_t>(n) : 0, 0.0f);
  D.colmax.assign(static_cast<std::size_t>(d), 0.0);
  D.wmax = 0.0;
  idx_t zero_row = -1, bad_row = -1;
  // One pass over the data: norms, rounding errors, the fixed-point maxima, and the finiteness
  // check (a float32 row has a finite squared norm in fp64 exactly when all its values are finite).
  ExceptionSlot err;
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> mx;
    err.run([&] { mx.assign(static_cast<std::size_t>(d), 0.0); });
    double wm = 0.0;
    idx_t zr = -1, br = -1;
#pragma omp for schedule(static)
    for (idx_t i = 0; i < n; ++i) {
      if (err.failed()) continue;
      const float* row = x + i * d;
      const double sq = sqnorm(row, d);
      D.xsq[i] = sq;
      if (!std::isfinite(sq)) {
        if (br < 0) br = i;
        continue;
      }
      if (m == Metric::Cosine) {
        D.xnorm[i] = std::sqrt(sq);
        if (sq == 0.0) {
          if (zr < 0) zr = i;
          continue;
        }
      }
      if (rounds) D.xerr[i] = static_cast<float>(input_error(*D.ks, row, d) * (1.0 + 1e-6));
      const double wi = D.weight(i);
      wm = std::max(wm, wi);
      const double sc = m == Metric::Cosine ? wi / D.xnorm[i] : wi;
      for (idx_t f = 0; f < d; ++f) mx[f] = std::max(mx[f], std::abs(static_cast<double>(row[f]) * sc));
    }
#pragma omp critical
    if (!err.failed()) {
      D.wmax = std::max(D.wmax, wm);
      for (idx_t f = 0; f < d; ++f) D.colmax[f] = std::max(D.colmax[f], mx[f]);
      if (zr >= 0) zero_row = zero_row < 0 ? zr : std::min(zero_row, zr);
      if (br >= 0) bad_row = bad_row < 0 ? br : std::min(bad_row, br);
    }
  }
  err.rethrow();
  if (bad_row >= 0) {
    idx_t f = 0;
    while (f < d && std::isfinite(x[bad_row * d + f])) ++f;
    fail("X contains NaN or infinity (first at row " + std::to_string(bad_row) + ", column " + std::to_string(f) +
         "); remove or impute those values");
  }
  check_sqnorms(D.xsq, "data");
  D.words = D.ks->gemm_rows && D.ks->per_word == 1 ? x : nullptr;
  if (zero_row >= 0)
    fail("row " + std::to_string(zero_row) +
         " has zero norm; spherical (cosine) k-means needs non-zero rows (drop them or use metric='l2')");
}

/// Every row's metric value to each centre of a small set, from the tiles (k-means++ trials).
class AllDistancesHandler {
 public:
  struct Local {};
  AllDistancesHandler(const Data& D, const PackedSet& cs, float* out) : D_(D), cs_(cs), out_(out) {}
  void init(Local&) const {}
  void begin(Local&, idx_t, idx_t) const {}
  void tile(Local&, idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm) const {
    const idx_t t = cs_.n;
    for (idx_t i = 0; i < qm; ++i)
      for (idx_t j = 0; j < bm; ++j) {
        const double v = cs_.add.data()[b0 + j] + cs_.mul * static_cast<double>(c[i * ldc + j]);
        const double dist = D_.metric == Metric::L2 ? D_.xsq[q0 + i] + v : 1.0 + v / D_.xnorm[q0 + i];
        out_[(q0 + i) * t + b0 + j] = static_cast<float>(std::max(0.0, dist));
      }
  }
  void end(Local&, idx_t, idx_t) const {}
  void finish(Local&) const {}

 private:
  const Data& D_;
  const PackedSet& cs_;
  float* out_;
};

/// Distance from every row to one candidate centre set (t centres), exact metric values from
/// the tile engine; used by k-means++. out is n * t.
void distances_to(const Data& D, const float* cand, idx_t t, std::vector<float>& out, Cancel& cancel) {
  PackedSet cs;
  pack_set(cs, cand, t, D.d, D.metric, nullptr, 1, D.ks);
  out.resize(static_cast<std::size_t>(D.n * t));
  ScanShape shape;
  shape.query_block = 144;
  shape.chunk = 4;
  AllDistancesHandler h(D, cs, out.data());
  scan_tiles(cs, D.x, D.n, shape, D.threads, cancel, h);
}

/// Index i such that prefix(i) <= r < prefix(i+1) over weights v (fp64 prefix sums in row order).
idx_t sample_index(const std::vector<double>& block_sums, idx_t block, const std::vector<double>& v,
                   double r) {
  const idx_t n = static_cast<idx_t>(v.size());
  idx_t b = 0;
  const idx_t nb = static_cast<idx_t>(block_sums.size());
  while (b + 1 < nb && r >= block_sums[b]) {
    r -= block_sums[b];
    ++b;
  }
  idx_t i = b * block;
  const idx_t end = std::min(n, i + block);
  idx_t last_pos = -1;
  for (; i < end; ++i) {
    if (v[i] > 0.0) last_pos = i;
    if (r < v[i]) return i;
    r -= v[i];
  }
  return last_pos >= 0 ? last_pos : end - 1;  // rounding pushed r past the end
}

void block_sums_of(const std::vector<double>& v, idx_t block, std::vector<double>& out, int threads) {
  const idx_t n = static_cast<idx_t>(v.size());
  const idx_t nb = (n + block - 1) / block;
  out.assign(static_cast<std::size_t>(nb), 0.0);
  parallel_for(threads, nb, [&](idx_t b) {
    double s = 0.0;
    for (idx_t i = b * block; i < std::min(n, (b + 1) * block); ++i) s += v[i];
    out[b] = s;
  });
}

void lloyd(const KMeansParams& p, const Data& D, std::vector<float>& centers, KMeansResult& res,
           Cancel& cancel);
void seed_parallel(const KMeansParams& p, const Data& D, std::uint64_t seed, float* out, Cancel& cancel);

void seed_centers(const KMeansParams& p, const Data& D, std::uint64_t seed, float* out,
                  Cancel& cancel) {
  const idx_t n = D.n, d = D.d, k = p.k;
  if (p.init == KMeansInit::Parallel) {
    seed_parallel(p, D, seed, out, cancel);
    return;
  }
  Rng rng(seed);
  if (p.init == KMeansInit::Random) {
    // Partial Fisher-Yates over the indices: k distinct rows.
    std::vector<idx_t> perm(static_cast<std::size_t>(n));
    std::iota(perm.begin(), perm.end(), idx_t{0});
    for (idx_t c = 0; c < k; ++c) {
      const idx_t j = c + rng.below(n - c);
      std::swap(perm[c], perm[j]);
      std::memcpy(out + c * d, D.x + perm[c] * d, sizeof(float) * d);
    }
    return;
  }
  // Greedy k-means++ (Arthur & Vassilvitskii 2007, with local trials as in scikit-learn).
  const int trials = p.n_local_trials > 0 ? p.n_local_trials
                                          : 2 + static_cast<int>(std::log(static_cast<double>(k)));
  constexpr idx_t kBlock = 4096;
  std::vector<double> wv(static_cast<std::size_t>(n)), bs;
  for (idx_t i = 0; i < n; ++i) wv[i] = D.weight(i);
  block_sums_of(wv, kBlock, bs, D.threads);
  double total = std::accumulate(bs.begin(), bs.end(), 0.0);
  const idx_t first = sample_index(bs, kBlock, wv, rng.uniform() * total);
  std::memcpy(out, D.x + first * d, sizeof(float) * d);
  std::vector<float> dist;
  distances_to(D, out, 1, dist, cancel);
  std::vector<double> closest(static_cast<std::size_t>(n)), pot_v(static_cast<std::size_t>(n));
  for (idx_t i = 0; i < n; ++i) closest[i] = dist[i];
  std::vector<float> cand(static_cast<std::size_t>(trials * d));
  std::vector<idx_t> cand_idx(static_cast<std::size_t>(trials));
  for (idx_t c = 1; c < k; ++c) {
    for (idx_t i = 0; i < n; ++i) pot_v[i] = D.weight(i) * closest[i];
    block_sums_of(pot_v, kBlock, bs, D.threads);
    const double pot = std::accumulate(bs.begin(), bs.end(), 0.0);
    for (int t = 0; t < trials; ++t) {
      // With zero potential (fewer distinct points than k) any row serves; pick uniformly.
      cand_idx[t] = pot > 0.0 ? sample_index(bs, kBlock, pot_v, rng.uniform() * pot) : rng.below(n);
      std::memcpy(cand.data() + t * d, D.x + cand_idx[t] * d, sizeof(float) * d);
    }
    distances_to(D, cand.data(), trials, dist, cancel);
    // Potential of each candidate, in fixed block order so that it does not depend on threads.
    const idx_t nb = (n + kBlock - 1) / kBlock;
    std::vector<double> part(static_cast<std::size_t>(nb * trials), 0.0);
    parallel_for(D.threads, nb, [&](idx_t b) {
      for (idx_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
        for (int t = 0; t < trials; ++t)
          part[b * trials + t] += D.weight(i) * std::min<double>(closest[i], dist[i * trials + t]);
    });
    int best = 0;
    double best_pot = std::numeric_limits<double>::infinity();
    for (int t = 0; t < trials; ++t) {
      double s = 0.0;
      for (idx_t b = 0; b < nb; ++b) s += part[b * trials + t];
      if (s < best_pot) {
        best_pot = s;
        best = t;
      }
    }
    for (idx_t i = 0; i < n; ++i) closest[i] = std::min<double>(closest[i], dist[i * trials + best]);
    std::memcpy(out + c * d, D.x + cand_idx[best] * d, sizeof(float) * d);
  }
}

double mean_variance(const Data& D) {
  const idx_t n = D.n, d = D.d;
  std::vector<double> mean(static_cast<std::size_t>(d), 0.0), m2(static_cast<std::size_t>(d), 0.0);
  for (idx_t i = 0; i < n; ++i) {
    const double sc = D.metric == Metric::Cosine ? 1.0 / D.xnorm[i] : 1.0;
    for (idx_t f = 0; f < d; ++f) mean[f] += sc * D.x[i * d + f];
  }
  for (idx_t f = 0; f < d; ++f) mean[f] /= static_cast<double>(n);
  for (idx_t i = 0; i < n; ++i) {
    const double sc = D.metric == Metric::Cosine ? 1.0 / D.xnorm[i] : 1.0;
    for (idx_t f = 0; f < d; ++f) {
      const double t = sc * D.x[i * d + f] - mean[f];
      m2[f] += t * t;
    }
  }
  double s = 0.0;
  for (idx_t f = 0; f < d; ++f) s += m2[f] / static_cast<double>(n);
  return s / static_cast<double>(d);
}

/// Exact objective of `labels` against `centers` (fp64, fixed order).
double objective(const Data& D, const float* centers, const std::vector<idx_t>& labels) {
  const idx_t n = D.n, d = D.d;
  double total = 0.0;
  const idx_t nb = (n + kRangeUnit - 1) / kRangeUnit;
  std::vector<double> part(static_cast<std::size_t>(nb), 0.0);
  parallel_for(D.threads, nb, [&](idx_t b) {
    double s = 0.0;
    for (idx_t i = b * kRangeUnit; i < std::min(n, (b + 1) * kRangeUnit); ++i) {
      const float* c = centers + labels[i] * d;
      const double cnorm = D.metric == Metric::Cosine ? std::sqrt(sqnorm(c, d)) : 0.0;
      const double xn = D.metric == Metric::Cosine ? D.xnorm[i] : 0.0;
      s += D.weight(i) * std::max(0.0, exact_value(D.metric, D.x + i * d, c, d, xn, cnorm));
    }
    part[b] = s;
  });
  for (double v : part) total += v;
  return total;
}

/// One full k-means run from the given initial centres.
void lloyd(const KMeansParams& p, const Data& D, std::vector<float>& centers, KMeansResult& res,
           Cancel& cancel) {
  const idx_t n = D.n, d = D.d, k = p.k;
  const auto ranges = make_ranges(n);
  Accum acc;
  acc.init(D, k);
  const double tol_abs = p.tol > 0.0 ? p.tol * mean_variance(D) : 0.0;
  std::vector<idx_t> labels(static_cast<std::size_t>(n), -1);
  idx_t changed = n;  // labels changed by the last pass
  std::vector<float> mind(static_cast<std::size_t>(n));
  std::vector<double> sums(static_cast<std::size_t>(k * d)), wsum(static_cast<std::size_t>(k));
  std::vector<float> next(static_cast<std::size_t>(k * d));
  PackedSet cs;
  bool strict = false;
  int it = 0;
  int repaired = 0;
  int passes = 0;
  const bool use_prune = p.prune == 1 || (p.prune < 0 && k >= kPruneMinK);
  Prune pr;
  if (use_prune) {
    pr.force_movers = p.movers;
    pr.u.resize(static_cast<std::size_t>(n));
    pr.l.resize(static_cast<std::size_t>(n));
    pr.lm.resize(static_cast<std::size_t>(n));
    pr.tight.assign(static_cast<std::size_t>(n), 0);
  }
  auto pass = [&](bool accumulate) {
    pack_set(cs, centers.data(), k, d, D.metric, nullptr, D.threads, D.ks);
    if (use_prune && pr.valid) {
      centre_half_gaps(cs, D, pr.half_gap);
      choose_movers(cs, D, labels.data(), k, pr);
      if (!pr.movers.empty())
        pack_set(pr.mv, centers.data(), static_cast<idx_t>(pr.movers.size()), d, D.metric, pr.movers.data(),
                 D.threads, D.ks);
    }
    const bool full = !use_prune || !pr.valid;  // pruned passes update the sums of moved rows only
    if (accumulate && full) acc.clear();
    // A final pass without accumulation may change labels; its sums are not used afterwards.
    changed = assign_pass(cs, D, labels.data(), nullptr, accumulate ? &acc : nullptr, full, ranges, cancel,
                use_prune ? &pr : nullptr);
    ++passes;
  };
  if (D.metric == Metric::Cosine) {
    for (idx_t c = 0; c < k; ++c) {
      const double nn = std::sqrt(sqnorm(centers.data() + c * d, d));
      if (nn == 0.0) fail("initial centre " + std::to_string(c) + " has zero norm (cosine metric)");
      for (idx_t f = 0; f < d; ++f) centers[c * d + f] = static_cast<float>(centers[c * d + f] / nn);
    }
  }
  for (it = 0; it < p.max_iter; ++it) {
    pass(true);
    acc.totals(sums, wsum, D.threads);
    // Empty clusters take the rows farthest from their centres (ties: lower index), which are
    // moved out of their old clusters' sums, as scikit-learn does; labels follow at the next
    // assignment.
    std::vector<idx_t> empty;
    for (idx_t c = 0; c < k; ++c)
      if (wsum[c] <= 0.0) empty.push_back(c);
    if (!empty.empty()) {
      // Exact distances of every row to the centre it was assigned to (rare: only here).
      parallel_for(D.threads, n, [&](idx_t i) {
        mind[i] = static_cast<float>(std::max(0.0, exact_value(D.metric, D.x + i * d, cs.row(labels[i]), d,
                                                               D.metric == Metric::Cosine ? D.xnorm[i] : 0.0,
                                                               cs.norm[labels[i]])));
      });
      std::vector<idx_t> order(static_cast<std::size_t>(n));
      std::iota(order.begin(), order.end(), idx_t{0});
      const std::size_t ne = std::min<std::size_t>(empty.size(), order.size());
      std::partial_sort(order.begin(), order.begin() + ne, order.end(), [&](idx_t a, idx_t b) {
        return mind[a] != mind[b] ? mind[a] > mind[b] : a < b;
      });
      for (std::size_t e = 0; e < ne; ++e) {
        const idx_t row = order[e], to = empty[e], from = labels[row];
        const double wi = D.weight(row);
        if (wi <= 0.0) continue;
        const double sc = D.metric == Metric::Cosine ? wi / D.xnorm[row] : wi;
        for (idx_t f = 0; f < d; ++f) {
          const double v = sc * D.x[row * d + f];
          sums[from * d + f] -= v;
          sums[to * d + f] = v;
        }
        wsum[from] -= wi;
        wsum[to] = wi;
        ++repaired;
      }
    }
    double shift = 0.0;
    for (idx_t c = 0; c < k; ++c) {
      float* nc = next.data() + c * d;
      if (wsum[c] <= 0.0) {  // still empty (all weights zero): keep the old centre
        std::memcpy(nc, centers.data() + c * d, sizeof(float) * d);
        continue;
      }
      if (D.metric == Metric::Cosine) {
        double nn = 0.0;
        for (idx_t f = 0; f < d; ++f) nn += sums[c * d + f] * sums[c * d + f];
        nn = std::sqrt(nn);
        for (idx_t f = 0; f < d; ++f)
          nc[f] = nn > 0.0 ? static_cast<float>(sums[c * d + f] / nn) : centers[c * d + f];
      } else {
        for (idx_t f = 0; f < d; ++f) nc[f] = static_cast<float>(sums[c * d + f] / wsum[c]);
      }
      for (idx_t f = 0; f < d; ++f) {
        const double t = static_cast<double>(nc[f]) - centers[c * d + f];
        shift += t * t;
      }
    }
    if (use_prune) centre_shifts(D, centers, next, k, pr);
    centers.swap(next);
    if (changed == 0) {
      strict = true;
      ++it;
      break;
    }
    if (shift <= tol_abs) {
      ++it;
      break;
    }
  }
  if (!strict) {
    // Labels must match the final centres: one more assignment without an update.
    pass(false);
  }
  res.centers = centers;
  res.labels = std::move(labels);
  res.inertia = objective(D, res.centers.data(), res.labels);
  res.n_iter = std::min(it, p.max_iter);
  res.n_empty_repaired = repaired;
  res.computed_fraction =
      use_prune ? static_cast<double>(pr.rows_computed) / (static_cast<double>(n) * std::max(1, passes)) : 1.0;
  res.mover_fraction =
      use_prune ? static_cast<double>(pr.rows_movers) / (static_cast<double>(n) * std::max(1, passes)) : 0.0;
}

/// k-means|| (Bahmani, Moseley, Vattani, Kumar, Vassilvitskii 2012). Each of `kRounds` rounds
/// samples every row independently with probability min(1, l * w * D(x) / potential), l = 2k,
/// and adds the sample to the candidates; candidates are then weighted by the (weighted) number
/// of rows nearest to them, and weighted k-means++ followed by a few Lloyd iterations on the
/// candidates gives the k centres. It reads the data about 2 * kRounds times instead of k times
/// (k-means++). Each row's draw comes from its own generator seeded by (seed, round, row), so
/// the result does not depend on the thread count.
void seed_parallel(const KMeansParams& p, const Data& D, std::uint64_t seed, float* out, Cancel& cancel) {
  constexpr int kRounds = 5;
  const idx_t n = D.n, d = D.d, k = p.k;
  const double ell = 2.0 * static_cast<double>(k);
  constexpr idx_t kBlock = 4096;
  Rng rng(seed);
  std::vector<double> wv(static_cast<std::size_t>(n)), bs, pot_v(static_cast<std::size_t>(n));
  for (idx_t i = 0; i < n; ++i) wv[i] = D.weight(i);
  block_sums_of(wv, kBlock, bs, D.threads);
  const idx_t first = sample_index(bs, kBlock, wv, rng.uniform() * std::accumulate(bs.begin(), bs.end(), 0.0));
  std::vector<float> cand(D.x + first * d, D.x + (first + 1) * d);
  std::vector<double> closest(static_cast<std::size_t>(n), std::numeric_limits<double>::infinity());
  std::vector<idx_t> lab(static_cast<std::size_t>(n));
  std::vector<float> md(static_cast<std::size_t>(n));
  auto nearer = [&](const float* batch, idx_t t) {  // closest = min(closest, distance to batch)
    PackedSet cs;
    pack_set(cs, batch, t, d, D.metric, nullptr, D.threads, D.ks);
    assign_pass(cs, D, lab.data(), md.data(), nullptr, false, make_ranges(n), cancel);
    for (idx_t i = 0; i < n; ++i) closest[i] = std::min<double>(closest[i], md[i]);
  };
  nearer(cand.data(), 1);
  for (int r = 0; r < kRounds; ++r) {
    for (idx_t i = 0; i < n; ++i) pot_v[i] = wv[i] * closest[i];
    block_sums_of(pot_v, kBlock, bs, D.threads);
    const double pot = std::accumulate(bs.begin(), bs.end(), 0.0);
    if (!(pot > 0.0)) break;  // every row sits on a candidate
    std::vector<float> batch;
    for (idx_t i = 0; i < n; ++i) {
      if (pot_v[i] <= 0.0) continue;
      Rng ri(seed ^ (0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(r + 1)) ^
             (0xBF58476D1CE4E5B9ull * static_cast<std::uint64_t>(i + 1)));
      if (ri.uniform() < ell * pot_v[i] / pot) batch.insert(batch.end(), D.x + i * d, D.x + (i + 1) * d);
    }
    if (batch.empty()) continue;
    cand.insert(cand.end(), batch.begin(), batch.end());
    nearer(batch.data(), static_cast<idx_t>(batch.size()) / d);
  }
  const idx_t m = static_cast<idx_t>(cand.size()) / d;
  if (m <= k) {  // too few distinct candidates: plain k-means++ on all rows
    KMeansParams pp = p;
    pp.init = KMeansInit::KMeansPP;
    seed_centers(pp, D, seed, out, cancel);
    return;
  }
  // Weight of a candidate: the weight of the rows nearest to it.
  PackedSet cs;
  pack_set(cs, cand.data(), m, d, D.metric, nullptr, D.threads, D.ks);
  assign_pass(cs, D, lab.data(), md.data(), nullptr, false, make_ranges(n), cancel);
  std::vector<double> wc(static_cast<std::size_t>(m), 0.0);
  for (idx_t i = 0; i < n; ++i) wc[lab[i]] += wv[i];
  std::vector<float> wcf(wc.begin(), wc.end());
  Data Dc;
  prepare(Dc, cand.data(), m, d, wcf.data(), D.metric, D.threads, D.ks);
  KMeansParams pc = p;
  pc.init = KMeansInit::KMeansPP;
  pc.max_iter = 5;
  std::vector<float> centers(static_cast<std::size_t>(k * d));
  seed_centers(pc, Dc, rng.next(), centers.data(), cancel);
  KMeansResult rc;
  lloyd(pc, Dc, centers, rc, cancel);
  std::copy(rc.centers.begin(), rc.centers.end(), out);
}

void validate(const KMeansParams& p, idx_t n, idx_t d, const float* w) {
  if (n <= 0) fail("k-means needs at least one row (got an empty array)");
  if (d <= 0) fail("k-means needs at least one feature");
  if (p.k <= 0) fail("n_clusters=" + std::to_string(p.k) + " should be >= 1");
  if (n < p.k)
    fail("n_samples=" + std::to_string(n) + " should be >= n_clusters=" + std::to_string(p.k));
  if (p.max_iter <= 0) fail("max_iter=" + std::to_string(p.max_iter) + " should be >= 1");
  if (p.n_init <= 0) fail("n_init=" + std::to_string(p.n_init) + " should be >= 1");
  if (!(p.tol >= 0.0)) fail("tol should be >= 0");
  if (p.metric == Metric::IP) fail("k-means supports metric 'l2' or 'cosine'");
  if (w) {
    double s = 0.0;
    for (idx_t i = 0; i < n; ++i) {
      if (!(w[i] >= 0.0f) || !std::isfinite(w[i]))
        fail("sample_weight[" + std::to_string(i) + "] should be finite and >= 0");
      s += w[i];
    }
    if (!(s > 0.0)) fail("sample weights sum to zero; at least one must be positive");
  }
}

}  // namespace

void kmeans_init(const KMeansParams& p, const float* x, idx_t n, idx_t d, const float* weights,
                 std::uint64_t seed, float* out_centers, Cancel& cancel) {
  validate(p, n, d, weights);
  if (p.init == KMeansInit::Given) fail("kmeans_init needs init 'k-means++' or 'random'");
  kmeans_check_memory(p, n, d);
  Data D;
  prepare(D, x, n, d, weights, p.metric, resolve_threads(p.n_threads), p.kernel_set);
  seed_centers(p, D, seed, out_centers, cancel);
}

/// Working memory of kmeans_fit, bytes (an over-estimate: per-row state, initialisation,
/// centres, per-thread accumulators and tiles, result).
double kmeans_bytes(const KMeansParams& p, idx_t n, idx_t d) {
  const KernelSet& ks = p.kernel_set ? *p.kernel_set : kernels();
  const double threads = resolve_threads(p.n_threads);
  const double k = p.k, dn = static_cast<double>(n), dd = static_cast<double>(d);
  const double k_pad = static_cast<double>(round_up(p.k, ks.nr)), depth = static_cast<double>(ks.depth(d));
  double per_row = 8.0 + 8.0 + 4.0 + 25.0 + 16.0 + 4.0;  // norms, labels, distance, bounds (u, l, lm, tight), result labels, rounding errors
  per_row += p.init == KMeansInit::Parallel ? 40.0 : 8.0 + 4.0 * (2.0 + std::log(k + 1.0));  // init state
  double centres = k * dd * (4.0 * 4.0 + 8.0 * 2.0) + k_pad * (depth * 4.0 + 12.0);
  if (p.init == KMeansInit::Parallel) centres += (1.0 + 5.0 * 2.0 * k) * dd * 4.0 * 2.0;  // candidates
  centres += 0.5 * k_pad * (depth * 4.0 + 12.0 + 16.0);  // movers (at most k / 2), packed
  const double per_thread = (k * dd + k) * 8.0 + static_cast<double>(rows_per_tile(round_up(p.k, ks.nr))) *
                                                      (depth + 1.5 * k_pad) * 4.0 + k_pad * 16.0;
  return dn * per_row + centres + threads * per_thread;
}

void kmeans_check_memory(const KMeansParams& p, idx_t n, idx_t d) {
  check_memory(kmeans_bytes(p, n, d), p.memory_limit,
               "k-means with " + std::to_string(p.k) + " clusters on " + std::to_string(n) + " x " + std::to_string(d));
}

void kmeans_assign_check_memory(idx_t k, idx_t n, idx_t d, int n_threads, const KernelSet* kernel_set,
                                double memory_limit) {
  const KernelSet& ks = kernel_set ? *kernel_set : kernels();
  const double threads = resolve_threads(n_threads);
  const double k_pad = static_cast<double>(round_up(k, ks.nr)), depth = static_cast<double>(ks.depth(d));
  // Per row: norms (2 x 8), rounding error, outputs (label 8, distance 4); the packed centres;
  // per thread: a tile of rows and their products, candidate buffers.
  const double bytes = static_cast<double>(n) * (8.0 + 8.0 + 4.0 + 12.0) + static_cast<double>(d) * 8.0 +
                       k_pad * (depth * 4.0 + 16.0) +
                       threads * (static_cast<double>(rows_per_tile(round_up(k, ks.nr))) * (depth + 1.5 * k_pad) * 4.0 +
                                  k_pad * 16.0);
  check_memory(bytes, memory_limit,
               "assigning " + std::to_string(n) + " rows to " + std::to_string(k) + " centres");
}

void kmeans_fit(const KMeansParams& p, const float* x, idx_t n, idx_t d, const float* weights,
                const float* init_centers, KMeansResult& out, Cancel& cancel) {
  validate(p, n, d, weights);
  kmeans_check_memory(p, n, d);
  if (p.init == KMeansInit::Given && !init_centers) fail("init='given' needs initial centres");
  Data D;
  prepare(D, x, n, d, weights, p.metric, resolve_threads(p.n_threads), p.kernel_set);
  const int runs = p.init == KMeansInit::Given ? 1 : p.n_init;
  bool have = false;
  for (int r = 0; r < runs; ++r) {
    std::vector<float> centers(static_cast<std::size_t>(p.k * d));
    if (p.init == KMeansInit::Given)
      std::memcpy(centers.data(), init_centers, sizeof(float) * p.k * d);
    else
      seed_centers(p, D, p.seed + static_cast<std::uint64_t>(r) * 0x9E3779B97F4A7C15ull,
                   centers.data(), cancel);
    KMeansResult res;
    lloyd(p, D, centers, res, cancel);
    if (!have || res.inertia < out.inertia) {
      out = std::move(res);
      have = true;
    }
  }
}

void kmeans_assign(Metric m, const float* centers, idx_t k, const float* x, idx_t n, idx_t d,
                   idx_t* labels, float* dist, int n_threads, Cancel& cancel, const KernelSet* kernel_set) {
  if (k <= 0) fail("no centres to assign to");
  if (d <= 0) fail("zero features");
  if (n == 0) return;
  if (m == Metric::IP) fail("assignment supports metric 'l2' or 'cosine'");
  Data D;
  prepare(D, x, n, d, nullptr, m, resolve_threads(n_threads), kernel_set);
  PackedSet cs;
  pack_set(cs, centers, k, d, m, nullptr, D.threads, D.ks);
  const auto ranges = make_ranges(n);
  assign_pass(cs, D, labels, dist, nullptr, false, ranges, cancel);
}

}  // namespace ec
