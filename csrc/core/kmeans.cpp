// k-means on the tile engine. Determinism: rows are split into ranges whose boundaries depend
// only on n (never on the thread count); each range accumulates its sums in fp64 in row order,
// and ranges are reduced in a fixed order, so the same seed gives bit-identical results on any
// number of threads.
#include "kmeans.hpp"

#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "engine.hpp"

namespace ec {
namespace {

constexpr idx_t kRangeUnit = 4096;          // rows per accumulation range (at least)
constexpr int kMaxRanges = 64;              // ranges at most (load balance for many threads)
constexpr double kAccumBudget = 256.0e6;    // bytes of fp64 accumulators at most

/// Query rows per tile for k centres: the tile of products (rows x k) stays within ~256 KiB.
idx_t rows_per_tile(idx_t k_pad) {
  idx_t r = (256 * 1024 / 4) / k_pad;
  r = r / 12 * 12;
  return std::max<idx_t>(12, std::min<idx_t>(144, r));
}

struct Range {
  idx_t r0, r1;
  std::vector<double> sums;  // k * d
  std::vector<double> w;     // k
};

struct Data {
  const float* x;
  idx_t n, d;
  const float* w;             // may be null
  std::vector<double> xsq;    // ||x_i||^2
  std::vector<double> xnorm;  // ||x_i|| (cosine)
  Metric metric;
  int threads;
  const KernelSet* ks;        // the tile kernels for this fit
  double weight(idx_t i) const { return w ? static_cast<double>(w[i]) : 1.0; }
};

std::vector<Range> make_ranges(idx_t n, idx_t k, idx_t d) {
  idx_t nr = std::max<idx_t>(1, std::min<idx_t>(kMaxRanges, n / kRangeUnit));
  const double per = static_cast<double>(k) * static_cast<double>(d) * 8.0;
  nr = std::max<idx_t>(1, std::min<idx_t>(nr, static_cast<idx_t>(kAccumBudget / per)));
  std::vector<Range> rs(static_cast<std::size_t>(nr));
  for (idx_t r = 0; r < nr; ++r) {
    rs[r].r0 = n * r / nr;
    rs[r].r1 = n * (r + 1) / nr;
  }
  return rs;
}

/// One assignment pass. For every row: exact nearest centre and (when `mind` is given) its
/// exact fp64 distance; with `acc`,
/// also adds w_i * x_i (cosine: w_i * x_i / ||x_i||) to its range's sums (fused: the row is
/// still in cache).
void assign_pass(const PackedSet& cs, const Data& D, idx_t* labels, float* mind,
                 std::vector<Range>* acc, const std::vector<Range>& ranges, Cancel& cancel) {
  const KernelSet& ks = *D.ks;
  const idx_t d = D.d, k = cs.n;
  const idx_t k_pad = cs.n_pad;
  const idx_t mc = rows_per_tile(k_pad);
  const idx_t nranges = static_cast<idx_t>(ranges.size());
  ExceptionSlot err;
#pragma omp parallel num_threads(D.threads)
  {
    TileScratch s;
    std::vector<std::pair<double, idx_t>> ex;
    err.run([&] {
      s.a.resize(static_cast<std::size_t>(mc * ks.depth(d)));
      s.c.resize(static_cast<std::size_t>(mc * k_pad));
      s.idx.resize(static_cast<std::size_t>(k_pad));
      s.val.resize(static_cast<std::size_t>(k_pad));
    });
#pragma omp for schedule(dynamic, 1)
    for (idx_t r = 0; r < nranges; ++r) {
      err.run([&] {
        Range* ra = acc ? &(*acc)[r] : nullptr;
        if (ra) {
          std::fill(ra->sums.begin(), ra->sums.end(), 0.0);
          std::fill(ra->w.begin(), ra->w.end(), 0.0);
        }
        for (idx_t q0 = ranges[r].r0; q0 < ranges[r].r1; q0 += mc) {
          if (err.failed() || cancel.poll()) return;
          const idx_t qm = std::min(mc, ranges[r].r1 - q0);
          ks.pack(D.x + q0 * d, d, nullptr, nullptr, qm, d, ks.mr, s.a.data());
          ks.gemm(s.a.data(), cs.panels.data(), round_up(qm, ks.mr), k_pad, ks.depth(d), s.c.data(), k_pad);
          for (idx_t i = 0; i < qm; ++i) {
            const idx_t row = q0 + i;
            const float* crow = s.c.data() + i * k_pad;
            const float m = ks.row_min(crow, cs.add.data(), cs.mul, k);
            const float b = row_bound(cs, D.xsq[row]);
            const idx_t cnt =
                ks.row_filter(crow, cs.add.data(), cs.mul, k, m + 2.0f * b, s.idx.data(), s.val.data());
            idx_t lab;
            double dist = -1.0;
            const double xn = D.metric == Metric::Cosine ? D.xnorm[row] : 0.0;
            idx_t ncand = cnt;
            if (cnt == 0) {  // cannot happen with checked norms; never index an empty list
              for (idx_t j = 0; j < k; ++j) s.idx[j] = static_cast<std::int32_t>(j);
              ncand = k;
            }
            if (ncand == 1) {
              lab = s.idx[0];
            } else {
              ex.clear();
              for (idx_t t = 0; t < ncand; ++t)
                ex.emplace_back(exact_value(D.metric, D.x + row * d, cs.row(s.idx[t]), d, xn,
                                            cs.norm[s.idx[t]]),
                                s.idx[t]);
              const auto best = *std::min_element(ex.begin(), ex.end());
              lab = best.second;
              dist = std::max(0.0, best.first);
            }
            labels[row] = lab;
            if (mind) {  // exact, so that it is the same whichever kernel made the tile
              if (dist < 0.0)
                dist = std::max(0.0, exact_value(D.metric, D.x + row * d, cs.row(lab), d, xn, cs.norm[lab]));
              mind[row] = static_cast<float>(dist);
            }
            if (ra) {
              const double wi = D.weight(row);
              const double sc = D.metric == Metric::Cosine ? wi / xn : wi;
              double* dst = ra->sums.data() + lab * d;
              const float* src = D.x + row * d;
              for (idx_t f = 0; f < d; ++f) dst[f] += sc * src[f];
              ra->w[lab] += wi;
            }
          }
        }
      });
    }
  }
  err.rethrow();
  cancel.throw_if_stopped();
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
  idx_t zero_row = -1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (idx_t i = 0; i < n; ++i) {
    D.xsq[i] = sqnorm(x + i * d, d);
    if (m == Metric::Cosine) {
      D.xnorm[i] = std::sqrt(D.xsq[i]);
      if (D.xsq[i] == 0.0) {
#pragma omp critical
        zero_row = zero_row < 0 ? i : std::min(zero_row, i);
      }
    }
  }
  check_sqnorms(D.xsq, "data");
  if (zero_row >= 0)
    fail("row " + std::to_string(zero_row) +
         " has zero norm; spherical (cosine) k-means needs non-zero rows (drop them or use metric='l2')");
}

/// Distance from every row to one candidate centre set (t centres), exact metric values from
/// the tile engine; used by k-means++. out is n * t.
void distances_to(const Data& D, const float* cand, idx_t t, std::vector<float>& out, Cancel& cancel) {
  PackedSet cs;
  pack_set(cs, cand, t, D.d, D.metric, nullptr, 1, D.ks);
  const KernelSet& ks = *D.ks;
  const idx_t d = D.d, t_pad = cs.n_pad, mc = 144;
  const idx_t nblocks = (D.n + mc - 1) / mc;
  out.resize(static_cast<std::size_t>(D.n * t));
  ExceptionSlot err;
#pragma omp parallel num_threads(D.threads)
  {
    TileScratch s;
    err.run([&] {
      s.a.resize(static_cast<std::size_t>(mc * ks.depth(d)));
      s.c.resize(static_cast<std::size_t>(mc * t_pad));
    });
#pragma omp for schedule(dynamic, 4)
    for (idx_t blk = 0; blk < nblocks; ++blk) {
      if (err.failed() || cancel.poll()) continue;
      err.run([&] {
        const idx_t q0 = blk * mc, qm = std::min(mc, D.n - q0);
        ks.pack(D.x + q0 * d, d, nullptr, nullptr, qm, d, ks.mr, s.a.data());
        ks.gemm(s.a.data(), cs.panels.data(), round_up(qm, ks.mr), t_pad, ks.depth(d), s.c.data(), t_pad);
        for (idx_t i = 0; i < qm; ++i)
          for (idx_t j = 0; j < t; ++j) {
            const double v = cs.add.data()[j] + cs.mul * static_cast<double>(s.c.data()[i * t_pad + j]);
            const double dist = D.metric == Metric::L2 ? D.xsq[q0 + i] + v : 1.0 + v / D.xnorm[q0 + i];
            out[(q0 + i) * t + j] = static_cast<float>(std::max(0.0, dist));
          }
      });
    }
  }
  err.rethrow();
  cancel.throw_if_stopped();
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
#pragma omp parallel for num_threads(threads) schedule(static)
  for (idx_t b = 0; b < nb; ++b) {
    double s = 0.0;
    for (idx_t i = b * block; i < std::min(n, (b + 1) * block); ++i) s += v[i];
    out[b] = s;
  }
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
#pragma omp parallel for num_threads(D.threads) schedule(static)
    for (idx_t b = 0; b < nb; ++b)
      for (idx_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
        for (int t = 0; t < trials; ++t)
          part[b * trials + t] += D.weight(i) * std::min<double>(closest[i], dist[i * trials + t]);
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
#pragma omp parallel for num_threads(D.threads) schedule(static)
  for (idx_t b = 0; b < nb; ++b) {
    double s = 0.0;
    for (idx_t i = b * kRangeUnit; i < std::min(n, (b + 1) * kRangeUnit); ++i) {
      const float* c = centers + labels[i] * d;
      const double cnorm = D.metric == Metric::Cosine ? std::sqrt(sqnorm(c, d)) : 0.0;
      const double xn = D.metric == Metric::Cosine ? D.xnorm[i] : 0.0;
      s += D.weight(i) * std::max(0.0, exact_value(D.metric, D.x + i * d, c, d, xn, cnorm));
    }
    part[b] = s;
  }
  for (double v : part) total += v;
  return total;
}

/// One full k-means run from the given initial centres.
void lloyd(const KMeansParams& p, const Data& D, std::vector<float>& centers, KMeansResult& res,
           Cancel& cancel) {
  const idx_t n = D.n, d = D.d, k = p.k;
  auto ranges = make_ranges(n, k, d);
  for (auto& r : ranges) {
    r.sums.assign(static_cast<std::size_t>(k * d), 0.0);
    r.w.assign(static_cast<std::size_t>(k), 0.0);
  }
  const double tol_abs = p.tol > 0.0 ? p.tol * mean_variance(D) : 0.0;
  std::vector<idx_t> labels(static_cast<std::size_t>(n), -1), old(static_cast<std::size_t>(n), -1);
  std::vector<float> mind(static_cast<std::size_t>(n));
  std::vector<double> sums(static_cast<std::size_t>(k * d)), wsum(static_cast<std::size_t>(k));
  std::vector<float> next(static_cast<std::size_t>(k * d));
  PackedSet cs;
  bool strict = false;
  int it = 0;
  int repaired = 0;
  if (D.metric == Metric::Cosine) {
    for (idx_t c = 0; c < k; ++c) {
      const double nn = std::sqrt(sqnorm(centers.data() + c * d, d));
      if (nn == 0.0) fail("initial centre " + std::to_string(c) + " has zero norm (cosine metric)");
      for (idx_t f = 0; f < d; ++f) centers[c * d + f] = static_cast<float>(centers[c * d + f] / nn);
    }
  }
  for (it = 0; it < p.max_iter; ++it) {
    pack_set(cs, centers.data(), k, d, D.metric, nullptr, D.threads, D.ks);
    assign_pass(cs, D, labels.data(), nullptr, &ranges, ranges, cancel);
    // Reduce ranges in a fixed order.
#pragma omp parallel for num_threads(D.threads) schedule(static)
    for (idx_t c = 0; c < k; ++c) {
      double w = 0.0;
      for (const auto& r : ranges) w += r.w[c];
      wsum[c] = w;
      for (idx_t f = 0; f < d; ++f) {
        double s = 0.0;
        for (const auto& r : ranges) s += r.sums[c * d + f];
        sums[c * d + f] = s;
      }
    }
    // Empty clusters take the rows farthest from their centres (ties: lower index), which are
    // moved out of their old clusters' sums, as scikit-learn does; labels follow at the next
    // assignment.
    std::vector<idx_t> empty;
    for (idx_t c = 0; c < k; ++c)
      if (wsum[c] <= 0.0) empty.push_back(c);
    if (!empty.empty()) {
      // Exact distances of every row to the centre it was assigned to (rare: only here).
#pragma omp parallel for num_threads(D.threads) schedule(static)
      for (idx_t i = 0; i < n; ++i)
        mind[i] = static_cast<float>(std::max(0.0, exact_value(D.metric, D.x + i * d, cs.row(labels[i]), d,
                                                               D.metric == Metric::Cosine ? D.xnorm[i] : 0.0,
                                                               cs.norm[labels[i]])));
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
    centers.swap(next);
    if (labels == old) {
      strict = true;
      ++it;
      break;
    }
    if (shift <= tol_abs) {
      ++it;
      break;
    }
    old = labels;
  }
  if (!strict) {
    // Labels must match the final centres: one more assignment without an update.
    pack_set(cs, centers.data(), k, d, D.metric, nullptr, D.threads, D.ks);
    assign_pass(cs, D, labels.data(), nullptr, nullptr, ranges, cancel);
  }
  res.centers = centers;
  res.labels = std::move(labels);
  res.inertia = objective(D, res.centers.data(), res.labels);
  res.n_iter = std::min(it, p.max_iter);
  res.n_empty_repaired = repaired;
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
    assign_pass(cs, D, lab.data(), md.data(), nullptr, make_ranges(n, t, d), cancel);
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
  assign_pass(cs, D, lab.data(), md.data(), nullptr, make_ranges(n, m, d), cancel);
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
  Data D;
  prepare(D, x, n, d, weights, p.metric, resolve_threads(p.n_threads), p.kernel_set);
  seed_centers(p, D, seed, out_centers, cancel);
}

void kmeans_fit(const KMeansParams& p, const float* x, idx_t n, idx_t d, const float* weights,
                const float* init_centers, KMeansResult& out, Cancel& cancel) {
  validate(p, n, d, weights);
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
  const auto ranges = make_ranges(n, k, d);
  assign_pass(cs, D, labels, dist, nullptr, ranges, cancel);
}

}  // namespace ec
