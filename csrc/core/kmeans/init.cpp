// Initial k-means centres: k-means++ (greedy, with local trials), random rows, and k-means||.
#include "internal.hpp"
#include "../tile_driver.hpp"

#include <cstring>
#include <numeric>

namespace ec {
namespace kmeans_impl {
namespace {

void seed_parallel(const KMeansParams& p, const Data& D, std::uint64_t seed, float* out, Cancel& cancel);

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
int least_potential_candidate(const Data& D, const std::vector<double>& closest, const std::vector<float>& dist,
                              int trials) {
  const idx_t n = D.n;
  const idx_t nb = (n + kSeedBlock - 1) / kSeedBlock;
  std::vector<double> part(static_cast<std::size_t>(nb * trials), 0.0);
  parallel_for(D.threads, nb, [&](idx_t b) {
    for (idx_t i = b * kSeedBlock; i < std::min(n, (b + 1) * kSeedBlock); ++i)
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
  std::memcpy(out, D.x + first * d, sizeof(float) * d);
  std::vector<float> dist;
  distances_to(D, out, 1, dist, cancel);
  std::vector<double> closest(static_cast<std::size_t>(n)), pot_v(static_cast<std::size_t>(n));
  for (idx_t i = 0; i < n; ++i) closest[i] = dist[i];
  std::vector<float> cand(static_cast<std::size_t>(trials * d));
  std::vector<idx_t> cand_idx(static_cast<std::size_t>(trials));
  for (idx_t c = 1; c < k; ++c) {
    for (idx_t i = 0; i < n; ++i) pot_v[i] = D.weight(i) * closest[i];
    block_sums_of(pot_v, kSeedBlock, bs, D.threads);
    const double pot = std::accumulate(bs.begin(), bs.end(), 0.0);
    for (int t = 0; t < trials; ++t) {
      // With zero potential (fewer distinct points than k) any row serves; pick uniformly.
      cand_idx[t] = pot > 0.0 ? sample_index(bs, kSeedBlock, pot_v, rng.uniform() * pot) : rng.below(n);
      std::memcpy(cand.data() + t * d, D.x + cand_idx[t] * d, sizeof(float) * d);
    }
    distances_to(D, cand.data(), trials, dist, cancel);
    const int best = least_potential_candidate(D, closest, dist, trials);
    for (idx_t i = 0; i < n; ++i) closest[i] = std::min<double>(closest[i], dist[i * trials + best]);
    std::memcpy(out + c * d, D.x + cand_idx[best] * d, sizeof(float) * d);
  }
}

}  // namespace

void seed_centers(const KMeansParams& p, const Data& D, std::uint64_t seed, float* out, Cancel& cancel) {
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
