// k-means: k-means++ / random / given initialisation, Lloyd iterations with fused assignment and
// accumulation, L2 and spherical (cosine) metrics, sample weights, empty-cluster repair.
#pragma once

#include <cstdint>
#include <vector>

#include "common.hpp"
#include "kernels.hpp"

namespace ec {

enum class KMeansInit : int {
  KMeansPP = 0,  ///< greedy k-means++ (seeded)
  Random = 1,    ///< k distinct rows chosen uniformly (seeded)
  Given = 2,     ///< the caller's centres
  Parallel = 3,  ///< k-means|| (Bahmani et al. 2012): a few sampling rounds, then k-means++ on the weighted candidates
};

struct KMeansParams {
  int k = 8;                          ///< number of clusters
  int max_iter = 300;                 ///< Lloyd iterations at most
  double tol = 1e-4;                  ///< stop when sum ||c_new - c_old||^2 <= tol * mean feature variance
  int n_init = 1;                     ///< independent runs (seeds seed, seed+1, ...); lowest inertia wins
  Metric metric = Metric::L2;         ///< L2, or Cosine for spherical k-means (unit-norm centres)
  KMeansInit init = KMeansInit::KMeansPP;  ///< how the first centres are chosen
  std::uint64_t seed = 0;             ///< random seed; results are identical for any thread count
  int n_local_trials = 0;             ///< k-means++ candidates per step; 0 = 2 + floor(ln k)
  int n_threads = 0;                  ///< worker threads; 0 = OpenMP default
  const KernelSet* kernel_set = nullptr;  ///< tile kernels; null = the process's choice (kernels())
  /// Bound-based pruning of the assignment (exact: identical results either way):
  /// -1 = auto (on when k >= kPruneMinK), 0 = off, 1 = on.
  int prune = -1;
  /// Pruning's mover stage (see choose_movers in kmeans.cpp): -1 = chosen per pass by a cost
  /// model, 0 = off, m > 0 = always the m centres that moved most (tests). Same results either way.
  int movers = -1;
  double memory_limit = 0.0;  ///< bytes of working memory (labels and centres included) at most; 0 = no limit
};

/// Smallest k for which `prune = -1` turns pruning on.
constexpr int kPruneMinK = 16;

struct KMeansResult {
  std::vector<float> centers;   ///< k * d, row-major
  std::vector<idx_t> labels;    ///< n, consistent with `centers`
  double inertia = 0.0;         ///< sum of w_i * dist(x_i, centre); L2: squared distance; Cosine: 1 - cos
  int n_iter = 0;               ///< Lloyd iterations run (of the best init)
  int n_empty_repaired = 0;     ///< empty clusters re-seeded during the best run
  /// Fraction of (row, pass) pairs whose full distance row was computed, over the assignment
  /// passes of the best run (1 without pruning).
  double computed_fraction = 1.0;
  /// Fraction of (row, pass) pairs whose products against the movers only were computed.
  double mover_fraction = 0.0;
};

/// Fits k-means. `weights` (n, may be null) are non-negative sample weights; `init_centers`
/// (k * d) is read when p.init == Given.
void kmeans_fit(const KMeansParams& p, const float* x, idx_t n, idx_t d, const float* weights,
                const float* init_centers, KMeansResult& out, Cancel& cancel);

/// Throws MemoryLimitError when kmeans_fit (or kmeans_init) would need more working memory
/// than p.memory_limit (an over-estimate: initialisation, per-row state, centres, tiles, result).
void kmeans_check_memory(const KMeansParams& p, idx_t n, idx_t d);

/// Throws MemoryLimitError when kmeans_assign of n rows to k centres (outputs included) would
/// need more than `memory_limit` bytes (0: no limit).
void kmeans_assign_check_memory(idx_t k, idx_t n, idx_t d, int n_threads, const KernelSet* kernel_set,
                                double memory_limit);

/// Only the k-means++ / random initialisation (for tests and for callers that want the seeds);
/// checks p.memory_limit first.
void kmeans_init(const KMeansParams& p, const float* x, idx_t n, idx_t d, const float* weights,
                 std::uint64_t seed, float* out_centers, Cancel& cancel);

/// Nearest centre of each row (exact: ties and near-ties resolved in fp64, lower index wins)
/// and its distance (L2: squared; Cosine: 1 - cos).
void kmeans_assign(Metric m, const float* centers, idx_t k, const float* x, idx_t n, idx_t d,
                   idx_t* labels, float* dist, int n_threads, Cancel& cancel,
                   const KernelSet* kernel_set = nullptr);

}  // namespace ec
