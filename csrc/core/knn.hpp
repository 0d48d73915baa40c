// Exact nearest-neighbour search: top-k, radius search and radius counts, tile by tile.
#pragma once

#include <cstdint>
#include <vector>

#include "common.hpp"
#include "kernels.hpp"

namespace ec {

struct KnnParams {
  Metric metric = Metric::L2;  ///< L2 returns squared distances, IP dot products, Cosine 1 - cos
  int k = 10;                  ///< neighbours per query (<= database size)
  bool exclude_self = false;   ///< queries are the database rows: query i never returns row i
  int n_threads = 0;           ///< worker threads; 0 = OpenMP default
  const KernelSet* kernel_set = nullptr;  ///< tile kernels; null = the process's choice
  double memory_limit = 0.0;   ///< bytes of working memory (outputs included) at most; 0 = no limit
  /// When the queries are the database (same pointer), compute each pair once (half the
  /// products; same results): 1 = allowed (when its candidate lists fit), 0 = never.
  int self_join = 1;
};

/// Throws MemoryLimitError when knn_search(p, n rows, nq queries, d) would need more than
/// p.memory_limit (its estimate includes the nq x k outputs).
void knn_check_memory(const KnnParams& p, idx_t n, idx_t nq, idx_t d);

/// For each of nq queries, the k nearest database rows, nearest first; ties go to the lower
/// index. Distances are exact fp64 evaluations of the float32 inputs, rounded to float32.
/// out_exact (optional, nq x k) receives the fp64 ranking values themselves (ascending; the
/// negated dot product for IP): callers that merge the results of several database blocks
/// order by (value, index) on them and get the single call's answer.
void knn_search(const KnnParams& p, const float* db, idx_t n, const float* q, idx_t nq, idx_t d,
                float* out_dist, idx_t* out_idx, Cancel& cancel, double* out_exact = nullptr);

struct RadiusParams {
  Metric metric = Metric::L2;  ///< L2 or Cosine
  double radius = 1.0;         ///< L2: on the squared distance; Cosine: on 1 - cos
  bool exclude_self = false;   ///< queries are the database rows: query i never returns row i
  int n_threads = 0;           ///< worker threads; 0 = OpenMP default
  const KernelSet* kernel_set = nullptr;  ///< tile kernels; null = the process's choice
  double memory_limit = 0.0;   ///< bytes of working memory at most, results included (radius_search
                               ///< charges its result lists as they grow); 0 = no limit
};

/// Throws MemoryLimitError when a radius query would need more than p.memory_limit before its
/// results (radius_search also fails, during the scan, as soon as its results would exceed it).
void radius_check_memory(const RadiusParams& p, idx_t n, idx_t nq, idx_t d);

/// Neighbours within the radius (inclusive), as CSR: query i owns indices[indptr[i]:indptr[i+1]],
/// in ascending index order, with exact distances in the same units as the radius.
struct RadiusResult {
  std::vector<idx_t> indptr;
  std::vector<idx_t> indices;
  std::vector<float> dist;
};

void radius_search(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq,
                   idx_t d, RadiusResult& out, Cancel& cancel);

/// Number of database rows within the radius of each query (inclusive).
void radius_count(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq,
                  idx_t d, idx_t* out_count, Cancel& cancel);

/// radius_count in both directions from one scan: out_q[i] counts the database rows within the
/// radius of query i, out_db[j] the queries within the radius of database row j.
void radius_count_both(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq,
                       idx_t d, idx_t* out_q, idx_t* out_db, Cancel& cancel);

/// What DBSCAN needs from the neighbour pairs between two sets of rows (queries and database)
/// whose core points are known. Nodes are the queries (0 .. nq-1) then the database rows
/// (nq .. nq+n-1).
struct PairLinks {
  std::vector<idx_t> component;  ///< per node: its core component's smallest node; -1 for non-core nodes
  std::vector<idx_t> q_core;     ///< per non-core query: nearest core database row within the radius, or -1
  std::vector<float> q_dist;     ///< its distance, float32(max(0, exact fp64 value))
  std::vector<idx_t> db_core;    ///< per non-core database row: nearest core query within the radius, or -1
  std::vector<float> db_dist;
};

/// Unions the core-core pairs within the radius and finds each non-core row's nearest core
/// row of the other set (ties: the lower index), exactly as DBSCAN decides them.
void radius_pair_links(const RadiusParams& p, const float* db, idx_t n, const float* q, idx_t nq, idx_t d,
                       const std::uint8_t* q_is_core, const std::uint8_t* db_is_core, PairLinks& out,
                       Cancel& cancel);

}  // namespace ec
