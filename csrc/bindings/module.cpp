// embedcluster._core: the thin boundary between Python and the native engine. It checks shape,
// dtype and contiguity, releases the GIL, calls the core, and returns numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif

#include "../core/dbscan.hpp"
#include "../core/engine.hpp"
#include "../core/kernels.hpp"
#include "../core/kmeans.hpp"
#include "../core/knn.hpp"

namespace py = pybind11;
using ec::idx_t;

#ifndef EMBEDCLUSTER_VERSION
#define EMBEDCLUSTER_VERSION "0.0.0"
#endif

namespace {

ec::Metric parse_metric(const std::string& m) {
  if (m == "l2" || m == "sqeuclidean" || m == "euclidean") return ec::Metric::L2;
  if (m == "ip" || m == "inner_product") return ec::Metric::IP;
  if (m == "cosine") return ec::Metric::Cosine;
  throw std::invalid_argument("unknown metric '" + m + "'; use 'l2', 'ip' or 'cosine'");
}

/// Tile kernels for a call: "auto" = the process's choice (bf16 where the CPU has it), "fp32" =
/// the fp32 kernels of the same family. Results are the same; only speed differs.
const ec::KernelSet* parse_precision(const std::string& precision) {
  if (precision == "auto") return nullptr;
  if (precision == "fp32") return &ec::fp32_variant(ec::kernels());
  throw std::invalid_argument("precision='" + precision + "' is unknown; use 'auto' or 'fp32'");
}

// ---- Interpreter exit with native work in flight.
// When the interpreter finalizes, CPython ends any other thread that asks for the GIL with
// pthread_exit, whose forced unwind aborts the process ("FATAL: exception not rethrown",
// "terminate called without an active exception") when it meets a catch (...) or a noexcept
// frame: the Ctrl-C poll inside an OpenMP region, or gil_scoped_release's destructor. So:
// (1) an atexit hook (registered at import; atexit runs before finalization) sets g_exiting,
// which makes every native call on a thread other than the main thread stop at its next poll
// and return SystemExit (which threading ignores), and waits a bounded time for those calls to
// return; (2) threads other than the main thread never take the GIL inside native work (their
// poll only reads g_exiting: Python handles signals on the main thread alone); (3) a thread
// that comes back from native work after finalization has begun parks instead of asking for
// the GIL, and the GIL is re-acquired outside any destructor or catch (...), so that a forced
// unwind (the race between the check and the acquire) passes through cleanly.

std::atomic<bool> g_exiting{false};  // set by the atexit hook
std::atomic<int> g_in_flight{0};     // native calls that released the GIL and have not re-taken it
std::mutex g_flight_mu;
std::condition_variable g_flight_cv;
double g_exit_wait_s = 5.0;          // how long the atexit hook waits for calls in flight
unsigned long g_main_ident = 0;      // threading.main_thread().ident, read at import

bool on_main_thread() { return PyThread_get_thread_ident() == g_main_ident; }

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

[[noreturn]] void raise_exiting() {
  PyErr_SetString(PyExc_SystemExit,
                  "embedcluster: native work stopped because the interpreter is exiting");
  throw py::error_already_set();
}

/// Counts a native call in flight from before the GIL is released until after it is taken back.
class InFlight {
 public:
  InFlight() {
    if (g_exiting.load() && !on_main_thread()) raise_exiting();
    g_in_flight.fetch_add(1);
  }
  ~InFlight() {
    if (g_in_flight.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(g_flight_mu);
      g_flight_cv.notify_all();
    }
  }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;
};

/// Takes the GIL back after native work; a thread other than the finalizing one parks for good
/// once finalization has begun (CPython would end it with pthread_exit).
void reacquire_gil(PyThreadState* ts, bool main) {
  if (!main && interpreter_finalizing())
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  PyEval_RestoreThread(ts);
}

/// Runs f with the GIL released (f must not touch Python objects).
template <class F>
void without_gil(F&& f) {
  const bool main = on_main_thread();
  InFlight flight;
  PyThreadState* ts = PyEval_SaveThread();
  std::exception_ptr err;
  try {
    f();
#if defined(__GLIBCXX__)
  } catch (abi::__forced_unwind&) {
    throw;  // the thread is being ended: let the unwind pass
#endif
  } catch (...) {
    err = std::current_exception();
  }
  reacquire_gil(ts, main);
  if (err) std::rethrow_exception(err);
}

/// The atexit hook: native calls on other threads stop at their next poll; waits up to
/// g_exit_wait_s for them to return. Returns how many are still in flight.
int stop_native_work_at_exit() {
  g_exiting.store(true);
  py::gil_scoped_release release;  // the calls need the GIL to return
  std::unique_lock<std::mutex> lock(g_flight_mu);
  g_flight_cv.wait_for(lock, std::chrono::duration<double>(g_exit_wait_s), [] { return g_in_flight.load() == 0; });
  return g_in_flight.load();
}

/// A validated read-only view of a float32 C-contiguous 2-D array.
struct Mat {
  const float* data;
  idx_t rows, cols;
};

Mat as_matrix(const py::array& a, const char* name, bool check_finite = true) {
  if (a.ndim() != 2)
    throw std::invalid_argument(std::string(name) + " must be 2-D (n_samples, n_features); got " +
                                std::to_string(a.ndim()) + "-D, try reshape(-1, n_features)");
  if (a.dtype().kind() != 'f' || a.itemsize() != 4 || !a.dtype().attr("isnative").cast<bool>())
    throw std::invalid_argument(std::string(name) + " must have dtype float32; got " +
                                std::string(py::str(a.dtype())) + ", try x.astype(numpy.float32)");
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) +
                                " rows must be C-contiguous, try numpy.ascontiguousarray(x)");
  Mat m{static_cast<const float*>(a.data()), static_cast<idx_t>(a.shape(0)), static_cast<idx_t>(a.shape(1))};
  if (m.cols == 0) throw std::invalid_argument(std::string(name) + " has zero features (columns)");
  if (check_finite) {
    const idx_t total = m.rows * m.cols;
    idx_t bad = -1;
    without_gil([&] {
      for (idx_t i = 0; i < total; ++i)
        if (!std::isfinite(m.data[i])) {
          bad = i;
          break;
        }
    });
    if (bad >= 0)
      throw std::invalid_argument(std::string(name) + " contains NaN or infinity (first at row " +
                                  std::to_string(bad / m.cols) + ", column " +
                                  std::to_string(bad % m.cols) + "); remove or impute those values");
  }
  return m;
}

void same_features(const Mat& D, const Mat& Q) {
  if (D.cols != Q.cols)
    throw std::invalid_argument("queries have " + std::to_string(Q.cols) + " features but the database has " +
                                std::to_string(D.cols));
}

/// Runs native work with the GIL released; Ctrl-C stops it and raises KeyboardInterrupt; on a
/// thread other than the main thread, interpreter exit stops it and raises SystemExit.
template <class F>
void run_native(F&& f) {
  const bool main = on_main_thread();
  ec::Cancel cancel([main] {
    if (!main) return g_exiting.load();  // signals are handled on the main thread only
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
  });
  try {
    without_gil([&] { f(cancel); });
  } catch (const ec::Interrupted&) {
    if (!main && g_exiting.load()) raise_exiting();
    if (PyErr_Occurred()) throw py::error_already_set();
    PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  }
}

/// memory_limit argument: None = the default (ec::default_memory_limit), exactly 0 = no limit,
/// else a number of bytes >= 1 (ints, floats and numpy numbers; not bools, strings, NaN or
/// infinity). A fraction of a byte would otherwise truncate to 0, which means no limit at all.
double memory_limit_of(const py::object& v) {
  if (v.is_none()) return ec::default_memory_limit();
  static const py::object real = py::module_::import("numbers").attr("Real");
  static const py::object np_bool = py::module_::import("numpy").attr("bool_");
  const std::string shown = py::repr(v);
  if (py::isinstance<py::bool_>(v) || py::isinstance(v, np_bool) || !py::isinstance(v, real))
    throw std::invalid_argument("memory_limit=" + shown + " should be None, 0 (no limit) or a number of bytes >= 1");
  double b = std::numeric_limits<double>::infinity();
  try {
    b = py::float_(v).cast<double>();
  } catch (const py::error_already_set& e) {
    if (!e.matches(PyExc_OverflowError)) throw;  // an int beyond float range: rejected below
  }
  if (!std::isfinite(b) || !(b == 0.0 || b >= 1.0))
    throw std::invalid_argument("memory_limit=" + shown + " should be None, 0 (no limit) or a number of bytes >= 1");
  return b;
}

template <class T>
py::array_t<T> to_array(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {sizeof(T)}, heap->data(), owner);
}

py::tuple knn_search(const py::array& db, const py::array& q, int k, const std::string& metric,
                     bool exclude_self, int n_threads, const std::string& precision, const py::object& memory_limit,
                     bool self_join) {
  const Mat D = as_matrix(db, "database"), Q = as_matrix(q, "queries");
  same_features(D, Q);
  ec::KnnParams p;
  p.metric = parse_metric(metric);
  p.k = k;
  p.exclude_self = exclude_self;
  p.n_threads = n_threads;
  p.kernel_set = parse_precision(precision);
  if (k <= 0) throw std::invalid_argument("k=" + std::to_string(k) + " should be >= 1");
  p.memory_limit = memory_limit_of(memory_limit);
  p.self_join = self_join ? 1 : 0;
  ec::knn_check_memory(p, D.rows, Q.rows, D.cols);  // before the outputs are allocated
  py::array_t<float> dist({static_cast<py::ssize_t>(Q.rows), static_cast<py::ssize_t>(k)});
  py::array_t<idx_t> idx({static_cast<py::ssize_t>(Q.rows), static_cast<py::ssize_t>(k)});
  float* dp = dist.mutable_data();
  idx_t* ip = idx.mutable_data();
  run_native([&](ec::Cancel& c) { ec::knn_search(p, D.data, D.rows, Q.data, Q.rows, D.cols, dp, ip, c); });
  return py::make_tuple(dist, idx);
}

ec::RadiusParams radius_params(double radius, const std::string& metric, bool exclude_self, int n_threads,
                               const std::string& precision, const py::object& memory_limit) {
  ec::RadiusParams p;
  p.memory_limit = memory_limit_of(memory_limit);
  p.metric = parse_metric(metric);
  p.radius = radius;
  p.exclude_self = exclude_self;
  p.n_threads = n_threads;
  p.kernel_set = parse_precision(precision);
  return p;
}

py::tuple radius_search(const py::array& db, const py::array& q, double radius, const std::string& metric,
                        bool exclude_self, int n_threads, const std::string& precision,
                        const py::object& memory_limit) {
  const Mat D = as_matrix(db, "database"), Q = as_matrix(q, "queries");
  same_features(D, Q);
  const auto p = radius_params(radius, metric, exclude_self, n_threads, precision, memory_limit);
  ec::RadiusResult r;
  run_native([&](ec::Cancel& c) { ec::radius_search(p, D.data, D.rows, Q.data, Q.rows, D.cols, r, c); });
  return py::make_tuple(to_array(std::move(r.indptr)), to_array(std::move(r.indices)), to_array(std::move(r.dist)));
}

py::array_t<idx_t> radius_count(const py::array& db, const py::array& q, double radius, const std::string& metric,
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

ec::KMeansParams kmeans_params(const Mat& X, int k, int max_iter, double tol, int n_init, const std::string& metric,
                               const py::object& init, std::uint64_t seed, int n_local_trials, int n_threads,
                               std::vector<float>& given) {
  ec::KMeansParams p;
  p.k = k;
  p.max_iter = max_iter;
  p.tol = tol;
  p.n_init = n_init;
  p.metric = parse_metric(metric);
  p.seed = seed;
  p.n_local_trials = n_local_trials;
  p.n_threads = n_threads;
  if (py::isinstance<py::str>(init)) {
    const auto s = init.cast<std::string>();
    if (s == "k-means++")
      p.init = ec::KMeansInit::KMeansPP;
    else if (s == "random")
      p.init = ec::KMeansInit::Random;
    else if (s == "k-means||")
      p.init = ec::KMeansInit::Parallel;
    else
      throw std::invalid_argument("init='" + s + "' is unknown; use 'k-means++', 'k-means||', 'random' or an array of centres");
  } else {
    const Mat C = as_matrix(init.cast<py::array>(), "init");
    if (C.rows != k || C.cols != X.cols)
      throw std::invalid_argument("init has shape (" + std::to_string(C.rows) + ", " + std::to_string(C.cols) +
                                  ") but should be (n_clusters, n_features) = (" + std::to_string(k) + ", " +
                                  std::to_string(X.cols) + ")");
    given.assign(C.data, C.data + C.rows * C.cols);
    p.init = ec::KMeansInit::Given;
  }
  return p;
}

const float* weights_of(const py::object& sw, idx_t n) {
  if (sw.is_none()) return nullptr;
  auto a = sw.cast<py::array>();
  if (a.ndim() != 1 || static_cast<idx_t>(a.shape(0)) != n)
    throw std::invalid_argument("sample_weight must be 1-D with one weight per row (" + std::to_string(n) + ")");
  if (a.dtype().kind() != 'f' || a.itemsize() != 4 || !(a.flags() & py::array::c_style))
    throw std::invalid_argument("sample_weight must be a contiguous float32 array, try numpy.ascontiguousarray(w, numpy.float32)");
  return static_cast<const float*>(a.data());
}

py::dict kmeans_fit(const py::array& x, int k, int max_iter, double tol, int n_init, const std::string& metric,
                    const py::object& init, std::uint64_t seed, const py::object& sample_weight, int n_local_trials,
                    int n_threads, const std::string& precision, const py::object& prune,
                    const py::object& memory_limit, int movers) {
  const Mat X = as_matrix(x, "X", false);  // finiteness: checked by the k-means pass over the data
  std::vector<float> given;
  if (movers < -1) throw std::invalid_argument("movers=" + std::to_string(movers) + " should be -1 (auto), 0 or > 0");
  auto p = kmeans_params(X, k, max_iter, tol, n_init, metric, init, seed, n_local_trials, n_threads, given);
  p.kernel_set = parse_precision(precision);
  p.memory_limit = memory_limit_of(memory_limit);
  if (py::isinstance<py::str>(prune)) {
    if (prune.cast<std::string>() != "auto")
      throw std::invalid_argument("prune='" + prune.cast<std::string>() + "' is unknown; use 'auto', True or False");
    p.prune = -1;
  } else if (py::isinstance<py::bool_>(prune)) {
    p.prune = prune.cast<bool>() ? 1 : 0;
  } else {
    throw std::invalid_argument("prune must be 'auto', True or False");
  }
  p.movers = movers;
  const float* w = weights_of(sample_weight, X.rows);
  ec::KMeansResult r;
  run_native([&](ec::Cancel& c) {
    ec::kmeans_fit(p, X.data, X.rows, X.cols, w, given.empty() ? nullptr : given.data(), r, c);
  });
  py::dict out;
  auto centers = to_array(std::move(r.centers));
  out["centers"] = centers.reshape({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(X.cols)});
  out["labels"] = to_array(std::move(r.labels));
  out["inertia"] = r.inertia;
  out["n_iter"] = r.n_iter;
  out["n_empty_repaired"] = r.n_empty_repaired;
  out["computed_fraction"] = r.computed_fraction;
  out["mover_fraction"] = r.mover_fraction;
  return out;
}

py::array_t<float> kmeans_init(const py::array& x, int k, const std::string& metric, const std::string& init,
                               std::uint64_t seed, const py::object& sample_weight, int n_local_trials, int n_threads,
                               const py::object& memory_limit) {
  const Mat X = as_matrix(x, "X", false);  // finiteness: checked by the k-means pass over the data
  std::vector<float> given;
  auto p = kmeans_params(X, k, 1, 0.0, 1, metric, py::str(init), seed, n_local_trials, n_threads, given);
  p.memory_limit = memory_limit_of(memory_limit);
  const float* w = weights_of(sample_weight, X.rows);
  if (k > 0 && X.rows > 0) ec::kmeans_check_memory(p, X.rows, X.cols);  // before the output is allocated
  py::array_t<float> out({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(X.cols)});
  float* op = out.mutable_data();
  run_native([&](ec::Cancel& c) { ec::kmeans_init(p, X.data, X.rows, X.cols, w, seed, op, c); });
  return out;
}

py::tuple kmeans_assign(const py::array& centers, const py::array& x, const std::string& metric, int n_threads,
                        const std::string& precision, const py::object& memory_limit) {
  const Mat C = as_matrix(centers, "centers"), X = as_matrix(x, "X", false);  // finiteness: checked as in kmeans_fit
  if (C.cols != X.cols)
    throw std::invalid_argument("X has " + std::to_string(X.cols) + " features but the centres have " +
                                std::to_string(C.cols));
  const ec::Metric m = parse_metric(metric);
  ec::kmeans_assign_check_memory(C.rows, X.rows, X.cols, n_threads, parse_precision(precision),
                                 memory_limit_of(memory_limit));  // before the outputs are allocated
  py::array_t<idx_t> labels({static_cast<py::ssize_t>(X.rows)});
  py::array_t<float> dist({static_cast<py::ssize_t>(X.rows)});
  idx_t* lp = labels.mutable_data();
  float* dp = dist.mutable_data();
  const ec::KernelSet* ks = parse_precision(precision);
  run_native([&](ec::Cancel& c) { ec::kmeans_assign(m, C.data, C.rows, X.data, X.rows, X.cols, lp, dp, n_threads, c, ks); });
  return py::make_tuple(labels, dist);
}

py::dict dbscan_fit(const py::array& x, double eps, int min_samples, const std::string& metric, bool prune,
                    int n_threads, const py::object& memory_limit) {
  const Mat X = as_matrix(x, "X");
  ec::DbscanParams p;
  p.eps = eps;
  p.min_samples = min_samples;
  p.metric = parse_metric(metric);
  p.prune = prune;
  p.n_threads = n_threads;
  p.memory_limit = memory_limit_of(memory_limit);
  ec::DbscanResult r;
  run_native([&](ec::Cancel& c) { ec::dbscan_fit(p, X.data, X.rows, X.cols, r, c); });
  py::dict out;
  out["labels"] = to_array(std::move(r.labels));
  out["is_core"] = to_array(std::move(r.is_core));
  out["counts"] = to_array(std::move(r.counts));
  out["n_clusters"] = r.n_clusters;
  out["tile_pairs"] = r.tile_pairs;
  out["pairs_computed_pass1"] = r.pairs_computed_pass1;
  out["pairs_computed_pass2"] = r.pairs_computed_pass2;
  out["rows_computed_pass1"] = r.rows_computed_pass1;
  out["rows_all_neighbours_pass1"] = r.rows_all_neighbours_pass1;
  out["rows_pruned_inner_product_pass1"] = r.rows_pruned_inner_product_pass1;
  out["pairs_after_bounds"] = r.pairs_after_bounds;
  out["projection_bounds"] = r.projection_bounds;
  out["rows_copy"] = r.rows_copy;
  return out;
}

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

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "embedcluster native engine (float32, C-contiguous arrays in, numpy arrays out). "
            "memory_limit (bytes; None: default_memory_limit() at the call; 0: no limit) bounds each call's "
            "working memory: a call that would need more raises MemoryLimitError (a MemoryError) naming the size.";
  py::register_exception<ec::MemoryLimitError>(m, "MemoryLimitError", PyExc_MemoryError);
  py::register_exception<ec::ThreadStartError>(m, "ThreadStartError", PyExc_MemoryError);
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
  m.def("kmeans_fit", &kmeans_fit, py::arg("X"), py::arg("n_clusters"), py::arg("max_iter") = 300,
        py::arg("tol") = 1e-4, py::arg("n_init") = 1, py::arg("metric") = "l2", py::arg("init") = "k-means++",
        py::arg("seed") = 0, py::arg("sample_weight") = py::none(), py::arg("n_local_trials") = 0,
        py::arg("n_threads") = 0, py::arg("precision") = "auto", py::arg("prune") = "auto",
        py::arg("memory_limit") = py::none(), py::arg("movers") = -1,
        "k-means; returns dict(centers, labels, inertia, n_iter, n_empty_repaired, computed_fraction, "
        "mover_fraction). prune ('auto', True, False) switches the exact bound-based pruning of the "
        "assignment (identical results either way; auto: on for n_clusters >= 16). computed_fraction is "
        "the share of (row, pass) pairs whose distances to all centres were computed, mover_fraction the "
        "share whose distances to the few centres that moved most were. movers: -1 chooses them per "
        "pass, 0 turns that stage off, m > 0 always takes the m centres that moved most (for tests).");
  m.def("kmeans_init", &kmeans_init, py::arg("X"), py::arg("n_clusters"), py::arg("metric") = "l2",
        py::arg("init") = "k-means++", py::arg("seed") = 0, py::arg("sample_weight") = py::none(),
        py::arg("n_local_trials") = 0, py::arg("n_threads") = 0, py::arg("memory_limit") = py::none(),
        "Initial centres only (k-means++, k-means|| or random).");
  m.def("kmeans_assign", &kmeans_assign, py::arg("centers"), py::arg("X"), py::arg("metric") = "l2",
        py::arg("n_threads") = 0, py::arg("precision") = "auto", py::arg("memory_limit") = py::none(),
        "Nearest centre (exact) and its distance (l2: squared; cosine: 1 - cos).");
  m.def("dbscan_fit", &dbscan_fit, py::arg("X"), py::arg("eps"), py::arg("min_samples") = 5,
        py::arg("metric") = "l2", py::arg("prune") = true, py::arg("n_threads") = 0, py::arg("memory_limit") = py::none(),
        "DBSCAN; returns dict(labels, is_core, counts, n_clusters, tile statistics). l2 eps is a Euclidean distance.");
  m.def("default_memory_limit", &ec::default_memory_limit,
        "The memory_limit that None stands for, in bytes, now: 3/4 of the least of the memory available "
        "(MemAvailable), the address space RLIMIT_AS still allows and what the memory cgroup still allows; "
        "0 (no limit) when none of them can be read.");
  m.def("build_info", &build_info, "Version, compiler, OpenMP, CUDA and kernel sets of this build.");
  m.def(
      "tile_rate",
      [](long long rows, long long cols, long long d, const std::string& precision, int n_threads) {
        const ec::KernelSet* ks = parse_precision(precision);
        ec::TileRate r;
        run_native([&](ec::Cancel&) {
          r = ec::tile_product_rate(rows, cols, d, ks, ec::resolve_threads(n_threads));
        });
        py::dict out;
        out["seconds"] = r.seconds;
        out["gflops"] = r.gflops;
        out["kernels"] = r.kernels;
        return out;
      },
      py::arg("rows"), py::arg("cols"), py::arg("d"), py::arg("precision") = "auto", py::arg("n_threads") = 0,
      "Benchmark helper: GFLOP/s of the tile products alone (pack + multiply, no epilogue) for rows x cols "
      "products of dimension d on random data; returns dict(seconds, gflops, kernels).");
  m.def("select_kernels", [](const std::string& name) { ec::select_kernels(name); }, py::arg("name"),
        "Force a kernel set for this process: 'generic', 'avx2', 'avx512' or 'auto'.");
  m.def("active_kernels", [] { return std::string(ec::kernels().name); }, "Name of the kernel set in use.");
  m.attr("__version__") = EMBEDCLUSTER_VERSION;
  m.def("_stop_native_work_at_exit", &stop_native_work_at_exit,
        "atexit hook (registered at import): native calls on other threads stop and raise SystemExit; "
        "waits a few seconds for them. Returns the number still running.");
  m.def("_set_exit_wait", [](double s) { g_exit_wait_s = s; }, py::arg("seconds"),
        "For tests: how long the atexit hook waits for native calls in flight (default 5 s).");
  g_main_ident = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  py::module_::import("atexit").attr("register")(m.attr("_stop_native_work_at_exit"));
}
