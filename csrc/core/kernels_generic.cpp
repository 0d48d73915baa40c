// Portable tile kernels (no instruction-set flags): the fallback and the reference path.
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels.hpp"
#include "kernels_portable.hpp"

namespace ec {

void pack_panels(const float* src, idx_t ld, const idx_t* rows, const float* scale, idx_t m,
                 idx_t d, int width, float* out) {
  const idx_t panels = (m + width - 1) / width;
  for (idx_t p = 0; p < panels; ++p) {
    float* dst = out + p * d * width;
    fill_panel_slots(dst, p, width, m, d, src, ld, rows, scale, [&](int r, const float* row, float s) {
      if (scale) {
        for (idx_t k = 0; k < d; ++k) dst[k * width + r] = row[k] * s;
      } else {
        for (idx_t k = 0; k < d; ++k) dst[k * width + r] = row[k];
      }
    });
  }
}

namespace {

constexpr int kMR = 4;
constexpr int kNR = 16;

void gemm_generic(const float* a, const float* b, idx_t m_pad, idx_t n_pad, idx_t d, float* c,
                  idx_t ldc) {
  for (idx_t jp = 0; jp < n_pad; jp += kNR) {
    const float* bp = b + jp * d;
    for (idx_t ip = 0; ip < m_pad; ip += kMR) {
      const float* ap = a + ip * d;
      float acc[kMR][kNR] = {};
      for (idx_t k = 0; k < d; ++k) {
        const float* bk = bp + k * kNR;
        const float* ak = ap + k * kMR;
        for (int r = 0; r < kMR; ++r)
          for (int j = 0; j < kNR; ++j) acc[r][j] += ak[r] * bk[j];
      }
      for (int r = 0; r < kMR; ++r) std::memcpy(c + (ip + r) * ldc + jp, acc[r], sizeof(acc[r]));
    }
  }
}

float row_min_generic(const float* c, const float* add, float mul, idx_t n) {
  return row_min_scalar(c, add, mul, 0, n, std::numeric_limits<float>::infinity());
}

idx_t row_filter_generic(const float* c, const float* add, float mul, idx_t n, float thr,
                         std::int32_t* idx, float* val) {
  return row_filter_scalar(c, add, mul, 0, n, thr, idx, val, 0);
}

float dot_generic(const float* a, const float* b, idx_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent partial sums (the compiler vectorises them)
  idx_t k = 0;
  for (; k + 8 <= d; k += 8)
    for (int t = 0; t < 8; ++t) acc[t] += a[k + t] * b[k + t];
  float s = 0.0f;
  for (; k < d; ++k) s += a[k] * b[k];
  return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

float row_min2_generic(const float* c, const float* add, float mul, idx_t n, idx_t* arg, float* second) {
  float m1 = std::numeric_limits<float>::infinity(), m2 = m1;
  idx_t a = 0;
  for (idx_t j = 0; j < n; ++j) {
    const float v = add[j] + mul * c[j];
    if (v < m1) {
      m2 = m1;
      m1 = v;
      a = j;
    } else if (v < m2) {
      m2 = v;
    }
  }
  *arg = a;
  *second = m2;
  return m1;
}

void accum_generic(const float* x, idx_t d, double sc, const double* qscale, bool subtract, std::uint64_t* dst) {
  for (idx_t f = 0; f < d; ++f) {
    const double v = (static_cast<double>(x[f]) * sc) * qscale[f];
    const auto q = static_cast<std::uint64_t>(std::llrint(v));
    dst[f] = subtract ? dst[f] - q : dst[f] + q;
  }
}

double input_error_sq_generic(const float* x, idx_t d, float scale) {
  double e = 0.0;
  for (idx_t k = 0; k < d; ++k) {
    const float v = scale == 1.0f ? x[k] : x[k] * scale;
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    u = bf16_round_bits(u);
    float r;
    std::memcpy(&r, &u, sizeof(r));
    const double diff = static_cast<double>(v) - r;
    e += diff * diff;
  }
  return e;
}

const KernelSet& generic_kernels() {
  static const KernelSet ks{"generic", kMR, kNR, 1, 0.0, pack_panels, gemm_generic, row_min_generic,
                            row_min2_generic, row_filter_generic, dot_generic, accum_generic, nullptr,
                            nullptr, nullptr};
  return ks;
}

}  // namespace ec
