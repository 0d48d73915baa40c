// Bindings of exact nearest-neighbour search: top-k, radius search and radius counts.
#include <pybind11/stl.h>

#include <algorithm>

#include "../core/knn.hpp"
#include "common.hpp"

namespace ecpy {
namespace {

py::tuple knn_search(const py::array& db, const py::array& q, int k, const py::object& metric, bool exclude_self,
                     int n_threads, const std::string& precision, const py::object& memory_limit, bool self_join,
                     bool exact_values, const py::object& progress) {
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
  py::array_t<double> exact(exact_values ? std::vector<py::ssize_t>{static_cast<py::ssize_t>(Q.rows), cols}
                                          : std::vector<py::ssize_t>{0, 0});
  float* dp = dist.mutable_data();
  idx_t* ip = idx.mutable_data();
  double* ep = exact_values ? exact.mutable_data() : nullptr;
  run_native([&](ec::Cancel& c) { ec::knn_search(p, D.data, D.rows, Q.data, Q.rows, D.cols, dp, ip, c, ep); },
             progress);
  if (exact_values) return py::make_tuple(exact, idx);
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
                        const py::object& memory_limit, const py::object& progress) {
  const Mat D = as_matrix(db, "database"), Q = as_matrix(q, "queries");
  same_features(D, Q);
  const auto p = radius_params(radius, metric, exclude_self, n_threads, precision, memory_limit);
  ec::RadiusResult r;
  run_native([&](ec::Cancel& c) { ec::radius_search(p, D.data, D.rows, Q.data, Q.rows, D.cols, r, c); }, progress);
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

py::tuple radius_count_both(const py::array& db, const py::array& q, double radius, const py::object& metric,
                            int n_threads, const std::string& precision, const py::object& memory_limit) {
  const Mat D = as_matrix(db, "database"), Q = as_matrix(q, "queries");
  same_features(D, Q);
  const auto p = radius_params(radius, metric, false, n_threads, precision, memory_limit);
  py::array_t<idx_t> out_q({static_cast<py::ssize_t>(Q.rows)}), out_db({static_cast<py::ssize_t>(D.rows)});
  idx_t* qp = out_q.mutable_data();
  idx_t* dp = out_db.mutable_data();
  run_native([&](ec::Cancel& c) { ec::radius_count_both(p, D.data, D.rows, Q.data, Q.rows, D.cols, qp, dp, c); });
  return py::make_tuple(out_q, out_db);
}

/// A boolean mask of `rows` entries as the uint8 flags the core reads.
py::array_t<std::uint8_t> core_mask(const py::array& mask, idx_t rows, const char* name) {
  auto m = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>::ensure(mask);
  if (!m || m.ndim() != 1 || m.shape(0) != static_cast<py::ssize_t>(rows))
    throw py::value_error(std::string(name) + " should be a 1-d mask with one entry per row (" + std::to_string(rows) + ")");
  return m;
}

py::tuple radius_pair_links(const py::array& db, const py::array& q, double radius, const py::array& q_is_core,
                            const py::array& db_is_core, const py::object& metric, int n_threads,
                            const std::string& precision, const py::object& memory_limit) {
  const Mat D = as_matrix(db, "database"), Q = as_matrix(q, "queries");
  same_features(D, Q);
  const auto p = radius_params(radius, metric, false, n_threads, precision, memory_limit);
  const auto qc = core_mask(q_is_core, Q.rows, "queries_core"), dc = core_mask(db_is_core, D.rows, "database_core");
  const std::uint8_t* qcp = qc.data();
  const std::uint8_t* dcp = dc.data();
  ec::PairLinks r;
  run_native([&](ec::Cancel& c) { ec::radius_pair_links(p, D.data, D.rows, Q.data, Q.rows, D.cols, qcp, dcp, r, c); });
  return py::make_tuple(to_array(std::move(r.component)), to_array(std::move(r.q_core)), to_array(std::move(r.q_dist)),
                        to_array(std::move(r.db_core)), to_array(std::move(r.db_dist)));
}

}  // namespace

void bind_knn(py::module_& m) {
  m.def("knn_search", &knn_search, py::arg("database"), py::arg("queries"), py::arg("k"), py::arg("metric") = "l2",
        py::arg("exclude_self") = false, py::arg("n_threads") = 0, py::arg("precision") = "auto",
        py::arg("memory_limit") = py::none(), py::arg("self_join") = true, py::arg("exact_values") = false,
        py::arg("progress") = py::none(),
        "Exact k nearest neighbours: (distances float32 (nq, k), indices int64 (nq, k)). "
        "l2 gives squared distances, ip dot products, cosine 1 - cos. When queries is database (the same "
        "array), each pair is computed once (self_join=False forces the one-sided scan; results are identical). "
        "exact_values=True returns the fp64 ranking values instead of the float32 distances (ascending; the "
        "negated dot product for ip): results of database blocks merge exactly by (value, index). "
        "progress(step, index, count, done, total), when given, follows the work: the step (here 'kNN search'), "
        "its number index of count (0 of 0 when the steps are not numbered) and the tile-driver blocks done of "
        "total started in the step; called on the main thread with the Ctrl-C check (at most every 50 ms) and "
        "once when the work returns (on any thread). An exception it raises stops the work and propagates.");
  m.def("radius_search", &radius_search, py::arg("database"), py::arg("queries"), py::arg("radius"),
        py::arg("metric") = "l2", py::arg("exclude_self") = false, py::arg("n_threads") = 0,
        py::arg("precision") = "auto", py::arg("memory_limit") = py::none(), py::arg("progress") = py::none(),
        "Neighbours within radius (inclusive) as CSR (indptr, indices, distances); l2 radius is on squared distance. "
        "The results count against memory_limit as they grow: MemoryLimitError when they would exceed it. "
        "progress: as for knn_search.");
  m.def("radius_count", &radius_count, py::arg("database"), py::arg("queries"), py::arg("radius"),
        py::arg("metric") = "l2", py::arg("exclude_self") = false, py::arg("n_threads") = 0,
        py::arg("precision") = "auto", py::arg("memory_limit") = py::none(),
        "Number of database rows within radius of each query (inclusive).");
  m.def("radius_count_both", &radius_count_both, py::arg("database"), py::arg("queries"), py::arg("radius"),
        py::arg("metric") = "l2", py::arg("n_threads") = 0, py::arg("precision") = "auto",
        py::arg("memory_limit") = py::none(),
        "radius_count both ways from one scan: (per query: database rows within radius, per database row: "
        "queries within radius).");
  m.def("radius_pair_links", &radius_pair_links, py::arg("database"), py::arg("queries"), py::arg("radius"),
        py::arg("queries_core"), py::arg("database_core"), py::arg("metric") = "l2", py::arg("n_threads") = 0,
        py::arg("precision") = "auto", py::arg("memory_limit") = py::none(),
        "DBSCAN's links between two row sets with known core points: (component int64 (nq + n): per node, "
        "queries first, the smallest node of its core component, -1 for non-core; q_core int64 (nq): each "
        "non-core query's nearest core database row within radius or -1; q_dist float32; db_core int64 (n), "
        "db_dist float32 likewise for database rows). Ties go to the lower index; distances are "
        "float32(max(0, exact fp64 value)).");
}

}  // namespace ecpy
