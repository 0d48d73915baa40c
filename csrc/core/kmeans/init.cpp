// Initial k-means centres: k-means++ (greedy, with local trials), random rows, and k-means||.
#include "internal.hpp"
#include "../tile_driver.hpp"
#include "../kmeans_chunk.hpp"

#include <cstring>
#include <numeric>

namespace ec {
namespace kmeans_impl {
namespace {

void seed_parallel(const KMeansParams& p, Data& D, std::uint64_t seed, float* out, Cancel& cancel);

/// k-means++'s distances from every row to each trial centre of a small set, as exact fp64
/// metric values (exact_value: one fixed summation order on every instruction set) wherever
/// they can matter, so that the draws and the trial of least potential, which read only
/// min(closest_i, dist_it), are the same whichever kernel set made the tiles (bf16 or fp32, any
/// CPU). The tile value and its error bound prove most pairs no nearer than the row's current
/// closest distance; those get +inf (min() then keeps closest_i, as it would with the exact
/// value). The rest, a small share once a few centres are in, are computed exactly.
class TrialDistancesHandler {
 public:
  struct Local {};
  TrialDistancesHandler(const Data& D, const PackedSet& cs, const std::vector<double>& closest, double* out)
      : D_(D), cs_(cs), closest_(closest), out_(out) {}
  void init(Local&) const {}
  void begin(Local&, idx_t, idx_t) const {}
  void tile(Local&, idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm) const {
    const idx_t t = cs_.n, d = D_.d;
    const Metric m = D_.metric;
    // Room for the fp64 rounding of an exact value: cos_abs_err's allowance, absolute for
    // cosine and relative to the norms for L2.
    const double fp64 = cos_abs_err(d);
    for (idx_t i = 0; i < qm; ++i) {
      const idx_t row = q0 + i;
      const double xsq = D_.xsq[row];
      const double xn = m == Metric::Cosine ? D_.xnorm[row] : 0.0;
      const double b = f_err_of_tile(m, row_bound_in(cs_, xsq, D_.xerr.empty() ? 0.0 : D_.xerr[row]), xn) +
                       fp64 * (m == Metric::L2 ? xsq + cs_.max_sqnorm : 1.0);
      const double near = closest_[row];
      for (idx_t j = 0; j < bm; ++j) {
        const double f = f_of_tile(m, cs_.add.data()[b0 + j] + cs_.mul * static_cast<double>(c[i * ldc + j]), xsq, xn);
        double v = std::numeric_limits<double>::infinity();
        if (!(f - b > near))
          v = std::max(0.0, exact_value(m, D_.x + row * d, cs_.row(b0 + j), d, xn, cs_.norm[b0 + j]));
        out_[row * t + b0 + j] = v;
      }
    }
  }
  void end(Local&, idx_t, idx_t) const {}
  void finish(Local&) const {}

 private:
  const Data& D_;
  const PackedSet& cs_;
  const std::vector<double>& closest_;
  double* out_;
};

/// Distances from every row to t trial centres (out: n * t, row-major) as TrialDistancesHandler
/// gives them: exact where they may be below closest (+inf: all exact), +inf elsewhere.
void distances_to(const Data& D, const float* cand, idx_t t, const std::vector<double>& closest,
                  std::vector<double>& out, Cancel& cancel) {
  PackedSet cs;
  pack_set(cs, cand, t, D.d, D.metric, nullptr, 1, D.ks);
  out.resize(static_cast<std::size_t>(D.n * t));
  ScanShape shape;
  shape.query_block = 144;
  shape.chunk = 4;
  TrialDistancesHandler h(D, cs, closest, out.data());
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

/// k-means|| (Bahmani, Moseley, Vattani, Kumar, Vassilvitskii 2012). Each of
/// kKMeansParallelRounds rounds samples every row independently with probability
/// min(1, l * w * D(x) / potential), l = 2k, and adds the sample to the candidates; candidates
/// are then weighted by the (weighted) number of rows nearest to them, and weighted k-means++
/// followed by a few Lloyd iterations on the candidates gives the k centres. It reads the data
/// about 2 * kKMeansParallelRounds times instead of k times (k-means++). The whole array is one
/// chunk of the chunked seeding (kmeans_chunk.hpp): weights, potentials and candidate weights
/// are fixed-point integers and each row's draw comes from its own generator seeded by
/// (seed, round, row), so the result depends neither on the thread count nor on a chunking.
void seed_parallel(const KMeansParams& p, Data& D, std::uint64_t seed, float* out, Cancel& cancel) {
  const idx_t n = D.n, d = D.d, k = p.k;
  const double wscale = D.w ? pow2_scale(n, D.wmax, 61) : 1.0;  // as kmeans_fixed_scales
  const std::vector<double>& absmax = D.absmax;
  const double pscale = seed_potential_scale(D.metric, n, absmax.data(), d, D.w ? D.wmax : 1.0);
  std::uint64_t target = 0, finish_seed = 0, limbs[4];
  seed_draws(seed, seed_units_total(D.w, n, wscale), &target, &finish_seed);
  const idx_t first = seed_pick_row(D.w, n, wscale, target);
  std::vector<float> cand(D.x + first * d, D.x + (first + 1) * d), closest, batch;
  cancel.step("k-means|| seeding", 1, kKMeansParallelRounds + 2);
  seed_nearer(D, cand.data(), 1, closest, pscale, limbs, cancel);
  for (int r = 0; r < kKMeansParallelRounds; ++r) {
    cancel.step("k-means|| seeding", r + 2, kKMeansParallelRounds + 2);
    const double pot = objective_of(limbs, pscale);
    if (!(pot > 0.0)) break;  // every row sits on a candidate
    batch.clear();
    seed_sample(D.x, n, d, D.w, closest, pot, k, seed, r, 0, batch);
    if (batch.empty()) continue;
    cand.insert(cand.end(), batch.begin(), batch.end());
    seed_nearer(D, batch.data(), static_cast<idx_t>(batch.size()) / d, closest, pscale, limbs, cancel);
  }
  const idx_t m = static_cast<idx_t>(cand.size()) / d;
  if (m <= k) {  // too few distinct candidates: plain k-means++ on all rows
    KMeansParams pp = p;
    pp.init = KMeansInit::KMeansPP;
    seed_centers(pp, D, seed, out, cancel);
    return;
  }
  std::vector<std::uint64_t> units(static_cast<std::size_t>(m));
  cancel.step("k-means|| seeding", kKMeansParallelRounds + 2, kKMeansParallelRounds + 2);
  seed_candidate_units(D, cand.data(), m, wscale, units.data(), cancel);
  seed_finish(p, cand.data(), m, d, units.data(), wscale, finish_seed, D.threads, D.ks, out, cancel);
}

}  // namespace

namespace {

/// k distinct rows chosen uniformly: a partial Fisher-Yates over the indices.
void seed_random(const Data& D, idx_t k, Rng& rng, float* out) {
  const idx_t n = D.n, d = D.d;
  std::vector<idx_t> perm(static_cast<std::size_t>(n));
  std::iota(perm.begin(), perm.end(), idx_t{0});
  for (idx_t c = 0; c < k; ++c) {
    const idx_t j = c + rng.below(n - c);
    std::swap(perm[c], perm[j]);
    std::memcpy(out + c * d, D.x + perm[c] * d, sizeof(float) * d);
  }
}

constexpr idx_t kSeedBlock = 4096;  // rows per block of k-means++'s sums (a fixed order)

/// The candidate (of `trials`, distances dist[i * trials + t]) that leaves the least potential
/// sum_i w_i min(closest_i, dist_it), summed in fixed block order so that the choice does not
/// depend on the thread count.
int least_potential_candidate(const Data& D, const std::vector<double>& closest, const std::vector<double>& dist,
                              int trials) {
  const idx_t n = D.n;
  const idx_t nb = (n + kSeedBlock - 1) / kSeedBlock;
  std::vector<double> part(static_cast<std::size_t>(nb * trials), 0.0);
  parallel_for(D.threads, nb, [&](idx_t b) {
    for (idx_t i = b * kSeedBlock; i < std::min(n, (b + 1) * kSeedBlock); ++i)
      for (int t = 0; t < trials; ++t)
        part[b * trials + t] += D.weight(i) * std::min(closest[i], dist[i * trials + t]);
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
  return best;
}

/// Greedy k-means++ (Arthur & Vassilvitskii 2007, with local trials as in scikit-learn).
void seed_plus_plus(const KMeansParams& p, const Data& D, Rng& rng, float* out, Cancel& cancel) {
  const idx_t n = D.n, d = D.d, k = p.k;
  const int trials = p.n_local_trials > 0 ? p.n_local_trials
                                          : 2 + static_cast<int>(std::log(static_cast<double>(k)));
  std::vector<double> wv(static_cast<std::size_t>(n)), bs;
  for (idx_t i = 0; i < n; ++i) wv[i] = D.weight(i);
  block_sums_of(wv, kSeedBlock, bs, D.threads);
  double total = std::accumulate(bs.begin(), bs.end(), 0.0);
  const idx_t first = sample_index(bs, kSeedBlock, wv, rng.uniform() * total);
  cancel.step("k-means++ seeding", 1, static_cast<int>(k));
  std::memcpy(out, D.x + first * d, sizeof(float) * d);
  std::vector<double> dist, closest(static_cast<std::size_t>(n), std::numeric_limits<double>::infinity()),
      pot_v(static_cast<std::size_t>(n));
  distances_to(D, out, 1, closest, dist, cancel);
  closest = dist;
  std::vector<float> cand(static_cast<std::size_t>(trials * d));
  std::vector<idx_t> cand_idx(static_cast<std::size_t>(trials));
  for (idx_t c = 1; c < k; ++c) {
    cancel.step("k-means++ seeding", static_cast<int>(c + 1), static_cast<int>(k));
    for (idx_t i = 0; i < n; ++i) pot_v[i] = D.weight(i) * closest[i];
    block_sums_of(pot_v, kSeedBlock, bs, D.threads);
    const double pot = std::accumulate(bs.begin(), bs.end(), 0.0);
    for (int t = 0; t < trials; ++t) {
      // With zero potential (fewer distinct points than k) any row serves; pick uniformly.
      cand_idx[t] = pot > 0.0 ? sample_index(bs, kSeedBlock, pot_v, rng.uniform() * pot) : rng.below(n);
      std::memcpy(cand.data() + t * d, D.x + cand_idx[t] * d, sizeof(float) * d);
    }
    distances_to(D, cand.data(), trials, closest, dist, cancel);
    const int best = least_potential_candidate(D, closest, dist, trials);
    for (idx_t i = 0; i < n; ++i) closest[i] = std::min(closest[i], dist[i * trials + best]);
    std::memcpy(out + c * d, D.x + cand_idx[best] * d, sizeof(float) * d);
  }
}

}  // namespace

void seed_centers(const KMeansParams& p, Data& D, std::uint64_t seed, float* out, Cancel& cancel) {
  if (p.init == KMeansInit::Parallel) {
    seed_parallel(p, D, seed, out, cancel);
    return;
  }
  Rng rng(seed);
  if (p.init == KMeansInit::Random)
    seed_random(D, p.k, rng, out);
  else
    seed_plus_plus(p, D, rng, out, cancel);
}

}  // namespace kmeans_impl
}  // namespace ec
