// Optimizer updates over the flat parameter buffer, in float32 arithmetic matching the
// numpy reference (torch.optim.SGD / Adam / AdamW). Weight decay applies to the prefix
// [0, decay_count) where the matrices live.
#include <cmath>

#include "kernels.h"

namespace sllm {

void sgd_update(float* params, const float* grads, float* momentum_buf, float lr,
                float momentum, float weight_decay, int64_t decay_count, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float g = grads[i] + (i < decay_count ? weight_decay * params[i] : 0.0f);
    if (momentum_buf) {
      momentum_buf[i] = momentum_buf[i] * momentum + g;
      g = momentum_buf[i];
    }
    params[i] -= lr * g;
  }
}

void adam_update(float* params, const float* grads, float* m, float* v, float lr, float beta1,
                 float beta2, float eps, float weight_decay, int64_t step, int64_t decay_count,
                 bool decoupled, int64_t n) {
  const float bc1 = (float)(1.0 - std::pow((double)beta1, (double)step));
  const float bc2 = (float)(1.0 - std::pow((double)beta2, (double)step));
  const float shrink = (float)(1.0 - (double)lr * (double)weight_decay);
  const float one_minus_b1 = (float)(1.0 - (double)beta1);
  const float one_minus_b2 = (float)(1.0 - (double)beta2);
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const bool decays = i < decay_count;
    float g = grads[i];
    if (decoupled && decays) params[i] *= shrink;
    if (!decoupled && decays) g += weight_decay * params[i];
    m[i] = m[i] * beta1 + one_minus_b1 * g;
    v[i] = v[i] * beta2 + one_minus_b2 * g * g;
    params[i] -= lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
  }
}

}  // namespace sllm
