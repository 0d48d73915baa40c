// The GPU engine's per-element logic, written once for the host and the device (EC_HD): exact
// fp64 values in the CPU engine's summation order, the error band of a tensor-core product,
// fixed-point conversions, the border key, union-find steps and the per-lane states of the tile
// epilogues. The CUDA build runs these in kernels; the host model (model_device.cpp) runs the
// same functions in loops, so the CPU tests exercise every decision the GPU makes.
//
// Exactness follows csrc/core/engine.hpp: a tile value comes from a product whose error is
// bounded (here a TF32 tensor-core product: inputs rounded to nearest on 10 explicit mantissa
// bits, fp32 accumulation in any order, with or without truncation); every decision within twice that
// bound of its threshold is re-made in fp64 from the float32 inputs, in the same order of
// operations as ec::exact_value (device code is compiled without FMA contraction). Results are
// therefore the fp64 brute force's, ties to the lower index, bit for bit the CPU engine's.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define EC_HD __host__ __device__
#else
#define EC_HD
#endif

namespace ec {
namespace gpu {

using idx_t = std::int64_t;

enum MetricId : int { kL2 = 0, kIP = 1, kCosine = 2 };

// ---- Atomics: real ones in device code; the host model runs one logical thread at a time.
EC_HD inline void atomic_add_u64(std::uint64_t* p, std::uint64_t v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
#else
  *p += v;
#endif
}
EC_HD inline void atomic_max_u64(std::uint64_t* p, std::uint64_t v) {
#if defined(__CUDA_ARCH__)
  atomicMax(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
#else
  if (v > *p) *p = v;
#endif
}
EC_HD inline void atomic_min_i64(std::int64_t* p, std::int64_t v) {
#if defined(__CUDA_ARCH__)
  atomicMin(reinterpret_cast<long long*>(p), static_cast<long long>(v));
#else
  if (v < *p) *p = v;
#endif
}
EC_HD inline std::int32_t atomic_cas_i32(std::int32_t* p, std::int32_t expected, std::int32_t desired) {
#if defined(__CUDA_ARCH__)
  return atomicCAS(reinterpret_cast<int*>(p), expected, desired);
#else
  const std::int32_t old = *p;
  if (old == expected) *p = desired;
  return old;
#endif
}
EC_HD inline std::int32_t load_relaxed(const std::int32_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const volatile int*>(p);
#else
  return *p;
#endif
}

/// Bits of a non-negative double, which order as the values do (atomic maxima of magnitudes).
EC_HD inline std::uint64_t bits_of(double v) {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint64_t>(__double_as_longlong(v));
#else
  std::uint64_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
#endif
}
EC_HD inline double double_of(std::uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
#endif
}

// ---- Exact values, in ec::sum8's order (eight interleaved partial sums, then a fixed tree).
EC_HD inline double exact_l2(const float* x, const float* y, idx_t d) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  idx_t k = 0;
  for (; k + 8 <= d; k += 8)
    for (int t = 0; t < 8; ++t) {
      const double v = static_cast<double>(x[k + t]) - static_cast<double>(y[k + t]);
      acc[t] += v * v;
    }
  double s = 0.0;
  for (; k < d; ++k) {
    const double v = static_cast<double>(x[k]) - static_cast<double>(y[k]);
    s += v * v;
  }
  return s + (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
}

EC_HD inline double exact_dot(const float* x, const float* y, idx_t d) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  idx_t k = 0;
  for (; k + 8 <= d; k += 8)
    for (int t = 0; t < 8; ++t) acc[t] += static_cast<double>(x[k + t]) * static_cast<double>(y[k + t]);
  double s = 0.0;
  for (; k < d; ++k) s += static_cast<double>(x[k]) * static_cast<double>(y[k]);
  return s + (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
}

/// ec::sqnorm: a float32 row's squared norm in fp64.
EC_HD inline double sqnorm(const float* x, idx_t d) { return exact_dot(x, x, d); }

/// ec::exact_value: L2 ||x - y||^2, IP -x.y, Cosine 1 - x.y / (||x|| ||y||).
EC_HD inline double exact_value(int metric, const float* x, const float* y, idx_t d, double xnorm, double ynorm) {
  if (metric == kL2) return exact_l2(x, y, d);
  const double s = exact_dot(x, y, d);
  if (metric == kIP) return -s;
  return 1.0 - s / (xnorm * ynorm);
}

// ---- Tile values and their error band.

/// Relative error bound of a TF32 tensor-core product of length d, relative to ||x|| ||y||:
/// fp32 accumulation allowed to truncate (twice the CPU engine's allowance for rounded
/// additions), plus both inputs rounded to nearest on 10 explicit mantissa bits by the kernel
/// itself (cvt.rna: a relative 2^-11 each; products of TF32 values are exact in fp32).
EC_HD inline double tf32_rel_err(idx_t d) { return (8.0 * static_cast<double>(d) + 64.0) * 0x1p-24 + 2.02 * 0x1p-11; }

/// Absolute allowance for inputs the tensor cores flush to zero (subnormals): each of d
/// products loses at most 2^-126 times the other factor.
EC_HD inline double flush_err(idx_t d, double xn, double ymax) {
  return static_cast<double>(d + 2) * 0x1p-125 * (1.0 + xn) * (1.0 + ymax);
}

/// Per-column facts of a set of rows Y (centres or database rows) that tile values need.
struct ColFacts {
  const float* add;   ///< per row: float(||y||^2) for L2; unused otherwise
  const float* inv;   ///< per row: float(1 / ||y||) for cosine; unused otherwise
  const double* norm; ///< per row: ||y|| in fp64 (exact values)
  double max_norm;    ///< max ||y||
};

/// The tile value of a product g = x.y_j in the metric's "smaller is closer" form, up to a
/// per-row constant: L2 ||y||^2 - 2g (+ ||x||^2 gives the squared distance), IP -g, Cosine
/// -g / ||y|| (1 + it / ||x|| gives 1 - cos).
EC_HD inline float tile_value(int metric, const ColFacts& c, idx_t j, float g) {
  if (metric == kL2) return c.add[j] - 2.0f * g;
  if (metric == kIP) return -g;
  return -g * c.inv[j];
}

/// Half-width B of a row's band: |tile value - its exact counterpart| <= B (see the file comment;
/// the float roundings of the value itself are within the +64 of the relative part).
EC_HD inline float row_band(int metric, double xsq, idx_t d, double max_norm) {
  const double xn = std::sqrt(xsq);
  const double rel = tf32_rel_err(d);
  double b;
  if (metric == kL2)
    b = rel * (xsq + max_norm * max_norm) + 2.0 * flush_err(d, xn, max_norm);
  else if (metric == kIP)
    b = rel * xn * max_norm + flush_err(d, xn, max_norm);
  else
    b = (rel + 0x1p-20) * xn + flush_err(d, xn, 1.0);  // unit rows: the division adds a few ulps
  return static_cast<float>(b * (1.0 + 1e-6)) + FLT_MIN;
}

// ---- Fixed point (kmeans_impl::Accum, fixed, to_limbs).

/// round((x * sc) * qscale) as a 64-bit two's complement integer (Accum's centre sums).
EC_HD inline std::uint64_t fixed64(float x, double sc, double qscale) {
  const double v = (static_cast<double>(x) * sc) * qscale;
  return static_cast<std::uint64_t>(llrint(v));
}

/// round(v) as a 128-bit two's complement integer split into four 32-bit limbs, added into
/// four uint64 accumulators (their sum mod 2^128 is exact while fewer than 2^32 values are added).
EC_HD inline void add_fixed128(double v, std::uint64_t* limbs) {
  const double r = rint(v);
  const bool neg = r < 0.0;
  const double a = neg ? -r : r;
  std::uint64_t lo, hi;
  if (a < 18446744073709551616.0) {
    lo = static_cast<std::uint64_t>(a);
    hi = 0;
  } else {
    int e;
    const double m = frexp(a, &e);  // a = m 2^e, 0.5 <= m < 1
    const auto mi = static_cast<std::uint64_t>(ldexp(m, 53));
    const int sh = e - 53;  // >= 12 here
    if (sh >= 64) {
      hi = mi << (sh - 64);
      lo = 0;
    } else {
      lo = mi << sh;
      hi = mi >> (64 - sh);
    }
  }
  if (neg) {
    lo = ~lo + 1;
    hi = ~hi + (lo == 0 ? 1 : 0);
  }
  limbs[0] += lo & 0xffffffffu;
  limbs[1] += lo >> 32;
  limbs[2] += hi & 0xffffffffu;
  limbs[3] += hi >> 32;
}

// ---- DBSCAN: the border key (ec::border_key) and union-find.

EC_HD inline std::uint64_t border_key(double exact, idx_t row) {
  const float dist = static_cast<float>(exact > 0.0 ? exact : 0.0);
#if defined(__CUDA_ARCH__)
  const std::uint32_t bits = __float_as_uint(dist);
#else
  std::uint32_t bits;
  std::memcpy(&bits, &dist, sizeof(bits));
#endif
  return (static_cast<std::uint64_t>(bits) << 32) | static_cast<std::uint64_t>(row);
}
constexpr std::uint64_t kNoBorder = ~std::uint64_t{0};

/// Root of x (parents only ever point to smaller indices, so roots are component minima).
EC_HD inline std::int32_t uf_find(std::int32_t* parent, std::int32_t x) {
  std::int32_t p = load_relaxed(parent + x);
  while (p != x) {
    const std::int32_t gp = load_relaxed(parent + p);
    if (gp != p) atomic_cas_i32(parent + x, p, gp);  // path halving; losing the race is harmless
    x = p;
    p = load_relaxed(parent + x);
  }
  return x;
}

/// Joins the components of a and b: the larger root links to the smaller one (lock-free).
EC_HD inline void uf_unite(std::int32_t* parent, std::int32_t a, std::int32_t b) {
  for (;;) {
    a = uf_find(parent, a);
    b = uf_find(parent, b);
    if (a == b) return;
    if (a < b) {
      const std::int32_t t = a;
      a = b;
      b = t;
    }
    if (atomic_cas_i32(parent + a, a, b) == a) return;
  }
}

// ---- Epilogue lane states. Each query row is scanned by kLanes threads, lane s seeing the
// columns j with j % kLanes == s; a finish step merges the lanes.
constexpr int kLanes = 2;

/// Argmin with its band: the best tile value and every column within 2B of it.
struct ArgminLane {
  static constexpr int kCap = 8;
  float best;
  float dropped;  ///< smallest value left out for lack of room (+inf: none)
  int count;
  float v[kCap];
  std::int32_t j[kCap];

  EC_HD void init() {
    best = FLT_MAX;
    dropped = FLT_MAX;
    count = 0;
  }
  EC_HD void visit(float val, std::int32_t col, float band2) {
    if (!(val <= best + band2)) return;
    if (val < best) {
      best = val;
      int kept = 0;  // drop what left the band
      for (int t = 0; t < count; ++t)
        if (v[t] <= best + band2) {
          v[kept] = v[t];
          j[kept] = j[t];
          ++kept;
        }
      count = kept;
    }
    if (count < kCap) {
      v[count] = val;
      j[count] = col;
      ++count;
    } else if (val < dropped) {
      dropped = val;
    }
  }
};

/// The L best tile values of a lane (ascending, ties by column), and the smallest value left out.
struct TopLane {
  static constexpr int kCap = 64;
  float dropped;
  int count;
  float v[kCap];
  std::int32_t j[kCap];

  EC_HD void init() {
    dropped = FLT_MAX;
    count = 0;
  }
  EC_HD void visit(float val, std::int32_t col, int cap) {
    if (count == cap) {
      if (!(val < v[cap - 1])) {
        if (val < dropped) dropped = val;
        return;
      }
      if (v[cap - 1] < dropped) dropped = v[cap - 1];
      --count;
    }
    int t = count;
    while (t > 0 && v[t - 1] > val) {
      v[t] = v[t - 1];
      j[t] = j[t - 1];
      --t;
    }
    v[t] = val;
    j[t] = col;
    ++count;
  }
};

}  // namespace gpu
}  // namespace ec
