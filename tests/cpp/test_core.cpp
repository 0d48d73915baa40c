// C++ tests of the core without Python: kNN, radius counts, k-means assignment and DBSCAN counts
// against brute force, and the kernels' building blocks against their definitions. Built with
// -DEMBEDCLUSTER_BUILD_TESTS=ON (also under the sanitizers); ctest runs each TEST_CASE on its own.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dbscan.hpp"
#include "core/dbscan/bounds.hpp"
#include "core/kernel_choice.hpp"
#include "core/kernels.hpp"
#include "core/kmeans.hpp"
#include "core/knn.hpp"
#include "core/tile_driver.hpp"
#include "check.hpp"

using ec::idx_t;

static double l2(const float* a, const float* b, idx_t d) {
  double s = 0;
  for (idx_t k = 0; k < d; ++k) s += (double(a[k]) - b[k]) * (double(a[k]) - b[k]);
  return s;
}

// Random database and query rows (standard normal) for the brute-force comparisons.
struct Sets {
  std::vector<float> db, q;
};
static Sets random_sets(std::mt19937& gen, idx_t n, idx_t nq, idx_t d) {
  std::normal_distribution<float> N(0.0f, 1.0f);
  Sets s{std::vector<float>(n * d), std::vector<float>(nq * d)};
  for (auto& v : s.db) v = N(gen);
  for (auto& v : s.q) v = N(gen);
  return s;
}
static const idx_t kN = 500, kNq = 60;

// Runs check(s, d, cancel) on random database and query sets of dimensions 1, 3 and 97 (the
// same seed for every case).
template <class Check>
static void for_each_random_set(Check&& check) {
  std::mt19937 gen(7);
  for (idx_t d : {1, 3, 97}) {
    const Sets s = random_sets(gen, kN, kNq, d);
    ec::Cancel cancel;
    check(s, d, cancel);
  }
}

// Exact k nearest neighbours: the indices of a sorted brute force.
TEST_CASE(knn_search_matches_brute_force) {
  for_each_random_set([](const Sets& s, idx_t d, ec::Cancel& cancel) {
    const int k = 7;
    std::vector<float> dist(kNq * k);
    std::vector<idx_t> idx(kNq * k);
    ec::KnnParams p;
    p.k = k;
    ec::knn_search(p, s.db.data(), kN, s.q.data(), kNq, d, dist.data(), idx.data(), cancel);
    for (idx_t i = 0; i < kNq; ++i) {
      std::vector<std::pair<double, idx_t>> all;
      for (idx_t j = 0; j < kN; ++j) all.emplace_back(l2(s.q.data() + i * d, s.db.data() + j * d, d), j);
      std::sort(all.begin(), all.end());
      for (int t = 0; t < k; ++t) CHECK(idx[i * k + t] == all[t].second);
    }
  });
}

// Radius counts (the radius is a squared distance, inclusive) against brute force.
TEST_CASE(radius_count_matches_brute_force) {
  for_each_random_set([](const Sets& s, idx_t d, ec::Cancel& cancel) {
    ec::RadiusParams rp;
    rp.radius = d;  // about half the pairs
    std::vector<idx_t> counts(kNq);
    ec::radius_count(rp, s.db.data(), kN, s.q.data(), kNq, d, counts.data(), cancel);
    for (idx_t i = 0; i < kNq; ++i) {
      idx_t c = 0;
      for (idx_t j = 0; j < kN; ++j) c += l2(s.q.data() + i * d, s.db.data() + j * d, d) <= rp.radius;
      CHECK(counts[i] == c);
    }
  });
}

// k-means assignment: each row's nearest of 10 centres, ties to the lower index.
TEST_CASE(kmeans_assign_matches_brute_force) {
  for_each_random_set([](const Sets& s, idx_t d, ec::Cancel& cancel) {
    std::vector<idx_t> lab(kN);
    std::vector<float> md(kN);
    ec::kmeans_assign(ec::Metric::L2, s.q.data(), 10, s.db.data(), kN, d, lab.data(), md.data(), 0, cancel);
    for (idx_t i = 0; i < kN; ++i) {
      idx_t best = 0;
      for (idx_t c = 1; c < 10; ++c)
        if (l2(s.db.data() + i * d, s.q.data() + c * d, d) < l2(s.db.data() + i * d, s.q.data() + best * d, d)) best = c;
      CHECK(lab[i] == best);
    }
  });
}

// DBSCAN's neighbour counts within eps (inclusive, the point itself counted).
TEST_CASE(dbscan_counts_match_brute_force) {
  for_each_random_set([](const Sets& s, idx_t d, ec::Cancel& cancel) {
    ec::DbscanParams dp;
    dp.eps = std::sqrt(double(d));
    dp.min_samples = 5;
    ec::DbscanResult dr;
    ec::dbscan_fit(dp, s.db.data(), kN, d, dr, cancel);
    for (idx_t i = 0; i < kN; ++i) {
      idx_t c = 0;
      for (idx_t j = 0; j < kN; ++j) c += l2(s.db.data() + i * d, s.db.data() + j * d, d) <= dp.eps * dp.eps;
      CHECK(dr.counts[i] == c);
    }
  });
}

// memory_limit's invariant (0, or a finite number of bytes >= 1) is asserted by the core on every
// entry point, naming the value; a fraction of a byte is not "no limit".
TEST_CASE(memory_limit_invariant_is_asserted_by_the_core) {
  std::mt19937 gen(7);
  const Sets s = random_sets(gen, kN, kNq, 3);
  for (double bad : {0.5, -1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    ec::Cancel cancel;
    std::vector<float> dist(kNq);
    std::vector<idx_t> idx(kNq);
    ec::KnnParams p;
    p.k = 1;
    p.memory_limit = bad;
    std::string message;
    try {
      ec::knn_search(p, s.db.data(), kN, s.q.data(), kNq, 3, dist.data(), idx.data(), cancel);
    } catch (const std::invalid_argument& e) {
      message = e.what();
    }
    CHECK(message.rfind("memory_limit=", 0) == 0 && message.find("should be None, 0 (no limit)") != std::string::npos);
    ec::DbscanParams dp;
    dp.eps = 1.0;
    dp.memory_limit = bad;
    ec::DbscanResult dr;
    bool dbscan_rejects = false;
    try {
      ec::dbscan_fit(dp, s.db.data(), kN, 3, dr, cancel);
    } catch (const std::invalid_argument&) {
      dbscan_rejects = true;
    }
    CHECK(dbscan_rejects);
  }
  std::string half;
  try {
    ec::check_memory_limit(0.5);
  } catch (const std::invalid_argument& e) {
    half = e.what();
  }
  CHECK(half == "memory_limit=0.5 should be None, 0 (no limit) or a number of bytes >= 1");
  ec::check_memory_limit(0.0);  // no limit
  ec::check_memory_limit(1.0);
}

// Tile epilogue primitives of the kernel set in use (EMBEDCLUSTER_ISA picks it), against
// plain loops: row_min2 (minimum, an index of it, second smallest with repeats) and the
// fixed-point accumulation, on rows with repeated values and every tail length.
TEST_CASE(tile_epilogue_primitives) {
  std::mt19937 gen(7);
  std::normal_distribution<float> N(0.0f, 1.0f);
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

// DBSCAN's inner-product bounds never exceed the true smallest squared distance to a tile,
// and equal it where Cauchy-Schwarz is tight (so a bound too strong by any factor fails):
//  - tile-centre bound: the tile holds y0 = c - r c/||c||, its shortest row, and x = -s c/||c||
//    points along y0 - c;
//  - own-centre bound: x = c_a + y_top, where y_top has the largest y . c_a in the tile, so
//    x - c_a is parallel to y_top and as long as it.
TEST_CASE(dbscan_inner_product_bounds) {
  std::mt19937 gen(7);
  std::normal_distribution<float> N(0.0f, 1.0f);
  std::uniform_real_distribution<double> U(0.2, 2.0);
  auto dot = [](const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (std::size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
    return s;
  };
  auto sqdist = [](const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (std::size_t k = 0; k < a.size(); ++k) s += (a[k] - b[k]) * (a[k] - b[k]);
    return s;
  };
  for (int trial = 0; trial < 300; ++trial) {
    const idx_t d = trial % 3 == 0 ? 2 : (trial % 3 == 1 ? 8 : 64);
    const bool tight = trial % 2 == 0;
    std::vector<double> c(d), ca(d);
    for (auto& v : c) v = N(gen);
    for (auto& v : ca) v = N(gen) * 0.5;
    const double cn = std::sqrt(dot(c, c)), r = cn * U(gen) / 2.5;  // r < ||c||
    std::vector<std::vector<double>> ys;
    for (int j = 0; j < 20; ++j) {
      std::vector<double> v(d);
      for (auto& e : v) e = N(gen);
      const double vn = std::sqrt(dot(v, v));
      std::vector<double> y(d);
      for (idx_t k = 0; k < d; ++k) y[k] = c[k] + r * v[k] / vn * (j % 2 ? 1.0 : U(gen) / 2.0);
      ys.push_back(y);
    }
    std::vector<double> y0(d), x(d);
    for (idx_t k = 0; k < d; ++k) y0[k] = c[k] - r * c[k] / cn;
    ys.push_back(y0);
    double r_tile = 0, y_min = 1e300, y_max = 0, hi = -1e300;
    std::size_t top = 0;
    for (std::size_t j = 0; j < ys.size(); ++j) {
      r_tile = std::max(r_tile, std::sqrt(sqdist(ys[j], c)));
      y_min = std::min(y_min, std::sqrt(dot(ys[j], ys[j])));
      y_max = std::max(y_max, std::sqrt(dot(ys[j], ys[j])));
      if (dot(ys[j], ca) > hi) hi = dot(ys[j], ca), top = j;
    }
    auto true_min = [&](const std::vector<double>& xv) {
      double best = 1e300;
      for (const auto& y : ys) best = std::min(best, sqdist(xv, y));
      return best;
    };
    const double s = U(gen);
    for (idx_t k = 0; k < d; ++k) x[k] = tight ? -s * c[k] / cn : c[k] + N(gen);
    const double lb1 = ec::sq_lower_by_tile_centre(dot(x, x), std::sqrt(dot(x, x)), dot(x, c), r_tile, y_min);
    const double t1 = true_min(x);
    CHECK(lb1 <= t1 + 1e-9 * (1 + dot(x, x)));
    if (tight) CHECK(std::fabs(lb1 - t1) <= 1e-9 * (1 + dot(x, x)));
    for (idx_t k = 0; k < d; ++k) x[k] = tight ? ca[k] + ys[top][k] : ca[k] + N(gen) * 0.4;
    const double lb2 = ec::sq_lower_by_own_centre(dot(x, x), std::sqrt(sqdist(x, ca)), y_min, y_max, hi);
    const double t2 = true_min(x);
    CHECK(lb2 <= t2 + 1e-9 * (1 + dot(x, x)));
    if (tight) CHECK(std::fabs(lb2 - t2) <= 1e-9 * (1 + dot(x, x)));
  }
}

// input_error_sq of a set that rounds its inputs against the portable loop (same squares,
// sums in another order), with and without a scale, on every tail length; and zero for
// values bf16 holds exactly.
TEST_CASE(input_error_sq) {
  std::mt19937 gen(7);
  std::normal_distribution<float> N(0.0f, 1.0f);
  const ec::KernelSet& ks = ec::kernels();
  if (ks.input_error_sq) {
    for (idx_t d : {1, 7, 15, 16, 17, 33, 384}) {
      std::vector<float> x(d);
      for (auto& v : x) v = N(gen);
      for (float sc : {1.0f, 0.37f}) {
        const double a = ks.input_error_sq(x.data(), d, sc), b = ec::input_error_sq_generic(x.data(), d, sc);
        CHECK(std::fabs(a - b) <= 1e-12 * b);
        CHECK(b > 0.0);
      }
      std::vector<float> exact(d, 1.5f);
      CHECK(ks.input_error_sq(exact.data(), d, 1.0f) == 0.0);
    }
  }
}

// gemm_rows (A from row pointers, no packing) against pack + gemm: bit-identical products,
// with gathered and repeated rows, partial micro-tiles and depths past one cache block; and
// pack_rows against a one-row-wide pack.
TEST_CASE(gemm_rows_equals_pack_and_gemm) {
  std::mt19937 gen(7);
  std::normal_distribution<float> N(0.0f, 1.0f);
  const ec::KernelSet& ks = ec::kernels();
  if (ks.gemm_rows) {
    std::uniform_int_distribution<idx_t> pick(0, 59);
    for (idx_t d : {1, 7, 33, 384, 1100}) {
      const idx_t depth = ks.depth(d);
      std::vector<float> src(60 * d);
      for (auto& v : src) v = N(gen);
      std::vector<float> words(ks.per_word == 1 ? 0 : 60 * depth);
      if (ks.per_word != 1) {
        ks.pack_rows(src.data(), 60, d, words.data());
        ec::AlignedBuffer<float> one(static_cast<std::size_t>(60 * depth));
        ks.pack(src.data(), d, nullptr, nullptr, 60, d, 1, one.data());
        for (idx_t i = 0; i < 60 * depth; ++i) CHECK(std::memcmp(&words[i], one.data() + i, 4) == 0);
      }
      const float* base = ks.per_word == 1 ? src.data() : words.data();
      for (idx_t m : {1, 5, 12, 13, 40}) {
        for (idx_t nb : {3, 32, 70}) {
          const idx_t n_pad = ec::round_up(nb, ks.nr), m_pad = ec::round_up(m, ks.mr);
          std::vector<idx_t> rows(m), brows(nb);
          for (auto& r : rows) r = pick(gen);
          for (auto& r : brows) r = pick(gen);
          ec::AlignedBuffer<float> a(static_cast<std::size_t>(m_pad * depth)), b(static_cast<std::size_t>(n_pad * depth));
          ks.pack(src.data(), d, rows.data(), nullptr, m, d, ks.mr, a.data());
          ks.pack(src.data(), d, brows.data(), nullptr, nb, d, ks.nr, b.data());
          std::vector<float> c1(m_pad * n_pad), c2(m_pad * n_pad);
          ks.gemm(a.data(), b.data(), m_pad, n_pad, depth, c1.data(), n_pad);
          std::vector<const float*> ptrs(m_pad);
          for (idx_t i = 0; i < m_pad; ++i) ptrs[i] = base + rows[std::min(i, m - 1)] * depth;
          ks.gemm_rows(ptrs.data(), b.data(), m_pad, n_pad, depth, c2.data(), n_pad);
          for (idx_t i = 0; i < m; ++i)
            for (idx_t j = 0; j < n_pad; ++j) CHECK(std::memcmp(&c1[i * n_pad + j], &c2[i * n_pad + j], 4) == 0);
        }
      }
    }
  }
}

// pack against its definition (a one-row-wide pack gives each row's words in order): panel
// widths of the A and B sides and others, gathered rows, full and partial panels, depths with
// and without a tail.
TEST_CASE(pack_matches_its_definition) {
  std::mt19937 gen(7);
  std::normal_distribution<float> N(0.0f, 1.0f);
  const ec::KernelSet& ks = ec::kernels();
  std::uniform_int_distribution<idx_t> pick(0, 99);
  for (idx_t d : {1, 16, 17, 32, 46, 384}) {
    const idx_t depth = ks.depth(d);
    std::vector<float> src(100 * d);
    for (auto& v : src) v = N(gen);
    ec::AlignedBuffer<float> one(static_cast<std::size_t>(100 * depth));
    ks.pack(src.data(), d, nullptr, nullptr, 100, d, 1, one.data());
    for (int width : {4, 8, 12, 16, 32, 6}) {
      for (idx_t m : {4, 12, 37, 64}) {
        std::vector<idx_t> rows(m);
        for (auto& r : rows) r = pick(gen);
        const idx_t m_pad = ec::round_up(m, width);
        ec::AlignedBuffer<float> a(static_cast<std::size_t>(m_pad * depth));
        ks.pack(src.data(), d, rows.data(), nullptr, m, d, width, a.data());
        for (idx_t i = 0; i < m_pad; ++i)
          for (idx_t q = 0; q < depth; ++q) {
            const float* got = a.data() + (i / width) * depth * width + q * width + i % width;
            const std::uint32_t zero = 0;
            const void* want = i < m ? static_cast<const void*>(one.data() + rows[i] * depth + q) : &zero;
            CHECK(std::memcmp(got, want, 4) == 0);
          }
      }
    }
  }
}

// The AMX set's A-panel transpose (AVX-512 only, so it runs without AMX) against its
// definition, on depths with and without a 16-word tail.
TEST_CASE(amx_transpose_matches_its_definition) {
  std::mt19937 gen(11);
  std::uniform_int_distribution<std::uint32_t> bits;
#if defined(EC_HAVE_AMX_KERNELS) && (defined(__x86_64__) || defined(__i386__))
  if (__builtin_cpu_supports("avx512f")) {
    for (idx_t depth : {1, 15, 16, 17, 48, 192, 550}) {
      const idx_t kd = ec::round_up(depth, 16);
      std::vector<std::uint32_t> panel(32 * depth), out(32 * kd, 0xDEADBEEFu);
      for (auto& w : panel) w = bits(gen);
      ec::amx_transpose_panel(panel.data(), depth, out.data(), kd);
      for (idx_t r = 0; r < 32; ++r)
        for (idx_t q = 0; q < kd; ++q) CHECK(out[r * kd + q] == (q < depth ? panel[q * 32 + r] : 0u));
    }
  }
#endif
}

// The portable bf16 packing of the AMX model against the avx512bf16 packing that the real AMX
// set uses: the same words, gathered, scaled or not, panels and row-major rows.
TEST_CASE(amx_model_packs_like_avx512bf16) {
  std::mt19937 gen(11);
#if defined(EC_HAVE_AVX512BF16_KERNELS) && (defined(__x86_64__) || defined(__i386__))
  if (__builtin_cpu_supports("avx512bf16")) {
    std::normal_distribution<float> N(0.0f, 1.0f);
    const ec::KernelSet& model = ec::amx_model_kernels();
    const ec::KernelSet& bf = ec::avx512bf16_kernels();
    for (idx_t d : {1, 16, 17, 33, 384}) {
      const idx_t depth = (d + 1) / 2;
      std::vector<float> src(70 * d), scale(70);
      for (auto& v : src) v = N(gen);
      for (auto& v : scale) v = 0.5f + std::fabs(N(gen));
      std::vector<idx_t> rows(70);
      for (idx_t i = 0; i < 70; ++i) rows[i] = (i * 37) % 70;
      for (bool scaled : {false, true})
        for (int width : {1, 32}) {
          const idx_t words = ec::round_up(70, width) * depth;
          ec::AlignedBuffer<float> x(static_cast<std::size_t>(words)), y(static_cast<std::size_t>(words));
          const float* sc = scaled ? scale.data() : nullptr;
          model.pack(src.data(), d, rows.data(), sc, 70, d, width, x.data());
          bf.pack(src.data(), d, rows.data(), sc, 70, d, width, y.data());
          CHECK(std::memcmp(x.data(), y.data(), static_cast<std::size_t>(words) * 4) == 0);
        }
      ec::AlignedBuffer<float> x(static_cast<std::size_t>(70 * depth)), y(static_cast<std::size_t>(70 * depth));
      model.pack_rows(src.data(), 70, d, x.data());
      bf.pack_rows(src.data(), 70, d, y.data());
      CHECK(std::memcmp(x.data(), y.data(), static_cast<std::size_t>(70 * depth) * 4) == 0);
    }
  }
#endif
}

// Exceptions never cross a parallel region: parallel_for (even blocks and fixed chunks)
// rethrows the first one after the join, and the other iterations stop early.
TEST_CASE(parallel_for_rethrows_after_the_join) {
  std::mt19937 gen(7);
  std::normal_distribution<float> N(0.0f, 1.0f);
  for (int chunk : {0, 3}) {
    std::vector<int> seen(1000, 0);
    bool caught = false;
    try {
      ec::parallel_for(4, 1000, [&](idx_t i) {
        seen[i] = 1;
        if (i == 417) throw std::bad_alloc();
      }, chunk);
    } catch (const std::bad_alloc&) {
      caught = true;
    }
    CHECK(caught && seen[417] == 1);
  }
}

// A radius search whose results outgrow memory_limit fails with MemoryLimitError (before
// exceeding it), and ensure_threads accepts what it can start.
TEST_CASE(radius_results_are_bounded_and_threads_checked) {
  std::mt19937 gen(7);
  std::normal_distribution<float> N(0.0f, 1.0f);
  const idx_t n = 3000, d = 4;
  std::vector<float> x(n * d);
  for (auto& v : x) v = N(gen);
  ec::RadiusParams rp;
  rp.radius = 1e9;  // every pair: 9e6 neighbours, ~100 MiB as lists
  rp.memory_limit = 8.0 * 1048576.0;
  ec::RadiusResult rr;
  ec::Cancel cancel;
  bool limited = false;
  try {
    ec::radius_search(rp, x.data(), n, x.data(), n, d, rr, cancel);
  } catch (const ec::MemoryLimitError&) {
    limited = true;
  }
  CHECK(limited);
  ec::ensure_threads(8);
  CHECK(ec::resolve_threads(3) == 3);
}
int main(int argc, char** argv) { return ec_test_main(argc, argv); }

// Every supported kernel set passes its self-test (a tile and the epilogue primitives against
// fp64), and each family's choice by measurement is an admitted set that may be chosen
// automatically (never a manual-only one such as amx).
TEST_CASE(kernel_sets_pass_the_self_test_and_the_choice_is_admitted) {
  const auto tests = ec::kernel_self_tests();
  CHECK(tests.size() == ec::supported_kernels().size());
  for (const auto& t : tests) {
    CHECK(t.passed);
    CHECK(t.failure.empty());
    CHECK(t.worst_ratio < 1.0);
  }
  CHECK(ec::kernel_warnings().empty());
  CHECK(ec::available_kernels() == ec::supported_kernels());
  const auto& manual = ec::manual_only_kernels();
  for (auto family : {ec::KernelFamily::kmeans, ec::KernelFamily::knn, ec::KernelFamily::dbscan}) {
    const ec::KernelSet& ks = ec::kernels_for(family, 96);
    CHECK(ec::kernel_admitted(ks));
    if (!ec::forced_kernels()) CHECK(std::find(manual.begin(), manual.end(), std::string(ks.name)) == manual.end());
  }
  CHECK(ec::fp32_kernels().per_word == 1);
}
