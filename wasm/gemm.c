/* GEMM and the matmul kernels.
 *
 * gemm: c (M,N) = [c +] A (M,K) @ B (K,N) [+ bias]. A is read through two strides,
 * element (i,k) at a[i*ars + k*aks], so A^T (needed by the weight gradient) costs
 * nothing; B is row-major with leading dimension ldb. The loop nest keeps a KC x NR
 * panel of B in L1 while MR rows of A stream past it; the SIMD128 micro-kernel holds an
 * MR x NR tile of c in registers. Rows and columns outside whole tiles go through the
 * plain-C edge kernel, which is also the whole GEMM of the scalar module. A is packed
 * per MC x KC block so that the micro-kernel reads one v128 per k for its MR rows.
 */
#include "abi.h"

#define KC 128 /* k per panel: a KC x NR panel of B stays in L1 */

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
#define MR 4 /* rows per tile: the 4 lanes of one packed A vector */
/* vectors per row: NR = 8 columns; 8 accumulators + 2 B + 4 A lanes fit x86's 16 vector
 * registers. Measured in wasmtime on 2048x128x512, this beat 4x12 and 4x16 tiles. */
#define NV 2
#define NR (4 * NV)

#define MC 128 /* rows of A packed per block: MC x KC floats stay in L2 */
static v128_t PACKED_A[MC * KC / 4];

/* A[i0:i0+rows, k0:k1] (rows a multiple of MR) into PACKED_A as [tile][k][MR]: each k of
 * a tile is one v128 whose lanes the micro-kernel broadcasts with shuffles. Row-major A
 * is transposed 4x4 in registers; A^T (ars == 1) is already [k][rows] and is copied. */
static void pack_a(const gemm_operands *g, int i0, int rows, int k0, int k1) {
    v128_t *dst = PACKED_A;
    for (int i = i0; i < i0 + rows; i += MR) {
        const float *a = g->a + (size_t)i * g->ars;
        int k = k0;
        if (g->ars == 1) {
            for (; k < k1; k++) *dst++ = wasm_v128_load(a + (size_t)k * g->aks);
        } else if (g->aks == 1) {
            for (; k + 4 <= k1; k += 4) {
                v128_t r0 = wasm_v128_load(a + k), r1 = wasm_v128_load(a + g->ars + k);
                v128_t r2 = wasm_v128_load(a + 2 * g->ars + k), r3 = wasm_v128_load(a + 3 * g->ars + k);
                v128_t t0 = wasm_i32x4_shuffle(r0, r1, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(r2, r3, 0, 4, 1, 5);
                v128_t t2 = wasm_i32x4_shuffle(r0, r1, 2, 6, 3, 7), t3 = wasm_i32x4_shuffle(r2, r3, 2, 6, 3, 7);
                *dst++ = wasm_i32x4_shuffle(t0, t1, 0, 1, 4, 5);
                *dst++ = wasm_i32x4_shuffle(t0, t1, 2, 3, 6, 7);
                *dst++ = wasm_i32x4_shuffle(t2, t3, 0, 1, 4, 5);
                *dst++ = wasm_i32x4_shuffle(t2, t3, 2, 3, 6, 7);
            }
        }
        for (; k < k1; k++) {
            const float *ak = a + (size_t)k * g->aks;
            *dst++ = wasm_f32x4_make(ak[0], ak[g->ars], ak[2 * g->ars], ak[3 * g->ars]);
        }
    }
}

#define LANE(v, l) wasm_i32x4_shuffle(v, v, l, l, l, l)

/* One MR x NR tile of c over k in [k0,k1), A from its packed panel `ap`;
 * init: start from bias (or 0), else accumulate onto c. */
static void micro_tile(const gemm_operands *g, const v128_t *ap, int i, int j, int k0, int k1,
                       int init) {
    v128_t acc[MR][NV];
    for (int r = 0; r < MR; r++) {
        for (int v = 0; v < NV; v++) {
            float *c = g->c + (size_t)(i + r) * g->ldc + j + 4 * v;
            acc[r][v] = !init ? wasm_v128_load(c)
                      : g->bias ? wasm_v128_load(g->bias + j + 4 * v) : wasm_f32x4_splat(0.0f);
        }
    }
    const float *b = g->b + (size_t)k0 * g->ldb + j;
    for (int k = k0; k < k1; k++, b += g->ldb) {
        v128_t bv[NV], av = *ap++;
        for (int v = 0; v < NV; v++) bv[v] = wasm_v128_load(b + 4 * v);
        v128_t a[MR] = {LANE(av, 0), LANE(av, 1), LANE(av, 2), LANE(av, 3)};
        for (int r = 0; r < MR; r++) {
            for (int v = 0; v < NV; v++) acc[r][v] = MADD(a[r], bv[v], acc[r][v]);
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
    for (int i0 = 0; i0 < Mt; i0 += MC) {
        int rows = Mt - i0 < MC ? Mt - i0 : MC;
        pack_a(g, i0, rows, k0, k1);
        for (int j = 0; j < Nt; j += NR) {
            for (int i = 0; i < rows; i += MR) {
                micro_tile(g, PACKED_A + (size_t)i * (k1 - k0) / 4, i0 + i, j, k0, k1, init);
            }
        }
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

void gemm_rows(float *c, int ldc, const float *a, int lda, const float *b, int ldb, int M,
               int N, int K) {
    gemm_operands g = {c, a, b, 0, lda, 1, ldb, ldc};
    gemm(&g, M, N, K, 0);
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
