/* The fused decode block: one GPT-2 block over a KV-cache decode step's new rows in one host
 * call (the optional kernel decode_block / decode_block_batch of sllm/backends/base.py).
 * It runs the very kernels a decode step calls one by one (layernorm_fwd, matmul_fwd or
 * matmul_q_fwd, attention_decode, residual_fwd, gelu_fwd / relu_fwd), writing each one's
 * arguments into the parameter block as the host would: the results are theirs, bit for
 * bit, and a small model's token no longer crosses the host boundary ten times a layer. */
#include "abi.h"

void layernorm_fwd(void);
void matmul_fwd(void);
void matmul_q_fwd(void);
void attention_decode(void);
void attention_decode_batch(void);
void residual_fwd(void);
void gelu_fwd(void);
void relu_fwd(void);

/* Write n argument slots, then run one kernel. */
static void run(void (*kernel)(void), int n, const uint32_t *slots) {
    for (int i = 0; i < n; i++) ARGS[i].u = slots[i];
    kernel();
}

static uint32_t f32_at(const float *p) { return (uint32_t)(uintptr_t)p; }

/* out (N,OC) = inp (N,K) @ W (+ bias): matmul_fwd on float W (K,OC), or matmul_q_fwd on
 * quantized rows (OC, row bytes) when qcode >= 0 (its qtype argument). */
static void matmul(const float *out, const float *inp, uint32_t w, uint32_t bias, int N, int K,
                   int OC, int qcode, uint32_t scratch) {
    if (qcode < 0) {
        uint32_t a[] = {f32_at(out), f32_at(inp), w, bias, N, K, OC, 0, 0};
        run(matmul_fwd, 9, a);
    } else {
        uint32_t a[] = {f32_at(out), f32_at(inp), w, bias, N, K, OC, qcode, scratch};
        run(matmul_q_fwd, 9, a);
    }
}

/* Slots: 0 out (B,Tn,C), 1 x (B,Tn,C), 2 kcache, 3 vcache, 4 work (N*(8C+2F+2)),
 * 5-16 the block's tensors (ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b,
 * fc_w, fc_b, fcproj_w, fcproj_b), 17 B, 18 Tn, 19 C, 20 F, 21 n_head, 22 maxT,
 * 23 activation (0 GELU, 1 ReLU), 24 qcode (-1: float weights), 25 scratch (max of maxT and
 * matmul_q_fwd's floats), then decode_block: 26 pos; decode_block_batch (Tn = 1): 26 slots,
 * 27 positions. The work buffer is cut as reference.decode_block_views cuts it. */
static void block(int batch) {
    uint32_t a[28];
    for (int i = 0; i < 28; i++) a[i] = ARGS[i].u;
    const float *out = (const float *)(uintptr_t)a[0], *x = (const float *)(uintptr_t)a[1];
    const uint32_t *p = a + 5;
    int B = (int)a[17], Tn = (int)a[18], C = (int)a[19], F = (int)a[20], H = (int)a[21];
    int maxT = (int)a[22], relu = (int)a[23], qcode = (int)a[24];
    uint32_t scratch = a[25];
    size_t N = (size_t)B * Tn;
    float *ln = (float *)(uintptr_t)a[4], *mean = ln + N * C, *rstd = mean + N;
    float *qkv = rstd + N, *atty = qkv + N * 3 * C, *attproj = atty + N * C;
    float *res2 = attproj + N * C, *fch = res2 + N * C, *fch_act = fch + N * F;
    float *fcproj = fch_act + N * F;

    uint32_t ln1[] = {f32_at(ln), f32_at(mean), f32_at(rstd), f32_at(x), p[0], p[1], N, C};
    run(layernorm_fwd, 8, ln1);
    matmul(qkv, ln, p[2], p[3], N, C, 3 * C, qcode, scratch);
    if (batch) {
        uint32_t at[] = {f32_at(atty), f32_at(qkv), a[2], a[3], a[26], a[27], B, C, H, maxT,
                         scratch, H};
        run(attention_decode_batch, 12, at);
    } else {
        uint32_t at[] = {f32_at(atty), f32_at(qkv), a[2], a[3], B, Tn, C, H, maxT, a[26],
                         scratch, H};
        run(attention_decode, 12, at);
    }
    matmul(attproj, atty, p[4], p[5], N, C, C, qcode, scratch);
    uint32_t r1[] = {f32_at(res2), f32_at(x), f32_at(attproj), N * C};
    run(residual_fwd, 4, r1);
    uint32_t ln2[] = {f32_at(ln), f32_at(mean), f32_at(rstd), f32_at(res2), p[6], p[7], N, C};
    run(layernorm_fwd, 8, ln2);
    matmul(fch, ln, p[8], p[9], N, C, F, qcode, scratch);
    uint32_t act[] = {f32_at(fch_act), f32_at(fch), N * F};
    run(relu ? relu_fwd : gelu_fwd, 3, act);
    matmul(fcproj, fch_act, p[10], p[11], N, F, C, qcode, scratch);
    uint32_t r2[] = {f32_at(out), f32_at(res2), f32_at(fcproj), N * C};
    run(residual_fwd, 4, r2);
}

EXPORT(decode_block) { block(0); }

EXPORT(decode_block_batch) { block(1); }
