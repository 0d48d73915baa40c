// Exact kNN and radius queries: query blocks streamed in parallel against the packed database.
#include "knn.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>

#include "engine.hpp"

namespace ec {
namespace {

constexpr idx_t kQueryBlock = 144;  // rows of queries per tile (a multiple of every mr)
constexpr idx_t kDbBlock = 256;     // database rows per tile (a multiple of every nr)

/// Streams query blocks in parallel; for each block packs the queries and calls
/// on_tile(q0, qm, c, ldc, b0, bm) for every database block, then on_done(q0, qm).
template <class OnTile, class OnDone>
void stream_tiles(const PackedSet& set, const float* q, idx_t nq, int threads, Cancel& cancel,
                  OnTile on_tile, OnDone on_done) {
  const KernelSet& ks = *set.ks;
  const idx_t d = set.d;
  const idx_t nblocks = (nq + kQueryBlock - 1) / kQueryBlock;
  ExceptionSlot err;
#pragma omp parallel num_threads(threads)
  {
    TileScratch s;
    err.run([&] {
      s.a.resize(static_cast<std::size_t>(kQueryBlock * ks.depth(d)));
      s.c.resize(static_cast<std::size_t>(kQueryBlock * kDbBlock));
    });
#pragma omp for schedule(dynamic, 1)
    for (idx_t blk = 0; blk < nblocks; ++blk) {
      if (err.failed() || cancel.poll()) continue;
      err.run([&] {
        const idx_t q0 = blk * kQueryBlock;
        const idx_t qm = std::min(kQueryBlock, nq - q0);
        const idx_t qm_pad = round_up(qm, ks.mr);
        ks.pack(q + q0 * d, d, nullptr, nullptr, qm, d, ks.mr, s.a.data());
        for (idx_t b0 = 0; b0 < set.n; b0 += kDbBlock) {
          const idx_t bm = std::min(kDbBlock, set.n - b0);
          ks.gemm(s.a.data(), set.panels.data() + b0 * ks.depth(d), qm_pad, round_up(bm, ks.nr), ks.depth(d),
                  s.c.data(), kDbBlock);
          on_tile(q0, qm, s.c.data(), kDbBlock, b0, bm, s);
        }
        on_done(q0, qm);
      });
    }
  }
  err.rethrow();
  cancel.throw_if_stopped();
}

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

}  // namespace

namespace {
/// Packed database copy, query norms and per-thread tiles, in bytes.
double scan_bytes(const KernelSet* kset, idx_t n, idx_t nq, idx_t d, int threads) {
  const KernelSet& ks = kset ? *kset : kernels();
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
void knn_self_join(const KnnParams& p, const PackedSet& set, const float* x, const std::vector<double>& xsq,
                   int threads, float* out_dist, idx_t* out_idx, Cancel& cancel) {
  const KernelSet& ks = *set.ks;
  const idx_t n = set.n, d = set.d, depth = ks.depth(d);
  const idx_t nb = (n + kSelfBlock - 1) / kSelfBlock;
  const bool cos = p.metric == Metric::Cosine;
  // Cosine: the blocks are packed as unit rows, exactly as the database panels are (same float
  // scale), so the products are symmetric and every row's bound is that of a unit vector.
  std::vector<float> scale(cos ? static_cast<std::size_t>(n) : 0);
  for (idx_t i = 0; i < static_cast<idx_t>(scale.size()); ++i) scale[i] = static_cast<float>(1.0 / std::sqrt(xsq[i]));
  std::vector<RowCands> rc(static_cast<std::size_t>(n));
  // Both sides are the set's own packed rows: their rounding errors are the set's.
  for (idx_t i = 0; i < n; ++i)
    rc[i].reset(p.k, 2.0f * row_bound_in(set, cos ? 1.0 : xsq[i], set.in_err.empty() ? 0.0 : set.in_err[i]),
                kSelfSlack);
  std::unique_ptr<std::mutex[]> lock(new std::mutex[static_cast<std::size_t>(nb)]);
  ExceptionSlot err;
#pragma omp parallel num_threads(threads)
  {
    AlignedBuffer<float> a, c, t;
    std::vector<std::int32_t> idx;
    std::vector<float> val;
    err.run([&] {
      a.resize(static_cast<std::size_t>(kSelfBlock * depth));
      c.resize(static_cast<std::size_t>(kSelfBlock * kSelfBlock));
      t.resize(static_cast<std::size_t>(kSelfBlock * kSelfBlock));
      idx.resize(kSelfBlock);
      val.resize(kSelfBlock);
    });
    // Rows r0.. of a tile (values at c + i * ld) against candidates j0..j0+cm: add to rc.
    auto feed = [&](const float* tile, idx_t r0, idx_t rm, idx_t j0, idx_t cm, bool diag) {
      for (idx_t i = 0; i < rm; ++i) {
        RowCands& r = rc[r0 + i];
        const idx_t cnt = ks.row_filter(tile + i * kSelfBlock, set.add.data() + j0, set.mul, cm, r.threshold(),
                                        idx.data(), val.data());
        for (idx_t u = 0; u < cnt; ++u) {
          const idx_t j = j0 + idx[u];
          if (diag && p.exclude_self && j == r0 + i) continue;
          r.add(val[u], j);
        }
      }
    };
#pragma omp for schedule(dynamic, 1)
    for (idx_t bi = 0; bi < nb; ++bi) {
      if (err.failed() || cancel.poll()) continue;
      err.run([&] {
        const idx_t i0 = bi * kSelfBlock, im = std::min(kSelfBlock, n - i0);
        ks.pack(x + i0 * d, d, nullptr, cos ? scale.data() + i0 : nullptr, im, d, ks.mr, a.data());
        for (idx_t bj = bi; bj < nb; ++bj) {
          if (err.failed() || cancel.poll()) return;
          const idx_t j0 = bj * kSelfBlock, jm = std::min(kSelfBlock, n - j0);
          ks.gemm(a.data(), set.panels.data() + j0 * depth, round_up(im, ks.mr), round_up(jm, ks.nr), depth,
                  c.data(), kSelfBlock);
          {
            std::lock_guard<std::mutex> g(lock[bi]);
            feed(c.data(), i0, im, j0, jm, bj == bi);
          }
          if (bj != bi) {
            for (idx_t i = 0; i < im; ++i)
              for (idx_t j = 0; j < jm; ++j) t.data()[j * kSelfBlock + i] = c.data()[i * kSelfBlock + j];
            std::lock_guard<std::mutex> g(lock[bj]);
            feed(t.data(), j0, jm, i0, im, false);
          }
        }
      });
    }
    std::vector<std::pair<double, idx_t>> scr;
    std::vector<double> vals;
    err.run([&] { vals.resize(static_cast<std::size_t>(p.k)); });
#pragma omp barrier
    if (!err.failed() && !cancel.stopped()) {
#pragma omp for schedule(dynamic, 256)
      for (idx_t i = 0; i < n; ++i) {
        err.run([&] {
          select_exact(rc[i], p.k, x + i * d, std::sqrt(xsq[i]), set, scr, vals.data(), out_idx + i * p.k);
          for (int u = 0; u < p.k; ++u) out_dist[i * p.k + u] = reported(p.metric, vals[u]);
          std::vector<RowCands::Cand>().swap(rc[i].cands());  // free as we go
        });
      }
    }
  }
  err.rethrow();
  cancel.throw_if_stopped();
}

}  // namespace

void knn_search(const KnnParams& p, const float* db, idx_t n, const float* q, idx_t nq, idx_t d,
                float* out_dist, idx_t* out_idx, Cancel& cancel) {
  check_common(n, nq, d);
  knn_check_memory(p, n, nq, d);
  const idx_t avail = p.exclude_self ? n - 1 : n;
  if (p.k <= 0) fail("k=" + std::to_string(p.k) + " should be >= 1");
  if (p.k > avail)
    fail("k=" + std::to_string(p.k) + " should be <= the number of database rows (" +
         std::to_string(avail) + (p.exclude_self ? " excluding the query itself)" : ")"));
  if (p.exclude_self && nq != n) fail("exclude_self needs the queries to be the database rows");
  const int threads = resolve_threads(p.n_threads);
  PackedSet set;
  pack_set(set, db, n, d, p.metric, nullptr, threads, p.kernel_set);
  const std::vector<double> qsq = query_sqnorms(q, nq, d, p.metric, threads);
  // Queries that are the database: the symmetric self-join (half the products) when its
  // per-row candidate lists fit in a quarter of the memory limit and 1 GiB.
  const double sj = self_join_bytes(n, p.k);
  if (q == db && nq == n && p.self_join != 0 && sj <= 1024.0 * 1048576.0 &&
      (p.memory_limit <= 0.0 || knn_bytes(p, n, nq, d) + sj <= p.memory_limit)) {
    knn_self_join(p, set, db, qsq, threads, out_dist, out_idx, cancel);
    return;
  }

  const int nthreads = threads;
  std::vector<std::vector<RowCands>> cands(static_cast<std::size_t>(nthreads));
  std::vector<std::vector<std::pair<double, idx_t>>> scratch(static_cast<std::size_t>(nthreads));
  auto tid = [] {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
  };
  const std::vector<double> qerr = query_errors(set, q, nq, threads);
  stream_tiles(
      set, q, nq, threads, cancel,
      [&](idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm, TileScratch& s) {
        auto& rcs = cands[tid()];
        if (b0 == 0) {
          rcs.resize(static_cast<std::size_t>(qm));
          for (idx_t i = 0; i < qm; ++i) {
            rcs[i].reset(p.k, 2.0f * row_bound_in(set, qsq[q0 + i], qerr.empty() ? 0.0 : qerr[q0 + i]));
          }
        }
        s.idx.resize(static_cast<std::size_t>(bm));
        s.val.resize(static_cast<std::size_t>(bm));
        const KernelSet& ks = *set.ks;
        for (idx_t i = 0; i < qm; ++i) {
          RowCands& rc = rcs[i];
          const idx_t cnt = ks.row_filter(c + i * ldc, set.add.data() + b0, set.mul, bm,
                                          rc.threshold(), s.idx.data(), s.val.data());
          for (idx_t t = 0; t < cnt; ++t) {
            const idx_t j = b0 + s.idx[t];
            if (p.exclude_self && j == q0 + i) continue;
            rc.add(s.val[t], j);
          }
        }
      },
      [&](idx_t q0, idx_t qm) {
        auto& rcs = cands[tid()];
        auto& scr = scratch[tid()];
        std::vector<double> vals(static_cast<std::size_t>(p.k));
        for (idx_t i = 0; i < qm; ++i) {
          const idx_t qi = q0 + i;
          select_exact(rcs[i], p.k, q + qi * d, std::sqrt(qsq[qi]), set, scr, vals.data(),
                       out_idx + qi * p.k);
          for (int t = 0; t < p.k; ++t) out_dist[qi * p.k + t] = reported(p.metric, vals[t]);
        }
      });
}

namespace {

/// Shared body of radius search and radius count: calls emit(query, j, exact_value) for every
/// database row within the radius, in ascending j per query.
template <class Emit>
void radius_scan(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq,
                 idx_t d, bool need_value, Cancel& cancel, Emit emit) {
  check_common(n, nq, d);
  if (p.metric == Metric::IP)
    fail("radius queries need metric 'l2' or 'cosine' (inner product is a similarity)");
  if (!(p.radius >= 0.0) || !std::isfinite(p.radius))
    fail("radius=" + std::to_string(p.radius) + " should be a finite number >= 0");
  if (p.exclude_self && nq != n) fail("exclude_self needs the queries to be the database rows");
  const int threads = resolve_threads(p.n_threads);
  PackedSet set;
  pack_set(set, db, n, d, p.metric, nullptr, threads, p.kernel_set);
  const std::vector<double> qsq = query_sqnorms(q, nq, d, p.metric, threads);
  const std::vector<double> qerr = query_errors(set, q, nq, threads);
  stream_tiles(
      set, q, nq, threads, cancel,
      [&](idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm, TileScratch& s) {
        s.idx.resize(static_cast<std::size_t>(bm));
        s.val.resize(static_cast<std::size_t>(bm));
        const KernelSet& ks = *set.ks;
        for (idx_t i = 0; i < qm; ++i) {
          const idx_t qi = q0 + i;
          const double xn = std::sqrt(qsq[qi]);
          // The radius in tile-value units, and the band where a decision needs fp64.
          const double thr = p.metric == Metric::L2 ? p.radius - qsq[qi] : -(1.0 - p.radius) * xn;
          const float bnd = row_bound_in(set, qsq[qi], qerr.empty() ? 0.0 : qerr[qi]);
          const idx_t cnt = ks.row_filter(c + i * ldc, set.add.data() + b0, set.mul, bm,
                                          static_cast<float>(thr) + bnd, s.idx.data(), s.val.data());
          for (idx_t t = 0; t < cnt; ++t) {
            const idx_t j = b0 + s.idx[t];
            if (p.exclude_self && j == qi) continue;
            const bool sure = s.val[t] < static_cast<float>(thr) - bnd;
            if (sure && !need_value) {
              emit(qi, j, 0.0);
              continue;
            }
            const double v = exact_value(p.metric, q + qi * d, set.row(j), d, xn, set.norm[j]);
            if (v <= p.radius) emit(qi, j, v);
          }
        }
      },
      [](idx_t, idx_t) {});
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
    std::ostringstream r;
    r << p_.radius;
    throw MemoryLimitError(
        "radius search with radius=" + r.str() + (p_.metric == Metric::L2 ? " (a squared distance)" : "") +
        " finds more neighbours than memory_limit = " + mib(p_.memory_limit) + " holds (it needed more than " +
        mib(needed) + " before finishing); use a smaller radius, count the neighbours first with radius_count, "
        "query fewer rows at a time, or raise memory_limit");
  }
  const RadiusParams& p_;
  const double base_;
  std::atomic<std::int64_t> used_{0};
};

using RadiusList = std::vector<std::pair<idx_t, float>>;
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
  radius_scan(p, db, n, q, nq, d, true, cancel, [&](idx_t qi, idx_t j, double v) {
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
  radius_scan(p, db, n, q, nq, d, false, cancel,
              [&](idx_t qi, idx_t, double) { ++out_count[qi]; });
}

}  // namespace ec
