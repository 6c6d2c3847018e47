/* The quantized matmul: ggml's q8_0 / q4_0 / q4_1 weight rows times activations
 * quantized on the fly to q8_0 (sllm/quant.py; the numpy reference is
 * sllm.backends.reference.matmul_q_fwd, the C++ twin cpp/quant*.cpp).
 *
 * export matmul_q_fwd, ARGS: 0 out (N,OC) f32, 1 inp (N,K) f32, 2 wq (OC, row bytes) u8,
 * 3 bias (OC) f32 or 0, 4 N, 5 K, 6 OC, 7 qtype (0 q8_0, 1 q4_0, 2 q4_1), 8 scratch of at
 * least N*nb*8 + 2*N*nb floats (nb = ceil(K/32)): the q8_0 codes, scales and block sums.
 *
 * export matmul_q_bwd, ARGS: 0 dinp (N,K) f32, 1 dout (N,OC) f32, 2 wq (OC, row bytes) u8,
 * 3 N, 4 K, 5 OC, 6 qtype, 7 scratch of at least OC*cols floats, 8 cols (a multiple of 32):
 * dinp = dout @ W, W's columns dequantized cols at a time into the scratch, each slice
 * multiplied by the float GEMM (gemm.c).
 *
 * Dot products: SIMD128 widens int8 products to int16 (extmul) and sums pairs to int32;
 * relaxed SIMD uses i32x4.relaxed_dot_i8x16_i7x16_add with |w| as the 7-bit operand and
 * x carrying w's sign (ggml's sign trick); the MVP module runs the scalar loops.
 */
#include "abi.h"

#define QK 32
static const int BLOCK_BYTES[3] = {34, 18, 20};

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

static inline float load_half(const uint8_t *p) { return HALF_TABLE[p[0] | ((uint32_t)p[1] << 8)]; }

/* C's roundf: half away from zero (wasm's f32.nearest rounds half to even). */
static float round_away(float v) {
    float a = __builtin_fabsf(v), t = __builtin_truncf(a);
    float r = t + (a - t >= 0.5f ? 1.0f : 0.0f);
    return v < 0 ? -r : r;
}

/* ggml's quantize_row_q8_0_ref for one row, zero-padded to nb blocks, plus block sums. */
static void quantize_row_q8_0(const float *x, int K, int8_t *q, float *d, float *s) {
    int nb = (K + QK - 1) / QK;
    for (int b = 0; b < nb; b++) {
        int j0 = b * QK, n = K - j0 < QK ? K - j0 : QK;
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
        s[b] = (float)sum * d[b];
    }
}

typedef struct {
    const int8_t *q;
    const float *d, *s;
} qrow;

#ifdef __wasm_simd128__
/* i32x4 partial sums of w (int8, |w| <= 127) times x (int8), 16 pairs. */
static inline v128_t dot16(v128_t w, v128_t x, v128_t acc) {
#ifdef __wasm_relaxed_simd__
    v128_t neg = wasm_i8x16_lt(w, wasm_i8x16_splat(0));
    v128_t sx = wasm_i8x16_sub(wasm_v128_xor(x, neg), neg); /* x * sign(w) */
    return wasm_i32x4_relaxed_dot_i8x16_i7x16_add(sx, wasm_i8x16_abs(w), acc);
#elif defined(SLLM_WASM_COMPAT)
    /* wasmer 1.x (Cranelift) lacks extmul and extadd_pairwise: widen each half of w and x
     * to int16, then i32x4.dot_i16x8_s sums the products in pairs (an intrinsic, so the
     * compiler cannot fold the widening multiply back into extmul) */
    v128_t lo = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(w), wasm_i16x8_extend_low_i8x16(x));
    v128_t hi = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(w), wasm_i16x8_extend_high_i8x16(x));
    return wasm_i32x4_add(acc, wasm_i32x4_add(lo, hi));
#else
    v128_t p = wasm_i16x8_add(wasm_i16x8_extmul_low_i8x16(w, x), wasm_i16x8_extmul_high_i8x16(w, x));
    return wasm_i32x4_add(acc, wasm_i32x4_extadd_pairwise_i16x8(p));
#endif
}

static inline float hsum(v128_t v) {
    return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) +
           wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}

/* One block: the int32 dot of 32 weights (two v128 of int8) with 32 codes, scaled. */
static inline v128_t block(v128_t w0, v128_t w1, const int8_t *x, float scale, v128_t acc) {
    v128_t isum = dot16(w0, wasm_v128_load(x), wasm_i32x4_splat(0));
    isum = dot16(w1, wasm_v128_load(x + 16), isum);
    return wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(isum), wasm_f32x4_splat(scale)));
}

static inline __attribute__((always_inline)) float dot_row(const uint8_t *w, const qrow *x, int nb,
                                                           int qtype) {
    v128_t acc = wasm_f32x4_splat(0.0f), low = wasm_i8x16_splat(0x0F), eight = wasm_i8x16_splat(8);
    float msum = 0.0f;
    for (int b = 0; b < nb; b++, w += BLOCK_BYTES[qtype]) {
        float scale = load_half(w) * x->d[b];
        v128_t w0, w1;
        if (qtype == 0) {
            w0 = wasm_v128_load(w + 2), w1 = wasm_v128_load(w + 18);
        } else {
            v128_t packed = wasm_v128_load(w + (qtype == 1 ? 2 : 4));
            w0 = wasm_v128_and(packed, low), w1 = wasm_u8x16_shr(packed, 4);
            if (qtype == 1) w0 = wasm_i8x16_sub(w0, eight), w1 = wasm_i8x16_sub(w1, eight);
            else msum += load_half(w + 2) * x->s[b];
        }
        acc = block(w0, w1, x->q + b * QK, scale, acc);
    }
    return hsum(acc) + msum;
}
#else
static inline __attribute__((always_inline)) float dot_row(const uint8_t *w, const qrow *x, int nb,
                                                           int qtype) {
    float sum = 0.0f;
    for (int b = 0; b < nb; b++, w += BLOCK_BYTES[qtype]) {
        const int8_t *qx = x->q + b * QK;
        int isum = 0;
        if (qtype == 0) {
            const int8_t *qw = (const int8_t *)(w + 2);
            for (int j = 0; j < QK; j++) isum += qw[j] * qx[j];
        } else {
            const uint8_t *qs = w + (qtype == 1 ? 2 : 4);
            int off = qtype == 1 ? 8 : 0;
            for (int j = 0; j < QK / 2; j++)
                isum += ((qs[j] & 0x0F) - off) * qx[j] + ((qs[j] >> 4) - off) * qx[j + QK / 2];
        }
        sum += (float)isum * (load_half(w) * x->d[b]);
        if (qtype == 2) sum += load_half(w + 2) * x->s[b];
    }
    return sum;
}
#endif

/* Output rows [o0, o1) for every input row; qtype is a constant after inlining. */
static inline __attribute__((always_inline)) void rows(float *out, const uint8_t *wq, const float *bias,
                                                       const int8_t *q, const float *d, const float *s,
                                                       int N, int nb, int OC, int o0, int o1, int qtype) {
    int row_bytes = nb * BLOCK_BYTES[qtype];
    for (int n = 0; n < N; n++) {
        qrow x = {q + (size_t)n * nb * QK, d + n * nb, s + n * nb};
        float *y = out + (size_t)n * OC;
        for (int o = o0; o < o1; o++)
            y[o] = dot_row(wq + (size_t)o * row_bytes, &x, nb, qtype) + (bias ? bias[o] : 0.0f);
    }
}

EXPORT(matmul_q_fwd) {
    float *out = ARG_F32P(0);
    const float *inp = ARG_F32P(1), *bias = ARG_F32P(3);
    const uint8_t *wq = (const uint8_t *)(uintptr_t)ARGS[2].u;
    int N = ARG_INT(4), K = ARG_INT(5), OC = ARG_INT(6), qtype = ARG_INT(7);
    float *scratch = ARG_F32P(8);
    int nb = (K + QK - 1) / QK;
    if (!half_table_ready) fill_half_table();
    int8_t *q = (int8_t *)scratch;
    float *d = scratch + (size_t)N * nb * (QK / 4), *s = d + (size_t)N * nb;
    for (int n = 0; n < N; n++)
        quantize_row_q8_0(inp + (size_t)n * K, K, q + (size_t)n * nb * QK, d + n * nb, s + n * nb);
    for (int o0 = 0; o0 < OC; o0 += 16) { /* 16 weight rows stay in cache across the inputs */
        int o1 = o0 + 16 < OC ? o0 + 16 : OC;
        if (qtype == 0) rows(out, wq, bias, q, d, s, N, nb, OC, o0, o1, 0);
        else if (qtype == 1) rows(out, wq, bias, q, d, s, N, nb, OC, o0, o1, 1);
        else rows(out, wq, bias, q, d, s, N, nb, OC, o0, o1, 2);
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

/* One block of ggml bytes as floats: its first n <= 32 values (sllm.quant.dequantize). */
static void dequantize_block(const uint8_t *w, int qtype, int n, float *out) {
    float d = load_half(w), m = qtype == 2 ? load_half(w + 2) : 0.0f;
#ifdef __wasm_simd128__
    if (n == QK) {
        v128_t lo, hi;
        if (qtype == 0) {
            lo = wasm_v128_load(w + 2), hi = wasm_v128_load(w + 18);
        } else {
            v128_t packed = wasm_v128_load(w + (qtype == 1 ? 2 : 4));
            lo = wasm_v128_and(packed, wasm_i8x16_splat(0x0F)), hi = wasm_u8x16_shr(packed, 4);
            if (qtype == 1) lo = wasm_i8x16_sub(lo, wasm_i8x16_splat(8)), hi = wasm_i8x16_sub(hi, wasm_i8x16_splat(8));
        }
        dequantize16(out, lo, d, m);
        dequantize16(out + 16, hi, d, m);
        return;
    }
#endif
    for (int j = 0; j < n; j++) {
        int c;
        if (qtype == 0) {
            c = ((const int8_t *)(w + 2))[j];
        } else {
            uint8_t byte = w[(qtype == 1 ? 2 : 4) + j % 16];
            c = (j < 16 ? byte & 0x0F : byte >> 4) - (qtype == 1 ? 8 : 0);
        }
        out[j] = (float)c * d + m;
    }
}

EXPORT(matmul_q_bwd) {
    float *dinp = ARG_F32P(0), *w = ARG_F32P(7);
    const float *dout = ARG_F32P(1);
    const uint8_t *wq = (const uint8_t *)(uintptr_t)ARGS[2].u;
    int N = ARG_INT(3), K = ARG_INT(4), OC = ARG_INT(5), qtype = ARG_INT(6), cols = ARG_INT(8);
    int nb = (K + QK - 1) / QK, bytes = BLOCK_BYTES[qtype];
    if (!half_table_ready) fill_half_table();
    for (int k0 = 0; k0 < K; k0 += cols) {
        int k1 = k0 + cols < K ? k0 + cols : K, width = k1 - k0;
        for (int o = 0; o < OC; o++) {
            for (int b = k0 / QK; b * QK < k1; b++) {
                int n = K - b * QK < QK ? K - b * QK : QK;
                dequantize_block(wq + ((size_t)o * nb + b) * bytes, qtype, n,
                                 w + (size_t)o * width + (b * QK - k0));
            }
        }
        gemm_rows(dinp + k0, K, dout, OC, w, width, N, width, OC);
    }
}
