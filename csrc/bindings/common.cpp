// The shared machinery of the bindings: array views and conversions, the Metric enum, the
// exceptions, and the interpreter-exit handling of native work in flight.
#include "common.hpp"

#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <thread>

namespace ecpy {

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

std::atomic<bool> g_exiting{false};
namespace {
std::atomic<int> g_in_flight{0};  // native calls that released the GIL and have not re-taken it
std::mutex g_flight_mu;
std::condition_variable g_flight_cv;
double g_exit_wait_s = 5.0;       // how long the atexit hook waits for calls in flight
unsigned long g_main_ident = 0;   // threading.main_thread().ident, read at import

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
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
}  // namespace

bool on_main_thread() { return PyThread_get_thread_ident() == g_main_ident; }

void raise_exiting() {
  PyErr_SetString(PyExc_SystemExit,
                  "embedcluster: native work stopped because the interpreter is exiting");
  throw py::error_already_set();
}

InFlight::InFlight() {
  if (g_exiting.load() && !on_main_thread()) raise_exiting();
  g_in_flight.fetch_add(1);
}

InFlight::~InFlight() {
  if (g_in_flight.fetch_sub(1) == 1) {
    std::lock_guard<std::mutex> lock(g_flight_mu);
    g_flight_cv.notify_all();
  }
}

void reacquire_gil(PyThreadState* ts, bool main) {
  if (!main && interpreter_finalizing())
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  PyEval_RestoreThread(ts);
}

void raise_interrupted(bool main) {
  if (!main && g_exiting.load()) raise_exiting();
  if (PyErr_Occurred()) throw py::error_already_set();
  PyErr_SetNone(PyExc_KeyboardInterrupt);
  throw py::error_already_set();
}

bool report_progress(const py::object& progress, const ec::ProgressState& s) noexcept {
  try {
    progress(py::str(s.step), s.index, s.count, s.done, s.total);
    return false;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return true;
}

// ---- Conversions.

Mat as_matrix(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    throw std::invalid_argument(std::string(name) + " must be 2-D (n_samples, n_features); got " +
                                std::to_string(a.ndim()) + "-D, try reshape(-1, n_features)");
  if (a.dtype().kind() != 'f' || a.itemsize() != 4 || !a.dtype().attr("isnative").cast<bool>())
    throw std::invalid_argument(std::string(name) + " must have dtype float32; got " +
                                std::string(py::str(a.dtype())) + ", try x.astype(numpy.float32)");
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) +
                                " rows must be C-contiguous, try numpy.ascontiguousarray(x)");
  const Mat m{static_cast<const float*>(a.data()), static_cast<idx_t>(a.shape(0)), static_cast<idx_t>(a.shape(1))};
  if (m.cols == 0) throw std::invalid_argument(std::string(name) + " has zero features (columns)");
  return m;
}

void same_features(const Mat& db, const Mat& q) {
  if (db.cols != q.cols)
    throw std::invalid_argument("queries have " + std::to_string(q.cols) + " features but the database has " +
                                std::to_string(db.cols));
}

const float* as_weights(const py::object& w, idx_t n) {
  if (w.is_none()) return nullptr;
  auto a = w.cast<py::array>();
  if (a.ndim() != 1 || static_cast<idx_t>(a.shape(0)) != n)
    throw std::invalid_argument("sample_weight must be 1-D with one weight per row (" + std::to_string(n) + ")");
  if (a.dtype().kind() != 'f' || a.itemsize() != 4 || !(a.flags() & py::array::c_style))
    throw std::invalid_argument("sample_weight must be a contiguous float32 array, try numpy.ascontiguousarray(w, numpy.float32)");
  return static_cast<const float*>(a.data());
}

namespace {
/// The engine's metric names; the Metric enum is bound with the same names.
constexpr std::pair<const char*, ec::Metric> kMetrics[] = {
    {"l2", ec::Metric::L2}, {"ip", ec::Metric::IP}, {"cosine", ec::Metric::Cosine}};
}  // namespace

ec::Metric metric_of(const py::object& metric) {
  if (py::isinstance<ec::Metric>(metric)) return metric.cast<ec::Metric>();
  const std::string name = py::isinstance<py::str>(metric) ? metric.cast<std::string>() : std::string(py::repr(metric));
  for (const auto& [n, m] : kMetrics)
    if (name == n) return m;
  throw std::invalid_argument("unknown metric '" + name + "'; use 'l2', 'ip' or 'cosine'");
}

const ec::KernelSet* kernels_of(const std::string& precision) {
  if (precision == "auto") return nullptr;
  if (precision == "fp32") return &ec::fp32_kernels();
  throw std::invalid_argument("precision='" + precision + "' is unknown; use 'auto' or 'fp32'");
}

double memory_limit_of(const py::object& v) {
  if (v.is_none()) return ec::default_memory_limit();
  static const py::object real = py::module_::import("numbers").attr("Real");
  static const py::object np_bool = py::module_::import("numpy").attr("bool_");
  const std::string shown = py::repr(v);
  // Type conversion: a real number that is not a bool, as a double.
  if (py::isinstance<py::bool_>(v) || py::isinstance(v, np_bool) || !py::isinstance(v, real))
    throw ec::bad_memory_limit(shown);
  double b = std::numeric_limits<double>::infinity();
  try {
    b = py::float_(v).cast<double>();
  } catch (const py::error_already_set& e) {
    if (!e.matches(PyExc_OverflowError)) throw;  // an int beyond float range: the core rejects it
  }
  // The value's rule is the core's (check_memory asserts it on every call); asked here only so
  // that the error spells the value as Python does (np.float64(nan), an int beyond float range).
  ec::check_memory_limit(b, shown);
  return b;
}

void bind_common(py::module_& m) {
  py::register_exception<ec::MemoryLimitError>(m, "MemoryLimitError", PyExc_MemoryError);
  py::register_exception<ec::ThreadStartError>(m, "ThreadStartError", PyExc_MemoryError);
  py::enum_<ec::Metric> metric(m, "Metric",
                               "The engine's metrics: l2 (squared Euclidean distance), ip (inner product, a "
                               "similarity) and cosine (1 - cos). Functions also take these names as strings.");
  for (const auto& [name, value] : kMetrics) metric.value(name, value);
  m.def("default_memory_limit", &ec::default_memory_limit,
        "The memory_limit that None stands for, in bytes, now: 3/4 of the least of the memory available "
        "(MemAvailable), the address space RLIMIT_AS still allows and what the memory cgroup still allows; "
        "0 (no limit) when none of them can be read.");
  m.def("_stop_native_work_at_exit", &stop_native_work_at_exit,
        "atexit hook (registered at import): native calls on other threads stop and raise SystemExit; "
        "waits a few seconds for them. Returns the number still running.");
  m.def("_set_exit_wait", [](double s) { g_exit_wait_s = s; }, py::arg("seconds"),
        "For tests: how long the atexit hook waits for native calls in flight (default 5 s).");
  m.def("_set_poll_interval",
        [](double s) {
          if (!(s >= 0.0 && s <= 3600.0)) throw std::invalid_argument("seconds should be in [0, 3600]");
          const auto old = ec::poll_interval_us().exchange(static_cast<std::int64_t>(s * 1e6));
          return static_cast<double>(old) / 1e6;
        },
        py::arg("seconds"),
        "For tests: how often native work checks for Ctrl-C and reports progress (default 0.05 s; 0: at every "
        "poll). Returns the previous value.");
  g_main_ident = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  py::module_::import("atexit").attr("register")(m.attr("_stop_native_work_at_exit"));
}

}  // namespace ecpy
