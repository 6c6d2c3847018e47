/* The sllm kernels for WebAssembly, this file: module plumbing (argument block, heap base,
 * SIMD level, memset/memcpy) plus the embedding and layernorm kernels. The other kernels
 * live by concern: elementwise.c (GELU, ReLU, residual, dropout), loss_optim.c (softmax +
 * cross-entropy, the optimizers), gemm.c (matmul), attention.c. Semantics follow
 * sllm/backends/reference.py; argument slots are listed above each export (see abi.h for
 * the calling convention). */
#include "vec.h"

arg_slot ARGS[ARGS_SLOTS];
extern unsigned char __heap_base;

__attribute__((export_name("args_address"))) uint32_t args_address(void) {
    return (uint32_t)(uintptr_t)ARGS;
}

/* First free byte after static data and the stack: the host allocates from here. */
__attribute__((export_name("heap_base"))) uint32_t heap_base(void) {
    return (uint32_t)(uintptr_t)&__heap_base;
}

/* 2 = SIMD128 with relaxed FMA, 1 = SIMD128, 0 = scalar: lets the host verify the module. */
__attribute__((export_name("simd_level"))) uint32_t simd_level(void) {
#if defined(__wasm_relaxed_simd__)
    return 2;
#elif defined(__wasm_simd128__)
    return 1;
#else
    return 0;
#endif
}

/* The compiler may emit calls to these for struct copies; there is no libc to provide them. */
void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void zero_floats(float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = 0.0f;
}

void copy_floats(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
}

/* ---- embedding ---------------------------------------------------------------------- */
/* encoder_fwd(out (N,C), tokens (N,), wte, wpe, N, T, C, pos) */
EXPORT(encoder_fwd) {
    float *out = ARG_F32P(0), *wte = ARG_F32P(2), *wpe = ARG_F32P(3);
    int32_t *tokens = ARG_I32P(1);
    int N = ARG_INT(4), T = ARG_INT(5), C = ARG_INT(6), pos = ARG_INT(7);
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * C;
        const float *e = wte + (size_t)tokens[n] * C, *p = wpe + (size_t)(pos + n % T) * C;
        for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
    }
}

/* encoder_bwd(dwte +=, dwpe +=, dout (N,C), tokens (N,), N, T, C, pos) */
EXPORT(encoder_bwd) {
    float *dwte = ARG_F32P(0), *dwpe = ARG_F32P(1), *dout = ARG_F32P(2);
    int32_t *tokens = ARG_I32P(3);
    int N = ARG_INT(4), T = ARG_INT(5), C = ARG_INT(6), pos = ARG_INT(7);
    for (int n = 0; n < N; n++) {
        const float *d = dout + (size_t)n * C;
        axpy(dwte + (size_t)tokens[n] * C, 1.0f, d, C);
        axpy(dwpe + (size_t)(pos + n % T) * C, 1.0f, d, C);
    }
}

/* ---- layernorm ---------------------------------------------------------------------- */
/* layernorm_fwd(out (N,C), mean (N,), rstd (N,), inp (N,C), weight, bias, N, C) */
EXPORT(layernorm_fwd) {
    float *out = ARG_F32P(0), *mean = ARG_F32P(1), *rstd = ARG_F32P(2), *inp = ARG_F32P(3);
    float *w = ARG_F32P(4), *bias = ARG_F32P(5);
    int N = ARG_INT(6), C = ARG_INT(7);
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float mu = sum(x, C) / C, var = 0.0f;
        for (int c = 0; c < C; c++) var += (x[c] - mu) * (x[c] - mu);
        float rs = 1.0f / __builtin_sqrtf(var / C + 1e-5f);
        for (int c = 0; c < C; c++) o[c] = (x[c] - mu) * rs * w[c] + bias[c];
        mean[n] = mu;
        rstd[n] = rs;
    }
}

/* layernorm_bwd(dinp +=, dweight +=, dbias +=, dout, inp, weight, mean, rstd, N, C) */
EXPORT(layernorm_bwd) {
    float *dinp = ARG_F32P(0), *dw = ARG_F32P(1), *db = ARG_F32P(2), *dout = ARG_F32P(3);
    float *inp = ARG_F32P(4), *w = ARG_F32P(5), *mean = ARG_F32P(6), *rstd = ARG_F32P(7);
    int N = ARG_INT(8), C = ARG_INT(9);
    for (int n = 0; n < N; n++) {
        const float *dy = dout + (size_t)n * C, *x = inp + (size_t)n * C;
        float *dx = dinp + (size_t)n * C, mu = mean[n], rs = rstd[n];
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - mu) * rs, dnorm = dy[c] * w[c];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
            db[c] += dy[c];
            dw[c] += dy[c] * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - mu) * rs;
            dx[c] += rs * (dy[c] * w[c] - dnorm_mean - norm * dnorm_norm_mean);
        }
    }
}
