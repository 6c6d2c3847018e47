// Elementwise kernels: activations, residual add, and counter-based dropout.
// Each element depends only on its own inputs, so any split over threads is exact.
#include <cmath>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {
namespace {

// Below these sizes a fork/join costs more than it saves (and far more when another
// process holds a core): memory-bound kernels, and GELU's exp-heavy loops.
constexpr int64_t kMemoryBoundMin = 1 << 20, kComputeBoundMin = 1 << 15;

template <class F>
void for_chunks(int64_t n, F body, int64_t parallel_min = kMemoryBoundMin) {
  parallel_ranges(n, n < parallel_min ? 1 : num_threads(), 16, body);
}

// base.dropout_threshold: round(p * 2^32) (half to even, as Python), capped at 2^32 - 1.
uint32_t dropout_threshold(double p) {
  double t = std::nearbyint(p * 4294967296.0);
  return t >= 4294967295.0 ? 0xFFFFFFFFu : (uint32_t)t;
}

}  // namespace

void gelu_fwd(float* out, const float* inp, int64_t n) {
  const Ops& o = ops();
  for_chunks(n, [&](int64_t i0, int64_t i1) { o.gelu_fwd(out + i0, inp + i0, i1 - i0); },
             kComputeBoundMin);
}

void gelu_bwd(float* dinp, const float* dout, const float* inp, int64_t n) {
  const Ops& o = ops();
  for_chunks(n, [&](int64_t i0, int64_t i1) {
    o.gelu_bwd(dinp + i0, dout + i0, inp + i0, i1 - i0);
  }, kComputeBoundMin);
}

void relu_fwd(float* out, const float* inp, int64_t n) {
  for_chunks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
  });
}

void relu_bwd(float* dinp, const float* dout, const float* inp, int64_t n) {
  const Ops& o = ops();
  for_chunks(n, [&](int64_t i0, int64_t i1) {
    o.relu_bwd(dinp + i0, dout + i0, inp + i0, i1 - i0);
  });
}

void residual_fwd(float* out, const float* a, const float* b, int64_t n) {
  for_chunks(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = a[i] + b[i];
  });
}

void dropout_fwd(float* out, const float* inp, double p, uint32_t seed, int64_t n) {
  const uint32_t threshold = dropout_threshold(p);
  const float keep_scale = (float)(1.0 - p);  // numpy divides by float32(1 - p)
  const Ops& o = ops();
  for_chunks(n, [&](int64_t i0, int64_t i1) {
    o.dropout_range(out + i0, inp + i0, i0, i1 - i0, seed, threshold, keep_scale);
  }, kComputeBoundMin);
}

}  // namespace sllm
