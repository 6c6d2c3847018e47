// JavaScript twin of sllm/llama.py: tests/test_node_parity.py checks them equal under Node.
// The llama family's forward as the same straight line of kernel calls per layer (run.c's
// order): RMSNorm, the fused q|k|v projection, rotary embedding of q and k, grouped-query
// attention, o_proj, residual; RMSNorm, gate and up projections, SwiGLU, down projection,
// residual; then the final RMSNorm and the head; the backward pass is the line reversed.
// model.js's Network calls these for a model whose config says architecture "llama".
// Offsets are bytes into linear memory.

import { F, F64 } from "./kernels.js";
import { QK } from "./format.js";

const EMBED = "model.embed_tokens.weight", NORM = "model.norm.weight";
const LAYER_TENSORS = {
  ln1_w: "input_layernorm.weight", qkv_w: "self_attn.qkv_proj.weight", o_w: "self_attn.o_proj.weight",
  ln2_w: "post_attention_layernorm.weight", gate_w: "mlp.gate_proj.weight", up_w: "mlp.up_proj.weight",
  down_w: "mlp.down_proj.weight",
};

/** Short names of layer i's tensors, from the offsets by full name. */
export function llamaLayer(out, i) {
  const L = {};
  for (const [short, name] of Object.entries(LAYER_TENSORS)) L[short] = out[`model.layers.${i}.${name}`];
  return L;
}

/** The head's weight: the embedding (used transposed) when tied. */
export function llamaHead(out, config) { return config.tie_embeddings ? out[EMBED] : out["lm_head.weight"]; }

/** Activations of one (B, T): LlamaActivations in sllm/activations.py (with the backward
 * pass's buffers when grads). */
export function llamaActivations(c, B, T, grads, nw) {
  const N = B * T, C = c.embedding_dim, Fh = c.ffn_hidden_dim, W = c.qkv_width, H = c.num_heads;
  const a = { B, T, tokens: nw(N), targets: nw(N), positions: nw(N), x0: nw(N * C), layers: [] };
  for (let i = 0; i < c.num_layers; i++) {
    a.layers.push({
      ln1: nw(N * C), ln1_rstd: nw(N), qkv: nw(N * W), att: nw(B * H * T * T), atty: nw(N * C),
      attproj: nw(N * C), res2: nw(N * C), ln2: nw(N * C), ln2_rstd: nw(N), gate: nw(N * Fh),
      up: nw(N * Fh), hact: nw(N * Fh), down: nw(N * C), res3: nw(N * C),
    });
  }
  Object.assign(a, { lnf: nw(N * C), lnf_rstd: nw(N), logits: nw(N * c.vocab_size), losses: nw(N) });
  if (grads) {
    Object.assign(a, { dres: nw(N * C), dbranch: nw(N * C), dln: nw(N * C), dln2: nw(N * C),
      datty: nw(N * C), dqkv: nw(N * W), dh: nw(N * Fh), dgate: nw(N * Fh), dup: nw(N * Fh) });
  }
  return a;
}

/** x0 = embed_tokens[tokens]: rows copied, or dequantized from a quantized embedding. */
function embed(net, a, N, C) {
  const q = net.quantized[EMBED];
  if (q) return net.quantizedEmbedding(a, q, N, a.T, C, 0, false);
  const heap = net.k.heap, tokens = heap.i32(a.tokens, N), x0 = heap.f32(a.x0, N * C);
  const table = heap.f32(net.P[EMBED], net.config.vocab_size * C);
  for (let n = 0; n < N; n++) x0.set(table.subarray(tokens[n] * C, tokens[n] * C + C), n * C);
}

/** rope_fwd / rope_bwd over the q|k|v rows: positions tabulated when they repeat. */
export function rope(net, kernel, qkv, positions, N) {
  const c = net.config, D = c.head_dim, pos = net.k.heap.i32(positions, N);
  let rows = 0;
  for (const p of pos) rows = Math.max(rows, p + 1);
  const tableRows = rows < N ? rows : 0;
  net.k.call(kernel, qkv, positions, N, c.num_heads, c.kv_heads, D, F64(c.rope_theta),
    net.k.scratch((tableRows + 2) * D), tableRows);
}

/** The llama forward over a.tokens into a.logits (sllm/llama.py forward). */
export function llamaForward(net, a, dropout, cache) {
  const k = net.k, c = net.config, P = net.P;
  const B = a.B, T = a.T, N = B * T, C = c.embedding_dim, H = c.num_heads, Hkv = c.kv_heads;
  const Fh = c.ffn_hidden_dim, eps = F(c.norm_eps), pos = cache ? cache.pos : 0;
  embed(net, a, N, C);
  const positions = k.heap.i32(a.positions, N);
  for (let n = 0; n < N; n++) positions[n] = pos + (n % T);
  let x = a.x0;
  for (let i = 0; i < c.num_layers; i++) {
    const L = P.layers[i], la = a.layers[i];
    const fused = cache === null ? null
      : net.fusedWeights("llama_decode_block", [L.qkv_w, L.o_w, L.gate_w, L.up_w, L.down_w]);
    if (fused) { // a decode step: the whole block in one call (the lines below, fused)
      const [qkv, o, gate, up, down] = fused.offs, maxT = c.max_seq_len;
      const nb = Math.ceil(Math.max(C, Fh) / QK), work = net.decodeWork(a, N * (8 * C + 3 * Fh + 2));
      k.call("llama_decode_block", la.res3, x, cache.k[i], cache.v[i], work, L.ln1_w, qkv, o, L.ln2_w,
        gate, up, down, B, T, C, Fh, H, Hkv, maxT, pos, fused.code,
        k.scratch(Math.max(maxT, 2 * c.head_dim, N * nb * 8 + 2 * N * nb)), F64(c.rope_theta), eps);
      x = la.res3;
      continue;
    }
    k.call("rmsnorm_fwd", la.ln1, la.ln1_rstd, x, L.ln1_w, N, C, eps);
    net.matmul(la.qkv, la.ln1, L.qkv_w, 0, N, C, c.qkv_width);
    rope(net, "rope_fwd", la.qkv, a.positions, N);
    if (cache === null) {
      k.call("attention_fwd", la.atty, la.att, la.qkv, B, T, C, H, Hkv);
    } else {
      const maxT = c.max_seq_len;
      k.call("attention_decode", la.atty, la.qkv, cache.k[i], cache.v[i], B, T, C, H, maxT, pos, k.scratch(maxT), Hkv);
    }
    net.matmul(la.attproj, la.atty, L.o_w, 0, N, C, C);
    if (dropout) net.dropout(la.attproj, la.attproj, N * C, dropout, net.layerSeed(i, 0));
    k.call("residual_fwd", la.res2, x, la.attproj, N * C);
    k.call("rmsnorm_fwd", la.ln2, la.ln2_rstd, la.res2, L.ln2_w, N, C, eps);
    net.matmul(la.gate, la.ln2, L.gate_w, 0, N, C, Fh);
    net.matmul(la.up, la.ln2, L.up_w, 0, N, C, Fh);
    k.call("swiglu_fwd", la.hact, la.gate, la.up, N * Fh);
    net.matmul(la.down, la.hact, L.down_w, 0, N, Fh, C);
    if (dropout) net.dropout(la.down, la.down, N * C, dropout, net.layerSeed(i, 1));
    k.call("residual_fwd", la.res3, la.res2, la.down, N * C);
    x = la.res3;
  }
  k.call("rmsnorm_fwd", a.lnf, a.lnf_rstd, x, P[NORM], N, C, eps);
  net.head(a, N, C);
  a.dropout = dropout;
}

/** The forward line reversed (sllm/llama.py backward): fills net's gradients from the
 * dlogits in a.logits. */
export function llamaBackward(net, a) {
  const k = net.k, c = net.config, P = net.P, G = net.G, heap = k.heap;
  const B = a.B, T = a.T, N = B * T, C = c.embedding_dim, H = c.num_heads, Hkv = c.kv_heads;
  const Fh = c.ffn_hidden_dim, V = c.vocab_size, p = a.dropout, tie = c.tie_embeddings ? 1 : 0;
  net.zeroGrads();
  net.headBackward(a, N, C, V, tie);
  heap.f32(a.dres, N * C).fill(0);
  k.call("rmsnorm_bwd", a.dres, G[NORM], a.dln, a.layers[c.num_layers - 1].res3, P[NORM], a.lnf_rstd, N, C);
  for (let i = c.num_layers - 1; i >= 0; i--) {
    const L = P.layers[i], D = G.layers[i], la = a.layers[i];
    const xIn = i > 0 ? a.layers[i - 1].res3 : a.x0;
    let dbranch = a.dres;
    if (p) { net.dropout(a.dbranch, a.dres, N * C, p, net.layerSeed(i, 1)); dbranch = a.dbranch; }
    net.matmulBwd(a.dh, D.down_w, 0, dbranch, la.hact, L.down_w, N, Fh, C);
    k.call("swiglu_bwd", a.dgate, a.dup, a.dh, la.gate, la.up, N * Fh);
    net.matmulBwd(a.dln, D.gate_w, 0, a.dgate, la.ln2, L.gate_w, N, C, Fh);
    net.matmulBwd(a.dln2, D.up_w, 0, a.dup, la.ln2, L.up_w, N, C, Fh);
    k.call("residual_fwd", a.dln, a.dln, a.dln2, N * C); // ln2 feeds both gate and up
    k.call("rmsnorm_bwd", a.dres, D.ln2_w, a.dln, la.res2, L.ln2_w, la.ln2_rstd, N, C);
    dbranch = a.dres;
    if (p) { net.dropout(a.dbranch, a.dres, N * C, p, net.layerSeed(i, 0)); dbranch = a.dbranch; }
    net.matmulBwd(a.datty, D.o_w, 0, dbranch, la.atty, L.o_w, N, C, C);
    k.call("attention_bwd", a.dqkv, a.datty, la.qkv, la.att, B, T, C, H, k.scratch(T), Hkv);
    rope(net, "rope_bwd", a.dqkv, a.positions, N);
    net.matmulBwd(a.dln, D.qkv_w, 0, a.dqkv, la.ln1, L.qkv_w, N, C, c.qkv_width);
    k.call("rmsnorm_bwd", a.dres, D.ln1_w, a.dln, xIn, L.ln1_w, la.ln1_rstd, N, C);
  }
  // the embedding's gradient: dres summed per token id (a tied head already added its own);
  // none for a frozen base (an adapter attached)
  if (net.lora) return;
  const tokens = heap.i32(a.tokens, N), dres = heap.f32(a.dres, N * C), dembed = heap.f32(G[EMBED], V * C);
  for (let n = 0; n < N; n++) {
    const row = tokens[n] * C;
    for (let j = 0; j < C; j++) dembed[row + j] = Math.fround(dembed[row + j] + dres[n * C + j]);
  }
}
