// LayerNorm forward/backward. Rows run in parallel; the weight and bias gradients are
// summed per column block over all rows in row order, so they do not depend on threads.
#include <algorithm>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {

void layernorm_fwd(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                   const float* bias, int64_t N, int64_t C) {
  const Ops& o = ops();
  parallel_rows(N, C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      o.layernorm_fwd_row(out + r * C, mean + r, rstd + r, inp + r * C, weight, bias, C);
  });
}

void layernorm_bwd(float* dinp, float* dweight, float* dbias, const float* dout,
                   const float* inp, const float* weight, const float* mean, const float* rstd,
                   int64_t N, int64_t C) {
  const Ops& o = ops();
  const int64_t blocks = (C + 63) / 64;
  // one fork/join: row chunks (dinp) and column blocks (dweight, dbias) as tasks
  const int64_t grain = rows_per_task(C), row_tasks = (N + grain - 1) / grain;
  parallel_for(row_tasks + blocks, [&](int64_t task, int) {
    if (task < row_tasks) {
      const int64_t r0 = task * grain, r1 = std::min(N, r0 + grain);
      for (int64_t r = r0; r < r1; ++r)
        o.layernorm_bwd_row(dinp + r * C, dout + r * C, inp + r * C, weight, mean[r], rstd[r],
                            C);
      return;
    }
    {
      const int64_t blk = task - row_tasks;
      const int64_t c0 = blk * 64, n = std::min<int64_t>(64, C - c0);
      float db[64] = {0}, dw[64] = {0};
      o.layernorm_param_grads(dw, db, dout + c0, inp + c0, mean, rstd, N, C, n);
      for (int64_t c = 0; c < n; ++c) {
        dbias[c0 + c] += db[c];
        dweight[c0 + c] += dw[c];
      }
    }
  }, N * C >= kParallelFloats ? 0 : 1);
}

}  // namespace sllm
