// decode_block and decode_block_batch (GPT-2), llama_decode_block and llama_decode_block_batch:
// one transformer block over the new rows of a KV-cache decode step, in one call (the
// optional kernels of sllm/backends/base.py). Same layer kernels, same order, as
// SLLM._forward makes one by one, so the result is bit-identical to the unfused sequence.
#pragma once
#include <cstdint>

namespace sllm {

// The block's tensors. The four matmul weights are float (C_in, C_out) when qtype < 0, or
// PackedWeights (kernels.h) when packed, else (C_out, bytes) rows of ggml blocks of that
// QType, or those rows packed (quant.h); biases may be null.
struct BlockWeights {
  const float *ln1_w, *ln1_b;
  const void* attn_w;
  const float* attn_b;
  const void* proj_w;
  const float* proj_b;
  const float *ln2_w, *ln2_b;
  const void* fc_w;
  const float* fc_b;
  const void* fcproj_w;
  const float* fcproj_b;
  bool packed;  // packed: PackedWeights (float), or quantized rows for the tier (pack_q)
};

// Floats of decode_block's workspace for N = B*Tn rows: N * (8C + 2F + 2).
inline int64_t decode_block_workspace(int64_t N, int64_t C, int64_t F) {
  return N * (8 * C + 2 * F + 2);
}

// Where a step's rows sit in the KV cache: B sequences at positions pos..pos+Tn-1 of
// caches (B,H,maxT,C/H) (decode_block), or, with slots given, a continuous-batching step
// (decode_block_batch): Tn = 1, row b at slot slots[b], position positions[b] of caches
// (S,H,maxT,C/H).
struct DecodeRows {
  int64_t pos;
  const int32_t* slots;
  const int32_t* positions;
};

// out (B,Tn,C) = block(x (B,Tn,C)) at `rows` (out may alias x); the new keys and values go
// to kcache, vcache; work holds the intermediates.
void decode_block(float* out, const float* x, float* kcache, float* vcache, float* work,
                  const BlockWeights& w, int qtype, bool gelu, const DecodeRows& rows,
                  int64_t B, int64_t Tn, int64_t C, int64_t F, int64_t H, int64_t maxT);

// A llama block's tensors: the RMSNorm weights (C) and five matmul weights, each float
// (C_in, C_out), PackedWeights, or quantized rows (packed or not) as in BlockWeights.
struct LlamaBlockWeights {
  const float* ln1_w;
  const void *qkv_w, *o_w;
  const float* ln2_w;
  const void *gate_w, *up_w, *down_w;
  bool packed;
};

// Floats of llama_decode_block's workspace for N rows: N * (8C + 3F + 2), as
// sllm.backends.reference.llama_decode_block_workspace (and wasm/decode.c) count it.
inline int64_t llama_decode_block_workspace(int64_t N, int64_t C, int64_t F) {
  return N * (8 * C + 3 * F + 2);
}

// out (B,Tn,C) = llama block(x) at `rows` (out may alias x): sllm/llama.py's sequence of
// kernels, H query heads and Hkv key/value heads of D = C / H. A decode step's rows are
// rotated at pos + t (written to the workspace's positions), a batch step's at
// rows.positions.
void llama_decode_block(float* out, const float* x, float* kcache, float* vcache, float* work,
                        const LlamaBlockWeights& w, int qtype, const DecodeRows& rows,
                        int64_t B, int64_t Tn, int64_t C, int64_t F, int64_t H, int64_t Hkv,
                        double theta, float eps, int64_t maxT);

}  // namespace sllm
