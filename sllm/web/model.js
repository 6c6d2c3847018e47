// JavaScript twin of sllm/model.py, sllm/optim.py: tests/test_node_parity.py checks them equal under Node.
// The model as the same straight line of kernel calls as sllm/model.py, over the same
// WebAssembly kernels: one flat parameter buffer (and gradients, AdamW m and v) in linear
// memory, activations preallocated per (B, T) shape, a KV cache for decoding, and the
// backward line reversed. With a LoRA adapter attached (lora.js) the base is frozen: its
// gradient buffer shrinks to the norms' (scratch for their backward kernels) and the
// optimizer runs over the adapter. Offsets are bytes into linear memory.

import { F } from "./kernels.js";
import { layout, tensorToF32, QK } from "./format.js";
import { llamaActivations, llamaBackward, llamaForward, llamaHead, llamaLayer } from "./llama.js";
import { Attached, LoraError, dropoutThreshold } from "./lora.js";

const QTYPE_CODES = { q8_0: 0, q4_0: 1, q4_1: 2 }; // wasm/quant.c's qtype argument
const PACKED = 4; // added to it for rows in pack_q's layout (docs/wasm-abi.md)
const PACKED_BLOCK_BYTES = { q8_0: 16 + 4 * 32, q4_0: 16 + 4 * 16, q4_1: 32 + 4 * 16 }; // a block of four packed rows
const DEQUANT_CHUNK_FLOATS = 1 << 20; // sllm.quant: matmul_q_bwd dequantizes column slices of this many floats
const FILE_CODES = { q8_0: 2, q4_0: 3, q4_1: 4 }; // dtype codes in the model file

const LAYER_TENSORS = {
  ln1_w: "ln_1.weight", ln1_b: "ln_1.bias", attn_w: "attn.c_attn.weight", attn_b: "attn.c_attn.bias",
  proj_w: "attn.c_proj.weight", proj_b: "attn.c_proj.bias", ln2_w: "ln_2.weight", ln2_b: "ln_2.bias",
  fc_w: "mlp.c_fc.weight", fc_b: "mlp.c_fc.bias", fcproj_w: "mlp.c_proj.weight", fcproj_b: "mlp.c_proj.bias",
};

const MASK64 = (1n << 64n) - 1n;

/** sllm.model.mix_seed: a 32-bit seed from integers (splitmix64 steps). */
export function mixSeed(...parts) {
  let x = 0n;
  for (const part of parts) {
    x = (x + (BigInt(part) & MASK64) + 0x9E3779B97F4A7C15n) & MASK64;
    x = ((x ^ (x >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK64;
    x = ((x ^ (x >> 27n)) * 0x94D049BB133111EBn) & MASK64;
    x ^= x >> 31n;
  }
  return Number(x & 0xFFFFFFFFn);
}

/** Parameters, gradients and optimizer state of one model in one kernel instance. */
export class Network {
  constructor(kernels, config, tensors) {
    this.k = kernels;
    this.config = config;
    this.layout = layout(config);
    const heap = kernels.heap, total = this.layout.total;
    this.params = heap.alloc(4 * total);
    heap.f32(this.params, total).fill(0);
    this.grads = 0;
    this.setGradients(false);
    this.quantized = {}; // name -> {off, code, qtype, rows, K, nbytes}: quantized matmul weights
    this.qByOffset = new Map();
    for (const [name, slot] of Object.entries(this.layout.slots)) {
      const t = tensors[name];
      if (t.quantized) {
        const q = this.holdQuantized(t);
        this.quantized[name] = q;
        this.qByOffset.set(this.params + 4 * slot.offset, q);
      } else {
        tensorToF32(t, heap.f32(this.params + 4 * slot.offset, slot.size));
      }
    }
    this.qtype = Object.values(this.quantized).map((q) => q.qtype)[0] || null;
    this.llama = config.architecture === "llama";
    this.P = this.offsets(this.params);
    this.acts = new Map();
    this.training = false;
    this.seed = 0;
    this.dropoutStep = 0;
    this.lastSeed = 0;
    this.adam = null;
    this.lora = null; // the attached adapter (lora.js's Attached), or null
  }

  /** A quantized tensor's rows in linear memory as the module reads them fastest: packed
   * (pack_q: four rows' blocks interleaved, float16 scales as float32, as sllm's wasm
   * backends hold them) where the module exports pack_q, else ggml's rows as the file has
   * them. `code` is the kernels' qtype argument for them. */
  holdQuantized(t) {
    const heap = this.k.heap, nbytes = t.bytes.length, rows = t.shape[0], K = t.shape[1];
    const q = { off: heap.alloc(nbytes), code: QTYPE_CODES[t.dtype], qtype: t.dtype, rows, K, nbytes };
    new Uint8Array(heap.memory.buffer, q.off, nbytes).set(t.bytes);
    if (!this.k.exports.pack_q) return q;
    const ggml = q.off;
    q.off = heap.alloc(Math.ceil(rows / 4) * Math.ceil(K / QK) * PACKED_BLOCK_BYTES[q.qtype]);
    this.k.call("pack_q", q.off, ggml, rows, K, q.code);
    heap.release(ggml);
    q.code += PACKED;
    return q;
  }

  /** ggml's bytes of quantized rows q (a copy): what files and fingerprints hold. */
  quantizedBytes(q) {
    const heap = this.k.heap;
    if (q.code < PACKED) return new Uint8Array(heap.memory.buffer, q.off, q.nbytes).slice();
    const off = heap.alloc(q.nbytes);
    this.k.call("unpack_q", off, q.off, q.rows, q.K, q.code - PACKED);
    const bytes = new Uint8Array(heap.memory.buffer, off, q.nbytes).slice();
    heap.release(off);
    return bytes;
  }

  /** name -> byte offset of each tensor in the buffer at `base`; `where(name, slot)` instead
   * when given (the frozen base's norms-only gradients). */
  offsets(base, where = null) {
    const out = {};
    for (const [name, slot] of Object.entries(this.layout.slots)) out[name] = where ? where(name, slot) : base + 4 * slot.offset;
    out.layers = [];
    for (let i = 0; i < this.config.num_layers; i++) {
      if (this.config.architecture === "llama") {
        out.layers.push(llamaLayer(out, i));
        continue;
      }
      const L = {};
      for (const [short, name] of Object.entries(LAYER_TENSORS)) L[short] = out[`h.${i}.${name}`];
      out.layers.push(L);
    }
    out.lm_head = this.config.architecture === "llama" ? llamaHead(out, this.config)
      : this.config.tie_embeddings ? out.wte : out["lm_head.weight"];
    return out;
  }

  /** Float32Array copy of one parameter (by GPT-2 name). */
  parameter(name) {
    const slot = this.layout.slots[name];
    return this.k.heap.f32(this.P[name], slot.size).slice();
  }

  // ---- activations ------------------------------------------------------------------
  activations(B, T, grads) {
    const key = `${B},${T},${grads}`;
    let a = this.acts.get(key);
    if (!a) {
      if (this.acts.size >= 3) {
        const [oldKey, old] = this.acts.entries().next().value;
        old.owned.forEach((off) => this.k.heap.release(off));
        this.acts.delete(oldKey);
      }
      a = this.newActivations(B, T, grads);
      this.acts.set(key, a);
    }
    return a;
  }

  newActivations(B, T, grads) {
    const c = this.config, C = c.embedding_dim, F3 = c.ffn_hidden_dim, V = c.vocab_size, H = c.num_heads;
    const owned = [], N = B * T;
    const nw = (n) => { const off = this.k.heap.alloc(4 * n); owned.push(off); return off; };
    if (this.llama) return Object.assign(llamaActivations(c, B, T, grads, nw), { owned });
    const a = { B, T, owned, tokens: nw(N), targets: nw(N), x0: nw(N * C), layers: [] };
    for (let i = 0; i < c.num_layers; i++) {
      a.layers.push({
        ln1: nw(N * C), ln1_mean: nw(N), ln1_rstd: nw(N), qkv: nw(N * 3 * C), att: nw(B * H * T * T),
        atty: nw(N * C), attproj: nw(N * C), res2: nw(N * C), ln2: nw(N * C), ln2_mean: nw(N),
        ln2_rstd: nw(N), fch: nw(N * F3), fch_act: nw(N * F3), fcproj: nw(N * C), res3: nw(N * C),
      });
    }
    Object.assign(a, { lnf: nw(N * C), lnf_mean: nw(N), lnf_rstd: nw(N), logits: nw(N * V), losses: nw(N) });
    if (grads) {
      Object.assign(a, { dres: nw(N * C), dbranch: nw(N * C), dln: nw(N * C), datty: nw(N * C),
        dqkv: nw(N * 3 * C), dfch: nw(N * F3) });
    }
    return a;
  }

  /** A KV cache: per layer keys and values (1, Hkv, max_seq_len, D). */
  newCache() {
    const c = this.config, n = c.kv_heads * c.max_seq_len * c.head_dim, heap = this.k.heap;
    const cache = { k: [], v: [], pos: 0 };
    for (let i = 0; i < c.num_layers; i++) {
      for (const kind of ["k", "v"]) {
        const off = heap.alloc(4 * n);
        heap.f32(off, n).fill(0);
        cache[kind].push(off);
      }
    }
    return cache;
  }

  releaseCache(cache) {
    for (const off of cache.k.concat(cache.v)) this.k.heap.release(off);
    cache.k = cache.v = [];
  }

  // ---- forward ------------------------------------------------------------------------
  /** Run tokens (B rows of T ids) through the model; returns the activations. */
  run(tokens, B, T, grads, cache = null) {
    const c = this.config;
    if (!(T >= 1 && T <= c.max_seq_len) || B < 1) {
      throw new Error(`tokens shape (${B}, ${T}): need B >= 1 and 1 <= T <= max_seq_len (${c.max_seq_len})`);
    }
    for (const t of tokens) {
      if (!(Number.isInteger(t) && t >= 0 && t < c.vocab_size)) throw new Error(`token ids must be in [0, ${c.vocab_size}), got ${t}`);
    }
    const a = this.activations(B, T, grads);
    this.k.heap.i32(a.tokens, B * T).set(tokens);
    const dropout = this.training && cache === null ? c.dropout : 0;
    const loraP = this.lora && this.training && cache === null ? this.lora.adapter.config.dropout : 0;
    if (dropout || loraP) {
      this.dropoutStep += 1;
      this.lastSeed = mixSeed(this.seed, this.dropoutStep);
    }
    if (this.lora) this.lora.dropout = loraP; // this forward's (and its backward's)
    this.forward(a, dropout, cache);
    return a;
  }

  forward(a, dropout, cache) {
    if (this.llama) return llamaForward(this, a, dropout, cache);
    const k = this.k, c = this.config, P = this.P;
    const B = a.B, T = a.T, N = B * T, C = c.embedding_dim, H = c.num_heads, Fh = c.ffn_hidden_dim;
    const pos = cache ? cache.pos : 0;
    if (this.quantized.wte) this.quantizedEmbedding(a, this.quantized.wte, N, T, C, pos, true);
    else k.call("encoder_fwd", a.x0, a.tokens, P.wte, P.wpe, N, T, C, pos);
    let x = a.x0;
    for (let i = 0; i < c.num_layers; i++) {
      const L = P.layers[i], la = a.layers[i];
      const fused = cache === null ? null : this.fusedBlock(L);
      if (fused) { // a decode step: the whole block in one call (the lines below, fused)
        const nb = Math.ceil(Math.max(C, Fh) / QK), maxT = c.max_seq_len;
        k.call("decode_block", la.res3, x, cache.k[i], cache.v[i], this.decodeWork(a, N * (8 * C + 2 * Fh + 2)), ...fused.tensors,
          B, T, C, Fh, H, maxT, c.activation === "gelu" ? 0 : 1, fused.code,
          k.scratch(Math.max(maxT, N * nb * 8 + 2 * N * nb)), pos);
        x = la.res3;
        continue;
      }
      k.call("layernorm_fwd", la.ln1, la.ln1_mean, la.ln1_rstd, x, L.ln1_w, L.ln1_b, N, C);
      this.matmul(la.qkv, la.ln1, L.attn_w, L.attn_b, N, C, 3 * C);
      if (cache === null) {
        k.call("attention_fwd", la.atty, la.att, la.qkv, B, T, C, H, H);
      } else {
        const maxT = c.max_seq_len;
        k.call("attention_decode", la.atty, la.qkv, cache.k[i], cache.v[i], B, T, C, H, maxT, pos, k.scratch(maxT), H);
      }
      this.matmul(la.attproj, la.atty, L.proj_w, L.proj_b, N, C, C);
      if (dropout) this.dropout(la.attproj, la.attproj, N * C, dropout, mixSeed(this.lastSeed, i, 0));
      k.call("residual_fwd", la.res2, x, la.attproj, N * C);
      k.call("layernorm_fwd", la.ln2, la.ln2_mean, la.ln2_rstd, la.res2, L.ln2_w, L.ln2_b, N, C);
      this.matmul(la.fch, la.ln2, L.fc_w, L.fc_b, N, C, Fh);
      k.call(c.activation === "gelu" ? "gelu_fwd" : "relu_fwd", la.fch_act, la.fch, N * Fh);
      this.matmul(la.fcproj, la.fch_act, L.fcproj_w, L.fcproj_b, N, Fh, C);
      if (dropout) this.dropout(la.fcproj, la.fcproj, N * C, dropout, mixSeed(this.lastSeed, i, 1));
      k.call("residual_fwd", la.res3, la.res2, la.fcproj, N * C);
      x = la.res3;
    }
    k.call("layernorm_fwd", a.lnf, a.lnf_mean, a.lnf_rstd, x, P["ln_f.weight"], P["ln_f.bias"], N, C);
    this.head(a, N, C);
    a.dropout = dropout;
  }

  /** The matmul weights of a fused block kernel as it reads them (a quantized one's rows)
   * and their quantized code (-1: float), or null where a decode step runs the layer kernel
   * by kernel (sllm.model's _fused_blocks): a module without `kernel`, an adapter
   * attached, or weights of mixed types. */
  fusedWeights(kernel, weights) {
    if (!this.k.exports[kernel] || this.lora) return null;
    const qs = weights.map((w) => this.qByOffset.get(w)), code = qs[0] ? qs[0].code : -1;
    if (qs.some((q) => (q ? q.code : -1) !== code)) return null;
    return { code, offs: weights.map((w, i) => (qs[i] ? qs[i].off : w)) };
  }

  /** Layer L's tensors and code for the module's decode_block, or null (fusedWeights). */
  fusedBlock(L) {
    const f = this.fusedWeights("decode_block", [L.attn_w, L.proj_w, L.fc_w, L.fcproj_w]);
    if (!f) return null;
    const [attn, proj, fc, fcproj] = f.offs;
    return { code: f.code, tensors: [L.ln1_w, L.ln1_b, attn, L.attn_b, proj, L.proj_b, L.ln2_w,
      L.ln2_b, fc, L.fc_b, fcproj, L.fcproj_b] };
  }

  /** A fused block's workspace of n floats for these activations, made on first use
   * (reference.decode_block_workspace, llama_decode_block_workspace). */
  decodeWork(a, n) {
    if (!a.work) {
      a.work = this.k.heap.alloc(4 * n);
      a.owned.push(a.work);
    }
    return a.work;
  }

  /** logits = lnf @ lm_head (the embedding, transposed, when tied). */
  head(a, N, C) {
    const k = this.k, P = this.P, V = this.config.vocab_size, tie = this.config.tie_embeddings ? 1 : 0;
    if (this.qByOffset.has(P.lm_head)) this.matmul(a.logits, a.lnf, P.lm_head, 0, N, C, V);
    else k.call("matmul_fwd", a.logits, a.lnf, P.lm_head, 0, N, C, V, tie, tie ? k.scratch(C * V) : 0);
  }

  /** The dropout seed of layer i's branch j (sllm.model's _dropout_seed). */
  layerSeed(i, j) { return mixSeed(this.lastSeed, i, j); }

  /** out = inp @ W + bias; a quantized W runs the quantized matmul (rows along K); plus the
   * LoRA delta when W is a target of the attached adapter. */
  matmul(out, inp, w, bias, N, C, OC) {
    this.baseMatmul(out, inp, w, bias, N, C, OC);
    const lw = this.lora && this.lora.weights.get(w);
    if (lw) this.lora.forward(out, inp, lw, N, this.loraSeed(lw));
  }

  /** The dropout seed of the adapter's input at target lw (sllm.model's mix_seed(last, index, 2)). */
  loraSeed(lw) { return this.lora.dropout ? mixSeed(this.lastSeed, lw.index, 2) : 0; }

  baseMatmul(out, inp, w, bias, N, C, OC) {
    const q = this.qByOffset.get(w);
    if (!q) {
      this.k.call("matmul_fwd", out, inp, w, bias, N, C, OC, 0, 0);
      return;
    }
    if (!this.k.exports.matmul_q_fwd) {
      throw new Error(`this model's weights are ${q.qtype}, but the WebAssembly module has no quantized matmul (matmul_q_fwd); export the model with --dtype f32 or f16`);
    }
    const nb = Math.ceil(C / QK);
    this.k.call("matmul_q_fwd", out, inp, q.off, bias, N, C, OC, q.code, this.k.scratch(N * nb * 8 + 2 * N * nb));
  }

  /** x0 = the dequantized embedding rows q of the tokens (the module's embed_q_fwd), plus
   * wpe (GPT-2's learned positions) when addPositions, as sllm/model.py and sllm/llama.py do. */
  quantizedEmbedding(a, q, N, T, C, pos, addPositions) {
    if (!this.k.exports.embed_q_fwd) {
      throw new Error(`this model's embedding is ${q.qtype}, but the WebAssembly module has no quantized lookup (embed_q_fwd): rebuild the modules, or export the model with --dtype f32 or f16`);
    }
    this.k.call("embed_q_fwd", a.x0, a.tokens, q.off, N, C, q.code);
    if (!addPositions) return;
    const heap = this.k.heap, x0 = heap.f32(a.x0, N * C);
    const wpe = heap.f32(this.P.wpe, this.config.max_seq_len * C);
    for (let n = 0; n < N; n++) {
      const at = n * C, from = (pos + (n % T)) * C;
      for (let j = 0; j < C; j++) x0[at + j] = Math.fround(x0[at + j] + wpe[from + j]);
    }
  }

  /** The tensors to save: [name, data, shape, file dtype code] (quantized rows as ggml's bytes). */
  savedTensors() {
    const out = [];
    for (const [name, slot] of Object.entries(this.layout.slots)) {
      const q = this.quantized[name];
      if (q) out.push([name, this.quantizedBytes(q), [q.rows, q.K], FILE_CODES[q.qtype]]);
      else out.push([name, this.parameter(name), slot.shape, 0]);
    }
    return out;
  }

  dropout(out, inp, n, p, seed) {
    this.k.call("dropout_fwd", out, inp, n, dropoutThreshold(p), F(1 - p), seed >>> 0);
  }

  /** Mean cross-entropy over targets != -1; with grads, fills the gradient buffer. */
  lossAndGrads(tokens, targets, B, T, grads) {
    const c = this.config, V = c.vocab_size, N = B * T;
    if (grads && this.qtype && !this.lora) {
      throw new Error(`this model is quantized (${this.qtype}): only a LoRA adapter trains on it (its weights stay frozen); for a full fine-tune use a float model (sllm export-web --dtype f32)`);
    }
    if (grads && this.qtype && !this.k.exports.matmul_q_bwd) {
      throw new Error(`this WebAssembly module has no matmul_q_bwd: a LoRA adapter cannot train on a ${this.qtype} model here`);
    }
    for (const t of targets) {
      if (!(Number.isInteger(t) && t >= -1 && t < V)) throw new Error(`targets must be in [-1, ${V}), got ${t}`);
    }
    const a = this.run(tokens, B, T, grads);
    this.k.heap.i32(a.targets, N).set(targets);
    const count = Math.max(targets.filter((t) => t >= 0).length, 1);
    this.k.call("softmax_xent", a.losses, grads ? a.logits : 0, a.logits, a.targets, N, V, F(grads ? 1 / count : 1));
    let sum = 0;
    for (const l of this.k.heap.f32(a.losses, N)) sum += l;
    if (grads) this.backward(a);
    return sum / count;
  }

  // ---- backward: the forward line, reversed --------------------------------------------
  backward(a) {
    if (this.llama) return llamaBackward(this, a);
    const k = this.k, c = this.config, P = this.P, G = this.G, heap = k.heap;
    const B = a.B, T = a.T, N = B * T, C = c.embedding_dim, H = c.num_heads, Fh = c.ffn_hidden_dim;
    const V = c.vocab_size, p = a.dropout, tie = c.tie_embeddings ? 1 : 0;
    this.zeroGrads();
    const xLast = a.layers[c.num_layers - 1].res3;
    this.headBackward(a, N, C, V, tie);
    heap.f32(a.dres, N * C).fill(0);
    k.call("layernorm_bwd", a.dres, G["ln_f.weight"], G["ln_f.bias"], a.dln, xLast, P["ln_f.weight"],
      a.lnf_mean, a.lnf_rstd, N, C);
    for (let i = c.num_layers - 1; i >= 0; i--) {
      const L = P.layers[i], D = G.layers[i], la = a.layers[i];
      const xIn = i > 0 ? a.layers[i - 1].res3 : a.x0;
      let dbranch = a.dres;
      if (p) { this.dropout(a.dbranch, a.dres, N * C, p, mixSeed(this.lastSeed, i, 1)); dbranch = a.dbranch; }
      this.matmulBwd(a.dfch, D.fcproj_w, D.fcproj_b, dbranch, la.fch_act, L.fcproj_w, N, Fh, C);
      k.call(c.activation === "gelu" ? "gelu_bwd" : "relu_bwd", a.dfch, a.dfch, la.fch, N * Fh);
      this.matmulBwd(a.dln, D.fc_w, D.fc_b, a.dfch, la.ln2, L.fc_w, N, C, Fh);
      k.call("layernorm_bwd", a.dres, D.ln2_w, D.ln2_b, a.dln, la.res2, L.ln2_w, la.ln2_mean, la.ln2_rstd, N, C);
      dbranch = a.dres;
      if (p) { this.dropout(a.dbranch, a.dres, N * C, p, mixSeed(this.lastSeed, i, 0)); dbranch = a.dbranch; }
      this.matmulBwd(a.datty, D.proj_w, D.proj_b, dbranch, la.atty, L.proj_w, N, C, C);
      k.call("attention_bwd", a.dqkv, a.datty, la.qkv, la.att, B, T, C, H, k.scratch(T), H);
      this.matmulBwd(a.dln, D.attn_w, D.attn_b, a.dqkv, la.ln1, L.attn_w, N, C, 3 * C);
      k.call("layernorm_bwd", a.dres, D.ln1_w, D.ln1_b, a.dln, xIn, L.ln1_w, la.ln1_mean, la.ln1_rstd, N, C);
    }
    if (!this.lora) k.call("encoder_bwd", G.wte, G.wpe, a.dres, a.tokens, N, T, C, 0); // a frozen base: none
  }

  /** dln = dlogits @ head^T, and the head's gradient unless the base is frozen. */
  headBackward(a, N, C, V, tie) {
    const k = this.k, P = this.P;
    if (this.lora) this.frozenInputGrad(a.dln, a.logits, P.lm_head, N, C, V, tie);
    else k.call("matmul_bwd", a.dln, this.G.lm_head, 0, a.logits, a.lnf, P.lm_head, N, C, V, tie, tie ? 0 : k.scratch(C * V));
  }

  /** matmul_bwd; for a frozen base (an adapter attached) only the input gradient, plus the
   * adapter's part and its gradients when W is one of its targets (SLLM._matmul_bwd). */
  matmulBwd(dinp, dw, db, dout, inp, w, N, C, OC) {
    if (!this.lora) {
      this.k.call("matmul_bwd", dinp, dw, db, dout, inp, w, N, C, OC, 0, this.k.scratch(C * OC));
      return;
    }
    this.frozenInputGrad(dinp, dout, w, N, C, OC, 0);
    const lw = this.lora.weights.get(w);
    if (lw) this.lora.backward(dinp, dout, inp, lw, N, this.loraSeed(lw));
  }

  /** dinp (N, C) = dout (N, OC) @ W^T for a frozen W (C, OC) (transW: W stored (OC, C)):
   * matmul_fwd reading W transposed, or matmul_q_bwd for quantized rows. */
  frozenInputGrad(dinp, dout, w, N, C, OC, transW) {
    const k = this.k, q = this.qByOffset.get(w);
    if (q) {
      const cols = Math.min(Math.max(1, Math.floor(DEQUANT_CHUNK_FLOATS / (Math.max(OC, 1) * QK))), Math.ceil(C / QK)) * QK;
      k.call("matmul_q_bwd", dinp, dout, q.off, N, C, OC, q.code, k.scratch(OC * cols), cols);
      return;
    }
    k.call("matmul_fwd", dinp, dout, w, 0, N, OC, C, transW ? 0 : 1, transW ? 0 : k.scratch(C * OC));
  }

  /** Zero the gradients a backward pass accumulates into (the adapter's too). */
  zeroGrads() {
    const heap = this.k.heap;
    heap.f32(this.grads, this.gradFloats).fill(0);
    if (this.lora) heap.f32(this.lora.grads, this.lora.layout.total).fill(0);
  }

  // ---- LoRA adapters (lora.js) -----------------------------------------------------------
  /** Add `adapter`'s delta at its targets in every forward and freeze the base: backward then
   * fills only the adapter's gradients, and the optimizer updates only it (attach_adapter). */
  attachAdapter(adapter) {
    if (this.lora) throw new LoraError("an adapter is attached already; detach it first");
    this.lora = new Attached(this, adapter);
    this.setGradients(true);
    return this.lora;
  }

  /** Remove the attached adapter (its tensors copied back) and restore the base's own
   * gradients; returns the adapter, or null when none is attached. */
  detachAdapter() {
    if (!this.lora) return null;
    const attached = this.lora;
    this.lora = null;
    this.setGradients(false);
    return attached.detach();
  }

  /** What the optimizer updates: the attached adapter, else the model (SLLM.trainable). */
  trainable() { return this.lora || this; }

  /** The base's gradient buffer: every parameter's, or (frozen) the vectors' only, which the
   * norms' backward kernels write beside their input gradients (SLLM._freeze_grads). */
  setGradients(frozen) {
    const heap = this.k.heap, { total, decayCount } = this.layout;
    if (this.grads) heap.release(this.grads);
    this.gradFloats = Math.max(frozen ? total - decayCount : total, 1);
    this.grads = heap.alloc(4 * this.gradFloats);
    heap.f32(this.grads, this.gradFloats).fill(0);
    this.G = frozen ? this.offsets(0, (name, slot) => (slot.offset >= decayCount ? this.grads + 4 * (slot.offset - decayCount) : 0))
      : this.offsets(this.grads);
  }

  // ---- optimizer: sllm.optim.AdamW + clip_grad_norm ------------------------------------
  /** Scale the gradients to a global L2 norm of at most maxNorm; returns the norm before. */
  clipGradNorm(maxNorm) {
    const t = this.trainable();
    let sq = 0;
    if (this.k.exports.grad_norm_sq) { // the kernel Python's optimizer uses (float64 sums)
      const out = this.k.scratch(2);
      this.k.call("grad_norm_sq", t.grads, t.layout.total, out);
      sq = new Float64Array(this.k.heap.memory.buffer, out, 1)[0];
    }
    const g = this.k.heap.f32(t.grads, t.layout.total); // after scratch(): a grown memory detaches views
    if (!this.k.exports.grad_norm_sq) {
      for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
    }
    const norm = Math.sqrt(sq);
    if (Number.isFinite(norm) && norm > maxNorm) {
      const s = Math.fround(maxNorm / (norm + 1e-6));
      for (let i = 0; i < g.length; i++) g[i] *= s;
    }
    return norm;
  }

  /** One AdamW step (decoupled weight decay on matrices only) from the gradient buffer. */
  adamwStep({ lr, betas = [0.9, 0.99], eps = 1e-8, weightDecay = 0.1 }) {
    const heap = this.k.heap, t = this.trainable(), total = t.layout.total;
    if (!t.adam) {
      t.adam = { m: heap.alloc(4 * total), v: heap.alloc(4 * total), step: 0 };
      heap.f32(t.adam.m, total).fill(0);
      heap.f32(t.adam.v, total).fill(0);
    }
    const s = ++t.adam.step, [b1, b2] = betas;
    this.k.call("adam_update", t.params, t.grads, t.adam.m, t.adam.v, total, F(lr), F(b1), F(b2),
      F(eps), F(weightDecay), t.layout.decayCount, 1, F(1 - b1 ** s), F(1 - b2 ** s));
  }
}
