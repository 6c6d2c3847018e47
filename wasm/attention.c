/* Causal multi-head attention: forward (saving the probabilities), backward, and
 * incremental decoding against a KV cache. qkv rows are [Q | K | V], head h at columns
 * h*D:(h+1)*D of each third; one (batch, head, query) row at a time, vectorised over D. */
#include "vec.h"

/* probs[0..n) = softmax(scale * q . keys[s]) for keys s in [0, n), keys strided by ks. */
static void softmax_scores(float *probs, const float *q, const float *keys, int ks, int n,
                           int D, float scale) {
    float mx = -3.0e38f;
    for (int s = 0; s < n; s++) {
        probs[s] = scale * dot(q, keys + (size_t)s * ks, D);
        mx = probs[s] > mx ? probs[s] : mx;
    }
    int s = 0;
    float total = 0.0f;
#ifdef __wasm_simd128__
    v128_t vmx = wasm_f32x4_splat(mx), vtotal = wasm_f32x4_splat(0.0f);
    for (; s + 4 <= n; s += 4) {
        v128_t e = exp_approx4(wasm_f32x4_sub(wasm_v128_load(probs + s), vmx));
        wasm_v128_store(probs + s, e);
        vtotal = wasm_f32x4_add(vtotal, e);
    }
    total = hsum4(vtotal);
#endif
    for (; s < n; s++) {
        probs[s] = exp_approx(probs[s] - mx);
        total += probs[s];
    }
    scale_to(probs, 1.0f / total, probs, n);
}

/* y[0..D) = sum_s probs[s] * values[s] */
static void weighted_sum(float *y, const float *probs, const float *values, int vs, int n, int D) {
    for (int d = 0; d < D; d++) y[d] = 0.0f;
    for (int s = 0; s < n; s++) axpy(y, probs[s], values + (size_t)s * vs, D);
}

/* attention_fwd(out (B,T,C), att (B,H,T,T), qkv (B,T,3C), B, T, C, H) */
EXPORT(attention_fwd) {
    float *out = ARG_F32P(0), *att = ARG_F32P(1), *qkv = ARG_F32P(2);
    int B = ARG_INT(3), T = ARG_INT(4), C = ARG_INT(5), H = ARG_INT(6), D = C / H;
    float scale = 1.0f / __builtin_sqrtf((float)D);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const float *base = qkv + (size_t)b * T * 3 * C + h * D;
            for (int t = 0; t < T; t++) {
                float *probs = att + (((size_t)b * H + h) * T + t) * T;
                softmax_scores(probs, base + (size_t)t * 3 * C, base + C, 3 * C, t + 1, D, scale);
                for (int s = t + 1; s < T; s++) probs[s] = 0.0f;
                weighted_sum(out + ((size_t)b * T + t) * C + h * D, probs, base + 2 * C, 3 * C,
                             t + 1, D);
            }
        }
    }
}

/* One query row's backward: dscores from datt, then dq, dk, dv. */
static void attention_row_bwd(float *dbase, const float *base, const float *probs,
                              const float *dy, float *datt, int t, int C, int D, float scale) {
    float *dq = dbase + (size_t)t * 3 * C;
    const float *q = base + (size_t)t * 3 * C;
    float weighted = 0.0f;
    for (int s = 0; s <= t; s++) {
        const float *v = base + (size_t)s * 3 * C + 2 * C;
        datt[s] = dot(dy, v, D);
        weighted += datt[s] * probs[s];
        axpy(dbase + (size_t)s * 3 * C + 2 * C, probs[s], dy, D); /* dv */
    }
    for (int s = 0; s <= t; s++) {
        float ds = probs[s] * (datt[s] - weighted) * scale;
        axpy(dq, ds, base + (size_t)s * 3 * C + C, D);
        axpy(dbase + (size_t)s * 3 * C + C, ds, q, D); /* dk */
    }
}

/* attention_bwd(dqkv (B,T,3C) overwritten, dout (B,T,C), qkv, att, B, T, C, H, scratch (T)) */
EXPORT(attention_bwd) {
    float *dqkv = ARG_F32P(0), *dout = ARG_F32P(1), *qkv = ARG_F32P(2), *att = ARG_F32P(3);
    int B = ARG_INT(4), T = ARG_INT(5), C = ARG_INT(6), H = ARG_INT(7), D = C / H;
    float *datt = ARG_F32P(8);
    float scale = 1.0f / __builtin_sqrtf((float)D);
    zero_floats(dqkv, (size_t)B * T * 3 * C);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            size_t off = (size_t)b * T * 3 * C + h * D;
            for (int t = 0; t < T; t++) {
                const float *probs = att + (((size_t)b * H + h) * T + t) * T;
                const float *dy = dout + ((size_t)b * T + t) * C + h * D;
                attention_row_bwd(dqkv + off, qkv + off, probs, dy, datt, t, C, D, scale);
            }
        }
    }
}

/* attention_decode(out (B,Tn,C), qkv (B,Tn,3C), kcache, vcache (B,H,maxT,D), B, Tn, C, H,
 *                  maxT, pos, scratch (maxT)) */
EXPORT(attention_decode) {
    float *out = ARG_F32P(0), *qkv = ARG_F32P(1), *kc = ARG_F32P(2), *vc = ARG_F32P(3);
    int B = ARG_INT(4), Tn = ARG_INT(5), C = ARG_INT(6), H = ARG_INT(7), D = C / H;
    int maxT = ARG_INT(8), pos = ARG_INT(9);
    float *probs = ARG_F32P(10);
    float scale = 1.0f / __builtin_sqrtf((float)D);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            float *kh = kc + ((size_t)b * H + h) * maxT * D, *vh = vc + ((size_t)b * H + h) * maxT * D;
            const float *base = qkv + (size_t)b * Tn * 3 * C + h * D;
            for (int t = 0; t < Tn; t++) {
                copy_floats(kh + (size_t)(pos + t) * D, base + (size_t)t * 3 * C + C, D);
                copy_floats(vh + (size_t)(pos + t) * D, base + (size_t)t * 3 * C + 2 * C, D);
            }
            for (int t = 0; t < Tn; t++) {
                softmax_scores(probs, base + (size_t)t * 3 * C, kh, D, pos + t + 1, D, scale);
                weighted_sum(out + ((size_t)b * Tn + t) * C + h * D, probs, vh, D, pos + t + 1, D);
            }
        }
    }
}

/* attention_decode_batch(out (B,1,C), qkv (B,1,3C), kcache, vcache (S,H,maxT,D), slots (B,),
 *                        positions (B,), B, C, H, maxT, scratch (maxT))
 * Continuous batching: row b stores its key/value in slot slots[b] at positions[b], then
 * attends over that slot's positions 0..positions[b] (attention_decode with B = Tn = 1). */
EXPORT(attention_decode_batch) {
    float *out = ARG_F32P(0), *qkv = ARG_F32P(1), *kc = ARG_F32P(2), *vc = ARG_F32P(3);
    const int32_t *slots = ARG_I32P(4), *positions = ARG_I32P(5);
    int B = ARG_INT(6), C = ARG_INT(7), H = ARG_INT(8), D = C / H, maxT = ARG_INT(9);
    float *probs = ARG_F32P(10);
    float scale = 1.0f / __builtin_sqrtf((float)D);
    for (int b = 0; b < B; b++) {
        int pos = positions[b];
        for (int h = 0; h < H; h++) {
            size_t head = ((size_t)slots[b] * H + h) * maxT * D;
            float *kh = kc + head, *vh = vc + head;
            const float *q = qkv + (size_t)b * 3 * C + h * D;
            copy_floats(kh + (size_t)pos * D, q + C, D);
            copy_floats(vh + (size_t)pos * D, q + 2 * C, D);
            softmax_scores(probs, q, kh, D, pos + 1, D, scale);
            weighted_sum(out + (size_t)b * C + h * D, probs, vh, D, pos + 1, D);
        }
    }
}
