// The GPU engine's algorithms, written once over a device policy `Dev`: the CUDA device
// (cuda_device.cu: kernels on a stream, tensor-core tiles) or the host model (model_device.cpp:
// the same logical threads run in loops, the tile products emulate TF32 rounding). Results are
// the CPU engine's bit for bit (see gpu_ops.hpp), which the tests check on the model everywhere
// and on the GPU where one is present.
//
// A Dev provides:
//   template <class T> T* alloc(idx_t n);  void release(void*);        device memory
//   void upload(void* dst, const void* src, std::size_t bytes);       host -> device
//   void download(void* dst, const void* src, std::size_t bytes);     device -> host (waits)
//   void zero(void* dst, std::size_t bytes);
//   template <class F> void each(idx_t n, const F& f);                f(i) for every i < n
//   template <class Epi> void scan(const float* Q, idx_t nq, const float* Y, idx_t ny, idx_t d,
//                                  const Epi& epi, typename Epi::Lane* lanes);
//       for every query row i < nq and lane s < kLanes: epi.begin(lane, i), then
//       epi.visit(lane, i, j, g) for the columns j < ny with j % kLanes == s in ascending order,
//       g ~ Q_i . Y_j (a TF32 product), then the lane is stored at lanes[i * kLanes + s].
//   void sync();
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu_ops.hpp"

namespace ec {
namespace gpu {

/// Bad input: std::invalid_argument (ValueError in Python).
[[noreturn]] inline void fail_value(const std::string& msg) { throw std::invalid_argument(msg); }

/// Device memory owned for a scope.
template <class Dev, class T>
class Buf {
 public:
  Buf(Dev& dev, idx_t n) : dev_(dev), n_(n), p_(n > 0 ? dev.template alloc<T>(n) : nullptr) {}
  ~Buf() {
    if (p_) dev_.release(p_);
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  T* get() const { return p_; }
  idx_t size() const { return n_; }
  void zero() {
    if (p_) dev_.zero(p_, sizeof(T) * static_cast<std::size_t>(n_));
  }
  void upload(const T* src) {
    if (p_) dev_.upload(p_, src, sizeof(T) * static_cast<std::size_t>(n_));
  }
  std::vector<T> host() const {
    std::vector<T> v(static_cast<std::size_t>(n_));
    if (p_) dev_.download(v.data(), p_, sizeof(T) * static_cast<std::size_t>(n_));
    return v;
  }

 private:
  Dev& dev_;
  idx_t n_;
  T* p_;
};

/// Query rows per scan launch: bounds the lane scratch and lets a long call stop between launches.
constexpr idx_t kQueryGroup = 65536;

/// Per-row norms of a row-major float32 matrix: ||x||^2 and ||x|| in fp64 (ec::sqnorm's order).
template <class Dev>
void row_norms(Dev& dev, const float* X, idx_t n, idx_t d, double* xsq, double* xnorm) {
  dev.each(n, [=] EC_HD(idx_t i) {
    const double s = sqnorm(X + i * d, d);
    xsq[i] = s;
    xnorm[i] = sqrt(s);
  });
}

/// Column facts of rows Y: add = float(||y||^2), inv = float(1 / ||y||), sq and norm in fp64;
/// returns max ||y||.
template <class Dev>
double column_facts(Dev& dev, const float* Y, idx_t n, idx_t d, float* add, float* inv, double* sq, double* norm) {
  row_norms(dev, Y, n, d, sq, norm);
  Buf<Dev, std::uint64_t> mx(dev, 1);
  mx.zero();
  std::uint64_t* m = mx.get();
  dev.each(n, [=] EC_HD(idx_t i) {
    add[i] = static_cast<float>(sq[i]);
    inv[i] = norm[i] > 0.0 ? static_cast<float>(1.0 / norm[i]) : 0.0f;
    atomic_max_u64(m, bits_of(norm[i]));
  });
  return double_of(mx.host()[0]);
}

/// Column facts of a set of rows (centres or database rows), on the device.
template <class Dev>
struct Columns {
  Buf<Dev, float> add, inv;
  Buf<Dev, double> sq, norm;
  double max_norm;
  Columns(Dev& dev, const float* Y, idx_t n, idx_t d)
      : add(dev, n), inv(dev, n), sq(dev, n), norm(dev, n),
        max_norm(column_facts(dev, Y, n, d, add.get(), inv.get(), sq.get(), norm.get())) {}
  ColFacts facts() const { return ColFacts{add.get(), inv.get(), norm.get(), max_norm}; }
};

/// The first row (lowest index) whose squared norm is not finite or above the tiles' limit
/// (ec::kMaxSqNorm), or -1; with `zero_too`, rows of norm zero count as well.
template <class Dev>
idx_t first_bad_row(Dev& dev, const double* xsq, idx_t n, bool zero_too) {
  Buf<Dev, std::int64_t> first(dev, 1);
  const std::int64_t none = std::numeric_limits<std::int64_t>::max();
  first.upload(&none);
  std::int64_t* f = first.get();
  dev.each(n, [=] EC_HD(idx_t i) {
    if (!(xsq[i] <= 1e36) || (zero_too && xsq[i] == 0.0)) atomic_min_i64(f, i);
  });
  const std::int64_t r = first.host()[0];
  return r == none ? -1 : r;
}

// ---------------------------------------------------------------------------------------------
// k-means over one device-resident chunk (the ChunkRunner calls of python/embedcluster/_chunked.py).

struct ChunkStatsOut {
  std::vector<double> colmax, absmax;
  double wmax = 0.0;
};

constexpr idx_t kColumnBlock = 256;  // rows per logical thread of the per-feature reductions

/// Maxima of the fixed-point scales (ec::kmeans_chunk_stats) and the row checks; xsq and xnorm
/// receive the norms. Throws std::invalid_argument naming the first bad row (global index).
template <class Dev>
ChunkStatsOut kmeans_stats(Dev& dev, const float* X, idx_t n, idx_t d, const float* w, int metric, idx_t row_offset,
                           double* xsq, double* xnorm) {
  row_norms(dev, X, n, d, xsq, xnorm);
  const idx_t bad = first_bad_row(dev, xsq, n, false);
  if (bad >= 0) {
    std::vector<float> row(static_cast<std::size_t>(d));
    dev.download(row.data(), X + bad * d, sizeof(float) * static_cast<std::size_t>(d));
    idx_t f = 0;
    while (f < d && std::isfinite(row[static_cast<std::size_t>(f)])) ++f;
    if (f < d)
      fail_value("X contains NaN or infinity (first at row " + std::to_string(row_offset + bad) + ", column " +
                 std::to_string(f) + "); remove or impute those values");
    fail_value("data row " + std::to_string(row_offset + bad) +
               " has a norm too large for float32 arithmetic (limit 1e18); rescale the data, e.g. divide by its largest value");
  }
  if (metric == kCosine) {
    const idx_t zero = first_bad_row(dev, xsq, n, true);
    if (zero >= 0)
      fail_value("row " + std::to_string(row_offset + zero) +
                 " has zero norm; spherical (cosine) k-means needs non-zero rows (drop them or use metric='l2')");
  }
  Buf<Dev, std::uint64_t> mx(dev, 2 * d + 1);
  mx.zero();
  std::uint64_t* m = mx.get();
  const bool cosine = metric == kCosine;
  const idx_t nblk = (n + kColumnBlock - 1) / kColumnBlock;
  dev.each(nblk * d, [=] EC_HD(idx_t t) {
    const idx_t f = t % d, b = t / d;
    const idx_t i1 = (b + 1) * kColumnBlock < n ? (b + 1) * kColumnBlock : n;
    double cm = 0.0, am = 0.0, wm = 0.0;
    for (idx_t i = b * kColumnBlock; i < i1; ++i) {
      const double wi = w ? static_cast<double>(w[i]) : 1.0;
      const double unit = cosine ? 1.0 / xnorm[i] : 1.0;
      const double sc = cosine ? wi / xnorm[i] : wi;
      const double v = fabs(static_cast<double>(X[i * d + f]));
      cm = fmax(cm, v * sc);
      am = fmax(am, v * unit);
      wm = fmax(wm, wi);
    }
    atomic_max_u64(m + f, bits_of(cm));
    atomic_max_u64(m + d + f, bits_of(am));
    if (f == 0) atomic_max_u64(m + 2 * d, bits_of(wm));
  });
  const std::vector<std::uint64_t> h = mx.host();
  ChunkStatsOut out;
  out.colmax.resize(static_cast<std::size_t>(d));
  out.absmax.resize(static_cast<std::size_t>(d));
  for (idx_t f = 0; f < d; ++f) {
    out.colmax[static_cast<std::size_t>(f)] = double_of(h[static_cast<std::size_t>(f)]);
    out.absmax[static_cast<std::size_t>(f)] = double_of(h[static_cast<std::size_t>(d + f)]);
  }
  out.wmax = n > 0 ? (w ? double_of(h[static_cast<std::size_t>(2 * d)]) : 1.0) : 0.0;
  return out;
}

/// Fixed-point moments (ec::kmeans_chunk_moments): per feature the sums of s x_f and (s x_f)^2
/// under the scales s1, s2 (host arrays, d each), as 4 limbs each: d * 8 values.
template <class Dev>
std::vector<std::uint64_t> kmeans_moments(Dev& dev, const float* X, idx_t n, idx_t d, int metric, const double* xnorm,
                                          const std::vector<double>& s1, const std::vector<double>& s2) {
  Buf<Dev, double> scales(dev, 2 * d);
  std::vector<double> both(s1);
  both.insert(both.end(), s2.begin(), s2.end());
  scales.upload(both.data());
  Buf<Dev, std::uint64_t> limbs(dev, 8 * d);
  limbs.zero();
  std::uint64_t* L = limbs.get();
  const double* sc = scales.get();
  const bool cosine = metric == kCosine;
  const idx_t nblk = (n + kColumnBlock - 1) / kColumnBlock;
  dev.each(nblk * d, [=] EC_HD(idx_t t) {
    const idx_t f = t % d, b = t / d;
    const idx_t i1 = (b + 1) * kColumnBlock < n ? (b + 1) * kColumnBlock : n;
    std::uint64_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (idx_t i = b * kColumnBlock; i < i1; ++i) {
      const double s = cosine ? 1.0 / xnorm[i] : 1.0;
      const double v = static_cast<double>(X[i * d + f]) * s;
      add_fixed128(v * sc[f], a);
      add_fixed128(v * v * sc[d + f], a + 4);
    }
    for (int l = 0; l < 8; ++l) atomic_add_u64(L + 8 * f + l, a[l]);
  });
  return limbs.host();
}

/// Epilogue of the assignment: nearest centre with its band.
struct ArgminEpi {
  using Lane = ArgminLane;
  int metric;
  ColFacts c;
  const float* band2;  // per row: 2B
  EC_HD void begin(Lane& l, idx_t) const { l.init(); }
  EC_HD void visit(Lane& l, idx_t i, idx_t j, float g) const {
    l.visit(tile_value(metric, c, j, g), static_cast<std::int32_t>(j), band2[i]);
  }
};

/// The exact nearest centre of row x among the lanes' candidates (all k centres when a lane
/// ran out of room): lower index on ties, as the CPU engine decides.
EC_HD inline idx_t finish_argmin(const ArgminLane* lanes, float band2, int metric, const float* x, const float* C,
                                 idx_t k, idx_t d, double xnorm, const double* cnorm) {
  float best = FLT_MAX;
  for (int s = 0; s < kLanes; ++s) best = fminf(best, lanes[s].best);
  const float thr = best + band2;
  bool overflow = false;
  int count = 0;
  std::int32_t only = -1;
  for (int s = 0; s < kLanes; ++s) {
    if (lanes[s].dropped <= thr) overflow = true;
    for (int t = 0; t < lanes[s].count; ++t)
      if (lanes[s].v[t] <= thr) {
        ++count;
        only = lanes[s].j[t];
      }
  }
  if (!overflow && count == 1) return only;
  double bv = 0.0;
  idx_t bj = -1;
  auto consider = [&](idx_t j) {
    const double e = exact_value(metric, x, C + j * d, d, xnorm, cnorm[j]);
    if (bj < 0 || e < bv || (e == bv && j < bj)) {
      bv = e;
      bj = j;
    }
  };
  if (overflow) {
    for (idx_t j = 0; j < k; ++j) consider(j);
  } else {
    for (int s = 0; s < kLanes; ++s)
      for (int t = 0; t < lanes[s].count; ++t)
        if (lanes[s].v[t] <= thr) consider(lanes[s].j[t]);
  }
  return bj;
}

/// What a chunk keeps between passes on the device (memory owned by the caller): its norms
/// (from kmeans_stats) and labels.
struct ChunkState {
  idx_t n = 0, d = 0;
  double* xsq = nullptr;
  double* xnorm = nullptr;
  std::int64_t* labels = nullptr;
  bool normed = false;  ///< xsq and xnorm hold the rows' norms
  bool valid = false;   ///< labels hold a pass's results
};

/// Centres on the device with their facts.
template <class Dev>
struct Centres {
  Buf<Dev, float> rows;
  Columns<Dev> cols;
  Centres(Dev& dev, const float* host_centres, idx_t k, idx_t d)
      : rows(dev, k * d), cols((rows.upload(host_centres), dev), rows.get(), k, d) {}
};

/// Per-row 2B (or B) of the query rows against columns with max norm `max_norm`.
template <class Dev>
void bands(Dev& dev, int metric, const double* xsq, idx_t n, idx_t d, double max_norm, float factor, float* out) {
  dev.each(n, [=] EC_HD(idx_t i) { out[i] = factor * row_band(metric, xsq[i], d, max_norm); });
}

/// One assignment pass (ec::kmeans_chunk_pass without pruning, which never changes results):
/// new labels in st, the number changed, and the fixed-point sums (k * d, then k weights).
template <class Dev>
idx_t kmeans_pass(Dev& dev, ChunkState& st, const float* X, const float* w, const float* host_centres, idx_t k,
                  const double* qscale_host, double wscale, int metric, std::vector<std::uint64_t>& sums_out) {
  const idx_t n = st.n, d = st.d;
  if (!st.normed) {
    row_norms(dev, X, n, d, st.xsq, st.xnorm);
    st.normed = true;
  }
  Centres<Dev> cs(dev, host_centres, k, d);
  Buf<Dev, float> band2(dev, n);
  bands(dev, metric, st.xsq, n, d, cs.cols.max_norm, 2.0f, band2.get());
  const ArgminEpi epi{metric, cs.cols.facts(), band2.get()};
  Buf<Dev, std::uint64_t> changed(dev, 1);
  changed.zero();
  std::uint64_t* ch = changed.get();
  std::int64_t* lab = st.labels;
  const bool first = !st.valid;
  const float* C = cs.rows.get();
  const double* cnorm = cs.cols.norm.get();
  const double* xn = st.xnorm;
  const float* b2 = band2.get();
  Buf<Dev, ArgminLane> lanes(dev, std::min(n, kQueryGroup) * kLanes);
  ArgminLane* L = lanes.get();
  for (idx_t g0 = 0; g0 < n; g0 += kQueryGroup) {
    const idx_t gn = std::min(kQueryGroup, n - g0);
    const float* Xg = X + g0 * d;
    const ArgminEpi ge{metric, epi.c, b2 + g0};
    dev.scan(Xg, gn, C, k, d, ge, L);
    dev.each(gn, [=] EC_HD(idx_t r) {
      const idx_t i = g0 + r;
      const idx_t j = finish_argmin(L + r * kLanes, b2[i], metric, X + i * d, C, k, d, xn[i], cnorm);
      if (first || lab[i] != j) atomic_add_u64(ch, 1);
      lab[i] = j;
    });
  }
  st.valid = true;
  // Fixed-point sums: every (row, feature) adds into its cluster's sum.
  Buf<Dev, double> qs(dev, d);
  qs.upload(qscale_host);
  Buf<Dev, std::uint64_t> sums(dev, k * d + k);
  sums.zero();
  std::uint64_t* S = sums.get();
  const double* q = qs.get();
  const bool cosine = metric == kCosine;
  constexpr idx_t kRowsPer = 32;
  const idx_t nblk = (n + kRowsPer - 1) / kRowsPer;
  dev.each(nblk * d, [=] EC_HD(idx_t t) {
    const idx_t f = t % d, b = t / d;
    const idx_t i1 = (b + 1) * kRowsPer < n ? (b + 1) * kRowsPer : n;
    for (idx_t i = b * kRowsPer; i < i1; ++i) {
      const double wi = w ? static_cast<double>(w[i]) : 1.0;
      const double sc = cosine ? wi / xn[i] : wi;
      atomic_add_u64(S + lab[i] * d + f, fixed64(X[i * d + f], sc, q[f]));
    }
  });
  dev.each(n, [=] EC_HD(idx_t i) {
    const std::uint64_t wq = w ? static_cast<std::uint64_t>(llrint(static_cast<double>(w[i]) * wscale)) : 1;
    atomic_add_u64(S + k * d + lab[i], wq);
  });
  sums_out = sums.host();
  return static_cast<idx_t>(changed.host()[0]);
}

/// Exact distance (float32 of max(0, fp64 value)) of every row to its labelled centre.
template <class Dev>
std::vector<float> kmeans_label_distances(Dev& dev, const ChunkState& st, const float* X, const float* host_centres,
                                          idx_t k, int metric) {
  const idx_t n = st.n, d = st.d;
  Centres<Dev> cs(dev, host_centres, k, d);
  Buf<Dev, float> dist(dev, n);
  float* out = dist.get();
  const std::int64_t* lab = st.labels;
  const float* C = cs.rows.get();
  const double* cnorm = cs.cols.norm.get();
  const double* xn = st.xnorm;
  dev.each(n, [=] EC_HD(idx_t i) {
    const double e = exact_value(metric, X + i * d, C + lab[i] * d, d, metric == kCosine ? xn[i] : 0.0, cnorm[lab[i]]);
    out[i] = static_cast<float>(e > 0.0 ? e : 0.0);
  });
  return dist.host();
}

/// The chunk's objective in fixed point (ec::kmeans_chunk_objective): 4 limbs.
template <class Dev>
std::vector<std::uint64_t> kmeans_objective(Dev& dev, const ChunkState& st, const float* X, const float* w,
                                            const float* host_centres, idx_t k, double scale, int metric) {
  const idx_t n = st.n, d = st.d;
  Centres<Dev> cs(dev, host_centres, k, d);
  Buf<Dev, std::uint64_t> limbs(dev, 4);
  limbs.zero();
  std::uint64_t* L = limbs.get();
  const std::int64_t* lab = st.labels;
  const float* C = cs.rows.get();
  const double* cnorm = cs.cols.norm.get();
  const double* xn = st.xnorm;
  constexpr idx_t kRowsPer = 64;
  dev.each((n + kRowsPer - 1) / kRowsPer, [=] EC_HD(idx_t b) {
    const idx_t i1 = (b + 1) * kRowsPer < n ? (b + 1) * kRowsPer : n;
    std::uint64_t a[4] = {0, 0, 0, 0};
    for (idx_t i = b * kRowsPer; i < i1; ++i) {
      const double e = exact_value(metric, X + i * d, C + lab[i] * d, d, metric == kCosine ? xn[i] : 0.0, cnorm[lab[i]]);
      const double wi = w ? static_cast<double>(w[i]) : 1.0;
      add_fixed128(wi * (e > 0.0 ? e : 0.0) * scale, a);
    }
    for (int l = 0; l < 4; ++l) atomic_add_u64(L + l, a[l]);
  });
  return limbs.host();
}

// ---------------------------------------------------------------------------------------------
// Exact k nearest neighbours.

/// Largest k the device search takes (each lane keeps up to TopLane::kCap values).
constexpr int kMaxGpuK = TopLane::kCap - 8;

struct TopEpi {
  using Lane = TopLane;
  int metric;
  ColFacts c;
  int cap;
  bool exclude_self;
  idx_t row0;  // global index of the group's first query (exclude_self)
  EC_HD void begin(Lane& l, idx_t) const { l.init(); }
  EC_HD void visit(Lane& l, idx_t i, idx_t j, float g) const {
    if (exclude_self && row0 + i == j) return;
    l.visit(tile_value(metric, c, j, g), static_cast<std::int32_t>(j), cap);
  }
};

/// Inserts (e, j) into the ascending list of at most k (value, index) pairs.
EC_HD inline void insert_exact(double* ev, std::int64_t* ej, int& cnt, int k, double e, std::int64_t j) {
  if (cnt == k && !(e < ev[k - 1] || (e == ev[k - 1] && j < ej[k - 1]))) return;
  int t = cnt < k ? cnt++ : k - 1;
  while (t > 0 && (ev[t - 1] > e || (ev[t - 1] == e && ej[t - 1] > j))) {
    ev[t] = ev[t - 1];
    ej[t] = ej[t - 1];
    --t;
  }
  ev[t] = e;
  ej[t] = j;
}

EC_HD inline float reported(int metric, double v) { return static_cast<float>(metric == kIP ? -v : v); }

/// A query's k best from its lanes (exact re-check of the band), or false when a lane ran out
/// of room inside the band (then the row is searched exhaustively).
EC_HD inline bool finish_top(const TopLane* lanes, int k, float band2, int metric, const float* x, double xnorm,
                             const float* Y, idx_t d, const double* ynorm, float* out_d, std::int64_t* out_i) {
  // The k-th best tile value over the lanes' lists (each holds its lane's best `cap`).
  int pos[kLanes];
  for (int s = 0; s < kLanes; ++s) pos[s] = 0;
  float kth = FLT_MAX;
  for (int r = 0; r < k; ++r) {
    int bs = -1;
    for (int s = 0; s < kLanes; ++s)
      if (pos[s] < lanes[s].count && (bs < 0 || lanes[s].v[pos[s]] < lanes[bs].v[pos[bs]])) bs = s;
    if (bs < 0) break;
    kth = lanes[bs].v[pos[bs]++];
  }
  const float thr = kth + band2;
  for (int s = 0; s < kLanes; ++s)
    if (lanes[s].dropped <= thr) return false;
  double ev[kMaxGpuK];
  std::int64_t ej[kMaxGpuK];
  int cnt = 0;
  for (int s = 0; s < kLanes; ++s)
    for (int t = 0; t < lanes[s].count && lanes[s].v[t] <= thr; ++t) {
      const std::int64_t j = lanes[s].j[t];
      insert_exact(ev, ej, cnt, k, exact_value(metric, x, Y + j * d, d, xnorm, ynorm[j]), j);
    }
  for (int t = 0; t < k; ++t) {
    out_d[t] = t < cnt ? reported(metric, ev[t]) : FLT_MAX;
    out_i[t] = t < cnt ? ej[t] : -1;
  }
  return true;
}

/// k nearest rows of Y for every row of Q (exact; ties to the lower index): out_d / out_i are
/// device arrays of nq * k. `self` means Q is Y and query i never returns row i.
template <class Dev>
void knn_search(Dev& dev, const float* Y, idx_t ny, const float* Q, idx_t nq, idx_t d, int k, int metric, bool self,
                float* out_d, std::int64_t* out_i) {
  if (k < 1 || k > kMaxGpuK) fail_value("the GPU search takes 1 <= k <= " + std::to_string(kMaxGpuK));
  if (k > ny - (self ? 1 : 0)) fail_value("k=" + std::to_string(k) + " is more than the database rows available");
  Columns<Dev> cols(dev, Y, ny, d);
  Buf<Dev, double> qsq(dev, nq), qn(dev, nq);
  row_norms(dev, Q, nq, d, qsq.get(), qn.get());
  const bool cosine = metric == kCosine;
  const idx_t bad_y = first_bad_row(dev, cols.sq.get(), ny, cosine), bad_q = first_bad_row(dev, qsq.get(), nq, cosine);
  if (bad_y >= 0 || bad_q >= 0)
    fail_value(std::string(bad_y >= 0 ? "database" : "query") + " row " + std::to_string(bad_y >= 0 ? bad_y : bad_q) +
               " is not finite, too large for float32 arithmetic" + (cosine ? ", or of zero norm (cosine)" : ""));
  Buf<Dev, float> band2(dev, nq);
  bands(dev, metric, qsq.get(), nq, d, metric == kCosine ? 1.0 : cols.max_norm, 2.0f, band2.get());
  // Lanes keep their full capacity: a band wider than the k-th gap (large norms) then still fits.
  const int cap = TopLane::kCap;
  Buf<Dev, TopLane> lanes(dev, std::min(nq, kQueryGroup) * kLanes);
  Buf<Dev, std::int32_t> overflow(dev, std::min(nq, kQueryGroup));
  TopLane* L = lanes.get();
  std::int32_t* ov = overflow.get();
  const double* qnorm = qn.get();
  const double* ynorm = cols.norm.get();
  const float* b2 = band2.get();
  for (idx_t g0 = 0; g0 < nq; g0 += kQueryGroup) {
    const idx_t gn = std::min(kQueryGroup, nq - g0);
    const TopEpi epi{metric, cols.facts(), cap, self, g0};
    dev.scan(Q + g0 * d, gn, Y, ny, d, epi, L);
    dev.each(gn, [=] EC_HD(idx_t r) {
      const idx_t i = g0 + r;
      ov[r] = finish_top(L + r * kLanes, k, b2[i], metric, Q + i * d, qnorm[i], Y, d, ynorm, out_d + i * k,
                         out_i + i * k)
                  ? 0
                  : 1;
    });
    // Rows whose band held more than a lane keeps: exhaustive exact search (rare: many ties).
    dev.each(gn, [=] EC_HD(idx_t r) {
      if (!ov[r]) return;
      const idx_t i = g0 + r;
      double ev[kMaxGpuK];
      std::int64_t ej[kMaxGpuK];
      int cnt = 0;
      for (idx_t j = 0; j < ny; ++j) {
        if (self && j == i) continue;
        insert_exact(ev, ej, cnt, k, exact_value(metric, Q + i * d, Y + j * d, d, qnorm[i], ynorm[j]), j);
      }
      for (int t = 0; t < k; ++t) {
        out_d[i * k + t] = reported(metric, ev[t]);
        out_i[i * k + t] = ej[t];
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// DBSCAN: neighbour counts, then core-core unions and border points' nearest core, over the
// full tiles (no coarse partition yet).

struct PairRule {
  int metric;
  ColFacts c;
  const float* X;
  idx_t d;
  const double* xsq;
  const double* xnorm;
  const float* band;  // per row: B
  double eps_metric;  // eps^2 (L2) or eps (cosine)
  /// Whether rows i and j are neighbours; `exact` receives the fp64 value when it was computed.
  EC_HD bool neighbours(idx_t i, idx_t j, float g, double& exact) const {
    const float v = tile_value(metric, c, j, g);
    const double thr = metric == kCosine ? -(1.0 - eps_metric) * xnorm[i] : eps_metric - xsq[i];
    const float b = band[i];
    exact = -1.0;
    if (v > static_cast<float>(thr) + b) return false;
    if (v < static_cast<float>(thr) - b) return true;
    exact = exact_value(metric, X + i * d, X + j * d, d, xnorm[i], xnorm[j]);
    return exact <= eps_metric;
  }
};

struct CountLane {
  std::int64_t count;
};
struct CountEpi {
  using Lane = CountLane;
  PairRule rule;
  idx_t row0;
  EC_HD void begin(Lane& l, idx_t) const { l.count = 0; }
  EC_HD void visit(Lane& l, idx_t r, idx_t j, float g) const {
    double e;
    if (rule.neighbours(row0 + r, j, g, e)) ++l.count;
  }
};

struct JoinLane {
  std::uint64_t key;
};
struct JoinEpi {
  using Lane = JoinLane;
  PairRule rule;
  idx_t row0;
  const std::uint8_t* core;
  std::int32_t* parent;
  EC_HD void begin(Lane& l, idx_t) const { l.key = kNoBorder; }
  EC_HD void visit(Lane& l, idx_t r, idx_t j, float g) const {
    const idx_t i = row0 + r;
    if (!core[j]) return;  // only core neighbours join or attract
    if (core[i] && j >= i) return;  // each core pair once
    double e;
    if (!rule.neighbours(i, j, g, e)) return;
    if (core[i]) {
      uf_unite(parent, static_cast<std::int32_t>(i), static_cast<std::int32_t>(j));
      return;
    }
    if (e < 0.0) e = exact_value(rule.metric, rule.X + i * rule.d, rule.X + j * rule.d, rule.d, rule.xnorm[i], rule.xnorm[j]);
    const std::uint64_t key = border_key(e, j);
    if (key < l.key) l.key = key;
  }
};

struct DbscanOut {
  std::vector<std::int64_t> labels, counts;
  std::vector<std::uint8_t> is_core;
  std::int64_t n_clusters = 0;
};

/// DBSCAN (ec::dbscan_fit's results: clusters numbered by their lowest core row, border points
/// with their nearest core point by float32 distance then row, noise -1). `stop` is called
/// between launches (it throws to stop).
template <class Dev>
DbscanOut dbscan(Dev& dev, const float* X, idx_t n, idx_t d, double eps, int min_samples, int metric,
                 const std::function<void()>& stop) {
  if (n >= (idx_t{1} << 31)) fail_value("DBSCAN supports up to 2^31 - 1 rows per call");
  Columns<Dev> cols(dev, X, n, d);
  const idx_t bad = first_bad_row(dev, cols.sq.get(), n, metric == kCosine);
  if (bad >= 0) fail_value("row " + std::to_string(bad) + " is not finite, too large, or (cosine) zero");
  Buf<Dev, float> band(dev, n);
  bands(dev, metric, cols.sq.get(), n, d, metric == kCosine ? 1.0 : cols.max_norm, 1.0f, band.get());
  const PairRule rule{metric, cols.facts(), X, d, cols.sq.get(), cols.norm.get(), band.get(),
                      metric == kCosine ? eps : eps * eps};
  Buf<Dev, std::int64_t> counts(dev, n);
  Buf<Dev, std::uint8_t> core(dev, n);
  Buf<Dev, std::int32_t> parent(dev, n);
  Buf<Dev, std::uint64_t> nearest(dev, n);
  std::int64_t* cnt = counts.get();
  std::uint8_t* cr = core.get();
  std::int32_t* par = parent.get();
  std::uint64_t* near = nearest.get();
  {
    Buf<Dev, CountLane> lanes(dev, std::min(n, kQueryGroup) * kLanes);
    CountLane* L = lanes.get();
    for (idx_t g0 = 0; g0 < n; g0 += kQueryGroup) {
      const idx_t gn = std::min(kQueryGroup, n - g0);
      dev.scan(X + g0 * d, gn, X, n, d, CountEpi{rule, g0}, L);
      dev.each(gn, [=] EC_HD(idx_t r) {
        std::int64_t c = 0;
        for (int s = 0; s < kLanes; ++s) c += L[r * kLanes + s].count;
        cnt[g0 + r] = c;
        cr[g0 + r] = c >= min_samples ? 1 : 0;
        par[g0 + r] = static_cast<std::int32_t>(g0 + r);
      });
      stop();
    }
  }
  {
    Buf<Dev, JoinLane> lanes(dev, std::min(n, kQueryGroup) * kLanes);
    JoinLane* L = lanes.get();
    for (idx_t g0 = 0; g0 < n; g0 += kQueryGroup) {
      const idx_t gn = std::min(kQueryGroup, n - g0);
      dev.scan(X + g0 * d, gn, X, n, d, JoinEpi{rule, g0, cr, par}, L);
      dev.each(gn, [=] EC_HD(idx_t r) {
        std::uint64_t key = kNoBorder;
        for (int s = 0; s < kLanes; ++s) key = L[r * kLanes + s].key < key ? L[r * kLanes + s].key : key;
        near[g0 + r] = key;
      });
      stop();
    }
  }
  dev.each(n, [=] EC_HD(idx_t i) {
    if (cr[i]) par[i] = uf_find(par, static_cast<std::int32_t>(i));
  });
  DbscanOut out;
  out.counts = counts.host();
  out.is_core = core.host();
  const std::vector<std::int32_t> root = parent.host();
  const std::vector<std::uint64_t> key = nearest.host();
  out.labels.assign(static_cast<std::size_t>(n), -1);
  std::vector<std::int64_t> root_label(static_cast<std::size_t>(n), -1);
  std::int64_t next = 0;
  for (idx_t i = 0; i < n; ++i) {
    if (!out.is_core[static_cast<std::size_t>(i)]) continue;
    const auto r = static_cast<std::size_t>(root[static_cast<std::size_t>(i)]);
    if (root_label[r] < 0) root_label[r] = next++;
    out.labels[static_cast<std::size_t>(i)] = root_label[r];
  }
  for (idx_t i = 0; i < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    if (out.is_core[u] || key[u] == kNoBorder) continue;
    out.labels[u] = out.labels[static_cast<std::size_t>(key[u] & 0xFFFFFFFFull)];
  }
  out.n_clusters = next;
  return out;
}

}  // namespace gpu
}  // namespace ec
