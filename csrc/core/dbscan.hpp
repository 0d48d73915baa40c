// DBSCAN over the tile engine: neighbour counts, core points, a concurrent union-find over
// core-core pairs and border points joined to their nearest core point. Memory is O(n) plus a
// permuted, packed copy of the data and tile buffers; the neighbourhood graph is never stored.
// The implementation is in csrc/core/dbscan/ (internal.hpp names its rooms).
#pragma once

#include <cstdint>
#include <vector>

#include "common.hpp"

namespace ec {

struct DbscanParams {
  double eps = 0.5;          ///< radius: L2 Euclidean distance, or Cosine distance 1 - cos
  int min_samples = 5;       ///< neighbours within eps, the point itself included, of a core point
  Metric metric = Metric::L2;  ///< L2 or Cosine
  int n_threads = 0;         ///< worker threads; 0 = OpenMP default
  bool prune = true;         ///< order points by a coarse partition and skip far tile pairs
  /// Bytes of working memory (labels included) at most; 0 = no limit. The optional projection
  /// bounds (16 bytes per pair of tiles) are dropped when they would not fit.
  double memory_limit = 0.0;
};

struct DbscanResult {
  std::vector<idx_t> labels;         ///< cluster per row, -1 for noise; clusters numbered by their lowest core row
  std::vector<std::uint8_t> is_core; ///< 1 for core points
  std::vector<idx_t> counts;         ///< neighbours within eps, the point itself included
  idx_t n_clusters = 0;
  idx_t tile_pairs = 0;              ///< tile pairs (i <= j) in one pass
  idx_t pairs_computed_pass1 = 0;    ///< tile pairs whose products were computed in pass 1
  idx_t pairs_computed_pass2 = 0;    ///< ... and in pass 2
  idx_t pairs_after_bounds = 0;      ///< tile pairs left by the tile-level bounds (balls, projections)
  bool projection_bounds = false;    ///< the projection table was used (memory_limit allowing)
  bool rows_copy = false;            ///< rows read from a copy in the kernels' bf16 words (memory_limit allowing)
  idx_t rows_computed_pass1 = 0;     ///< query rows in pass 1's products (tile rows: 192)
  idx_t rows_all_neighbours_pass1 = 0;  ///< (row, tile) pairs counted without products: the tile's ball lies within eps
  idx_t rows_pruned_inner_product_pass1 = 0;  ///< (row, tile) pairs left out by the inner-product bounds
};

void dbscan_fit(const DbscanParams& p, const float* x, idx_t n, idx_t d, DbscanResult& out,
                Cancel& cancel);

}  // namespace ec
