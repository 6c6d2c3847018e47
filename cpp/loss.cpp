// Fused softmax + cross-entropy over rows of logits; rows are independent.
#include <algorithm>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {

void softmax_xent(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                  float dloss, int64_t N, int64_t V) {
  const Ops& o = ops();
  parallel_for((N + 15) / 16, [&](int64_t chunk, int) {
    for (int64_t r = chunk * 16; r < std::min(N, chunk * 16 + 16); ++r)
      losses[r] = o.softmax_xent_row(dlogits ? dlogits + r * V : nullptr, logits + r * V, V,
                                     targets[r], dloss);
  }, N * V > 16384 ? 0 : 1);
}

}  // namespace sllm
