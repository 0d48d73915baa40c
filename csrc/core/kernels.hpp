// Tile kernels: the instruction-set-specific inner loops, picked once at run time.
//
// Every distance in the engine is a product of two packed blocks, C = A . B^T, followed by an
// epilogue on the tile. A kernel set provides the product for one instruction set plus the two
// vectorised epilogue primitives (row minimum, row filter). A faster kernel (bf16 on AVX-512
// BF16, AMX or a GPU) drops in as another KernelSet whose products carry a larger error bound;
// the exact re-check in fp64 (see bounds.hpp) keeps results identical.
#pragma once

#include <cstdint>

#include "common.hpp"

namespace ec {

struct KernelSet {
  const char* name;  ///< "generic", "avx2", "avx512", "avx512bf16", "amx" (or the test model "amx-model")
  int mr;            ///< rows of A per micro-tile (A is packed in panels of mr rows)
  int nr;            ///< rows of B per micro-tile (B is packed in panels of nr rows)
  int per_word;      ///< values per packed 32-bit word: 1 (fp32) or 2 (a bf16 pair k, k+1)
  double input_rel;  ///< relative rounding of each input value when packed: 0 (fp32), 2^-8 (bf16)

  /// Packs rows into panels of `width` rows, k-major, one 32-bit word per `per_word` values
  /// (see pack_panels for the fp32 layout). `out` holds round_up(m, width) * depth(d) words.
  void (*pack)(const float* src, idx_t ld, const idx_t* rows, const float* scale, idx_t m,
               idx_t d, int width, float* out);

  /// C[i, j] = sum_k A[i, k] * B[j, k] for i < m_pad, j < n_pad (multiples of mr and nr),
  /// products accumulated in fp32. `a` and `b` are packed with `pack`; `depth` = depth(d) words
  /// per row; C has row stride ldc.
  void (*gemm)(const float* a, const float* b, idx_t m_pad, idx_t n_pad, idx_t depth, float* c,
               idx_t ldc);

  /// Packed 32-bit words per row of d values.
  idx_t depth(idx_t d) const { return (d + per_word - 1) / per_word; }

  /// min_j (add[j] + mul * c[j]) over j < n.
  float (*row_min)(const float* c, const float* add, float mul, idx_t n);

  /// min_j v_j (v_j = add[j] + mul * c[j], j < n), with an index where it is reached in *arg
  /// and the second smallest value of the multiset {v_j} in *second (equal to the minimum
  /// when it is reached twice; +inf when n == 1).
  float (*row_min2)(const float* c, const float* add, float mul, idx_t n, idx_t* arg, float* second);

  /// Writes every j < n with add[j] + mul * c[j] <= thr to idx/val; returns how many.
  idx_t (*row_filter)(const float* c, const float* add, float mul, idx_t n, float thr,
                      std::int32_t* idx, float* val);

  /// fp32 dot product of two float32 rows of length d (always fp32, also in bf16 sets), summed
  /// in any order: its error obeys the same bound as an fp32 tile value. Used to narrow a wide
  /// (bf16) candidate window before the fp64 re-check.
  float (*dot)(const float* a, const float* b, idx_t d);

  /// Fixed-point accumulation for k-means: dst[f] += q_f (or -= with `subtract`), modulo 2^64,
  /// q_f = the nearest integer (ties to even) to (x[f] * sc) * qscale[f], computed in fp64
  /// without fused operations. Every kernel set gives the same integers, and integer sums do
  /// not depend on their order.
  void (*accum)(const float* x, idx_t d, double sc, const double* qscale, bool subtract, std::uint64_t* dst);

  /// Optional (nullptr where a set lacks it): the product of `gemm` with A given as m_pad row
  /// pointers instead of packed panels, each row holding depth(d) words in the set's format
  /// (fp32 sets: the float rows themselves; bf16 sets: rows written by `pack_rows`). The
  /// products are bit-identical to packing the same rows and calling `gemm`; gathering rows
  /// costs no copy.
  void (*gemm_rows)(const float* const* a_rows, const float* b, idx_t m_pad, idx_t n_pad, idx_t depth,
                    float* c, idx_t ldc);

  /// Optional (sets whose words are not fp32): writes rows [0, n) of src as depth(d) words
  /// each, row-major, rounded as `pack` rounds them.
  void (*pack_rows)(const float* src, idx_t n, idx_t d, float* out);

  /// Optional (sets that round their inputs): sum over k < d of (x_k s - round(x_k s))^2 in
  /// fp64, the squares exact (the fp32 difference of a value and its rounding is exact);
  /// only the order of the sum may differ from input_error_generic.
  double (*input_error_sq)(const float* x, idx_t d, float scale);
};

/// The portable row_min2 (see KernelSet::row_min2).
float row_min2_generic(const float* c, const float* add, float mul, idx_t n, idx_t* arg, float* second);

/// The portable fixed-point accumulation (see KernelSet::accum).
void accum_generic(const float* x, idx_t d, double sc, const double* qscale, bool subtract, std::uint64_t* dst);

/// bf16 rounding of a finite float given as its bits: nearest, ties to even; the result's low
/// 16 bits are zero (its high half is the bf16 word). The one rounding every bf16 path uses.
inline std::uint32_t bf16_round_bits(std::uint32_t u) { return (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u; }

/// The portable input_error_sq of bf16 sets (see KernelSet::input_error_sq).
double input_error_sq_generic(const float* x, idx_t d, float scale);

/// Packs rows of a row-major matrix into panels of `width` rows stored k-major:
/// out[p*d*width + k*width + r] = scale_r * src[row(p*width + r)][k], zero for padding rows.
/// `rows` (optional) gathers rows by index; `scale` (optional) multiplies each row.
void pack_panels(const float* src, idx_t ld, const idx_t* rows, const float* scale, idx_t m,
                 idx_t d, int width, float* out);

inline idx_t round_up(idx_t v, idx_t m) { return (v + m - 1) / m * m; }

/// The operation families whose kernel set is chosen by measurement (kernel_choice.cpp): each
/// consumes its tiles differently, so the fastest set can differ between them.
enum class KernelFamily { tile, kmeans, knn, dbscan };

/// The kernel set forced for this process (EMBEDCLUSTER_ISA = generic | avx2 | avx512 |
/// avx512bf16 | amx | amx-model, or select_kernels with a name other than "auto"), or the one
/// measured fastest for plain tile products at d = 384; amx and amx-model are used only when named.
const KernelSet& kernels();

/// The kernel set for one operation family at depth d: the forced set when there is one, else
/// the admitted set measured fastest on a tile of that family's shape (kernel_choice.cpp).
const KernelSet& kernels_for(KernelFamily family, idx_t d);

/// The kernel set of precision="fp32": the fp32 variant of a forced set, else the admitted fp32
/// set measured fastest for tile products.
const KernelSet& fp32_kernels();

/// The admitted fp32 set measured fastest for tile products (whatever is forced).
const KernelSet& fastest_fp32_kernels();

/// The fp32 kernel set of the same instruction family (itself when it already is fp32): for
/// work where a wider error band costs more than the faster product saves.
const KernelSet& fp32_variant(const KernelSet& ks);

/// Selects a kernel set by name for this process (tests use it to exercise every path); "auto"
/// returns to the choice by measurement. Throws std::invalid_argument when the name is unknown,
/// this CPU lacks the instructions, or the set failed its self-test.
void select_kernels(const std::string& name);

/// The forced kernel set (see kernels()), or null when the choice is by measurement.
const KernelSet* forced_kernels();

/// Names of the kernel sets this CPU and build can run that passed their self-test.
std::vector<std::string> available_kernels();

/// Names of the kernel sets this CPU and build can run, self-tested or not.
std::vector<std::string> supported_kernels();

/// The kernel set `name` when this CPU and build can run it, else null (no self-test).
const KernelSet* supported_kernel(const std::string& name);

/// The set `name` when this CPU and build can run it and it passed its self-test; otherwise
/// fails (std::invalid_argument) naming `who` (the caller's words) and why.
const KernelSet& admitted_kernel(const std::string& name, const std::string& who);

/// Whether `ks` passed its self-test (kernel_choice.cpp; run for every supported set at first
/// call, and for a set used only when named, such as amx, when it is first named).
bool kernel_admitted(const KernelSet& ks);

/// Why the set `name` failed its self-test ("" when it passed or was not tested).
std::string kernel_self_test_failure(const std::string& name);

// Kernel sets, defined in files compiled with their instruction-set flags.
const KernelSet& generic_kernels();
#if defined(EC_HAVE_AVX2_KERNELS)
const KernelSet& avx2_kernels();
#endif
#if defined(EC_HAVE_AVX512_KERNELS)
const KernelSet& avx512_kernels();
float dot_avx512(const float* a, const float* b, idx_t d);
float row_min2_avx512(const float* c, const float* add, float mul, idx_t n, idx_t* arg, float* second);
void accum_avx512(const float* x, idx_t d, double sc, const double* qscale, bool subtract, std::uint64_t* dst);
#endif
#if defined(EC_HAVE_AVX512BF16_KERNELS)
const KernelSet& avx512bf16_kernels();
#endif
/// The AMX set's tile loops on a scalar model of the AMX instructions (kernels_amx_model.cpp):
/// portable and slow, selected by name only, so tests cover the AMX loops on every machine.
const KernelSet& amx_model_kernels();
#if defined(EC_HAVE_AMX_KERNELS)
/// The AMX set; the first call asks Linux for the tile data state and throws std::runtime_error
/// when it is refused. Only for CPUs with AMX-TILE, AMX-BF16 and AVX-512 BF16.
const KernelSet& amx_kernels();
/// One core's tdpbf16ps rate in GFLOP/s: `iterations` rounds of 4 independent tile products.
double amx_tile_peak_gflops(long long iterations);
/// The AMX gemm's A transpose (AVX-512 only, so testable without AMX): out[r * kd + q] =
/// panel[q * 32 + r] for r < 32, q < depth; zero for depth <= q < kd.
void amx_transpose_panel(const std::uint32_t* panel, idx_t depth, std::uint32_t* out, idx_t kd);
#endif

}  // namespace ec
