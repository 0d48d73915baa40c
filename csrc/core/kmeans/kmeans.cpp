// k-means on the tile engine. Determinism: centre sums are accumulated in fixed point (64-bit
// integers, see Accum), whose sums do not depend on their order, so the same seed gives
// bit-identical results on any number of threads, with or without pruning, and the pruned
// passes only update the sums of rows that changed cluster.
#include "../kmeans.hpp"

#include <cstring>
#include <string>

#include "internal.hpp"

namespace ec {
namespace {

using kmeans_impl::Data;

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
  kmeans_impl::prepare(D, x, n, d, weights, p.metric, resolve_threads(p.n_threads), p.kernel_set);
  kmeans_impl::seed_centers(p, D, seed, out_centers, cancel);
}

/// Working memory of kmeans_fit, bytes (an over-estimate: per-row state, initialisation,
/// centres, per-thread accumulators and tiles, result).
double kmeans_bytes(const KMeansParams& p, idx_t n, idx_t d) {
  const KernelSet& ks = p.kernel_set ? *p.kernel_set : kernels_for(KernelFamily::kmeans, d);
  const double threads = resolve_threads(p.n_threads);
  const double k = p.k, dn = static_cast<double>(n), dd = static_cast<double>(d);
  const double k_pad = static_cast<double>(round_up(p.k, ks.nr)), depth = static_cast<double>(ks.depth(d));
  double per_row = 8.0 + 8.0 + 4.0 + 25.0 + 16.0 + 4.0;  // norms, labels, distance, bounds (u, l, lm, tight), result labels, rounding errors
  per_row += p.init == KMeansInit::Parallel ? 40.0 : 8.0 + 4.0 * (2.0 + std::log(k + 1.0));  // init state
  double centres = k * dd * (4.0 * 4.0 + 8.0 * 2.0) + k_pad * (depth * 4.0 + 12.0);
  if (p.init == KMeansInit::Parallel) centres += (1.0 + 5.0 * 2.0 * k) * dd * 4.0 * 2.0;  // candidates
  centres += 0.5 * k_pad * (depth * 4.0 + 12.0 + 16.0);  // movers (at most k / 2), packed
  const double per_thread = (k * dd + k) * 8.0 + static_cast<double>(kmeans_impl::rows_per_tile(round_up(p.k, ks.nr))) *
                                                      (depth + 1.5 * k_pad) * 4.0 + k_pad * 16.0;
  return dn * per_row + centres + threads * per_thread;
}

void kmeans_check_memory(const KMeansParams& p, idx_t n, idx_t d) {
  check_memory(kmeans_bytes(p, n, d), p.memory_limit,
               "k-means with " + std::to_string(p.k) + " clusters on " + std::to_string(n) + " x " + std::to_string(d));
}

void kmeans_assign_check_memory(idx_t k, idx_t n, idx_t d, int n_threads, const KernelSet* kernel_set,
                                double memory_limit) {
  const KernelSet& ks = kernel_set ? *kernel_set : kernels_for(KernelFamily::kmeans, d);
  const double threads = resolve_threads(n_threads);
  const double k_pad = static_cast<double>(round_up(k, ks.nr)), depth = static_cast<double>(ks.depth(d));
  // Per row: norms (2 x 8), rounding error, outputs (label 8, distance 4); the packed centres;
  // per thread: a tile of rows and their products, candidate buffers.
  const double bytes = static_cast<double>(n) * (8.0 + 8.0 + 4.0 + 12.0) + static_cast<double>(d) * 8.0 +
                       k_pad * (depth * 4.0 + 16.0) +
                       threads * (static_cast<double>(kmeans_impl::rows_per_tile(round_up(k, ks.nr))) * (depth + 1.5 * k_pad) * 4.0 +
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
  kmeans_impl::prepare(D, x, n, d, weights, p.metric, resolve_threads(p.n_threads), p.kernel_set);
  const int runs = p.init == KMeansInit::Given ? 1 : p.n_init;
  bool have = false;
  for (int r = 0; r < runs; ++r) {
    std::vector<float> centers(static_cast<std::size_t>(p.k * d));
    if (p.init == KMeansInit::Given)
      std::memcpy(centers.data(), init_centers, sizeof(float) * p.k * d);
    else
      kmeans_impl::seed_centers(p, D, p.seed + static_cast<std::uint64_t>(r) * 0x9E3779B97F4A7C15ull,
                   centers.data(), cancel);
    KMeansResult res;
    kmeans_impl::lloyd(p, D, centers, res, cancel);
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
  kmeans_impl::prepare(D, x, n, d, nullptr, m, resolve_threads(n_threads), kernel_set);
  PackedSet cs;
  pack_set(cs, centers, k, d, m, nullptr, D.threads, D.ks);
  const auto ranges = kmeans_impl::make_ranges(n);
  cancel.step("k-means assignment");
  kmeans_impl::assign_pass(cs, D, labels, dist, nullptr, false, ranges, cancel);
}

}  // namespace ec
