/* The llama kernels: RMSNorm, rotary position embeddings (rope) and SwiGLU, each a SIMD128
 * body over whole vectors followed by the same scalar tail. Semantics follow
 * sllm/backends/reference.py; argument slots are listed above each export (abi.h). */
#include "vec.h"

/* ---- RMSNorm ------------------------------------------------------------------------ */
/* y[0..C) = x * rs * w */
static void scale_rows(float *y, const float *x, const float *w, float rs, int C) {
    int c = 0;
#ifdef __wasm_simd128__
    v128_t vrs = wasm_f32x4_splat(rs);
    for (; c + 4 <= C; c += 4)
        wasm_v128_store(y + c, wasm_f32x4_mul(wasm_f32x4_mul(wasm_v128_load(x + c), vrs),
                                              wasm_v128_load(w + c)));
#endif
    for (; c < C; c++) y[c] = x[c] * rs * w[c];
}

/* rmsnorm_fwd(out (N,C), rstd (N,), inp (N,C), weight (C,), N, C, eps:f):
 * rstd = 1/sqrt(mean(inp^2) + eps) (summed in float32), out = inp * rstd * weight */
EXPORT(rmsnorm_fwd) {
    float *out = ARG_F32P(0), *rstd = ARG_F32P(1), *inp = ARG_F32P(2), *w = ARG_F32P(3);
    int N = ARG_INT(4), C = ARG_INT(5);
    float eps = ARG_FLT(6);
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float rs = 1.0f / __builtin_sqrtf(dot(x, x, C) / C + eps);
        scale_rows(out + (size_t)n * C, x, w, rs, C);
        rstd[n] = rs;
    }
}

/* One row of rmsnorm_bwd: with norm = x * rs and m = mean(dy * w * norm),
 * dx += rs * (dy * w - norm * m), dw += dy * norm. */
static void rmsnorm_row_bwd(float *dx, float *dw, const float *dy, const float *x,
                            const float *w, float rs, int C) {
    float m = 0.0f;
    int c = 0;
#ifdef __wasm_simd128__
    v128_t vrs = wasm_f32x4_splat(rs), acc = wasm_f32x4_splat(0.0f);
    for (; c + 4 <= C; c += 4) {
        v128_t dn = wasm_f32x4_mul(wasm_v128_load(dy + c), wasm_v128_load(w + c));
        acc = wasm_f32x4_add(acc, wasm_f32x4_mul(dn, wasm_f32x4_mul(wasm_v128_load(x + c), vrs)));
    }
    m = hsum4(acc);
#endif
    for (; c < C; c++) m += dy[c] * w[c] * (x[c] * rs);
    m /= C;
    c = 0;
#ifdef __wasm_simd128__
    v128_t vm = wasm_f32x4_splat(m);
    for (; c + 4 <= C; c += 4) {
        v128_t d = wasm_v128_load(dy + c), norm = wasm_f32x4_mul(wasm_v128_load(x + c), vrs);
        v128_t g = wasm_f32x4_sub(wasm_f32x4_mul(d, wasm_v128_load(w + c)), wasm_f32x4_mul(norm, vm));
        wasm_v128_store(dx + c, wasm_f32x4_add(wasm_v128_load(dx + c), wasm_f32x4_mul(vrs, g)));
        wasm_v128_store(dw + c, wasm_f32x4_add(wasm_v128_load(dw + c), wasm_f32x4_mul(d, norm)));
    }
#endif
    for (; c < C; c++) {
        float norm = x[c] * rs;
        dx[c] += rs * (dy[c] * w[c] - norm * m);
        dw[c] += dy[c] * norm;
    }
}

/* rmsnorm_bwd(dinp +=, dweight +=, dout, inp, weight, rstd, N, C) */
EXPORT(rmsnorm_bwd) {
    float *dinp = ARG_F32P(0), *dw = ARG_F32P(1), *dout = ARG_F32P(2), *inp = ARG_F32P(3);
    float *w = ARG_F32P(4), *rstd = ARG_F32P(5);
    int N = ARG_INT(6), C = ARG_INT(7);
    for (int n = 0; n < N; n++) {
        size_t off = (size_t)n * C;
        rmsnorm_row_bwd(dinp + off, dw, dout + off, inp + off, w, rstd[n], C);
    }
}

/* ---- rotary embeddings ---------------------------------------------------------------- */
/* cs[0..D/2) = cos, cs[D/2..D) = sin of pos * inv_freq[i], in float64 rounded to float32. */
static void rope_angles(float *cs, int pos, const double *inv_freq, int D) {
    int half = D / 2;
    COMPAT_SCALAR_LOOP
    for (int i = 0; i < half; i++) {
        double s, c;
        sincos_double((double)pos * inv_freq[i], &s, &c);
        cs[i] = (float)c;
        cs[half + i] = (float)s;
    }
}

/* Rotate `heads` heads of D floats at x by the angles in cs (sign -1: back), pairing
 * element i with i + D/2 (Hugging Face's rotate-half). */
static void rope_row(float *x, const float *cs, int heads, int D, float sign) {
    int half = D / 2;
    for (int h = 0; h < heads; h++, x += D) {
        float *x1 = x, *x2 = x + half;
        int i = 0;
#ifdef __wasm_simd128__
        v128_t vsign = wasm_f32x4_splat(sign);
        for (; i + 4 <= half; i += 4) {
            v128_t a = wasm_v128_load(x1 + i), b = wasm_v128_load(x2 + i);
            v128_t c = wasm_v128_load(cs + i), s = wasm_f32x4_mul(vsign, wasm_v128_load(cs + half + i));
            wasm_v128_store(x1 + i, wasm_f32x4_sub(wasm_f32x4_mul(a, c), wasm_f32x4_mul(b, s)));
            wasm_v128_store(x2 + i, wasm_f32x4_add(wasm_f32x4_mul(b, c), wasm_f32x4_mul(a, s)));
        }
#endif
        for (; i < half; i++) {
            float a = x1[i], b = x2[i], c = cs[i], s = sign * cs[half + i];
            x1[i] = a * c - b * s;
            x2[i] = b * c + a * s;
        }
    }
}

/* rope_fwd / rope_bwd(qkv (N, (H + 2*Hkv) * D) in place, positions (N,) int32, N, H, Hkv,
 *                     D, theta:d (float64, two slots), scratch ((table_rows + 2) * D floats),
 *                     table_rows)
 * The q and k heads of row n turn by the angles positions[n] * theta^(-2i/D) (bwd: back);
 * v stays. Positions below table_rows take their angles from a table built first in
 * scratch (a host passes table_rows > 0 when positions repeat, as in a training batch);
 * the others compute theirs per row. */
static void rope(float sign) {
    float *qkv = ARG_F32P(0), *scratch = ARG_F32P(8);
    const int32_t *positions = ARG_I32P(1);
    int N = ARG_INT(2), H = ARG_INT(3), Hkv = ARG_INT(4), D = ARG_INT(5), table_rows = ARG_INT(9);
    int W = (H + 2 * Hkv) * D;
    double theta, *inv_freq = (double *)scratch;  /* D/2 doubles, then the table, then a row */
    __builtin_memcpy(&theta, &ARGS[6], sizeof theta);
    float *table = scratch + D, *own = table + (size_t)table_rows * D;
    COMPAT_SCALAR_LOOP
    for (int i = 0; i < D / 2; i++) inv_freq[i] = pow_double(theta, -(2.0 * i) / D);
    COMPAT_SCALAR_LOOP
    for (int p = 0; p < table_rows; p++) rope_angles(table + (size_t)p * D, p, inv_freq, D);
    for (int n = 0; n < N; n++) {
        const float *cs = table + (size_t)positions[n] * D;
        if (positions[n] >= table_rows) {
            rope_angles(own, positions[n], inv_freq, D);
            cs = own;
        }
        rope_row(qkv + (size_t)n * W, cs, H + Hkv, D, sign);
    }
}

EXPORT(rope_fwd) { rope(1.0f); }

/* The transpose (inverse) rotation, for the gradients dq and dk. */
EXPORT(rope_bwd) { rope(-1.0f); }

/* ---- SwiGLU --------------------------------------------------------------------------- */
/* sigmoid(x) = 1 / (1 + exp(-x)); exp_approx clamps, so far left it is ~1e-38, not 0. */
static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

#ifdef __wasm_simd128__
static inline v128_t sigmoid4(v128_t x) {
    v128_t one = wasm_f32x4_splat(1.0f);
    return wasm_f32x4_div(one, wasm_f32x4_add(one, exp_approx4(wasm_f32x4_neg(x))));
}
#endif

/* swiglu_fwd(out, gate, up, n): out = gate * sigmoid(gate) * up */
EXPORT(swiglu_fwd) {
    float *out = ARG_F32P(0), *gate = ARG_F32P(1), *up = ARG_F32P(2);
    int n = ARG_INT(3), i = 0;
#ifdef __wasm_simd128__
    for (; i + 4 <= n; i += 4) {
        v128_t g = wasm_v128_load(gate + i);
        wasm_v128_store(out + i, wasm_f32x4_mul(wasm_f32x4_mul(g, sigmoid4(g)), wasm_v128_load(up + i)));
    }
#endif
    for (; i < n; i++) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

/* swiglu_bwd(dgate, dup, dout, gate, up, n), both overwritten: with s = sigmoid(gate),
 * dgate = dout * up * s * (1 + gate * (1 - s)), dup = dout * gate * s. Each element is
 * read before either output is written, so the outputs may alias dout. */
EXPORT(swiglu_bwd) {
    float *dgate = ARG_F32P(0), *dup = ARG_F32P(1), *dout = ARG_F32P(2);
    float *gate = ARG_F32P(3), *up = ARG_F32P(4);
    int n = ARG_INT(5), i = 0;
#ifdef __wasm_simd128__
    v128_t one = wasm_f32x4_splat(1.0f);
    for (; i + 4 <= n; i += 4) {
        v128_t g = wasm_v128_load(gate + i), u = wasm_v128_load(up + i), dy = wasm_v128_load(dout + i);
        v128_t s = sigmoid4(g);
        v128_t ds = wasm_f32x4_mul(s, wasm_f32x4_add(one, wasm_f32x4_mul(g, wasm_f32x4_sub(one, s))));
        wasm_v128_store(dup + i, wasm_f32x4_mul(dy, wasm_f32x4_mul(g, s)));
        wasm_v128_store(dgate + i, wasm_f32x4_mul(wasm_f32x4_mul(dy, u), ds));
    }
#endif
    for (; i < n; i++) {
        float g = gate[i], u = up[i], dy = dout[i], s = sigmoid(g);
        dup[i] = dy * (g * s);
        dgate[i] = dy * u * (s * (1.0f + g * (1.0f - s)));
    }
}
