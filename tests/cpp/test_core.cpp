// C++ tests of the core without Python: kNN, radius counts, k-means assignment and DBSCAN counts
// against brute force. Built with -DEMBEDCLUSTER_BUILD_TESTS=ON (also under the sanitizers).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "core/dbscan.hpp"
#include "core/kernels.hpp"
#include "core/kmeans.hpp"
#include "core/knn.hpp"

using ec::idx_t;

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

static double l2(const float* a, const float* b, idx_t d) {
  double s = 0;
  for (idx_t k = 0; k < d; ++k) s += (double(a[k]) - b[k]) * (double(a[k]) - b[k]);
  return s;
}

int main() {
  std::mt19937 gen(7);
  std::normal_distribution<float> N(0.0f, 1.0f);
  for (idx_t d : {1, 3, 97}) {
    const idx_t n = 500, nq = 60;
    const int k = 7;
    std::vector<float> db(n * d), q(nq * d);
    for (auto& v : db) v = N(gen);
    for (auto& v : q) v = N(gen);
    std::vector<float> dist(nq * k);
    std::vector<idx_t> idx(nq * k);
    ec::Cancel cancel;
    ec::KnnParams p;
    p.k = k;
    ec::knn_search(p, db.data(), n, q.data(), nq, d, dist.data(), idx.data(), cancel);
    for (idx_t i = 0; i < nq; ++i) {
      std::vector<std::pair<double, idx_t>> all;
      for (idx_t j = 0; j < n; ++j) all.emplace_back(l2(q.data() + i * d, db.data() + j * d, d), j);
      std::sort(all.begin(), all.end());
      for (int t = 0; t < k; ++t) CHECK(idx[i * k + t] == all[t].second);
    }
    ec::RadiusParams rp;
    rp.radius = d;  // about half the pairs
    std::vector<idx_t> counts(nq);
    ec::radius_count(rp, db.data(), n, q.data(), nq, d, counts.data(), cancel);
    for (idx_t i = 0; i < nq; ++i) {
      idx_t c = 0;
      for (idx_t j = 0; j < n; ++j) c += l2(q.data() + i * d, db.data() + j * d, d) <= rp.radius;
      CHECK(counts[i] == c);
    }
    std::vector<idx_t> lab(n);
    std::vector<float> md(n);
    ec::kmeans_assign(ec::Metric::L2, q.data(), 10, db.data(), n, d, lab.data(), md.data(), 0, cancel);
    for (idx_t i = 0; i < n; ++i) {
      idx_t best = 0;
      for (idx_t c = 1; c < 10; ++c)
        if (l2(db.data() + i * d, q.data() + c * d, d) < l2(db.data() + i * d, q.data() + best * d, d)) best = c;
      CHECK(lab[i] == best);
    }
    ec::DbscanParams dp;
    dp.eps = std::sqrt(double(d));
    dp.min_samples = 5;
    ec::DbscanResult dr;
    ec::dbscan_fit(dp, db.data(), n, d, dr, cancel);
    for (idx_t i = 0; i < n; ++i) {
      idx_t c = 0;
      for (idx_t j = 0; j < n; ++j) c += l2(db.data() + i * d, db.data() + j * d, d) <= dp.eps * dp.eps;
      CHECK(dr.counts[i] == c);
    }
  }
  // Tile epilogue primitives of the kernel set in use (EMBEDCLUSTER_ISA picks it), against
  // plain loops: row_min2 (minimum, an index of it, second smallest with repeats) and the
  // fixed-point accumulation, on rows with repeated values and every tail length.
  {
    const ec::KernelSet& ks = ec::kernels();
    std::uniform_int_distribution<int> small(-4, 4);
    for (idx_t n = 1; n <= 140; ++n) {
      std::vector<float> c(n), add(n);
      for (idx_t j = 0; j < n; ++j) {
        c[j] = float(small(gen));
        add[j] = float(small(gen));
      }
      idx_t arg = -1;
      float second = 0.0f;
      const float m = ks.row_min2(c.data(), add.data(), -2.0f, n, &arg, &second);
      std::vector<float> v(n);
      for (idx_t j = 0; j < n; ++j) v[j] = add[j] - 2.0f * c[j];
      std::vector<float> sorted = v;
      std::sort(sorted.begin(), sorted.end());
      CHECK(m == sorted[0]);
      CHECK(arg >= 0 && arg < n && v[arg] == m);
      CHECK(second == (n > 1 ? sorted[1] : std::numeric_limits<float>::infinity()));
    }
    for (idx_t d : {1, 7, 8, 9, 33}) {
      std::vector<float> x(d);
      std::vector<double> qs(d);
      for (idx_t f = 0; f < d; ++f) {
        x[f] = N(gen);
        qs[f] = std::ldexp(1.0, 40 + int(f % 5));
      }
      std::vector<std::uint64_t> a(d, 5), b(d, 5);
      ks.accum(x.data(), d, 0.75, qs.data(), false, a.data());
      ec::accum_generic(x.data(), d, 0.75, qs.data(), false, b.data());
      CHECK(a == b);
      ks.accum(x.data(), d, 0.75, qs.data(), true, a.data());
      for (idx_t f = 0; f < d; ++f) CHECK(a[f] == 5);
    }
  }
  std::printf("%s\n", failures ? "core tests FAILED" : "core tests passed");
  return failures ? 1 : 0;
}
