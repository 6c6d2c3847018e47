// Branch-free float exp/tanh written so loops over them auto-vectorize in every SIMD tier
// (libm calls would not). exp_approx: max relative error 8e-8 (~1.3 ulp) on [-87, 88],
// tanh_approx: max absolute error 2e-7 (measured against double precision); inputs
// outside are clamped (results ~1e-38 or ~1.6e38), which softmax and GELU never need.
#pragma once
#include <cstdint>
#include <cstring>

namespace sllm {

static inline float bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int32_t float_to_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }

// exp(x) = 2^n * exp(g), n = round(x / ln2), Cody-Waite reduction, Cephes polynomial.
static inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float r = x * 1.44269504088896341f + shifter;
  int32_t n = float_to_bits(r) - float_to_bits(shifter);
  float fn = r - shifter;
  float g = x - fn * 0.693359375f;
  g = g - fn * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * g + 1.3981999507e-3f;
  y = y * g + 8.3334519073e-3f;
  y = y * g + 4.1665795894e-2f;
  y = y * g + 1.6666665459e-1f;
  y = y * g + 5.0000001201e-1f;
  y = y * g * g + g + 1.0f;
  return y * bits_to_float((n + 127) << 23);
}

static inline float tanh_approx(float x) {
  float e = exp_approx(2.0f * x);
  return 1.0f - 2.0f / (e + 1.0f);
}

}  // namespace sllm
