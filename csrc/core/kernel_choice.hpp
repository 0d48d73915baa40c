// What the kernel self-test and the choice by measurement found (kernel_choice.cpp), for
// reports (`_core.kernel_choice()`, `embedcluster info`).
#pragma once

#include <string>
#include <vector>

#include "kernels.hpp"

namespace ec {

/// One kernel set's self-test: one small tile (pack + product) and the epilogue primitives on
/// fixed pseudo-random data, against a scalar fp64 reference within the set's error bound.
struct SelfTestResult {
  std::string name;
  bool passed = false;
  double worst_ratio = 0.0;  ///< largest |tile error| / its proven bound (< 1 when it passed)
  std::string failure;       ///< what disagreed ("" when it passed)
};

/// One set's measured rate on a family's tile.
struct KernelRate {
  std::string name;
  double ns_per_tile = 0.0;  ///< fastest of a few runs: pack the query rows, product, epilogue
  double gflops = 0.0;       ///< 2 * rows * cols * d / ns_per_tile
  bool from_strip = false;   ///< extrapolated from a run on a strip of rows (a set ruled out early)
};

/// The choice for one (family, depth bucket).
struct KernelChoiceReport {
  std::string family;  ///< "tile", "kmeans", "knn" or "dbscan"
  idx_t d = 0;         ///< the depth it was measured at (the first call's d in its bucket)
  idx_t rows = 0, cols = 0;  ///< the tile measured
  std::string chosen;
  std::vector<KernelRate> rates;  ///< the admitted sets that may be chosen automatically, fastest first
};

/// Self-test results of every supported set (runs the self-tests on first call).
std::vector<SelfTestResult> kernel_self_tests();

/// One line per kernel set that failed its self-test (empty when all passed).
std::vector<std::string> kernel_warnings();

/// The choices measured so far in this process, in the order they were made.
std::vector<KernelChoiceReport> kernel_choices();

/// Sets never chosen automatically (only when forced), whatever they measure: sets not yet
/// proven on real hardware.
const std::vector<std::string>& manual_only_kernels();

/// The family's name as reported ("tile", "kmeans", "knn", "dbscan").
const char* family_name(KernelFamily family);

}  // namespace ec
