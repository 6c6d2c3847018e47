// The kernels of the Backend contract (sllm/backends/base.py) on raw, validated buffers.
// Same names and argument order as the Python contract; sizes come last. bindings.cpp
// checks dtypes, contiguity and shapes before calling these without the GIL.
#pragma once
#include <cstdint>

namespace sllm {

// op(A) (M x K) @ op(B) (K x N) into C (M x N, row stride ldc), overwritten or accumulated,
// plus bias (N) when given. op(A)(i,k) = trans_a ? A[k*lda+i] : A[i*lda+k]; same for B.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool trans_a,
          const float* B, int64_t ldb, bool trans_b, float* C, int64_t ldc, bool accumulate,
          const float* bias);

void encoder_fwd(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                 int64_t BT, int64_t T, int64_t C, int64_t pos);
void encoder_bwd(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                 int64_t B, int64_t T, int64_t C, int64_t pos);

void layernorm_fwd(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                   const float* bias, int64_t N, int64_t C);
void layernorm_bwd(float* dinp, float* dweight, float* dbias, const float* dout,
                   const float* inp, const float* weight, const float* mean, const float* rstd,
                   int64_t N, int64_t C);

void matmul_fwd(float* out, const float* inp, const float* weight, const float* bias,
                bool trans_w, int64_t N, int64_t C, int64_t OC);
void matmul_bwd(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                const float* weight, bool trans_w, int64_t N, int64_t C, int64_t OC);

// Causal attention over qkv rows [Q (H heads) | K (Hkv heads) | V (Hkv heads)] of head
// dim D = C / H; out is (.., C). Hkv = 0 means H (GPT-2's multi-head attention); query
// head h attends with KV head h / (H / Hkv). The caches are (B or slots, Hkv, maxT, D).
void attention_fwd(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                   int64_t H, int64_t Hkv = 0);
void attention_bwd(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, int64_t B, int64_t T, int64_t C, int64_t H,
                   int64_t Hkv = 0);
void attention_decode(float* out, const float* qkv, float* kcache, float* vcache, int64_t pos,
                      int64_t B, int64_t Tn, int64_t C, int64_t H, int64_t maxT,
                      int64_t Hkv = 0);
void attention_decode_batch(float* out, const float* qkv, float* kcache, float* vcache,
                            const int32_t* slots, const int32_t* positions, int64_t B,
                            int64_t C, int64_t H, int64_t maxT, int64_t Hkv = 0);

// The llama kernels: RMSNorm, rotary embeddings on the q and k heads of (N, (H + 2*Hkv) * D)
// rows (in place; bwd rotates back), SwiGLU.
void rmsnorm_fwd(float* out, float* rstd, const float* inp, const float* weight, float eps,
                 int64_t N, int64_t C);
void rmsnorm_bwd(float* dinp, float* dweight, const float* dout, const float* inp,
                 const float* weight, const float* rstd, int64_t N, int64_t C);
void rope_fwd(float* qkv, const int32_t* positions, int64_t N, int64_t H, int64_t Hkv,
              int64_t D, double theta);
void rope_bwd(float* dqkv, const int32_t* positions, int64_t N, int64_t H, int64_t Hkv,
              int64_t D, double theta);
void swiglu_fwd(float* out, const float* gate, const float* up, int64_t n);
void swiglu_bwd(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                int64_t n);

void gelu_fwd(float* out, const float* inp, int64_t n);
void gelu_bwd(float* dinp, const float* dout, const float* inp, int64_t n);
void relu_fwd(float* out, const float* inp, int64_t n);
void relu_bwd(float* dinp, const float* dout, const float* inp, int64_t n);
void residual_fwd(float* out, const float* a, const float* b, int64_t n);
void dropout_fwd(float* out, const float* inp, double p, uint32_t seed, int64_t n);

void softmax_xent(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                  float dloss, int64_t N, int64_t V);

void sgd_update(float* params, const float* grads, float* momentum_buf, float lr,
                float momentum, float weight_decay, int64_t decay_count, int64_t n);
void adam_update(float* params, const float* grads, float* m, float* v, float lr, float beta1,
                 float beta2, float eps, float weight_decay, int64_t step, int64_t decay_count,
                 bool decoupled, int64_t n);

// Sum of squares of n floats in float64, in blocks of a fixed size summed in order, so
// the result does not depend on the thread count.
double grad_norm_sq(const float* grads, int64_t n);

// FP32 FLOP/s of FMA chains on every kernel thread, timed for at least `seconds` (peak.cpp).
double peak_gflops(double seconds);

}  // namespace sllm

namespace sllm {

// gemm's single-thread loops over a region, with a caller-owned packing buffer of
// gemm_pack_size() floats (attention runs one per (batch, head) task).
void gemm_serial(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool trans_a,
                 const float* B, int64_t ldb, bool trans_b, float* C, int64_t ldc,
                 bool accumulate, const float* bias, float* pack);
int64_t gemm_pack_size();

// One op(B) reused by many row blocks (attention's K^T and V^T, per head): gemm_pack_b
// packs op(B) (K x N, K <= Ops::kc) into panels once, gemm_packed_b_size(N, K) floats;
// gemm_rows_packed_b computes C (M x N) = A (row-major, M x K) @ the first N columns.
// Same tiles and order as gemm_serial, so the same results.
int64_t gemm_packed_b_size(int64_t N, int64_t K);
void gemm_pack_b(float* dst, const float* B, int64_t ldb, bool trans_b, int64_t N, int64_t K);
void gemm_rows_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const float* packed, float* C, int64_t ldc);

// A float weight packed once for products of a few rows (a batched decode step reads it
// on every step): op(W) (K x N) in gemm's nr-wide panels of depth K, zero-padded, which the
// register tile reads at unit stride instead of packing W on every call. source is W itself
// (K x N, or N x K when trans): M <= 4 rows (the GEMV path) read that.
struct PackedWeight {
  const float* panels;
  const float* source;
  int64_t K, N;
  bool trans;
};
int64_t packed_weight_size(int64_t K, int64_t N);  // floats of `panels`
void pack_weight(float* panels, const float* weight, bool trans_w, int64_t K, int64_t N);
// matmul_fwd(out, inp, source, bias, trans, M, K, N), reading the panels: the same results
void matmul_fwd_packed(float* out, const float* inp, const PackedWeight& w, const float* bias,
                       int64_t M);

}  // namespace sllm
