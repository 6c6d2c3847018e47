/* exp, tanh and log without libc, scalar and SIMD128, with documented accuracy.
 *
 * exp_approx: x = n*ln2 + r with |r| <= ln2/2, e^r by cephes' degree-7 expf
 *   polynomial, 2^n from the exponent bits. Measured max relative error over [-87, 88]:
 *   8.2e-8 (tests/test_wasm.py bounds it at 2e-7 against float64). Inputs are clamped
 *   to [-87.3, 88.3]: below, the result is 1.2e-38 instead of smaller; above, 2.0e38
 *   instead of larger (never inf, so softmax stays finite).
 * tanh_approx: sign(x) * (1 - 2 / (e^{2|x|} + 1)). Measured max absolute error over all
 *   x: 1.1e-7 (bound 2e-7); relative error grows near 0 (1e-5 at |x| = 0.01), which the
 *   GELU and its gradient, needing absolute accuracy, do not see.
 * log_approx: double precision (atanh series on the mantissa); used once per row.
 */
#ifndef SLLM_WASM_MATHFN_H
#define SLLM_WASM_MATHFN_H

#include "abi.h"

#define EXP_HI 88.3f
#define EXP_LO -87.3f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f

static inline float exp_approx(float x) {
    x = x > EXP_HI ? EXP_HI : (x < EXP_LO ? EXP_LO : x);
    float n = __builtin_floorf(x * LOG2E + 0.5f);
    float r = x - n * LN2_HI - n * LN2_LO;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } scale = { (uint32_t)((int32_t)n + 127) << 23 };
    return p * scale.f;
}

static inline float tanh_approx(float x) {
    float ax = __builtin_fabsf(x);
    float t = 1.0f - 2.0f / (exp_approx(2.0f * ax) + 1.0f);
    return __builtin_copysignf(t, x);
}

static inline double log_approx(double x) {
    union { double d; uint64_t u; } v = { x };
    int e = (int)((v.u >> 52) & 0x7ff) - 1023;
    v.u = (v.u & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL; /* mantissa in [1, 2) */
    double m = v.d;
    if (m > 1.41421356237309505) { m *= 0.5; e += 1; }
    double s = (m - 1.0) / (m + 1.0), s2 = s * s, term = s, sum = 0.0;
    for (int k = 1; k < 30; k += 2) { sum += term / k; term *= s2; }
    return 2.0 * sum + e * 0.693147180559945309;
}

/* Double precision, for the rotary embedding's angles (computed in float64 as the numpy
 * reference does; the float32 results then round alike). exp_double: x = k ln2 + r,
 * |r| <= ln2/2, e^r by its Taylor series to r^13 (last term < 5e-18), 2^k from the
 * exponent bits; for |x| < 700. pow_double(b, e) = exp(e log b) for b > 0. */
static inline double exp_double(double x) {
    double k = __builtin_floor(x * 1.44269504088896338700 + 0.5);
    double r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    double term = 1.0, sum = 1.0;
    for (int i = 1; i < 14; i++) {
        term *= r / i;
        sum += term;
    }
    union { uint64_t u; double d; } scale = { (uint64_t)((int64_t)k + 1023) << 52 };
    return sum * scale.d;
}

static inline double pow_double(double base, double e) { return exp_double(e * log_approx(base)); }

/* sin and cos of x >= 0 (|x| < 2^20 * pi/2): fdlibm's reduction by pi/2 in three 33-bit
 * parts (each n * part exact), then its __kernel_sin / __kernel_cos polynomials on
 * |r| <= pi/4 (error under 1 ulp of double). */
static inline void sincos_double(double x, double *s, double *c) {
    double n = __builtin_floor(x * 6.36619772367581382433e-01 + 0.5);
    double r = ((x - n * 1.57079632673412561417e+00) - n * 6.07710050630396597660e-11)
               - n * 2.02226624871116645580e-21;
    double z = r * r;
    double sr = r + z * r * (-1.66666666666666324348e-01 + z * (8.33333333332248946124e-03
                + z * (-1.98412698298579493134e-04 + z * (2.75573137070700676789e-06
                + z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)))));
    double p = z * (4.16666666666666019037e-02 + z * (-1.38888888888741095749e-03
               + z * (2.48015872894767294178e-05 + z * (-2.75573143513906633035e-07
               + z * (2.08757232129817482790e-09 + z * -1.13596475577881948265e-11)))));
    double hz = 0.5 * z, w = 1.0 - hz;
    double cr = w + (((1.0 - w) - hz) + z * p);
    switch ((int)((int64_t)n & 3)) {
        case 0: *s = sr; *c = cr; break;
        case 1: *s = cr; *c = -sr; break;
        case 2: *s = -sr; *c = -cr; break;
        default: *s = -cr; *c = sr; break;
    }
}

#ifdef __wasm_simd128__
static inline v128_t exp_approx4(v128_t x) {
    x = wasm_f32x4_pmin(wasm_f32x4_splat(EXP_HI), x);
    x = wasm_f32x4_pmax(wasm_f32x4_splat(EXP_LO), x);
    v128_t n = wasm_f32x4_floor(wasm_f32x4_add(wasm_f32x4_mul(x, wasm_f32x4_splat(LOG2E)),
                                               wasm_f32x4_splat(0.5f)));
    v128_t r = wasm_f32x4_sub(x, wasm_f32x4_mul(n, wasm_f32x4_splat(LN2_HI)));
    r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, wasm_f32x4_splat(LN2_LO)));
    v128_t p = wasm_f32x4_splat(1.9875691500e-4f);
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.3981999507e-3f));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(8.3334519073e-3f));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(4.1665795894e-2f));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.6666665459e-1f));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(5.0000001201e-1f));
    p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(p, r), r), r),
                       wasm_f32x4_splat(1.0f));
    v128_t e = wasm_i32x4_shl(wasm_i32x4_add(wasm_i32x4_trunc_sat_f32x4(n), wasm_i32x4_splat(127)), 23);
    return wasm_f32x4_mul(p, e);
}

static inline v128_t tanh_approx4(v128_t x) {
    v128_t ax = wasm_f32x4_abs(x);
    v128_t e = exp_approx4(wasm_f32x4_add(ax, ax));
    v128_t one = wasm_f32x4_splat(1.0f);
    v128_t t = wasm_f32x4_sub(one, wasm_f32x4_div(wasm_f32x4_splat(2.0f), wasm_f32x4_add(e, one)));
    v128_t sign = wasm_v128_and(x, wasm_i32x4_splat((int32_t)0x80000000));
    return wasm_v128_or(t, sign);
}

static inline float hsum4(v128_t v) {
    return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1)
         + wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}
#endif

#endif
