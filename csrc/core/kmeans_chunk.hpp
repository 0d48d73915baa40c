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

}  // namespace ec
