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
// scale d of each block, s = d * sum(codes) (what q4_1's minimum multiplies) and the
// integer sum(codes) itself (what the packed kernels subtract for q4_0's and q8_0's offset).
struct QRow {
  const int8_t* q;
  const float* d;
  const float* s;
  const int32_t* sum;
};

// dot of one quantized weight row (nb blocks of kBlockBytes[type] bytes) with a q8_0 row:
// sum over blocks of int32 sum(q_w * q_x) * (d_w * d_x) [+ m_w * s_x for q4_1].
typedef float (*QDot)(const uint8_t* w, const QRow& x, int64_t nb);

// Packed weights (pack_q): the same blocks with R rows interleaved, made once at load for
// the tier's vector width. Group g holds rows g*R .. g*R+R-1 (zero rows pad the last):
// first every block's head (R float16 scales d, then for q4_1 R float16 minima m), then
// every block's codes as chunks of R x 4 bytes: chunk c holds bytes 4c..4c+3 of each row's
// codes (q8_0: 8 chunks; the 4-bit types: 4 chunks of ggml's nibble bytes, so a low nibble
// is element 4c+i and the high one 16+4c+i). One vector load is then 4 codes of every row,
// against one broadcast of 4 activation codes: no per-block shuffles or horizontal sums,
// and with nb even the code chunks are 64-byte aligned. With `offset`, q8_0 codes are
// stored + 128 as unsigned bytes (VNNI wants one unsigned operand; the kernel subtracts
// 128 * sum(x codes)).
// Group kernel: y[m * ystride + 0..R) = the R rows' dot products with activation row m of
// the panel x, m < rows <= the tier's group_rows (each weight vector loaded once for all
// of them), plus bias[0..R) (0.0f when null), in the scalar tier's order (per block,
// (float)isum * (d_w * d_x) [+ m_w * s_x] added in sequence, then the bias), so packed
// results equal the scalar tier's (and its driver's bias add) bit for bit.
// QPanel: `rows` quantized activation rows interleaved for the group kernels (the driver
// makes it once per call from the QRows): codes as q[((b * 8 + k) * rows + m) * 4 + j] =
// code 4k + j of block b of row m, so every row's 4 codes of one step are at fixed offsets
// from one pointer; d, s and nsum as [b * rows + m], nsum being the integer correction
// -offset * sum(codes) (q4_0's 8, the packed q8_0's 128, else 0), the block sums' start.
struct QPanel {
  const int8_t* q;
  const float* d;
  const float* s;
  const int32_t* nsum;
};
constexpr int kGroupRows = 8;  // the most rows any tier's group kernel takes per call
typedef void (*QGroup)(float* y, int64_t ystride, const uint8_t* group, const QPanel& x,
                       int rows, int64_t nb, const float* bias);
// The panel of activation rows xs[0 .. rows) in q (rows * nb * 32 codes) and d, s, nsum
// (rows * nb each), offset being the correction's multiplier.
typedef QPanel (*QPanelMake)(const QRow* xs, int rows, int64_t nb, int32_t offset, int8_t* q,
                             float* d, float* s, int32_t* nsum);

// One activation row to q8_0 (zero-padded to nb blocks) with its block sums: ggml's
// quantize_row_q8_0_ref, exactly (sllm.quant.quantize_q8_0_activations), on every tier.
typedef void (*QRowQuantize)(const float* x, int64_t K, int8_t* q, float* d, float* s,
                             int32_t* sum);

// One block of an activation row (n <= 32 values, zero-padded): the scalar steps, which
// every tier takes for a block it does not vectorize.
void quantize_block_q8_0(const float* x, int64_t n, int8_t* q, float* d, float* s,
                         int32_t* sum);

// Multi-group kernel (one activation row, a decode step's GEMV): y[0..G*R) = the dot
// products of G consecutive packed groups (the first at g, the next at g + gbytes, ...) with
// a one-row panel, plus bias[0..G*R) (0.0f when null): the group kernel's results for each,
// bit for bit, in one pass that loads each activation broadcast once for the G groups.
typedef void (*QGroupRow)(float* y, const uint8_t* g, int64_t gbytes, const QPanel& x,
                          int64_t nb, const float* bias);

struct QuantOps {
  const char* name;  // "scalar" | "avx2" | "avx512vnni"
  QRowQuantize quantize;
  QDot dot[3];       // by QType
  int rows;          // R of the packed layout; 0: the tier reads ggml's rows only
  bool offset;       // q8_0 codes packed + 128 (unsigned)
  QGroup group[3];   // by QType; null when rows == 0
  int group_rows;    // the most activation rows a group call takes (<= kGroupRows)
  QPanelMake panel;  // null when rows == 0
  QGroupRow pair[3];  // by QType: G = 2; null where it does not pay (one group at a time)
  QGroupRow quad[3];  // by QType: G = 4; as pair
};

extern const QuantOps qops_scalar;
#if SLLM_X86
extern const QuantOps qops_avx2;
extern const QuantOps qops_avx512vnni;
#endif
const QuantOps& qops();  // the tier in use

// Bytes of one packed group of R rows of nb blocks.
inline int64_t qgroup_bytes(int qtype, int64_t nb, int R) { return nb * kBlockBytes[qtype] * R; }

// dst (ceil(OC/R) groups) = src (OC ggml rows of nb blocks) in the tier's packed layout.
void pack_q(uint8_t* dst, const uint8_t* src, int qtype, int64_t OC, int64_t nb);

// out (N, OC) = q8_0(inp (N, K)) . W^T + bias; wq holds OC rows of ceil(K/32) blocks,
// as ggml's rows or (packed) as pack_q made them.
void matmul_q_fwd(float* out, const float* inp, const uint8_t* wq, const float* bias,
                  int qtype, int64_t N, int64_t K, int64_t OC, bool packed = false);

// Block b of ggml row `row`, read back from packed groups (pack_q's inverse) into `block`
// (kBlockBytes[qtype] bytes); returns block.
const uint8_t* unpack_block(uint8_t* block, const uint8_t* packed, int qtype, int64_t nb,
                            int64_t row, int64_t b);

// Floats of W that matmul_q_bwd dequantizes at once (4 MiB, sllm.quant.DEQUANT_CHUNK_FLOATS).
constexpr int64_t kDequantChunkFloats = int64_t(1) << 20;

// dinp (N, K) = dout (N, OC) @ W, overwritten, for W (OC, K) the dequantized rows of wq
// (ggml's rows or, packed, as pack_q made them): matmul_q_fwd's backward to its input.
void matmul_q_bwd(float* dinp, const float* dout, const uint8_t* wq, int qtype, int64_t N,
                  int64_t K, int64_t OC, bool packed = false);

// dst (OC rows of nb blocks) = ggml's rows of a packed weight (pack_q's inverse): what a
// model saves or exports, re-derived once it keeps only the packed copy.
void unpack_q(uint8_t* dst, const uint8_t* packed, int qtype, int64_t OC, int64_t nb);

// out (n, C) = rows tokens[0..n) of wq (ggml's rows of C values or, packed, as pack_q
// made them), dequantized: the token embedding of a quantized model (ggml's get_rows).
void embed_q_fwd(float* out, const int32_t* tokens, int64_t n, const uint8_t* wq, int qtype,
                 int64_t C, bool packed = false);

// out (n, C) = embed_q_fwd's rows + wpe[pos + i % T]: a quantized model's token and
// position embedding (encoder_fwd with a quantized wte), the same sums as the two apart.
void encoder_q_fwd(float* out, const int32_t* tokens, int64_t n, int64_t T, const uint8_t* wq,
                   int qtype, const float* wpe, int64_t pos, int64_t C, bool packed = false);

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
