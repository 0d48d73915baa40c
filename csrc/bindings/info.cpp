// Bindings that describe and steer this build: build information, kernel sets, tile rates.
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>

#include "../core/engine.hpp"
#include "../core/kernel_choice.hpp"
#include "common.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef EMBEDCLUSTER_VERSION
#define EMBEDCLUSTER_VERSION "0.0.0"
#endif

namespace ecpy {
namespace {

/// A JSON-ready dict (the CLI prints it): the keys are listed in _core.pyi's BuildInfo.
py::dict build_info() {
  py::dict d;
  d["version"] = EMBEDCLUSTER_VERSION;
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = _OPENMP;
  d["max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["max_threads"] = 1;
#endif
#ifdef EMBEDCLUSTER_WITH_CUDA
  d["cuda_compiled"] = true;
#else
  d["cuda_compiled"] = false;
#endif
#ifdef EMBEDCLUSTER_BUILD_FLAGS
  d["build_flags"] = EMBEDCLUSTER_BUILD_FLAGS;
#endif
#ifdef EMBEDCLUSTER_NATIVE_ARCH
  d["march_native"] = true;
#else
  d["march_native"] = false;
#endif
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#endif
  d["kernels_available"] = ec::available_kernels();
  d["kernels_active"] = std::string(ec::kernels().name);
  py::list feats;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) feats.append("sse4.2");
  if (__builtin_cpu_supports("avx")) feats.append("avx");
  if (__builtin_cpu_supports("avx2")) feats.append("avx2");
  if (__builtin_cpu_supports("fma")) feats.append("fma");
  if (__builtin_cpu_supports("avx512f")) feats.append("avx512f");
  if (__builtin_cpu_supports("avx512bw")) feats.append("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) feats.append("avx512vl");
  if (__builtin_cpu_supports("avx512bf16")) feats.append("avx512bf16");
  if (__builtin_cpu_supports("amx-tile")) feats.append("amx-tile");
  if (__builtin_cpu_supports("amx-bf16")) feats.append("amx-bf16");
#endif
  d["cpu_features"] = feats;
  return d;
}

ec::TileRate tile_rate(long long rows, long long cols, long long d, const std::string& precision, int n_threads) {
  const ec::KernelSet* ks = kernels_of(precision);
  ec::TileRate r;
  run_native([&](ec::Cancel&) { r = ec::tile_product_rate(rows, cols, d, ks, ec::resolve_threads(n_threads)); });
  return r;
}

/// The products C = A . B^T of one kernel set, named (test hook): B packed in the set's panels,
/// A packed (gemm) or, with `gathered`, given as row pointers (gemm_rows; pack_rows words for
/// bf16 sets).
std::vector<float> kernel_product_of(const ec::KernelSet& ks, const Mat& a, const Mat& b, bool gathered) {
  const idx_t m = a.rows, n = b.rows, d = a.cols, depth = ks.depth(d);
  const idx_t m_pad = ec::round_up(m, ks.mr), n_pad = ec::round_up(n, ks.nr);
  ec::AlignedBuffer<float> ap(static_cast<std::size_t>(m_pad * depth)), bp(static_cast<std::size_t>(n_pad * depth));
  std::vector<float> c(static_cast<std::size_t>(m_pad * n_pad)), out(static_cast<std::size_t>(m * n));
  ks.pack(b.data, d, nullptr, nullptr, n, d, ks.nr, bp.data());
  if (gathered) {
    if (ks.per_word != 1) ks.pack_rows(a.data, m, d, ap.data());
    const float* words = ks.per_word == 1 ? a.data : ap.data();
    std::vector<const float*> ptrs(static_cast<std::size_t>(m_pad));
    for (idx_t i = 0; i < m_pad; ++i) ptrs[i] = words + std::min(i, m - 1) * depth;
    ks.gemm_rows(ptrs.data(), bp.data(), m_pad, n_pad, depth, c.data(), n_pad);
  } else {
    ks.pack(a.data, d, nullptr, nullptr, m, d, ks.mr, ap.data());
    ks.gemm(ap.data(), bp.data(), m_pad, n_pad, depth, c.data(), n_pad);
  }
  for (idx_t i = 0; i < m; ++i) std::copy(c.begin() + i * n_pad, c.begin() + i * n_pad + n, out.begin() + i * n);
  return out;
}

py::array_t<float> kernel_product(const std::string& name, const py::array& a_in, const py::array& b_in, bool gathered) {
  const Mat a = as_matrix(a_in, "a"), b = as_matrix(b_in, "b");
  same_features(b, a);
  if (a.rows < 1 || b.rows < 1 || a.cols < 1) throw std::invalid_argument("a and b need at least one row and column");
  const ec::KernelSet& ks = ec::admitted_kernel(name, "_kernel_product");
  if (gathered && !ks.gemm_rows)
    throw std::invalid_argument("kernel set '" + name + "' has no gemm_rows (gathered=True)");
  std::vector<float> c;
  without_gil([&] { c = kernel_product_of(ks, a, b, gathered); });
  return to_array(std::move(c)).reshape({static_cast<py::ssize_t>(a.rows), static_cast<py::ssize_t>(b.rows)});
}

/// One core's AMX tdpbf16ps rate (GFLOP/s); raises where the build or the CPU has no AMX.
double amx_tile_peak(long long iterations) {
  if (iterations < 1) throw std::invalid_argument("iterations must be >= 1");
#if defined(EC_HAVE_AMX_KERNELS) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16"))
    throw std::runtime_error("this CPU has no AMX (lscpu: amx_tile, amx_bf16)");
  double r = 0.0;
  without_gil([&] { r = ec::amx_tile_peak_gflops(iterations); });
  return r;
#else
  throw std::runtime_error("this build has no AMX kernels (the compiler refused -mamx-tile -mamx-bf16)");
#endif
}

py::dict to_dict(const ec::SelfTestResult& t) {
  py::dict e;
  e["name"] = t.name;
  e["passed"] = t.passed;
  e["worst_error_ratio"] = t.worst_ratio;
  e["failure"] = t.failure;
  return e;
}

py::dict to_dict(const ec::KernelRate& r) {
  py::dict e;
  e["name"] = r.name;
  e["ns_per_tile"] = r.ns_per_tile;
  e["gflops"] = r.gflops;
  e["from_strip"] = r.from_strip;
  return e;
}

py::dict to_dict(const ec::KernelChoiceReport& c);

template <class T>
py::list dicts(const std::vector<T>& items) {
  py::list out;
  for (const auto& item : items) out.append(to_dict(item));
  return out;
}

py::dict to_dict(const ec::KernelChoiceReport& c) {
  py::dict e;
  e["family"] = c.family;
  e["d"] = c.d;
  e["tile"] = py::make_tuple(c.rows, c.cols);
  e["chosen"] = c.chosen;
  e["rates"] = dicts(c.rates);
  return e;
}

/// The self-tests and the choices by measurement (after measuring every family at `d` when d > 0).
py::dict kernel_choice(long long d) {
  if (d < 0) throw std::invalid_argument("d=" + std::to_string(d) + " should be >= 0");
  py::dict out;
  run_native([&](ec::Cancel&) {
    if (d > 0 && !ec::forced_kernels())
      for (auto f : {ec::KernelFamily::kmeans, ec::KernelFamily::knn, ec::KernelFamily::dbscan}) ec::kernels_for(f, d);
  });
  const ec::KernelSet* forced = ec::forced_kernels();
  out["forced"] = forced ? py::object(py::str(forced->name)) : py::object(py::none());
  out["manual_only"] = ec::manual_only_kernels();
  out["self_tests"] = dicts(ec::kernel_self_tests());
  out["families"] = dicts(ec::kernel_choices());
  return out;
}

}  // namespace

void bind_info(py::module_& m) {
  m.def("build_info", &build_info, "Version, compiler, OpenMP, CUDA and kernel sets of this build (a dict).");
  py::class_<ec::TileRate>(m, "TileRate", "What tile_rate returns.")
      .def_readonly("seconds", &ec::TileRate::seconds, "time of the fastest of 3 runs")
      .def_readonly("gflops", &ec::TileRate::gflops, "2 * rows * cols * d / seconds, in GFLOP/s")
      .def_readonly("kernels", &ec::TileRate::kernels, "the kernel set that ran")
      .def("__repr__", [](const ec::TileRate& r) {
        return "TileRate(seconds=" + std::string(py::repr(py::float_(r.seconds))) + ", gflops=" +
               std::string(py::repr(py::float_(r.gflops))) + ", kernels='" + r.kernels + "')";
      });
  m.def("tile_rate", &tile_rate, py::arg("rows"), py::arg("cols"), py::arg("d"), py::arg("precision") = "auto",
        py::arg("n_threads") = 0,
        "Benchmark helper: GFLOP/s of the tile products alone (pack + multiply, no epilogue) for rows x cols "
        "products of dimension d on random data; returns a TileRate.");
  m.def("select_kernels", [](const std::string& name) { ec::select_kernels(name); }, py::arg("name"),
        "Force a kernel set for this process: a name from build_info()['kernels_available'], 'amx' (CPUs with "
        "AMX; never chosen automatically), 'amx-model' (a slow scalar model of the AMX set, for tests), or 'auto': "
        "each operation family uses the admitted set measured fastest.");
  m.def("kernel_choice", &kernel_choice, py::arg("d") = 0,
        "The kernel sets' self-tests and the choice by measurement per operation family (a dict; keys in "
        "_core.pyi's KernelChoice). d > 0 first measures the k-means, kNN and DBSCAN tiles at depth d "
        "(unless a set is forced).");
  m.def("kernel_warnings", [] { return ec::kernel_warnings(); },
        "One message per kernel set that failed its self-test and is disabled (empty when all passed).");
  m.def("active_kernels", [] { return std::string(ec::kernels().name); },
        "Name of the kernel set in use: the forced one, else the one measured fastest for plain tile products "
        "at d=384 (each family's own choice: kernel_choice()).");
  m.def("_kernel_product", &kernel_product, py::arg("name"), py::arg("a"), py::arg("b"), py::arg("gathered") = false,
        "Test hook: a @ b.T (float32 2-D arrays) by the named kernel set's packing and tile product "
        "(gathered=True: gemm_rows on row pointers).");
  m.def("_amx_tile_peak", &amx_tile_peak, py::arg("iterations"),
        "Benchmark helper: one core's AMX tdpbf16ps rate in GFLOP/s (4 x iterations tile products); raises "
        "RuntimeError without AMX.");
  m.attr("__version__") = EMBEDCLUSTER_VERSION;
}

}  // namespace ecpy
