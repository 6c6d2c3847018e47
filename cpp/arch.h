// The per-SIMD-tier kernel bodies, as a table of function pointers.
//
// Each tier (scalar, avx2, avx512) compiles the same bodies (arch_body.inc) in its own
// translation unit with its own -m flags; dispatch.cpp picks one table at run time from
// the CPU's features, or from SLLM_CPP_SIMD. The drivers (gemm.cpp, attention.cpp, ...)
// hold the shape logic and the threading and call through this table.
#pragma once
#include <cstdint>

namespace sllm {

struct Ops {
  const char* name;  // "scalar" | "avx2" | "avx512"
  int mr, nr, kc;    // GEMM micro-tile rows, columns, and depth of one packed block

  // c (m<=mr, n<=nr, row stride ldc) = [c +] a_panel (mr x kc) @ b_panel (kc x nr) [+ bias]
  void (*gemm_micro)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                     int m, int n, bool accumulate, const float* bias);
  // one output row over columns [j0, j1): c = [c +] a (K) @ op(B) [+ bias]
  void (*gemm_row)(float* c, const float* a, const float* B, int64_t ldb, bool trans_b,
                   int64_t K, int64_t j0, int64_t j1, bool accumulate, const float* bias);

  void (*gelu_fwd)(float* out, const float* inp, int64_t n);
  void (*gelu_bwd)(float* dinp, const float* dout, const float* inp, int64_t n);

  void (*layernorm_fwd_row)(float* out, float* mean, float* rstd, const float* x,
                            const float* w, const float* b, int64_t C);
  void (*layernorm_bwd_row)(float* dinp, const float* dout, const float* x, const float* w,
                            float mean, float rstd, int64_t C);

  // returns the row's loss; writes dloss * (softmax - onehot) into dl when dl != nullptr
  float (*softmax_xent_row)(float* dl, const float* logits, int64_t V, int32_t target,
                            float dloss);

  // causal attention of nq query rows at positions q_pos0.. over keys 0..q_pos0+nq-1;
  // writes lse (logsumexp per row) when lse != nullptr. scratch: attention_scratch floats.
  void (*attention_rows)(float* out, int64_t ld_out, float* lse, const float* q, int64_t ld_q,
                         const float* k, int64_t ld_k, const float* v, int64_t ld_v,
                         int64_t nq, int64_t q_pos0, int64_t D, float* scratch);
  // gradient of one head: dq, dk, dv (T x D rows at stride ld_d) are overwritten.
  void (*attention_bwd_rows)(float* dq, float* dk, float* dv, int64_t ld_d, const float* dout,
                             const float* out, int64_t ld_o, const float* q, const float* k,
                             const float* v, int64_t ld_qkv, const float* lse, int64_t T,
                             int64_t D, float* scratch);
};

// Floats of scratch one thread needs for attention over nk keys of width D.
inline int64_t attention_scratch(int64_t nk, int64_t D) { return 2 * D * nk + 2 * nk + 64; }

extern const Ops ops_scalar;
#if SLLM_X86
extern const Ops ops_avx2;
extern const Ops ops_avx512;
#endif

const Ops& ops();                // the selected tier
const char* simd_error();       // why the forced tier cannot run here, or "" when fine
bool select_simd(const char* name);  // pick a tier by name; false if unknown/unsupported

}  // namespace sllm
