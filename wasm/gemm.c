/* GEMM and the matmul kernels.
 *
 * gemm: c (M,N) = [c +] A (M,K) @ B (K,N) [+ bias]. A is read through two strides,
 * element (i,k) at a[i*ars + k*aks], so A^T (needed by the weight gradient) costs
 * nothing; B is row-major with leading dimension ldb. The loop nest keeps a KC x NR
 * panel of B in L1 while MR rows of A stream past it; the SIMD128 micro-kernel holds an
 * MR x NR tile of c in registers. Rows and columns outside whole tiles go through the
 * plain-C edge kernel, which is also the whole GEMM of the scalar module.
 */
#include "abi.h"

#define KC 256

#ifdef __wasm_relaxed_simd__
#define MADD(a, b, c) wasm_f32x4_relaxed_madd(a, b, c)
#else
#define MADD(a, b, c) wasm_f32x4_add(wasm_f32x4_mul(a, b), c)
#endif

typedef struct {
    float *c;
    const float *a, *b, *bias;
    int ars, aks, ldb, ldc;
} gemm_operands;

/* Any block of c: rows [i0,i1), columns [j0,j1), k in [k0,k1). Plain C. */
static void edge_block(const gemm_operands *g, int i0, int i1, int j0, int j1,
                       int k0, int k1, int init) {
    for (int i = i0; i < i1; i++) {
        float *c = g->c + (size_t)i * g->ldc;
        if (init) {
            for (int j = j0; j < j1; j++) c[j] = g->bias ? g->bias[j] : 0.0f;
        }
        for (int k = k0; k < k1; k++) {
            float aik = g->a[(size_t)i * g->ars + (size_t)k * g->aks];
            const float *b = g->b + (size_t)k * g->ldb;
            for (int j = j0; j < j1; j++) c[j] += aik * b[j];
        }
    }
}

#ifdef __wasm_simd128__
#ifndef MR
#define MR 4
#endif
#ifndef NV
#define NV 4 /* vectors per row: NR = 16 columns (best measured of 4x2..8x2, 2x4..6x4, 2x6) */
#endif
#define NR (4 * NV)

/* One MR x NR tile of c over k in [k0,k1); init: start from bias (or 0), else from c. */
static void micro_tile(const gemm_operands *g, int i, int j, int k0, int k1, int init) {
    v128_t acc[MR][NV];
    for (int r = 0; r < MR; r++) {
        for (int v = 0; v < NV; v++) {
            float *c = g->c + (size_t)(i + r) * g->ldc + j + 4 * v;
            acc[r][v] = !init ? wasm_v128_load(c)
                      : g->bias ? wasm_v128_load(g->bias + j + 4 * v) : wasm_f32x4_splat(0.0f);
        }
    }
    const float *a = g->a + (size_t)i * g->ars;
    for (int k = k0; k < k1; k++) {
        const float *b = g->b + (size_t)k * g->ldb + j;
        v128_t bv[NV];
        for (int v = 0; v < NV; v++) bv[v] = wasm_v128_load(b + 4 * v);
        const float *ak = a + (size_t)k * g->aks;
        for (int r = 0; r < MR; r++) {
            v128_t av = wasm_f32x4_splat(ak[r * g->ars]);
            for (int v = 0; v < NV; v++) acc[r][v] = MADD(av, bv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < MR; r++) {
        for (int v = 0; v < NV; v++) {
            wasm_v128_store(g->c + (size_t)(i + r) * g->ldc + j + 4 * v, acc[r][v]);
        }
    }
}

static void gemm_panel(const gemm_operands *g, int M, int N, int k0, int k1, int init) {
    int Mt = M - M % MR, Nt = N - N % NR;
    for (int j = 0; j < Nt; j += NR) {
        for (int i = 0; i < Mt; i += MR) micro_tile(g, i, j, k0, k1, init);
    }
    edge_block(g, Mt, M, 0, N, k0, k1, init);
    edge_block(g, 0, Mt, Nt, N, k0, k1, init);
}
#else
static void gemm_panel(const gemm_operands *g, int M, int N, int k0, int k1, int init) {
    edge_block(g, 0, M, 0, N, k0, k1, init);
}
#endif

/* bias is used only when !accumulate (a fresh output). */
static void gemm(const gemm_operands *g, int M, int N, int K, int accumulate) {
    if (K == 0) {
        if (!accumulate) edge_block(g, 0, M, 0, N, 0, 0, 1);
        return;
    }
    gemm_operands panel = *g;
    for (int k0 = 0; k0 < K; k0 += KC) {
        int k1 = k0 + KC < K ? k0 + KC : K;
        panel.bias = k0 == 0 ? g->bias : 0;
        gemm_panel(&panel, M, N, k0, k1, k0 == 0 && !accumulate);
    }
}

/* dst (cols, rows) = src (rows, cols)^T, in 8x8 blocks for cache locality. */
static void transpose(float *dst, const float *src, int rows, int cols) {
    for (int i0 = 0; i0 < rows; i0 += 8) {
        for (int j0 = 0; j0 < cols; j0 += 8) {
            int i1 = i0 + 8 < rows ? i0 + 8 : rows, j1 = j0 + 8 < cols ? j0 + 8 : cols;
            for (int i = i0; i < i1; i++) {
                for (int j = j0; j < j1; j++) dst[(size_t)j * rows + i] = src[(size_t)i * cols + j];
            }
        }
    }
}

/* matmul_fwd(out (N,OC), inp (N,C), weight, bias|0, N, C, OC, trans_w, scratch (C*OC)) */
EXPORT(matmul_fwd) {
    float *out = ARG_F32P(0), *inp = ARG_F32P(1), *w = ARG_F32P(2), *bias = ARG_F32P(3);
    int N = ARG_INT(4), C = ARG_INT(5), OC = ARG_INT(6), trans_w = ARG_INT(7);
    if (trans_w) {
        transpose(ARG_F32P(8), w, OC, C);
        w = ARG_F32P(8);
    }
    gemm_operands g = {out, inp, w, bias, C, 1, OC, OC};
    gemm(&g, N, OC, C, 0);
}

static void column_sums_add(float *dbias, const float *dout, int N, int OC) {
    for (int i = 0; i < N; i++) {
        const float *row = dout + (size_t)i * OC;
        for (int j = 0; j < OC; j++) dbias[j] += row[j];
    }
}

/* matmul_bwd(dinp|0, dweight +=, dbias|0 +=, dout (N,OC), inp (N,C), weight, N, C, OC,
 *            trans_w, scratch (C*OC)) */
EXPORT(matmul_bwd) {
    float *dinp = ARG_F32P(0), *dw = ARG_F32P(1), *dbias = ARG_F32P(2);
    float *dout = ARG_F32P(3), *inp = ARG_F32P(4), *w = ARG_F32P(5);
    int N = ARG_INT(6), C = ARG_INT(7), OC = ARG_INT(8), trans_w = ARG_INT(9);
    if (dinp) {
        const float *wt = w; /* (OC, C) */
        if (!trans_w) {
            transpose(ARG_F32P(10), w, C, OC);
            wt = ARG_F32P(10);
        }
        gemm_operands g = {dinp, dout, wt, 0, OC, 1, C, C};
        gemm(&g, N, C, OC, 0);
    }
    if (trans_w) { /* dweight (OC,C) += dout^T @ inp */
        gemm_operands g = {dw, dout, inp, 0, 1, OC, C, C};
        gemm(&g, OC, C, N, 1);
    } else { /* dweight (C,OC) += inp^T @ dout */
        gemm_operands g = {dw, inp, dout, 0, 1, C, OC, OC};
        gemm(&g, C, OC, N, 1);
    }
    if (dbias) column_sums_add(dbias, dout, N, OC);
}
