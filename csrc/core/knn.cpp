// Exact kNN and radius queries: query blocks streamed in parallel against the packed database.
#include "knn.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "border_key.hpp"
#include "engine.hpp"
#include "tile_driver.hpp"
#include "union_find.hpp"

namespace ec {
namespace {

constexpr idx_t kQueryBlock = 144;  // rows of queries per tile (a multiple of every mr)
constexpr idx_t kDbBlock = 256;     // database rows per tile (a multiple of every nr)

void check_common(idx_t n, idx_t nq, idx_t d) {
  if (n <= 0) fail("the database is empty; fit on at least one row");
  if (nq < 0) fail("negative number of queries");
  if (d <= 0) fail("zero features; rows need at least one column");
  if (n > static_cast<idx_t>(std::numeric_limits<std::int32_t>::max()) * 64)
    fail("database too large for one call; split it into shards");
}

/// Squared norms of the queries (fp64); cosine rejects zero rows.
std::vector<double> query_sqnorms(const float* q, idx_t nq, idx_t d, Metric m, int threads) {
  std::vector<double> qsq(static_cast<std::size_t>(nq));
  parallel_for(threads, nq, [&](idx_t i) { qsq[i] = sqnorm(q + i * d, d); });
  check_sqnorms(qsq, "query");
  if (m == Metric::Cosine)
    for (idx_t i = 0; i < nq; ++i)
      if (qsq[i] == 0.0)
        fail("query row " + std::to_string(i) + " has zero norm; the cosine metric is undefined for it");
  return qsq;
}

/// Each query row's rounding error when `set`'s kernels round their inputs (input_error), once
/// per query; empty for fp32 kernels.
std::vector<double> query_errors(const PackedSet& set, const float* q, idx_t nq, int threads) {
  std::vector<double> e(set.in_err.empty() ? 0 : static_cast<std::size_t>(nq));
  parallel_for(threads, static_cast<idx_t>(e.size()), [&](idx_t i) { e[i] = input_error(*set.ks, q + i * set.d, set.d); });
  return e;
}

/// Converts an exact ranking value to what the caller sees (IP is reported as the dot product).
inline float reported(Metric m, double v) { return static_cast<float>(m == Metric::IP ? -v : v); }

/// Where a top-k search writes: reported distances, indices and, optionally, the fp64 values.
struct KnnOut {
  float* dist;
  idx_t* idx;
  double* exact;  ///< may be null
  /// Row i's k selected values (fp64 ranking values, ascending).
  void write(const KnnParams& p, idx_t i, const double* vals) const {
    for (int u = 0; u < p.k; ++u) dist[i * p.k + u] = reported(p.metric, vals[u]);
    if (exact != nullptr) std::copy(vals, vals + p.k, exact + i * p.k);
  }
};

}  // namespace

namespace {
/// Packed database copy, query norms and per-thread tiles, in bytes.
double scan_bytes(const KernelSet* kset, idx_t n, idx_t nq, idx_t d, int threads) {
  const KernelSet& ks = kset ? *kset : kernels_for(KernelFamily::knn, d);
  const double n_pad = static_cast<double>(round_up(n, ks.nr));
  return n_pad * (static_cast<double>(ks.depth(d)) * 4.0 + 4.0) + (ks.input_rel > 0.0 ? 12.0 : 8.0) * static_cast<double>(n) +
         (ks.input_rel > 0.0 ? 16.0 : 8.0) * static_cast<double>(nq) +
         threads * (static_cast<double>(kQueryBlock) * (static_cast<double>(ks.depth(d)) + kDbBlock) * 4.0 +
                    static_cast<double>(kDbBlock) * 8.0);
}
}  // namespace

namespace {
double knn_bytes(const KnnParams& p, idx_t n, idx_t nq, idx_t d) {
  const int threads = resolve_threads(p.n_threads);
  const double per_query_cands = (2.0 * p.k + 64.0) * 16.0;  // candidate lists of a query block
  return scan_bytes(p.kernel_set, n, nq, d, threads) + threads * kQueryBlock * per_query_cands +
         static_cast<double>(nq) * p.k * 12.0;
}
}  // namespace

void knn_check_memory(const KnnParams& p, idx_t n, idx_t nq, idx_t d) {
  check_memory(knn_bytes(p, n, nq, d), p.memory_limit, "k-NN search of " + std::to_string(nq) + " queries against " + std::to_string(n) + " rows");
}

namespace {
/// Working memory of a radius query before its result lists: the scan, and per query a count
/// (radius_count) or an empty list and an offset (radius_search: both counted, the larger).
double radius_bytes(const RadiusParams& p, idx_t n, idx_t nq, idx_t d) {
  return scan_bytes(p.kernel_set, n, nq, d, resolve_threads(p.n_threads)) +
         (sizeof(std::vector<std::pair<idx_t, float>>) + 2.0 * sizeof(idx_t)) * static_cast<double>(nq);
}
}  // namespace

void radius_check_memory(const RadiusParams& p, idx_t n, idx_t nq, idx_t d) {
  check_memory(radius_bytes(p, n, nq, d), p.memory_limit,
               "radius query of " + std::to_string(nq) + " queries against " + std::to_string(n) + " rows");
}

namespace {

constexpr idx_t kSelfBlock = 192;  // square blocks of the self-join (a multiple of every mr and nr)
constexpr int kSelfSlack = 16;     // candidates kept beyond 2k per row between compactions

/// Bytes of the per-row candidate lists of the symmetric self-join.
double self_join_bytes(idx_t n, int k) {
  // The list's storage, the object, and the allocator's per-block overhead.
  return static_cast<double>(n) * ((2.0 * k + kSelfSlack) * sizeof(RowCands::Cand) + sizeof(RowCands) + 32.0);
}

/// The self-join (queries = database) computing each pair of blocks once: the tile of block I
/// against block J >= I feeds the rows of I (row by row) and the rows of J (its transpose). A
/// product x_i . x_j is the same number in both roles and the error bound of a tile value is
/// symmetric, so every row keeps exactly the candidates the one-sided scan would keep, and the
/// fp64 selection gives the same result with half the products. Per-row candidate lists live
/// for the whole call (guarded per block; a thread never holds two locks).
/// The self-join's handler: the tile of block I against block J >= I feeds the rows of I (row by
/// row) and the rows of J (its transpose) into per-row candidate lists that live for the whole
/// call (guarded per block; a thread never holds two locks).
class SelfJoinHandler {
 public:
  struct Local {
    AlignedBuffer<float> transposed;
    std::vector<std::int32_t> idx;
    std::vector<float> val;
  };
  SelfJoinHandler(const PackedSet& set, std::vector<RowCands>& cands, bool exclude_self)
      : set_(set), cands_(cands), exclude_self_(exclude_self),
        locks_(new std::mutex[static_cast<std::size_t>((set.n + kSelfBlock - 1) / kSelfBlock)]) {}
  void init(Local& l) const {
    l.transposed.resize(static_cast<std::size_t>(kSelfBlock * kSelfBlock));
    l.idx.resize(kSelfBlock);
    l.val.resize(kSelfBlock);
  }
  void begin(Local&, idx_t, idx_t) const {}
  void tile(Local& l, idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm) {
    {
      std::lock_guard<std::mutex> g(locks_[q0 / kSelfBlock]);
      feed(l, c, ldc, q0, qm, b0, bm, b0 == q0);
    }
    if (b0 != q0) {
      float* t = l.transposed.data();
      for (idx_t i = 0; i < qm; ++i)
        for (idx_t j = 0; j < bm; ++j) t[j * kSelfBlock + i] = c[i * ldc + j];
      std::lock_guard<std::mutex> g(locks_[b0 / kSelfBlock]);
      feed(l, t, kSelfBlock, b0, bm, q0, qm, false);
    }
  }
  void end(Local&, idx_t, idx_t) const {}
  void finish(Local&) const {}

 private:
  /// Rows r0 .. r0 + rm of a tile (row i at tile + i * ld) against candidates j0 .. j0 + cm.
  void feed(Local& l, const float* tile, idx_t ld, idx_t r0, idx_t rm, idx_t j0, idx_t cm, bool diagonal) {
    const KernelSet& ks = *set_.ks;
    for (idx_t i = 0; i < rm; ++i) {
      RowCands& r = cands_[r0 + i];
      const idx_t cnt = ks.row_filter(tile + i * ld, set_.add.data() + j0, set_.mul, cm, r.threshold(),
                                      l.idx.data(), l.val.data());
      for (idx_t u = 0; u < cnt; ++u) {
        const idx_t j = j0 + l.idx[u];
        if (diagonal && exclude_self_ && j == r0 + i) continue;
        r.add(l.val[u], j);
      }
    }
  }
  const PackedSet& set_;
  std::vector<RowCands>& cands_;
  const bool exclude_self_;
  std::unique_ptr<std::mutex[]> locks_;
};

/// The fp64 selection of every row's k best from its candidate lists, rows in blocks of 256.
void select_all(const KnnParams& p, const PackedSet& set, const float* q, const std::vector<double>& qsq,
                std::vector<RowCands>& cands, int threads, const KnnOut& out, Cancel& cancel) {
  constexpr idx_t kRows = 256;
  const idx_t n = static_cast<idx_t>(cands.size()), d = set.d;
  struct Local {
    std::vector<std::pair<double, idx_t>> scratch;
    std::vector<double> vals;
  };
  for_each_block<Local>(
      threads, (n + kRows - 1) / kRows, 1, cancel, [&](Local& l) { l.vals.resize(static_cast<std::size_t>(p.k)); },
      [&](Local& l, idx_t blk, const StopCheck&) {
        for (idx_t i = blk * kRows; i < std::min(n, (blk + 1) * kRows); ++i) {
          select_exact(cands[i], p.k, q + i * d, std::sqrt(qsq[i]), set, l.scratch, l.vals.data(), out.idx + i * p.k);
          out.write(p, i, l.vals.data());
          std::vector<RowCands::Cand>().swap(cands[i].cands());  // free as we go
        }
      });
}

/// The self-join (queries = database) computing each pair of blocks once. A product
/// x_i . x_j is the same number in both roles and the error bound of a tile value is
/// symmetric, so every row keeps exactly the candidates the one-sided scan would keep, and the
/// fp64 selection gives the same result with half the products.
void knn_self_join(const KnnParams& p, const PackedSet& set, const float* x, const std::vector<double>& xsq,
                   int threads, const KnnOut& out, Cancel& cancel) {
  const idx_t n = set.n;
  const bool cos = p.metric == Metric::Cosine;
  // Cosine: the blocks are packed as unit rows, exactly as the database panels are (same float
  // scale), so the products are symmetric and every row's bound is that of a unit vector.
  std::vector<float> scale(cos ? static_cast<std::size_t>(n) : 0);
  for (idx_t i = 0; i < static_cast<idx_t>(scale.size()); ++i) scale[i] = static_cast<float>(1.0 / std::sqrt(xsq[i]));
  std::vector<RowCands> cands(static_cast<std::size_t>(n));
  // Both sides are the set's own packed rows: their rounding errors are the set's.
  for (idx_t i = 0; i < n; ++i)
    cands[i].reset(p.k, 2.0f * row_bound_in(set, cos ? 1.0 : xsq[i], set.in_err.empty() ? 0.0 : set.in_err[i]),
                   kSelfSlack);
  ScanShape shape;
  shape.query_block = shape.set_block = kSelfBlock;
  shape.upper = true;
  shape.query_scale = cos ? scale.data() : nullptr;
  SelfJoinHandler h(set, cands, p.exclude_self);
  scan_tiles(set, x, n, shape, threads, cancel, h);
  select_all(p, set, x, xsq, cands, threads, out, cancel);
}

/// Top-k of each query: candidates within the error window of the running k-th best, selected
/// exactly in fp64 when the block's last tile was seen.
class TopKHandler {
 public:
  struct Local {
    std::vector<RowCands> cands;
    std::vector<std::int32_t> idx;
    std::vector<float> val;
    std::vector<std::pair<double, idx_t>> scratch;
    std::vector<double> vals;
  };
  TopKHandler(const KnnParams& p, const PackedSet& set, const float* q, const std::vector<double>& qsq,
              const std::vector<double>& qerr, const KnnOut& out)
      : p_(p), set_(set), q_(q), qsq_(qsq), qerr_(qerr), out_(out) {}
  void init(Local& l) const {
    l.idx.resize(kDbBlock);
    l.val.resize(kDbBlock);
    l.vals.resize(static_cast<std::size_t>(p_.k));
  }
  void begin(Local& l, idx_t q0, idx_t qm) const {
    l.cands.resize(static_cast<std::size_t>(qm));
    for (idx_t i = 0; i < qm; ++i)
      l.cands[i].reset(p_.k, 2.0f * row_bound_in(set_, qsq_[q0 + i], qerr_.empty() ? 0.0 : qerr_[q0 + i]));
  }
  void tile(Local& l, idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm) const {
    const KernelSet& ks = *set_.ks;
    for (idx_t i = 0; i < qm; ++i) {
      RowCands& rc = l.cands[i];
      const idx_t cnt =
          ks.row_filter(c + i * ldc, set_.add.data() + b0, set_.mul, bm, rc.threshold(), l.idx.data(), l.val.data());
      for (idx_t t = 0; t < cnt; ++t) {
        const idx_t j = b0 + l.idx[t];
        if (p_.exclude_self && j == q0 + i) continue;
        rc.add(l.val[t], j);
      }
    }
  }
  void end(Local& l, idx_t q0, idx_t qm) const {
    for (idx_t i = 0; i < qm; ++i) {
      const idx_t qi = q0 + i;
      select_exact(l.cands[i], p_.k, q_ + qi * set_.d, std::sqrt(qsq_[qi]), set_, l.scratch, l.vals.data(),
                   out_.idx + qi * p_.k);
      out_.write(p_, qi, l.vals.data());
    }
  }
  void finish(Local&) const {}

 private:
  const KnnParams& p_;
  const PackedSet& set_;
  const float* q_;
  const std::vector<double>& qsq_;
  const std::vector<double>& qerr_;
  const KnnOut out_;
};

}  // namespace

void knn_search(const KnnParams& p, const float* db, idx_t n, const float* q, idx_t nq, idx_t d,
                float* out_dist, idx_t* out_idx, Cancel& cancel, double* out_exact) {
  check_common(n, nq, d);
  knn_check_memory(p, n, nq, d);
  const KnnOut out{out_dist, out_idx, out_exact};
  const idx_t avail = p.exclude_self ? n - 1 : n;
  if (p.k <= 0) fail("k=" + std::to_string(p.k) + " should be >= 1");
  if (p.k > avail)
    fail("k=" + std::to_string(p.k) + " should be <= the number of database rows (" +
         std::to_string(avail) + (p.exclude_self ? " excluding the query itself)" : ")"));
  if (p.exclude_self && nq != n) fail("exclude_self needs the queries to be the database rows");
  const int threads = resolve_threads(p.n_threads);
  cancel.step("kNN search");
  PackedSet set;
  pack_set(set, db, n, d, p.metric, nullptr, threads, p.kernel_set ? p.kernel_set : &kernels_for(KernelFamily::knn, d));
  const std::vector<double> qsq = query_sqnorms(q, nq, d, p.metric, threads);
  // Queries that are the database: the symmetric self-join (half the products) when its
  // per-row candidate lists fit in a quarter of the memory limit and 1 GiB.
  const double sj = self_join_bytes(n, p.k);
  if (q == db && nq == n && p.self_join != 0 && sj <= 1024.0 * 1048576.0 &&
      (p.memory_limit <= 0.0 || knn_bytes(p, n, nq, d) + sj <= p.memory_limit)) {
    knn_self_join(p, set, db, qsq, threads, out, cancel);
    return;
  }

  const std::vector<double> qerr = query_errors(set, q, nq, threads);
  ScanShape shape;
  shape.query_block = kQueryBlock;
  shape.set_block = kDbBlock;
  TopKHandler h(p, set, q, qsq, qerr, out);
  scan_tiles(set, q, nq, shape, threads, cancel, h);
}

namespace {

/// Range search: every set row within the radius of a query goes to emit(query, j, exact
/// value) in ascending j per query. Values beyond the error band on the near side are certain
/// without fp64 (emit gets 0 for them unless need_value(query, j)).
template <class Emit, class NeedValue>
class RangeHandler {
 public:
  struct Local {
    std::vector<std::int32_t> idx;
    std::vector<float> val;
  };
  RangeHandler(const RadiusParams& p, const PackedSet& set, const float* q, const std::vector<double>& qsq,
               const std::vector<double>& qerr, NeedValue& need_value, Emit& emit)
      : p_(p), set_(set), q_(q), qsq_(qsq), qerr_(qerr), need_value_(need_value), emit_(emit) {}
  void init(Local& l) const {
    l.idx.resize(kDbBlock);
    l.val.resize(kDbBlock);
  }
  void begin(Local&, idx_t, idx_t) const {}
  void tile(Local& l, idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm) const {
    const KernelSet& ks = *set_.ks;
    const idx_t d = set_.d;
    for (idx_t i = 0; i < qm; ++i) {
      const idx_t qi = q0 + i;
      const double xn = std::sqrt(qsq_[qi]);
      // The radius in tile-value units, and the band where a decision needs fp64.
      const double thr = p_.metric == Metric::L2 ? p_.radius - qsq_[qi] : -(1.0 - p_.radius) * xn;
      const float bnd = row_bound_in(set_, qsq_[qi], qerr_.empty() ? 0.0 : qerr_[qi]);
      const idx_t cnt = ks.row_filter(c + i * ldc, set_.add.data() + b0, set_.mul, bm, static_cast<float>(thr) + bnd,
                                      l.idx.data(), l.val.data());
      for (idx_t t = 0; t < cnt; ++t) {
        const idx_t j = b0 + l.idx[t];
        if (p_.exclude_self && j == qi) continue;
        const bool sure = l.val[t] < static_cast<float>(thr) - bnd;
        if (sure && !need_value_(qi, j)) {
          emit_(qi, j, 0.0);
          continue;
        }
        const double v = exact_value(p_.metric, q_ + qi * d, set_.row(j), d, xn, set_.norm[j]);
        if (v <= p_.radius) emit_(qi, j, v);
      }
    }
  }
  void end(Local&, idx_t, idx_t) const {}
  void finish(Local&) const {}

 private:
  const RadiusParams& p_;
  const PackedSet& set_;
  const float* q_;
  const std::vector<double>& qsq_;
  const std::vector<double>& qerr_;
  NeedValue& need_value_;
  Emit& emit_;
};

/// Shared body of radius search and radius count: checks, packs, and scans with a RangeHandler.
template <class Emit, class NeedValue>
void radius_scan(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq,
                 idx_t d, NeedValue need_value, Cancel& cancel, Emit emit) {
  check_common(n, nq, d);
  if (p.metric == Metric::IP)
    fail("radius queries need metric 'l2' or 'cosine' (inner product is a similarity)");
  if (!(p.radius >= 0.0) || !std::isfinite(p.radius))
    fail("radius=" + std::to_string(p.radius) + " should be a finite number >= 0");
  if (p.exclude_self && nq != n) fail("exclude_self needs the queries to be the database rows");
  const int threads = resolve_threads(p.n_threads);
  PackedSet set;
  pack_set(set, db, n, d, p.metric, nullptr, threads, p.kernel_set ? p.kernel_set : &kernels_for(KernelFamily::knn, d));
  const std::vector<double> qsq = query_sqnorms(q, nq, d, p.metric, threads);
  const std::vector<double> qerr = query_errors(set, q, nq, threads);
  ScanShape shape;
  shape.query_block = kQueryBlock;
  shape.set_block = kDbBlock;
  RangeHandler<Emit, NeedValue> h(p, set, q, qsq, qerr, need_value, emit);
  cancel.step("radius search");
  scan_tiles(set, q, nq, shape, threads, cancel, h);
}

}  // namespace

namespace {

/// The result lists' share of memory_limit, charged as they grow (from every thread): a search
/// whose results would not fit fails with MemoryLimitError before it allocates beyond the limit.
class ResultBudget {
 public:
  ResultBudget(const RadiusParams& p, double base) : p_(p), base_(base) {}
  /// Reserves `bytes` more (or fails, naming the limit, the radius and what to do).
  void charge(double bytes) {
    if (!(p_.memory_limit > 0.0)) return;
    const auto b = static_cast<std::int64_t>(std::ceil(bytes));
    const std::int64_t now = used_.fetch_add(b, std::memory_order_relaxed) + b;
    if (base_ + static_cast<double>(now) > p_.memory_limit) {
      used_.fetch_sub(b, std::memory_order_relaxed);
      fail_now(base_ + static_cast<double>(now));
    }
  }
  std::int64_t used() const { return used_.load(); }

 private:
  [[noreturn]] void fail_now(double needed) const {
    auto mib = [](double v) { return std::to_string(static_cast<long long>(v / 1048576.0 + 0.5)) + " MiB"; };
    throw MemoryLimitError(
        "radius search with radius=" + format_number(p_.radius) + (p_.metric == Metric::L2 ? " (a squared distance)" : "") +
        " finds more neighbours than memory_limit = " + mib(p_.memory_limit) + " holds (it needed more than " +
        mib(needed) + " before finishing); use a smaller radius, count the neighbours first with radius_count, "
        "query fewer rows at a time, or raise memory_limit");
  }
  const RadiusParams& p_;
  const double base_;
  std::atomic<std::int64_t> used_{0};
};

using RadiusList = std::vector<std::pair<idx_t, float>>;
const auto always = [](idx_t, idx_t) { return true; };
const auto never = [](idx_t, idx_t) { return false; };
constexpr double kListEntry = sizeof(RadiusList::value_type);  // bytes per listed neighbour
constexpr double kCsrEntry = sizeof(idx_t) + sizeof(float);     // bytes per neighbour in the CSR

}  // namespace

void radius_search(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq,
                   idx_t d, RadiusResult& out, Cancel& cancel) {
  radius_check_memory(p, n, nq, d);
  // Per-query lists during the scan (their capacity charged as it grows, doubling), then the
  // CSR arrays while the lists still exist: both are charged, so the peak stays within the limit.
  ResultBudget budget(p, radius_bytes(p, n, nq, d));
  std::vector<RadiusList> per(static_cast<std::size_t>(nq > 0 ? nq : 0));
  radius_scan(p, db, n, q, nq, d, always, cancel, [&](idx_t qi, idx_t j, double v) {
    RadiusList& l = per[qi];
    if (l.size() == l.capacity()) {
      const std::size_t cap = std::max<std::size_t>(8, 2 * l.capacity());
      budget.charge(static_cast<double>(cap - l.capacity()) * kListEntry);
      l.reserve(cap);
    }
    l.emplace_back(j, static_cast<float>(v));
  });
  double total = 0.0;
  for (const auto& l : per) total += static_cast<double>(l.size());
  budget.charge(total * kCsrEntry);
  out.indptr.assign(static_cast<std::size_t>(nq + 1), 0);
  for (idx_t i = 0; i < nq; ++i) out.indptr[i + 1] = out.indptr[i] + static_cast<idx_t>(per[i].size());
  out.indices.resize(static_cast<std::size_t>(out.indptr[nq]));
  out.dist.resize(static_cast<std::size_t>(out.indptr[nq]));
  for (idx_t i = 0; i < nq; ++i) {
    idx_t o = out.indptr[i];
    for (const auto& e : per[i]) {
      out.indices[o] = e.first;
      out.dist[o] = e.second;
      ++o;
    }
    RadiusList().swap(per[i]);  // free as we go
  }
}

void radius_count(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq,
                  idx_t d, idx_t* out_count, Cancel& cancel) {
  radius_check_memory(p, n, nq, d);
  for (idx_t i = 0; i < nq; ++i) out_count[i] = 0;
  radius_scan(p, db, n, q, nq, d, never, cancel,
              [&](idx_t qi, idx_t, double) { ++out_count[qi]; });
}

void radius_count_both(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq,
                       idx_t d, idx_t* out_q, idx_t* out_db, Cancel& cancel) {
  radius_check_memory(p, n, nq, d);
  // A query's pairs come from the one thread scanning its block; a database row's from any.
  std::unique_ptr<std::atomic<idx_t>[]> db_counts(new std::atomic<idx_t>[static_cast<std::size_t>(std::max<idx_t>(n, 1))]);
  for (idx_t j = 0; j < n; ++j) db_counts[j].store(0, std::memory_order_relaxed);
  for (idx_t i = 0; i < nq; ++i) out_q[i] = 0;
  radius_scan(p, db, n, q, nq, d, never, cancel, [&](idx_t qi, idx_t j, double) {
    ++out_q[qi];
    db_counts[j].fetch_add(1, std::memory_order_relaxed);
  });
  for (idx_t j = 0; j < n; ++j) out_db[j] = db_counts[j].load(std::memory_order_relaxed);
}

namespace {

/// Unpacks the nearest-core words of `count` rows into indices (-1: none) and distances.
void unpack_borders(const std::atomic<std::uint64_t>* keys, idx_t count, std::vector<idx_t>& core,
                    std::vector<float>& dist) {
  core.assign(static_cast<std::size_t>(count), -1);
  dist.assign(static_cast<std::size_t>(count), 0.0f);
  for (idx_t i = 0; i < count; ++i) {
    const std::uint64_t k = keys[i].load(std::memory_order_relaxed);
    if (k == kNoBorder) continue;
    core[i] = static_cast<idx_t>(k & 0xffffffffu);
    const auto bits = static_cast<std::uint32_t>(k >> 32);
    std::memcpy(&dist[i], &bits, sizeof(bits));
  }
}

}  // namespace

void radius_pair_links(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq, idx_t d,
                       const std::uint8_t* q_is_core, const std::uint8_t* db_is_core, PairLinks& out,
                       Cancel& cancel) {
  radius_check_memory(p, n, nq, d);
  if (n >= (idx_t{1} << 32) || nq >= (idx_t{1} << 32)) fail("radius_pair_links takes fewer than 2^32 rows per side");
  ConcurrentUnionFind uf(nq + n);
  std::unique_ptr<std::atomic<std::uint64_t>[]> near(new std::atomic<std::uint64_t>[static_cast<std::size_t>(nq + n)]);
  for (idx_t i = 0; i < nq + n; ++i) near[i].store(kNoBorder, std::memory_order_relaxed);
  const auto mixed = [&](idx_t qi, idx_t j) { return q_is_core[qi] != db_is_core[j]; };
  radius_scan(p, db, n, q, nq, d, mixed, cancel, [&](idx_t qi, idx_t j, double v) {
    if (q_is_core[qi] && db_is_core[j])
      uf.unite(qi, nq + j);
    else if (db_is_core[j])
      atomic_min(near[qi], border_key(v, j));
    else if (q_is_core[qi])
      atomic_min(near[nq + j], border_key(v, qi));
  });
  out.component.assign(static_cast<std::size_t>(nq + n), -1);
  for (idx_t i = 0; i < nq + n; ++i)
    if (i < nq ? q_is_core[i] : db_is_core[i - nq]) out.component[i] = uf.find(i);
  unpack_borders(near.get(), nq, out.q_core, out.q_dist);
  unpack_borders(near.get() + nq, n, out.db_core, out.db_dist);
}

}  // namespace ec
