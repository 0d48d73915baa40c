// DBSCAN on the tile engine. Points are ordered by a coarse k-means partition and cut into
// tiles of kTile rows; each tile keeps a bounding ball, and a tile pair whose balls are more
// than eps apart is never computed. Pass 1 counts neighbours (each unordered tile pair once),
// pass 2 unions core-core pairs and records each border point's nearest core point; it skips
// pairs whose core points are already known to be in one component, and a union-find over each
// pair's slots stops a pair as soon as its core points are joined. Every decision
// within the kernel's error band is re-checked in fp64 (see engine.hpp), so the result is that
// of an exact brute force.
#include "dbscan.hpp"

#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>

#include "dbscan_bounds.hpp"
#include "engine.hpp"
#include "tile_driver.hpp"
#include "kmeans.hpp"
#include "union_find.hpp"

namespace ec {
namespace {

constexpr idx_t kTile = 192;  // rows per tile: a multiple of every kernel's mr and nr

struct Layout {
  idx_t ntiles = 0;
  std::vector<idx_t> slot_rows;  // ntiles * kTile: original row of each slot (padding: tile's first row)
  std::vector<idx_t> count;      // rows in each tile
  std::vector<double> center;    // ntiles * d, ball centres (unit-sphere space for cosine)
  std::vector<double> radius;    // ball radii
};

/// Labels of a coarse k-means partition and each row's distance to its coarse centre. The
/// partition only orders the points into tiles; it never changes the result.
std::vector<idx_t> coarse_labels(const DbscanParams& p, const float* x, idx_t n, idx_t d,
                                 int threads, std::vector<float>& dist, const KernelSet& ks,
                                 Cancel& cancel) {
  std::vector<idx_t> lab(static_cast<std::size_t>(n), 0);
  dist.assign(static_cast<std::size_t>(n), 0.0f);
  const idx_t kc = std::min<idx_t>(4096, n / (2 * kTile));
  if (!p.prune || kc < 2) return lab;
  const idx_t m = std::min<idx_t>(n, std::max<idx_t>(20 * kc, 5000));
  std::vector<float> sub(static_cast<std::size_t>(m * d));
  for (idx_t i = 0; i < m; ++i)
    std::memcpy(sub.data() + i * d, x + (i * n / m) * d, sizeof(float) * d);
  KMeansParams kp;
  kp.k = static_cast<int>(kc);
  kp.max_iter = 8;
  kp.tol = 0.0;
  kp.metric = p.metric == Metric::Cosine ? Metric::Cosine : Metric::L2;
  kp.init = KMeansInit::Random;
  kp.n_threads = threads;
  kp.kernel_set = &ks;  // many near-ties among coarse centres: fp32 tiles re-check far fewer
  KMeansResult kr;
  kmeans_fit(kp, sub.data(), m, d, nullptr, nullptr, kr, cancel);
  kmeans_assign(kp.metric, kr.centers.data(), kc, x, n, d, lab.data(), dist.data(), threads, cancel, &ks);
  return lab;
}

Layout make_layout(const DbscanParams& p, const float* x, idx_t n, idx_t d,
                   const std::vector<idx_t>& lab, const std::vector<float>& cdist,
                   const std::vector<double>& xnorm, int threads) {
  Layout L;
  const idx_t kc = *std::max_element(lab.begin(), lab.end()) + 1;
  std::vector<std::vector<idx_t>> members(static_cast<std::size_t>(kc));
  for (idx_t i = 0; i < n; ++i) members[lab[i]].push_back(i);
  // Inner rows first, then outliers. A row much farther from its coarse centre than the
  // cluster's median row (noise, mostly) goes to a separate pool, tiled first: a tile holding
  // even one such row has a wide ball and could never be skipped as the second tile of a pair,
  // while as the first tile its rows are pruned one by one.
  std::vector<idx_t> pool;
  std::vector<std::vector<idx_t>> clean(members.size());
  for (std::size_t c = 0; c < members.size(); ++c) {
    auto& mem = members[c];
    std::sort(mem.begin(), mem.end(), [&](idx_t a, idx_t b) {
      return cdist[a] != cdist[b] ? cdist[a] < cdist[b] : a < b;
    });
    if (mem.empty()) continue;
    const float cut = 2.25f * cdist[mem[mem.size() / 2]];  // squared-distance units
    for (idx_t r : mem) (cdist[r] > cut && cut > 0.0f ? pool : clean[c]).push_back(r);
  }
  auto emit = [&](const std::vector<idx_t>& mem) {
    for (idx_t s = 0; s < static_cast<idx_t>(mem.size()); s += kTile) {
      const idx_t cnt = std::min<idx_t>(kTile, static_cast<idx_t>(mem.size()) - s);
      for (idx_t t = 0; t < kTile; ++t) L.slot_rows.push_back(mem[s + std::min(t, cnt - 1)]);
      L.count.push_back(cnt);
    }
  };
  emit(pool);
  for (const auto& mem : clean) emit(mem);
  L.ntiles = static_cast<idx_t>(L.count.size());
  L.center.assign(static_cast<std::size_t>(L.ntiles * d), 0.0);
  L.radius.assign(static_cast<std::size_t>(L.ntiles), 0.0);
  const bool cos = p.metric == Metric::Cosine;
  parallel_for(threads, L.ntiles, [&](idx_t t) {
    double* c = L.center.data() + t * d;
    for (idx_t s = 0; s < L.count[t]; ++s) {
      const idx_t r = L.slot_rows[t * kTile + s];
      const double sc = cos ? 1.0 / xnorm[r] : 1.0;
      for (idx_t f = 0; f < d; ++f) c[f] += sc * x[r * d + f];
    }
    for (idx_t f = 0; f < d; ++f) c[f] /= static_cast<double>(L.count[t]);
    double rad = 0.0;
    for (idx_t s = 0; s < L.count[t]; ++s) {
      const idx_t r = L.slot_rows[t * kTile + s];
      const double sc = cos ? 1.0 / xnorm[r] : 1.0;
      double dd = 0.0;
      for (idx_t f = 0; f < d; ++f) {
        const double u = sc * x[r * d + f] - c[f];
        dd += u * u;
      }
      rad = std::max(rad, std::sqrt(dd));
    }
    L.radius[t] = rad;
  }, 4);
  return L;
}

/// Packs border-candidate (distance, core row) into one word so that an atomic minimum picks
/// the nearest core point, ties to the lower row.
inline std::uint64_t border_key(float dist, idx_t core) {
  std::uint32_t bits;
  std::memcpy(&bits, &dist, sizeof(bits));
  return (static_cast<std::uint64_t>(bits) << 32) | static_cast<std::uint64_t>(core);
}

inline void atomic_min(std::atomic<std::uint64_t>& a, std::uint64_t v) {
  std::uint64_t cur = a.load(std::memory_order_relaxed);
  while (v < cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

/// Union-find over the slots of one tile pair (tile a's slots, then tile b's at kTile + slot),
/// for pass 2's core-core links: seeded with the clusters the shared union-find already knows,
/// it passes on only the links that join two of its groups, so a tile pair costs at most one
/// shared union per group instead of one per neighbour pair. `groups` counts the groups of core
/// slots: at 1, no further core-core pair between the two tiles can change anything.
class SlotUnion {
 public:
  SlotUnion(const Layout& L, const std::vector<std::uint8_t>& is_core, ConcurrentUnionFind& uf)
      : L_(L), is_core_(is_core), uf_(uf) {}

  void seed(idx_t a, idx_t b) {
    roots_.clear();
    auto add = [&](idx_t t, int base) {
      for (idx_t s = 0; s < L_.count[t]; ++s) {
        const idx_t r = L_.slot_rows[t * kTile + s];
        if (is_core_[r]) roots_.emplace_back(uf_.find(r), base + static_cast<int>(s));
      }
    };
    add(a, 0);
    if (b != a) add(b, static_cast<int>(kTile));
    for (int v = 0; v < 2 * kTile; ++v) parent_[v] = static_cast<std::int16_t>(v);
    std::sort(roots_.begin(), roots_.end());
    groups = 0;
    for (std::size_t i = 0; i < roots_.size(); ++i) {
      if (i == 0 || roots_[i].first != roots_[i - 1].first) {
        ++groups;
        rep_ = roots_[i].second;
      } else {
        parent_[roots_[i].second] = static_cast<std::int16_t>(rep_);
      }
    }
  }

  /// Joins the groups of slots u and v; true when they were apart.
  bool unite(int u, int v) {
    u = find(u);
    v = find(v);
    if (u == v) return false;
    parent_[std::max(u, v)] = static_cast<std::int16_t>(std::min(u, v));
    --groups;
    return true;
  }

  idx_t groups = 0;

 private:
  int find(int v) {
    while (parent_[v] != v) {
      parent_[v] = parent_[parent_[v]];
      v = parent_[v];
    }
    return v;
  }
  const Layout& L_;
  const std::vector<std::uint8_t>& is_core_;
  ConcurrentUnionFind& uf_;
  std::vector<std::pair<idx_t, int>> roots_;
  std::int16_t parent_[2 * kTile];
  int rep_ = 0;
};

/// Rows per product in pass 2, which can stop between them.
constexpr idx_t kPass2Chunk = 48;

}  // namespace

void dbscan_fit(const DbscanParams& p, const float* x, idx_t n, idx_t d, DbscanResult& out,
                Cancel& cancel) {
  if (n <= 0) fail("DBSCAN needs at least one row (got an empty array)");
  if (d <= 0) fail("DBSCAN needs at least one feature");
  if (!(p.eps > 0.0) || !std::isfinite(p.eps))
    fail("eps=" + std::to_string(p.eps) + " should be a finite number > 0");
  if (p.min_samples < 1) fail("min_samples=" + std::to_string(p.min_samples) + " should be >= 1");
  if (p.metric == Metric::IP) fail("DBSCAN supports metric 'l2' or 'cosine'");
  if (p.metric == Metric::Cosine && p.eps >= 2.0)
    fail("eps=" + std::to_string(p.eps) + " is >= 2, the largest cosine distance: every pair would be neighbours");
  if (n >= (idx_t{1} << 31)) fail("DBSCAN supports up to 2^31 - 1 rows per call");
  const int threads = resolve_threads(p.n_threads);
  // The pruning bounds (coarse partition, ball centres, projections) use fp32 products: with
  // bf16's wider error they pruned far less (eps=1.1 on 50k x 384: 65% of tile pairs computed
  // instead of 16%). The pair tiles use the process's kernels (bf16 where available); their
  // wider eps band is narrowed with fp32 products before the fp64 re-check.
  const KernelSet& bound_kernels = fp32_variant(kernels());  // bounds
  const KernelSet& pair_kernels = kernels();                // pair tiles
  const bool cos = p.metric == Metric::Cosine;
  // Working memory without the optional projection table: per row (norms, partition, layout,
  // counts, flags, union-find, labels), the packed copies, the tiles' balls and partner lists,
  // and per-thread tiles. Tiles are estimated as 1.25 n / kTile plus one per coarse cluster.
  const double t_est = 1.25 * static_cast<double>(n) / kTile + std::min(4096.0, static_cast<double>(n) / (2 * kTile)) + 1.0;
  const double base = 100.0 * static_cast<double>(n) +
                      t_est * kTile * (static_cast<double>(pair_kernels.depth(d)) * 4.0 + 16.0) +
                      t_est * (static_cast<double>(d) * 16.0 + 24.0 + 64.0 * 9.0) +
                      threads * static_cast<double>(kTile) * (static_cast<double>(bound_kernels.depth(d)) + kTile + t_est) * 4.0;
  check_memory(base, p.memory_limit, "DBSCAN on " + std::to_string(n) + " x " + std::to_string(d));

  std::vector<double> xsq(static_cast<std::size_t>(n)), xnorm(static_cast<std::size_t>(n));
  parallel_for(threads, n, [&](idx_t i) {
    xsq[i] = sqnorm(x + i * d, d);
    xnorm[i] = std::sqrt(xsq[i]);
  });
  check_sqnorms(xsq, "data");
  if (cos)
    for (idx_t i = 0; i < n; ++i)
      if (xsq[i] == 0.0)
        fail("row " + std::to_string(i) + " has zero norm; the cosine metric is undefined for it");

  std::vector<float> cdist;
  const auto lab = coarse_labels(p, x, n, d, threads, cdist, pair_kernels, cancel);  // exact on any kernels
  const Layout L = make_layout(p, x, n, d, lab, cdist, xnorm, threads);
  const idx_t T = L.ntiles;
  PackedSet set;
  pack_set(set, x, T * kTile, d, p.metric, L.slot_rows.data(), threads, &pair_kernels);
  for (idx_t t = 0; t < T; ++t)
    for (idx_t s = L.count[t]; s < kTile; ++s)
      set.add.data()[t * kTile + s] = std::numeric_limits<float>::infinity();

  // Pruning. Distances are taken in the metric's geometry: the data itself for L2, the unit
  // sphere for cosine, where 1 - cos <= eps  <=>  ||u - v|| <= sqrt(2 eps) =: reach. Two lower
  // bounds on ||x - y|| for x in tile a, y in tile b decide which products can be skipped:
  //  - balls: ||x - y|| >= ||x - c_b|| - r_b (and, per tile pair, >= ||c_a - c_b|| - r_a - r_b);
  //  - projections on the line of centres: |(x - y) . (c_a - c_b)| <= ||x - y|| ||c_a - c_b||,
  //    so with s(z) = z . (c_a - c_b) a neighbour pair needs |s(x) - s(y)| <= reach ||c_a - c_b||.
  //    In high dimension points concentrate near their tile's centre along that line, so this
  //    bound is much tighter than the balls when clusters are wide;
  //  - inner products and norms (dbscan_bounds.hpp): x . y <= x . c_b + ||x|| r_b, and
  //    x . y <= ||x - c_a|| ||y|| + max_{y in b} y . c_a. On the sphere they prove rows far from
  //    every cluster and other clusters' tiles apart where balls and projections cannot
  //    (100k x 384 embeddings-like data: (row, tile) products computed fell from 2.97M to 1.20M).
  // The products x . c_J of every row with every ball centre come from one tile product per
  // tile; each bound gets a slack that covers that product's rounding (see engine.hpp).
  const double reach = (cos ? std::sqrt(2.0 * p.eps) : p.eps) * (1.0 + 1e-9) + 1e-12;
  // reach shrunk by a margin far above the rounding of the bounds: distances proven below it
  // are within eps exactly.
  const double reach_in = (cos ? std::sqrt(2.0 * p.eps) : p.eps) * (1.0 - 1e-7);
  // Each row's bf16 rounding error, for the per-row bounds of bf16 products (row_bound_in):
  // the packed set's own for L2 (its slots are the rows, unscaled), recomputed for cosine
  // (the set holds unit rows, the products take the rows as they are).
  std::vector<float> xerr(pair_kernels.input_rel > 0.0 ? static_cast<std::size_t>(n) : 0);
  if (!xerr.empty()) {
    if (!cos) {
      for (idx_t t = 0; t < T; ++t)
        for (idx_t i = 0; i < L.count[t]; ++i) xerr[L.slot_rows[t * kTile + i]] = set.in_err[t * kTile + i];
    } else {
      parallel_for(threads, n, [&](idx_t i) { xerr[i] = static_cast<float>(input_error(pair_kernels, x + i * d, d) * (1.0 + 1e-6)); });
    }
  }
  // Ball centres packed for fp32 products (a tile's rows with its partners' centres: the
  // row-level bounds) and, with bf16 kernels, for bf16 products (the projection table below).
  PackedSet centres, tcentres;
  std::vector<float> centre_f(static_cast<std::size_t>(T * d));
  for (idx_t i = 0; i < T * d; ++i) centre_f[i] = static_cast<float>(L.center[i]);
  pack_set(centres, centre_f.data(), T, d, Metric::L2, nullptr, threads, &bound_kernels);
  const double slack_rel = 4.0 * centres.rel_err + 1e-6;
  double xmax = 1.0;
  if (!cos) xmax = *std::max_element(xnorm.begin(), xnorm.end());
  // Rounding of one product x . c_J, taken twice as a margin: fp32, at most rel_err ||x|| ||c_J||
  // (engine.hpp; for cosine the product of unit x, whose extra rounding the rel_err margin
  // covers); bf16, from the actual rounding errors as in row_bound_in (for cosine relative to
  // ||x||, as the products are divided by it).
  const double cmax = std::sqrt(centres.max_sqnorm);
  const double slack_s = 2.0 * centres.rel_err * xmax * cmax + 1e-30;  // fp32 products
  double slack_t = slack_s;                                           // table products
  bool table_bf16 = false;
  if (pair_kernels.input_rel > 0.0) {
    pack_set(tcentres, centre_f.data(), T, d, Metric::L2, nullptr, threads, &pair_kernels);
    double rmax = 0.0;
    for (idx_t i = 0; i < n; ++i) rmax = std::max(rmax, cos ? xerr[i] / xnorm[i] : static_cast<double>(xerr[i]));
    const double grow = 1.0 + 0x1p-8;
    const double slack_bf = 2.0 * ((rmax * cmax + xmax * tcentres.in_err_max) * grow * (1.0 + 1e-6) +
                                   fp32_rel_err(d) * xmax * cmax) + 1e-30;
    // The table takes the kernels' own (bf16) products where their rounding is small next to
    // eps (twice as fast; 100k x 384: table 0.12 s -> 0.05 s), else fp32 (data far from the
    // origin, where the rounding of x . c grows).
    table_bf16 = 4.0 * slack_bf <= 0.05 * reach * reach;
    if (table_bf16) slack_t = slack_bf;
  }
  const PackedSet& table_centres = table_bf16 ? tcentres : centres;
  const KernelSet& table_kernels = table_bf16 ? pair_kernels : bound_kernels;
  // The projection table (lo, hi, sep below: 16 bytes per pair of tiles), skipped if too large.
  const double table = static_cast<double>(T) * T * 16.0;
  const bool project = p.prune && table <= 1024.0e6 && (p.memory_limit <= 0.0 || base + table <= p.memory_limit);
  // A-side rows of the products in the kernels' own word format, row-major, so that gathered
  // rows need no packing (KernelSet::gemm_rows): x itself for fp32 sets, a bf16 copy otherwise.
  // Optional, like the projection table: dropped (rows packed per product instead) when it
  // would not fit the memory limit.
  std::vector<float> xw_bf;
  const double words_copy = static_cast<double>(n) * pair_kernels.depth(d) * 4.0;  // bf16: half the input
  const bool rows_copy = pair_kernels.gemm_rows && pair_kernels.per_word != 1 &&
                         (p.memory_limit <= 0.0 || base + (project ? table : 0.0) + words_copy <= p.memory_limit);
  if (rows_copy) {
    xw_bf.resize(static_cast<std::size_t>(n * pair_kernels.depth(d)));
    parallel_for(threads, (n + 255) / 256, [&](idx_t b) {
      const idx_t i0 = b * 256;
      pair_kernels.pack_rows(x + i0 * d, std::min<idx_t>(256, n - i0), d, xw_bf.data() + i0 * pair_kernels.depth(d));
    });
  }
  // The product of rows `rows[0..m)` with the packed panels `b` (n_pad columns) into c.
  auto gather_gemm = [&](const KernelSet& k, const idx_t* rows, idx_t m, const float* b, idx_t n_pad,
                         TileScratch& s, float* c, idx_t ldc) {
    const idx_t m_pad = round_up(m, k.mr);
    if (k.gemm_rows && (k.per_word == 1 || (&k == &pair_kernels && rows_copy))) {
      const float* base = k.per_word == 1 ? x : xw_bf.data();
      const idx_t stride = k.depth(d);
      for (idx_t i = 0; i < m_pad; ++i) s.ptrs[i] = base + rows[std::min(i, m - 1)] * stride;
      k.gemm_rows(s.ptrs.data(), b, m_pad, n_pad, k.depth(d), c, ldc);
    } else {
      k.pack(x, d, rows, nullptr, m, d, k.mr, s.a.data());
      k.gemm(s.a.data(), b, m_pad, n_pad, k.depth(d), c, ldc);
    }
  };
  auto init_scratch = [&](TileScratch& s) {
    s.ptrs.resize(kTile);
    s.a.resize(static_cast<std::size_t>(kTile * std::max(bound_kernels.depth(d), pair_kernels.depth(d))));
    s.c.resize(static_cast<std::size_t>(kTile * kTile));
    s.p.resize(static_cast<std::size_t>(kTile * std::max(centres.n_pad, tcentres.n_pad)));
    s.idx.resize(kTile);
    s.val.resize(kTile);
    s.rows.resize(kTile);
  };
  // Products of tile a's rows with the ball centres packed in `cs` (all of them, or a tile's
  // partners), in s.p (row i at i * cs.n_pad); for cosine they are divided by ||x|| (products
  // of the unit vectors).
  auto centre_products = [&](idx_t a, const PackedSet& cs, TileScratch& s, const KernelSet& k) {
    for (idx_t i = 0; i < L.count[a]; ++i) s.rows[i] = L.slot_rows[a * kTile + i];
    gather_gemm(k, s.rows.data(), L.count[a], cs.panels.data(), cs.n_pad, s, s.p.data(), cs.n_pad);
    if (cos)
      for (idx_t i = 0; i < L.count[a]; ++i) {
        const float inv = static_cast<float>(1.0 / xnorm[s.rows[i]]);
        for (idx_t j = 0; j < cs.n; ++j) s.p.data()[i * cs.n_pad + j] *= inv;
      }
  };
  // lo/hi[t * T + J]: range of x . c_J over the rows x of tile t (see above).
  std::vector<float> lo(project ? static_cast<std::size_t>(T * T) : 0), hi(lo.size());
  std::vector<double> sep(project ? static_cast<std::size_t>(T * T) : 0);  // ||c_a - c_b||
  if (project) {
    for_each_block<TileScratch>(threads, T, 1, cancel, init_scratch, [&](TileScratch& s, idx_t t, const StopCheck&) {
      centre_products(t, table_centres, s, table_kernels);
      float* lo_t = lo.data() + t * T;
      float* hi_t = hi.data() + t * T;
      std::fill(lo_t, lo_t + T, std::numeric_limits<float>::infinity());
      std::fill(hi_t, hi_t + T, -std::numeric_limits<float>::infinity());
      for (idx_t i = 0; i < L.count[t]; ++i) {  // row by row: contiguous, vectorised
        const float* v = s.p.data() + i * table_centres.n_pad;
        for (idx_t j = 0; j < T; ++j) {
          lo_t[j] = std::min(lo_t[j], v[j]);
          hi_t[j] = std::max(hi_t[j], v[j]);
        }
      }
      for (idx_t j = t; j < T; ++j) {  // symmetric: computed once
        const double s = std::sqrt(sqdist64(L.center.data() + t * d, L.center.data() + j * d, d));
        sep[t * T + j] = s;
        sep[j * T + t] = s;
      }
    });
  }
  // Range of s(y) = y . (c_a - c_b) over the rows of tile t.
  auto s_range = [&](idx_t t, idx_t a, idx_t b) {
    return std::make_pair(static_cast<double>(lo[t * T + a]) - hi[t * T + b],
                          static_cast<double>(hi[t * T + a]) - lo[t * T + b]);
  };

  // Inner-product bounds (dbscan_bounds.hpp) need each tile's smallest and largest row norm
  // (1 for cosine: unit-sphere geometry). With c = c_a the maximum of y . c_a over tile b is a
  // table entry (hi[b * T + a]); with c = c_b, x . c_b is a partner product.
  std::vector<double> nmin(static_cast<std::size_t>(T), 1.0), nmax(static_cast<std::size_t>(T), 1.0);
  if (!cos)
    for (idx_t t = 0; t < T; ++t) {
      nmin[t] = std::numeric_limits<double>::infinity();
      nmax[t] = 0.0;
      for (idx_t i = 0; i < L.count[t]; ++i) {
        nmin[t] = std::min(nmin[t], xnorm[L.slot_rows[t * kTile + i]]);
        nmax[t] = std::max(nmax[t], xnorm[L.slot_rows[t * kTile + i]]);
      }
    }
  // True when lb2, a lower bound on a squared distance whose terms are of magnitude `mag`, is
  // beyond reach^2 by a margin far above the fp64 rounding of the few operations behind it.
  auto beyond = [&](double lb2, double mag) { return lb2 > reach * reach * (1.0 + 1e-7) + 1e-7 * mag; };

  std::vector<std::vector<idx_t>> partners(static_cast<std::size_t>(T));
  // The partner lists and pass 2's flags (9 bytes per tile pair) are data-dependent: `base`
  // allows 64 pairs per tile, but with little pruning (a large eps) there are up to T^2 / 2.
  // Pairs beyond the allowance are charged as the lists are built, so that the fit fails with
  // MemoryLimitError instead of going past the limit.
  const double fixed = base + (project ? table : 0.0) + (rows_copy ? words_copy : 0.0);
  const double allowance = t_est * 64.0;
  std::atomic<std::int64_t> pair_slots{0};
  parallel_for(threads, T, [&](idx_t a) {
    for (idx_t b = a; b < T; ++b) {
      if (a != b && p.prune) {
        const double dist_ab =
            project ? sep[a * T + b] : std::sqrt(sqdist64(L.center.data() + a * d, L.center.data() + b * d, d));
        const double gap = dist_ab - L.radius[a] - L.radius[b];
        if (gap > reach * (1.0 + 1e-7) + 1e-7 * (L.radius[a] + L.radius[b])) continue;
        if (project) {
          const auto ra = s_range(a, a, b), rb = s_range(b, a, b);
          const double w = reach * sep[a * T + b] * (1.0 + 1e-7) + 4.0 * slack_t;
          if (ra.first > rb.second + w || rb.first > ra.second + w) continue;
          // Every x of a has ||x||^2 >= nmin[a]^2 and ||x - c_a|| <= r_a, and the bound falls as
          // ||x - c_a|| grows: the row-level bound at its weakest holds for the whole tile.
          const double lb_a = sq_lower_by_own_centre(nmin[a] * nmin[a], L.radius[a], nmin[b], nmax[b], hi[b * T + a] + slack_t);
          const double lb_b = sq_lower_by_own_centre(nmin[b] * nmin[b], L.radius[b], nmin[a], nmax[a], hi[a * T + b] + slack_t);
          if (beyond(std::max(lb_a, lb_b), nmax[a] * nmax[a] + nmax[b] * nmax[b])) continue;
        }
      }
      partners[a].push_back(b);
    }
    const auto cap = static_cast<std::int64_t>(partners[a].capacity());
    const double slots = static_cast<double>(pair_slots.fetch_add(cap) + cap);
    if (p.memory_limit > 0.0 && fixed + 9.0 * std::max(0.0, slots - allowance) > p.memory_limit) {
      std::ostringstream e;
      e << p.eps;
      throw MemoryLimitError("DBSCAN with eps=" + e.str() + " on " + std::to_string(n) + " rows finds more tile pairs " +
                             "within reach than memory_limit = " + std::to_string(static_cast<long long>(p.memory_limit / 1048576.0 + 0.5)) +
                             " MiB holds (" + std::to_string(static_cast<long long>(slots)) + " pairs of " + std::to_string(T) +
                             " tiles so far); use a smaller eps, raise memory_limit, or cluster a sample");
    }
  }, 4);

  // The centres of tile a's partners (partners[a][0] is a itself), packed: the passes need
  // only these columns of the products, not all T.
  auto partner_products = [&](idx_t a, PackedSet& cs, TileScratch& s) {
    pack_set(cs, centre_f.data(), static_cast<idx_t>(partners[a].size()), d, Metric::L2, partners[a].data(), 1, &bound_kernels);
    centre_products(a, cs, s, bound_kernels);
  };

  // Rows of tile a that may have a neighbour in tile b (the bounds above, per row). cdots:
  // products of the rows with tile a's partner centres (row i at i * ld), b in column pi.
  // With `full` (a != b), rows whose whole ball around b's centre lies within eps go there
  // instead: ||x - y|| <= ||x - c_b|| + r_b <= reach_in for every row y of b.
  auto active_rows = [&](idx_t a, idx_t b, std::size_t pi, const float* cdots, idx_t ld,
                         std::vector<idx_t>& act, std::vector<idx_t>* full, idx_t* ip_pruned = nullptr) {
    act.clear();
    idx_t ipr = 0;
    if (!p.prune) {  // every row of every pair: the reference the pruned runs are tested against
      for (idx_t i = 0; i < L.count[a]; ++i) act.push_back(i);
      return;
    }
    const double lim = L.radius[b] + reach;
    const double csq = centres.add.data()[b], csq_a = centres.add.data()[a];
    std::pair<double, double> rb{0.0, 0.0};
    double w = 0.0;
    const bool proj = project && a != b;
    if (proj) {
      rb = s_range(b, a, b);
      w = reach * sep[a * T + b] * (1.0 + 1e-7) + 2.0 * (slack_s + slack_t);
    }
    for (idx_t i = 0; i < L.count[a]; ++i) {
      const idx_t r = L.slot_rows[a * kTile + i];
      const double dot = cdots[i * ld + static_cast<idx_t>(pi)];
      const double d2 = cos ? 1.0 + csq - 2.0 * dot : xsq[r] + csq - 2.0 * dot;
      const double scale = cos ? 1.0 + csq : xsq[r] + csq;
      if (!(d2 <= lim * lim + slack_rel * scale)) continue;
      if (full && std::sqrt(std::max(0.0, d2 + slack_rel * scale)) + L.radius[b] <= reach_in) {
        full->push_back(i);
        continue;
      }
      if (a != b) {
        const double xs = cos ? 1.0 : xsq[r], xn = cos ? 1.0 : xnorm[r];
        const double mag = xs + nmax[b] * nmax[b];
        if (beyond(sq_lower_by_tile_centre(xs, xn, dot + slack_s, L.radius[b], nmin[b]), mag)) {
          ++ipr;
          continue;
        }
        if (proj) {
          const double dot_a = cdots[i * ld];  // column 0: a itself
          const double d2a = xs + csq_a - 2.0 * dot_a;
          const double rx = std::sqrt(std::max(0.0, d2a + slack_rel * (xs + csq_a)));  // >= ||x - c_a||
          if (beyond(sq_lower_by_own_centre(xs, rx, nmin[b], nmax[b], hi[b * T + a] + slack_t), mag)) {
            ++ipr;
            continue;
          }
          const double sx = dot_a - dot;
          if (sx < rb.first - w || sx > rb.second + w) continue;
        }
      }
      act.push_back(i);
    }
    if (ip_pruned) *ip_pruned += ipr;
  };

  // Neighbour pairs between the active rows of tile a and all rows of tile b: calls
  // on_pair(row_i, row_j, exact, slot_i, slot_j) once per unordered pair within eps; `exact` is
  // the fp64 metric value when it was computed (inside the error band), else -1; the slots are
  // the rows' positions in tiles a and b. With `chunk` > 0 the rows go through the product
  // `chunk` at a time, and the visit ends early once stop() is true.
  const double r_metric = cos ? p.eps : p.eps * p.eps;
  auto visit_pairs = [&](idx_t a, idx_t b, const std::vector<idx_t>& act, TileScratch& s, idx_t chunk,
                         auto&& on_pair, auto&& stop) {
    const idx_t na = static_cast<idx_t>(act.size());
    for (idx_t i = 0; i < na; ++i) s.rows[i] = L.slot_rows[a * kTile + act[i]];
    const bool narrow = pair_kernels.input_rel > 0.0;
    const idx_t step = chunk > 0 ? chunk : na;
    for (idx_t i0 = 0; i0 < na; i0 += step) {
      if (i0 > 0 && stop()) return;
      const idx_t m = std::min(step, na - i0);
      gather_gemm(pair_kernels, s.rows.data() + i0, m, set.panels.data() + b * kTile * pair_kernels.depth(d), kTile, s, s.c.data(),
                  kTile);
      for (idx_t i = i0; i < i0 + m; ++i) {
        const idx_t ri = s.rows[i];
        const double thr = cos ? -(1.0 - p.eps) * xnorm[ri] : r_metric - xsq[ri];
        const float bnd = row_bound_in(set, xsq[ri], xerr.empty() ? 0.0 : xerr[ri]);
        const double bnd32 = narrow ? row_bound_rel(set, xsq[ri], fp32_rel_err(d)) : 0.0;
        const idx_t cnt = pair_kernels.row_filter(s.c.data() + (i - i0) * kTile, set.add.data() + b * kTile, set.mul,
                                        kTile, static_cast<float>(thr) + bnd, s.idx.data(), s.val.data());
        for (idx_t t = 0; t < cnt; ++t) {
          const idx_t jj = s.idx[t];
          if (a == b && jj <= act[i]) continue;  // each unordered pair once; self counted apart
          const idx_t rj = L.slot_rows[b * kTile + jj];
          double ex = -1.0;
          if (!(s.val[t] < static_cast<float>(thr) - bnd)) {
            // Inside the tile's error band: an fp32 product decides unless it is within its own
            // (much narrower) band, where the fp64 value does.
            bool decided = false;
            if (narrow) {
              const double v32 = fp32_value(set, x + ri * d, b * kTile + jj);
              if (v32 > thr + bnd32) continue;
              decided = v32 < thr - bnd32;
            }
            if (!decided) {
              ex = exact_value(p.metric, x + ri * d, x + rj * d, d, xnorm[ri], xnorm[rj]);
              if (!(ex <= r_metric)) continue;
            }
          }
          on_pair(ri, rj, ex, act[i], jj);
        }
      }
    }
  };
  const auto never = [] { return false; };
  // Pass 1: neighbour counts.
  std::unique_ptr<std::atomic<idx_t>[]> counts(new std::atomic<idx_t>[static_cast<std::size_t>(n)]);
  for (idx_t i = 0; i < n; ++i) counts[i].store(1, std::memory_order_relaxed);
  std::atomic<idx_t> computed1{0}, computed2{0}, rows1{0}, full1{0}, ipruned1{0};
  // Which tile pairs held at least one neighbour pair: pass 2 visits only those.
  std::vector<std::vector<std::uint8_t>> linked(static_cast<std::size_t>(T));
  for (idx_t a = 0; a < T; ++a) linked[a].assign(partners[a].size(), 0);
  struct Pass1Scratch {
    TileScratch s;
    PackedSet pc;  // tile a's partner centres
    std::vector<idx_t> act, full;
    idx_t local[2 * kTile];  // neighbours found per slot of the pair's two tiles
  };
  for_each_block<Pass1Scratch>(threads, T, 1, cancel, [&](Pass1Scratch& l) { init_scratch(l.s); },
                               [&](Pass1Scratch& l, idx_t a, const StopCheck&) {
    TileScratch& s = l.s;
    PackedSet& pc = l.pc;
    std::vector<idx_t>& act = l.act;
    std::vector<idx_t>& full = l.full;
    idx_t* const local = l.local;
    if (p.prune) partner_products(a, pc, s);  // s.p holds them; visit_pairs does not touch s.p
    for (std::size_t pi = 0; pi < partners[a].size(); ++pi) {
      const idx_t b = partners[a][pi];
      full.clear();
      idx_t ipr = 0;
      active_rows(a, b, pi, s.p.data(), pc.n_pad, act, a != b && p.prune ? &full : nullptr, &ipr);
      if (ipr) ipruned1.fetch_add(ipr, std::memory_order_relaxed);
      if (act.empty() && full.empty()) continue;
      // Counted per slot first: one atomic add per row and tile pair, not per neighbour pair.
      std::fill(local, local + 2 * kTile, 0);
      idx_t* lb = a == b ? local : local + kTile;
      bool any = false;
      if (!full.empty()) {  // every row of b is a neighbour of these rows: no products
        for (const idx_t i : full) local[i] += L.count[b];
        const idx_t nf = static_cast<idx_t>(full.size());
        for (idx_t t = 0; t < L.count[b]; ++t) lb[t] += nf;
        any = true;
        full1.fetch_add(nf, std::memory_order_relaxed);
      }
      if (!act.empty()) {
        computed1.fetch_add(1, std::memory_order_relaxed);
        rows1.fetch_add(static_cast<idx_t>(act.size()), std::memory_order_relaxed);
        visit_pairs(a, b, act, s, 0, [&](idx_t, idx_t, double, idx_t si, idx_t sj) {
          ++local[si];
          ++lb[sj];
          any = true;
        }, never);
      }
      if (!any) continue;
      linked[a][pi] = 1;
      for (idx_t t = 0; t < L.count[a]; ++t)
        if (local[t]) counts[L.slot_rows[a * kTile + t]].fetch_add(local[t], std::memory_order_relaxed);
      if (a != b)
        for (idx_t t = 0; t < L.count[b]; ++t)
          if (lb[t]) counts[L.slot_rows[b * kTile + t]].fetch_add(lb[t], std::memory_order_relaxed);
    }
  });

  out.counts.resize(static_cast<std::size_t>(n));
  out.is_core.assign(static_cast<std::size_t>(n), 0);
  for (idx_t i = 0; i < n; ++i) {
    out.counts[i] = counts[i].load(std::memory_order_relaxed);
    out.is_core[i] = out.counts[i] >= p.min_samples ? 1 : 0;
  }
  counts.reset();

  // Tile facts for pass 2: which tiles have cores, and non-core points that have neighbours
  // (possible border points).
  std::vector<std::uint8_t> has_core(static_cast<std::size_t>(T), 0), has_border(static_cast<std::size_t>(T), 0);
  std::vector<idx_t> first_core(static_cast<std::size_t>(T), -1);
  for (idx_t t = 0; t < T; ++t)
    for (idx_t s = 0; s < L.count[t]; ++s) {
      const idx_t r = L.slot_rows[t * kTile + s];
      if (out.is_core[r]) {
        has_core[t] = 1;
        if (first_core[t] < 0) first_core[t] = r;
      } else if (out.counts[r] > 1) {
        has_border[t] = 1;
      }
    }

  // Pass 2: union core-core pairs; nearest core point of each border point. Diagonal tiles go
  // first so that most tiles are internally merged before the off-diagonal pairs are tested.
  ConcurrentUnionFind uf(n);
  std::unique_ptr<std::atomic<std::uint64_t>[]> border(new std::atomic<std::uint64_t>[static_cast<std::size_t>(n)]);
  for (idx_t i = 0; i < n; ++i) border[i].store(~std::uint64_t{0}, std::memory_order_relaxed);
  std::vector<std::atomic<std::uint8_t>> merged(static_cast<std::size_t>(T));
  for (auto& m : merged) m.store(0);
  auto tile_merged = [&](idx_t t) -> bool {
    if (merged[t].load(std::memory_order_relaxed)) return true;
    const idx_t root = uf.find(first_core[t]);
    for (idx_t s = 0; s < L.count[t]; ++s) {
      const idx_t r = L.slot_rows[t * kTile + s];
      if (out.is_core[r] && uf.find(r) != root) return false;
    }
    merged[t].store(1, std::memory_order_relaxed);  // components only grow: stays true
    return true;
  };
  for (int phase = 0; phase < 2; ++phase) {
    struct Pass2Scratch {
      TileScratch s;
      PackedSet pc;  // tile a's partner centres
      std::vector<idx_t> act;
      std::optional<SlotUnion> su;
    };
    for_each_block<Pass2Scratch>(threads, T, 1, cancel,
                                 [&](Pass2Scratch& l) {
                                   init_scratch(l.s);
                                   l.su.emplace(L, out.is_core, uf);
                                 },
                                 [&](Pass2Scratch& l, idx_t a, const StopCheck&) {
      TileScratch& s = l.s;
      PackedSet& pc = l.pc;
      std::vector<idx_t>& act = l.act;
      SlotUnion& su = *l.su;
      bool have_products = false;
      for (std::size_t pi = 0; pi < partners[a].size(); ++pi) {
        const idx_t b = partners[a][pi];
        if (!linked[a][pi]) continue;  // no neighbour pair at all between a and b
        if ((phase == 0) != (a == b)) continue;
        if (!has_core[a] && !has_core[b]) continue;
        if (!has_border[a] && !has_border[b] && (!has_core[a] || !has_core[b])) continue;
        if (!has_border[a] && !has_border[b] && tile_merged(a) && tile_merged(b) &&
            uf.same(first_core[a], first_core[b]))
          continue;
        if (!have_products && p.prune) {
          partner_products(a, pc, s);
          have_products = true;
        }
        active_rows(a, b, pi, s.p.data(), pc.n_pad, act, nullptr);
        if (act.empty()) continue;
        su.seed(a, b);
        const bool borders = has_border[a] || has_border[b];
        const auto done = [&] { return su.groups <= 1 && !borders; };
        if (done()) continue;  // every core point of both tiles already in one cluster
        computed2.fetch_add(1, std::memory_order_relaxed);
        visit_pairs(a, b, act, s, kPass2Chunk, [&](idx_t ri, idx_t rj, double ex, idx_t si, idx_t sj) {
          const bool ci = out.is_core[ri], cj = out.is_core[rj];
          if (ci && cj) {
            if (su.unite(si, a == b ? sj : kTile + sj)) uf.unite(ri, rj);
          } else if (ci != cj) {
            const idx_t core = ci ? ri : rj, bp = ci ? rj : ri;
            if (ex < 0.0) ex = exact_value(p.metric, x + bp * d, x + core * d, d, xnorm[bp], xnorm[core]);
            atomic_min(border[bp], border_key(static_cast<float>(std::max(0.0, ex)), core));
          }
        }, done);
      }
    });
  }

  // Labels: clusters numbered in the order of their lowest core row.
  out.labels.assign(static_cast<std::size_t>(n), -1);
  std::vector<idx_t> root_label(static_cast<std::size_t>(n), -1);
  idx_t next = 0;
  for (idx_t i = 0; i < n; ++i) {
    if (!out.is_core[i]) continue;
    const idx_t r = uf.find(i);
    if (root_label[r] < 0) root_label[r] = next++;
    out.labels[i] = root_label[r];
  }
  for (idx_t i = 0; i < n; ++i) {
    if (out.is_core[i]) continue;
    const std::uint64_t key = border[i].load(std::memory_order_relaxed);
    if (key != ~std::uint64_t{0}) out.labels[i] = out.labels[static_cast<idx_t>(key & 0xFFFFFFFFull)];
  }
  out.n_clusters = next;
  out.tile_pairs = T * (T + 1) / 2;
  out.pairs_computed_pass1 = computed1.load();
  out.pairs_computed_pass2 = computed2.load();
  out.rows_computed_pass1 = rows1.load();
  out.rows_all_neighbours_pass1 = full1.load();
  out.rows_pruned_inner_product_pass1 = ipruned1.load();
  for (const auto& v : partners) out.pairs_after_bounds += static_cast<idx_t>(v.size());
  out.projection_bounds = project;
  out.rows_copy = rows_copy;
}

}  // namespace ec
