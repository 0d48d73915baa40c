// k-means over chunks of rows: the building blocks of a fit whose rows never sit in one array
// (streamed from disk, or spread over Dask workers). A fit driven through these calls gives the
// same centres and labels as kmeans_fit on the concatenated rows, for any chunking and any
// order: everything a chunk contributes is an integer (fixed-point centre sums, fixed-point
// moments) or a maximum, and integers add exactly in any order.
//
// One fit over chunks c = 1..m:
//   1. kmeans_chunk_stats per chunk; merge (n: sum, colmax / absmax / wmax: maximum);
//      kmeans_fixed_scales from the merged stats.
//   2. tol > 0: kmeans_chunk_moments per chunk, limbs summed; kmeans_mean_variance.
//   3. per iteration: kmeans_chunk_pass per chunk (each keeps its KMeansChunkState), sums
//      added mod 2^64; kmeans_update_centres; if it reports empty clusters, the rows farthest
//      from their centres (kmeans_chunk_farthest per chunk, merged by distance then global row)
//      go back to kmeans_update_centres as repair rows.
//   4. stop as kmeans_fit does (no label changed, or the shift within tol), then one more pass
//      for labels that match the final centres.
#pragma once

#include <cstdint>
#include <vector>

#include "common.hpp"
#include "kernels.hpp"
#include "kmeans.hpp"

namespace ec {

/// What a chunk tells about its rows before the fit: sizes and maxima for the fixed-point scales.
struct KMeansChunkStats {
  idx_t n = 0;
  std::vector<double> colmax;  ///< per feature: max |w' x_f| (w' = w, or w / ||x|| for cosine): centre sums
  std::vector<double> absmax;  ///< per feature: max |s x_f| (s = 1, or 1 / ||x|| for cosine): moments
  double wmax = 0.0;           ///< largest sample weight (1 without weights)
};

/// Checks the rows (finite, bounded, non-zero for cosine; weights finite and >= 0) and measures
/// them. Error messages name rows counted from `row_offset` (the chunk's first global row).
void kmeans_chunk_stats(Metric m, const float* x, idx_t n, idx_t d, const float* w, idx_t row_offset,
                        int threads, KMeansChunkStats& out);

/// Fixed-point scales of the centre sums of a fit over n_total rows: qscale (d values) and the
/// weight scale (1 without weights). See kmeans_impl::Accum.
void kmeans_fixed_scales(idx_t n_total, const double* colmax, idx_t d, double wmax, bool weighted, double* qscale,
                         double* wscale);

/// Limbs per feature of kmeans_chunk_moments: the sums of s x_f and of (s x_f)^2, each a 128-bit
/// integer in four 32-bit limbs, one limb per uint64 (so limbs of up to 2^32 chunks add without
/// overflow).
constexpr int kMomentLimbs = 8;

/// The chunk's fixed-point moments (d * kMomentLimbs values), with scales from the merged absmax
/// and the fit's total row count.
void kmeans_chunk_moments(Metric m, const float* x, idx_t n, idx_t d, const double* absmax, idx_t n_total,
                          int threads, std::uint64_t* limbs);

/// Mean per-feature variance of the rows (tol's unit) from the summed limbs.
double kmeans_mean_variance(const std::uint64_t* limbs, const double* absmax, idx_t n_total, idx_t d);

/// What a chunk keeps between passes: its labels, its pruning bounds, the centres of its last
/// pass and its share of the centre sums (k * d values, then k weights; mod 2^64).
struct KMeansChunkState {
  idx_t k = 0, d = 0;
  std::vector<idx_t> labels;
  std::vector<double> u, l, lm;
  std::vector<char> tight;
  std::vector<float> centers;
  std::vector<std::uint64_t> sums;
  bool valid = false;          ///< labels and bounds hold the results of a pass
  idx_t rows_computed = 0;     ///< rows whose distances to every centre were computed (all passes)
  // The rows' norms and rounding errors, kept from the first pass so that a pruned pass reads
  // only the rows it computes. Not pickled (recomputed after a load); tied to a kernel set.
  std::vector<double> xsq, xnorm;
  std::vector<float> xerr;
  const KernelSet* facts_ks = nullptr;
};

/// One assignment pass of a chunk against `centers` (k x d): exact nearest centre of each row,
/// skipping rows whose bounds prove it unchanged when `prune` (identical results either way),
/// and the chunk's fixed-point sums kept current. Returns how many labels changed (every row
/// on the first pass).
idx_t kmeans_chunk_pass(Metric m, const float* centers, idx_t k, const float* x, idx_t n, idx_t d, const float* w,
                        const double* qscale, double wscale, bool prune, KMeansChunkState& state, int threads,
                        Cancel& cancel, const KernelSet* kernel_set = nullptr);

/// The `count` rows of the chunk farthest from their centre (exact distance as float32, then
/// lower row first), for the repair of empty clusters: distances and local row indices.
void kmeans_chunk_farthest(Metric m, const float* centers, idx_t k, const float* x, idx_t n, idx_t d,
                           const idx_t* labels, idx_t count, int threads, std::vector<float>& dist,
                           std::vector<idx_t>& rows);

/// The next centres from the summed fixed-point sums (k * d + k values), as kmeans_fit computes
/// them: clusters with no weight take the repair rows (farthest first: their values, weights
/// and current labels) and leave their old clusters; a cluster still empty keeps its centre.
/// Returns the total squared shift; `empty` receives the clusters with no weight before repair.
double kmeans_update_centres(Metric m, const float* centers, idx_t k, idx_t d, const std::uint64_t* sums,
                             const double* qscale, double wscale, const float* repair_x, const float* repair_w,
                             const idx_t* repair_labels, idx_t n_repair, float* next, std::vector<idx_t>& empty);

/// Centres as a fit starts from them: unchanged for L2, unit length for cosine (a zero centre is
/// an error there).
void kmeans_start_centres(Metric m, float* centers, idx_t k, idx_t d);

/// Fixed-point scale of the objective of a fit over n_total rows: a bound of any row's weighted
/// distance to any of `centers`, from the merged absmax and wmax.
double kmeans_objective_scale(Metric m, idx_t n_total, const double* absmax, idx_t d, double wmax,
                              const float* centers, idx_t k);

/// The chunk's share of the objective, sum of w_i * dist(x_i, centre of label_i) (L2: squared
/// distance; cosine: 1 - cos), in fixed point: four 32-bit limbs, one per uint64.
void kmeans_chunk_objective(Metric m, const float* centers, idx_t k, const float* x, idx_t n, idx_t d,
                            const float* w, const idx_t* labels, double scale, int threads, std::uint64_t* limbs);

/// The objective from the summed limbs.
double kmeans_objective_total(const std::uint64_t* limbs, double scale);

// k-means|| seeding over chunks (kmeans_init's init="k-means||" is this on one chunk):
//   1. stats and kmeans_fixed_scales as for a fit (wscale); kmeans_seed_units per chunk, summed;
//      kmeans_seed_draws gives the first row's target unit and the finish's seed; the chunk whose
//      unit interval holds the target gives its row (kmeans_seed_pick with the local target).
//   2. kmeans_seed_nearer per chunk with the first row (pscale from kmeans_seed_potential_scale):
//      each chunk's state keeps its rows' distances to the candidates; limbs summed give the
//      potential (kmeans_objective_total(limbs, pscale)).
//   3. kKMeansParallelRounds rounds: stop when the potential is not > 0; kmeans_seed_sample per
//      chunk (rows in chunk order make the round's batch); an empty batch skips the round; else
//      the batch joins the candidates and kmeans_seed_nearer per chunk gives the next potential.
//   4. more candidates than clusters: kmeans_seed_candidate_units per chunk, summed;
//      kmeans_parallel_finish. (kmeans_init falls back to k-means++ on all rows otherwise.)

/// Rounds of k-means|| sampling.
constexpr int kKMeansParallelRounds = 5;

/// A chunk's distances to the nearest k-means|| candidate so far (float32 per row).
struct KMeansSeedState {
  std::vector<float> closest;
  int rounds = 0;  ///< kmeans_seed_nearer calls so far
};

/// The chunk's total weight in fixed-point units (round(w_i * wscale), or 1 per row unweighted).
std::uint64_t kmeans_seed_units(const float* w, idx_t n, double wscale);

/// The chunk's row whose unit interval holds `target` (0 <= target < the chunk's units).
idx_t kmeans_seed_pick(const float* w, idx_t n, double wscale, std::uint64_t target);

/// Fixed-point scale of the k-means|| potential (sum of w_i * distance to the nearest candidate)
/// of n_total rows: from a bound of any row's distance to any other (merged absmax) and wmax.
double kmeans_seed_potential_scale(Metric m, idx_t n_total, const double* absmax, idx_t d, double wmax);

/// The seed's draws: the first row's target unit (of total_units) and the finish's seed.
void kmeans_seed_draws(std::uint64_t seed, std::uint64_t total_units, std::uint64_t* target,
                       std::uint64_t* finish_seed);

/// Distances of the chunk's rows to a batch of t candidates taken into the state (minimum); the
/// chunk's potential in fixed point under pscale: four 32-bit limbs, one per uint64.
void kmeans_seed_nearer(Metric m, const float* batch, idx_t t, const float* x, idx_t n, idx_t d, const float* w,
                        double pscale, KMeansSeedState& st, int threads, Cancel& cancel, const KernelSet* kernel_set,
                        std::uint64_t* limbs);

/// The chunk's rows sampled in round `round` (row i with probability 2k w_i closest_i / pot, its
/// draw seeded by the global row row_offset + i), appended to batch in row order.
void kmeans_seed_sample(const float* x, idx_t n, idx_t d, const float* w, const KMeansSeedState& st, double pot,
                        idx_t k, std::uint64_t seed, int round, idx_t row_offset, std::vector<float>& batch);

/// Per candidate (mc of them): the weight units of the chunk's rows nearest to it.
void kmeans_seed_candidate_units(Metric m, const float* cand, idx_t mc, const float* x, idx_t n, idx_t d,
                                 const float* w, double wscale, int threads, Cancel& cancel,
                                 const KernelSet* kernel_set, std::uint64_t* units);

/// The k centres from the mc > p.k weighted candidates: k-means++ (seed finish_seed) and at most
/// 5 Lloyd iterations (p.tol) on the candidates, weights units / wscale as float32.
void kmeans_parallel_finish(const KMeansParams& p, const float* cand, idx_t mc, idx_t d, const std::uint64_t* units,
                            double wscale, std::uint64_t finish_seed, float* out, Cancel& cancel);

}  // namespace ec
