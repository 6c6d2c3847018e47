// Token + position embedding, forward and backward.
#include <algorithm>
#include <cstring>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {

void encoder_fwd(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                 int64_t BT, int64_t T, int64_t C, int64_t pos) {
  parallel_rows(BT, C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* e = wte + (int64_t)tokens[r] * C;
      const float* p = wpe + (pos + r % T) * C;
      for (int64_t c = 0; c < C; ++c) out[r * C + c] = e[c] + p[c];
    }
  });
}

// Parallel over column blocks: every thread walks all rows in order, so repeated tokens
// are summed in the same order whatever the thread count.
void encoder_bwd(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                 int64_t B, int64_t T, int64_t C, int64_t pos) {
  const int64_t blocks = (C + 31) / 32;
  const Ops& o = ops();
  parallel_for(blocks, [&](int64_t blk, int) {
    const int64_t c0 = blk * 32, c1 = std::min(C, c0 + 32);
    for (int64_t r = 0; r < B * T; ++r) {
      float* d = dwte + (int64_t)tokens[r] * C;
      for (int64_t c = c0; c < c1; ++c) d[c] += dout[r * C + c];
    }
    for (int64_t t = 0; t < T; ++t) {  // position t's rows are T * C apart
      float sum[32] = {0};
      o.column_sums(sum, dout + t * C + c0, B, T * C, c1 - c0);
      for (int64_t c = c0; c < c1; ++c) dwpe[(pos + t) * C + c] += sum[c - c0];
    }
  }, B * T * C >= kParallelFloats ? 0 : 1);
}

}  // namespace sllm
