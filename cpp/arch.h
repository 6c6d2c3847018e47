// The per-SIMD-tier kernel bodies, as a table of function pointers.
//
// Each tier (scalar, avx2, avx512) compiles the same bodies (arch_body.inc) in its own
// translation unit with its own -m flags; dispatch.cpp picks one table at run time from
// the CPU's features, or from SLLM_CPP_SIMD. The drivers (gemm.cpp, attention.cpp, ...)
// hold the shape logic and the threading and call through this table.
#pragma once
#include <cstdint>

namespace sllm {

// The scalars of one Adam/AdamW step, in float32 as the numpy reference rounds them.
struct AdamStep {
  float lr, beta1, beta2, eps, weight_decay;
  float bc1, bc2;                      // 1 - beta^step
  float shrink;                        // 1 - lr * weight_decay (AdamW)
  float one_minus_b1, one_minus_b2;
  bool decoupled;
};

struct Ops {
  const char* name;  // "scalar" | "avx2" | "avx512"
  int mr, nr, kc;    // GEMM micro-tile rows, columns, and depth of one packed block

  // the register tile, c (m<=mr, n<=nr, row stride ldc) = [c +] op(A) @ B [+ bias] over
  // depth K: op(A)(i, k) = a[i * a_is + k * a_ks] (A in place: a_is = lda, a_ks = 1, or
  // transposed a_is = 1, a_ks = lda), B rows at stride ldb with nr readable columns (packed: ldb = nr)
  void (*gemm_micro)(int64_t K, const float* a, int64_t a_is, int64_t a_ks, const float* b,
                     int64_t ldb, float* c, int64_t ldc, int m, int n, bool accumulate,
                     const float* bias);
  // pack rows k0..k0+kc, columns j0..j0+n (n <= nr) of a row-major B into an nr-wide panel
  void (*pack_b_rows)(float* dst, const float* B, int64_t ldb, int64_t j0, int64_t k0,
                      int64_t kc, int n);
  // one output row over columns [j0, j1): c = [c +] a (K) @ op(B) [+ bias]
  void (*gemm_row)(float* c, const float* a, const float* B, int64_t ldb, bool trans_b,
                   int64_t K, int64_t j0, int64_t j1, bool accumulate, const float* bias);

  void (*gelu_fwd)(float* out, const float* inp, int64_t n);
  void (*gelu_bwd)(float* dinp, const float* dout, const float* inp, int64_t n);

  void (*relu_bwd)(float* dinp, const float* dout, const float* inp, int64_t n);
  // inverted dropout of elements i0..i0+n (base.dropout_keep_mask's hash of the index)
  void (*dropout_range)(float* out, const float* inp, int64_t i0, int64_t n, uint32_t seed,
                        uint32_t threshold, float keep_scale);

  // `rows` rows of C floats (their mean and rstd, one each)
  void (*layernorm_fwd_rows)(float* out, float* mean, float* rstd, const float* x,
                             const float* w, const float* b, int64_t rows, int64_t C);
  void (*layernorm_bwd_rows)(float* dinp, const float* dout, const float* x, const float* w,
                             const float* mean, const float* rstd, int64_t rows, int64_t C);
  // dweight and dbias of columns c < n <= 64 over `rows` rows at stride ld, in row order
  void (*layernorm_param_grads)(float* dw, float* db, const float* dout, const float* x,
                                const float* mean, const float* rstd, int64_t rows,
                                int64_t ld, int64_t n);

  // returns the row's loss; writes dloss * (softmax - onehot) into dl when dl != nullptr
  float (*softmax_xent_row)(float* dl, const float* logits, int64_t V, int32_t target,
                            float dloss);

  // Adam over n contiguous parameters, with weight decay when `decay`
  void (*adam_range)(float* p, const float* g, float* m, float* v, int64_t n,
                     const AdamStep& s, bool decay);

  // attention rows: see attention_rows.inc
  // decoding: `rows` <= 4 score rows of n keys (stride ld) to softmax, lse[r] when given
  void (*softmax_row)(float* s, int64_t ld, int rows, int64_t n, float scale, float* lse);
  void (*softmax_rows)(float* s, int64_t ld, int64_t rows, int64_t n0, float scale, float* lse);
  void (*attention_grad_rows)(float* p, float* dp, int64_t ld, int64_t rows, int64_t n0,
                              float scale, const float* lse, const float* dout,
                              const float* out, int64_t ldo, int64_t D);

  // sum of x[i]^2 over n floats, accumulated in float64 (grad_norm_sq)
  double (*sum_squares)(const float* x, int64_t n);
  // sum[c] += src[r * ld + c] over rows r < rows in order, for c < n <= 64
  void (*column_sums)(float* sum, const float* src, int64_t rows, int64_t ld, int64_t n);

  // the llama kernels' rows (layernorm_rows.inc, rope_rows.inc, activation_rows.inc)
  // RMSNorm of one row into out; returns its rstd = 1/sqrt(mean(x^2) + eps)
  float (*rmsnorm_fwd_row)(float* out, const float* x, const float* w, float eps, int64_t C);
  void (*rmsnorm_bwd_row)(float* dinp, const float* dout, const float* x, const float* w,
                          float rstd, int64_t C);
  // dweight of columns c < n <= 64 over `rows` rows at stride ld, in row order
  void (*rmsnorm_weight_grads)(float* dw, const float* dout, const float* x,
                               const float* rstd, int64_t rows, int64_t ld, int64_t n);
  // rotate `heads` heads of D floats by the angles with cosines cs[0..D/2), sines
  // cs[D/2..D); sign -1 rotates back
  void (*rope_row)(float* x, const float* cs, int64_t heads, int64_t D, float sign);
  void (*swiglu_fwd)(float* out, const float* gate, const float* up, int64_t n);
  void (*swiglu_bwd)(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n);

  // attention rows of decoding (attention_rows.inc): s[j] = q . K[j] (n keys of D floats
  // at stride ldk); out[g] = sum_j p[g * ldp + j] V[g][j] for `heads` heads
  void (*decode_scores)(float* s, const float* q, const float* K, int64_t ldk, int64_t D,
                        int64_t n);
  void (*decode_values)(float* const* out, const float* p, int64_t ldp, const float* const* V,
                        int64_t ldv, int64_t D, int64_t n, int heads);
  // c (M rows at stride ldc), columns [j0, j1) = [c +] A (M x K) @ B^T [+ bias], B's rows
  // (stride ldb) read in place: a few rows' GEMM against a transposed weight
  void (*gemm_dots)(float* c, int64_t ldc, const float* A, int64_t lda, const float* B,
                    int64_t ldb, int64_t M, int64_t K, int64_t j0, int64_t j1, bool accumulate,
                    const float* bias);
  // gemm_micro with tall_mr rows (same columns, same order of operations per element):
  // few rows of A read in place take whichever height wastes fewer rows
  int tall_mr;
  void (*gemm_micro_tall)(int64_t K, const float* a, int64_t a_is, int64_t a_ks,
                          const float* b, int64_t ldb, float* c, int64_t ldc, int m, int n,
                          bool accumulate, const float* bias);
  // c (M rows at stride ldc), the columns of packed panels [p0, p1) of an N-column weight
  // (pack_weight's nr-wide panels of depth K) = A (M x K) @ W [+ bias], in gemm_row's order
  void (*gemv_panels)(float* c, int64_t ldc, const float* A, int64_t lda, const float* panels,
                      int64_t M, int64_t K, int64_t N, int64_t p0, int64_t p1,
                      const float* bias);
};

extern const Ops ops_scalar;
#if SLLM_X86
extern const Ops ops_avx2;
extern const Ops ops_avx512;
#endif

const Ops& ops();                // the selected tier
const char* simd_error();       // why the forced tier cannot run here, or "" when fine

}  // namespace sllm
