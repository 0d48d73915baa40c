// Bindings of k-means over chunks (csrc/core/kmeans_chunk.hpp): the calls a streamed or Dask
// fit makes per chunk, the chunk's state between passes (picklable, for workers that spill),
// and the client's exact reductions.
#include <pybind11/stl.h>

#include "../core/kmeans.hpp"
#include "../core/kmeans_chunk.hpp"
#include "common.hpp"

namespace ecpy {
namespace {

template <class T>
py::array_t<T> copy_of(const std::vector<T>& v) {
  return to_array(std::vector<T>(v));
}

/// A float64 (or uint64) C-contiguous 1-D array of n values, else ValueError naming it.
template <class T>
const T* vec_of(const py::array& a, idx_t n, const char* name) {
  if (a.ndim() != 1 || static_cast<idx_t>(a.shape(0)) != n || !(a.flags() & py::array::c_style) ||
      !py::isinstance<py::array_t<T>>(a))
    throw std::invalid_argument(std::string(name) + " must be a contiguous 1-D " +
                                (std::is_same<T, double>::value ? "float64" : "uint64") + " array of " +
                                std::to_string(n) + " values");
  return static_cast<const T*>(a.data());
}

struct Stats {
  idx_t n;
  py::array_t<double> colmax, absmax;
  double wmax;
};

Stats chunk_stats(const py::array& x, const py::object& metric, const py::object& sample_weight, idx_t row_offset,
                  int n_threads) {
  const Mat X = as_matrix(x, "X");
  const float* w = as_weights(sample_weight, X.rows);
  const ec::Metric m = metric_of(metric);
  ec::KMeansChunkStats s;
  run_native([&](ec::Cancel&) { ec::kmeans_chunk_stats(m, X.data, X.rows, X.cols, w, row_offset, n_threads, s); });
  return {s.n, copy_of(s.colmax), copy_of(s.absmax), s.wmax};
}

py::tuple fixed_scales(idx_t n_total, const py::array& colmax, double wmax, bool weighted) {
  const auto d = static_cast<idx_t>(colmax.size());
  const double* cm = vec_of<double>(colmax, d, "colmax");
  std::vector<double> q(static_cast<std::size_t>(d));
  double ws = 1.0;
  ec::kmeans_fixed_scales(n_total, cm, d, wmax, weighted, q.data(), &ws);
  return py::make_tuple(to_array(std::move(q)), ws);
}

py::array_t<std::uint64_t> chunk_moments(const py::array& x, const py::array& absmax, idx_t n_total,
                                         const py::object& metric, int n_threads) {
  const Mat X = as_matrix(x, "X");
  const double* am = vec_of<double>(absmax, X.cols, "absmax");
  const ec::Metric m = metric_of(metric);
  py::array_t<std::uint64_t> out({static_cast<py::ssize_t>(X.cols * ec::kMomentLimbs)});
  std::uint64_t* op = out.mutable_data();
  run_native([&](ec::Cancel&) { ec::kmeans_chunk_moments(m, X.data, X.rows, X.cols, am, n_total, n_threads, op); });
  return out;
}

double mean_variance(const py::array& limbs, const py::array& absmax, idx_t n_total) {
  const auto d = static_cast<idx_t>(absmax.size());
  return ec::kmeans_mean_variance(vec_of<std::uint64_t>(limbs, d * ec::kMomentLimbs, "limbs"),
                                  vec_of<double>(absmax, d, "absmax"), n_total, d);
}

/// Centres (k, d) with the features of X.
Mat centres_for(const py::array& centers, const Mat& X) {
  const Mat C = as_matrix(centers, "centers");
  if (C.cols != X.cols)
    throw std::invalid_argument("X has " + std::to_string(X.cols) + " features but the centres have " +
                                std::to_string(C.cols));
  return C;
}

idx_t chunk_pass(ec::KMeansChunkState& st, const py::array& centers, const py::array& x, const py::array& qscale,
                 double wscale, const py::object& metric, const py::object& sample_weight, bool prune, int n_threads,
                 const std::string& precision) {
  const Mat X = as_matrix(x, "X");
  const Mat C = centres_for(centers, X);
  const double* q = vec_of<double>(qscale, X.cols, "qscale");
  const float* w = as_weights(sample_weight, X.rows);
  const ec::Metric m = metric_of(metric);
  const ec::KernelSet* ks = kernels_of(precision);
  idx_t changed = 0;
  run_native([&](ec::Cancel& c) {
    changed = ec::kmeans_chunk_pass(m, C.data, C.rows, X.data, X.rows, X.cols, w, q, wscale, prune, st, n_threads, c, ks);
  });
  return changed;
}

const idx_t* labels_of(const py::array& labels, idx_t n) {
  if (labels.ndim() != 1 || static_cast<idx_t>(labels.shape(0)) != n || !(labels.flags() & py::array::c_style) ||
      !py::isinstance<py::array_t<idx_t>>(labels))
    throw std::invalid_argument("labels must be a contiguous 1-D int64 array with one label per row (" +
                                std::to_string(n) + ")");
  return static_cast<const idx_t*>(labels.data());
}

py::tuple chunk_farthest(const py::array& centers, const py::array& x, const py::array& labels, idx_t count,
                         const py::object& metric, int n_threads) {
  const Mat X = as_matrix(x, "X");
  const Mat C = centres_for(centers, X);
  const idx_t* lab = labels_of(labels, X.rows);
  const ec::Metric m = metric_of(metric);
  std::vector<float> dist;
  std::vector<idx_t> rows;
  run_native([&](ec::Cancel&) {
    ec::kmeans_chunk_farthest(m, C.data, C.rows, X.data, X.rows, X.cols, lab, count, n_threads, dist, rows);
  });
  return py::make_tuple(to_array(std::move(dist)), to_array(std::move(rows)));
}

py::tuple update_centres(const py::array& centers, const py::array& sums, const py::array& qscale, double wscale,
                         const py::object& metric, const py::object& repair_x, const py::object& repair_weight,
                         const py::object& repair_labels) {
  const Mat C = as_matrix(centers, "centers");
  const idx_t k = C.rows, d = C.cols;
  const std::uint64_t* s = vec_of<std::uint64_t>(sums, k * d + k, "sums");
  const double* q = vec_of<double>(qscale, d, "qscale");
  const ec::Metric m = metric_of(metric);
  Mat R{nullptr, 0, d};
  const float* rw = nullptr;
  const idx_t* rl = nullptr;
  if (!repair_x.is_none()) {
    R = as_matrix(repair_x.cast<py::array>(), "repair_X");
    if (R.cols != d) throw std::invalid_argument("repair_X must have the centres' " + std::to_string(d) + " features");
    rw = as_weights(repair_weight, R.rows);
    rl = labels_of(repair_labels.cast<py::array>(), R.rows);
  }
  py::array_t<float> next({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(d)});
  float* np_ = next.mutable_data();
  std::vector<idx_t> empty;
  double shift = 0.0;
  run_native([&](ec::Cancel&) {
    shift = ec::kmeans_update_centres(m, C.data, k, d, s, q, wscale, R.data, rw, rl, R.rows, np_, empty);
  });
  return py::make_tuple(next, shift, to_array(std::move(empty)));
}

py::array_t<float> start_centres(const py::array& centers, const py::object& metric) {
  const Mat C = as_matrix(centers, "centers");
  py::array_t<float> out({static_cast<py::ssize_t>(C.rows), static_cast<py::ssize_t>(C.cols)});
  std::copy(C.data, C.data + C.rows * C.cols, out.mutable_data());
  ec::kmeans_start_centres(metric_of(metric), out.mutable_data(), C.rows, C.cols);
  return out;
}

double objective_scale(idx_t n_total, const py::array& absmax, double wmax, const py::array& centers,
                       const py::object& metric) {
  const Mat C = as_matrix(centers, "centers");
  return ec::kmeans_objective_scale(metric_of(metric), n_total, vec_of<double>(absmax, C.cols, "absmax"), C.cols, wmax,
                                    C.data, C.rows);
}

py::array_t<std::uint64_t> chunk_objective(const py::array& centers, const py::array& x, const py::array& labels,
                                           double scale, const py::object& metric, const py::object& sample_weight,
                                           int n_threads) {
  const Mat X = as_matrix(x, "X");
  const Mat C = centres_for(centers, X);
  const idx_t* lab = labels_of(labels, X.rows);
  const float* w = as_weights(sample_weight, X.rows);
  const ec::Metric m = metric_of(metric);
  py::array_t<std::uint64_t> out({py::ssize_t{4}});
  std::uint64_t* op = out.mutable_data();
  run_native([&](ec::Cancel&) {
    ec::kmeans_chunk_objective(m, C.data, C.rows, X.data, X.rows, X.cols, w, lab, scale, n_threads, op);
  });
  return out;
}

double objective_total(const py::array& limbs, double scale) {
  return ec::kmeans_objective_total(vec_of<std::uint64_t>(limbs, 4, "limbs"), scale);
}

py::tuple state_getstate(const ec::KMeansChunkState& s) {
  std::vector<std::uint8_t> tight(s.tight.begin(), s.tight.end());
  return py::make_tuple(1, s.k, s.d, copy_of(s.labels), copy_of(s.u), copy_of(s.l), copy_of(s.lm),
                        to_array(std::move(tight)), copy_of(s.centers), copy_of(s.sums), s.valid, s.rows_computed);
}

template <class T>
std::vector<T> vector_of(const py::handle& h) {
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(h);
  if (!a) throw std::invalid_argument("KMeansChunkState: corrupt pickled state");
  return std::vector<T>(a.data(), a.data() + a.size());
}

ec::KMeansChunkState state_setstate(const py::tuple& t) {
  if (t.size() != 12 || t[0].cast<int>() != 1) throw std::invalid_argument("KMeansChunkState: unknown pickled state");
  ec::KMeansChunkState s;
  s.k = t[1].cast<idx_t>();
  s.d = t[2].cast<idx_t>();
  s.labels = vector_of<idx_t>(t[3]);
  s.u = vector_of<double>(t[4]);
  s.l = vector_of<double>(t[5]);
  s.lm = vector_of<double>(t[6]);
  const auto tight = vector_of<std::uint8_t>(t[7]);
  s.tight.assign(tight.begin(), tight.end());
  s.centers = vector_of<float>(t[8]);
  s.sums = vector_of<std::uint64_t>(t[9]);
  s.valid = t[10].cast<bool>();
  s.rows_computed = t[11].cast<idx_t>();
  const auto n = s.labels.size();
  const bool bounds_ok = s.u.empty() || (s.u.size() == n && s.l.size() == n && s.lm.size() == n && s.tight.size() == n);
  if (s.valid && (!bounds_ok || s.centers.size() != static_cast<std::size_t>(s.k * s.d) ||
                  s.sums.size() != static_cast<std::size_t>(s.k * s.d + s.k)))
    throw std::invalid_argument("KMeansChunkState: pickled arrays have inconsistent sizes");
  return s;
}

std::uint64_t seed_units(const py::array& x, double wscale, const py::object& sample_weight) {
  const Mat X = as_matrix(x, "X");
  return ec::kmeans_seed_units(as_weights(sample_weight, X.rows), X.rows, wscale);
}

idx_t seed_pick(const py::array& x, std::uint64_t target, double wscale, const py::object& sample_weight) {
  const Mat X = as_matrix(x, "X");
  const float* w = as_weights(sample_weight, X.rows);
  idx_t row = 0;
  run_native([&](ec::Cancel&) { row = ec::kmeans_seed_pick(w, X.rows, wscale, target); });
  return row;
}

double seed_potential_scale(idx_t n_total, const py::array& absmax, double wmax, const py::object& metric) {
  const auto d = static_cast<idx_t>(absmax.size());
  return ec::kmeans_seed_potential_scale(metric_of(metric), n_total, vec_of<double>(absmax, d, "absmax"), d, wmax);
}

py::tuple seed_draws(std::uint64_t seed, std::uint64_t total_units) {
  std::uint64_t target = 0, finish_seed = 0;
  run_native([&](ec::Cancel&) { ec::kmeans_seed_draws(seed, total_units, &target, &finish_seed); });
  return py::make_tuple(target, finish_seed);
}

py::array_t<std::uint64_t> seed_nearer(ec::KMeansSeedState& st, const py::array& batch, const py::array& x,
                                       double pscale, const py::object& metric, const py::object& sample_weight,
                                       int n_threads, const std::string& precision) {
  const Mat X = as_matrix(x, "X");
  const Mat B = centres_for(batch, X);
  const float* w = as_weights(sample_weight, X.rows);
  const ec::Metric m = metric_of(metric);
  const ec::KernelSet* ks = kernels_of(precision);
  py::array_t<std::uint64_t> out({py::ssize_t{4}});
  std::uint64_t* op = out.mutable_data();
  run_native([&](ec::Cancel& c) {
    ec::kmeans_seed_nearer(m, B.data, B.rows, X.data, X.rows, X.cols, w, pscale, st, n_threads, c, ks, op);
  });
  return out;
}

py::array_t<float> seed_sample(const ec::KMeansSeedState& st, const py::array& x, double pot, idx_t k,
                               std::uint64_t seed, int round, idx_t row_offset, const py::object& sample_weight) {
  const Mat X = as_matrix(x, "X");
  const float* w = as_weights(sample_weight, X.rows);
  std::vector<float> batch;
  run_native([&](ec::Cancel&) {
    ec::kmeans_seed_sample(X.data, X.rows, X.cols, w, st, pot, k, seed, round, row_offset, batch);
  });
  const auto rows = static_cast<py::ssize_t>(batch.size() / static_cast<std::size_t>(X.cols));
  return to_array(std::move(batch)).reshape({rows, static_cast<py::ssize_t>(X.cols)});
}

py::array_t<std::uint64_t> seed_candidate_units(const py::array& candidates, const py::array& x, double wscale,
                                                const py::object& metric, const py::object& sample_weight,
                                                int n_threads, const std::string& precision) {
  const Mat X = as_matrix(x, "X");
  const Mat C = centres_for(candidates, X);
  const float* w = as_weights(sample_weight, X.rows);
  const ec::Metric m = metric_of(metric);
  const ec::KernelSet* ks = kernels_of(precision);
  py::array_t<std::uint64_t> out({static_cast<py::ssize_t>(C.rows)});
  std::uint64_t* op = out.mutable_data();
  run_native([&](ec::Cancel& c) {
    ec::kmeans_seed_candidate_units(m, C.data, C.rows, X.data, X.rows, X.cols, w, wscale, n_threads, c, ks, op);
  });
  return out;
}

py::array_t<float> parallel_finish(const py::array& candidates, const py::array& units, double wscale, int k,
                                   std::uint64_t finish_seed, const py::object& metric, double tol,
                                   int n_local_trials, int n_threads, const std::string& precision) {
  const Mat C = as_matrix(candidates, "candidates");
  const std::uint64_t* u = vec_of<std::uint64_t>(units, C.rows, "units");
  ec::KMeansParams p = kmeans_params(k, metric, finish_seed, n_local_trials, n_threads, py::none());
  p.tol = tol;
  p.kernel_set = kernels_of(precision);
  if (k <= 0) throw std::invalid_argument("n_clusters=" + std::to_string(k) + " should be >= 1");
  py::array_t<float> out({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(C.cols)});
  float* op = out.mutable_data();
  run_native([&](ec::Cancel& c) { ec::kmeans_parallel_finish(p, C.data, C.rows, C.cols, u, wscale, finish_seed, op, c); });
  return out;
}

py::tuple seed_state_getstate(const ec::KMeansSeedState& s) { return py::make_tuple(1, copy_of(s.closest), s.rounds); }

ec::KMeansSeedState seed_state_setstate(const py::tuple& t) {
  if (t.size() != 3 || t[0].cast<int>() != 1) throw std::invalid_argument("KMeansSeedState: unknown pickled state");
  ec::KMeansSeedState s;
  s.closest = vector_of<float>(t[1]);
  s.rounds = t[2].cast<int>();
  return s;
}

void bind_seed(py::module_& m) {
  py::class_<ec::KMeansSeedState>(m, "KMeansSeedState",
                                  "A chunk's distances to the nearest k-means|| candidate so far.")
      .def(py::init<>())
      .def_property_readonly("closest", [](const ec::KMeansSeedState& s) { return copy_of(s.closest); },
                             "float32 (n,): each row's distance to its nearest candidate (a copy)")
      .def("copy", [](const ec::KMeansSeedState& s) { return ec::KMeansSeedState(s); }, "An independent copy.")
      .def(py::pickle(&seed_state_getstate, &seed_state_setstate));
  m.attr("KMEANS_PARALLEL_ROUNDS") = ec::kKMeansParallelRounds;
  m.def("kmeans_seed_units", &seed_units, py::arg("X"), py::arg("wscale"), py::arg("sample_weight") = py::none(),
        "The chunk's total weight in fixed-point units (k-means|| first row).");
  m.def("kmeans_seed_pick", &seed_pick, py::arg("X"), py::arg("target"), py::arg("wscale"),
        py::arg("sample_weight") = py::none(), "The chunk's local row whose weight units hold target.");
  m.def("kmeans_seed_potential_scale", &seed_potential_scale, py::arg("n_total"), py::arg("absmax"), py::arg("wmax"),
        py::arg("metric") = "l2", "Fixed-point scale of the k-means|| potential.");
  m.def("kmeans_seed_draws", &seed_draws, py::arg("seed"), py::arg("total_units"),
        "(first row's target unit, finish seed): the random numbers of k-means|| outside the rounds.");
  m.def("kmeans_seed_nearer", &seed_nearer, py::arg("state"), py::arg("batch"), py::arg("X"), py::arg("pscale"),
        py::arg("metric") = "l2", py::arg("sample_weight") = py::none(), py::arg("n_threads") = 0,
        py::arg("precision") = "auto",
        "Takes a batch of candidates into the chunk's state; uint64 (4,): the chunk's potential limbs.");
  m.def("kmeans_seed_sample", &seed_sample, py::arg("state"), py::arg("X"), py::arg("pot"), py::arg("n_clusters"),
        py::arg("seed"), py::arg("round"), py::arg("row_offset") = 0, py::arg("sample_weight") = py::none(),
        "float32 (t, d): the chunk's rows sampled in a k-means|| round, in row order.");
  m.def("kmeans_seed_candidate_units", &seed_candidate_units, py::arg("candidates"), py::arg("X"), py::arg("wscale"),
        py::arg("metric") = "l2", py::arg("sample_weight") = py::none(), py::arg("n_threads") = 0,
        py::arg("precision") = "auto", "uint64 (m,): weight units of the chunk's rows nearest each candidate.");
  m.def("kmeans_parallel_finish", &parallel_finish, py::arg("candidates"), py::arg("units"), py::arg("wscale"),
        py::arg("n_clusters"), py::arg("seed"), py::arg("metric") = "l2", py::arg("tol") = 1e-4,
        py::arg("n_local_trials") = 0, py::arg("n_threads") = 0, py::arg("precision") = "auto",
        "float32 (n_clusters, d): k-means|| centres from the weighted candidates (needs more than n_clusters).");
}

}  // namespace

void bind_kmeans_chunk(py::module_& m) {
  py::class_<Stats>(m, "KMeansChunkStats", "What kmeans_chunk_stats returns: merge n by sum, the rest by maximum.")
      .def_readonly("n", &Stats::n, "rows")
      .def_readonly("colmax", &Stats::colmax, "float64 (d,): max |w' x_f| (the centre sums' scales)")
      .def_readonly("absmax", &Stats::absmax, "float64 (d,): max |s x_f| (the moments' and objective's scales)")
      .def_readonly("wmax", &Stats::wmax, "largest sample weight (1 without weights)");
  py::class_<ec::KMeansChunkState>(m, "KMeansChunkState",
                                   "A chunk's labels, pruning bounds and centre sums between passes.")
      .def(py::init<>())
      .def_property_readonly("labels", [](const ec::KMeansChunkState& s) { return copy_of(s.labels); },
                             "int64 (n,): each row's centre after the last pass (a copy)")
      .def_property_readonly("sums", [](const ec::KMeansChunkState& s) { return copy_of(s.sums); },
                             "uint64 (k * d + k,): the chunk's fixed-point centre sums, then weights (add mod 2^64)")
      .def_readonly("valid", &ec::KMeansChunkState::valid, "whether a pass has run")
      .def_readonly("rows_computed", &ec::KMeansChunkState::rows_computed,
                    "rows whose distances to every centre were computed, over all passes")
      .def("copy", [](const ec::KMeansChunkState& s) { return ec::KMeansChunkState(s); }, "An independent copy.")
      .def(py::pickle(&state_getstate, &state_setstate));
  m.attr("KMEANS_PRUNE_MIN_K") = ec::kPruneMinK;
  bind_seed(m);
  m.def("kmeans_chunk_stats", &chunk_stats, py::arg("X"), py::arg("metric") = "l2",
        py::arg("sample_weight") = py::none(), py::arg("row_offset") = 0, py::arg("n_threads") = 0,
        "Checks a chunk's rows and measures them (KMeansChunkStats); errors count rows from row_offset.");
  m.def("kmeans_fixed_scales", &fixed_scales, py::arg("n_total"), py::arg("colmax"), py::arg("wmax"),
        py::arg("weighted"), "(qscale float64 (d,), wscale): fixed-point scales of the centre sums of a fit.");
  m.def("kmeans_chunk_moments", &chunk_moments, py::arg("X"), py::arg("absmax"), py::arg("n_total"),
        py::arg("metric") = "l2", py::arg("n_threads") = 0,
        "uint64 (d * 8,): the chunk's exact fixed-point moments (add across chunks with numpy).");
  m.def("kmeans_mean_variance", &mean_variance, py::arg("limbs"), py::arg("absmax"), py::arg("n_total"),
        "Mean per-feature variance (tol's unit) from the summed moments.");
  m.def("kmeans_chunk_pass", &chunk_pass, py::arg("state"), py::arg("centers"), py::arg("X"), py::arg("qscale"),
        py::arg("wscale"), py::arg("metric") = "l2", py::arg("sample_weight") = py::none(), py::arg("prune") = true,
        py::arg("n_threads") = 0, py::arg("precision") = "auto",
        "One assignment pass of a chunk; updates state (labels, bounds, sums); returns the labels changed.");
  m.def("kmeans_chunk_farthest", &chunk_farthest, py::arg("centers"), py::arg("X"), py::arg("labels"),
        py::arg("count"), py::arg("metric") = "l2", py::arg("n_threads") = 0,
        "(distance float32, local row int64): the chunk's rows farthest from their centres, farthest first.");
  m.def("kmeans_update_centres", &update_centres, py::arg("centers"), py::arg("sums"), py::arg("qscale"),
        py::arg("wscale"), py::arg("metric") = "l2", py::arg("repair_X") = py::none(),
        py::arg("repair_weight") = py::none(), py::arg("repair_labels") = py::none(),
        "(next centres, squared shift, empty clusters): the centre update of kmeans_fit from summed sums.");
  m.def("kmeans_start_centres", &start_centres, py::arg("centers"), py::arg("metric") = "l2",
        "Initial centres as a fit uses them (unit length for cosine); a copy.");
  m.def("kmeans_objective_scale", &objective_scale, py::arg("n_total"), py::arg("absmax"), py::arg("wmax"),
        py::arg("centers"), py::arg("metric") = "l2", "Fixed-point scale of the objective of a fit.");
  m.def("kmeans_chunk_objective", &chunk_objective, py::arg("centers"), py::arg("X"), py::arg("labels"),
        py::arg("scale"), py::arg("metric") = "l2", py::arg("sample_weight") = py::none(), py::arg("n_threads") = 0,
        "uint64 (4,): the chunk's objective in fixed point (add across chunks with numpy).");
  m.def("kmeans_objective_total", &objective_total, py::arg("limbs"), py::arg("scale"),
        "The objective from the summed limbs.");
}

}  // namespace ecpy
