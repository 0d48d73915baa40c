// The parts of k-means that its rooms share (internal to csrc/core/kmeans): the prepared data,
// work ranges, fixed-point centre sums, pruning bounds, and the functions one room calls in another.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../engine.hpp"
#include "../tile_driver.hpp"
#include "../kmeans.hpp"

namespace ec {
namespace kmeans_impl {

// Rows per work range (at least): small enough that a few thousand rows (a label-free selection's
// sets, its subsamples) still split across the cores; the fixed-point sums make the split invisible.
constexpr idx_t kRangeUnit = 256;
constexpr int kMaxRanges = 64;              // ranges at most (load balance for many threads)

/// Query rows per tile for k centres: the tile of products (rows x k) stays within ~256 KiB.
inline idx_t rows_per_tile(idx_t k_pad) {
  idx_t r = (256 * 1024 / 4) / k_pad;
  r = r / 12 * 12;
  return std::max<idx_t>(12, std::min<idx_t>(144, r));
}

/// Rows [r0, r1): one unit of parallel work of a pass.
struct Range {
  idx_t r0, r1;
};

/// The rows of a fit and what every pass needs about them (prepare fills it).
struct Data {
  const float* x;
  idx_t n, d;
  const float* w;             // may be null
  std::vector<double> xsq;    // ||x_i||^2
  std::vector<double> xnorm;  // ||x_i|| (cosine)
  std::vector<float> xerr;    // bf16 kernels: each row's rounding error (input_error), else empty
  // x itself for fp32 sets with KernelSet::gemm_rows (gathered rows need no packing); null:
  // pack them. (A bf16 copy for bf16 sets cost more to write than the packing it saved:
  // 200k x 384 k=256, 0.68 s -> 0.76 s.)
  const float* words = nullptr;
  /// Points the fit at its rows (no per-row work: prepare or a chunk's kept facts do that).
  void bind(const float* rows, idx_t nrows, idx_t dims, const float* weights, Metric m, int nthreads,
            const KernelSet* set) {
    ks = set ? set : &kernels_for(KernelFamily::kmeans, dims);
    x = rows;
    n = nrows;
    d = dims;
    w = weights;
    metric = m;
    threads = nthreads;
  }
  /// words for the rows x: themselves where the kernel set multiplies float32 rows in place.
  void set_words() { words = ks->gemm_rows && ks->per_word == 1 ? x : nullptr; }
  std::vector<double> colmax;  // per feature: max_i |x_if| * row scale (Accum's fixed-point scales)
  std::vector<double> absmax;  // per feature: max_i |x_if| * (1, or 1 / ||x_i|| for cosine): moments, objective
  double wmax = 0.0;           // max_i w_i
  Metric metric;
  int threads;
  const KernelSet* ks;        // the tile kernels for this fit
  double weight(idx_t i) const { return w ? static_cast<double>(w[i]) : 1.0; }
};

/// Centre sums in fixed point. Row i adds q_if = round(w_i' x_if * qscale_f) to its cluster's
/// sum (w_i' = w_i, or w_i / ||x_i|| for cosine), qscale_f = 2^e_f chosen so that
/// n * max_i |w_i' x_if| * qscale_f < 2^61: every partial sum, in any order, fits in an int64,
/// and the rounding error of a sum is at most n * 2^-62 * max |w' x_f| (far below the float32
/// rounding of the final centres). Weights are accumulated the same way (counts when
/// unweighted). Each thread owns its accumulators (mod 2^64); their sum is exact.
/// 2^e with n * m * 2^e < 2^bits (1 when m is 0): a fixed-point scale under which n values of
/// magnitude at most m sum to less than 2^bits in any order (chunk.cpp).
double pow2_scale(idx_t n, double m, int bits);

using u128 = unsigned __int128;

/// A rounded fixed-point value as a 128-bit two's complement integer (sums of these wrap
/// mod 2^128, so they are exact in any order while the true sum fits in 127 bits).
inline u128 fixed(double v) {
  const double r = std::nearbyint(v);
  return r < 0.0 ? static_cast<u128>(0) - static_cast<u128>(static_cast<__int128>(-r))
                 : static_cast<u128>(static_cast<__int128>(r));
}

/// A 128-bit sum as four 32-bit limbs, one per uint64, so that limbs of up to 2^32 chunks add
/// without overflow.
inline void to_limbs(u128 t, std::uint64_t* limbs) {
  for (int l = 0; l < 4; ++l) limbs[l] = static_cast<std::uint64_t>((t >> (32 * l)) & 0xffffffffu);
}

/// The signed value of a 128-bit sum given as four 32-bit limbs (each possibly carrying).
inline double from_limbs(const std::uint64_t* l) {
  u128 t = 0;
  for (int j = 3; j >= 0; --j) t = (t << 32) + static_cast<u128>(l[j]);
  return static_cast<double>(static_cast<__int128>(t));
}

/// The centre sums and weights (k * d + k integers mod 2^64) as fp64 values, one rounding each.
void sums_to_double(const std::uint64_t* t, idx_t k, idx_t d, const double* qscale, double wscale,
                    std::vector<double>& sums, std::vector<double>& wsum);

struct Accum {
  idx_t k = 0, d = 0;
  std::vector<double> qscale;   // d
  double wscale = 1.0;
  std::vector<std::vector<std::uint64_t>> t;  // per thread: k * d sums, then k weights

  /// Scales for a fit over the rows of D (whose maxima do not depend on the order).
  void init(const Data& D, idx_t kk) {
    qscale.resize(static_cast<std::size_t>(D.d));
    for (idx_t f = 0; f < D.d; ++f) qscale[f] = pow2_scale(D.n, D.colmax[f], 61);
    init(kk, D.d, qscale.data(), D.w ? pow2_scale(D.n, D.wmax, 61) : 1.0, D.threads);
  }
  /// Given scales (a chunk of a larger fit).
  void init(idx_t kk, idx_t dd, const double* qs, double ws, int threads) {
    k = kk;
    d = dd;
    qscale.assign(qs, qs + dd);
    wscale = ws;
    t.assign(static_cast<std::size_t>(threads), std::vector<std::uint64_t>(static_cast<std::size_t>(k * d + k)));
  }
  static double row_scale(const Data& D, idx_t i) {
    const double w = D.weight(i);
    return D.metric == Metric::Cosine ? w / D.xnorm[i] : w;
  }
  void clear() {
    for (auto& v : t) std::fill(v.begin(), v.end(), 0);
  }
  /// Adds (or removes) row i to (from) cluster c in thread tid's accumulators.
  void add(const Data& D, const KernelSet& ks, int tid, idx_t i, idx_t c, bool subtract) {
    std::uint64_t* a = t[static_cast<std::size_t>(tid)].data();
    ks.accum(D.x + i * d, d, row_scale(D, i), qscale.data(), subtract, a + c * d);
    const auto wq = static_cast<std::uint64_t>(D.w ? std::llrint(D.weight(i) * wscale) : 1);
    a[k * d + c] = subtract ? a[k * d + c] - wq : a[k * d + c] + wq;
  }
  /// The threads' accumulators added (mod 2^64: exact).
  std::vector<std::uint64_t> combined() const {
    std::vector<std::uint64_t> s(static_cast<std::size_t>(k * d + k), 0);
    for (const auto& v : t)
      for (std::size_t j = 0; j < s.size(); ++j) s[j] += v[j];
    return s;
  }
  /// The exact totals, converted to fp64 (one rounding each).
  void totals(std::vector<double>& sums, std::vector<double>& wsum) const {
    sums_to_double(combined().data(), k, d, qscale.data(), wscale, sums, wsum);
  }
};

/// Bounds for exact pruning of the assignment (Hamerly 2010, "Making k-means even faster"),
/// kept in Euclidean distance: L2 uses ||x - c||, cosine the distance between the unit vectors
/// x/||x|| and c/||c|| (so 1 - cos = D^2 / 2). Per row, u >= D(x, own centre) and l <= D(x, c_j)
/// for every other centre j (with a mobile group: l for the stable centres, lm for the mobile
/// ones, see below). When centres move by shift_j, u grows by the row's own centre's shift and
/// l shrinks by the largest other shift (triangle inequality). A row whose
/// u < max(min(l, lm), half_gap[own]) keeps its centre: every other centre is strictly farther
/// (half_gap[a] = half the distance from centre a to its nearest other centre). Every bound
/// carries a relative margin of 1e-9 (far above the fp64 rounding of the exact values, which
/// is below d * 2^-53), so a row is skipped only when the exact fp64 argmin of the full pass
/// would return the same centre: pruned and unpruned fits are bit-identical.
struct Prune {
  std::vector<double> u, l;      ///< per row
  std::vector<double> shift;     ///< per centre: distance moved by the last update (upper bound)
  std::vector<double> half_gap;  ///< per centre: lower bound of half the gap to its nearest other centre
  double max1 = 0.0, max2 = 0.0; ///< largest and second largest shift
  idx_t arg1 = -1;               ///< the centre with the largest shift
  bool valid = false;            ///< u and l hold bounds (false before the first full pass)
  idx_t rows_computed = 0;       ///< rows whose full distance row was computed (all passes)
  // Mobile group (Yinyang with two groups, Ding et al. 2015, chosen per pass): the centres
  // that keep moving far (a cluster split, or a centre drifting between two groups), while most
  // have settled. l bounds the distances to the other stable centres, lm those to the other
  // mobile ones; each shrinks by its own group's largest shift, so one centre's jump no longer
  // defeats the test of every row. A row that fails only on lm gets its products against the
  // mobile centres (the mover stage), which renews lm. See choose_movers.
  std::vector<double> lm;             ///< per row: lower bound over the mobile centres (+inf: none)
  std::vector<char> tight;            ///< per row: u comes from a product with the own centre as it is now
  std::vector<idx_t> movers;          ///< the mobile centres this pass, ascending; empty: none
  std::vector<std::int32_t> slot;     ///< per centre: its index in movers, or -1
  PackedSet mv;                       ///< the mobile centres, packed (same kernel set as the centres)
  double rest1 = 0.0, rest2 = 0.0;    ///< largest and second largest shift of a stable centre
  idx_t rest_arg1 = -1;
  double mob1 = 0.0, mob2 = 0.0;      ///< the same among the mobile centres
  idx_t mob_arg1 = -1;
  bool merge_l = false;               ///< centres left the mobile group: l = min(l, lm) first
  bool merge_lm = false;              ///< centres joined it: lm = min(lm, l) (after merge_l)
  int force_movers = -1;              ///< KMeansParams::movers
  idx_t rows_movers = 0;              ///< rows whose mover products were computed (all passes)
  // Neighbour lists (Elkan's lemma per centre pair): a centre j with u < half the distance
  // from the own centre a to j is farther from the row than a. A row whose bounds fail but
  // whose u is below that half distance for all but a few centres (a row between a handful of
  // close centres, far from the rest) needs products with those few only (the local stage).
  idx_t nb_len = 0;                   ///< centres listed per centre (min(k - 1, kNeighbours))
  std::vector<std::int32_t> nb_ids;   ///< per centre a: its nb_len nearest other centres (k * nb_len)
  std::vector<double> nb_half;        ///< lower bounds of half their distances to a, ascending
  std::vector<double> nb_rest;        ///< per centre: the same bound for every centre not listed
};

/// Centres listed per centre in Prune's neighbour lists.
constexpr idx_t kNeighbours = 32;

/// One fp32 product of the local stage costs about as much as this many tile columns; the
/// stage takes rows with at most k_pad / kLocalColumns candidates.
constexpr idx_t kLocalColumns = 32;

/// Most candidates of the local stage for centres padded to k_pad (0: no lists, stage off).
inline idx_t local_limit(const Prune& pr, idx_t k_pad) { return std::min(pr.nb_len, k_pad / kLocalColumns); }

/// The local stage's candidates for a row of centre a whose distance to it is at most u: the
/// count s of a's listed neighbours j with u >= half_j (the others, listed or not, are farther
/// than a), and `far`, the least half distance of those left out. -1 when the list does not
/// reach far enough (then every centre is a candidate).
inline idx_t local_candidates(const Prune& pr, idx_t a, double u, double& far) {
  const idx_t len = pr.nb_len;
  const double* half = pr.nb_half.data() + a * len;
  idx_t s = 0;
  while (s < len && !(u < half[s])) ++s;
  far = s < len ? half[s] : pr.nb_rest[a];
  return u < far ? s : -1;
}

constexpr double kBoundRel = 1e-9;

/// fp64 rounding of a cosine value 1 - s / (||x|| ||c||) is absolute (cancellation near 1):
/// at most about d * 2^-53; this is a generous allowance for it.
inline double cos_abs_err(idx_t d) { return 4e-16 * static_cast<double>(d) + 1e-15; }

/// Upper and lower bounds of the Euclidean distance behind a metric value f (exact fp64 value
/// or a lower bound of it).
inline double dist_hi(Metric m, double f, idx_t d) {
  if (m == Metric::L2) return std::sqrt(std::max(0.0, f) * (1.0 + kBoundRel));
  return std::sqrt(2.0 * (std::max(0.0, f) + cos_abs_err(d)) * (1.0 + kBoundRel));
}
inline double dist_lo(Metric m, double f, idx_t d) {
  if (m == Metric::L2) return std::sqrt(std::max(0.0, f * (1.0 - kBoundRel)));
  return std::sqrt(std::max(0.0, 2.0 * (f - cos_abs_err(d)) * (1.0 - kBoundRel)));
}

/// Metric value f implied by a tile value v of a row (squared norm xsq, norm xn) and the
/// bound of its error: L2 f = v + ||x||^2; cosine f = 1 + v / ||x|| (packed centres are unit).
inline double f_of_tile(Metric m, double v, double xsq, double xn) {
  return m == Metric::L2 ? v + xsq : 1.0 + v / xn;
}
inline double f_err_of_tile(Metric m, double b, double xn) { return m == Metric::L2 ? b : b / xn; }

/// Upper bound of the distance from a row to centre j, from an fp32 product and its error bound.
inline double dist_hi_fp32(const PackedSet& cs, const Data& D, idx_t row, idx_t j) {
  const double xn = D.metric == Metric::Cosine ? D.xnorm[row] : 0.0;
  const double f_hi = f_of_tile(D.metric, fp32_value(cs, D.x + row * D.d, j), D.xsq[row], xn) +
                      f_err_of_tile(D.metric, row_bound_rel(cs, D.xsq[row], fp32_rel_err(D.d)), xn);
  return dist_hi(D.metric, f_hi, D.d);
}

/// Splits n rows into work ranges of at least kRangeUnit rows, kMaxRanges at most.
std::vector<Range> make_ranges(idx_t n);

/// Norms, rounding errors and fixed-point maxima of the rows, with the finiteness and zero-row
/// checks (data.cpp).
void prepare(Data& D, const float* x, idx_t n, idx_t d, const float* w, Metric m, int threads,
             const KernelSet* ks = nullptr);
/// Mean per-feature variance (tol's unit) and the exact objective of labels (data.cpp), both
/// from fixed-point sums that do not depend on the order of the rows (chunk.cpp), so a fit over
/// chunks gets the same values.
double mean_variance(const Data& D);
double objective(const Data& D, const float* centers, idx_t k, const std::vector<idx_t>& labels);

/// The pieces behind them and behind a fit over chunks (chunk.cpp).
void moment_limbs(const Data& D, const double* absmax, idx_t n_total, std::uint64_t* limbs);
double mean_variance_of(const std::uint64_t* limbs, const double* absmax, idx_t n_total, idx_t d);
double objective_scale(Metric m, idx_t n_total, const double* absmax, idx_t d, double wmax, const float* centers,
                       idx_t k);
void objective_limbs(const Data& D, const float* centers, const idx_t* labels, double scale, std::uint64_t* limbs);
double objective_of(const std::uint64_t* limbs, double scale);

/// Initial centres of a run: unit length for cosine (a zero centre is an error).
void start_centres(Metric m, float* centers, idx_t k, idx_t d);
/// Empty clusters take the repair rows in order (rx: their values, rw: weights or null,
/// from_labels: their clusters), each leaving its old cluster's sums; a row of weight zero
/// leaves its cluster empty. Returns the clusters repaired.
int apply_repair(Metric m, idx_t d, const std::vector<idx_t>& empty, const float* rx, const float* rw,
                 const idx_t* from_labels, idx_t n_repair, std::vector<double>& sums, std::vector<double>& wsum);
/// The new centres from the sums (cosine: their directions); a cluster still empty keeps its
/// centre. Returns the total squared shift.
double update_centres(Metric m, idx_t d, const std::vector<float>& centers, const std::vector<double>& sums,
                      const std::vector<double>& wsum, std::vector<float>& next, idx_t k);
/// Clusters with no weight.
std::vector<idx_t> empty_clusters(const std::vector<double>& wsum);

/// One assignment pass (assign.cpp); returns how many labels changed.
idx_t assign_pass(const PackedSet& cs, const Data& D, idx_t* labels, float* mind, Accum* acc, bool acc_full,
                  const std::vector<Range>& ranges, Cancel& cancel, Prune* pr = nullptr);

/// Pruning state between passes (prune.cpp).
/// Half gaps and neighbour lists of the centres cs (pr.half_gap, pr.nb_*).
void centre_half_gaps(const PackedSet& cs, const Data& D, Prune& pr);
void centre_shifts(const Data& D, const std::vector<float>& oldc, const std::vector<float>& newc, idx_t k, Prune& pr);
void choose_movers(const PackedSet& cs, const Data& D, const idx_t* labels, idx_t k, Prune& pr);

/// Initial centres: k-means++, random rows or k-means|| (init.cpp).
void seed_centers(const KMeansParams& p, Data& D, std::uint64_t seed, float* out, Cancel& cancel);

/// k-means|| pieces, per chunk or on the whole array (seed_chunk.cpp; see kmeans_chunk.hpp).
std::uint64_t seed_units_total(const float* w, idx_t n, double wscale);
idx_t seed_pick_row(const float* w, idx_t n, double wscale, std::uint64_t target);
double seed_potential_scale(Metric m, idx_t n_total, const double* absmax, idx_t d, double wmax);
void seed_draws(std::uint64_t seed, std::uint64_t total, std::uint64_t* target, std::uint64_t* finish_seed);
void seed_nearer(const Data& D, const float* batch, idx_t t, std::vector<float>& closest, double pscale,
                 std::uint64_t* limbs, Cancel& cancel);
void seed_sample(const float* x, idx_t n, idx_t d, const float* w, const std::vector<float>& closest, double pot,
                 idx_t k, std::uint64_t seed, int round, idx_t row_offset, std::vector<float>& batch);
void seed_candidate_units(const Data& D, const float* cand, idx_t m, double wscale, std::uint64_t* units,
                          Cancel& cancel);
void seed_finish(const KMeansParams& p, const float* cand, idx_t m, idx_t d, const std::uint64_t* units,
                 double wscale, std::uint64_t finish_seed, int threads, const KernelSet* ks, float* out,
                 Cancel& cancel);

/// One full k-means run from the given initial centres (lloyd.cpp).
void lloyd(const KMeansParams& p, const Data& D, std::vector<float>& centers, KMeansResult& res, Cancel& cancel);

}  // namespace kmeans_impl
}  // namespace ec
