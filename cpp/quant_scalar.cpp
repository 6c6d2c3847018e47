// Scalar tier of the quantized dot products: ggml's vec_dot_{q8_0,q4_0,q4_1}_q8_0 in
// portable C++. The SIMD tiers (quant_x86.inc) compute the same sums and end the same way.
#include "quant.h"

namespace sllm {
namespace {

float dot_q8_0(const uint8_t* w, const QRow& x, int64_t nb) {
  float sum = 0;
  for (int64_t b = 0; b < nb; ++b, w += kBlockBytes[Q8_0]) {
    uint16_t d;
    std::memcpy(&d, w, 2);
    const int8_t* qw = reinterpret_cast<const int8_t*>(w + 2);
    const int8_t* qx = x.q + b * QK;
    int32_t isum = 0;
    for (int j = 0; j < QK; ++j) isum += qw[j] * qx[j];
    sum += (float)isum * (half_to_float(d) * x.d[b]);
  }
  return sum;
}

float dot_q4_0(const uint8_t* w, const QRow& x, int64_t nb) {
  float sum = 0;
  for (int64_t b = 0; b < nb; ++b, w += kBlockBytes[Q4_0]) {
    uint16_t d;
    std::memcpy(&d, w, 2);
    const uint8_t* qs = w + 2;
    const int8_t* qx = x.q + b * QK;
    int32_t isum = 0;
    for (int j = 0; j < QK / 2; ++j)
      isum += ((qs[j] & 0x0F) - 8) * qx[j] + ((qs[j] >> 4) - 8) * qx[j + QK / 2];
    sum += (float)isum * (half_to_float(d) * x.d[b]);
  }
  return sum;
}

float dot_q4_1(const uint8_t* w, const QRow& x, int64_t nb) {
  float sum = 0;
  for (int64_t b = 0; b < nb; ++b, w += kBlockBytes[Q4_1]) {
    uint16_t d, m;
    std::memcpy(&d, w, 2);
    std::memcpy(&m, w + 2, 2);
    const uint8_t* qs = w + 4;
    const int8_t* qx = x.q + b * QK;
    int32_t isum = 0;
    for (int j = 0; j < QK / 2; ++j)
      isum += (qs[j] & 0x0F) * qx[j] + (qs[j] >> 4) * qx[j + QK / 2];
    sum += (float)isum * (half_to_float(d) * x.d[b]) + half_to_float(m) * x.s[b];
  }
  return sum;
}

}  // namespace

const QuantOps qops_scalar = {"scalar", {dot_q8_0, dot_q4_0, dot_q4_1}};

}  // namespace sllm
