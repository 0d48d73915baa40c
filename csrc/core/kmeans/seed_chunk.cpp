// k-means|| over chunks of rows (see kmeans_chunk.hpp): the pieces of the k-means|| seeding that
// kmeans_init / kmeans_fit run on the whole array as one chunk and a chunked driver runs per
// chunk. Every sum that used to depend on the order of the rows (the first row's weight prefix,
// each round's potential, the candidates' weights) is an integer here, so the seeding is the
// same for any chunking.
#include <cstring>
#include <string>

#include "../kmeans_chunk.hpp"
#include "internal.hpp"

namespace ec {
namespace kmeans_impl {

namespace {

/// Row i's weight in units of 1 / wscale (1 without weights): an integer, so prefix sums and
/// totals are exact in any order; wscale keeps the total below 2^61.
inline std::uint64_t weight_unit(const float* w, idx_t i, double wscale) {
  return w ? static_cast<std::uint64_t>(std::llrint(static_cast<double>(w[i]) * wscale)) : 1u;
}

/// The generator of row `row` (global index) in round `round`: one per row, so that the draw
/// does not depend on the thread count or on the chunk that holds the row.
inline double row_uniform(std::uint64_t seed, int round, idx_t row) {
  Rng ri(seed ^ (0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(round + 1)) ^
         (0xBF58476D1CE4E5B9ull * static_cast<std::uint64_t>(row + 1)));
  return ri.uniform();
}

}  // namespace

std::uint64_t seed_units_total(const float* w, idx_t n, double wscale) {
  std::uint64_t total = 0;
  for (idx_t i = 0; i < n; ++i) total += weight_unit(w, i, wscale);
  return total;
}

idx_t seed_pick_row(const float* w, idx_t n, double wscale, std::uint64_t target) {
  std::uint64_t below = 0;  // units of the rows before i
  for (idx_t i = 0; i < n; ++i) {
    const std::uint64_t u = weight_unit(w, i, wscale);
    if (target - below < u) return i;  // below <= target < below + u (target >= below here)
    below += u;
  }
  fail("k-means|| first row: target " + std::to_string(target) + " is past this chunk's " + std::to_string(below) +
       " weight units");
}

double seed_potential_scale(Metric m, idx_t n_total, const double* absmax, idx_t d, double wmax) {
  // Any row's distance to any other row: L2 at most (2 sqrt(sum_f absmax_f^2))^2, cosine at most
  // 2; doubled for the float rounding of the computed distances.
  double bound = 2.0;
  if (m == Metric::L2) {
    double sq = 0.0;
    for (idx_t f = 0; f < d; ++f) sq += absmax[f] * absmax[f];
    bound = 4.0 * sq;
  }
  return pow2_scale(n_total, 2.0 * bound * std::max(wmax, 1e-300), 120);
}

void seed_draws(std::uint64_t seed, std::uint64_t total, std::uint64_t* target, std::uint64_t* finish_seed) {
  if (total == 0) fail("sample weights sum to zero; at least one must be positive");
  Rng rng(seed);
  const double u = rng.uniform();
  *target = std::min<std::uint64_t>(total - 1, static_cast<std::uint64_t>(u * static_cast<double>(total)));
  *finish_seed = rng.next();
}

void seed_nearer(const Data& D, const float* batch, idx_t t, std::vector<float>& closest, double pscale,
                 std::uint64_t* limbs, Cancel& cancel) {
  const idx_t n = D.n;
  std::vector<float> md(static_cast<std::size_t>(n));
  if (n > 0) {
    PackedSet cs;
    pack_set(cs, batch, t, D.d, D.metric, nullptr, D.threads, D.ks);
    std::vector<idx_t> lab(static_cast<std::size_t>(n));
    assign_pass(cs, D, lab.data(), md.data(), nullptr, false, make_ranges(n), cancel);
  }
  if (closest.empty()) {
    closest = md;  // the first batch (the first row)
  } else {
    if (static_cast<idx_t>(closest.size()) != n)
      fail("this k-means|| state belongs to another chunk (" + std::to_string(closest.size()) + " rows)");
    for (idx_t i = 0; i < n; ++i) closest[i] = std::min(closest[i], md[i]);
  }
  u128 total = 0;
  Cancel no_cancel;
  const idx_t nblocks = (n + kRangeUnit - 1) / kRangeUnit;
  for_each_block<u128>(
      D.threads, nblocks, 1, no_cancel, [](u128& s) { s = 0; },
      [&](u128& s, idx_t b, const StopCheck&) {
        for (idx_t i = b * kRangeUnit; i < std::min(n, (b + 1) * kRangeUnit); ++i)
          s += fixed(D.weight(i) * static_cast<double>(closest[i]) * pscale);
      },
      [&](u128& s) { total += s; });
  to_limbs(total, limbs);
}

void seed_sample(const float* x, idx_t n, idx_t d, const float* w, const std::vector<float>& closest, double pot,
                 idx_t k, std::uint64_t seed, int round, idx_t row_offset, std::vector<float>& batch) {
  if (static_cast<idx_t>(closest.size()) != n)
    fail("this k-means|| state belongs to another chunk (" + std::to_string(closest.size()) + " rows)");
  const double ell = 2.0 * static_cast<double>(k);  // the oversampling factor l = 2k
  for (idx_t i = 0; i < n; ++i) {
    const double pv = (w ? static_cast<double>(w[i]) : 1.0) * static_cast<double>(closest[i]);
    if (pv <= 0.0) continue;
    if (row_uniform(seed, round, row_offset + i) < ell * pv / pot) batch.insert(batch.end(), x + i * d, x + (i + 1) * d);
  }
}

void seed_candidate_units(const Data& D, const float* cand, idx_t m, double wscale, std::uint64_t* units,
                          Cancel& cancel) {
  std::fill(units, units + m, std::uint64_t{0});
  if (D.n == 0) return;
  PackedSet cs;
  pack_set(cs, cand, m, D.d, D.metric, nullptr, D.threads, D.ks);
  std::vector<idx_t> lab(static_cast<std::size_t>(D.n));
  assign_pass(cs, D, lab.data(), nullptr, nullptr, false, make_ranges(D.n), cancel);
  for (idx_t i = 0; i < D.n; ++i) units[lab[i]] += weight_unit(D.w, i, wscale);
}

void seed_finish(const KMeansParams& p, const float* cand, idx_t m, idx_t d, const std::uint64_t* units,
                 double wscale, std::uint64_t finish_seed, int threads, const KernelSet* ks, float* out,
                 Cancel& cancel) {
  std::vector<float> wc(static_cast<std::size_t>(m));
  for (idx_t j = 0; j < m; ++j) wc[j] = static_cast<float>(static_cast<double>(units[j]) / wscale);
  Data Dc;
  prepare(Dc, cand, m, d, wc.data(), p.metric, threads, ks);
  KMeansParams pc = p;
  pc.init = KMeansInit::KMeansPP;
  pc.max_iter = 5;
  std::vector<float> centers(static_cast<std::size_t>(p.k * d));
  const HoldSteps hold(cancel);  // part of the caller's seeding step
  seed_centers(pc, Dc, finish_seed, centers.data(), cancel);
  KMeansResult rc;
  lloyd(pc, Dc, centers, rc, cancel);
  std::copy(rc.centers.begin(), rc.centers.end(), out);
}

}  // namespace kmeans_impl

using kmeans_impl::Data;

std::uint64_t kmeans_seed_units(const float* w, idx_t n, double wscale) {
  return kmeans_impl::seed_units_total(w, n, wscale);
}

idx_t kmeans_seed_pick(const float* w, idx_t n, double wscale, std::uint64_t target) {
  return kmeans_impl::seed_pick_row(w, n, wscale, target);
}

double kmeans_seed_potential_scale(Metric m, idx_t n_total, const double* absmax, idx_t d, double wmax) {
  return kmeans_impl::seed_potential_scale(m, n_total, absmax, d, wmax);
}

void kmeans_seed_draws(std::uint64_t seed, std::uint64_t total_units, std::uint64_t* target,
                       std::uint64_t* finish_seed) {
  kmeans_impl::seed_draws(seed, total_units, target, finish_seed);
}

void kmeans_seed_nearer(Metric m, const float* batch, idx_t t, const float* x, idx_t n, idx_t d, const float* w,
                        double pscale, KMeansSeedState& st, int threads, Cancel& cancel, const KernelSet* kernel_set,
                        std::uint64_t* limbs) {
  if (t <= 0 || d <= 0) fail("kmeans_seed_nearer needs at least one batch row and one feature");
  Data D;
  kmeans_impl::prepare(D, x, n, d, w, m, resolve_threads(threads), kernel_set);
  kmeans_impl::seed_nearer(D, batch, t, st.closest, pscale, limbs, cancel);
  st.rounds += 1;
}

void kmeans_seed_sample(const float* x, idx_t n, idx_t d, const float* w, const KMeansSeedState& st, double pot,
                        idx_t k, std::uint64_t seed, int round, idx_t row_offset, std::vector<float>& batch) {
  if (st.rounds == 0) fail("kmeans_seed_sample needs a state that kmeans_seed_nearer has filled");
  kmeans_impl::seed_sample(x, n, d, w, st.closest, pot, k, seed, round, row_offset, batch);
}

void kmeans_seed_candidate_units(Metric m, const float* cand, idx_t mc, const float* x, idx_t n, idx_t d,
                                 const float* w, double wscale, int threads, Cancel& cancel,
                                 const KernelSet* kernel_set, std::uint64_t* units) {
  Data D;
  kmeans_impl::prepare(D, x, n, d, w, m, resolve_threads(threads), kernel_set);
  kmeans_impl::seed_candidate_units(D, cand, mc, wscale, units, cancel);
}

void kmeans_parallel_finish(const KMeansParams& p, const float* cand, idx_t mc, idx_t d, const std::uint64_t* units,
                            double wscale, std::uint64_t finish_seed, float* out, Cancel& cancel) {
  if (mc <= p.k)
    fail("k-means|| found " + std::to_string(mc) + " candidates for n_clusters=" + std::to_string(p.k) +
         "; it needs more than n_clusters");
  kmeans_impl::seed_finish(p, cand, mc, d, units, wscale, finish_seed, resolve_threads(p.n_threads), p.kernel_set,
                           out, cancel);
}

}  // namespace ec
