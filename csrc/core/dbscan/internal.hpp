// The parts of DBSCAN that its rooms share (internal to csrc/core/dbscan): the fit's rows and
// kernels, the point layout in tiles, the tile bounds, and the functions one room calls in another.
//
// Rooms: layout.cpp (coarse partition, tiles and their balls), tile_bounds.cpp (which tile pairs
// and which rows of a pair can hold neighbours), passes.cpp (pass 1 counts neighbours, pass 2
// joins core points and attaches border points, both as bodies of the tile driver), dbscan.cpp
// (dbscan_fit: checks, memory, the order of the steps, labels).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "../dbscan.hpp"
#include "../engine.hpp"
#include "../tile_driver.hpp"
#include "../union_find.hpp"

namespace ec {
namespace dbscan_impl {

constexpr idx_t kTile = 192;       // rows per tile: a multiple of every kernel's mr and nr
constexpr idx_t kPass2Chunk = 48;  // rows per product in pass 2, which can stop between them

/// Runs f(i0, i1) over [0, n) in ranges of `block` items on the tile driver's threads (exception
/// capture and cancellation), `chunk` ranges per scheduling chunk.
template <class F>
void for_each_range(int threads, idx_t n, idx_t block, int chunk, Cancel& cancel, F&& f) {
  struct NoScratch {};
  for_each_block<NoScratch>(threads, (n + block - 1) / block, chunk, cancel, [](NoScratch&) {},
                            [&](NoScratch&, idx_t b, const StopCheck&) {
                              const idx_t i0 = b * block;
                              f(i0, std::min(n, i0 + block));
                            });
}

/// One fit: its parameters, rows, kernels and radius, and what every room reads about the rows.
struct Fit {
  Fit(const DbscanParams& params, const float* rows, idx_t n_rows, idx_t dim, Cancel& c)
      : p(params), x(rows), n(n_rows), d(dim), cosine(params.metric == Metric::Cosine),
        threads(resolve_threads(params.n_threads)), cancel(c) {}

  const DbscanParams& p;
  const float* x;
  idx_t n, d;
  bool cosine;
  int threads;
  Cancel& cancel;
  // The pruning bounds (ball centres, projections) use fp32 products: with
  // bf16's wider error they pruned far less (eps=1.1 on 50k x 384: 65% of tile pairs computed
  // instead of 16%). The pair tiles use the process's kernels (bf16 where available); their
  // wider error band is narrowed with fp32 products before the fp64 re-check.
  const KernelSet& pair_kernels = kernels_for(KernelFamily::dbscan, d);
  const KernelSet& bound_kernels = fp32_variant(pair_kernels);
  std::vector<double> xsq, xnorm;  ///< ||x_i||^2, ||x_i||
  /// bf16 pair kernels: each row's rounding error against the pair tiles (row_bound_in), else empty.
  std::vector<float> xerr;
  /// The rows in the pair kernels' word format (a bf16 copy), row-major, when `rows_copy`.
  std::vector<float> pair_words;
  bool rows_copy = false;
  /// eps in the metric's geometry (the data for L2, the unit sphere for cosine, where
  /// 1 - cos <= eps <=> ||u - v|| <= sqrt(2 eps)), grown by a margin above the bounds' rounding:
  /// pairs proven farther apart are not neighbours.
  double reach = 0.0;
  /// The same shrunk by that margin: pairs proven closer are neighbours.
  double reach_in = 0.0;

  /// Where the rows come from for products with kernel set k: gathered in place when k
  /// multiplies rows in their own words (x itself for fp32 words, the bf16 copy for the pair
  /// kernels when kept), else packed per product.
  RowSource source(const KernelSet& k) const {
    const float* words = nullptr;
    if (k.gemm_rows && k.per_word == 1)
      words = x;
    else if (k.gemm_rows && &k == &pair_kernels && rows_copy)
      words = pair_words.data();
    return RowSource{x, d, words};
  }
};

/// The points in tile order: tile t holds the rows slot_rows[t * kTile + s] for s < count[t]
/// (padding slots repeat the tile's first row), and a ball around them.
struct Layout {
  idx_t ntiles = 0;
  std::vector<idx_t> slot_rows;    ///< ntiles * kTile: original row of each slot
  std::vector<idx_t> count;        ///< rows in each tile
  std::vector<double> ball_center; ///< ntiles * d, ball centres (unit-sphere space for cosine)
  std::vector<double> ball_radius; ///< ball radii
  const idx_t* rows(idx_t t) const { return slot_rows.data() + t * kTile; }
};

/// Coarse k-means labels of the rows and each row's distance to its coarse centre (layout.cpp).
std::vector<idx_t> coarse_labels(const Fit& F, std::vector<float>& dist);
/// Tiles of the rows ordered by the coarse partition, and their balls (layout.cpp).
Layout make_layout(const Fit& F, const std::vector<idx_t>& coarse, const std::vector<float>& coarse_dist);

/// Products of tile t's rows with the ball centres packed in `cs` into out (row i at
/// i * cs.n_pad); for cosine divided by ||x|| (products of the unit vectors) (tile_bounds.cpp).
void centre_products(const Fit& F, const Layout& L, idx_t t, const PackedSet& cs, BlockProducts& prod, float* out);

/// The tile-level and row-level bounds that skip products (tile_bounds.cpp). Lower bounds on
/// ||x - y|| for x in tile a, y in tile b:
///  - balls: ||x - y|| >= ||x - c_b|| - r_b (and, per tile pair, >= ||c_a - c_b|| - r_a - r_b);
///  - projections on the line of centres: |(x - y) . (c_a - c_b)| <= ||x - y|| ||c_a - c_b||,
///    so with s(z) = z . (c_a - c_b) a neighbour pair needs |s(x) - s(y)| <= reach ||c_a - c_b||.
///    In high dimension points concentrate near their tile's centre along that line, so this
///    bound is much tighter than the balls when clusters are wide;
///  - inner products and norms (bounds.hpp): x . y <= x . c_b + ||x|| r_b, and
///    x . y <= ||x - c_a|| ||y|| + max_{y in b} y . c_a. On the sphere they prove rows far from
///    every cluster and other clusters' tiles apart where balls and projections cannot
///    (100k x 384 embeddings-like data: (row, tile) products computed fell from 2.97M to 1.20M).
/// The products x . c_J of every row with every ball centre come from one tile product per
/// tile; each bound gets an error bound that covers that product's rounding (see engine.hpp).
class TileBounds {
 public:
  TileBounds(const Fit& F, const Layout& L) : F_(F), L_(L) {}

  /// Packs the ball centres (fp32, and with bf16 pair kernels bf16 for the table) and sets the
  /// products' error bounds.
  void pack_centres();
  /// Bytes of the projection table for T tiles.
  static double table_bytes(idx_t T) { return static_cast<double>(T) * T * 16.0; }
  /// The projection table (lo, hi, sep), with `project` set; else only the norm ranges.
  void build_table(bool project);
  /// The partner list of every tile (tiles b >= a whose pair the tile-level bounds keep),
  /// charged against memory_limit beyond `allowance` pairs on top of `fixed_bytes`.
  void build_partners(double fixed_bytes, double allowance);

  /// Rows of tile a that may have a neighbour in tile b (partners(a)[pi]), by the row-level
  /// bounds. centre_dots: products of the rows with tile a's partner centres (row i at i * ld).
  /// With `full` (a != b), rows whose whole ball around b's centre lies within eps go there
  /// instead: ||x - y|| <= ||x - c_b|| + r_b <= reach_in for every row y of b. Returns the rows
  /// left out by the inner-product bounds.
  idx_t rows_in_reach(idx_t a, idx_t b, std::size_t pi, const float* centre_dots, idx_t ld, std::vector<idx_t>& act,
                      std::vector<idx_t>* full) const;

  /// Packs the centres of tile a's partners (partners(a)[0] is a itself) into cs and their
  /// products with tile a's rows into out: the passes need only these columns.
  void partner_products(idx_t a, PackedSet& cs, BlockProducts& prod, float* out) const;

  const std::vector<idx_t>& partners(idx_t a) const { return partners_[a]; }
  /// Columns of centre products a thread's buffer must hold.
  idx_t max_centre_cols() const { return std::max(centres_.n_pad, bf16_centres_.n_pad); }
  bool projected() const { return project_; }
  idx_t pairs_after_bounds() const;

 private:
  /// Range of s(y) = y . (c_a - c_b) over the rows of tile t.
  std::pair<double, double> s_range(idx_t t, idx_t a, idx_t b) const {
    const idx_t T = L_.ntiles;
    return {static_cast<double>(lo_[t * T + a]) - hi_[t * T + b], static_cast<double>(hi_[t * T + a]) - lo_[t * T + b]};
  }
  /// True when lb2, a lower bound on a squared distance whose terms are of magnitude `mag`, is
  /// beyond reach^2 by a margin far above the fp64 rounding of the few operations behind it.
  bool beyond(double lb2, double mag) const {
    return lb2 > F_.reach * F_.reach * (1.0 + 1e-7) + 1e-7 * mag;
  }
  /// What the row-level bounds say of one row of tile a against tile b.
  enum class RowReach { Out, InnerProductOut, Full, Active };
  /// The constants of one tile pair (a, b) for row_reach: b's column in the partner products,
  /// the ball reach lim = r_b + reach, ||c_b||^2, ||c_a||^2, and with `proj` the range of s over
  /// tile b and its margin w.
  struct PairReach {
    idx_t a = 0, b = 0, col = 0;
    double lim = 0.0, csq = 0.0, csq_a = 0.0, w = 0.0;
    std::pair<double, double> range_b{0.0, 0.0};
    bool proj = false;
  };
  /// Row r of tile a, with `dots` its products with tile a's partner centres.
  RowReach row_reach(const PairReach& q, idx_t r, const float* dots, bool want_full) const;
  void fill_table_row(idx_t t, const float* dots);
  void norm_ranges();
  bool pair_in_reach(idx_t a, idx_t b) const;
  const PackedSet& table_centres() const { return table_bf16_ ? bf16_centres_ : centres_; }
  const KernelSet& table_kernels() const { return table_bf16_ ? F_.pair_kernels : F_.bound_kernels; }

  const Fit& F_;
  const Layout& L_;
  std::vector<float> centre_f_;  ///< ball centres in float32
  PackedSet centres_;            ///< for fp32 products (the row-level bounds)
  PackedSet bf16_centres_;       ///< for the pair kernels' products (the table), bf16 kernels only
  bool table_bf16_ = false;      ///< the table takes the pair kernels' products (bf16_centres_)
  double err_ball_rel_ = 0.0;    ///< relative rounding of a squared distance from an fp32 product
  double err_dot_ = 0.0;         ///< rounding of one fp32 product x . c_J, taken twice
  double err_table_ = 0.0;       ///< the same for the table's products
  bool project_ = false;
  std::vector<float> lo_, hi_;   ///< lo/hi[t * T + J]: range of x . c_J over the rows x of tile t
  std::vector<double> sep_;      ///< ||c_a - c_b||
  std::vector<double> nmin_, nmax_;  ///< smallest and largest row norm of each tile (1 for cosine)
  std::vector<std::vector<idx_t>> partners_;
};

/// Pass 1's results besides the counts: which partner pairs held at least one neighbour pair
/// (pass 2 visits only those), and the work statistics.
struct CountResult {
  std::vector<std::vector<std::uint8_t>> linked;  ///< per tile a, per partner index
  idx_t pairs_computed = 0, rows_computed = 0, rows_all_neighbours = 0, rows_pruned_inner_product = 0;
};

/// Pass 1 (passes.cpp): neighbour counts into out.counts and core flags into out.is_core.
CountResult count_neighbours(const Fit& F, const Layout& L, const PackedSet& set, const TileBounds& B,
                             DbscanResult& out);

/// Pass 2 (passes.cpp): unions core-core pairs in uf and gives each border point its nearest
/// core point in nearest_core (border_key: distance, then row; all ones: none); returns the
/// tile pairs computed.
idx_t join_clusters(const Fit& F, const Layout& L, const PackedSet& set, const TileBounds& B, const CountResult& counted,
                    const DbscanResult& out, ConcurrentUnionFind& uf, std::atomic<std::uint64_t>* nearest_core);

}  // namespace dbscan_impl
}  // namespace ec
