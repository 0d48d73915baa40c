// DBSCAN's point layout: a coarse k-means partition orders the points, which are cut into tiles
// of kTile rows, each with a bounding ball. The layout only decides which products are computed
// together; it never changes the result.
#include <cmath>
#include <cstring>

#include "internal.hpp"
#include "../kmeans.hpp"

namespace ec {
namespace dbscan_impl {
namespace {

/// Rows of each coarse cluster, inner rows first (by distance to the coarse centre, then row),
/// and the pool of outliers. A row much farther from its coarse centre than the cluster's median
/// row (noise, mostly) goes to the pool, tiled first: a tile holding even one such row has a
/// wide ball and could never be skipped as the second tile of a pair, while as the first tile
/// its rows are pruned one by one.
struct RowOrder {
  std::vector<idx_t> outliers;
  std::vector<std::vector<idx_t>> inner;  ///< per coarse cluster
};

RowOrder order_rows(idx_t n, const std::vector<idx_t>& coarse, const std::vector<float>& coarse_dist) {
  const idx_t kc = *std::max_element(coarse.begin(), coarse.end()) + 1;
  std::vector<std::vector<idx_t>> members(static_cast<std::size_t>(kc));
  for (idx_t i = 0; i < n; ++i) members[coarse[i]].push_back(i);
  RowOrder order;
  order.inner.resize(members.size());
  for (std::size_t c = 0; c < members.size(); ++c) {
    auto& mem = members[c];
    std::sort(mem.begin(), mem.end(), [&](idx_t a, idx_t b) {
      return coarse_dist[a] != coarse_dist[b] ? coarse_dist[a] < coarse_dist[b] : a < b;
    });
    if (mem.empty()) continue;
    const float cut = 2.25f * coarse_dist[mem[mem.size() / 2]];  // squared-distance units
    for (idx_t r : mem) (coarse_dist[r] > cut && cut > 0.0f ? order.outliers : order.inner[c]).push_back(r);
  }
  return order;
}

/// Appends the rows `mem` to the layout as tiles of kTile slots.
void append_tiles(Layout& L, const std::vector<idx_t>& mem) {
  for (idx_t s = 0; s < static_cast<idx_t>(mem.size()); s += kTile) {
    const idx_t cnt = std::min<idx_t>(kTile, static_cast<idx_t>(mem.size()) - s);
    for (idx_t t = 0; t < kTile; ++t) L.slot_rows.push_back(mem[s + std::min(t, cnt - 1)]);
    L.count.push_back(cnt);
  }
}

/// Tile t's ball: the mean of its rows (unit rows for cosine) and the largest distance to it.
void tile_ball(const Fit& F, Layout& L, idx_t t) {
  const idx_t d = F.d;
  double* c = L.ball_center.data() + t * d;
  const idx_t* rows = L.rows(t);
  for (idx_t s = 0; s < L.count[t]; ++s) {
    const idx_t r = rows[s];
    const double sc = F.cosine ? 1.0 / F.xnorm[r] : 1.0;
    for (idx_t f = 0; f < d; ++f) c[f] += sc * F.x[r * d + f];
  }
  for (idx_t f = 0; f < d; ++f) c[f] /= static_cast<double>(L.count[t]);
  double rad = 0.0;
  for (idx_t s = 0; s < L.count[t]; ++s) {
    const idx_t r = rows[s];
    const double sc = F.cosine ? 1.0 / F.xnorm[r] : 1.0;
    double dd = 0.0;
    for (idx_t f = 0; f < d; ++f) {
      const double u = sc * F.x[r * d + f] - c[f];
      dd += u * u;
    }
    rad = std::max(rad, std::sqrt(dd));
  }
  L.ball_radius[t] = rad;
}

}  // namespace

std::vector<idx_t> coarse_labels(const Fit& F, std::vector<float>& dist) {
  const idx_t n = F.n, d = F.d;
  std::vector<idx_t> lab(static_cast<std::size_t>(n), 0);
  dist.assign(static_cast<std::size_t>(n), 0.0f);
  const idx_t kc = std::min<idx_t>(4096, n / (2 * kTile));
  if (!F.p.prune || kc < 2) return lab;
  const idx_t m = std::min<idx_t>(n, std::max<idx_t>(20 * kc, 5000));
  std::vector<float> sub(static_cast<std::size_t>(m * d));
  for (idx_t i = 0; i < m; ++i) std::memcpy(sub.data() + i * d, F.x + (i * n / m) * d, sizeof(float) * d);
  KMeansParams kp;
  kp.k = static_cast<int>(kc);
  kp.max_iter = 8;
  kp.tol = 0.0;
  kp.metric = F.cosine ? Metric::Cosine : Metric::L2;
  kp.init = KMeansInit::Random;
  kp.n_threads = F.threads;
  // The pair kernels (exact on any kernels): many near-ties among coarse centres, and fp32
  // tiles re-check far fewer.
  kp.kernel_set = &F.pair_kernels;
  KMeansResult kr;
  kmeans_fit(kp, sub.data(), m, d, nullptr, nullptr, kr, F.cancel);
  kmeans_assign(kp.metric, kr.centers.data(), kc, F.x, n, d, lab.data(), dist.data(), F.threads, F.cancel,
                &F.pair_kernels);
  return lab;
}

Layout make_layout(const Fit& F, const std::vector<idx_t>& coarse, const std::vector<float>& coarse_dist) {
  const RowOrder order = order_rows(F.n, coarse, coarse_dist);
  Layout L;
  append_tiles(L, order.outliers);
  for (const auto& mem : order.inner) append_tiles(L, mem);
  L.ntiles = static_cast<idx_t>(L.count.size());
  L.ball_center.assign(static_cast<std::size_t>(L.ntiles * F.d), 0.0);
  L.ball_radius.assign(static_cast<std::size_t>(L.ntiles), 0.0);
  for_each_range(F.threads, L.ntiles, 1, 4, F.cancel, [&](idx_t t0, idx_t t1) {
    for (idx_t t = t0; t < t1; ++t) tile_ball(F, L, t);
  });
  return L;
}

}  // namespace dbscan_impl
}  // namespace ec
