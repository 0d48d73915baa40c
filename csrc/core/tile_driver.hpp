// The tile driver: the one loop that packs (or gathers) blocks of query rows, multiplies them
// with a packed set tile by tile and hands every tile to a result handler, on OpenMP threads,
// with exceptions captured and Ctrl-C polled. Consumers differ only in their handler.
//
// The shape follows FAISS's blocked search (faiss/utils/distances.cpp with the handlers of
// faiss/impl/ResultHandler.h): the driver owns the blocking, the products and the threads; a
// handler owns what a tile means (top-1, top-k, a range count, ...). Ours parallelises over
// query blocks, so each thread keeps its own handler state (Handler::Local).
//
// Three layers, each usable alone:
//   for_each_block  threads + per-thread state + exception capture + cancellation (and
//                   parallel_for, an index loop on it);
//   BlockProducts   the pack-or-gather step and the product of one query block with a set;
//   scan_tiles      the dense blocked search over contiguous query rows (one-sided or the
//                   upper triangle of a self-join), built on the two above.
// A consumer whose blocks are not contiguous rows (the pruned k-means pass, DBSCAN's tile pairs)
// uses for_each_block and BlockProducts directly.
#pragma once

#include <algorithm>
#include <mutex>
#include <vector>

#include "engine.hpp"

namespace ec {

/// Tells a block body whether to stop early (another block failed, or the caller cancelled).
class StopCheck {
 public:
  StopCheck(const ExceptionSlot& err, Cancel& cancel) : err_(err), cancel_(cancel) {}
  bool operator()() const { return err_.failed() || cancel_.poll(); }

 private:
  const ExceptionSlot& err_;
  Cancel& cancel_;
};

/// Runs body(local, b, stop) for every block b in [0, nblocks) on `threads` threads,
/// schedule(dynamic, chunk). Each thread owns one `Local` (default-constructed, then set up by
/// init(local) inside the region, where allocation failures are caught too) and hands it to
/// finish(local) after its last block, one thread at a time (reductions). The first exception
/// from init, body or finish stops the remaining blocks and is rethrown after the join; a
/// cancelled call throws Interrupted after it. Nothing escapes the parallel region. The blocks
/// are counted into the cancel's progress (added to its step's total, each finished one to done).
template <class Local, class Init, class Body, class Finish>
void for_each_block(int threads, idx_t nblocks, int chunk, Cancel& cancel, Init&& init, Body&& body,
                    Finish&& finish) {
  ExceptionSlot err;
  std::mutex finish_mu;
  const StopCheck stop(err, cancel);
  cancel.add_work(nblocks);
#pragma omp parallel num_threads(threads)
  {
    Local local;
    err.run([&] { init(local); });
#pragma omp for schedule(dynamic, chunk)
    for (idx_t b = 0; b < nblocks; ++b) {
      if (stop()) continue;
      err.run([&] { body(local, b, stop); });
      cancel.work_done();
    }
    if (!err.failed() && !cancel.stopped()) {
      std::lock_guard<std::mutex> g(finish_mu);
      err.run([&] { finish(local); });
    }
  }
  err.rethrow();
  cancel.throw_if_stopped();
}

/// for_each_block without a final step.
template <class Local, class Init, class Body>
void for_each_block(int threads, idx_t nblocks, int chunk, Cancel& cancel, Init&& init, Body&& body) {
  for_each_block<Local>(threads, nblocks, chunk, cancel, std::forward<Init>(init), std::forward<Body>(body),
                        [](Local&) {});
}

/// Runs f(i) for i in [0, n) on `threads` threads (for_each_block over blocks of consecutive
/// indices: `chunk` each, or with chunk <= 0 about a quarter of an even share per thread, the
/// static split). Each index is handled once, on any thread; the first exception stops the
/// remaining blocks and is rethrown after the join.
template <class F>
void parallel_for(int threads, idx_t n, F&& f, int chunk = 0) {
  struct NoState {};
  const idx_t share = (n + 4 * std::max(1, threads) - 1) / (4 * std::max(1, threads));
  const idx_t block = chunk > 0 ? chunk : std::max<idx_t>(1, share);
  Cancel no_cancel;  // the callers' loops are short and not cancellable
  for_each_block<NoState>(threads, (n + block - 1) / block, 1, no_cancel, [](NoState&) {},
                          [&](NoState&, idx_t b, const StopCheck&) {
                            for (idx_t i = b * block; i < std::min(n, (b + 1) * block); ++i) f(i);
                          });
}

/// Where the query rows of a block come from: float32 rows of `x` (stride d), and optionally
/// the same rows already in the kernel set's word format (`words`, stride depth(d)), which
/// KernelSet::gemm_rows multiplies in place, so gathered rows need no packing.
struct RowSource {
  const float* x = nullptr;
  idx_t d = 0;
  const float* words = nullptr;  ///< null: pack every block
};

/// One thread's query block, ready to multiply: the pack-or-gather step. `load` packs the rows
/// (contiguous from q0, or gathered through `rows`, optionally scaled) or, with gathered rows and
/// a word copy, only points at them; `multiply` gives the products with a packed set's panels.
/// Both paths give bit-identical products (KernelSet::gemm_rows).
class BlockProducts {
 public:
  /// Buffers for blocks of up to max_rows rows of dimension d.
  void init(const KernelSet& ks, idx_t d, idx_t max_rows) {
    ks_ = &ks;
    depth_ = ks.depth(d);
    a_.resize(static_cast<std::size_t>(round_up(max_rows, ks.mr) * depth_));
    ptrs_.resize(static_cast<std::size_t>(round_up(max_rows, ks.mr)));
  }
  /// Rows q0 .. q0 + m of the source (each multiplied by scale[i], when given).
  void load_range(const RowSource& src, idx_t q0, idx_t m, const float* scale = nullptr) {
    m_ = m;
    gathered_ = false;
    ks_->pack(src.x + q0 * src.d, src.d, nullptr, scale, m, src.d, ks_->mr, a_.data());
  }
  /// Rows rows[0 .. m) of the source.
  void load_rows(const RowSource& src, const idx_t* rows, idx_t m) {
    m_ = m;
    gathered_ = src.words != nullptr;
    if (gathered_) {
      const idx_t m_pad = round_up(m, ks_->mr);
      for (idx_t i = 0; i < m_pad; ++i) ptrs_[i] = src.words + rows[std::min(i, m - 1)] * depth_;
    } else {
      ks_->pack(src.x, src.d, rows, nullptr, m, src.d, ks_->mr, a_.data());
    }
  }
  /// c (row stride ldc) = the loaded rows times `cols` packed rows starting at `panels`
  /// (cols a multiple of the kernels' nr).
  void multiply(const float* panels, idx_t cols, float* c, idx_t ldc) const {
    const idx_t m_pad = round_up(m_, ks_->mr);
    if (gathered_)
      ks_->gemm_rows(ptrs_.data(), panels, m_pad, cols, depth_, c, ldc);
    else
      ks_->gemm(a_.data(), panels, m_pad, cols, depth_, c, ldc);
  }
  idx_t rows() const { return m_; }

 private:
  const KernelSet* ks_ = nullptr;
  idx_t depth_ = 0, m_ = 0;
  bool gathered_ = false;
  AlignedBuffer<float> a_;
  std::vector<const float*> ptrs_;
};

/// How scan_tiles cuts the work.
struct ScanShape {
  idx_t query_block = 144;  ///< query rows per block (a multiple of every kernel's mr)
  idx_t set_block = 0;      ///< set rows per tile (a multiple of every nr); 0: the whole set in one tile
  int chunk = 1;            ///< query blocks per scheduling chunk
  /// Self-join: the queries are the set's rows and block I meets only set blocks J >= I
  /// (needs query_block == set_block); the handler feeds both sides of each tile.
  bool upper = false;
  const float* query_scale = nullptr;  ///< optional per-query factor applied when packing
};

/// The blocked search: for every block of queries (rows q0 .. q0 + qm of `queries`), packed
/// once, and every tile of set rows (b0 .. b0 + bm), the products c (row i at c + i * ldc,
/// column j for set row b0 + j) go to the handler. A handler provides
///     struct Local;                                   // per-thread state, default-constructible
///     void init(Local&);                              // its buffers (in the parallel region)
///     void begin(Local&, idx_t q0, idx_t qm);         // a new query block
///     void tile(Local&, idx_t q0, idx_t qm, const float* c, idx_t ldc, idx_t b0, idx_t bm);
///     void end(Local&, idx_t q0, idx_t qm);           // the block's last tile was seen
///     void finish(Local&);                            // once per thread, serialised
/// Tiles of a block arrive in ascending b0; blocks arrive in any order on any thread.
template <class Handler>
void scan_tiles(const PackedSet& set, const float* queries, idx_t nq, const ScanShape& shape, int threads,
                Cancel& cancel, Handler& h) {
  const KernelSet& ks = *set.ks;
  const RowSource src{queries, set.d, nullptr};
  const idx_t qb = shape.query_block;
  const idx_t sb = shape.set_block > 0 ? shape.set_block : set.n_pad;
  const idx_t depth = ks.depth(set.d);
  struct Local {
    BlockProducts prod;
    AlignedBuffer<float> c;
    typename Handler::Local h;
  };
  for_each_block<Local>(
      threads, (nq + qb - 1) / qb, shape.chunk, cancel,
      [&](Local& l) {
        l.prod.init(ks, set.d, qb);
        l.c.resize(static_cast<std::size_t>(round_up(qb, ks.mr) * sb));
        h.init(l.h);
      },
      [&](Local& l, idx_t blk, const StopCheck& stop) {
        const idx_t q0 = blk * qb, qm = std::min(qb, nq - q0);
        l.prod.load_range(src, q0, qm, shape.query_scale ? shape.query_scale + q0 : nullptr);
        h.begin(l.h, q0, qm);
        const idx_t first = shape.upper ? q0 : 0;
        for (idx_t b0 = first; b0 < set.n; b0 += sb) {
          if (b0 != first && stop()) return;
          const idx_t bm = std::min(sb, set.n - b0);
          l.prod.multiply(set.panels.data() + b0 * depth, round_up(bm, ks.nr), l.c.data(), sb);
          h.tile(l.h, q0, qm, l.c.data(), sb, b0, bm);
        }
        h.end(l.h, q0, qm);
      },
      [&](Local& l) { h.finish(l.h); });
}

}  // namespace ec
