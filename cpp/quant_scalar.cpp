// Scalar tier of the quantized dot products: ggml's vec_dot_{q8_0,q4_0,q4_1}_q8_0 in
// portable C++. The SIMD tiers (quant_x86.inc) compute the same sums and end the same way.
#include <algorithm>
#include <cmath>

#include "quant.h"

namespace sllm {
namespace {

// ggml's quantize_row_q8_0_ref for one row (zero-padded to nb blocks)
void quantize_row(const float* x, int64_t K, int8_t* q, float* d, float* s, int32_t* sum) {
  const int64_t nb = (K + QK - 1) / QK;
  for (int64_t b = 0; b < nb; ++b)
    quantize_block_q8_0(x + b * QK, std::min<int64_t>(QK, K - b * QK), q + b * QK, d + b,
                        s + b, sum + b);
}

// A 4-bit block's 32 codes as bytes, minus `offset` (q4_0's 8): unpacked first, so the
// dot product is q8_0's plain loop, which compilers vectorize (the mixed-nibble loop
// measured 3.3x slower than q8_0's on this tier).
inline void unpack_nibbles(const uint8_t* qs, int offset, int8_t* out) {
  for (int j = 0; j < QK / 2; ++j) {
    out[j] = (int8_t)((qs[j] & 0x0F) - offset);
    out[j + QK / 2] = (int8_t)((qs[j] >> 4) - offset);
  }
}

inline int32_t block_dot(const int8_t* a, const int8_t* b) {
  int32_t isum = 0;
  for (int j = 0; j < QK; ++j) isum += a[j] * b[j];
  return isum;
}

float dot_q8_0(const uint8_t* w, const QRow& x, int64_t nb) {
  float sum = 0;
  for (int64_t b = 0; b < nb; ++b, w += kBlockBytes[Q8_0]) {
    uint16_t d;
    std::memcpy(&d, w, 2);
    const int8_t* qw = reinterpret_cast<const int8_t*>(w + 2);
    sum += (float)block_dot(qw, x.q + b * QK) * (half_to_float(d) * x.d[b]);
  }
  return sum;
}

float dot_q4_0(const uint8_t* w, const QRow& x, int64_t nb) {
  float sum = 0;
  int8_t qw[QK];
  for (int64_t b = 0; b < nb; ++b, w += kBlockBytes[Q4_0]) {
    uint16_t d;
    std::memcpy(&d, w, 2);
    unpack_nibbles(w + 2, 8, qw);
    sum += (float)block_dot(qw, x.q + b * QK) * (half_to_float(d) * x.d[b]);
  }
  return sum;
}

float dot_q4_1(const uint8_t* w, const QRow& x, int64_t nb) {
  float sum = 0;
  int8_t qw[QK];
  for (int64_t b = 0; b < nb; ++b, w += kBlockBytes[Q4_1]) {
    uint16_t d, m;
    std::memcpy(&d, w, 2);
    std::memcpy(&m, w + 2, 2);
    unpack_nibbles(w + 4, 0, qw);
    sum += (float)block_dot(qw, x.q + b * QK) * (half_to_float(d) * x.d[b]) +
           half_to_float(m) * x.s[b];
  }
  return sum;
}

}  // namespace

void quantize_block_q8_0(const float* x, int64_t n, int8_t* q, float* d, float* s,
                         int32_t* sum) {
  float amax = 0;
  for (int64_t j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float db = amax / 127.0f;
  const float id = db != 0.0f ? 1.0f / db : 0.0f;
  int32_t total = 0;
  for (int64_t j = 0; j < QK; ++j) {
    const float v = j < n ? x[j] * id : 0.0f;
    // roundf, as the reference; a non-finite product (subnormal db) gives 0, as ggml on x86
    const int8_t c = std::isfinite(v) ? (int8_t)std::round(v) : 0;
    q[j] = c;
    total += c;
  }
  *d = half_to_float(float_to_half(db));
  *s = (float)total * *d;
  *sum = total;
}

const QuantOps qops_scalar = {"scalar", quantize_row, {dot_q8_0, dot_q4_0, dot_q4_1}, 0, false,
                               {nullptr, nullptr, nullptr}, 0, nullptr,
                               {nullptr, nullptr, nullptr}, {nullptr, nullptr, nullptr}};

}  // namespace sllm
