// Bindings of DBSCAN: the fit and its result (labels, core points, counts, tile statistics).
#include <pybind11/stl.h>

#include "../core/dbscan.hpp"
#include "common.hpp"

namespace ecpy {
namespace {

/// ec::DbscanResult with its vectors handed to numpy.
struct DbscanFit {
  py::array_t<idx_t> labels;
  py::array_t<std::uint8_t> is_core;
  py::array_t<idx_t> counts;
  ec::DbscanResult stats;  ///< the scalar fields (its vectors are moved out)
};

DbscanFit dbscan_fit(const py::array& x, double eps, int min_samples, const py::object& metric, bool prune,
                     int n_threads, const py::object& memory_limit, const py::object& progress) {
  const Mat X = as_matrix(x, "X");
  ec::DbscanParams p;
  p.eps = eps;
  p.min_samples = min_samples;
  p.metric = metric_of(metric);
  p.prune = prune;
  p.n_threads = n_threads;
  p.memory_limit = memory_limit_of(memory_limit);
  DbscanFit out;
  run_native([&](ec::Cancel& c) { ec::dbscan_fit(p, X.data, X.rows, X.cols, out.stats, c); }, progress);
  out.labels = to_array(std::move(out.stats.labels));
  out.is_core = to_array(std::move(out.stats.is_core));
  out.counts = to_array(std::move(out.stats.counts));
  return out;
}

/// The getter of a read-only property: one scalar field of the fit's statistics.
template <class T>
auto stat(T ec::DbscanResult::*field) {
  return [field](const DbscanFit& f) { return f.stats.*field; };
}

}  // namespace

void bind_dbscan(py::module_& m) {
  py::class_<DbscanFit>(m, "DbscanResult", "What dbscan_fit returns.")
      .def_readonly("labels", &DbscanFit::labels, "int64 (n,): cluster per row, -1 for noise; clusters numbered by "
                                                  "their lowest core row")
      .def_readonly("is_core", &DbscanFit::is_core, "uint8 (n,): 1 for core points")
      .def_readonly("counts", &DbscanFit::counts, "int64 (n,): neighbours within eps, the point itself included")
      .def_property_readonly("n_clusters", stat(&ec::DbscanResult::n_clusters))
      .def_property_readonly("tile_pairs", stat(&ec::DbscanResult::tile_pairs),
                             "tile pairs (i <= j) in one pass")
      .def_property_readonly("pairs_computed_pass1", stat(&ec::DbscanResult::pairs_computed_pass1),
                             "tile pairs whose products were computed in pass 1")
      .def_property_readonly("pairs_computed_pass2", stat(&ec::DbscanResult::pairs_computed_pass2),
                             "tile pairs whose products were computed in pass 2")
      .def_property_readonly("pairs_after_bounds", stat(&ec::DbscanResult::pairs_after_bounds),
                             "tile pairs left by the tile-level bounds (balls, projections)")
      .def_property_readonly("projection_bounds", stat(&ec::DbscanResult::projection_bounds),
                             "the projection table was used (memory_limit allowing)")
      .def_property_readonly("rows_copy", stat(&ec::DbscanResult::rows_copy),
                             "rows were read from a copy in the kernels' bf16 words (memory_limit allowing)")
      .def_property_readonly("rows_computed_pass1", stat(&ec::DbscanResult::rows_computed_pass1),
                             "query rows in pass 1's products")
      .def_property_readonly("rows_all_neighbours_pass1",
                             stat(&ec::DbscanResult::rows_all_neighbours_pass1),
                             "(row, tile) pairs counted without products: the tile's ball lies within eps")
      .def_property_readonly("rows_pruned_inner_product_pass1",
                             stat(&ec::DbscanResult::rows_pruned_inner_product_pass1),
                             "(row, tile) pairs left out by the inner-product bounds")
      .def("__repr__", [](const DbscanFit& f) {
        return "DbscanResult(n=" + std::to_string(f.labels.size()) + ", n_clusters=" +
               std::to_string(f.stats.n_clusters) + ")";
      });
  m.def("dbscan_fit", &dbscan_fit, py::arg("X"), py::arg("eps"), py::arg("min_samples") = 5,
        py::arg("metric") = "l2", py::arg("prune") = true, py::arg("n_threads") = 0, py::arg("memory_limit") = py::none(),
        py::arg("progress") = py::none(),
        "DBSCAN; returns a DbscanResult (labels, is_core, counts, n_clusters, tile statistics). l2 eps is a "
        "Euclidean distance. progress: as for knn_search (steps 'DBSCAN layout', 'DBSCAN tile bounds', "
        "'DBSCAN neighbour counts', 'DBSCAN clusters', numbered 1 to 4).");
}

}  // namespace ecpy
