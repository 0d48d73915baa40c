// What k-means knows about its rows: norms, rounding errors, fixed-point scales, work ranges, variance and objective.
#include "internal.hpp"
#include "../kmeans_chunk.hpp"
#include "../tile_driver.hpp"

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

namespace {

/// What one thread's rows of prepare's scan found: the fixed-point maxima, the largest weight,
/// the first zero row (cosine) and the first row that is not finite. Maxima and minima do not
/// depend on the order in which the threads' findings are merged.
struct RowFindings {
  std::vector<double> colmax, absmax;
  double wmax = 0.0;
  idx_t zero_row = -1, bad_row = -1;

  static void first(idx_t& slot, idx_t i) { slot = slot < 0 ? i : std::min(slot, i); }
  void merge_into(Data& D, idx_t& zero, idx_t& bad) const {
    D.wmax = std::max(D.wmax, wmax);
    for (std::size_t f = 0; f < colmax.size(); ++f) {
      D.colmax[f] = std::max(D.colmax[f], colmax[f]);
      D.absmax[f] = std::max(D.absmax[f], absmax[f]);
    }
    if (zero_row >= 0) first(zero, zero_row);
    if (bad_row >= 0) first(bad, bad_row);
  }
};

/// Row i's norm, rounding error and contribution to the fixed-point maxima.
void scan_row(Data& D, idx_t i, RowFindings& found) {
  const idx_t d = D.d;
  const float* row = D.x + i * d;
  const double sq = sqnorm(row, d);
  D.xsq[i] = sq;
  if (!std::isfinite(sq)) {
    RowFindings::first(found.bad_row, i);
    return;
  }
  if (D.metric == Metric::Cosine) {
    D.xnorm[i] = std::sqrt(sq);
    if (sq == 0.0) {
      RowFindings::first(found.zero_row, i);
      return;
    }
  }
  if (!D.xerr.empty()) D.xerr[i] = static_cast<float>(input_error(*D.ks, row, d) * (1.0 + 1e-6));
  const double wi = D.weight(i);
  found.wmax = std::max(found.wmax, wi);
  const double unit = D.metric == Metric::Cosine ? 1.0 / D.xnorm[i] : 1.0;
  const double sc = D.metric == Metric::Cosine ? wi / D.xnorm[i] : wi;
  for (idx_t f = 0; f < d; ++f) {
    const double v = std::abs(static_cast<double>(row[f]));
    found.colmax[f] = std::max(found.colmax[f], v * sc);
    found.absmax[f] = std::max(found.absmax[f], v * unit);
  }
}

constexpr idx_t kScanBlock = 1024;  // rows per block of prepare's scan

}  // namespace

void prepare(Data& D, const float* x, idx_t n, idx_t d, const float* w, Metric m, int threads,
             const KernelSet* ks) {
  D.bind(x, n, d, w, m, threads, ks);
  D.xsq.resize(static_cast<std::size_t>(n));
  if (m == Metric::Cosine) D.xnorm.resize(static_cast<std::size_t>(n));
  D.xerr.assign(D.ks->input_rel > 0.0 ? static_cast<std::size_t>(n) : 0, 0.0f);
  D.colmax.assign(static_cast<std::size_t>(d), 0.0);
  D.absmax.assign(static_cast<std::size_t>(d), 0.0);
  D.wmax = 0.0;
  idx_t zero_row = -1, bad_row = -1;
  // One pass over the data: norms, rounding errors, the fixed-point maxima, and the finiteness
  // check (a float32 row has a finite squared norm in fp64 exactly when all its values are finite).
  Cancel no_cancel;  // one read of the rows: not worth polling
  for_each_block<RowFindings>(
      threads, (n + kScanBlock - 1) / kScanBlock, 1, no_cancel,
      [d](RowFindings& found) {
        found.colmax.assign(static_cast<std::size_t>(d), 0.0);
        found.absmax.assign(static_cast<std::size_t>(d), 0.0);
      },
      [&](RowFindings& found, idx_t blk, const StopCheck&) {
        for (idx_t i = blk * kScanBlock; i < std::min(n, (blk + 1) * kScanBlock); ++i) scan_row(D, i, found);
      },
      [&](RowFindings& found) { found.merge_into(D, zero_row, bad_row); });
  if (bad_row >= 0) {
    idx_t f = 0;
    while (f < d && std::isfinite(x[bad_row * d + f])) ++f;
    fail("X contains NaN or infinity (first at row " + std::to_string(bad_row) + ", column " + std::to_string(f) +
         "); remove or impute those values");
  }
  check_sqnorms(D.xsq, "data");
  D.set_words();
  if (zero_row >= 0)
    fail("row " + std::to_string(zero_row) +
         " has zero norm; spherical (cosine) k-means needs non-zero rows (drop them or use metric='l2')");
}

double mean_variance(const Data& D) {
  const std::vector<double>& absmax = D.absmax;
  std::vector<std::uint64_t> limbs(static_cast<std::size_t>(D.d * kMomentLimbs));
  moment_limbs(D, absmax.data(), D.n, limbs.data());
  return mean_variance_of(limbs.data(), absmax.data(), D.n, D.d);
}

/// Exact objective of `labels` against `centers`.
double objective(const Data& D, const float* centers, idx_t k, const std::vector<idx_t>& labels) {
  const std::vector<double>& absmax = D.absmax;
  const double scale = objective_scale(D.metric, D.n, absmax.data(), D.d, D.wmax, centers, k);
  std::uint64_t limbs[4];
  objective_limbs(D, centers, labels.data(), scale, limbs);
  return objective_of(limbs, scale);
}

}  // namespace kmeans_impl
}  // namespace ec
