/* Small vector helpers: a SIMD128 body over whole vectors, then the same scalar tail. */
#ifndef SLLM_WASM_VEC_H
#define SLLM_WASM_VEC_H

#include "mathfn.h"

static inline float dot(const float *a, const float *b, int n) {
    int i = 0;
    float s = 0.0f;
#ifdef __wasm_simd128__
    v128_t acc0 = wasm_f32x4_splat(0.0f), acc1 = acc0;
    for (; i + 8 <= n; i += 8) {
        acc0 = wasm_f32x4_add(acc0, wasm_f32x4_mul(wasm_v128_load(a + i), wasm_v128_load(b + i)));
        acc1 = wasm_f32x4_add(acc1, wasm_f32x4_mul(wasm_v128_load(a + i + 4), wasm_v128_load(b + i + 4)));
    }
    for (; i + 4 <= n; i += 4) {
        acc0 = wasm_f32x4_add(acc0, wasm_f32x4_mul(wasm_v128_load(a + i), wasm_v128_load(b + i)));
    }
    s = hsum4(wasm_f32x4_add(acc0, acc1));
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y += alpha * x */
static inline void axpy(float *y, float alpha, const float *x, int n) {
    int i = 0;
#ifdef __wasm_simd128__
    v128_t va = wasm_f32x4_splat(alpha);
    for (; i + 4 <= n; i += 4) {
        wasm_v128_store(y + i, wasm_f32x4_add(wasm_v128_load(y + i),
                                              wasm_f32x4_mul(va, wasm_v128_load(x + i))));
    }
#endif
    for (; i < n; i++) y[i] += alpha * x[i];
}

/* y = alpha * x */
static inline void scale_to(float *y, float alpha, const float *x, int n) {
    int i = 0;
#ifdef __wasm_simd128__
    v128_t va = wasm_f32x4_splat(alpha);
    for (; i + 4 <= n; i += 4) wasm_v128_store(y + i, wasm_f32x4_mul(va, wasm_v128_load(x + i)));
#endif
    for (; i < n; i++) y[i] = alpha * x[i];
}

static inline float sum(const float *x, int n) {
    int i = 0;
    float s = 0.0f;
#ifdef __wasm_simd128__
    v128_t acc = wasm_f32x4_splat(0.0f);
    for (; i + 4 <= n; i += 4) acc = wasm_f32x4_add(acc, wasm_v128_load(x + i));
    s = hsum4(acc);
#endif
    for (; i < n; i++) s += x[i];
    return s;
}

#endif
