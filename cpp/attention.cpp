// Causal multi-head attention: one task per (batch, head), each writing only its own
// columns, so results do not depend on the thread count. The state saved for backward is
// the logsumexp of each score row, (B, H, T), not the (B, H, T, T) probabilities.
#include <algorithm>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sllm {
namespace {

Scratch g_attention;

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace

void attention_fwd(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                   int64_t H) {
  const int64_t D = C / H, per_thread = attention_scratch(T, D);
  auto guard = g_attention.lock();
  float* scratch = g_attention.get(per_thread * num_threads());
  const Ops& o = ops();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const float* q = qkv + b * T * 3 * C + h * D;
      o.attention_rows(out + b * T * C + h * D, C, lse + (b * H + h) * T, q, 3 * C, q + C,
                       3 * C, q + 2 * C, 3 * C, T, 0, D, scratch + thread_id() * per_thread);
    }
}

void attention_bwd(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, int64_t B, int64_t T, int64_t C, int64_t H) {
  const int64_t D = C / H, per_thread = attention_scratch(T, D);
  auto guard = g_attention.lock();
  float* scratch = g_attention.get(per_thread * num_threads());
  const Ops& o = ops();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t base = b * T * 3 * C + h * D, obase = b * T * C + h * D;
      o.attention_bwd_rows(dqkv + base, dqkv + base + C, dqkv + base + 2 * C, 3 * C,
                           dout + obase, out + obase, C, qkv + base, qkv + base + C,
                           qkv + base + 2 * C, 3 * C, lse + (b * H + h) * T, T, D,
                           scratch + thread_id() * per_thread);
    }
}

void attention_decode(float* out, const float* qkv, float* kcache, float* vcache, int64_t pos,
                      int64_t B, int64_t Tn, int64_t C, int64_t H, int64_t maxT) {
  const int64_t D = C / H, per_thread = attention_scratch(pos + Tn, D);
  auto guard = g_attention.lock();
  float* scratch = g_attention.get(per_thread * num_threads());
  const Ops& o = ops();
  const bool parallel = B * H * (pos + Tn) * D > 32768;
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      float* kc = kcache + (b * H + h) * maxT * D;
      float* vc = vcache + (b * H + h) * maxT * D;
      const float* q = qkv + b * Tn * 3 * C + h * D;
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t d = 0; d < D; ++d) {
          kc[(pos + t) * D + d] = q[t * 3 * C + C + d];
          vc[(pos + t) * D + d] = q[t * 3 * C + 2 * C + d];
        }
      o.attention_rows(out + b * Tn * C + h * D, C, nullptr, q, 3 * C, kc, D, vc, D, Tn, pos,
                       D, scratch + thread_id() * per_thread);
    }
}

}  // namespace sllm
