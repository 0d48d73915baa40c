// Packing of point sets and the exact final selection shared by kNN, k-means and DBSCAN.
#include "engine.hpp"
#include "tile_driver.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

namespace ec {

namespace {

/// The lines of a text file (none when it cannot be read), with the C library (see
/// format_number for why not iostreams).
std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> lines;
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return lines;
  std::string line;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), f)) {
    line += buf;
    if (!line.empty() && line.back() == '\n') {
      line.pop_back();
      lines.push_back(line);
      line.clear();
    }
  }
  if (!line.empty()) lines.push_back(line);
  std::fclose(f);
  return lines;
}

/// First number in a file (0 when absent or unreadable; "max" reads as 0 too).
double read_number(const std::string& path) {
  const std::vector<std::string> lines = read_lines(path);
  if (lines.empty()) return 0.0;
  char* end = nullptr;
  const double v = std::strtod(lines[0].c_str(), &end);
  return end == lines[0].c_str() ? 0.0 : v;
}

/// Bytes the process's memory cgroups still allow (the least over the cgroup and its ancestors;
/// v2: memory.max - memory.current, v1: memory.limit_in_bytes - memory.usage_in_bytes), or
/// infinity when no limit is set or none can be read.
double cgroup_room() {
  // For tests only: a fake /proc/self/cgroup and cgroup mount (the real ones need privileges).
  const char* proc_env = std::getenv("EMBEDCLUSTER_TEST_PROC_CGROUP");
  const char* root_env = std::getenv("EMBEDCLUSTER_TEST_CGROUP_ROOT");
  const std::string root = root_env && *root_env ? root_env : "/sys/fs/cgroup";
  double room = std::numeric_limits<double>::infinity();
  for (const std::string& line : read_lines(proc_env && *proc_env ? proc_env : "/proc/self/cgroup")) {
    // "0::/path" (v2) or "N:memory:/path" (v1; also "N:cpu,memory:/path").
    const auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string ctrl = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    const bool v2 = ctrl.empty();
    if (!v2 && ("," + ctrl + ",").find(",memory,") == std::string::npos) continue;
    const std::string base = v2 ? root : root + "/memory";
    const char* lim_file = v2 ? "/memory.max" : "/memory.limit_in_bytes";
    const char* use_file = v2 ? "/memory.current" : "/memory.usage_in_bytes";
    // Walk from the process's cgroup up to the root; inside a cgroup namespace the mount is the
    // process's own cgroup, so the path may not exist below it: then the mount's files count.
    for (;;) {
      const std::string dir = base + (path == "/" ? "" : path);
      const double lim = read_number(dir + lim_file);
      if (lim > 0.0 && lim < 1e18) {  // v1 reports "no limit" as ~2^63, v2 as "max"
        const double used = read_number(dir + use_file);
        room = std::min(room, std::max(0.0, lim - used));
      }
      if (path.empty() || path == "/") break;
      const auto slash = path.find_last_of('/');
      path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
  }
  return room;
}

/// Bytes of address space RLIMIT_AS still allows (the limit minus the current virtual size),
/// or infinity when there is no such limit.
double address_space_room() {
  rlimit rl{};
  if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return std::numeric_limits<double>::infinity();
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const double vsize = read_number("/proc/self/statm") * page;  // first field: total pages
  return std::max(0.0, static_cast<double>(rl.rlim_cur) - vsize);
}

/// libgomp's thread stack size: OMP_STACKSIZE (a size with an optional B/K/M/G suffix, K by
/// default), else GOMP_STACKSIZE (KiB); 0: not set (the default attributes).
std::size_t omp_stack_size() {
  for (const char* name : {"OMP_STACKSIZE", "GOMP_STACKSIZE"}) {
    const char* v = std::getenv(name);
    if (!v || !*v) continue;
    char* end = nullptr;
    const double x = std::strtod(v, &end);
    if (!(x > 0.0)) continue;
    while (end && *end == ' ') ++end;
    double unit = 1024.0;
    if (name[0] == 'O' && end && *end) {
      switch (*end) {
        case 'b': case 'B': unit = 1.0; break;
        case 'k': case 'K': unit = 1024.0; break;
        case 'm': case 'M': unit = 1048576.0; break;
        case 'g': case 'G': unit = 1073741824.0; break;
        default: break;
      }
    }
    return static_cast<std::size_t>(x * unit);
  }
  return 0;
}

std::atomic<int> g_threads_ok{1};  // the largest thread count known to start
std::mutex g_threads_probe;

struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
};

void* wait_at_gate(void* arg) {
  Gate& g = *static_cast<Gate*>(arg);
  std::unique_lock<std::mutex> lock(g.mu);
  g.cv.wait(lock, [&] { return g.open; });
  return nullptr;
}

}  // namespace

void ensure_threads(int n) {
  if (n <= g_threads_ok.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> probe(g_threads_probe);
  if (n <= g_threads_ok.load()) return;
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) throw ThreadStartError("pthread_attr_init failed");
  const std::size_t stack = omp_stack_size();
  if (stack > 0) pthread_attr_setstacksize(&attr, stack);
  Gate gate;
  std::vector<pthread_t> started;
  int rc = 0;
  try {
    started.reserve(static_cast<std::size_t>(n - 1));
    for (int i = 0; i < n - 1 && rc == 0; ++i) {
      pthread_t t;
      rc = pthread_create(&t, &attr, wait_at_gate, &gate);
      if (rc == 0) started.push_back(t);
    }
  } catch (const std::bad_alloc&) {
    rc = ENOMEM;
  }
  {
    std::lock_guard<std::mutex> lock(gate.mu);
    gate.open = true;
  }
  gate.cv.notify_all();
  for (pthread_t t : started) pthread_join(t, nullptr);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    const int can = static_cast<int>(started.size()) + 1;  // the calling thread is one of them
    throw ThreadStartError("n_threads=" + std::to_string(n) + ": only " + std::to_string(can) +
                           " threads could be started at once here (pthread_create: " + std::strerror(rc) +
                           "); use a smaller n_threads (the machine has " +
                           std::to_string(std::thread::hardware_concurrency()) +
                           " cores), or give the process more memory / a larger thread limit");
  }
  g_threads_ok.store(n, std::memory_order_release);
}

double default_memory_limit() {
  double avail = 0.0;
  for (const std::string& line : read_lines("/proc/meminfo")) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      const double kib = std::strtod(line.c_str() + 13, nullptr);
      avail = kib * 1024.0;
      break;
    }
  }
  if (!(avail > 0.0)) {
    const long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && size > 0) avail = static_cast<double>(pages) * static_cast<double>(size);
  }
  double room = avail > 0.0 ? avail : std::numeric_limits<double>::infinity();
  room = std::min({room, address_space_room(), cgroup_room()});
  if (!std::isfinite(room)) return 0.0;  // nothing could be read: no limit
  // A quarter is kept back for what the estimates leave out (allocator slack, thread stacks).
  return std::max(1.0, 0.75 * room);
}

namespace {

/// What pack_set's blocks find about their rows: the largest squared norm, the first zero row
/// (cosine), the largest input rounding error. Each thread keeps its own; max and min do not
/// depend on the order in which the threads' values are combined.
struct PackFindings {
  double max_sq = 0.0;
  idx_t zero_row = -1;
  double in_err_max = 0.0;

  void merge(const PackFindings& o) {
    max_sq = std::max(max_sq, o.max_sq);
    if (o.zero_row >= 0) zero_row = zero_row < 0 ? o.zero_row : std::min(zero_row, o.zero_row);
    in_err_max = std::max(in_err_max, o.in_err_max);
  }
};

/// Rows [r0, r0 + cnt) of a set being packed: their norms, tile offsets, cosine scales and input
/// errors, then their panel (r0 a multiple of nr, cnt <= nr).
void pack_panel(PackedSet& out, const KernelSet& ks, idx_t r0, idx_t cnt, float* scale, PackFindings& found) {
  const idx_t d = out.d;
  const Metric m = out.metric;
  for (idx_t i = r0; i < r0 + cnt; ++i) {
    const double sq = sqnorm(out.row(i), d);
    out.norm[i] = std::sqrt(sq);
    if (m == Metric::Cosine) {
      if (sq == 0.0)
        found.zero_row = found.zero_row < 0 ? i : std::min(found.zero_row, i);
      else
        scale[i] = static_cast<float>(1.0 / std::sqrt(sq));
    }
    out.add.data()[i] = m == Metric::L2 ? static_cast<float>(sq) : 0.0f;
    found.max_sq = std::max(found.max_sq, sq);
  }
  if (ks.input_rel > 0.0) {
    for (idx_t i = r0; i < r0 + cnt; ++i) {
      const double e = input_error(ks, out.row(i), d, m == Metric::Cosine ? scale[i] : 1.0f);
      out.in_err[i] = static_cast<float>(e * (1.0 + 1e-6));  // rounding to float must not shrink it
      found.in_err_max = std::max(found.in_err_max, static_cast<double>(out.in_err[i]));
    }
  }
  ks.pack(out.rows ? out.src : out.src + r0 * d, d, out.rows ? out.rows + r0 : nullptr,
          m == Metric::Cosine ? scale + r0 : nullptr, cnt, d, ks.nr, out.panels.data() + r0 * ks.depth(d));
}

/// Panels per block of pack_set's parallel loop (a few hundred rows).
idx_t panels_per_block(const KernelSet& ks) { return std::max<idx_t>(1, 256 / ks.nr); }

}  // namespace

void pack_set(PackedSet& out, const float* y, idx_t n, idx_t d, Metric m, const idx_t* rows,
              int threads, const KernelSet* kernel_set) {
  const KernelSet& ks = kernel_set ? *kernel_set : kernels();
  out.metric = m;
  out.n = n;
  out.d = d;
  out.n_pad = round_up(n, ks.nr);
  out.src = y;
  out.rows = rows;
  out.mul = m == Metric::L2 ? -2.0f : -1.0f;
  out.panels.resize(static_cast<std::size_t>(out.n_pad * ks.depth(d)));
  out.rel_err = tile_rel_err(d, ks);
  out.ks = &ks;
  out.add.resize(static_cast<std::size_t>(out.n_pad));
  out.norm.assign(static_cast<std::size_t>(n), 0.0);
  out.in_err.assign(static_cast<std::size_t>(ks.input_rel > 0.0 ? n : 0), 0.0f);
  std::vector<float> scale(static_cast<std::size_t>(m == Metric::Cosine ? n : 0));
  // One pass over the rows, a block of panels at a time: every row is read while it is in cache.
  PackFindings found;
  const idx_t block_rows = panels_per_block(ks) * ks.nr;
  Cancel no_cancel;  // bounded work (one read of the rows): not worth polling
  for_each_block<PackFindings>(
      threads, (n + block_rows - 1) / block_rows, 1, no_cancel, [](PackFindings&) {},
      [&](PackFindings& local, idx_t blk, const StopCheck&) {
        const idx_t end = std::min(n, (blk + 1) * block_rows);
        for (idx_t r0 = blk * block_rows; r0 < end; r0 += ks.nr)
          pack_panel(out, ks, r0, std::min<idx_t>(ks.nr, n - r0), scale.data(), local);
      },
      [&](PackFindings& local) { found.merge(local); });
  if (!(found.max_sq <= kMaxSqNorm)) {
    std::vector<double> sq(out.norm.size());
    for (std::size_t i = 0; i < sq.size(); ++i) sq[i] = out.norm[i] * out.norm[i];
    check_sqnorms(sq, "data", rows);
  }
  if (found.zero_row >= 0)
    fail("row " + std::to_string(rows ? rows[found.zero_row] : found.zero_row) +
         " has zero norm; the cosine metric is undefined for it (drop zero rows or use metric='l2')");
  for (idx_t i = n; i < out.n_pad; ++i) out.add.data()[i] = std::numeric_limits<float>::infinity();
  out.max_sqnorm = m == Metric::Cosine ? 1.0 : found.max_sq;
  out.in_err_max = found.in_err_max;
}

TileRate tile_product_rate(idx_t rows, idx_t cols, idx_t d, const KernelSet* kernel_set, int threads) {
  const KernelSet& ks = kernel_set ? *kernel_set : kernels();
  if (rows < 1 || cols < 1 || d < 1) fail("tile_product_rate needs rows, cols and d >= 1");
  // Distinct rows in memory (at most 2^16, reused in turn), random values in [-1, 1).
  const idx_t held = std::min<idx_t>(rows, 65536);
  std::vector<float> x(static_cast<std::size_t>(held * d)), y(static_cast<std::size_t>(cols * d));
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<double>(state >> 11) * 0x1p-52 - 1.0);
  };
  for (auto& v : x) v = next();
  for (auto& v : y) v = next();
  PackedSet set;
  pack_set(set, y.data(), cols, d, Metric::L2, nullptr, threads, &ks);
  constexpr idx_t kBlock = 144;  // the k-means query tile
  const idx_t depth = ks.depth(d), nblocks = (rows + kBlock - 1) / kBlock;
  struct Local {
    AlignedBuffer<float> a, c;
    std::vector<idx_t> idx;
    double sink = 0.0;  // keeps the products observable
  };
  auto run = [&](idx_t blocks) {
    double sink = 0.0;
    Cancel no_cancel;  // a short measurement: not worth polling
    for_each_block<Local>(
        threads, blocks, 4, no_cancel,
        [&](Local& l) {
          l.a.resize(static_cast<std::size_t>(round_up(kBlock, ks.mr) * depth));  // whole micro-tiles
          l.c.resize(static_cast<std::size_t>(round_up(kBlock, ks.mr) * set.n_pad));
          l.idx.resize(static_cast<std::size_t>(kBlock));
        },
        [&](Local& l, idx_t b, const StopCheck&) {
          const idx_t r0 = b * kBlock, m = std::min(kBlock, rows - r0);
          for (idx_t i = 0; i < m; ++i) l.idx[i] = (r0 + i) % held;
          ks.pack(x.data(), d, l.idx.data(), nullptr, m, d, ks.mr, l.a.data());
          ks.gemm(l.a.data(), set.panels.data(), round_up(m, ks.mr), set.n_pad, depth, l.c.data(), set.n_pad);
          l.sink += l.c.data()[0];
        },
        [&](Local& l) { sink += l.sink; });
    return sink;
  };
  run(std::min<idx_t>(nblocks, 4 * threads));  // warm-up: threads, caches, frequency
  TileRate r;
  r.seconds = std::numeric_limits<double>::infinity();
  for (int rep = 0; rep < 3; ++rep) {  // the fastest of three: a peak, not a typical time
    const auto t0 = std::chrono::steady_clock::now();
    volatile double keep = run(nblocks);
    (void)keep;
    r.seconds = std::min(r.seconds, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  r.gflops = 2.0 * static_cast<double>(rows) * static_cast<double>(cols) * static_cast<double>(d) / r.seconds / 1e9;
  r.kernels = ks.name;
  return r;
}

void select_exact(RowCands& rc, int k, const float* x, double xnorm, const PackedSet& set,
                  std::vector<std::pair<double, idx_t>>& scratch, double* out_val, idx_t* out_idx) {
  rc.compact();
  scratch.clear();
  for (const auto& c : rc.cands())
    scratch.emplace_back(exact_value(set.metric, x, set.row(c.j), set.d, xnorm, set.norm[c.j]), c.j);
  const std::size_t kk = std::min<std::size_t>(static_cast<std::size_t>(k), scratch.size());
  std::partial_sort(scratch.begin(), scratch.begin() + kk, scratch.end());
  for (std::size_t t = 0; t < kk; ++t) {
    out_val[t] = scratch[t].first;
    out_idx[t] = scratch[t].second;
  }
  for (std::size_t t = kk; t < static_cast<std::size_t>(k); ++t) {
    out_val[t] = std::numeric_limits<double>::infinity();
    out_idx[t] = -1;
  }
}

}  // namespace ec
