// Quantized matmul (ggml's q8_0 / q4_0 / q4_1 weights x q8_0 activations) and the
// streaming-read bandwidth probe. Block layouts: sllm/quant.py and docs/binary-format.md.
//
// Tiers, as the float kernels (arch.h): a scalar body, an AVX2 body and an AVX-512 VNNI
// body (quant_x86.inc compiled twice); quant.cpp picks one at run time and drives it.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace sllm {

constexpr int64_t QK = 32;  // values per block
enum QType : int { Q8_0 = 0, Q4_0 = 1, Q4_1 = 2 };
constexpr int64_t kBlockBytes[3] = {34, 18, 20};  // sizeof block_q8_0, block_q4_0, block_q4_1

// One activation row quantized to q8_0: nb blocks of 32 int8 codes, the float16-rounded
// scale d of each block, and s = d * sum(codes) (what q4_1's minimum multiplies).
struct QRow {
  const int8_t* q;
  const float* d;
  const float* s;
};

// dot of one quantized weight row (nb blocks of kBlockBytes[type] bytes) with a q8_0 row:
// sum over blocks of int32 sum(q_w * q_x) * (d_w * d_x) [+ m_w * s_x for q4_1].
typedef float (*QDot)(const uint8_t* w, const QRow& x, int64_t nb);

struct QuantOps {
  const char* name;  // "scalar" | "avx2" | "avx512vnni"
  QDot dot[3];       // by QType
};

extern const QuantOps qops_scalar;
#if SLLM_X86
extern const QuantOps qops_avx2;
extern const QuantOps qops_avx512vnni;
#endif
const QuantOps& qops();  // the tier in use

// out (N, OC) = q8_0(inp (N, K)) . W^T + bias; wq holds OC rows of ceil(K/32) blocks.
void matmul_q_fwd(float* out, const float* inp, const uint8_t* wq, const float* bias,
                  int qtype, int64_t N, int64_t K, int64_t OC);

// GB/s of a streaming read of `bytes` bytes by every kernel thread, timed for >= seconds.
double stream_read_gbps(double seconds, int64_t bytes);

// ---- float16 <-> float32 (round to nearest even), exactly numpy's astype(float16) -------
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    int e = -1;
    do { man <<= 1; ++e; } while (!(man & 0x400));
    bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) return sign | 0x7C00 | (ax > 0x7F800000u ? 0x200 : 0);  // inf/nan
  if (ax >= 0x477FF000u) return sign | 0x7C00;  // rounds past 65504: inf
  if (ax < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (ax < 0x33000000u) return sign;  // below half the smallest subnormal
    const uint32_t e = ax >> 23, m = (ax & 0x7FFFFF) | 0x800000;
    const uint32_t drop = 126 - e;  // value = m * 2^(e - 150) = (m >> drop) * 2^-24
    uint32_t r = m >> drop;
    const uint32_t rem = m & ((1u << drop) - 1), halfway = 1u << (drop - 1);
    if (rem > halfway || (rem == halfway && (r & 1))) ++r;
    return sign | (uint16_t)r;
  }
  uint32_t r = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
  return sign | (uint16_t)r;
}

}  // namespace sllm
