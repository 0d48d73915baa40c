// Bindings of k-means: fit, initialisation only, and assignment to given centres.
#include <pybind11/stl.h>

#include "../core/kmeans.hpp"
#include "common.hpp"

namespace ecpy {

ec::KMeansParams kmeans_params(int k, const py::object& metric, std::uint64_t seed, int n_local_trials,
                               int n_threads, const py::object& memory_limit) {
  ec::KMeansParams p;
  p.k = k;
  p.metric = metric_of(metric);
  p.seed = seed;
  p.n_local_trials = n_local_trials;
  p.n_threads = n_threads;
  p.memory_limit = memory_limit_of(memory_limit);
  return p;
}

namespace {

/// ec::KMeansResult with its vectors handed to numpy.
struct KMeansFit {
  py::array_t<float> centers;  ///< (k, d)
  py::array_t<idx_t> labels;   ///< (n,)
  double inertia = 0.0;
  int n_iter = 0;
  int n_empty_repaired = 0;
  double computed_fraction = 1.0;
  double mover_fraction = 0.0;
};

/// init: one of the names, or an array of centres (its shape is checked here: the core reads
/// k * d values from it).
ec::KMeansInit init_of(const py::object& init, const Mat& X, int k, std::vector<float>& given) {
  if (py::isinstance<py::str>(init)) {
    const auto s = init.cast<std::string>();
    if (s == "k-means++") return ec::KMeansInit::KMeansPP;
    if (s == "random") return ec::KMeansInit::Random;
    if (s == "k-means||") return ec::KMeansInit::Parallel;
    throw std::invalid_argument("init='" + s + "' is unknown; use 'k-means++', 'k-means||', 'random' or an array of centres");
  }
  const Mat C = as_matrix(init.cast<py::array>(), "init");
  if (C.rows != k || C.cols != X.cols)
    throw std::invalid_argument("init has shape (" + std::to_string(C.rows) + ", " + std::to_string(C.cols) +
                                ") but should be (n_clusters, n_features) = (" + std::to_string(k) + ", " +
                                std::to_string(X.cols) + ")");
  given.assign(C.data, C.data + C.rows * C.cols);
  return ec::KMeansInit::Given;
}

/// prune: 'auto' (-1), True (1) or False (0).
int prune_of(const py::object& prune) {
  if (py::isinstance<py::str>(prune) && prune.cast<std::string>() == "auto") return -1;
  if (py::isinstance<py::bool_>(prune)) return prune.cast<bool>() ? 1 : 0;
  throw std::invalid_argument("prune=" + std::string(py::repr(prune)) + " is unknown; use 'auto', True or False");
}


KMeansFit kmeans_fit(const py::array& x, int k, int max_iter, double tol, int n_init, const py::object& metric,
                     const py::object& init, std::uint64_t seed, const py::object& sample_weight, int n_local_trials,
                     int n_threads, const std::string& precision, const py::object& prune,
                     const py::object& memory_limit, int movers, const py::object& progress) {
  const Mat X = as_matrix(x, "X");
  auto p = kmeans_params(k, metric, seed, n_local_trials, n_threads, memory_limit);
  std::vector<float> given;
  p.init = init_of(init, X, k, given);
  p.max_iter = max_iter;
  p.tol = tol;
  p.n_init = n_init;
  p.kernel_set = kernels_of(precision);
  p.prune = prune_of(prune);
  if (movers < -1) throw std::invalid_argument("movers=" + std::to_string(movers) + " should be -1 (auto), 0 or > 0");
  p.movers = movers;
  const float* w = as_weights(sample_weight, X.rows);
  ec::KMeansResult r;
  run_native([&](ec::Cancel& c) {
    ec::kmeans_fit(p, X.data, X.rows, X.cols, w, given.empty() ? nullptr : given.data(), r, c);
  }, progress);
  KMeansFit out;
  out.centers = to_array(std::move(r.centers)).reshape({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(X.cols)});
  out.labels = to_array(std::move(r.labels));
  out.inertia = r.inertia;
  out.n_iter = r.n_iter;
  out.n_empty_repaired = r.n_empty_repaired;
  out.computed_fraction = r.computed_fraction;
  out.mover_fraction = r.mover_fraction;
  return out;
}

py::array_t<float> kmeans_init(const py::array& x, int k, const py::object& metric, const std::string& init,
                               std::uint64_t seed, const py::object& sample_weight, int n_local_trials, int n_threads,
                               const py::object& memory_limit, const py::object& progress) {
  const Mat X = as_matrix(x, "X");
  auto p = kmeans_params(k, metric, seed, n_local_trials, n_threads, memory_limit);
  std::vector<float> given;
  p.init = init_of(py::str(init), X, k, given);
  const float* w = as_weights(sample_weight, X.rows);
  if (k > 0 && X.rows > 0) ec::kmeans_check_memory(p, X.rows, X.cols);  // before the output is allocated
  py::array_t<float> out({static_cast<py::ssize_t>(std::max(k, 0)), static_cast<py::ssize_t>(X.cols)});
  float* op = out.mutable_data();
  run_native([&](ec::Cancel& c) { ec::kmeans_init(p, X.data, X.rows, X.cols, w, seed, op, c); }, progress);
  return out;
}

py::tuple kmeans_assign(const py::array& centers, const py::array& x, const py::object& metric, int n_threads,
                        const std::string& precision, const py::object& memory_limit,
                        const py::object& progress) {
  const Mat C = as_matrix(centers, "centers"), X = as_matrix(x, "X");
  if (C.cols != X.cols)
    throw std::invalid_argument("X has " + std::to_string(X.cols) + " features but the centres have " +
                                std::to_string(C.cols));
  const ec::Metric m = metric_of(metric);
  const ec::KernelSet* ks = kernels_of(precision);
  ec::kmeans_assign_check_memory(C.rows, X.rows, X.cols, n_threads, ks,
                                 memory_limit_of(memory_limit));  // before the outputs are allocated
  py::array_t<idx_t> labels({static_cast<py::ssize_t>(X.rows)});
  py::array_t<float> dist({static_cast<py::ssize_t>(X.rows)});
  idx_t* lp = labels.mutable_data();
  float* dp = dist.mutable_data();
  run_native([&](ec::Cancel& c) { ec::kmeans_assign(m, C.data, C.rows, X.data, X.rows, X.cols, lp, dp, n_threads, c, ks); },
             progress);
  return py::make_tuple(labels, dist);
}

}  // namespace

void bind_kmeans(py::module_& m) {
  py::class_<KMeansFit>(m, "KMeansResult", "What kmeans_fit returns.")
      .def_readonly("centers", &KMeansFit::centers, "float32 (n_clusters, n_features)")
      .def_readonly("labels", &KMeansFit::labels, "int64 (n,): nearest centre of each row, consistent with centers")
      .def_readonly("inertia", &KMeansFit::inertia,
                    "sum of w_i * dist(x_i, centre); l2: squared distance; cosine: 1 - cos")
      .def_readonly("n_iter", &KMeansFit::n_iter, "Lloyd iterations run (of the best init)")
      .def_readonly("n_empty_repaired", &KMeansFit::n_empty_repaired, "empty clusters re-seeded during the best run")
      .def_readonly("computed_fraction", &KMeansFit::computed_fraction,
                    "share of (row, pass) pairs whose distances to all centres were computed")
      .def_readonly("mover_fraction", &KMeansFit::mover_fraction,
                    "share of (row, pass) pairs whose distances to the centres that moved most were computed")
      .def("__repr__", [](const KMeansFit& f) {
        return "KMeansResult(n=" + std::to_string(f.labels.size()) + ", n_clusters=" +
               std::to_string(f.centers.ndim() == 2 ? f.centers.shape(0) : 0) + ", inertia=" +
               std::string(py::repr(py::float_(f.inertia))) + ", n_iter=" + std::to_string(f.n_iter) + ")";
      });
  m.def("kmeans_fit", &kmeans_fit, py::arg("X"), py::arg("n_clusters"), py::arg("max_iter") = 300,
        py::arg("tol") = 1e-4, py::arg("n_init") = 1, py::arg("metric") = "l2", py::arg("init") = "k-means++",
        py::arg("seed") = 0, py::arg("sample_weight") = py::none(), py::arg("n_local_trials") = 0,
        py::arg("n_threads") = 0, py::arg("precision") = "auto", py::arg("prune") = "auto",
        py::arg("memory_limit") = py::none(), py::arg("movers") = -1, py::arg("progress") = py::none(),
        "k-means; returns a KMeansResult. prune ('auto', True, False) switches the exact bound-based pruning of "
        "the assignment (identical results either way; auto: on for n_clusters >= 16). movers: -1 chooses the "
        "centres that moved most per pass, 0 turns that stage off, m > 0 always takes m of them (for tests). "
        "X is read as it is: its NaN / infinity check is the k-means pass over the data. "
        "progress: as for knn_search (steps 'k-means++ seeding' or 'k-means|| seeding', 'k-means iteration' i of "
        "max_iter, 'k-means final assignment'; the steps restart for each of the n_init runs).");
  m.def("kmeans_init", &kmeans_init, py::arg("X"), py::arg("n_clusters"), py::arg("metric") = "l2",
        py::arg("init") = "k-means++", py::arg("seed") = 0, py::arg("sample_weight") = py::none(),
        py::arg("n_local_trials") = 0, py::arg("n_threads") = 0, py::arg("memory_limit") = py::none(),
        py::arg("progress") = py::none(),
        "Initial centres only (k-means++, k-means|| or random). progress: as for knn_search.");
  m.def("kmeans_assign", &kmeans_assign, py::arg("centers"), py::arg("X"), py::arg("metric") = "l2",
        py::arg("n_threads") = 0, py::arg("precision") = "auto", py::arg("memory_limit") = py::none(),
        py::arg("progress") = py::none(),
        "Nearest centre (exact) and its distance (l2: squared; cosine: 1 - cos). progress: as for knn_search.");
}

}  // namespace ecpy
