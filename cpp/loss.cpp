// Fused softmax + cross-entropy over rows of logits; rows are independent.
#include "arch.h"
#include "kernels.h"

namespace sllm {

void softmax_xent(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                  float dloss, int64_t N, int64_t V) {
  const Ops& o = ops();
#pragma omp parallel for schedule(dynamic, 16) if (N * V > 16384)
  for (int64_t r = 0; r < N; ++r)
    losses[r] = o.softmax_xent_row(dlogits ? dlogits + r * V : nullptr, logits + r * V, V,
                                   targets[r], dloss);
}

}  // namespace sllm
