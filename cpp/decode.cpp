// The fused decode block: the layer kernels of one transformer block called in sequence
// from C++, so a decoded token crosses from Python once per block instead of ten times.
#include "decode.h"

#include "kernels.h"
#include "quant.h"

namespace sllm {
namespace {

// matmul_fwd on float weights (C_in, C_out) or their packed panels, matmul_q_fwd on
// quantized rows
void matmul(float* out, const float* inp, const void* weight, const float* bias, int qtype,
            bool packed, int64_t N, int64_t K, int64_t OC) {
  if (qtype < 0 && packed)
    matmul_fwd_packed(out, inp, *static_cast<const PackedWeight*>(weight), bias, N);
  else if (qtype < 0)
    matmul_fwd(out, inp, static_cast<const float*>(weight), bias, false, N, K, OC);
  else
    matmul_q_fwd(out, inp, static_cast<const uint8_t*>(weight), bias, qtype, N, K, OC, packed);
}

}  // namespace

void decode_block(float* out, const float* x, float* kcache, float* vcache, float* work,
                  const BlockWeights& w, int qtype, bool gelu, const DecodeRows& rows,
                  int64_t B, int64_t Tn, int64_t C, int64_t F, int64_t H, int64_t maxT) {
  // the workspace, as sllm.backends.reference.decode_block_views cuts it
  const int64_t N = B * Tn;
  float* ln = work;              // (N, C): ln_1's output, then ln_2's
  float* mean = ln + N * C;      // (N)
  float* rstd = mean + N;        // (N)
  float* qkv = rstd + N;         // (N, 3C)
  float* atty = qkv + 3 * N * C; // (N, C)
  float* attproj = atty + N * C; // (N, C)
  float* res2 = attproj + N * C; // (N, C)
  float* fch = res2 + N * C;     // (N, F)
  float* fch_act = fch + N * F;  // (N, F)
  float* fcproj = fch_act + N * F;  // (N, C)

  layernorm_fwd(ln, mean, rstd, x, w.ln1_w, w.ln1_b, N, C);
  matmul(qkv, ln, w.attn_w, w.attn_b, qtype, w.packed, N, C, 3 * C);
  if (rows.slots)
    attention_decode_batch(atty, qkv, kcache, vcache, rows.slots, rows.positions, B, C, H, maxT);
  else
    attention_decode(atty, qkv, kcache, vcache, rows.pos, B, Tn, C, H, maxT);
  matmul(attproj, atty, w.proj_w, w.proj_b, qtype, w.packed, N, C, C);
  residual_fwd(res2, x, attproj, N * C);
  layernorm_fwd(ln, mean, rstd, res2, w.ln2_w, w.ln2_b, N, C);
  matmul(fch, ln, w.fc_w, w.fc_b, qtype, w.packed, N, C, F);
  (gelu ? gelu_fwd : relu_fwd)(fch_act, fch, N * F);
  matmul(fcproj, fch_act, w.fcproj_w, w.fcproj_b, qtype, w.packed, N, F, C);
  residual_fwd(out, res2, fcproj, N * C);
}

void llama_decode_block(float* out, const float* x, float* kcache, float* vcache, float* work,
                        const LlamaBlockWeights& w, int qtype, const DecodeRows& rows,
                        int64_t B, int64_t Tn, int64_t C, int64_t F, int64_t H, int64_t Hkv,
                        double theta, float eps, int64_t maxT) {
  // the workspace, as sllm.backends.reference.llama_decode_block_views cuts it
  const int64_t N = B * Tn, D = C / H, W = (H + 2 * Hkv) * D;
  float* ln = work;                   // (N, C): the first RMSNorm's output, then the second's
  float* rstd = ln + N * C;           // (N)
  int32_t* steps = reinterpret_cast<int32_t*>(rstd + N);  // (N) int32: a decode step's positions
  float* qkv = rstd + 2 * N;          // (N, W) in a slot N * 3C long
  float* atty = qkv + 3 * N * C;      // (N, C)
  float* attproj = atty + N * C;      // (N, C)
  float* res2 = attproj + N * C;      // (N, C)
  float* gate = res2 + N * C;         // (N, F)
  float* up = gate + N * F;           // (N, F)
  float* hact = up + N * F;           // (N, F)
  float* down = hact + N * F;         // (N, C)

  const int32_t* positions = rows.positions;
  if (!rows.slots) {
    for (int64_t n = 0; n < N; ++n) steps[n] = (int32_t)(rows.pos + n % Tn);
    positions = steps;
  }
  rmsnorm_fwd(ln, rstd, x, w.ln1_w, eps, N, C);
  matmul(qkv, ln, w.qkv_w, nullptr, qtype, w.packed, N, C, W);
  rope_fwd(qkv, positions, N, H, Hkv, D, theta);
  if (rows.slots)
    attention_decode_batch(atty, qkv, kcache, vcache, rows.slots, rows.positions, B, C, H,
                           maxT, Hkv);
  else
    attention_decode(atty, qkv, kcache, vcache, rows.pos, B, Tn, C, H, maxT, Hkv);
  matmul(attproj, atty, w.o_w, nullptr, qtype, w.packed, N, C, C);
  residual_fwd(res2, x, attproj, N * C);
  rmsnorm_fwd(ln, rstd, res2, w.ln2_w, eps, N, C);
  matmul(gate, ln, w.gate_w, nullptr, qtype, w.packed, N, C, F);
  matmul(up, ln, w.up_w, nullptr, qtype, w.packed, N, C, F);
  swiglu_fwd(hact, gate, up, N * F);
  matmul(down, hact, w.down_w, nullptr, qtype, w.packed, N, F, C);
  residual_fwd(out, res2, down, N * C);
}

}  // namespace sllm
