// Cache-blocked GEMM over packed panels (Goto/BLIS loop order) and the matmul kernels.
//
// For each depth block of kc: op(B) is packed into nr-wide column panels and op(A) into
// mr-tall row panels (zero-padded, so the register tile never branches), then threads
// take (mc x nb) tiles of C. Each tile of C is computed by one thread with a fixed depth
// order, so the result does not depend on the thread count.
#include <algorithm>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {
namespace {

constexpr int64_t kSmallM = 4;  // at most this many rows: no packing (decode, GEMV)

Scratch g_pack;

void pack_a(float* dst, const float* A, int64_t lda, bool trans_a, int64_t M, int64_t i0,
            int64_t k0, int64_t kc, int mr) {
  const int64_t m = std::min<int64_t>(mr, M - i0);
  for (int64_t k = 0; k < kc; ++k) {
    float* d = dst + k * mr;
    for (int64_t i = 0; i < m; ++i)
      d[i] = trans_a ? A[(k0 + k) * lda + i0 + i] : A[(i0 + i) * lda + k0 + k];
    for (int64_t i = m; i < mr; ++i) d[i] = 0.0f;
  }
}

void pack_b(float* dst, const float* B, int64_t ldb, bool trans_b, int64_t N, int64_t j0,
            int64_t k0, int64_t kc, int nr) {
  const int64_t n = std::min<int64_t>(nr, N - j0);
  for (int64_t k = 0; k < kc; ++k) {
    float* d = dst + k * nr;
    for (int64_t j = 0; j < n; ++j)
      d[j] = trans_b ? B[(j0 + j) * ldb + k0 + k] : B[(k0 + k) * ldb + j0 + j];
    for (int64_t j = n; j < nr; ++j) d[j] = 0.0f;
  }
}

void gemm_small_m(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool trans_a,
                  const float* B, int64_t ldb, bool trans_b, float* C, int64_t ldc,
                  bool accumulate, const float* bias, float* arow) {
  const Ops& o = ops();
  for (int64_t i = 0; i < M; ++i) {
    const float* a = A + i * lda;
    if (trans_a) {  // gather the strided row once
      for (int64_t k = 0; k < K; ++k) arow[k] = A[k * lda + i];
      a = arow;
    }
    const int parts = (int)std::min<int64_t>(num_threads(), std::max<int64_t>(1, N * K / 32768));
#pragma omp parallel for num_threads(parts) schedule(static)
    for (int t = 0; t < parts; ++t) {
      int64_t j0, j1;
      split_range(N, parts, t, 16, &j0, &j1);
      if (j0 < j1) o.gemm_row(C + i * ldc, a, B, ldb, trans_b, K, j0, j1, accumulate, bias);
    }
  }
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool trans_a,
          const float* B, int64_t ldb, bool trans_b, float* C, int64_t ldc, bool accumulate,
          const float* bias) {
  if (M == 0 || N == 0) return;
  const Ops& o = ops();
  auto guard = g_pack.lock();
  if (M <= kSmallM || K == 0) {
    gemm_small_m(M, N, K, A, lda, trans_a, B, ldb, trans_b, C, ldc, accumulate, bias,
                 g_pack.get(K + 1));
    return;
  }
  const int mr = o.mr, nr = o.nr;
  const int64_t kc_max = std::min<int64_t>(o.kc, K);
  const int64_t m_panels = (M + mr - 1) / mr, n_panels = (N + nr - 1) / nr;
  float* a_packed = g_pack.get((m_panels * mr + n_panels * nr) * kc_max);
  float* b_packed = a_packed + m_panels * mr * kc_max;
  const int64_t mc = 16, nb = std::max<int64_t>(1, 256 / nr);  // tile: panels of A x of B
  const int64_t m_tiles = (m_panels + mc - 1) / mc, n_tiles = (n_panels + nb - 1) / nb;
  const int64_t flops = M * N * K;
  const int threads = flops < 200000 ? 1 : num_threads();
  for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const int64_t kc = std::min(kc_max, K - k0);
    const bool acc = accumulate || k0 > 0;
    const float* bias_now = k0 == 0 ? bias : nullptr;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
      for (int64_t p = 0; p < n_panels; ++p)
        pack_b(b_packed + p * nr * kc, B, ldb, trans_b, N, p * nr, k0, kc, nr);
#pragma omp for schedule(static)
      for (int64_t p = 0; p < m_panels; ++p)
        pack_a(a_packed + p * mr * kc, A, lda, trans_a, M, p * mr, k0, kc, mr);
#pragma omp for collapse(2) schedule(static)
      for (int64_t tm = 0; tm < m_tiles; ++tm)
        for (int64_t tn = 0; tn < n_tiles; ++tn)
          for (int64_t jp = tn * nb; jp < std::min(n_panels, (tn + 1) * nb); ++jp)
            for (int64_t ip = tm * mc; ip < std::min(m_panels, (tm + 1) * mc); ++ip) {
              const int64_t i0 = ip * mr, j0 = jp * nr;
              o.gemm_micro(kc, a_packed + ip * mr * kc, b_packed + jp * nr * kc,
                           C + i0 * ldc + j0, ldc, (int)std::min<int64_t>(mr, M - i0),
                           (int)std::min<int64_t>(nr, N - j0), acc,
                           bias_now ? bias_now + j0 : nullptr);
            }
    }
  }
}

void matmul_fwd(float* out, const float* inp, const float* weight, const float* bias,
                bool trans_w, int64_t N, int64_t C, int64_t OC) {
  // weight is (C, OC), or (OC, C) used transposed
  gemm(N, OC, C, inp, C, false, weight, trans_w ? C : OC, trans_w, out, OC, false, bias);
}

void matmul_bwd(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                const float* weight, bool trans_w, int64_t N, int64_t C, int64_t OC) {
  if (dinp)  // dinp (N,C) = dout (N,OC) @ W^T
    gemm(N, C, OC, dout, OC, false, weight, trans_w ? C : OC, !trans_w, dinp, C, false, nullptr);
  if (trans_w)  // dW (OC,C) += dout^T @ inp
    gemm(OC, C, N, dout, OC, true, inp, C, false, dweight, C, true, nullptr);
  else  // dW (C,OC) += inp^T @ dout
    gemm(C, OC, N, inp, C, true, dout, OC, false, dweight, OC, true, nullptr);
  if (dbias) {
    const int64_t blocks = (OC + 63) / 64;
#pragma omp parallel for schedule(static) if (N * OC > 65536)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t c0 = blk * 64, c1 = std::min(OC, c0 + 64);
      float sum[64] = {0};
      for (int64_t r = 0; r < N; ++r)
        for (int64_t c = c0; c < c1; ++c) sum[c - c0] += dout[r * OC + c];
      for (int64_t c = c0; c < c1; ++c) dbias[c] += sum[c - c0];
    }
  }
}

}  // namespace sllm
