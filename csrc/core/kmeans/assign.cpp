// The k-means assignment pass: exact nearest centre of every row, pruned by bounds, as a handler of the tile driver.
#include "internal.hpp"
#include "../tile_driver.hpp"

namespace ec {
namespace kmeans_impl {
namespace {

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
    std::vector<std::int32_t> kept;   ///< local stage: the candidates its fp32 products keep
    std::vector<idx_t> rows;          ///< rows waiting for the products with every centre
    std::vector<idx_t> queue;         ///< rows waiting for the mover products
    idx_t computed = 0, mover_rows = 0, changed = 0;
    int tid = 0;
  };

  AssignPass(const PackedSet& cs, const Data& D, idx_t* labels, float* mind, Accum* acc, bool acc_full, Prune* pr)
      : cs_(cs), D_(D), ks_(*D.ks), labels_(labels), mind_(mind), acc_(acc), acc_full_(acc_full), pr_(pr),
        test_(pr && pr->valid), movers_(test_ && !pr->movers.empty()), k_(cs.n), k_pad_(cs.n_pad),
        mc_(rows_per_tile(cs.n_pad)), nm_(movers_ ? pr->mv.n : 0), nm_pad_(movers_ ? pr->mv.n_pad : 0),
        max_local_(test_ ? local_limit(*pr, cs.n_pad) : 0),
        src_{D.x, D.d, D.words} {}

  void init(Local& l) const {
#ifdef _OPENMP
    l.tid = omp_get_thread_num();
#endif
    l.prod.init(ks_, D_.d, mc_);
    l.c.resize(static_cast<std::size_t>(round_up(mc_, ks_.mr) * k_pad_));  // the product writes whole micro-tiles
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
  Need bound_test(Local& lo, idx_t row) const {
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
    if (max_local_ > 0 && local_stage(lo, row)) return Need::None;
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

  /// The local stage: when every centre but the own one a and at most max_local_ - 1 of its
  /// listed neighbours lies beyond twice u from a (Elkan's lemma: such a centre is farther than
  /// a), the row's nearest centre is among those few, found from their fp32 products (kept
  /// within 2 B32 of the best, as narrow_fp32 does) and exact fp64 values; then its label and
  /// bounds (l: the fp32 bound of the other candidates, or 2 * half - u for the unlisted).
  /// False (nothing done) when the row needs the products with every centre.
  bool local_stage(Local& l, idx_t row) const {
    Prune& pr = *pr_;
    const idx_t a = labels_[row], d = D_.d;
    const double u = pr.u[row];
    double far = 0.0;
    const idx_t s = local_candidates(pr, a, u, far);
    if (s < 0 || s >= max_local_) return false;
    const std::int32_t* ids = pr.nb_ids.data() + a * pr.nb_len;
    const float* x = D_.x + row * d;
    const double xsq = D_.xsq[row], xn = D_.metric == Metric::Cosine ? D_.xnorm[row] : 0.0;
    const double b32 = row_bound_rel(cs_, xsq, fp32_rel_err(d));
    const idx_t cnt = s + 1;
    l.dval.resize(static_cast<std::size_t>(cnt));
    double best = std::numeric_limits<double>::infinity();
    for (idx_t t = 0; t < cnt; ++t) {
      l.idx[t] = t == 0 ? static_cast<std::int32_t>(a) : ids[t - 1];
      l.dval[t] = fp32_value(cs_, x, l.idx[t]);
      best = std::min(best, l.dval[t]);
    }
    l.kept.clear();
    for (idx_t t = 0; t < cnt; ++t)
      if (l.dval[t] <= best + 2.0 * b32) l.kept.push_back(l.idx[t]);
    double dist = -1.0;
    const idx_t lab = exact_nearest(l, row, l.kept.data(), static_cast<idx_t>(l.kept.size()), xn, dist);
    record_label(l, row, lab, xn, dist);
    double vlab = best, v2 = std::numeric_limits<double>::infinity();
    for (idx_t t = 0; t < cnt; ++t) {
      if (l.idx[t] == lab) vlab = l.dval[t];
      else v2 = std::min(v2, l.dval[t]);
    }
    const Metric metric = D_.metric;
    const double fe = f_err_of_tile(metric, b32, xn);
    const double l_far = (2.0 * far - u) * (1.0 - kBoundRel);
    const double l_near = v2 < std::numeric_limits<double>::infinity()
                              ? dist_lo(metric, f_of_tile(metric, v2, xsq, xn) - fe, d)
                              : std::numeric_limits<double>::infinity();
    pr.u[row] = dist >= 0.0 ? dist_hi(metric, dist, d) : dist_hi(metric, f_of_tile(metric, vlab, xsq, xn) + fe, d);
    pr.l[row] = pr.lm[row] = std::min(l_near, l_far);
    pr.tight[row] = 1;
    return true;
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
    idx_t arg = 0;
    float second = 0.0f;
    const float m = ks_.row_min2(crow, cs_.add.data(), cs_.mul, k_, &arg, &second);
    const float b = row_bound_in(cs_, D_.xsq[row], D_.xerr.empty() ? 0.0 : D_.xerr[row]);
    idx_t cnt = 1;
    if (second > m + 2.0f * b)  // no near-tie: the tile's best is the exact best
      l.idx[0] = static_cast<std::int32_t>(arg);
    else
      cnt = ks_.row_filter(crow, cs_.add.data(), cs_.mul, k_, m + 2.0f * b, l.idx.data(), l.val.data());
    double dist = -1.0;
    const double xn = D_.metric == Metric::Cosine ? D_.xnorm[row] : 0.0;
    idx_t ncand = cnt;
    if (cnt == 0) {  // cannot happen with checked norms; never index an empty list
      for (idx_t j = 0; j < k_; ++j) l.idx[j] = static_cast<std::int32_t>(j);
      ncand = k_;
    }
    const idx_t lab = nearest_candidate(l, row, ncand, xn, dist);
    record_label(l, row, lab, xn, dist);
    if (pr_) store_bounds(row, lab, dist, cnt, arg, m, second, b);
  }

  /// The nearest of the row's candidate centres l.idx[0 .. ncand): narrowed by fp32 products
  /// first (kernels that round their inputs), then by exact fp64 values, lower index on ties.
  /// dist gets the exact distance when it was computed (else it is left as it is).
  idx_t nearest_candidate(Local& l, idx_t row, idx_t ncand, double xn, double& dist) const {
    const idx_t d = D_.d;
    if (ncand > 1 && ks_.input_rel > 0.0) {
      l.dval.resize(static_cast<std::size_t>(ncand));
      ncand = narrow_fp32(cs_, D_.x + row * d, D_.xsq[row], l.idx.data(), ncand, l.dval.data());
    }
    return exact_nearest(l, row, l.idx.data(), ncand, xn, dist);
  }

  /// The candidate cand[0 .. ncand) of least exact fp64 value, lower index on ties (dist: its
  /// value); the only one, without computing it, when ncand is 1.
  idx_t exact_nearest(Local& l, idx_t row, const std::int32_t* cand, idx_t ncand, double xn, double& dist) const {
    if (ncand == 1) return cand[0];
    const idx_t d = D_.d;
    l.exact.clear();
    for (idx_t t = 0; t < ncand; ++t)
      l.exact.emplace_back(exact_value(D_.metric, D_.x + row * d, cs_.row(cand[t]), d, xn, cs_.norm[cand[t]]),
                           cand[t]);
    const auto best = *std::min_element(l.exact.begin(), l.exact.end());
    dist = std::max(0.0, best.first);
    return best.second;
  }

  /// The row's new label lab: the sums of a pruned pass follow a row that moved; the change
  /// count, the label, and the exact distance (computed here when the choice did not need it).
  void record_label(Local& l, idx_t row, idx_t lab, double xn, double& dist) const {
    if (acc_ && !acc_full_ && labels_[row] != lab) {
      acc_->add(D_, ks_, l.tid, row, labels_[row], true);
      acc_->add(D_, ks_, l.tid, row, lab, false);
    }
    l.changed += labels_[row] != lab;
    labels_[row] = lab;
    if (mind_ && dist < 0.0)  // exact, whichever kernel made the tile
      dist = std::max(0.0, exact_value(D_.metric, D_.x + row * D_.d, cs_.row(lab), D_.d, xn, cs_.norm[lab]));
    if (mind_) mind_[row] = static_cast<float>(dist);
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
  const idx_t max_local_;  ///< most candidates of the local stage (0: off)
  const RowSource src_;
};

}  // namespace

/// One assignment pass (see AssignPass) over the ranges, in parallel. Returns how many labels changed.
idx_t assign_pass(const PackedSet& cs, const Data& D, idx_t* labels, float* mind, Accum* acc, bool acc_full,
                  const std::vector<Range>& ranges, Cancel& cancel, Prune* pr) {
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

}  // namespace kmeans_impl
}  // namespace ec
