// Bindings that describe and steer this build: build information, kernel sets, tile rates.
#include <pybind11/stl.h>

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
        "Force a kernel set for this process (a name from build_info()['kernels_available']), or 'auto': "
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
  m.attr("__version__") = EMBEDCLUSTER_VERSION;
}

}  // namespace ecpy
