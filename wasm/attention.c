/* Causal multi-head and grouped-query attention: forward (saving the probabilities),
 * backward, and incremental decoding against a KV cache. qkv rows are [Q | K | V] with H
 * query heads and Hkv key/value heads of D floats each; one (batch, head, query) row at a
 * time, vectorised over D. */
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

/* Where the heads of a qkv row ((H + 2*Hkv) * D floats: [Q | K | V]) are: query head h
 * attends with KV head h / (H / Hkv) (Hugging Face's repeat_kv); Hkv = H is GPT-2's
 * multi-head attention. */
typedef struct {
    int H, Hkv, D, W;
} heads;

static heads heads_of(int C, int H, int Hkv) {
    heads hs = {H, Hkv, C / H, 0};
    hs.W = (H + 2 * Hkv) * hs.D;
    return hs;
}

static size_t k_col(heads hs, int h) { return (size_t)(hs.H + h / (hs.H / hs.Hkv)) * hs.D; }
static size_t v_col(heads hs, int h) { return k_col(hs, h) + (size_t)hs.Hkv * hs.D; }

/* attention_fwd(out (B,T,C), att (B,H,T,T), qkv (B,T,W), B, T, C, H, Hkv), C = H*D,
 * W = (H + 2*Hkv)*D */
EXPORT(attention_fwd) {
    float *out = ARG_F32P(0), *att = ARG_F32P(1), *qkv = ARG_F32P(2);
    int B = ARG_INT(3), T = ARG_INT(4), C = ARG_INT(5), H = ARG_INT(6);
    heads hs = heads_of(C, H, ARG_INT(7));
    float scale = 1.0f / __builtin_sqrtf((float)hs.D);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const float *rows = qkv + (size_t)b * T * hs.W;
            for (int t = 0; t < T; t++) {
                float *probs = att + (((size_t)b * H + h) * T + t) * T;
                softmax_scores(probs, rows + (size_t)t * hs.W + h * hs.D, rows + k_col(hs, h),
                               hs.W, t + 1, hs.D, scale);
                for (int s = t + 1; s < T; s++) probs[s] = 0.0f;
                weighted_sum(out + ((size_t)b * T + t) * C + h * hs.D, probs, rows + v_col(hs, h),
                             hs.W, t + 1, hs.D);
            }
        }
    }
}

/* One query row's backward: dscores from datt, then dq, and dk, dv added to (a KV head's
 * gradient sums over the query heads it serves). drows, rows: the sequence's first row. */
static void attention_row_bwd(float *drows, const float *rows, heads hs, int h, int t,
                              const float *probs, const float *dy, float *datt, float scale) {
    size_t W = hs.W, kc = k_col(hs, h), vc = v_col(hs, h);
    float *dq = drows + t * W + h * hs.D;
    const float *q = rows + t * W + h * hs.D;
    float weighted = 0.0f;
    for (int s = 0; s <= t; s++) {
        datt[s] = dot(dy, rows + s * W + vc, hs.D);
        weighted += datt[s] * probs[s];
        axpy(drows + s * W + vc, probs[s], dy, hs.D); /* dv */
    }
    for (int s = 0; s <= t; s++) {
        float ds = probs[s] * (datt[s] - weighted) * scale;
        axpy(dq, ds, rows + s * W + kc, hs.D);
        axpy(drows + s * W + kc, ds, q, hs.D); /* dk */
    }
}

/* attention_bwd(dqkv (B,T,W) overwritten, dout (B,T,C), qkv, att, B, T, C, H, scratch (T),
 *               Hkv) */
EXPORT(attention_bwd) {
    float *dqkv = ARG_F32P(0), *dout = ARG_F32P(1), *qkv = ARG_F32P(2), *att = ARG_F32P(3);
    int B = ARG_INT(4), T = ARG_INT(5), C = ARG_INT(6), H = ARG_INT(7);
    float *datt = ARG_F32P(8);
    heads hs = heads_of(C, H, ARG_INT(9));
    float scale = 1.0f / __builtin_sqrtf((float)hs.D);
    zero_floats(dqkv, (size_t)B * T * hs.W);
    for (int b = 0; b < B; b++) {
        size_t off = (size_t)b * T * hs.W;
        for (int h = 0; h < H; h++) {
            for (int t = 0; t < T; t++) {
                const float *probs = att + (((size_t)b * H + h) * T + t) * T;
                const float *dy = dout + ((size_t)b * T + t) * C + h * hs.D;
                attention_row_bwd(dqkv + off, qkv + off, hs, h, t, probs, dy, datt, scale);
            }
        }
    }
}

/* Store row `row`'s keys and values (every KV head) at position pos of a cache whose KV
 * head j starts at kc + j * maxT * D. */
static void cache_store(float *kc, float *vc, const float *row, heads hs, int maxT, int pos) {
    for (int j = 0; j < hs.Hkv; j++) {
        size_t at = ((size_t)j * maxT + pos) * hs.D;
        copy_floats(kc + at, row + (size_t)(hs.H + j) * hs.D, hs.D);
        copy_floats(vc + at, row + (size_t)(hs.H + hs.Hkv + j) * hs.D, hs.D);
    }
}

/* One query row of head h at position pos against a cache (kc, vc: the sequence's first
 * KV head), into y (D). */
static void cache_attend(float *y, const float *q, const float *kc, const float *vc, heads hs,
                         int h, int maxT, int pos, float *probs) {
    size_t head = (size_t)(h / (hs.H / hs.Hkv)) * maxT * hs.D;
    float scale = 1.0f / __builtin_sqrtf((float)hs.D);
    softmax_scores(probs, q, kc + head, hs.D, pos + 1, hs.D, scale);
    weighted_sum(y, probs, vc + head, hs.D, pos + 1, hs.D);
}

/* attention_decode(out (B,Tn,C), qkv (B,Tn,W), kcache, vcache (B,Hkv,maxT,D), B, Tn, C, H,
 *                  maxT, pos, scratch (maxT), Hkv) */
EXPORT(attention_decode) {
    float *out = ARG_F32P(0), *qkv = ARG_F32P(1), *kc = ARG_F32P(2), *vc = ARG_F32P(3);
    int B = ARG_INT(4), Tn = ARG_INT(5), C = ARG_INT(6), H = ARG_INT(7);
    int maxT = ARG_INT(8), pos = ARG_INT(9);
    float *probs = ARG_F32P(10);
    heads hs = heads_of(C, H, ARG_INT(11));
    for (int b = 0; b < B; b++) {
        size_t cache = (size_t)b * hs.Hkv * maxT * hs.D;
        const float *rows = qkv + (size_t)b * Tn * hs.W;
        for (int t = 0; t < Tn; t++) cache_store(kc + cache, vc + cache, rows + (size_t)t * hs.W, hs, maxT, pos + t);
        for (int t = 0; t < Tn; t++)
            for (int h = 0; h < H; h++)
                cache_attend(out + ((size_t)b * Tn + t) * C + h * hs.D,
                             rows + (size_t)t * hs.W + h * hs.D, kc + cache, vc + cache, hs, h,
                             maxT, pos + t, probs);
    }
}

/* attention_decode_batch(out (B,1,C), qkv (B,1,W), kcache, vcache (S,Hkv,maxT,D), slots (B,),
 *                        positions (B,), B, C, H, maxT, scratch (maxT), Hkv)
 * Continuous batching: row b stores its keys/values in slot slots[b] at positions[b], then
 * attends over that slot's positions 0..positions[b] (attention_decode with B = Tn = 1). */
EXPORT(attention_decode_batch) {
    float *out = ARG_F32P(0), *qkv = ARG_F32P(1), *kc = ARG_F32P(2), *vc = ARG_F32P(3);
    const int32_t *slots = ARG_I32P(4), *positions = ARG_I32P(5);
    int B = ARG_INT(6), C = ARG_INT(7), H = ARG_INT(8), maxT = ARG_INT(9);
    float *probs = ARG_F32P(10);
    heads hs = heads_of(C, H, ARG_INT(11));
    for (int b = 0; b < B; b++) {
        size_t cache = (size_t)slots[b] * hs.Hkv * maxT * hs.D;
        const float *row = qkv + (size_t)b * hs.W;
        cache_store(kc + cache, vc + cache, row, hs, maxT, positions[b]);
        for (int h = 0; h < H; h++)
            cache_attend(out + (size_t)b * C + h * hs.D, row + h * hs.D, kc + cache, vc + cache,
                         hs, h, maxT, positions[b], probs);
    }
}
