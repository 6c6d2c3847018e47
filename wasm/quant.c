/* The quantized matmul: ggml's q8_0 / q4_0 / q4_1 weight rows times activations
 * quantized on the fly to q8_0 (sllm/quant.py; the numpy reference is
 * sllm.backends.reference.matmul_q_fwd, the C++ twin cpp/quant*.cpp).
 *
 * Every kernel's qtype is 0 q8_0, 1 q4_0, 2 q4_1, plus PACKED (4) when wq is in the layout
 * pack_q makes; without it wq is ggml's rows (OC, row bytes), as the files hold them.
 *
 * export matmul_q_fwd, ARGS: 0 out (N,OC) f32, 1 inp (N,K) f32, 2 wq u8, 3 bias (OC) f32
 * or 0, 4 N, 5 K, 6 OC, 7 qtype, 8 scratch of at least N*nb*8 + 2*N*nb floats
 * (nb = ceil(K/32)): the q8_0 codes, scales and block sums.
 *
 * export embed_q_fwd, ARGS: 0 out (n,C) f32, 1 tokens (n) int32 (checked by the host),
 * 2 wq u8 (V rows), 3 n, 4 C, 5 qtype: out[i] = row tokens[i] of wq, dequantized
 * (sllm.quant.dequantize; ggml's get_rows).
 *
 * export encoder_q_fwd, ARGS: 0 out (n,C) f32, 1 tokens (n) int32 (checked by the host),
 * 2 wq u8 (V rows), 3 wpe (maxT,C) f32, 4 n, 5 T, 6 C, 7 pos, 8 qtype: embed_q_fwd's rows,
 * then + wpe[pos + i % T] (encoder_fwd with a quantized wte).
 *
 * export matmul_q_bwd, ARGS: 0 dinp (N,K) f32, 1 dout (N,OC) f32, 2 wq u8, 3 N, 4 K, 5 OC,
 * 6 qtype, 7 scratch of at least OC*cols floats, 8 cols (a multiple of 32): dinp = dout @ W,
 * W's columns dequantized cols at a time into the scratch, each slice multiplied by the
 * float GEMM (gemm.c).
 *
 * export pack_q, ARGS: 0 dst (packed_bytes) u8, 1 src (OC, row bytes) u8 ggml's rows, 2 OC,
 * 3 K, 4 qtype (without PACKED). export unpack_q, the same arguments the other way round
 * (0 dst ggml's rows, 1 src packed): ggml's bytes back exactly, NaN payloads included.
 *
 * The packed layout: rows in groups of four (a last group's spare rows zero), a group's
 * blocks one after another, each block the four rows' scales d as float32 (16 bytes),
 * q4_1's offsets m likewise, then row 0's codes, row 1's, row 2's, row 3's (ggml's bytes:
 * 32 int8, or 16 bytes of nibbles). A block of four rows is then one vector of scales,
 * converted once at load rather than looked up per block and row, and four code vectors,
 * 16-byte aligned when the group is (the host allocates 64-byte aligned).
 *
 * Dot products: four weight rows at a time (dot_rows4), so the activation block is loaded
 * once for four and the block scales multiply as one vector. SIMD128 widens int8 products
 * to int16 (extmul) and sums pairs to int32; relaxed SIMD uses
 * i32x4.relaxed_dot_i8x16_i7x16_add: q4 nibbles (0..15) are its 7-bit operand as they are
 * (q4_0's -8 comes off the block's integer sum), q8_0 passes |x| with w carrying x's sign
 * (ggml's sign trick, turned round so |x| is shared by the rows); the compat module widens
 * x to int16 once per block for the four rows and each row's codes once (q4 bytes widened
 * before the nibbles split), then i32x4.dot_i16x8_s; the MVP module runs the scalar loops.
 */
#include "abi.h"

#define QK 32
#define PACKED 4
static const int BLOCK_BYTES[3] = {34, 18, 20};

/* Bytes before a ggml block's codes (d, and q4_1's m) and of its codes. */
static inline size_t head_bytes(int qtype) { return qtype == 2 ? 4 : 2; }
static inline size_t code_bytes(int qtype) { return qtype == 0 ? QK : QK / 2; }
/* Bytes of one block of a packed group: float32 scales (and offsets) of four rows, codes. */
static inline size_t packed_block_bytes(int qtype) {
    return (qtype == 2 ? 32 : 16) + 4 * code_bytes(qtype);
}

/* ---- float16 <-> float32, round to nearest even (numpy's astype(float16)) ---------------- */
static float bits_to_float(uint32_t b) { union { uint32_t u; float f; } v = {b}; return v.f; }
static uint32_t float_to_bits(float f) { union { float f; uint32_t u; } v = {f}; return v.u; }

static float half_to_float(uint32_t h) {
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (man << 13));
    if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
    if (man == 0) return bits_to_float(sign);
    int e = -1;
    do { man <<= 1; ++e; } while (!(man & 0x400));
    return bits_to_float(sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13));
}

static uint32_t float_to_half(float f) {
    uint32_t x = float_to_bits(f), sign = (x >> 16) & 0x8000, ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return sign | 0x7C00 | (ax > 0x7F800000u ? 0x200 : 0);
    if (ax >= 0x477FF000u) return sign | 0x7C00;
    if (ax < 0x38800000u) {
        if (ax < 0x33000000u) return sign;
        uint32_t e = ax >> 23, m = (ax & 0x7FFFFF) | 0x800000, drop = 126 - e;
        uint32_t r = m >> drop, rem = m & ((1u << drop) - 1), halfway = 1u << (drop - 1);
        if (rem > halfway || (rem == halfway && (r & 1))) ++r;
        return sign | r;
    }
    uint32_t r = (ax >> 13) - (112u << 10), rem = ax & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
    return sign | r;
}

/* float16 -> float32 by table (ggml's table_f32_f16): the per-block scale conversion is
 * otherwise the costliest part of a block's dot product here. Filled on first use. */
static float HALF_TABLE[65536];
static int half_table_ready;

static void fill_half_table(void) {
    for (uint32_t h = 0; h < 65536; h++) HALF_TABLE[h] = half_to_float(h);
    half_table_ready = 1;
}

/* One unaligned 16-bit load (memcpy): two byte loads and an or cost 1-11% of a GEMV. */
static inline float load_half(const uint8_t *p) {
    uint16_t h;
    __builtin_memcpy(&h, p, 2);
    return HALF_TABLE[h];
}

/* One block of one row: its codes (ggml's bytes), scale d and q4_1's offset m (else 0). */
typedef struct {
    const uint8_t *codes;
    float d, m;
} qblock;

/* The block at w: ggml's bytes of one block, or (packed) row r's of a block of four rows. */
static inline qblock block_here(const uint8_t *w, int qtype, int packed, int r) {
    qblock q;
    if (packed) {
        const float *scales = (const float *)w;
        q.d = scales[r], q.m = qtype == 2 ? scales[4 + r] : 0.0f;
        q.codes = w + (qtype == 2 ? 32 : 16) + r * code_bytes(qtype);
    } else {
        q.d = load_half(w), q.m = qtype == 2 ? load_half(w + 2) : 0.0f;
        q.codes = w + head_bytes(qtype);
    }
    return q;
}

/* Bytes from one block of a row to its next, and where row o's first block lies. */
static inline size_t block_stride(int qtype, int packed) {
    return packed ? packed_block_bytes(qtype) : (size_t)BLOCK_BYTES[qtype];
}
static inline const uint8_t *row_start(const uint8_t *wq, int qtype, int packed, int nb, size_t o) {
    return wq + (packed ? o / 4 : o) * nb * block_stride(qtype, packed);
}

/* Block b of row o of wq. */
static inline qblock block_at(const uint8_t *wq, int qtype, int packed, int nb, size_t o, int b) {
    return block_here(row_start(wq, qtype, packed, nb, o) + b * block_stride(qtype, packed), qtype, packed,
                      (int)(o % 4));
}

/* C's roundf: half away from zero (wasm's f32.nearest rounds half to even). */
static float round_away(float v) {
    float a = __builtin_fabsf(v), t = __builtin_truncf(a);
    float r = t + (a - t >= 0.5f ? 1.0f : 0.0f);
    return v < 0 ? -r : r;
}

/* ggml's quantize_row_q8_0_ref for one row, zero-padded to nb blocks, plus block sums:
 * sum * d (q4_1's offset term), or with int_sums the integer sum itself (q4_0's -8 offset,
 * applied once per block to the integer dot; exact in a float: |sum| <= 32 * 127). */
#ifdef __wasm_simd128__
/* A whole block as quantize_row_q8_0's scalar loop does it, eight lanes of four: the same
 * amax (a > amax keeps amax for NaN), v = x * id, round half away from zero by truncating
 * |v| (|v| <= 127 here; anything else is non-finite and masked to 0), the code sum. Sixteen
 * codes at a time: with all eight code vectors live at once, wasmer 1.1 (Cranelift) gave
 * a wrong third vector of each sixteen (lanes 8-11, its register spilled and reloaded
 * wrongly, it seems); four live vectors compile right there. */
static void quantize_block_simd(const float *x, int8_t *q, float *d, float *s, int int_sums) {
    v128_t amax = wasm_f32x4_splat(0.0f);
    for (int j = 0; j < QK; j += 4) {
        v128_t a = wasm_f32x4_abs(wasm_v128_load(x + j));
        amax = wasm_v128_bitselect(a, amax, wasm_f32x4_gt(a, amax));
    }
    float lanes[4], m = 0.0f;
    wasm_v128_store(lanes, amax);
    for (int r = 0; r < 4; r++) m = lanes[r] > m ? lanes[r] : m;
    float db = m / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
    v128_t idv = wasm_f32x4_splat(id), half = wasm_f32x4_splat(0.5f), one = wasm_f32x4_splat(1.0f);
    v128_t sign = wasm_i32x4_splat((int32_t)0x80000000u), zero = wasm_f32x4_splat(0.0f), sum = wasm_i32x4_splat(0);
    for (int h = 0; h < 2; h++) { /* 16 codes at a time (see above) */
        v128_t c[4];
        for (int k = 0; k < 4; k++) {
            v128_t v = wasm_f32x4_mul(wasm_v128_load(x + 16 * h + 4 * k), idv), a = wasm_f32x4_abs(v);
            v128_t t = wasm_f32x4_convert_i32x4(wasm_i32x4_trunc_sat_f32x4(a));
            v128_t r = wasm_f32x4_add(t, wasm_v128_and(wasm_f32x4_ge(wasm_f32x4_sub(a, t), half), one));
            r = wasm_v128_or(r, wasm_v128_and(v, sign));
            r = wasm_v128_and(r, wasm_f32x4_eq(wasm_f32x4_sub(v, v), zero));
            c[k] = wasm_i32x4_trunc_sat_f32x4(r);
            sum = wasm_i32x4_add(sum, c[k]);
        }
        v128_t lo = wasm_i16x8_narrow_i32x4(c[0], c[1]), hi = wasm_i16x8_narrow_i32x4(c[2], c[3]);
        wasm_v128_store(q + 16 * h, wasm_i8x16_narrow_i16x8(lo, hi));
    }
    int total = (int)(wasm_i32x4_extract_lane(sum, 0) + wasm_i32x4_extract_lane(sum, 1) +
                      wasm_i32x4_extract_lane(sum, 2) + wasm_i32x4_extract_lane(sum, 3));
    *d = half_to_float(float_to_half(db));
    *s = int_sums ? (float)total : (float)total * *d;
}
#endif

static void quantize_row_q8_0(const float *x, int K, int8_t *q, float *d, float *s, int int_sums) {
    int nb = (K + QK - 1) / QK;
    for (int b = 0; b < nb; b++) {
        int j0 = b * QK, n = K - j0 < QK ? K - j0 : QK;
#ifdef __wasm_simd128__
        if (n == QK) {
            quantize_block_simd(x + j0, q + j0, d + b, s + b, int_sums);
            continue;
        }
#endif
        float amax = 0.0f;
        for (int j = 0; j < n; j++) {
            float a = __builtin_fabsf(x[j0 + j]);
            amax = a > amax ? a : amax;
        }
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            float v = j < n ? x[j0 + j] * id : 0.0f;
            int c = (v - v == 0.0f) ? (int)round_away(v) : 0; /* non-finite: 0, as ggml on x86 */
            q[j0 + j] = (int8_t)c;
            sum += c;
        }
        d[b] = half_to_float(float_to_half(db));
        s[b] = int_sums ? (float)sum : (float)sum * d[b];
    }
}

#ifdef __wasm_simd128__
#define SIMD_INT_SUMS 1 /* the SIMD q4_0 dot takes its nibbles unsigned (dot_rows4) */
#else
#define SIMD_INT_SUMS 0
#endif

typedef struct {
    const int8_t *q;
    const float *d, *s;
} qrow;

#ifdef __wasm_simd128__
/* A block of activation codes as every row's dot product reads it: loaded (and prepared)
 * once for four weight rows. */
typedef struct {
    v128_t x0, x1; /* the block's 32 codes */
#ifdef __wasm_relaxed_simd__
    v128_t a0, a1, n0, n1; /* |x| and x < 0 */
#elif defined(SLLM_WASM_COMPAT)
    v128_t w[4]; /* the codes widened to int16, once for the four rows */
#endif
} xblock;

static inline xblock load_xblock(const int8_t *x) {
    xblock v;
    v.x0 = wasm_v128_load(x), v.x1 = wasm_v128_load(x + 16);
#ifdef __wasm_relaxed_simd__
    v.a0 = wasm_i8x16_abs(v.x0), v.a1 = wasm_i8x16_abs(v.x1);
    v.n0 = wasm_i8x16_lt(v.x0, wasm_i8x16_splat(0)), v.n1 = wasm_i8x16_lt(v.x1, wasm_i8x16_splat(0));
#elif defined(SLLM_WASM_COMPAT)
    v.w[0] = wasm_i16x8_extend_low_i8x16(v.x0), v.w[1] = wasm_i16x8_extend_high_i8x16(v.x0);
    v.w[2] = wasm_i16x8_extend_low_i8x16(v.x1), v.w[3] = wasm_i16x8_extend_high_i8x16(v.x1);
#endif
    return v;
}

#ifndef SLLM_WASM_COMPAT
/* i32x4 partial sums of w0 . x0 + w1 . x1 (int8 weights, |w| <= 127; or q4 nibbles
 * 0..15, which relaxed SIMD takes as its 7-bit operand as they are). */
static inline v128_t dot32(v128_t w0, v128_t w1, const xblock *x, int nibbles) {
#ifdef __wasm_relaxed_simd__
    if (!nibbles) {
        /* the sign trick the other way round: |x| (shared by four rows) is the 7-bit
         * operand and w carries x's sign (|w| <= 127: no overflow) */
        w0 = wasm_i8x16_sub(wasm_v128_xor(w0, x->n0), x->n0);
        w1 = wasm_i8x16_sub(wasm_v128_xor(w1, x->n1), x->n1);
        return wasm_i32x4_relaxed_dot_i8x16_i7x16_add(w1, x->a1,
                                                      wasm_i32x4_relaxed_dot_i8x16_i7x16_add(w0, x->a0, wasm_i32x4_splat(0)));
    }
    return wasm_i32x4_relaxed_dot_i8x16_i7x16_add(x->x1, w1,
                                                  wasm_i32x4_relaxed_dot_i8x16_i7x16_add(x->x0, w0, wasm_i32x4_splat(0)));
#else
    /* extmul to int16; int8 products add in pairs before widening (2 * 127 * 128 fits),
     * nibble products in fours (4 * 15 * 128 fits) */
    v128_t p0 = wasm_i16x8_add(wasm_i16x8_extmul_low_i8x16(w0, x->x0), wasm_i16x8_extmul_high_i8x16(w0, x->x0));
    v128_t p1 = wasm_i16x8_add(wasm_i16x8_extmul_low_i8x16(w1, x->x1), wasm_i16x8_extmul_high_i8x16(w1, x->x1));
    if (nibbles) return wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_add(p0, p1));
    return wasm_i32x4_add(wasm_i32x4_extadd_pairwise_i16x8(p0), wasm_i32x4_extadd_pairwise_i16x8(p1));
#endif
}
#endif

#ifdef SLLM_WASM_COMPAT
/* wasmer 1.x (Cranelift) lacks extmul and extadd_pairwise: int16 weights (codes 0..31 as
 * four vectors of eight) against x widened once per block, i32x4.dot_i16x8_s summing the
 * products in pairs (an intrinsic, so the compiler cannot fold it back into extmul) */
static inline v128_t dot_widened(v128_t w0, v128_t w1, v128_t w2, v128_t w3, const xblock *x) {
    return wasm_i32x4_add(wasm_i32x4_add(wasm_i32x4_dot_i16x8(w0, x->w[0]), wasm_i32x4_dot_i16x8(w1, x->w[1])),
                          wasm_i32x4_add(wasm_i32x4_dot_i16x8(w2, x->w[2]), wasm_i32x4_dot_i16x8(w3, x->w[3])));
}
#endif

/* Lane r: the sum of v_r's four lanes. */
static inline v128_t reduce4(v128_t v0, v128_t v1, v128_t v2, v128_t v3) {
    v128_t a = wasm_i32x4_add(wasm_i32x4_shuffle(v0, v1, 0, 1, 4, 5), wasm_i32x4_shuffle(v0, v1, 2, 3, 6, 7));
    v128_t b = wasm_i32x4_add(wasm_i32x4_shuffle(v2, v3, 0, 1, 4, 5), wasm_i32x4_shuffle(v2, v3, 2, 3, 6, 7));
    return wasm_i32x4_add(wasm_i32x4_shuffle(a, b, 0, 2, 4, 6), wasm_i32x4_shuffle(a, b, 1, 3, 5, 7));
}

/* One block of one row (its codes): its int32 partial sums against the activation block. q4_0's
 * nibbles stay unsigned here: the caller subtracts 8 * sum(x) once for four rows. */
static inline v128_t block_isum(const uint8_t *codes, const xblock *x, int qtype) {
#ifdef SLLM_WASM_COMPAT
    if (qtype == 0) {
        v128_t w0 = wasm_v128_load(codes), w1 = wasm_v128_load(codes + 16);
        return dot_widened(wasm_i16x8_extend_low_i8x16(w0), wasm_i16x8_extend_high_i8x16(w0),
                           wasm_i16x8_extend_low_i8x16(w1), wasm_i16x8_extend_high_i8x16(w1), x);
    }
    /* byte j holds codes j (low nibble) and j + 16 (high): widen the bytes, then split */
    v128_t packed = wasm_v128_load(codes), m = wasm_i16x8_splat(0x0F);
    v128_t lo = wasm_u16x8_extend_low_u8x16(packed), hi = wasm_u16x8_extend_high_u8x16(packed);
    return dot_widened(wasm_v128_and(lo, m), wasm_v128_and(hi, m), wasm_u16x8_shr(lo, 4), wasm_u16x8_shr(hi, 4), x);
#else
    if (qtype == 0) return dot32(wasm_v128_load(codes), wasm_v128_load(codes + 16), x, 0);
    v128_t packed = wasm_v128_load(codes);
    return dot32(wasm_v128_and(packed, wasm_i8x16_splat(0x0F)), wasm_u8x16_shr(packed, 4), x, 1);
#endif
}

static inline v128_t halves4(const uint8_t *const *w, size_t at) {
    return wasm_f32x4_make(load_half(w[0] + at), load_half(w[1] + at), load_half(w[2] + at), load_half(w[3] + at));
}

#ifdef SLLM_WASM_COMPAT
/* q4_1's d and m of four rows: one 32-bit load a row for both halves (wasmer: 0.98x the
 * q4_1 GEMV's time; wasmtime's code is 1.02-1.05x slower with it, so compat only). */
static inline void dm4(const uint8_t *const *w, size_t at, v128_t *d, v128_t *m) {
    uint32_t v[4];
    for (int r = 0; r < 4; r++) __builtin_memcpy(&v[r], w[r] + at, 4);
    *d = wasm_f32x4_make(HALF_TABLE[v[0] & 0xFFFF], HALF_TABLE[v[1] & 0xFFFF], HALF_TABLE[v[2] & 0xFFFF], HALF_TABLE[v[3] & 0xFFFF]);
    *m = wasm_f32x4_make(HALF_TABLE[v[0] >> 16], HALF_TABLE[v[1] >> 16], HALF_TABLE[v[2] >> 16], HALF_TABLE[v[3] >> 16]);
}
#endif

/* Block b of four rows: each row's codes, the four scales d and q4_1's offsets m as
 * vectors. ggml's rows: w[r] is row r; packed: w[0] is the group, its scales one load. */
static inline __attribute__((always_inline)) void blocks4(const uint8_t *const *w, int b, int qtype,
                                                          int packed, const uint8_t **codes,
                                                          v128_t *wd, v128_t *wm) {
    if (packed) {
        const uint8_t *blk = w[0] + (size_t)b * packed_block_bytes(qtype);
        *wd = wasm_v128_load(blk), *wm = qtype == 2 ? wasm_v128_load(blk + 16) : *wd;
        for (int r = 0; r < 4; r++) codes[r] = blk + (qtype == 2 ? 32 : 16) + r * code_bytes(qtype);
        return;
    }
    size_t at = (size_t)b * BLOCK_BYTES[qtype];
    for (int r = 0; r < 4; r++) codes[r] = w[r] + at + head_bytes(qtype);
#ifdef SLLM_WASM_COMPAT
    if (qtype == 2) {
        dm4(w, at, wd, wm);
        return;
    }
#endif
    *wd = halves4(w, at), *wm = qtype == 2 ? halves4(w, at + 2) : *wd;
}

/* Four rows at once (lane r: row r): x's codes are loaded once for the four, the four
 * int32 block sums reduce to one vector, and the block scales multiply as a vector. The
 * integer dot of a block is exact; its float products add block by block, as in the
 * reference's float32 sum over blocks. */
static inline __attribute__((always_inline)) v128_t dot_rows4(const uint8_t *const *w, const qrow *x,
                                                              int nb, int qtype, int packed) {
    v128_t acc = wasm_f32x4_splat(0.0f), macc = acc;
    for (int b = 0; b < nb; b++) {
        const uint8_t *c[4];
        v128_t wd, wm;
        blocks4(w, b, qtype, packed, c, &wd, &wm);
        xblock xb = load_xblock(x->q + b * QK);
        v128_t isum = reduce4(block_isum(c[0], &xb, qtype), block_isum(c[1], &xb, qtype),
                              block_isum(c[2], &xb, qtype), block_isum(c[3], &xb, qtype));
        if (qtype == 1) isum = wasm_i32x4_sub(isum, wasm_i32x4_splat(8 * (int)x->s[b]));
        v128_t scale = wasm_f32x4_mul(wd, wasm_f32x4_splat(x->d[b]));
        acc = wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(isum), scale));
        if (qtype == 2) macc = wasm_f32x4_add(macc, wasm_f32x4_mul(wm, wasm_f32x4_splat(x->s[b])));
    }
    return qtype == 2 ? wasm_f32x4_add(acc, macc) : acc;
}

/* Output rows [o0, o1) for every input row (o0 a multiple of four); qtype and packed are
 * constants after inlining. A last group of fewer than four rows: ggml's rows repeat the
 * last row in the spare lanes, a packed group has zero rows there. */
static inline __attribute__((always_inline)) void rows(float *out, const uint8_t *wq, const float *bias,
                                                       const int8_t *q, const float *d, const float *s,
                                                       int N, int nb, int OC, int o0, int o1, int qtype,
                                                       int packed) {
    size_t row_bytes = (size_t)nb * BLOCK_BYTES[qtype], group_bytes = (size_t)nb * packed_block_bytes(qtype);
    for (int n = 0; n < N; n++) {
        qrow x = {q + (size_t)n * nb * QK, d + n * nb, s + n * nb};
        float *y = out + (size_t)n * OC;
        for (int o = o0; o < o1; o += 4) {
            const uint8_t *w[4];
            if (packed) w[0] = wq + (size_t)(o / 4) * group_bytes;
            else
                for (int r = 0; r < 4; r++) w[r] = wq + (size_t)(o + r < o1 ? o + r : o1 - 1) * row_bytes;
            v128_t sums = dot_rows4(w, &x, nb, qtype, packed);
            if (o + 4 <= o1) { /* four rows: one vector add and store */
                wasm_v128_store(y + o, wasm_f32x4_add(sums, bias ? wasm_v128_load(bias + o) : wasm_f32x4_splat(0.0f)));
                continue;
            }
            float lanes[4];
            wasm_v128_store(lanes, sums);
            for (int r = 0; o + r < o1; r++) y[o + r] = lanes[r] + (bias ? bias[o + r] : 0.0f);
        }
    }
}
#else
static inline __attribute__((always_inline)) float dot_row(const uint8_t *wq, size_t o, const qrow *x,
                                                           int nb, int qtype, int packed) {
    float sum = 0.0f;
    const uint8_t *at = row_start(wq, qtype, packed, nb, o);
    for (int b = 0; b < nb; b++, at += block_stride(qtype, packed)) {
        qblock w = block_here(at, qtype, packed, (int)(o % 4));
        const int8_t *qx = x->q + b * QK;
        int isum = 0;
        if (qtype == 0) {
            const int8_t *qw = (const int8_t *)w.codes;
            for (int j = 0; j < QK; j++) isum += qw[j] * qx[j];
        } else {
            int off = qtype == 1 ? 8 : 0;
            for (int j = 0; j < QK / 2; j++)
                isum += ((w.codes[j] & 0x0F) - off) * qx[j] + ((w.codes[j] >> 4) - off) * qx[j + QK / 2];
        }
        sum += (float)isum * (w.d * x->d[b]);
        if (qtype == 2) sum += w.m * x->s[b];
    }
    return sum;
}

/* Output rows [o0, o1) for every input row; qtype and packed are constants after inlining. */
static inline __attribute__((always_inline)) void rows(float *out, const uint8_t *wq, const float *bias,
                                                       const int8_t *q, const float *d, const float *s,
                                                       int N, int nb, int OC, int o0, int o1, int qtype,
                                                       int packed) {
    for (int n = 0; n < N; n++) {
        qrow x = {q + (size_t)n * nb * QK, d + n * nb, s + n * nb};
        float *y = out + (size_t)n * OC;
        for (int o = o0; o < o1; o++) y[o] = dot_row(wq, (size_t)o, &x, nb, qtype, packed) + (bias ? bias[o] : 0.0f);
    }
}
#endif

EXPORT(matmul_q_fwd) {
    float *out = ARG_F32P(0);
    const float *inp = ARG_F32P(1), *bias = ARG_F32P(3);
    const uint8_t *wq = (const uint8_t *)(uintptr_t)ARGS[2].u;
    int N = ARG_INT(4), K = ARG_INT(5), OC = ARG_INT(6), qtype = ARG_INT(7) & 3;
    int packed = (ARG_INT(7) & PACKED) != 0;
    float *scratch = ARG_F32P(8);
    int nb = (K + QK - 1) / QK;
    if (!half_table_ready) fill_half_table();
    int8_t *q = (int8_t *)scratch;
    float *d = scratch + (size_t)N * nb * (QK / 4), *s = d + (size_t)N * nb;
    for (int n = 0; n < N; n++)
        quantize_row_q8_0(inp + (size_t)n * K, K, q + (size_t)n * nb * QK, d + n * nb, s + n * nb,
                          SIMD_INT_SUMS && qtype == 1);
    for (int o0 = 0; o0 < OC; o0 += 16) { /* 16 weight rows stay in cache across the inputs */
        int o1 = o0 + 16 < OC ? o0 + 16 : OC;
#define ROWS(t, p) rows(out, wq, bias, q, d, s, N, nb, OC, o0, o1, t, p)
        if (packed) {
            if (qtype == 0) ROWS(0, 1);
            else if (qtype == 1) ROWS(1, 1);
            else ROWS(2, 1);
        } else {
            if (qtype == 0) ROWS(0, 0);
            else if (qtype == 1) ROWS(1, 0);
            else ROWS(2, 0);
        }
#undef ROWS
    }
}

#ifdef __wasm_simd128__
/* 16 int8 codes q as floats q * d + m (multiply, then add: no fused rounding). */
static inline void dequantize16(float *out, v128_t q, float d, float m) {
    v128_t dv = wasm_f32x4_splat(d), mv = wasm_f32x4_splat(m);
    v128_t halves[2] = {wasm_i16x8_extend_low_i8x16(q), wasm_i16x8_extend_high_i8x16(q)};
    for (int h = 0; h < 2; h++) {
        v128_t lo = wasm_f32x4_convert_i32x4(wasm_i32x4_extend_low_i16x8(halves[h]));
        v128_t hi = wasm_f32x4_convert_i32x4(wasm_i32x4_extend_high_i16x8(halves[h]));
        wasm_v128_store(out + 8 * h, wasm_f32x4_add(wasm_f32x4_mul(lo, dv), mv));
        wasm_v128_store(out + 8 * h + 4, wasm_f32x4_add(wasm_f32x4_mul(hi, dv), mv));
    }
}
#endif

/* One block as floats: its first n <= 32 values (sllm.quant.dequantize). */
static void dequantize_block(qblock w, int qtype, int n, float *out) {
#ifdef __wasm_simd128__
    if (n == QK) {
        v128_t lo, hi;
        if (qtype == 0) {
            lo = wasm_v128_load(w.codes), hi = wasm_v128_load(w.codes + 16);
        } else {
            v128_t packed = wasm_v128_load(w.codes);
            lo = wasm_v128_and(packed, wasm_i8x16_splat(0x0F)), hi = wasm_u8x16_shr(packed, 4);
            if (qtype == 1) lo = wasm_i8x16_sub(lo, wasm_i8x16_splat(8)), hi = wasm_i8x16_sub(hi, wasm_i8x16_splat(8));
        }
        dequantize16(out, lo, w.d, w.m);
        dequantize16(out + 16, hi, w.d, w.m);
        return;
    }
#endif
    for (int j = 0; j < n; j++) {
        int c;
        if (qtype == 0) {
            c = ((const int8_t *)w.codes)[j];
        } else {
            uint8_t byte = w.codes[j % 16];
            c = (j < 16 ? byte & 0x0F : byte >> 4) - (qtype == 1 ? 8 : 0);
        }
        out[j] = (float)c * w.d + w.m;
    }
}

/* out (n,C) = rows tokens of wq, dequantized; code = qtype (+ PACKED) */
static void embed_rows(float *out, const int32_t *tokens, const uint8_t *wq, int n, int C,
                       int code) {
    int qtype = code & 3, packed = (code & PACKED) != 0, nb = (C + QK - 1) / QK;
    if (!half_table_ready) fill_half_table();
    for (int i = 0; i < n; i++)
        for (int b = 0; b < nb; b++)
            dequantize_block(block_at(wq, qtype, packed, nb, (size_t)tokens[i], b), qtype,
                             C - b * QK < QK ? C - b * QK : QK, out + (size_t)i * C + b * QK);
}

EXPORT(embed_q_fwd) {
    embed_rows(ARG_F32P(0), ARG_I32P(1), (const uint8_t *)(uintptr_t)ARGS[2].u, ARG_INT(3),
               ARG_INT(4), ARG_INT(5));
}

EXPORT(encoder_q_fwd) {
    float *out = ARG_F32P(0);
    const float *wpe = ARG_F32P(3);
    int n = ARG_INT(4), T = ARG_INT(5), C = ARG_INT(6), pos = ARG_INT(7);
    embed_rows(out, ARG_I32P(1), (const uint8_t *)(uintptr_t)ARGS[2].u, n, C, ARG_INT(8));
    for (int i = 0; i < n; i++) {  /* then the position rows: the composed path's sums */
        float *o = out + (size_t)i * C;
        const float *p = wpe + (size_t)(pos + i % T) * C;
        for (int c = 0; c < C; c++) o[c] += p[c];
    }
}

EXPORT(matmul_q_bwd) {
    float *dinp = ARG_F32P(0), *w = ARG_F32P(7);
    const float *dout = ARG_F32P(1);
    const uint8_t *wq = (const uint8_t *)(uintptr_t)ARGS[2].u;
    int N = ARG_INT(3), K = ARG_INT(4), OC = ARG_INT(5), qtype = ARG_INT(6) & 3, cols = ARG_INT(8);
    int packed = (ARG_INT(6) & PACKED) != 0, nb = (K + QK - 1) / QK;
    if (!half_table_ready) fill_half_table();
    for (int k0 = 0; k0 < K; k0 += cols) {
        int k1 = k0 + cols < K ? k0 + cols : K, width = k1 - k0;
        for (int o = 0; o < OC; o++) {
            for (int b = k0 / QK; b * QK < k1; b++) {
                int n = K - b * QK < QK ? K - b * QK : QK;
                dequantize_block(block_at(wq, qtype, packed, nb, (size_t)o, b), qtype, n,
                                 w + (size_t)o * width + (b * QK - k0));
            }
        }
        gemm_rows(dinp + k0, K, dout, OC, w, width, N, width, OC);
    }
}

/* A float16 scale back from the float32 half_to_float made of it: exact for every half
 * (float_to_half would round a NaN's payload to one quiet NaN). */
static uint32_t scale_to_half(float f) {
    uint32_t x = float_to_bits(f);
    if ((x & 0x7F800000u) == 0x7F800000u) return ((x >> 16) & 0x8000) | 0x7C00 | ((x & 0x7FFFFF) >> 13);
    return float_to_half(f);
}

/* Copies block b of ggml row o to or from its place in the packed layout (to_packed: ggml's
 * bytes in, the packed ones out; else the way back). */
static void move_block(uint8_t *ggml, uint8_t *packed_base, int qtype, int nb, size_t o, int b, int to_packed) {
    uint8_t *blk = packed_base + ((o / 4) * nb + b) * packed_block_bytes(qtype);
    float *scales = (float *)blk;
    uint8_t *codes = blk + (qtype == 2 ? 32 : 16) + (o % 4) * code_bytes(qtype);
    int r = (int)(o % 4), fields = qtype == 2 ? 2 : 1;
    for (int f = 0; f < fields; f++) {
        if (to_packed) {
            scales[4 * f + r] = load_half(ggml + 2 * f);
        } else {
            uint16_t h = (uint16_t)scale_to_half(scales[4 * f + r]);
            __builtin_memcpy(ggml + 2 * f, &h, 2);
        }
    }
    uint8_t *from = to_packed ? ggml + head_bytes(qtype) : codes, *to = to_packed ? codes : ggml + head_bytes(qtype);
    for (size_t j = 0; j < code_bytes(qtype); j++) to[j] = from[j];
}

EXPORT(pack_q) {
    uint8_t *dst = (uint8_t *)(uintptr_t)ARGS[0].u, *src = (uint8_t *)(uintptr_t)ARGS[1].u;
    int OC = ARG_INT(2), K = ARG_INT(3), qtype = ARG_INT(4), nb = (K + QK - 1) / QK;
    size_t total = (size_t)(OC + 3) / 4 * nb * packed_block_bytes(qtype);
    if (!half_table_ready) fill_half_table();
    for (size_t i = 0; i < total; i++) dst[i] = 0; /* spare rows: d = 0, codes 0 */
    for (int o = 0; o < OC; o++)
        for (int b = 0; b < nb; b++)
            move_block(src + ((size_t)o * nb + b) * BLOCK_BYTES[qtype], dst, qtype, nb, (size_t)o, b, 1);
}

EXPORT(unpack_q) {
    uint8_t *dst = (uint8_t *)(uintptr_t)ARGS[0].u, *src = (uint8_t *)(uintptr_t)ARGS[1].u;
    int OC = ARG_INT(2), K = ARG_INT(3), qtype = ARG_INT(4), nb = (K + QK - 1) / QK;
    for (int o = 0; o < OC; o++)
        for (int b = 0; b < nb; b++)
            move_block(dst + ((size_t)o * nb + b) * BLOCK_BYTES[qtype], src, qtype, nb, (size_t)o, b, 0);
}
