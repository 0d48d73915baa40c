// What every binding file shares: array views, type conversions, and running native work with
// the GIL released (Ctrl-C and interpreter exit handled). No parameter policy lives here: the
// Python estimators validate parameters, the core asserts its invariants, the bindings convert.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>
#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif

#include "../core/common.hpp"

namespace ec {
struct KMeansParams;
}
#include "../core/kernels.hpp"

namespace ecpy {

namespace py = pybind11;
using ec::idx_t;

// ---- Interpreter exit with native work in flight (see common.cpp for the whole story).
extern std::atomic<bool> g_exiting;  ///< set by the atexit hook

bool on_main_thread();
[[noreturn]] void raise_exiting();

/// Counts a native call in flight from before the GIL is released until after it is taken back.
class InFlight {
 public:
  InFlight();
  ~InFlight();
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;
};

/// Takes the GIL back after native work; a thread other than the finalizing one parks for good
/// once finalization has begun (CPython would end it with pthread_exit).
void reacquire_gil(PyThreadState* ts, bool main);

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

/// Raises KeyboardInterrupt (or SystemExit on a thread stopped by interpreter exit) after the
/// core stopped on a cancel request.
[[noreturn]] void raise_interrupted(bool main);

/// Calls progress(step, index, count, done, total) with the GIL held. Returns true (stop) when
/// it raised, leaving its exception pending for raise_interrupted; never throws.
bool report_progress(const py::object& progress, const ec::ProgressState& s) noexcept;

/// Runs native work with the GIL released; Ctrl-C stops it and raises KeyboardInterrupt; on a
/// thread other than the main thread, interpreter exit stops it and raises SystemExit.
/// `progress` (None or a callable): on the main thread, the poll that checks for Ctrl-C also
/// hands it the work's ProgressState (at most every 50 ms); on every thread it gets the final
/// state once the work returns. Other threads get no calls during the work: they never take
/// the GIL inside native work (see common.cpp).
template <class F>
void run_native(F&& f, const py::object& progress = py::none()) {
  const bool main = on_main_thread();
  const bool report = !progress.is_none();
  ec::Cancel cancel(ec::Cancel::Check([main, report, &progress](const ec::ProgressState& s) {
    if (!main) return g_exiting.load();  // signals are handled on the main thread only
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) return true;
    return report && report_progress(progress, s);
  }));
  try {
    without_gil([&] { f(cancel); });
  } catch (const ec::Interrupted&) {
    raise_interrupted(main);
  }
  if (report && report_progress(progress, cancel.state())) throw py::error_already_set();
}

// ---- Conversions.

/// A read-only view of a float32 C-contiguous 2-D array.
struct Mat {
  const float* data;
  idx_t rows, cols;
};

/// Checks shape, dtype and contiguity (not the values: finiteness is the estimators' check,
/// and the core's last line of defence) and returns a view without a copy.
Mat as_matrix(const py::array& a, const char* name);

/// Queries and database must have the same number of features.
void same_features(const Mat& db, const Mat& q);

/// A float32 C-contiguous 1-D array of n values (sample weights), or null for None.
const float* as_weights(const py::object& w, idx_t n);

/// The one metric-name table of the boundary: the engine's names ("l2", "ip", "cosine"), which
/// are also the names of the bound Metric enum. Accepts a Metric or one of these names.
ec::Metric metric_of(const py::object& metric);

/// Tile kernels for a call: "auto" = the process's choice (bf16 where the CPU has it), "fp32" =
/// the fp32 kernels of the same family. Results are the same; only speed differs.
const ec::KernelSet* kernels_of(const std::string& precision);

/// memory_limit argument: None = the default (ec::default_memory_limit), else a real number
/// (ints, floats and numpy numbers; not bools or strings) as a double. The value's rule (0 or
/// bytes >= 1) is the core's invariant (ec::check_memory_limit); its error names the value as
/// Python spells it.
double memory_limit_of(const py::object& v);

/// Hands a vector to numpy without a copy.
template <class T>
py::array_t<T> to_array(std::vector<T>&& v) {
  auto heap = std::make_unique<std::vector<T>>(std::move(v));
  std::vector<T>* raw = heap.get();
  py::capsule owner(raw, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  heap.release();  // the capsule owns it now
  return py::array_t<T>({static_cast<py::ssize_t>(raw->size())}, {sizeof(T)}, raw->data(), owner);
}

// ---- One registration function per file.
void bind_common(py::module_& m);
void bind_knn(py::module_& m);
void bind_kmeans(py::module_& m);
void bind_kmeans_chunk(py::module_& m);
void bind_dbscan(py::module_& m);
void bind_info(py::module_& m);

/// k-means parameters from the arguments the k-means bindings share (kmeans.cpp).
ec::KMeansParams kmeans_params(int k, const py::object& metric, std::uint64_t seed, int n_local_trials,
                               int n_threads, const py::object& memory_limit);

}  // namespace ecpy
