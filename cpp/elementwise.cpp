// Elementwise kernels: activations (GELU, ReLU, llama's SwiGLU), residual add, and
// counter-based dropout.
// Each element depends only on its own inputs, so any split over threads is exact; all
// split from kParallelFloats (pool.h), GELU's and dropout's exp- and hash-heavy loops too.
#include <cmath>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {
namespace {

// base.dropout_threshold: round(p * 2^32) (half to even, as Python), capped at 2^32 - 1.
uint32_t dropout_threshold(double p) {
  double t = std::nearbyint(p * 4294967296.0);
  return t >= 4294967295.0 ? 0xFFFFFFFFu : (uint32_t)t;
}

}  // namespace

void gelu_fwd(float* out, const float* inp, int64_t n) {
  const Ops& o = ops();
  parallel_floats(n, [&](int64_t i0, int64_t i1) { o.gelu_fwd(out + i0, inp + i0, i1 - i0); });
}

void gelu_bwd(float* dinp, const float* dout, const float* inp, int64_t n) {
  const Ops& o = ops();
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    o.gelu_bwd(dinp + i0, dout + i0, inp + i0, i1 - i0);
  });
}

void relu_fwd(float* out, const float* inp, int64_t n) {
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
  });
}

void relu_bwd(float* dinp, const float* dout, const float* inp, int64_t n) {
  const Ops& o = ops();
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    o.relu_bwd(dinp + i0, dout + i0, inp + i0, i1 - i0);
  });
}

void residual_fwd(float* out, const float* a, const float* b, int64_t n) {
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = a[i] + b[i];
  });
}

void dropout_fwd(float* out, const float* inp, double p, uint32_t seed, int64_t n) {
  const uint32_t threshold = dropout_threshold(p);
  const float keep_scale = (float)(1.0 - p);  // numpy divides by float32(1 - p)
  const Ops& o = ops();
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    o.dropout_range(out + i0, inp + i0, i0, i1 - i0, seed, threshold, keep_scale);
  });
}

void swiglu_fwd(float* out, const float* gate, const float* up, int64_t n) {
  const Ops& o = ops();
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    o.swiglu_fwd(out + i0, gate + i0, up + i0, i1 - i0);
  });
}

void swiglu_bwd(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                int64_t n) {
  const Ops& o = ops();
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    o.swiglu_bwd(dgate + i0, dup + i0, dout + i0, gate + i0, up + i0, i1 - i0);
  });
}

}  // namespace sllm
