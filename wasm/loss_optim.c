/* The fused softmax + cross-entropy loss and the optimizer updates over flat buffers. */
#include "vec.h"

/* One row: returns the loss; writes dloss * (softmax - onehot) into drow when given. */
static float xent_row(float *drow, const float *z, int V, int target, float dloss) {
    float mx = -3.0e38f, zt = z[target], total = 0.0f;
    for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx; /* vectorised by the compiler */
    int j = 0;
#ifdef __wasm_simd128__
    v128_t vmx = wasm_f32x4_splat(mx), vtotal = wasm_f32x4_splat(0.0f);
    for (; j + 4 <= V; j += 4) {
        v128_t e = exp_approx4(wasm_f32x4_sub(wasm_v128_load(z + j), vmx));
        vtotal = wasm_f32x4_add(vtotal, e);
        if (drow) wasm_v128_store(drow + j, e);
    }
    total = hsum4(vtotal);
#endif
    for (; j < V; j++) {
        float e = exp_approx(z[j] - mx);
        total += e;
        if (drow) drow[j] = e; /* drow may alias z: zt and mx are already read */
    }
    if (drow) {
        scale_to(drow, dloss / total, drow, V);
        drow[target] -= dloss;
    }
    return (float)-((double)zt - mx - log_approx(total));
}

/* softmax_xent(losses (N,), dlogits|0 (N,V), logits (N,V), targets (N,), N, V, dloss) */
EXPORT(softmax_xent) {
    float *losses = ARG_F32P(0), *dlogits = ARG_F32P(1), *logits = ARG_F32P(2);
    int32_t *targets = ARG_I32P(3);
    int N = ARG_INT(4), V = ARG_INT(5);
    float dloss = ARG_FLT(6);
    for (int n = 0; n < N; n++) {
        float *drow = dlogits ? dlogits + (size_t)n * V : 0;
        if (targets[n] < 0) {
            losses[n] = 0.0f;
            if (drow) zero_floats(drow, V);
            continue;
        }
        losses[n] = xent_row(drow, logits + (size_t)n * V, V, targets[n], dloss);
    }
}

/* sgd_update(params, grads, momentum_buf|0, n, lr, momentum, weight_decay, decay_count) */
EXPORT(sgd_update) {
    float *p = ARG_F32P(0), *g = ARG_F32P(1), *buf = ARG_F32P(2);
    int n = ARG_INT(3), decay_count = ARG_INT(7);
    float lr = ARG_FLT(4), momentum = ARG_FLT(5), wd = ARG_FLT(6);
    for (int i = 0; i < n; i++) {
        float gi = i < decay_count ? g[i] + wd * p[i] : g[i];
        if (buf) {
            buf[i] = buf[i] * momentum + gi;
            gi = buf[i];
        }
        p[i] -= lr * gi;
    }
}

/* adam_update(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, decay_count,
 *             decoupled, 1 - beta1^step, 1 - beta2^step) */
EXPORT(adam_update) {
    float *p = ARG_F32P(0), *g = ARG_F32P(1), *m = ARG_F32P(2), *v = ARG_F32P(3);
    int n = ARG_INT(4), decay_count = ARG_INT(10), decoupled = ARG_INT(11);
    float lr = ARG_FLT(5), b1 = ARG_FLT(6), b2 = ARG_FLT(7), eps = ARG_FLT(8), wd = ARG_FLT(9);
    float bc1 = ARG_FLT(12), bc2 = ARG_FLT(13), shrink = 1.0f - lr * wd;
    for (int i = 0; i < n; i++) {
        float gi = g[i];
        if (i < decay_count) {
            if (decoupled) p[i] *= shrink;
            else gi += wd * p[i];
        }
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        float mhat = m[i] / bc1, vhat = v[i] / bc2;
        p[i] -= lr * mhat / (__builtin_sqrtf(vhat) + eps);
    }
}

/* grad_norm_sq(grads, n, out) -> *(double *)out = sum of grads[i]^2, accumulated in
 * float64 in four independent lanes. */
EXPORT(grad_norm_sq) {
    const float *g = ARG_F32P(0);
    int n = ARG_INT(1);
    double *out = (double *)(uintptr_t)ARGS[2].u;
    double lane[4] = {0.0, 0.0, 0.0, 0.0};
    int i = 0;
    COMPAT_SCALAR_LOOP
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) lane[j] += (double)g[i + j] * (double)g[i + j];
    COMPAT_SCALAR_LOOP
    for (; i < n; i++) lane[0] += (double)g[i] * (double)g[i];
    *out = (lane[0] + lane[2]) + (lane[1] + lane[3]);
}
