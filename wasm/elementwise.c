/* Elementwise kernels: GELU, ReLU, residual add, and the counter-based dropout. Each has a
 * SIMD128 body over whole vectors followed by the same scalar tail. */
#include "vec.h"

#define GELU_SCALE 0.7978845608028654f
#define GELU_CUBE 0.044715f

/* gelu_fwd(out, inp, n) */
EXPORT(gelu_fwd) {
    float *out = ARG_F32P(0), *inp = ARG_F32P(1);
    int n = ARG_INT(2), i = 0;
#ifdef __wasm_simd128__
    v128_t half = wasm_f32x4_splat(0.5f), one = wasm_f32x4_splat(1.0f);
    for (; i + 4 <= n; i += 4) {
        v128_t x = wasm_v128_load(inp + i);
        v128_t x3 = wasm_f32x4_mul(wasm_f32x4_mul(x, x), x);
        v128_t u = wasm_f32x4_mul(wasm_f32x4_splat(GELU_SCALE),
                                  wasm_f32x4_add(x, wasm_f32x4_mul(wasm_f32x4_splat(GELU_CUBE), x3)));
        v128_t t = tanh_approx4(u);
        wasm_v128_store(out + i, wasm_f32x4_mul(wasm_f32x4_mul(half, x), wasm_f32x4_add(one, t)));
    }
#endif
    for (; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanh_approx(GELU_SCALE * (x + GELU_CUBE * x * x * x)));
    }
}

/* gelu_bwd(dinp, dout, inp, n): dinp may alias dout */
EXPORT(gelu_bwd) {
    float *dinp = ARG_F32P(0), *dout = ARG_F32P(1), *inp = ARG_F32P(2);
    int n = ARG_INT(3), i = 0;
#ifdef __wasm_simd128__
    v128_t half = wasm_f32x4_splat(0.5f), one = wasm_f32x4_splat(1.0f);
    v128_t k = wasm_f32x4_splat(GELU_SCALE), c = wasm_f32x4_splat(GELU_CUBE);
    for (; i + 4 <= n; i += 4) {
        v128_t x = wasm_v128_load(inp + i), x2 = wasm_f32x4_mul(x, x);
        v128_t t = tanh_approx4(wasm_f32x4_mul(k, wasm_f32x4_add(x, wasm_f32x4_mul(c, wasm_f32x4_mul(x2, x)))));
        v128_t dt = wasm_f32x4_mul(k, wasm_f32x4_add(one, wasm_f32x4_mul(wasm_f32x4_splat(3.0f * GELU_CUBE), x2)));
        v128_t sech2 = wasm_f32x4_sub(one, wasm_f32x4_mul(t, t));
        v128_t g = wasm_f32x4_add(wasm_f32x4_mul(half, wasm_f32x4_add(one, t)),
                                  wasm_f32x4_mul(wasm_f32x4_mul(half, x), wasm_f32x4_mul(sech2, dt)));
        wasm_v128_store(dinp + i, wasm_f32x4_mul(wasm_v128_load(dout + i), g));
    }
#endif
    for (; i < n; i++) {
        float x = inp[i];
        float t = tanh_approx(GELU_SCALE * (x + GELU_CUBE * x * x * x));
        float dt = GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * x * x);
        dinp[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dt);
    }
}

/* relu_fwd(out, inp, n) */
EXPORT(relu_fwd) {
    float *out = ARG_F32P(0), *inp = ARG_F32P(1);
    int n = ARG_INT(2);
    for (int i = 0; i < n; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

/* relu_bwd(dinp, dout, inp, n): dinp may alias dout */
EXPORT(relu_bwd) {
    float *dinp = ARG_F32P(0), *dout = ARG_F32P(1), *inp = ARG_F32P(2);
    int n = ARG_INT(3);
    for (int i = 0; i < n; i++) dinp[i] = inp[i] > 0.0f ? dout[i] : 0.0f;
}

/* residual_fwd(out, a, b, n) */
EXPORT(residual_fwd) {
    float *out = ARG_F32P(0), *a = ARG_F32P(1), *b = ARG_F32P(2);
    int n = ARG_INT(3);
    for (int i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* The murmur3 finaliser of base.dropout_keep_mask, bit for bit. */
static inline uint32_t dropout_hash(uint32_t i, uint32_t seed) {
    uint32_t x = i * 0x9E3779B1u + seed;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

/* dropout(out, inp, n, threshold, keep_prob, seed): out = keep ? inp / keep_prob : 0 */
static void dropout(void) {
    float *out = ARG_F32P(0), *inp = ARG_F32P(1), keep_prob = ARG_FLT(4);
    uint32_t n = ARGS[2].u, threshold = ARGS[3].u, seed = ARGS[5].u;
    for (uint32_t i = 0; i < n; i++) {
        out[i] = dropout_hash(i, seed) >= threshold ? inp[i] / keep_prob : 0.0f;
    }
}

EXPORT(dropout_fwd) { dropout(); }

/* Backward recomputes the same mask from the seed: the same computation on dout. */
EXPORT(dropout_bwd) { dropout(); }

/* vec_exp(out, inp, n) and vec_tanh(out, inp, n): the approximations of mathfn.h applied
 * elementwise (SIMD body + scalar tail), exported so their error bounds can be measured. */
EXPORT(vec_exp) {
    float *out = ARG_F32P(0), *inp = ARG_F32P(1);
    int n = ARG_INT(2), i = 0;
#ifdef __wasm_simd128__
    for (; i + 4 <= n; i += 4) wasm_v128_store(out + i, exp_approx4(wasm_v128_load(inp + i)));
#endif
    for (; i < n; i++) out[i] = exp_approx(inp[i]);
}

EXPORT(vec_tanh) {
    float *out = ARG_F32P(0), *inp = ARG_F32P(1);
    int n = ARG_INT(2), i = 0;
#ifdef __wasm_simd128__
    for (; i + 4 <= n; i += 4) wasm_v128_store(out + i, tanh_approx4(wasm_v128_load(inp + i)));
#endif
    for (; i < n; i++) out[i] = tanh_approx(inp[i]);
}
