// Optimizer updates over the flat parameter buffer, in float32 arithmetic matching the
// numpy reference (torch.optim.SGD / Adam / AdamW). Weight decay applies to the prefix
// [0, decay_count) where the matrices live.
#include <algorithm>
#include <cmath>
#include <vector>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {

void sgd_update(float* params, const float* grads, float* momentum_buf, float lr,
                float momentum, float weight_decay, int64_t decay_count, int64_t n) {
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float g = grads[i] + (i < decay_count ? weight_decay * params[i] : 0.0f);
      if (momentum_buf) {
        momentum_buf[i] = momentum_buf[i] * momentum + g;
        g = momentum_buf[i];
      }
      params[i] -= lr * g;
    }
  });
}

void adam_update(float* params, const float* grads, float* m, float* v, float lr, float beta1,
                 float beta2, float eps, float weight_decay, int64_t step, int64_t decay_count,
                 bool decoupled, int64_t n) {
  const AdamStep s{lr, beta1, beta2, eps, weight_decay,
                   (float)(1.0 - std::pow((double)beta1, (double)step)),
                   (float)(1.0 - std::pow((double)beta2, (double)step)),
                   (float)(1.0 - (double)lr * (double)weight_decay),
                   (float)(1.0 - (double)beta1), (float)(1.0 - (double)beta2), decoupled};
  const Ops& o = ops();
  // memory-bound: the parameters, gradients and both moments stream once (pool.h)
  parallel_floats(n, [&](int64_t i0, int64_t i1) {
    const int64_t d1 = std::min(std::max(decay_count, i0), i1);  // [i0, d1) decays
    if (d1 > i0) o.adam_range(params + i0, grads + i0, m + i0, v + i0, d1 - i0, s, true);
    if (i1 > d1) o.adam_range(params + d1, grads + d1, m + d1, v + d1, i1 - d1, s, false);
  });
}

double grad_norm_sq(const float* grads, int64_t n) {
  constexpr int64_t kBlock = 1 << 15;  // fixed, so the sum's order never depends on threads
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  double partial_small[64];
  std::vector<double> partial_big(blocks > 64 ? blocks : 0);
  double* partial = blocks > 64 ? partial_big.data() : partial_small;
  const Ops& o = ops();
  parallel_for(blocks, [&](int64_t b, int) {
    partial[b] = o.sum_squares(grads + b * kBlock, std::min(kBlock, n - b * kBlock));
  }, blocks > 1 ? 0 : 1);
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) total += partial[b];
  return total;
}

}  // namespace sllm
