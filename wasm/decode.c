/* The fused decode blocks: one GPT-2 or llama block over a KV-cache decode step's new rows
 * in one host call (the optional kernels decode_block / decode_block_batch and
 * llama_decode_block / llama_decode_block_batch of sllm/backends/base.py).
 * It runs the very kernels a decode step calls one by one (layernorm_fwd, matmul_fwd or
 * matmul_q_fwd, attention_decode, residual_fwd, gelu_fwd / relu_fwd; the llama block's
 * rmsnorm_fwd, rope_fwd and swiglu_fwd), writing each one's
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
void rmsnorm_fwd(void);
void rope_fwd(void);
void swiglu_fwd(void);

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

/* Slots: 0 out (B,Tn,C), 1 x (B,Tn,C), 2 kcache, 3 vcache, 4 work (N*(8C+3F+2)), 5-11 the
 * block's tensors (ln1_w, qkv_w, o_w, ln2_w, gate_w, up_w, down_w), 12 B, 13 Tn, 14 C, 15 F,
 * 16 H, 17 Hkv, 18 maxT, 19 pos, 20 qcode (-1: float weights), 21 scratch (max of maxT, 2D
 * and matmul_q_fwd's floats), 22-23 theta (float64), 24 eps (float32); llama_decode_block:
 * the rows of every sequence are at positions pos..pos+Tn-1; llama_decode_block_batch
 * (Tn = 1, pos unused): 25 slots, 26 positions, row b in cache slot slots[b] at
 * positions[b]. The work buffer is cut as reference.llama_decode_block_views cuts it (the
 * rows' positions in it, as int32). */
static void llama_block(int batch) {
    uint32_t a[27];
    for (int i = 0; i < 27; i++) a[i] = ARGS[i].u;
    const float *out = (const float *)(uintptr_t)a[0], *x = (const float *)(uintptr_t)a[1];
    const uint32_t *p = a + 5;
    int B = (int)a[12], Tn = (int)a[13], C = (int)a[14], F = (int)a[15], H = (int)a[16];
    int Hkv = (int)a[17], maxT = (int)a[18], pos = (int)a[19], qcode = (int)a[20];
    uint32_t scratch = a[21], eps = a[24];
    int D = C / H, W = (H + 2 * Hkv) * D;
    size_t N = (size_t)B * Tn;
    float *ln = (float *)(uintptr_t)a[4], *rstd = ln + N * C;
    int32_t *positions = (int32_t *)(rstd + N);
    float *qkv = (float *)(positions + N), *atty = qkv + N * 3 * C, *attproj = atty + N * C;
    float *res2 = attproj + N * C, *gate = res2 + N * C, *up = gate + N * F, *hact = up + N * F;
    float *down = hact + N * F;
    const int32_t *given = (const int32_t *)(uintptr_t)a[26];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tn; t++) positions[b * Tn + t] = batch ? given[b] : pos + t;

    uint32_t n1[] = {f32_at(ln), f32_at(rstd), f32_at(x), p[0], N, C, eps};
    run(rmsnorm_fwd, 7, n1);
    matmul(qkv, ln, p[1], 0, N, C, W, qcode, scratch);
    /* rope's angles computed per row (table_rows 0): the same floats as from its table */
    uint32_t ro[] = {f32_at(qkv), (uint32_t)(uintptr_t)positions, N, H, Hkv, D, a[22], a[23],
                     scratch, 0};
    run(rope_fwd, 10, ro);
    if (batch) {
        uint32_t at[] = {f32_at(atty), f32_at(qkv), a[2], a[3], a[25], a[26], B, C, H, maxT,
                         scratch, Hkv};
        run(attention_decode_batch, 12, at);
    } else {
        uint32_t at[] = {f32_at(atty), f32_at(qkv), a[2], a[3], B, Tn, C, H, maxT, pos, scratch,
                         Hkv};
        run(attention_decode, 12, at);
    }
    matmul(attproj, atty, p[2], 0, N, C, C, qcode, scratch);
    uint32_t r1[] = {f32_at(res2), f32_at(x), f32_at(attproj), N * C};
    run(residual_fwd, 4, r1);
    uint32_t n2[] = {f32_at(ln), f32_at(rstd), f32_at(res2), p[3], N, C, eps};
    run(rmsnorm_fwd, 7, n2);
    matmul(gate, ln, p[4], 0, N, C, F, qcode, scratch);
    matmul(up, ln, p[5], 0, N, C, F, qcode, scratch);
    uint32_t sw[] = {f32_at(hact), f32_at(gate), f32_at(up), N * F};
    run(swiglu_fwd, 4, sw);
    matmul(down, hact, p[6], 0, N, F, C, qcode, scratch);
    uint32_t r2[] = {f32_at(out), f32_at(res2), f32_at(down), N * C};
    run(residual_fwd, 4, r2);
}

EXPORT(llama_decode_block) { llama_block(0); }

EXPORT(llama_decode_block_batch) { llama_block(1); }
