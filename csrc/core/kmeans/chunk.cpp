// k-means over chunks of rows (see kmeans_chunk.hpp): stats, exact moments, one chunk's pass,
// its farthest rows, and the centre update that kmeans_fit and the chunked fits share.
#include "../kmeans_chunk.hpp"

#include <cstring>
#include <mutex>
#include <numeric>
#include <string>

#include "../tile_driver.hpp"
#include "internal.hpp"

namespace ec {
namespace kmeans_impl {

/// 2^e with n * m * 2^e < 2^bits (1 when m is 0): a fixed-point scale under which n values of
/// magnitude at most m sum to less than 2^bits in any order.
double pow2_scale(idx_t n, double m, int bits) {
  if (!(m > 0.0)) return 1.0;
  int e = 0;
  std::frexp(static_cast<double>(n) * m, &e);  // n * m < 2^e
  return std::ldexp(1.0, std::max(-1000, std::min(1000, bits - e)));
}

/// The centre sums and weights (k * d + k integers mod 2^64) as fp64 values, one rounding each.
void sums_to_double(const std::uint64_t* t, idx_t k, idx_t d, const double* qscale, double wscale,
                    std::vector<double>& sums, std::vector<double>& wsum) {
  sums.resize(static_cast<std::size_t>(k * d));
  wsum.resize(static_cast<std::size_t>(k));
  for (idx_t c = 0; c < k; ++c) {
    for (idx_t f = 0; f < d; ++f)
      sums[c * d + f] = static_cast<double>(static_cast<std::int64_t>(t[c * d + f])) / qscale[f];
    wsum[c] = static_cast<double>(static_cast<std::int64_t>(t[k * d + c])) / wscale;
  }
}

/// Empty clusters take the repair rows in order (each leaves its old cluster's sums), as
/// scikit-learn does; a row of weight zero leaves its cluster empty. Returns clusters repaired.
int apply_repair(Metric m, idx_t d, const std::vector<idx_t>& empty, const float* rx, const float* rw,
                 const idx_t* from_labels, idx_t n_repair, std::vector<double>& sums, std::vector<double>& wsum) {
  int repaired = 0;
  const idx_t ne = std::min<idx_t>(static_cast<idx_t>(empty.size()), n_repair);
  for (idx_t e = 0; e < ne; ++e) {
    const float* row = rx + e * d;
    const idx_t to = empty[e], from = from_labels[e];
    const double wi = rw ? static_cast<double>(rw[e]) : 1.0;
    if (wi <= 0.0) continue;
    const double sc = m == Metric::Cosine ? wi / std::sqrt(sqnorm(row, d)) : wi;
    for (idx_t f = 0; f < d; ++f) {
      const double v = sc * row[f];
      sums[from * d + f] -= v;
      sums[to * d + f] = v;
    }
    wsum[from] -= wi;
    wsum[to] = wi;
    ++repaired;
  }
  return repaired;
}

/// The new centres from the sums (cosine: the sums' directions); a cluster still empty keeps
/// its centre. Returns the total squared shift.
double update_centres(Metric m, idx_t d, const std::vector<float>& centers, const std::vector<double>& sums,
                      const std::vector<double>& wsum, std::vector<float>& next, idx_t k) {
  double shift = 0.0;
  for (idx_t c = 0; c < k; ++c) {
    float* nc = next.data() + c * d;
    if (wsum[c] <= 0.0) {  // still empty (all weights zero): keep the old centre
      std::memcpy(nc, centers.data() + c * d, sizeof(float) * d);
      continue;
    }
    if (m == Metric::Cosine) {
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
  return shift;
}

std::vector<idx_t> empty_clusters(const std::vector<double>& wsum) {
  std::vector<idx_t> empty;
  for (std::size_t c = 0; c < wsum.size(); ++c)
    if (wsum[c] <= 0.0) empty.push_back(static_cast<idx_t>(c));
  return empty;
}

namespace {

/// Scales of the two moments of feature f: n_total values of magnitude absmax (resp. absmax^2)
/// sum to less than 2^120 in any order.
inline double moment_scale(idx_t n_total, double absmax, int power) {
  return pow2_scale(n_total, power == 1 ? absmax : absmax * absmax, 120);
}

}  // namespace

/// Fixed-point sums of s x_f and (s x_f)^2 over the rows (see kmeans_chunk_moments).
void moment_limbs(const Data& D, const double* absmax, idx_t n_total, std::uint64_t* limbs) {
  const idx_t d = D.d;
  std::vector<u128> total(static_cast<std::size_t>(2 * d), 0);
  std::vector<double> s1(static_cast<std::size_t>(d)), s2(static_cast<std::size_t>(d));
  for (idx_t f = 0; f < d; ++f) {
    s1[f] = moment_scale(n_total, absmax[f], 1);
    s2[f] = moment_scale(n_total, absmax[f], 2);
  }
  Cancel no_cancel;
  const idx_t nblocks = (D.n + kRangeUnit - 1) / kRangeUnit;
  for_each_block<std::vector<u128>>(
      D.threads, nblocks, 1, no_cancel, [&](std::vector<u128>& t) { t.assign(static_cast<std::size_t>(2 * d), 0); },
      [&](std::vector<u128>& t, idx_t b, const StopCheck&) {
        for (idx_t i = b * kRangeUnit; i < std::min(D.n, (b + 1) * kRangeUnit); ++i) {
          const double s = D.metric == Metric::Cosine ? 1.0 / D.xnorm[i] : 1.0;
          for (idx_t f = 0; f < d; ++f) {
            const double v = static_cast<double>(D.x[i * d + f]) * s;
            t[2 * f] += fixed(v * s1[f]);
            t[2 * f + 1] += fixed(v * v * s2[f]);
          }
        }
      },
      [&](std::vector<u128>& t) {
        for (std::size_t j = 0; j < total.size(); ++j) total[j] += t[j];
      });
  for (idx_t j = 0; j < 2 * d; ++j)
    to_limbs(total[j], limbs + j * 4);
}

double mean_variance_of(const std::uint64_t* limbs, const double* absmax, idx_t n_total, idx_t d) {
  const double n = static_cast<double>(n_total);
  double s = 0.0;
  for (idx_t f = 0; f < d; ++f) {
    const double mean = from_limbs(limbs + (2 * f) * 4) / moment_scale(n_total, absmax[f], 1) / n;
    const double sq = from_limbs(limbs + (2 * f + 1) * 4) / moment_scale(n_total, absmax[f], 2) / n;
    s += std::max(0.0, sq - mean * mean);
  }
  return s / static_cast<double>(d);
}

/// Fixed-point sum of w_i * exact distance of each row to its labelled centre (4 limbs).
void objective_limbs(const Data& D, const float* centers, const idx_t* labels, double scale, std::uint64_t* limbs) {
  const idx_t d = D.d;
  u128 total = 0;
  Cancel no_cancel;
  const idx_t nblocks = (D.n + kRangeUnit - 1) / kRangeUnit;
  for_each_block<u128>(
      D.threads, nblocks, 1, no_cancel, [](u128& t) { t = 0; },
      [&](u128& t, idx_t b, const StopCheck&) {
        for (idx_t i = b * kRangeUnit; i < std::min(D.n, (b + 1) * kRangeUnit); ++i) {
          const float* c = centers + labels[i] * d;
          const double cnorm = D.metric == Metric::Cosine ? std::sqrt(sqnorm(c, d)) : 0.0;
          const double xn = D.metric == Metric::Cosine ? D.xnorm[i] : 0.0;
          t += fixed(D.weight(i) * std::max(0.0, exact_value(D.metric, D.x + i * d, c, d, xn, cnorm)) * scale);
        }
      },
      [&](u128& t) { total += t; });
  to_limbs(total, limbs);
}

double objective_scale(Metric m, idx_t n_total, const double* absmax, idx_t d, double wmax, const float* centers,
                       idx_t k) {
  double bound = 2.0;  // cosine: 1 - cos <= 2
  if (m == Metric::L2) {
    double xsq = 0.0, csq = 0.0;
    for (idx_t f = 0; f < d; ++f) xsq += absmax[f] * absmax[f];
    for (idx_t c = 0; c < k; ++c) csq = std::max(csq, sqnorm(centers + c * d, d));
    bound = std::pow(std::sqrt(xsq) + std::sqrt(csq), 2.0);
  }
  return pow2_scale(n_total, 2.0 * bound * std::max(wmax, 1e-300), 120);
}

double objective_of(const std::uint64_t* limbs, double scale) { return from_limbs(limbs) / scale; }

/// Initial centres of a run: unit length for cosine.
void start_centres(Metric m, float* centers, idx_t k, idx_t d) {
  if (m != Metric::Cosine) return;
  for (idx_t c = 0; c < k; ++c) {
    const double nn = std::sqrt(sqnorm(centers + c * d, d));
    if (nn == 0.0) fail("initial centre " + std::to_string(c) + " has zero norm (cosine metric)");
    for (idx_t f = 0; f < d; ++f) centers[c * d + f] = static_cast<float>(centers[c * d + f] / nn);
  }
}

}  // namespace kmeans_impl

using kmeans_impl::Data;

namespace {
/// Labels a caller hands back (a chunk's state) must name centres.
void check_labels(const idx_t* labels, idx_t n, idx_t k) {
  for (idx_t i = 0; i < n; ++i)
    if (labels[i] < 0 || labels[i] >= k)
      fail("label " + std::to_string(labels[i]) + " of row " + std::to_string(i) + " is not a centre");
}
}  // namespace

void kmeans_start_centres(Metric m, float* centers, idx_t k, idx_t d) {
  kmeans_impl::start_centres(m, centers, k, d);
}

double kmeans_objective_scale(Metric m, idx_t n_total, const double* absmax, idx_t d, double wmax,
                              const float* centers, idx_t k) {
  return kmeans_impl::objective_scale(m, n_total, absmax, d, wmax, centers, k);
}

void kmeans_chunk_objective(Metric m, const float* centers, idx_t k, const float* x, idx_t n, idx_t d,
                            const float* w, const idx_t* labels, double scale, int threads, std::uint64_t* limbs) {
  check_labels(labels, n, k);
  Data D;
  kmeans_impl::prepare(D, x, n, d, w, m, resolve_threads(threads));
  kmeans_impl::objective_limbs(D, centers, labels, scale, limbs);
}

double kmeans_objective_total(const std::uint64_t* limbs, double scale) { return kmeans_impl::objective_of(limbs, scale); }

void kmeans_chunk_stats(Metric m, const float* x, idx_t n, idx_t d, const float* w, idx_t row_offset, int threads,
                        KMeansChunkStats& out) {
  if (d <= 0) fail("k-means needs at least one feature");
  if (m == Metric::IP) fail("k-means supports metric 'l2' or 'cosine'");
  for (idx_t i = 0; w && i < n; ++i)
    if (!(w[i] >= 0.0f) || !std::isfinite(w[i]))
      fail("sample_weight[" + std::to_string(row_offset + i) + "] should be finite and >= 0");
  Data D;
  try {
    kmeans_impl::prepare(D, x, n, d, w, m, resolve_threads(threads));
  } catch (const std::invalid_argument& e) {
    if (row_offset == 0) throw;
    fail(std::string(e.what()) + " (rows counted from " + std::to_string(row_offset) + ", this chunk's first row)");
  }
  out.n = n;
  out.colmax = D.colmax;
  out.absmax = D.absmax;
  out.wmax = n > 0 ? (w ? D.wmax : 1.0) : 0.0;
}

void kmeans_fixed_scales(idx_t n_total, const double* colmax, idx_t d, double wmax, bool weighted, double* qscale,
                         double* wscale) {
  for (idx_t f = 0; f < d; ++f) qscale[f] = kmeans_impl::pow2_scale(n_total, colmax[f], 61);
  *wscale = weighted ? kmeans_impl::pow2_scale(n_total, wmax, 61) : 1.0;
}

void kmeans_chunk_moments(Metric m, const float* x, idx_t n, idx_t d, const double* absmax, idx_t n_total,
                          int threads, std::uint64_t* limbs) {
  Data D;
  kmeans_impl::prepare(D, x, n, d, nullptr, m, resolve_threads(threads));
  kmeans_impl::moment_limbs(D, absmax, n_total, limbs);
}

double kmeans_mean_variance(const std::uint64_t* limbs, const double* absmax, idx_t n_total, idx_t d) {
  return kmeans_impl::mean_variance_of(limbs, absmax, n_total, d);
}

idx_t kmeans_chunk_pass(Metric m, const float* centers, idx_t k, const float* x, idx_t n, idx_t d, const float* w,
                        const double* qscale, double wscale, bool prune, KMeansChunkState& st, int threads,
                        Cancel& cancel, const KernelSet* kernel_set) {
  if (k <= 0 || d <= 0) fail("kmeans_chunk_pass needs k >= 1 centres and d >= 1 features");
  if (st.valid && (st.k != k || st.d != d || static_cast<idx_t>(st.labels.size()) != n))
    fail("this chunk state belongs to another chunk or fit (" + std::to_string(st.labels.size()) + " rows, k=" +
         std::to_string(st.k) + ", d=" + std::to_string(st.d) + ")");
  Data D;
  const KernelSet* ks = kernel_set ? kernel_set : &kernels_for(KernelFamily::kmeans, d);
  if (st.facts_ks == ks && static_cast<idx_t>(st.xsq.size()) == n) {
    D.bind(x, n, d, w, m, resolve_threads(threads), ks);
    D.xsq.swap(st.xsq);
    D.xnorm.swap(st.xnorm);
    D.xerr.swap(st.xerr);
    D.set_words();
  } else {
    kmeans_impl::prepare(D, x, n, d, w, m, resolve_threads(threads), ks);
  }
  kmeans_impl::Accum acc;
  acc.init(k, d, qscale, wscale, D.threads);
  const bool incremental = prune && st.valid;
  if (!st.valid) {
    st.k = k;
    st.d = d;
    st.labels.assign(static_cast<std::size_t>(n), -1);
    if (prune) {
      st.u.resize(static_cast<std::size_t>(n));
      st.l.resize(static_cast<std::size_t>(n));
      st.lm.resize(static_cast<std::size_t>(n));
      st.tight.assign(static_cast<std::size_t>(n), 0);
    }
  }
  if (incremental) acc.t[0] = st.sums;  // moved rows leave and join clusters from here
  std::vector<float> cvec(centers, centers + k * d);
  PackedSet cs;
  pack_set(cs, cvec.data(), k, d, m, nullptr, D.threads, D.ks);
  kmeans_impl::Prune pr;
  if (prune) {
    pr.force_movers = 0;  // the mobile group needs every chunk's labels; bounds alone prune here
    pr.u.swap(st.u);
    pr.l.swap(st.l);
    pr.lm.swap(st.lm);
    pr.tight.swap(st.tight);
    pr.valid = st.valid;
    if (st.valid) {
      kmeans_impl::centre_shifts(D, st.centers, cvec, k, pr);
      kmeans_impl::centre_half_gaps(cs, D, pr);
    }
  }
  const auto ranges = kmeans_impl::make_ranges(n);
  idx_t changed = 0;
  try {
    changed = kmeans_impl::assign_pass(cs, D, st.labels.data(), nullptr, &acc, !incremental, ranges, cancel,
                                       prune ? &pr : nullptr);
  } catch (...) {
    st.valid = false;  // the labels and bounds may be half updated: the next pass starts afresh
    throw;
  }
  if (prune) {
    pr.u.swap(st.u);
    pr.l.swap(st.l);
    pr.lm.swap(st.lm);
    pr.tight.swap(st.tight);
    st.rows_computed += pr.rows_computed;
  } else {
    st.rows_computed += n;
  }
  st.sums = acc.combined();
  st.centers.swap(cvec);
  st.xsq.swap(D.xsq);
  st.xnorm.swap(D.xnorm);
  st.xerr.swap(D.xerr);
  st.facts_ks = ks;
  st.valid = true;
  return changed;
}

void kmeans_chunk_farthest(Metric m, const float* centers, idx_t k, const float* x, idx_t n, idx_t d,
                           const idx_t* labels, idx_t count, int threads, std::vector<float>& dist,
                           std::vector<idx_t>& rows) {
  check_labels(labels, n, k);
  PackedSet cs;
  pack_set(cs, centers, k, d, m, nullptr, resolve_threads(threads), &kernels_for(KernelFamily::kmeans, d));
  std::vector<float> mind(static_cast<std::size_t>(n));
  parallel_for(resolve_threads(threads), n, [&](idx_t i) {
    const float* row = x + i * d;
    const double xn = m == Metric::Cosine ? std::sqrt(sqnorm(row, d)) : 0.0;
    mind[i] = static_cast<float>(std::max(0.0, exact_value(m, row, cs.row(labels[i]), d, xn, cs.norm[labels[i]])));
  });
  std::vector<idx_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), idx_t{0});
  const auto ne = static_cast<std::size_t>(std::min(std::max<idx_t>(count, 0), n));
  std::partial_sort(order.begin(), order.begin() + ne, order.end(),
                    [&](idx_t a, idx_t b) { return mind[a] != mind[b] ? mind[a] > mind[b] : a < b; });
  rows.assign(order.begin(), order.begin() + ne);
  dist.resize(ne);
  for (std::size_t e = 0; e < ne; ++e) dist[e] = mind[rows[e]];
}

double kmeans_update_centres(Metric m, const float* centers, idx_t k, idx_t d, const std::uint64_t* sums,
                             const double* qscale, double wscale, const float* repair_x, const float* repair_w,
                             const idx_t* repair_labels, idx_t n_repair, float* next, std::vector<idx_t>& empty) {
  std::vector<double> s, wsum;
  kmeans_impl::sums_to_double(sums, k, d, qscale, wscale, s, wsum);
  empty = kmeans_impl::empty_clusters(wsum);
  for (idx_t e = 0; e < n_repair; ++e)
    if (repair_labels[e] < 0 || repair_labels[e] >= k) fail("repair row " + std::to_string(e) + " has no valid label");
  kmeans_impl::apply_repair(m, d, empty, repair_x, repair_w, repair_labels, n_repair, s, wsum);
  std::vector<float> old(centers, centers + k * d), out(static_cast<std::size_t>(k * d));
  const double shift = kmeans_impl::update_centres(m, d, old, s, wsum, out, k);
  std::memcpy(next, out.data(), sizeof(float) * k * d);
  return shift;
}

}  // namespace ec
