// Which kernel set runs: every set the CPU supports is admitted only after a self-test (one
// small tile and the epilogue primitives against a scalar fp64 reference, within the set's
// proven error bound), and each operation family uses the admitted set measured fastest on a
// tile of its own shape at the depth of the call. Feature flags alone mislead: AVX-512 BF16
// doubles the fp32 rate on AMD Zen 5 and halves it on Intel, and a hypervisor can report
// instructions it does not run correctly.
#include "kernel_choice.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "engine.hpp"

namespace ec {
namespace {

// ----------------------------------------------------------------------------- self-test

// Odd sizes, so that padding rows and columns and a trailing half bf16 pair are exercised.
constexpr idx_t kTestRows = 23, kTestCols = 37, kTestDepth = 67;

std::vector<float> pseudo_random(idx_t count, std::uint64_t state) {
  std::vector<float> out(static_cast<std::size_t>(count));
  for (auto& v : out) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>(static_cast<double>(state >> 11) * 0x1p-52 - 1.0);
  }
  return out;
}

/// Test hook: EMBEDCLUSTER_SELFTEST_FAIL=<name>[,<name>...] corrupts those sets' self-test tile,
/// so a test can prove the disabling path on a machine whose sets all work.
bool corruption_requested(const char* name) {
  const char* env = std::getenv("EMBEDCLUSTER_SELFTEST_FAIL");
  if (!env) return false;
  const std::string names = std::string(",") + env + ",";
  return names.find(std::string(",") + name + ",") != std::string::npos;
}

std::string describe(const char* what, idx_t i, idx_t j, double got, double want, double bound) {
  return std::string(what) + " [" + std::to_string(i) + ", " + std::to_string(j) + "] = " + format_number(got, 9) +
         ", reference " + format_number(want, 9) + ", allowed error " + format_number(bound, 9);
}

struct TestTile {
  std::vector<float> a, b;         // kTestRows x d and kTestCols x d, row-major
  std::vector<double> anorm, bnorm;
  AlignedBuffer<float> c;          // the set's products, row stride n_pad
  idx_t n_pad = 0;
};

/// Packs both sides, multiplies them, and checks every product against fp64 within the bound.
void check_product(const KernelSet& ks, TestTile& t, SelfTestResult& r) {
  const idx_t m = kTestRows, n = kTestCols, d = kTestDepth, depth = ks.depth(d);
  const idx_t m_pad = round_up(m, ks.mr);
  t.n_pad = round_up(n, ks.nr);
  AlignedBuffer<float> pa(static_cast<std::size_t>(m_pad * depth)), pb(static_cast<std::size_t>(t.n_pad * depth));
  t.c.resize(static_cast<std::size_t>(m_pad * t.n_pad));
  ks.pack(t.a.data(), d, nullptr, nullptr, m, d, ks.mr, pa.data());
  ks.pack(t.b.data(), d, nullptr, nullptr, n, d, ks.nr, pb.data());
  ks.gemm(pa.data(), pb.data(), m_pad, t.n_pad, depth, t.c.data(), t.n_pad);
  if (ks.gemm_rows && (ks.per_word == 1 || ks.pack_rows)) {  // must equal the packed product bit for bit
    std::vector<float> words(static_cast<std::size_t>(m * depth)), zero(static_cast<std::size_t>(depth), 0.0f);
    if (ks.per_word == 1)
      words.assign(t.a.begin(), t.a.end());
    else
      ks.pack_rows(t.a.data(), m, d, words.data());
    std::vector<const float*> rows(static_cast<std::size_t>(m_pad), zero.data());
    for (idx_t i = 0; i < m; ++i) rows[i] = words.data() + i * depth;
    AlignedBuffer<float> c2(static_cast<std::size_t>(m_pad * t.n_pad));
    ks.gemm_rows(rows.data(), pb.data(), m_pad, t.n_pad, depth, c2.data(), t.n_pad);
    for (idx_t i = 0; i < m && r.failure.empty(); ++i)
      for (idx_t j = 0; j < n; ++j)
        if (std::memcmp(&c2.data()[i * t.n_pad + j], &t.c.data()[i * t.n_pad + j], sizeof(float)) != 0) {
          r.failure = describe("gemm_rows differs from gemm at", i, j, c2.data()[i * t.n_pad + j],
                               t.c.data()[i * t.n_pad + j], 0.0);
          break;
        }
  }
  if (corruption_requested(ks.name)) t.c.data()[0] += 1.0f;
  const double rel = tile_rel_err(d, ks);
  for (idx_t i = 0; i < m; ++i)
    for (idx_t j = 0; j < n; ++j) {
      double exact = 0.0;
      for (idx_t k = 0; k < d; ++k) exact += static_cast<double>(t.a[i * d + k]) * t.b[j * d + k];
      const double got = t.c.data()[i * t.n_pad + j], bound = rel * t.anorm[i] * t.bnorm[j];
      const double ratio = std::isfinite(got) ? std::fabs(got - exact) / bound : INFINITY;
      r.worst_ratio = std::max(r.worst_ratio, ratio);
      if (!(ratio <= 1.0) && r.failure.empty()) r.failure = describe("tile product", i, j, got, exact, bound);
    }
}

/// row_min, row_min2 and row_filter on the tile's rows against the same values in fp64; the
/// sets may fuse the multiply-add, hence a tolerance of a few units of the values' scale.
void check_epilogue(const KernelSet& ks, const TestTile& t, SelfTestResult& r) {
  const idx_t n = kTestCols;
  std::vector<float> add(static_cast<std::size_t>(n));
  for (idx_t j = 0; j < n; ++j) add[j] = static_cast<float>(t.bnorm[j] * t.bnorm[j]);
  const float mul = -2.0f;
  std::vector<std::int32_t> idx(static_cast<std::size_t>(n));
  std::vector<float> val(static_cast<std::size_t>(n));
  for (idx_t i = 0; i < kTestRows && r.failure.empty(); ++i) {
    const float* c = t.c.data() + i * t.n_pad;
    std::vector<double> v(static_cast<std::size_t>(n));
    double scale = 0.0;
    for (idx_t j = 0; j < n; ++j) {
      v[j] = static_cast<double>(add[j]) + mul * static_cast<double>(c[j]);
      scale = std::max(scale, std::fabs(static_cast<double>(add[j])) + 2.0 * std::fabs(static_cast<double>(c[j])));
    }
    const double tol = scale * 0x1p-20;
    std::vector<double> sorted = v;
    std::sort(sorted.begin(), sorted.end());
    const float got_min = ks.row_min(c, add.data(), mul, n);
    if (!(std::fabs(got_min - sorted[0]) <= tol)) r.failure = describe("row_min of row", i, 0, got_min, sorted[0], tol);
    idx_t arg = -1;
    float second = 0.0f;
    const float got_min2 = ks.row_min2(c, add.data(), mul, n, &arg, &second);
    if (r.failure.empty() && !(arg >= 0 && arg < n && std::fabs(v[arg] - sorted[0]) <= tol &&
                               std::fabs(got_min2 - sorted[0]) <= tol && std::fabs(second - sorted[1]) <= tol))
      r.failure = describe("row_min2 (minimum, second) of row", i, arg, got_min2, sorted[0], tol);
    const double thr = sorted[static_cast<std::size_t>(n / 2)];
    const idx_t count = ks.row_filter(c, add.data(), mul, n, static_cast<float>(thr), idx.data(), val.data());
    std::vector<char> hit(static_cast<std::size_t>(n), 0);
    for (idx_t u = 0; u < count && r.failure.empty(); ++u) {
      const idx_t j = idx[u];
      if (j < 0 || j >= n || hit[j] || !(v[j] <= thr + tol) || !(std::fabs(val[u] - v[j]) <= tol))
        r.failure = describe("row_filter entry of row", i, j, val[u], j >= 0 && j < n ? v[j] : NAN, tol);
      else
        hit[j] = 1;
    }
    for (idx_t j = 0; j < n && r.failure.empty(); ++j)
      if (!hit[j] && v[j] < thr - tol) r.failure = describe("row_filter missed in row", i, j, v[j], thr, tol);
  }
}

/// dot (an fp32 product in every set) within the fp32 bound, and accum equal to the portable one.
void check_dot_accum(const KernelSet& ks, const TestTile& t, SelfTestResult& r) {
  const idx_t d = kTestDepth;
  const double rel = (4.0 * static_cast<double>(d) + 32.0) * 0x1p-24;
  for (idx_t i = 0; i < kTestRows && r.failure.empty(); ++i) {
    const idx_t j = i % kTestCols;
    double exact = 0.0;
    for (idx_t k = 0; k < d; ++k) exact += static_cast<double>(t.a[i * d + k]) * t.b[j * d + k];
    const double got = ks.dot(t.a.data() + i * d, t.b.data() + j * d, d), bound = rel * t.anorm[i] * t.bnorm[j];
    if (!(std::fabs(got - exact) <= bound)) r.failure = describe("dot of rows", i, j, got, exact, bound);
  }
  std::vector<double> qscale(static_cast<std::size_t>(d));
  for (idx_t k = 0; k < d; ++k) qscale[k] = 0x1p40 * (1.0 + static_cast<double>(k) / d);
  std::vector<std::uint64_t> want(static_cast<std::size_t>(d), 7), got(static_cast<std::size_t>(d), 7);
  for (idx_t i = 0; i < kTestRows; ++i) {
    accum_generic(t.a.data() + i * d, d, 1.5, qscale.data(), i % 3 == 2, want.data());
    ks.accum(t.a.data() + i * d, d, 1.5, qscale.data(), i % 3 == 2, got.data());
  }
  if (r.failure.empty() && want != got) r.failure = "accum differs from the portable fixed-point accumulation";
}

SelfTestResult run_self_test(const KernelSet& ks) {
  SelfTestResult r;
  r.name = ks.name;
  TestTile t;
  t.a = pseudo_random(kTestRows * kTestDepth, 0x9E3779B97F4A7C15ull);
  t.b = pseudo_random(kTestCols * kTestDepth, 0xD1B54A32D192ED03ull);
  auto norms = [](const std::vector<float>& x, idx_t rows) {
    std::vector<double> out(static_cast<std::size_t>(rows));
    for (idx_t i = 0; i < rows; ++i) {
      double s = 0.0;
      for (idx_t k = 0; k < kTestDepth; ++k) s += static_cast<double>(x[i * kTestDepth + k]) * x[i * kTestDepth + k];
      out[i] = std::sqrt(s);
    }
    return out;
  };
  t.anorm = norms(t.a, kTestRows);
  t.bnorm = norms(t.b, kTestCols);
  check_product(ks, t, r);
  if (r.failure.empty()) check_epilogue(ks, t, r);
  if (r.failure.empty()) check_dot_accum(ks, t, r);
  r.passed = r.failure.empty();
  return r;
}

std::mutex g_test_mu;
std::vector<SelfTestResult> g_tests;  // one per supported set, filled once
bool g_tested = false;

const std::vector<SelfTestResult>& self_tests_locked() {
  if (!g_tested) {
    for (const auto& name : supported_kernels()) g_tests.push_back(run_self_test(*supported_kernel(name)));
    g_tested = true;
  }
  return g_tests;
}

// ----------------------------------------------------------------------------- measurement

/// A family's tile: the rows of queries packed per tile, the set rows it meets, and its epilogue.
struct FamilyTile {
  idx_t rows, cols;
};

FamilyTile tile_of(KernelFamily family) {
  switch (family) {
    case KernelFamily::dbscan: return {192, 192};  // dbscan/internal.hpp kTile
    default: return {144, 256};                    // k-means and kNN query blocks x set tiles
  }
}

/// Fastest of a few runs of one family's tile with set `ks`, in ns: pack the query rows in the
/// set's format (bf16 sets round them), the product, the family's epilogue per row, and for sets
/// that round their inputs the fp32 dot that narrows each row's wider window. Returns an estimate
/// from a (warm) strip of rows when that already exceeds `give_up_ns` (a set far slower than one
/// measured).
double time_tile_ns(const KernelSet& ks, KernelFamily family, idx_t d, FamilyTile ft, double give_up_ns, bool& from_strip) {
  const idx_t depth = ks.depth(d), m_pad = round_up(ft.rows, ks.mr), n_pad = round_up(ft.cols, ks.nr);
  const std::vector<float> x = pseudo_random(ft.rows * d, 0x2545F4914F6CDD1Dull),
                           y = pseudo_random(ft.cols * d, 0x9E3779B97F4A7C15ull);
  AlignedBuffer<float> pa(static_cast<std::size_t>(m_pad * depth)), pb(static_cast<std::size_t>(n_pad * depth)),
      c(static_cast<std::size_t>(m_pad * n_pad));
  ks.pack(y.data(), d, nullptr, nullptr, ft.cols, d, ks.nr, pb.data());
  std::vector<float> add(static_cast<std::size_t>(n_pad), static_cast<float>(d) / 3.0f), val(static_cast<std::size_t>(n_pad));
  std::vector<std::int32_t> idx(static_cast<std::size_t>(n_pad));
  volatile float sink = 0.0f;  // keeps the work observable
  auto once = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    ks.pack(x.data(), d, nullptr, nullptr, ft.rows, d, ks.mr, pa.data());
    ks.gemm(pa.data(), pb.data(), round_up(ft.rows, ks.mr), n_pad, depth, c.data(), n_pad);
    float acc = 0.0f;
    for (idx_t i = 0; i < ft.rows; ++i) {
      const float* ci = c.data() + i * n_pad;
      if (family == KernelFamily::kmeans) {
        idx_t arg = 0;
        float second = 0.0f;
        acc += ks.row_min2(ci, add.data(), -2.0f, ft.cols, &arg, &second);
      } else if (family != KernelFamily::tile) {
        acc += static_cast<float>(ks.row_filter(ci, add.data(), -2.0f, ft.cols, 0.0f, idx.data(), val.data()));
      }
      if (ks.input_rel > 0.0 && family != KernelFamily::tile) acc += ks.dot(x.data() + i * d, y.data() + i % ft.cols * d, d);
    }
    sink = sink + acc;
    return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
  };
  if (std::isfinite(give_up_ns)) {  // a strip of rows first: a far slower set costs little to rule out
    const idx_t full = ft.rows;
    ft.rows = std::min(full, round_up(full / 8, ks.mr));
    once();  // the first run pays for cold buffers and caches, which would rule out a fast set
    // The faster of two runs: one preempted run must not rule out a competitive set.
    const double strip = std::min(once(), once()) * static_cast<double>(full) / static_cast<double>(ft.rows);
    ft.rows = full;
    from_strip = strip > give_up_ns;
    if (from_strip) return strip;
  }
  once();  // warm-up: caches, clock
  double best = INFINITY;
  for (int rep = 0; rep < 5; ++rep) best = std::min(best, once());
  return best;
}

struct Choice {
  KernelFamily family;
  int bucket;
  bool fp32_only;
  const KernelSet* ks;
  KernelChoiceReport report;
};

std::mutex g_choice_mu;
std::vector<Choice> g_choices;

int depth_bucket(idx_t d) {
  int b = 4;  // depths up to 16 share one bucket
  while ((idx_t{1} << b) < d) ++b;
  return b;
}

const KernelSet& measured_choice(KernelFamily family, idx_t d, bool fp32_only) {
  const idx_t depth = std::max<idx_t>(d, 1);
  const int bucket = depth_bucket(depth);
  std::lock_guard<std::mutex> lock(g_choice_mu);
  for (const auto& c : g_choices)
    if (c.family == family && c.bucket == bucket && c.fp32_only == fp32_only) return *c.ks;
  std::vector<const KernelSet*> candidates;
  const auto& manual = manual_only_kernels();
  for (const auto& name : available_kernels()) {
    const KernelSet* ks = supported_kernel(name);
    if (std::find(manual.begin(), manual.end(), name) == manual.end() && (!fp32_only || ks->per_word == 1))
      candidates.push_back(ks);
  }
  if (candidates.empty()) candidates.push_back(&generic_kernels());
  std::reverse(candidates.begin(), candidates.end());  // presumed fastest first: the slow give up early
  const FamilyTile ft = tile_of(family);
  Choice choice{family, bucket, fp32_only, nullptr, {}};
  choice.report.family = fp32_only ? "fp32" : family_name(family);
  choice.report.d = depth;
  choice.report.rows = ft.rows;
  choice.report.cols = ft.cols;
  double best = INFINITY;
  for (const KernelSet* ks : candidates) {
    bool from_strip = false;
    // Only a set far behind is ruled out by its strip (the portable one, tens of times slower):
    // a strip reuses each packed B row less, so it under-rates fp32 sets more than bf16 ones.
    const double ns = time_tile_ns(*ks, family, depth, ft, 8.0 * best, from_strip);
    choice.report.rates.push_back({ks->name, ns, 2.0 * static_cast<double>(ft.rows * ft.cols * depth) / ns, from_strip});
    if (ns < best) best = ns, choice.ks = ks;
  }
  std::sort(choice.report.rates.begin(), choice.report.rates.end(),
            [](const KernelRate& a, const KernelRate& b) { return a.ns_per_tile < b.ns_per_tile; });
  choice.report.chosen = choice.ks->name;
  g_choices.push_back(choice);
  return *choice.ks;
}

}  // namespace

bool kernel_admitted(const KernelSet& ks) {
  std::lock_guard<std::mutex> lock(g_test_mu);
  const auto& tests = self_tests_locked();
  bool any_passed = false;
  for (const auto& t : tests) any_passed = any_passed || t.passed;
  for (const auto& t : tests)
    if (t.name == ks.name) return t.passed || (!any_passed && t.name == "generic");  // the last resort
  // A set used only when named (amx, the AMX model) is self-tested when it is first named, so
  // that importing the package never runs instructions nobody here could test.
  g_tests.push_back(run_self_test(ks));
  return g_tests.back().passed;
}

std::string kernel_self_test_failure(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_test_mu);
  for (const auto& t : self_tests_locked())
    if (t.name == name) return t.failure;
  return "";
}

std::vector<SelfTestResult> kernel_self_tests() {
  std::lock_guard<std::mutex> lock(g_test_mu);
  return self_tests_locked();
}

std::vector<std::string> kernel_warnings() {
  std::vector<std::string> out;
  for (const auto& t : kernel_self_tests())
    if (!t.passed)
      out.push_back("kernel set '" + t.name + "' failed its self-test on this CPU and is disabled: " + t.failure);
  return out;
}

std::vector<KernelChoiceReport> kernel_choices() {
  std::lock_guard<std::mutex> lock(g_choice_mu);
  std::vector<KernelChoiceReport> out;
  for (const auto& c : g_choices) out.push_back(c.report);
  return out;
}

const std::vector<std::string>& manual_only_kernels() {
  // AMX tiles are proven on an AMX machine before they may be chosen automatically.
  static const std::vector<std::string> names{"amx"};
  return names;
}

const char* family_name(KernelFamily family) {
  switch (family) {
    case KernelFamily::kmeans: return "kmeans";
    case KernelFamily::knn: return "knn";
    case KernelFamily::dbscan: return "dbscan";
    default: return "tile";
  }
}

const KernelSet& kernels_for(KernelFamily family, idx_t d) {
  const KernelSet* forced = forced_kernels();
  return forced ? *forced : measured_choice(family, d, false);
}

const KernelSet& fastest_fp32_kernels() { return measured_choice(KernelFamily::tile, 384, true); }

const KernelSet& fp32_kernels() {
  const KernelSet* forced = forced_kernels();
  return forced ? fp32_variant(*forced) : fastest_fp32_kernels();
}

}  // namespace ec
