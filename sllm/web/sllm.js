// JavaScript twin of sllm/generate.py, sllm/sampler.py, sllm/chat.py: tests/test_node_parity.py checks them equal under Node
// (constrained output: constrain.js, twin of sllm/constrain.py, tests/test_constrain_node.py).
// sllm in the browser: load a .sllm model, generate text, chat, fine-tune, save.
//
//   import { load } from "./sllm.js";
//   const m = await load("model.sllm");          // a URL, or the file's bytes
//   const text = await m.generate("Once upon a time", { maxTokens: 40, temperature: 0 });
//   const json = await m.generate("A person:", { maxTokens: 60, jsonSchema: {type: "object", ...} });
//   (also { regex: "[a-z]+" }, { choices: ["yes", "no"] }, { jsonObject: true })
//   for await (const piece of m.stream("One day", { maxTokens: 40 })) show(piece);
//   await m.finetune(text, { steps: 20, lr: 1e-3, onProgress: ({ step, loss }) => ... });
//   const bytes = await m.save();                 // SLLM bytes that Python's sllm.load reads
//   await m.finetune(text, { lora: { rank: 8 }, steps: 30 });  // a LoRA adapter; the base stays as it was
//   const adapter = m.saveAdapter();              // adapter bytes that sllm.lora.Adapter.load reads
//   m.detachAdapter();                            // back to the base model
//   await m.loadAdapter(adapter);                 // a URL or bytes (an adapter from `sllm finetune` too)
//
// The model runs the same WebAssembly kernels as Python's wasm backends (see
// docs/browser.md and docs/wasm-abi.md); nothing here needs a build step.

import { readModel, writeModel, configToDict, FormatError, ConfigError } from "./format.js";
import { tokenizerFromDict, unknownReport, TokenizerError } from "./tokenizers.js";
import { Kernels, features, MODULES } from "./kernels.js";
import { Network } from "./model.js";
import { compileFor, GrammarError, ConstraintError } from "./constrain.js";
import { Adapter, LoraError, fingerprint, loraConfig } from "./lora.js";

export { FormatError, ConfigError, TokenizerError, GrammarError, ConstraintError, LoraError, features, readModel };
export const VERSION = "0.1.0";
const USER_PREFIX = "A:", BOT_PREFIX = "B:";

/**
 * Load a model: `source` is a URL (string or URL) or the bytes of a .sllm file.
 * options: {wasm: "auto" | "relaxed" | "simd128" | "scalar", features: {simd, relaxed} as
 * detected elsewhere (default: detected here), wasmBase: URL of the .wasm files}.
 * Throws FormatError for a file that is not a valid SLLM model.
 */
export async function load(source, options = {}) {
  const bytes = await fetchBytes(source);
  const name = typeof source === "string" || source instanceof URL ? String(source) : "model";
  const file = readModel(bytes, name);
  const base = options.wasmBase ? new URL(options.wasmBase, location.href) : new URL(".", import.meta.url);
  const kernels = await Kernels.create((name) => fetchBytes(new URL(name, base)), options.wasm || "auto",
    options.features || null);
  return new Model(kernels, file, options.name || name.split("/").pop());
}

async function fetchBytes(source) {
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) return new Uint8Array(source.buffer || source);
  if (typeof source !== "string" && !(source instanceof URL)) {
    throw new TypeError(`load() takes a URL or the bytes of a .sllm file, got ${typeof source}`);
  }
  const response = await fetch(source, { cache: "no-cache" }); // a re-exported model is picked up
  if (!response.ok) throw new Error(`${source}: HTTP ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** A loaded model with its tokenizer: generate, stream, chat, finetune, save. */
export class Model {
  constructor(kernels, file, name = "model") {
    this.kernels = kernels;
    this.file = file;
    this.name = name;
    this.baseFingerprint = null; // computed when an adapter first needs it
    this.config = file.config;
    this.tokenizer = file.tokenizer ? tokenizerFromDict(file.tokenizer) : null;
    this.net = new Network(kernels, file.config, file.tensors);
    this.metadata = { ...file.metadata };
    this.stats = null;
    this.finetuned = 0;
  }

  /** Which module runs the kernels: "relaxed", "simd128" or "scalar". */
  get wasm() { return this.kernels.variant; }

  /** Number of trainable scalars. */
  numParameters() { return this.net.layout.numParameters; }

  requireTokenizer() {
    if (!this.tokenizer) throw new TokenizerError("this model file has no tokenizer inside; it cannot read text");
    return this.tokenizer;
  }

  /** Token ids of `text` ([UNK] for unknown words, as Python). */
  encode(text) { return this.requireTokenizer().encode(text); }

  /** Text of token ids. */
  decode(ids) { return this.requireTokenizer().decode(ids); }

  /** The words or characters of `text` that are not in the vocabulary. */
  unknownPieces(text) { return this.requireTokenizer().unknownPieces(text); }

  /** "38 of 324 tokens are not in this model's vocabulary ..." for `text`, or null when
   * nothing becomes [UNK] (always null with byte fallback or BPE). */
  unknownReport(text) {
    const tok = this.requireTokenizer();
    return unknownReport(tok, tok.encode(text));
  }

  /** [BOS] (when the tokenizer has one) + the prompt's ids (sllm.generate.encode_prompt). */
  encodePrompt(text) {
    const tok = this.requireTokenizer();
    const ids = (tok.bosId !== null ? [tok.bosId] : []).concat(tok.encode(text));
    if (!ids.length) throw new Error("the prompt is empty and the tokenizer has no [BOS] to start from");
    return ids;
  }

  /** Logits (T, V) of one sequence of ids, as Python's model.forward (a copy). */
  forward(ids) {
    this.net.training = false;
    const a = this.net.run(ids, 1, ids.length, false);
    return this.kernels.heap.f32(a.logits, ids.length * this.config.vocab_size).slice();
  }

  /**
   * The constraint (constrain.js) that options {jsonSchema | regex | choices | jsonObject}
   * ask for, or null (GrammarError for a grammar sllm cannot build, ConstraintError for
   * one this vocabulary cannot write).
   */
  constraintFor({ jsonSchema = null, regex = null, choices = null, jsonObject = false } = {}) {
    if (jsonSchema === null && regex === null && choices === null && !jsonObject) return null;
    return compileFor(this.requireTokenizer(), { jsonSchema, regex, choices, jsonObject }).start();
  }

  /**
   * Yield new token ids one at a time (sllm.generate.stream): a KV cache, greedy when
   * temperature is 0, else temperature / top-k / top-p sampling with a seeded generator;
   * with a constraint, only the tokens its grammar allows (sllm.sampler.Sampler), ending
   * when the grammar is complete or allows nothing more.
   */
  *tokens(promptIds, { maxTokens = 100, temperature = 1, topK = null, topP = null, seed = null, eosId = null,
    constraint = null } = {}) {
    const net = this.net, limit = this.config.max_seq_len, V = this.config.vocab_size;
    if (!promptIds.length) throw new Error("the prompt must contain at least one token id");
    const random = rng(seed);
    net.training = false;
    const cache = net.newCache();
    try {
      let context = promptIds.slice(-limit);
      let logits = this.decodeStep(context, cache);
      for (let n = 0; n < maxTokens; n++) {
        let row = logits;
        if (constraint) {
          const allow = constraint.allowedMask(maxTokens - n, eosId);
          if (!allow.some((v) => v)) return;
          row = Float32Array.from(logits.subarray(0, V), (v, i) => (allow[i] ? v : -Infinity));
        }
        const token = sampleNext(row, V, random, temperature, topK, topP);
        yield token;
        if (eosId !== null && token === eosId) return;
        if (constraint) {
          constraint.advance(token);
          if (constraint.finished()) return;
        }
        context.push(token);
        if (cache.pos >= limit) {
          context = context.slice(-(Math.floor(limit / 2) + 1));
          cache.pos = 0;
          logits = this.decodeStep(context, cache);
        } else {
          logits = this.decodeStep([token], cache);
        }
      }
    } finally {
      net.releaseCache(cache);
    }
  }

  decodeStep(ids, cache) {
    const a = this.net.run(ids, 1, ids.length, false, cache);
    cache.pos += ids.length;
    const V = this.config.vocab_size;
    return this.kernels.heap.f32(a.logits + 4 * (ids.length - 1) * V, V);
  }

  /**
   * Stream the continuation of `prompt` as text pieces (sllm.generate.stream_text): each
   * piece is the growth of the decoded text, held back while it ends inside a UTF-8
   * character. Stops at [EOS], after maxTokens, or (stopAtNewline) at the first newline.
   * After it ends, `this.stats` holds {tokens, seconds, firstTokenMs, tokensPerSecond}.
   */
  async *stream(prompt, options = {}) {
    const ids = typeof prompt === "string" ? this.encodePrompt(prompt) : prompt.slice();
    yield* this.streamIds(ids, options);
  }

  /**
   * streamIds's pieces. With a grammar (options jsonSchema / regex / choices / jsonObject)
   * the pieces are the text of the new tokens alone, as the server sends it: the text that
   * parses, without the space a word tokenizer would put after the prompt.
   */
  async *streamIds(ids, { stopAtNewline = false, jsonSchema = null, regex = null, choices = null, jsonObject = false,
    ...sampling } = {}) {
    const tok = this.requireTokenizer();
    const constraint = this.constraintFor({ jsonSchema, regex, choices, jsonObject });
    const prompt = ids.slice();
    if (constraint) ids = [];
    let shown = tok.decode(ids);
    const start = performance.now();
    const stats = { tokens: 0, seconds: 0, firstTokenMs: null, tokensPerSecond: 0 };
    this.stats = stats;
    for (const token of this.tokens(prompt, { ...sampling, eosId: tok.eosId, constraint })) {
      stats.tokens += 1;
      if (stats.firstTokenMs === null) stats.firstTokenMs = performance.now() - start;
      stats.seconds = (performance.now() - start) / 1000;
      stats.tokensPerSecond = stats.seconds > 0 ? stats.tokens / stats.seconds : 0;
      if (token === tok.eosId) return;
      ids.push(token);
      const text = tok.decode(ids);
      if (text.endsWith("\ufffd") || !text.startsWith(shown)) continue;
      const piece = text.slice(shown.length);
      shown = text;
      if (stopAtNewline && piece.includes("\n")) {
        yield piece.slice(0, piece.indexOf("\n"));
        return;
      }
      if (piece) yield piece;
    }
  }

  /** The generated continuation of `prompt` (without the prompt), as one string. */
  async generate(prompt, options = {}) {
    let out = "";
    for await (const piece of this.stream(prompt, options)) out += piece;
    return out;
  }

  /** A chat session formatted as the demo corpus writes dialogues (A: user, B: model). */
  chat(options = {}) { return new ChatSession(this, options); }

  // ---- fine-tuning -------------------------------------------------------------------
  /**
   * One training step on a batch: forward, backward, gradient clipping, AdamW.
   * tokens and targets are flat arrays of B*T ids (targets -1 are ignored).
   * Returns {loss, norm} (the mean cross-entropy before the update, the gradient norm).
   */
  trainStep(tokens, targets, B, T, { lr = 1e-3, betas = [0.9, 0.99], eps = 1e-8, weightDecay = 0.1, clip = 1.0 } = {}) {
    this.net.training = true;
    const loss = this.net.lossAndGrads(tokens, targets, B, T, true);
    const norm = clip > 0 ? this.net.clipGradNorm(clip) : NaN;
    this.net.adamwStep({ lr, betas, eps, weightDecay });
    this.net.training = false;
    if (this.net.lora) this.net.lora.steps = (this.net.lora.steps || 0) + 1;
    else {
      this.finetuned += 1;
      this.baseFingerprint = null; // the base itself changed
    }
    return { loss, norm };
  }

  /** Mean cross-entropy of a batch without training (dropout off). */
  loss(tokens, targets, B, T) {
    this.net.training = false;
    return this.net.lossAndGrads(tokens, targets, B, T, false);
  }

  /**
   * Fine-tune on `text`: `steps` AdamW steps on random windows of seqLen tokens.
   * With `lora: {rank, alpha, targets, dropout}` (lora.js's defaults: rank 8, alpha 2 * rank,
   * all targets) a fresh LoRA adapter is attached and trained, the base frozen; without it,
   * an attached adapter trains on, else every weight of the model (a full fine-tune).
   * onProgress({step, steps, loss, tokensPerSecond}) is called after every step (it may
   * return a Promise, e.g. to let a worker post a message). Text shorter than one window
   * plus its next token is refused. Returns {losses, seconds}.
   */
  async finetune(text, { steps = 20, lr = 1e-3, batchSize = 4, seqLen = null, seed = 0, lora = null, onProgress = null, ...opt } = {}) {
    const T = Math.min(seqLen || 64, this.config.max_seq_len), B = batchSize;
    const ids = this.encode(text);
    if (ids.length < T + 1) {
      throw new RangeError(`the fine-tuning text is too short: ${ids.length} tokens, need at least ${T + 1} (one sequence of ${T} tokens and the token after it)`);
    }
    if (!(steps >= 1)) throw new RangeError(`steps must be at least 1, got ${steps}`);
    if (lora) this.createAdapter(lora, { seed });
    const random = rng(seed), losses = [], start = performance.now();
    for (let step = 1; step <= steps; step++) {
      const x = [], y = [];
      for (let b = 0; b < B; b++) {
        const o = Math.floor(random() * (ids.length - T));
        for (let t = 0; t < T; t++) { x.push(ids[o + t]); y.push(ids[o + t + 1]); }
      }
      const { loss } = this.trainStep(x, y, B, T, { lr, ...opt });
      losses.push(loss);
      const seconds = (performance.now() - start) / 1000;
      if (onProgress) await onProgress({ step, steps, loss, seconds, tokensPerSecond: (step * B * T) / seconds });
    }
    return { losses, seconds: (performance.now() - start) / 1000 };
  }

  // ---- LoRA adapters (lora.js) ----------------------------------------------------------
  /** The base's fingerprint (sllm.lora.fingerprint), which adapter files name their base by. */
  fingerprint() {
    if (!this.baseFingerprint) this.baseFingerprint = fingerprint(this.net);
    return this.baseFingerprint;
  }

  /**
   * Attach a fresh adapter (replacing an attached one): options {rank = 8, alpha = 2 * rank,
   * targets = "all" | "attn" | "mlp" | comma list of weight-name suffixes, dropout = 0};
   * A uniform in +-1/sqrt(in) from `seed`, B zero, so the model is unchanged until it trains.
   */
  createAdapter(options = {}, { seed = 0 } = {}) {
    const config = loraConfig(options === true ? {} : options);
    const adapter = Adapter.create(this.net, config, rng((seed ^ 0x5bd1e995) >>> 0), { name: this.name, fp: this.fingerprint() });
    this.detachAdapter();
    this.net.attachAdapter(adapter);
    return this.adapter;
  }

  /**
   * Attach an adapter file (a URL or its bytes; an adapter from `sllm finetune` or
   * saveAdapter), replacing an attached one. FormatError for a malformed file, LoraError
   * for an adapter of another base. Returns the adapter's description (see `adapter`).
   */
  async loadAdapter(source, { name = null } = {}) {
    const bytes = await fetchBytes(source);
    const label = name || (typeof source === "string" || source instanceof URL ? String(source) : "adapter");
    const adapter = Adapter.read(bytes, label);
    adapter.checkBase(this.fingerprint());
    this.detachAdapter();
    this.net.attachAdapter(adapter);
    return this.adapter;
  }

  /**
   * The attached adapter as file bytes (Python's sllm.lora.Adapter.load reads them), its
   * tensors f16 as `sllm finetune` writes them (the same bytes as Python's
   * Adapter.save(path, dtype="f16") for the same adapter), or f32 with {dtype: "f32"}.
   */
  saveAdapter({ dtype = "f16" } = {}) {
    const lora = this.net.lora;
    if (!lora) throw new LoraError("no adapter is attached: fine-tune with {lora: {...}} or loadAdapter() first");
    const metadata = { created: new Date().toISOString().slice(0, 19) + "Z",
      ...(lora.steps ? { trained_in_browser: { steps: lora.steps, wasm: this.wasm } } : {}) };
    return lora.sync().write(metadata, { dtype });
  }

  /** Back to the base model: detach the adapter (returned, a lora.js Adapter), or null. */
  detachAdapter() { return this.net.detachAdapter(); }

  /** The attached adapter: {rank, alpha, targets, dropout, parameters, base} or null. */
  get adapter() {
    const lora = this.net.lora;
    if (!lora) return null;
    const a = lora.adapter;
    return { ...a.config, targets: a.targets.slice(), targetOption: a.config.targets, parameters: a.numParameters(),
      base: { ...a.base }, steps: lora.steps || 0 };
  }

  /** The model as SLLM bytes (f32; quantized weights stay quantized), with the tokenizer and updated metadata.
   * An attached adapter is not part of it: saveAdapter() writes that. */
  async save() {
    const net = this.net, tensors = net.savedTensors();
    const metadata = {
      ...this.metadata, created: new Date().toISOString().slice(0, 19) + "Z",
      num_parameters: this.numParameters(), dtype: net.qtype ? `f32/${net.qtype}` : "f32",
      ...(this.finetuned ? { finetuned_in_browser: { steps: this.finetuned, wasm: this.wasm } } : {}),
    };
    return writeModel({ configDict: configToDict(this.config), tokenizer: this.file.tokenizer, metadata, tensors });
  }
}

/** Keeps the dialogue so far; reply(text) streams the model's answer (sllm.chat). */
export class ChatSession {
  constructor(model, { maxTokens = 48, ...sampling } = {}) {
    this.model = model;
    this.maxTokens = maxTokens;
    this.sampling = { temperature: 0.7, topK: 40, ...sampling };
    this.turns = [];
  }
  prompt() {
    const room = this.model.config.max_seq_len - this.maxTokens;
    for (;;) {
      const ids = this.model.encodePrompt(this.turns.concat([BOT_PREFIX]).join("\n"));
      if (ids.length <= room || this.turns.length <= 1) return ids.slice(-Math.max(room, 1));
      this.turns = this.turns.length > 2 ? this.turns.slice(2) : this.turns.slice(1);
    }
  }
  /** Add the user's line, then yield the answer's text as it is generated. */
  async *reply(userText, sampling = {}) {
    this.turns.push(`${USER_PREFIX} ${userText.trim()}`);
    const pieces = [];
    const opts = { ...this.sampling, ...sampling, maxTokens: this.maxTokens, stopAtNewline: true };
    try {
      for await (const piece of this.model.streamIds(this.prompt(), opts)) {
        pieces.push(piece);
        yield piece;
      }
    } finally { // also when the reader stops early (the page's Stop): the answer so far is a turn
      this.turns.push(`${BOT_PREFIX} ${pieces.join("").trim()}`);
    }
  }
}

// ---- sampling (sllm.sampler.sample_next) ----------------------------------------------
/** One token id from a row of V logits; temperature 0 is greedy. */
export function sampleNext(logits, V, random, temperature = 1, topK = null, topP = null) {
  if (!(temperature > 0)) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  const z = new Float64Array(V);
  for (let i = 0; i < V; i++) z[i] = logits[i] / temperature;
  if (topK !== null && topK > 0 && topK < V) {
    const kth = Float64Array.from(z).sort()[V - topK];
    for (let i = 0; i < V; i++) if (z[i] < kth) z[i] = -Infinity;
  }
  let mx = -Infinity, total = 0;
  for (let i = 0; i < V; i++) mx = Math.max(mx, z[i]);
  const probs = z.map((v) => Math.exp(v - mx));
  for (let i = 0; i < V; i++) total += probs[i];
  for (let i = 0; i < V; i++) probs[i] /= total;
  if (topP !== null && topP > 0 && topP < 1) {
    const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
    let cumulative = 0, cut = V;
    for (let j = 0; j < V; j++) {
      cumulative += probs[order[j]];
      if (cumulative >= topP) { cut = j + 1; break; }
    }
    const keep = new Uint8Array(V);
    for (let j = 0; j < cut; j++) keep[order[j]] = 1;
    let kept = 0;
    for (let i = 0; i < V; i++) { if (!keep[i]) probs[i] = 0; kept += probs[i]; }
    for (let i = 0; i < V; i++) probs[i] /= kept;
  }
  const r = random();
  let acc = 0;
  for (let i = 0; i < V; i++) {
    acc += probs[i];
    if (r < acc) return i;
  }
  for (let i = V - 1; i >= 0; i--) if (probs[i] > 0) return i;
  return 0;
}

/** A seeded uniform [0, 1) generator (mulberry32); seed null draws one at random. */
export function rng(seed) {
  let s = (seed === null || seed === undefined ? Math.floor(Math.random() * 2 ** 32) : seed) >>> 0;
  return () => {
    s = (s + 0x6D2B79F5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export { MODULES };
