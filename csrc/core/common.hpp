// Shared types of the native engine: sizes, metrics, errors, threading and cancellation helpers.
#pragma once

#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ec {

using idx_t = std::int64_t;  // every size and index is 64-bit: n*n and n*d overflow int32 early

/// A double as text ("%.*g"), without iostreams: a C++ stream's number facets crashed inside this
/// module on one machine (Python 3.12 with GCC 13's libstdc++), so the core reads and writes
/// numbers with the C library only.
inline std::string format_number(double v, int precision = 6) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
  return buf;
}

/// Distance or similarity used by an operation.
enum class Metric : int {
  L2 = 0,      ///< squared Euclidean distance ||x - y||^2
  IP = 1,      ///< inner product x.y (a similarity: larger is closer)
  Cosine = 2,  ///< cosine distance 1 - x.y / (||x|| ||y||)
};

/// Raised when the caller asked to stop (Ctrl-C); the bindings turn it back into KeyboardInterrupt.
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "interrupted"; }
};

/// A call would need more memory than its memory_limit allows (the bindings raise MemoryError).
struct MemoryLimitError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The invariant of every memory_limit the engine is given: 0 (no limit) or a finite number of
/// bytes >= 1. A fraction of a byte is an error: truncated, it would read as "no limit".
inline bool valid_memory_limit(double limit) { return limit == 0.0 || (std::isfinite(limit) && limit >= 1.0); }

/// The error for a memory_limit that breaks the invariant (or is not a number at all);
/// `shown` spells the value as the caller wrote it.
inline std::invalid_argument bad_memory_limit(const std::string& shown) {
  return std::invalid_argument("memory_limit=" + shown + " should be None, 0 (no limit) or a number of bytes >= 1");
}

/// Asserts the memory_limit invariant. `shown` spells the value as the caller wrote it (the
/// bindings pass Python's repr); empty: the shortest decimal that reads back as `limit`.
inline void check_memory_limit(double limit, const std::string& shown = {}) {
  if (valid_memory_limit(limit)) return;
  if (!shown.empty()) throw bad_memory_limit(shown);
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, limit);
  throw bad_memory_limit(std::string(buf, res.ptr));
}

/// Fails with MemoryLimitError, naming the size needed, when an up-front estimate of a call's
/// peak extra memory (`needed` bytes) exceeds `limit` bytes (0: no limit); first asserts the
/// limit's invariant (check_memory_limit), so every entry point that estimates its memory does.
inline void check_memory(double needed, double limit, const std::string& what) {
  check_memory_limit(limit);
  if (limit > 0.0 && needed > limit) {
    auto mib = [](double b) { return std::to_string(static_cast<long long>(b / 1048576.0 + 0.5)) + " MiB"; };
    throw MemoryLimitError(what + " needs about " + mib(needed) + " (" +
                           std::to_string(static_cast<long long>(std::ceil(needed))) +
                           " bytes) of working memory, more than memory_limit = " + mib(limit) +
                           "; raise memory_limit, free memory, or process the data in batches");
  }
}

/// The default memory_limit: 3/4 of the least of the memory available now (Linux:
/// MemAvailable), the address space RLIMIT_AS still allows (limit - current virtual size) and
/// what the process's memory cgroup still allows (limit - usage, v1 or v2); 0 (no limit) where
/// none can be read. At least 1 byte when something was read (a full machine is not "no limit").
double default_memory_limit();

/// How often Cancel::poll calls its callback, in microseconds (50 ms; tests set 0 to see every
/// poll). One value for the process.
inline std::atomic<std::int64_t>& poll_interval_us() {
  static std::atomic<std::int64_t> us{50000};
  return us;
}

/// Where a native call is: the step the algorithm named (a static string: "k-means iteration",
/// "kNN search", ...), its number `index` of `count` when the steps are numbered (iterations;
/// 0 of 0 otherwise), and within the step the tile-driver blocks `done` of the `total` started.
struct ProgressState {
  const char* step = "";
  int index = 0, count = 0;
  idx_t done = 0, total = 0;
};

/// Polled by long loops so that Ctrl-C stops native work within a fraction of a second, and
/// the channel through which the work reports its progress: the same callback, at the same
/// pace, sees the ProgressState and answers whether to stop.
/// Only the thread that entered the engine calls `poll` and `step`; workers read `stopped` and
/// count finished blocks (`work_done`, one relaxed atomic add per block of the tile driver).
class Cancel {
 public:
  using Check = std::function<bool(const ProgressState&)>;
  Cancel() = default;
  explicit Cancel(Check check) : check_(std::move(check)) {}
  /// A check that does not look at the progress.
  explicit Cancel(std::function<bool()> check)
      : Cancel(check ? Check([c = std::move(check)](const ProgressState&) { return c(); }) : Check()) {}
  /// Returns true when work should stop. Cheap: calls the callback at most every
  /// poll_interval_us (50 ms).
  bool poll() {
    if (stop_.load(std::memory_order_relaxed)) return true;
    if (!check_) return false;
#ifdef _OPENMP
    if (omp_get_thread_num() != 0) return false;
#endif
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::microseconds(poll_interval_us().load(std::memory_order_relaxed))) return false;
    last_ = now;
    if (check_(state())) stop_.store(true);
    return stop_.load();
  }
  bool stopped() const { return stop_.load(std::memory_order_relaxed); }
  void throw_if_stopped() const {
    if (stopped()) throw Interrupted();
  }

  /// Starts a step (outside parallel regions): `name` must outlive the call (a literal);
  /// done and total restart at 0.
  void step(const char* name, int index = 0, int count = 0) {
    if (hold_) return;
    step_ = name;
    index_ = index;
    count_ = count;
    done_.store(0, std::memory_order_relaxed);
    total_.store(0, std::memory_order_relaxed);
  }
  /// While held, step() keeps the current step: an algorithm run as a part of another's step
  /// (DBSCAN's coarse k-means) counts its blocks into that step instead of naming its own.
  /// HoldSteps holds for a scope.
  void hold_steps(bool hold) { hold_ = hold; }
  bool holding_steps() const { return hold_; }
  /// The tile driver: a pass of `blocks` more blocks begins within the current step.
  void add_work(idx_t blocks) { total_.fetch_add(blocks, std::memory_order_relaxed); }
  /// The tile driver: one block finished (any thread).
  void work_done() { done_.fetch_add(1, std::memory_order_relaxed); }
  ProgressState state() const {
    return {step_, index_, count_, done_.load(std::memory_order_relaxed), total_.load(std::memory_order_relaxed)};
  }

 private:
  Check check_;
  std::atomic<bool> stop_{false};
  std::chrono::steady_clock::time_point last_{};
  const char* step_ = "";
  int index_ = 0, count_ = 0;
  bool hold_ = false;
  std::atomic<idx_t> done_{0}, total_{0};
};

/// Holds a cancel's current step for its lifetime (Cancel::hold_steps), restoring the hold
/// that was in place before, so holds nest.
class HoldSteps {
 public:
  explicit HoldSteps(Cancel& cancel) : cancel_(cancel), was_(cancel.holding_steps()) { cancel.hold_steps(true); }
  ~HoldSteps() { cancel_.hold_steps(was_); }
  HoldSteps(const HoldSteps&) = delete;
  HoldSteps& operator=(const HoldSteps&) = delete;

 private:
  Cancel& cancel_;
  bool was_;
};

/// The threads an operation asked for cannot be started (the bindings raise MemoryError).
struct ThreadStartError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Makes sure `n` threads can run at once before a parallel region asks OpenMP for them:
/// libgomp ends the process ("Thread creation failed") when it cannot create a thread. Starts
/// n - 1 threads with libgomp's attributes (its stack size: OMP_STACKSIZE / GOMP_STACKSIZE,
/// else the default) and joins them; remembers the largest count known to work, so a call
/// probes only when it asks for more. Throws ThreadStartError naming n and what to do.
void ensure_threads(int n);

/// Number of threads an operation will use: `requested` if > 0, else the OpenMP default;
/// checked with ensure_threads, so call it before the parallel regions (it may throw).
inline int resolve_threads(int requested) {
#ifdef _OPENMP
  const int n = requested > 0 ? requested : omp_get_max_threads();
  ensure_threads(n);
  return n;
#else
  (void)requested;
  return 1;
#endif
}

/// Collects the first exception thrown inside an OpenMP region so it can be rethrown after the
/// join (an exception must never cross the region's boundary).
class ExceptionSlot {
 public:
  template <class F>
  void run(F&& f) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ptr_) ptr_ = std::current_exception();
      failed_.store(true);
    }
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  void rethrow() {
    if (ptr_) std::rethrow_exception(ptr_);
  }

 private:
  std::mutex mu_;
  std::exception_ptr ptr_;
  std::atomic<bool> failed_{false};
};

/// 64-byte aligned float buffer (RAII); the tile kernels rely on the alignment.
template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t n) { resize(n); }
  void resize(std::size_t n) {
    if (n <= size_) return;
    const std::size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    ptr_.reset(static_cast<T*>(p));
    size_ = n;
  }
  T* data() { return ptr_.get(); }
  const T* data() const { return ptr_.get(); }
  std::size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  std::size_t size_ = 0;
};

/// Small, fast, seedable generator (SplitMix64) so results do not depend on the C++ library.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform double in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  /// Uniform integer in [0, n).
  idx_t below(idx_t n) { return static_cast<idx_t>(uniform() * static_cast<double>(n)) % n; }

 private:
  std::uint64_t s_;
};

/// Throws std::invalid_argument with a message (mapped to ValueError by the bindings).
[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace ec
