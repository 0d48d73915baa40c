// Bindings of exact nearest-neighbour search: top-k, radius search and radius counts.
#include <pybind11/stl.h>

#include <algorithm>

#include "../core/knn.hpp"
#include "common.hpp"

namespace ecpy {
namespace {

py::tuple knn_search(const py::array& db, const py::array& q, int k, const py::object& metric, bool exclude_self,
                     int n_threads, const std::string& precision, const py::object& memory_limit, bool self_join) {
  const Mat D = as_matrix(db, "database"), Q = as_matrix(q, "queries");
  same_features(D, Q);
  ec::KnnParams p;
  p.metric = metric_of(metric);
  p.k = k;
  p.exclude_self = exclude_self;
  p.n_threads = n_threads;
  p.kernel_set = kernels_of(precision);
  p.memory_limit = memory_limit_of(memory_limit);
  p.self_join = self_join ? 1 : 0;
  ec::knn_check_memory(p, D.rows, Q.rows, D.cols);  // before the outputs are allocated
  // The core rejects k < 1; the outputs are only sized here.
  const auto cols = static_cast<py::ssize_t>(std::max(k, 0));
  py::array_t<float> dist({static_cast<py::ssize_t>(Q.rows), cols});
  py::array_t<idx_t> idx({static_cast<py::ssize_t>(Q.rows), cols});
  float* dp = dist.mutable_data();
  idx_t* ip = idx.mutable_data();
  run_native([&](ec::Cancel& c) { ec::knn_search(p, D.data, D.rows, Q.data, Q.rows, D.cols, dp, ip, c); });
  return py::make_tuple(dist, idx);
}

ec::RadiusParams radius_params(double radius, const py::object& metric, bool exclude_self, int n_threads,
                               const std::string& precision, const py::object& memory_limit) {
  ec::RadiusParams p;
  p.memory_limit = memory_limit_of(memory_limit);
  p.metric = metric_of(metric);
  p.radius = radius;
  p.exclude_self = exclude_self;
  p.n_threads = n_threads;
  p.kernel_set = kernels_of(precision);
  return p;
}

py::tuple radius_search(const py::array& db, const py::array& q, double radius, const py::object& metric,
                        bool exclude_self, int n_threads, const std::string& precision,
                        const py::object& memory_limit) {
  const Mat D = as_matrix(db, "database"), Q = as_matrix(q, "queries");
  same_features(D, Q);
  const auto p = radius_params(radius, metric, exclude_self, n_threads, precision, memory_limit);
  ec::RadiusResult r;
  run_native([&](ec::Cancel& c) { ec::radius_search(p, D.data, D.rows, Q.data, Q.rows, D.cols, r, c); });
  return py::make_tuple(to_array(std::move(r.indptr)), to_array(std::move(r.indices)), to_array(std::move(r.dist)));
}

py::array_t<idx_t> radius_count(const py::array& db, const py::array& q, double radius, const py::object& metric,
                                bool exclude_self, int n_threads, const std::string& precision,
                                const py::object& memory_limit) {
  const Mat D = as_matrix(db, "database"), Q = as_matrix(q, "queries");
  same_features(D, Q);
  const auto p = radius_params(radius, metric, exclude_self, n_threads, precision, memory_limit);
  py::array_t<idx_t> out({static_cast<py::ssize_t>(Q.rows)});
  idx_t* op = out.mutable_data();
  run_native([&](ec::Cancel& c) { ec::radius_count(p, D.data, D.rows, Q.data, Q.rows, D.cols, op, c); });
  return out;
}

}  // namespace

void bind_knn(py::module_& m) {
  m.def("knn_search", &knn_search, py::arg("database"), py::arg("queries"), py::arg("k"), py::arg("metric") = "l2",
        py::arg("exclude_self") = false, py::arg("n_threads") = 0, py::arg("precision") = "auto",
        py::arg("memory_limit") = py::none(), py::arg("self_join") = true,
        "Exact k nearest neighbours: (distances float32 (nq, k), indices int64 (nq, k)). "
        "l2 gives squared distances, ip dot products, cosine 1 - cos. When queries is database (the same "
        "array), each pair is computed once (self_join=False forces the one-sided scan; results are identical).");
  m.def("radius_search", &radius_search, py::arg("database"), py::arg("queries"), py::arg("radius"),
        py::arg("metric") = "l2", py::arg("exclude_self") = false, py::arg("n_threads") = 0,
        py::arg("precision") = "auto", py::arg("memory_limit") = py::none(),
        "Neighbours within radius (inclusive) as CSR (indptr, indices, distances); l2 radius is on squared distance. "
        "The results count against memory_limit as they grow: MemoryLimitError when they would exceed it.");
  m.def("radius_count", &radius_count, py::arg("database"), py::arg("queries"), py::arg("radius"),
        py::arg("metric") = "l2", py::arg("exclude_self") = false, py::arg("n_threads") = 0,
        py::arg("precision") = "auto", py::arg("memory_limit") = py::none(),
        "Number of database rows within radius of each query (inclusive).");
}

}  // namespace ecpy
