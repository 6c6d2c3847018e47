// Causal multi-head attention as small GEMMs per (batch, head), flash-attention style:
// forward saves only the logsumexp of each score row, (B, H, T); backward recomputes the
// probabilities from it and uses rowsum(dO * O) instead of storing anything T x T.
// Queries go in blocks of kRowBlock rows, each touching only keys up to its last row.
// One task per (batch, head), each writing only its own columns with its own scratch,
// so results do not depend on the thread count.
#include <math.h>

#include <algorithm>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {
namespace {

constexpr int64_t kRowBlock = 32;
// Up to this many query rows per head (decoding), attention is dot products with the
// cached keys and a weighted sum of the cached values, read where they are: no GEMM
// panels to pack for a row or two.
constexpr int64_t kDecodeRows = 2;

// Scratch rows are padded to a multiple of the widest vector (16 floats), so the row
// kernels (attention_rows.inc) run over whole vectors.
int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }

Scratch g_attention;

// One head: query rows at stride ldq, key and value rows (0..q_pos0+nq-1) at stride
// ldkv, output rows at stride ldo.
struct Head {
  const float* q;
  int64_t ldq;
  const float *k, *v;
  int64_t ldkv;
  float* out;
  int64_t ldo, nq, q_pos0, D;
};

// K^T (or V^T) of a head packed once into GEMM panels, for every 32-row block of queries
// (packing it per block cost as much as the block's product at D = 32); heads wider
// than a packing block go through gemm_serial. kt: packed_keys(nk, D) floats.
bool packs_keys(int64_t D) { return D <= ops().kc; }
int64_t packed_keys(int64_t nk, int64_t D) { return packs_keys(D) ? gemm_packed_b_size(nk, D) : 0; }

// S (rows x cols, row stride ld) = Q rows @ K^T, from K^T packed in kt when there is one.
void scores(int64_t rows, int64_t cols, int64_t D, const float* q, int64_t ldq, const float* k,
            int64_t ldk, const float* kt, float* s, int64_t ld, float* pack) {
  if (kt) return gemm_rows_packed_b(rows, cols, D, q, ldq, kt, s, ld);
  gemm_serial(rows, cols, D, q, ldq, false, k, ldk, true, s, ld, false, nullptr, pack);
}

// Forward of one head into out (and lse when given); s: kRowBlock x padded(nk) scratch,
// kt: packed_keys(nk, D) floats.
void head_fwd(const Head& h, float* lse, float* s, float* kt, float* pack) {
  const Ops& o = ops();
  const int64_t nk = h.q_pos0 + h.nq, ld = padded(nk);
  const float scale = 1.0f / sqrtf((float)h.D);
  if (h.nq <= kDecodeRows) {  // decoding: read the cached keys and values in place
    for (int64_t i = 0; i < h.nq; ++i) {
      const int64_t n = h.q_pos0 + i + 1;
      o.gemm_row(s, h.q + i * h.ldq, h.k, h.ldkv, true, h.D, 0, n, false, nullptr);  // q.k_j
      const float l = o.softmax_row(s, n, scale);
      if (lse) lse[i] = l;
      float* out = h.out + i * h.ldo;  // sum_j p_j v_j
      o.gemm_row(out, s, h.v, h.ldkv, false, n, 0, h.D, false, nullptr);
    }
    return;
  }
  if (packs_keys(h.D)) gemm_pack_b(kt, h.k, h.ldkv, true, nk, h.D);
  else kt = nullptr;
  for (int64_t r0 = 0; r0 < h.nq; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, h.nq - r0), cols = h.q_pos0 + r0 + rows;
    scores(rows, cols, h.D, h.q + r0 * h.ldq, h.ldq, h.k, h.ldkv, kt, s, ld, pack);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t n = h.q_pos0 + r0 + i + 1;
      const float l = o.softmax_row(s + i * ld, n, scale);
      if (lse) lse[r0 + i] = l;
      if (n < cols) std::fill(s + i * ld + n, s + i * ld + cols, 0.0f);  // the causal mask
    }
    gemm_serial(rows, h.D, cols, s, ld, false, h.v, h.ldkv, false, h.out + r0 * h.ldo, h.ldo,
                false, nullptr, pack);
  }
}

// Backward of one head (T = nq, q_pos0 = 0). p, ds: T x padded(T) scratch each; kt, vt:
// packed_keys(T, D) floats each.
void head_bwd(const Head& h, float* dq, float* dk, float* dv, int64_t ldd, const float* dout,
              const float* lse, float* p, float* ds, float* kt, float* vt, float* pack) {
  const Ops& o = ops();
  const int64_t T = h.nq, D = h.D, ld = padded(T);
  const float scale = 1.0f / sqrtf((float)D);
  if (packs_keys(D)) {
    gemm_pack_b(kt, h.k, h.ldkv, true, T, D);
    gemm_pack_b(vt, h.v, h.ldkv, true, T, D);
  } else {
    kt = vt = nullptr;
  }
  for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, T - r0), cols = r0 + rows;
    scores(rows, cols, D, h.q + r0 * h.ldq, h.ldq, h.k, h.ldkv, kt, p + r0 * ld, ld, pack);
    scores(rows, cols, D, dout + r0 * h.ldo, h.ldo, h.v, h.ldkv, vt, ds + r0 * ld, ld, pack);
    for (int64_t i = r0; i < r0 + rows; ++i) {
      float delta = 0.0f;  // rowsum(dO * O)
      for (int64_t d = 0; d < D; ++d) delta += dout[i * h.ldo + d] * h.out[i * h.ldo + d];
      o.attention_grad_row(p + i * ld, ds + i * ld, i + 1, scale, lse[i], delta);
      std::fill(p + i * ld + i + 1, p + i * ld + T, 0.0f);
      std::fill(ds + i * ld + i + 1, ds + i * ld + T, 0.0f);
    }
    // dQ rows = dS rows @ K (keys up to the block's last row)
    gemm_serial(rows, D, cols, ds + r0 * ld, ld, false, h.k, h.ldkv, false, dq + r0 * ldd, ldd,
                false, nullptr, pack);
  }
  for (int64_t c0 = 0; c0 < T; c0 += kRowBlock) {  // dK = dS^T Q, dV = P^T dO, queries >= c0
    const int64_t keys = std::min(kRowBlock, T - c0), n = T - c0;
    const int64_t off = c0 * ld + c0;
    gemm_serial(keys, D, n, ds + off, ld, true, h.q + c0 * h.ldq, h.ldq, false, dk + c0 * ldd, ldd,
                false, nullptr, pack);
    gemm_serial(keys, D, n, p + off, ld, true, dout + c0 * h.ldo, h.ldo, false, dv + c0 * ldd,
                ldd, false, nullptr, pack);
  }
}

// Per-thread scratch: `floats` for the task plus a GEMM packing buffer.
float* thread_scratch(int64_t floats, int64_t* per_thread) {
  *per_thread = floats + gemm_pack_size();
  return g_attention.get(*per_thread * num_threads());
}

}  // namespace

void attention_fwd(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                   int64_t H) {
  const int64_t D = C / H;
  auto guard = g_attention.lock();
  int64_t per_thread;
  const int64_t kt_size = packed_keys(T, D);
  float* scratch = thread_scratch(kRowBlock * padded(T) + kt_size, &per_thread);
  parallel_for(B * H, [&](int64_t bh, int thread) {
    const int64_t b = bh / H, h = bh % H;
    const float* q = qkv + b * T * 3 * C + h * D;
    float* s = scratch + thread * per_thread;
    float* kt = s + kRowBlock * padded(T);
    head_fwd({q, 3 * C, q + C, q + 2 * C, 3 * C, out + b * T * C + h * D, C, T, 0, D},
             lse + (b * H + h) * T, s, kt, kt + kt_size);
  });
}

void attention_bwd(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, int64_t B, int64_t T, int64_t C, int64_t H) {
  const int64_t D = C / H;
  auto guard = g_attention.lock();
  int64_t per_thread;
  const int64_t kt_size = packed_keys(T, D);
  float* scratch = thread_scratch(2 * T * padded(T) + 2 * kt_size, &per_thread);
  parallel_for(B * H, [&](int64_t bh, int thread) {
    const int64_t b = bh / H, h = bh % H;
    const int64_t base = b * T * 3 * C + h * D, obase = b * T * C + h * D;
    const float* q = qkv + base;
    float* s = scratch + thread * per_thread;
    head_bwd({q, 3 * C, q + C, q + 2 * C, 3 * C, const_cast<float*>(out + obase), C, T, 0, D},
             dqkv + base, dqkv + base + C, dqkv + base + 2 * C, 3 * C, dout + obase,
             lse + (b * H + h) * T, s, s + T * padded(T), s + 2 * T * padded(T),
             s + 2 * T * padded(T) + kt_size, s + 2 * T * padded(T) + 2 * kt_size);
  });
}

void attention_decode(float* out, const float* qkv, float* kcache, float* vcache, int64_t pos,
                      int64_t B, int64_t Tn, int64_t C, int64_t H, int64_t maxT) {
  const int64_t D = C / H, nk = pos + Tn;
  auto guard = g_attention.lock();
  int64_t per_thread;
  const int64_t kt_size = Tn > kDecodeRows ? packed_keys(nk, D) : 0;
  float* scratch = thread_scratch(kRowBlock * padded(nk) + kt_size, &per_thread);
  parallel_for(B * H, [&](int64_t bh, int thread) {
      const int64_t b = bh / H, h = bh % H;
      float* kc = kcache + (b * H + h) * maxT * D;
      float* vc = vcache + (b * H + h) * maxT * D;
      const float* q = qkv + b * Tn * 3 * C + h * D;
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t d = 0; d < D; ++d) {
          kc[(pos + t) * D + d] = q[t * 3 * C + C + d];
          vc[(pos + t) * D + d] = q[t * 3 * C + 2 * C + d];
        }
      float* s = scratch + thread * per_thread;
      // keys/values are rows of the cache (stride D); queries rows of qkv (stride 3C)
      float* kt = s + kRowBlock * padded(nk);
      head_fwd({q, 3 * C, kc, vc, D, out + b * Tn * C + h * D, C, Tn, pos, D}, nullptr, s, kt,
               kt + kt_size);
  }, B * H * nk * D > 65536 ? 0 : 1);
}

// Continuous batching: one new position per sequence, sequence b in cache slot slots[b] at
// position positions[b]. Each (sequence, head) is the B = Tn = 1 case of attention_decode
// on its own slot, so a sequence's output does not depend on what else is in the batch.
void attention_decode_batch(float* out, const float* qkv, float* kcache, float* vcache,
                            const int32_t* slots, const int32_t* positions, int64_t B,
                            int64_t C, int64_t H, int64_t maxT) {
  const int64_t D = C / H;
  int64_t nk = 1;
  for (int64_t b = 0; b < B; ++b) nk = std::max<int64_t>(nk, positions[b] + 1);
  auto guard = g_attention.lock();
  int64_t per_thread;
  float* scratch = thread_scratch(kRowBlock * padded(nk), &per_thread);
  parallel_for(B * H, [&](int64_t bh, int thread) {
    const int64_t b = bh / H, h = bh % H, pos = positions[b];
    float* kc = kcache + ((int64_t)slots[b] * H + h) * maxT * D;
    float* vc = vcache + ((int64_t)slots[b] * H + h) * maxT * D;
    const float* q = qkv + b * 3 * C + h * D;
    for (int64_t d = 0; d < D; ++d) {
      kc[pos * D + d] = q[C + d];
      vc[pos * D + d] = q[2 * C + d];
    }
    float* s = scratch + thread * per_thread;
    head_fwd({q, 3 * C, kc, vc, D, out + b * C + h * D, C, 1, pos, D}, nullptr, s, nullptr,
             s + kRowBlock * padded(pos + 1));  // one row: the in-place decode path
  }, B * H * nk * D > 65536 ? 0 : 1);
}

}  // namespace sllm
