// What k-means knows about its rows: norms, rounding errors, fixed-point scales, work ranges, variance and objective.
#include "internal.hpp"

namespace ec {
namespace kmeans_impl {
std::vector<Range> make_ranges(idx_t n) {
  const idx_t nr = std::max<idx_t>(1, std::min<idx_t>(kMaxRanges, n / kRangeUnit));
  std::vector<Range> rs(static_cast<std::size_t>(nr));
  for (idx_t r = 0; r < nr; ++r) {
    rs[r].r0 = n * r / nr;
    rs[r].r1 = n * (r + 1) / nr;
  }
  return rs;
}

void prepare(Data& D, const float* x, idx_t n, idx_t d, const float* w, Metric m, int threads,
             const KernelSet* ks) {
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

}  // namespace kmeans_impl
}  // namespace ec
