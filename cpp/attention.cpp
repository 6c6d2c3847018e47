// Causal multi-head and grouped-query attention as small GEMMs per (batch, head),
// flash-attention style:
// forward saves only the logsumexp of each score row, (B, H, T); backward recomputes the
// probabilities from it and uses rowsum(dO * O) instead of storing anything T x T.
// Queries go in blocks of kRowBlock rows, each touching only keys up to its last row.
// Tasks own whole KV heads' outputs (or a fixed share of their query heads), each with its
// own scratch, so results do not depend on the thread count.
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
// Query heads of one sequence decoded together (decode_heads), at most.
constexpr int kDecodeHeads = 4;

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

// op(B) = rows^T (nk rows at stride ld) packed into dst, or nullptr when D is too wide.
const float* pack_keys(float* dst, const float* rows, int64_t ld, int64_t nk, int64_t D) {
  if (!packs_keys(D)) return nullptr;
  gemm_pack_b(dst, rows, ld, true, nk, D);
  return dst;
}

// S (rows x cols, row stride ld) = Q rows @ K^T, from K^T packed in kt when there is one.
void scores(int64_t rows, int64_t cols, int64_t D, const float* q, int64_t ldq, const float* k,
            int64_t ldk, const float* kt, float* s, int64_t ld, float* pack) {
  if (kt) return gemm_rows_packed_b(rows, cols, D, q, ldq, kt, s, ld);
  gemm_serial(rows, cols, D, q, ldq, false, k, ldk, true, s, ld, false, nullptr, pack);
}

// Forward of one head (more than kDecodeRows query rows) into out (and lse when given);
// s: kRowBlock x padded(nk) scratch, kt: the head's keys packed by pack_keys (or nullptr).
void head_fwd(const Head& h, float* lse, float* s, const float* kt, float* pack) {
  const Ops& o = ops();
  const int64_t nk = h.q_pos0 + h.nq, ld = padded(nk);
  const float scale = 1.0f / sqrtf((float)h.D);
  for (int64_t r0 = 0; r0 < h.nq; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, h.nq - r0), cols = h.q_pos0 + r0 + rows;
    scores(rows, cols, h.D, h.q + r0 * h.ldq, h.ldq, h.k, h.ldkv, kt, s, ld, pack);
    o.softmax_rows(s, ld, rows, h.q_pos0 + r0 + 1, scale, lse ? lse + r0 : nullptr);
    for (int64_t i = 0; i < rows; ++i) {  // the causal mask
      const int64_t n = h.q_pos0 + r0 + i + 1;
      if (n < cols) std::fill(s + i * ld + n, s + i * ld + cols, 0.0f);
    }
    gemm_serial(rows, h.D, cols, s, ld, false, h.v, h.ldkv, false, h.out + r0 * h.ldo, h.ldo,
                false, nullptr, pack);
  }
}

// Decoding (up to kDecodeRows query rows): `heads` <= kDecodeHeads query heads of one
// sequence, h[0..heads), read the cached keys and values in place, each phase over all of
// them before the next (their dependent chains overlap: the softmax sums, the value sums).
// lse: heads x nq (when given); s: kDecodeHeads x padded(nk) scratch.
void decode_heads(const Head* h, int heads, float* lse, float* s) {
  const Ops& o = ops();
  const int64_t nq = h[0].nq, ld = padded(h[0].q_pos0 + nq), D = h[0].D;
  const float scale = 1.0f / sqrtf((float)D);
  float* out[kDecodeHeads];
  const float* v[kDecodeHeads];
  float l[kDecodeHeads];
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t n = h[0].q_pos0 + i + 1;
    for (int r = 0; r < heads; ++r) {
      o.decode_scores(s + r * ld, h[r].q + i * h[r].ldq, h[r].k, h[r].ldkv, D, n);  // q.k_j
      out[r] = h[r].out + i * h[r].ldo;
      v[r] = h[r].v;
    }
    o.softmax_row(s, ld, heads, n, scale, lse ? l : nullptr);
    if (lse)
      for (int r = 0; r < heads; ++r) lse[r * nq + i] = l[r];
    o.decode_values(out, s, ld, v, h[0].ldkv, D, n, heads);  // sum_j p_j v_j
  }
}

// Backward of one head (T = nq, q_pos0 = 0) into dq, and into dk, dv (overwritten, or
// added to when `accumulate`: the query heads sharing a KV head sum their gradients).
// p, ds: T x padded(T) scratch each; kt, vt: the head's keys and values packed by
// pack_keys (or nullptr).
void head_bwd(const Head& h, float* dq, float* dk, float* dv, int64_t ldd, bool accumulate,
              const float* dout, const float* lse, float* p, float* ds, const float* kt,
              const float* vt, float* pack) {
  const Ops& o = ops();
  const int64_t T = h.nq, D = h.D, ld = padded(T);
  const float scale = 1.0f / sqrtf((float)D);
  for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, T - r0), cols = r0 + rows;
    scores(rows, cols, D, h.q + r0 * h.ldq, h.ldq, h.k, h.ldkv, kt, p + r0 * ld, ld, pack);
    scores(rows, cols, D, dout + r0 * h.ldo, h.ldo, h.v, h.ldkv, vt, ds + r0 * ld, ld, pack);
    o.attention_grad_rows(p + r0 * ld, ds + r0 * ld, ld, rows, r0 + 1, scale, lse + r0,
                          dout + r0 * h.ldo, h.out + r0 * h.ldo, h.ldo, D);
    for (int64_t i = r0; i < r0 + rows; ++i) {  // the causal mask
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
                accumulate, nullptr, pack);
    gemm_serial(keys, D, n, p + off, ld, true, dout + c0 * h.ldo, h.ldo, false, dv + c0 * ldd,
                ldd, accumulate, nullptr, pack);
  }
}

// Per-thread scratch: `floats` for the task plus a GEMM packing buffer.
float* thread_scratch(int64_t floats, int64_t* per_thread) {
  *per_thread = floats + gemm_pack_size();
  return g_attention.get(*per_thread * num_threads());
}

// Where the heads of a qkv row ((H + 2*Hkv) * D floats: [Q | K | V]) are. Query head h
// attends with KV head h / g, g = H / Hkv (Hugging Face's repeat_kv): H = Hkv is GPT-2's
// multi-head attention, Hkv = 1 multi-query.
struct Heads {
  int64_t H, Hkv, D;
  Heads(int64_t C, int64_t H_, int64_t Hkv_) : H(H_), Hkv(Hkv_ > 0 ? Hkv_ : H_), D(C / H_) {}
  int64_t g() const { return H / Hkv; }
  int64_t width() const { return (H + 2 * Hkv) * D; }
  int64_t q(int64_t h) const { return h * D; }
  int64_t k(int64_t kvh) const { return (H + kvh) * D; }
  int64_t v(int64_t kvh) const { return (H + Hkv + kvh) * D; }
  // Query heads per forward task. A task takes query heads of one KV head, whose K^T it
  // packs once for all of them; the g heads split into chunks only as far as keeping
  // every thread busy needs. Each head's result is the same whichever task computes it.
  int64_t per_task(int64_t B) const {
    int64_t per = g();
    while (per > 1 && B * Hkv * ((g() + per - 1) / per) < 2 * num_threads()) per = (per + 1) / 2;
    return per;
  }
};

// Decoding, nq <= kDecodeRows query rows: one task per sequence and group of up to
// kDecodeHeads of its query heads (fewer while that leaves threads idle; max_threads: as
// parallel_for's). A head's result does not depend on its group: each head's arithmetic is
// the same in any.
template <class HeadOf>
void decode_all(const Heads& hs, int64_t B, int64_t nq, int64_t nk, float* lse, HeadOf head_of,
                int max_threads) {
  const int threads = max_threads > 0 ? std::min(max_threads, num_threads()) : num_threads();
  int64_t per = kDecodeHeads;
  while (per > 1 && threads > 1 && B * ((hs.H + per - 1) / per) < 2 * threads)
    per = (per + 1) / 2;
  const int64_t groups = (hs.H + per - 1) / per, ld = padded(nk);
  int64_t per_thread;
  float* scratch = thread_scratch(kDecodeHeads * ld, &per_thread);
  parallel_for(B * groups, [&](int64_t task, int thread) {
    const int64_t b = task / groups, h0 = task % groups * per;
    const int heads = (int)std::min(per, hs.H - h0);
    Head h[kDecodeHeads];
    for (int r = 0; r < heads; ++r) h[r] = head_of(b, h0 + r);
    decode_heads(h, heads, lse ? lse + (b * hs.H + h0) * nq : nullptr,
                 scratch + thread * per_thread);
  }, max_threads);
}

// The forward of every query head of B sequences, nq query rows each, over at most nk
// keys: head_of(b, h) says where head h of sequence b reads and writes. One task per
// KV head and chunk of its query heads (Heads::per_task); lse (B, H, nq) when given.
template <class HeadOf>
void forward_heads(const Heads& hs, int64_t B, int64_t nq, int64_t nk, float* lse,
                   HeadOf head_of, int max_threads) {
  if (nq <= kDecodeRows) return decode_all(hs, B, nq, nk, lse, head_of, max_threads);
  const int64_t per = hs.per_task(B), chunks = (hs.g() + per - 1) / per;
  const int64_t kt_size = packed_keys(nk, hs.D);
  int64_t per_thread;
  float* scratch = thread_scratch(kRowBlock * padded(nk) + kt_size, &per_thread);
  parallel_for(B * hs.Hkv * chunks, [&](int64_t task, int thread) {
    const int64_t b = task / (hs.Hkv * chunks), kvh = task / chunks % hs.Hkv;
    const int64_t h0 = kvh * hs.g() + task % chunks * per;
    const int64_t h1 = std::min(h0 + per, (kvh + 1) * hs.g());
    float* s = scratch + thread * per_thread;
    float* kt = s + kRowBlock * padded(nk);
    const Head first = head_of(b, h0);
    const float* packed = kt_size ? pack_keys(kt, first.k, first.ldkv, first.q_pos0 + nq, hs.D)
                                  : nullptr;
    for (int64_t h = h0; h < h1; ++h)
      head_fwd(head_of(b, h), lse ? lse + (b * hs.H + h) * nq : nullptr, s, packed,
               kt + kt_size);
  }, max_threads);
}

// Decoding parallelises only once a step's keys are many: below, the fork costs more.
// Whether the 16-row decode_batch step gains from the second thread depends on the
// machine's load (in-process A/B in the step, 2026-12-05): at load 3 two threads took
// 0.5-0.8x the attention time of one (small- and medium-model, q8_0 and f32), at load 5
// 1.2-2x. The limit stays where the quieter machine wants it.
int decode_threads(const Heads& hs, int64_t B, int64_t nk) {
  return B * hs.H * nk * hs.D > 65536 ? 0 : 1;
}

}  // namespace

void attention_fwd(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                   int64_t H, int64_t Hkv) {
  const Heads hs(C, H, Hkv);
  const int64_t W = hs.width(), D = hs.D;
  auto guard = g_attention.lock();
  forward_heads(hs, B, T, T, lse, [&](int64_t b, int64_t h) {
    const float* row = qkv + b * T * W;
    const int64_t kvh = h / hs.g();
    return Head{row + hs.q(h), W, row + hs.k(kvh), row + hs.v(kvh), W,
                out + b * T * C + h * D, C, T, 0, D};
  }, 0);
}

// One task per (sequence, KV head): its g query heads run in order, the first
// overwriting dK and dV, the others adding to them.
void attention_bwd(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, int64_t B, int64_t T, int64_t C, int64_t H, int64_t Hkv) {
  const Heads hs(C, H, Hkv);
  const int64_t W = hs.width(), D = hs.D;
  auto guard = g_attention.lock();
  int64_t per_thread;
  const int64_t kt_size = packed_keys(T, D), pd = T * padded(T);
  float* scratch = thread_scratch(2 * pd + 2 * kt_size, &per_thread);
  parallel_for(B * hs.Hkv, [&](int64_t task, int thread) {
    const int64_t b = task / hs.Hkv, kvh = task % hs.Hkv;
    const float* row = qkv + b * T * W;
    float* drow = dqkv + b * T * W;
    float* s = scratch + thread * per_thread;
    float* kt = s + 2 * pd;
    const float* k = row + hs.k(kvh);
    const float* v = row + hs.v(kvh);
    const float* kp = pack_keys(kt, k, W, T, D);
    const float* vp = pack_keys(kt + kt_size, v, W, T, D);
    for (int64_t j = 0; j < hs.g(); ++j) {
      const int64_t h = kvh * hs.g() + j, obase = b * T * C + h * D;
      head_bwd({row + hs.q(h), W, k, v, W, const_cast<float*>(out + obase), C, T, 0, D},
               drow + hs.q(h), drow + hs.k(kvh), drow + hs.v(kvh), W, j > 0, dout + obase,
               lse + (b * H + h) * T, s, s + pd, kp, vp, kt + 2 * kt_size);
    }
  });
}

// Each sequence's new keys and values go into its cache rows first (one copy per KV
// head), then the query heads read the cache.
void attention_decode(float* out, const float* qkv, float* kcache, float* vcache, int64_t pos,
                      int64_t B, int64_t Tn, int64_t C, int64_t H, int64_t maxT, int64_t Hkv) {
  const Heads hs(C, H, Hkv);
  const int64_t W = hs.width(), D = hs.D, nk = pos + Tn;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t kvh = 0; kvh < hs.Hkv; ++kvh) {
      const int64_t cache = (b * hs.Hkv + kvh) * maxT * D;
      for (int64_t t = 0; t < Tn; ++t) {
        const float* row = qkv + (b * Tn + t) * W;
        std::copy(row + hs.k(kvh), row + hs.k(kvh) + D, kcache + cache + (pos + t) * D);
        std::copy(row + hs.v(kvh), row + hs.v(kvh) + D, vcache + cache + (pos + t) * D);
      }
    }
  auto guard = g_attention.lock();
  // keys/values are rows of the cache (stride D); queries rows of qkv (stride W)
  forward_heads(hs, B, Tn, nk, nullptr, [&](int64_t b, int64_t h) {
    const int64_t cache = (b * hs.Hkv + h / hs.g()) * maxT * D;
    return Head{qkv + b * Tn * W + hs.q(h), W, kcache + cache, vcache + cache, D,
                out + b * Tn * C + h * D, C, Tn, pos, D};
  }, decode_threads(hs, B, nk));
}

// Continuous batching: one new position per sequence, sequence b in cache slot slots[b] at
// position positions[b]. Each (sequence, head) is the B = Tn = 1 case of attention_decode
// on its own slot, so a sequence's output does not depend on what else is in the batch.
void attention_decode_batch(float* out, const float* qkv, float* kcache, float* vcache,
                            const int32_t* slots, const int32_t* positions, int64_t B,
                            int64_t C, int64_t H, int64_t maxT, int64_t Hkv) {
  const Heads hs(C, H, Hkv);
  const int64_t W = hs.width(), D = hs.D;
  int64_t nk = 1;
  for (int64_t b = 0; b < B; ++b) {
    nk = std::max<int64_t>(nk, positions[b] + 1);
    for (int64_t kvh = 0; kvh < hs.Hkv; ++kvh) {
      const int64_t at = (((int64_t)slots[b] * hs.Hkv + kvh) * maxT + positions[b]) * D;
      const float* row = qkv + b * W;
      std::copy(row + hs.k(kvh), row + hs.k(kvh) + D, kcache + at);
      std::copy(row + hs.v(kvh), row + hs.v(kvh) + D, vcache + at);
    }
  }
  auto guard = g_attention.lock();
  forward_heads(hs, B, 1, nk, nullptr, [&](int64_t b, int64_t h) {
    const int64_t cache = ((int64_t)slots[b] * hs.Hkv + h / hs.g()) * maxT * D;
    return Head{qkv + b * W + hs.q(h), W, kcache + cache, vcache + cache, D, out + b * C + h * D,
                C, 1, positions[b], D};
  }, decode_threads(hs, B, nk));
}

}  // namespace sllm
