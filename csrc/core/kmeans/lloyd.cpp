// Lloyd iterations: fused assignment and fixed-point accumulation, empty-cluster repair, convergence.
#include "internal.hpp"

#include <cstring>
#include <numeric>

namespace ec {
namespace kmeans_impl {
namespace {

/// Empty clusters take the rows farthest from their centres (ties: lower index), which are
/// moved out of their old clusters' sums, as scikit-learn does; labels follow at the next
/// assignment. Returns how many clusters were repaired.
int repair_empty_clusters(const Data& D, const PackedSet& cs, const std::vector<idx_t>& labels,
                          std::vector<float>& mind, std::vector<double>& sums, std::vector<double>& wsum) {
  const std::vector<idx_t> empty = empty_clusters(wsum);
  if (empty.empty()) return 0;
  const idx_t n = D.n, d = D.d;
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
  std::vector<float> rx(ne * static_cast<std::size_t>(d)), rw(ne);
  std::vector<idx_t> from(ne);
  for (std::size_t e = 0; e < ne; ++e) {
    std::memcpy(rx.data() + e * d, D.x + order[e] * d, sizeof(float) * d);
    rw[e] = static_cast<float>(D.weight(order[e]));
    from[e] = labels[order[e]];
  }
  return apply_repair(D.metric, d, empty, rx.data(), rw.data(), from.data(), static_cast<idx_t>(ne), sums, wsum);
}

}  // namespace

/// One full k-means run from the given initial centres.
namespace {

/// Pruning's per-row state for n rows (bounds not yet valid).
void start_pruning(const KMeansParams& p, idx_t n, Prune& pr) {
  pr.force_movers = p.movers;
  pr.u.resize(static_cast<std::size_t>(n));
  pr.l.resize(static_cast<std::size_t>(n));
  pr.lm.resize(static_cast<std::size_t>(n));
  pr.tight.assign(static_cast<std::size_t>(n), 0);
}

/// Pruning's state for a pass with valid bounds: the centres' half gaps and the mobile group
/// (packed when it is not empty).
void update_pruning(const PackedSet& cs, const Data& D, const std::vector<float>& centers,
                    const std::vector<idx_t>& labels, Prune& pr) {
  centre_half_gaps(cs, D, pr);
  choose_movers(cs, D, labels.data(), cs.n, pr);
  if (!pr.movers.empty())
    pack_set(pr.mv, centers.data(), static_cast<idx_t>(pr.movers.size()), D.d, D.metric, pr.movers.data(),
             D.threads, D.ks);
}

}  // namespace

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
  if (use_prune) start_pruning(p, n, pr);
  auto pass = [&](bool accumulate) {
    pack_set(cs, centers.data(), k, d, D.metric, nullptr, D.threads, D.ks);
    if (use_prune && pr.valid) update_pruning(cs, D, centers, labels, pr);
    const bool full = !use_prune || !pr.valid;  // pruned passes update the sums of moved rows only
    if (accumulate && full) acc.clear();
    // A final pass without accumulation may change labels; its sums are not used afterwards.
    changed = assign_pass(cs, D, labels.data(), nullptr, accumulate ? &acc : nullptr, full, ranges, cancel,
                use_prune ? &pr : nullptr);
    ++passes;
  };
  start_centres(D.metric, centers.data(), k, d);
  for (it = 0; it < p.max_iter; ++it) {
    cancel.step("k-means iteration", it + 1, p.max_iter);
    pass(true);
    acc.totals(sums, wsum);
    repaired += repair_empty_clusters(D, cs, labels, mind, sums, wsum);
    const double shift = update_centres(D.metric, d, centers, sums, wsum, next, k);
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
    cancel.step("k-means final assignment");
    pass(false);
  }
  res.centers = centers;
  res.labels = std::move(labels);
  res.inertia = objective(D, res.centers.data(), k, res.labels);
  res.n_iter = std::min(it, p.max_iter);
  res.n_empty_repaired = repaired;
  if (use_prune) {
    const double row_passes = static_cast<double>(n) * std::max(1, passes);
    res.computed_fraction = static_cast<double>(pr.rows_computed) / row_passes;
    res.mover_fraction = static_cast<double>(pr.rows_movers) / row_passes;
  } else {
    res.computed_fraction = 1.0;
    res.mover_fraction = 0.0;
  }
}

}  // namespace kmeans_impl
}  // namespace ec
