// JavaScript twin of sllm/lora.py: tests/test_lora_node.py checks them equal under Node (and the file bytes: Python's f16 and f32 adapters).
// LoRA adapters in the browser: for a target weight W, stored (in, out) as sllm stores
// matmul weights, the adapted layer is y = x @ W (+ bias) + s * ((dropout(x) @ A) @ B),
// s = alpha / rank, A (in, rank), B (rank, out) = 0 when fresh. An Adapter is plain data and
// a file in the SLLM container (format.js) that names its base by fingerprint, so Python's
// sllm.lora.Adapter.load reads what saveAdapter writes and the other way round. Attached
// keeps an attached adapter's tensors and gradients in one flat buffer in linear memory;
// model.js's matmul call sites add its delta and, with the base frozen, fill only its
// gradients (the same kernel calls as Python's). Offsets are bytes into linear memory.

import { F } from "./kernels.js";
import { ConfigError, FormatError, configToDict, f32ToF16, parameterShapes, pyShape, readFloatTensors, writeModel } from "./format.js";

/** An adapter that does not fit this model (another base, a clash); sllm.LoraError. */
export class LoraError extends ConfigError {
  constructor(message) {
    super(message);
    this.name = "LoraError";
  }
}

export const KIND = "lora-adapter";
const ALIGN = 16; // floats, as sllm/layout.py: each tensor of the flat buffer starts aligned
// The weight-name suffixes each targets group stands for, per family (lora.TARGETS).
export const TARGETS = {
  gpt2: { attn: ["attn.c_attn.weight", "attn.c_proj.weight"], mlp: ["mlp.c_fc.weight", "mlp.c_proj.weight"] },
  llama: {
    attn: ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight"],
    mlp: ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"],
  },
};

/**
 * lora.LoraConfig: {rank (>= 1, default 8), alpha (> 0, default 2 * rank), targets ("attn",
 * "mlp", "all" or a comma list of weight-name suffixes), dropout (0 <= p < 1)}, validated.
 */
export function loraConfig({ rank = 8, alpha = null, targets = "all", dropout = 0 } = {}) {
  if (!Number.isInteger(rank) || rank < 1) throw new ConfigError(`lora rank must be an integer >= 1, got ${JSON.stringify(rank)}`);
  if (alpha === null || alpha === undefined) alpha = 2 * rank;
  if (typeof alpha !== "number" || !Number.isFinite(alpha) || alpha <= 0) {
    throw new ConfigError(`lora alpha must be a finite number > 0, got ${JSON.stringify(alpha)}`);
  }
  if (typeof dropout !== "number" || !(dropout >= 0 && dropout < 1)) {
    throw new ConfigError(`lora dropout must be a number in [0, 1), got ${JSON.stringify(dropout)}`);
  }
  if (typeof targets !== "string" || !targets.trim()) {
    throw new ConfigError(`lora targets must be attn, mlp, all or a comma list of weight names, got ${JSON.stringify(targets)}`);
  }
  return { rank, alpha, targets, dropout };
}

/** The full names of the weights `targets` selects in a model of `config`, in layout order
 * (lora.target_names); ConfigError naming a suffix that matches nothing. */
export function targetNames(config, targets) {
  const groups = TARGETS[config.architecture], valid = Object.values(groups).flat();
  const suffixes = [];
  for (const part of targets.split(",").map((p) => p.trim())) {
    if (part === "all") suffixes.push(...valid);
    else if (part in groups) suffixes.push(...groups[part]);
    else if (valid.includes(part)) suffixes.push(part);
    else {
      throw new ConfigError(`lora targets: '${part}' matches no weight of this ${config.architecture} model; choose attn, mlp, all or some of ${valid.join(", ")}`);
    }
  }
  return parameterShapes(config).map(([n]) => n).filter((n) => suffixes.some((s) => n.endsWith("." + s)));
}

/** [in, out] of layer weight `name` of a model of `config`, or null when it is not a
 * matmul weight a LoRA may target (lora._weight_shape). */
function weightShape(config, name) {
  const prefix = config.architecture === "llama" ? "model.layers." : "h.";
  if (!name.startsWith(prefix)) return null;
  const rest = name.slice(prefix.length), dot = rest.indexOf("."), head = rest.slice(0, dot), suffix = rest.slice(dot + 1);
  const suffixes = Object.values(TARGETS[config.architecture]).flat();
  if (dot < 1 || !/^\d+$/.test(head) || Number(head) >= config.num_layers || !suffixes.includes(suffix)) return null;
  const shapes = new Map(parameterShapes({ ...config, num_layers: 1 }));
  return shapes.get(`${prefix}0.${suffix}`);
}

// ---- the base's fingerprint (lora.fingerprint) ------------------------------------------
/**
 * sha256 (hex) over the base's config JSON (less dropout, as Python's json.dumps with
 * sorted keys) and its tensors' bytes as the model holds them (float32, or the quantized
 * rows), by sorted name: what an adapter file names its base by.
 */
export function fingerprint(net) {
  const dict = configToDict(net.config);
  delete dict.dropout;
  const h = new Sha256(), enc = new TextEncoder(), heap = net.k.heap;
  h.update(enc.encode(pyJson(dict)));
  for (const name of Object.keys(net.layout.slots).sort()) {
    h.update(enc.encode(name));
    const q = net.quantized[name], slot = net.layout.slots[name];
    h.update(q ? net.quantizedBytes(q) : new Uint8Array(heap.memory.buffer, net.P[name], 4 * slot.size));
  }
  return h.hex();
}

const FLOAT_KEYS = new Set(["ropeTheta", "normEps"]); // the config's Python floats

/** json.dumps(dict, sort_keys=True) of a flat config dict: ", " and ": ", Python's floats. */
function pyJson(dict) {
  const items = Object.keys(dict).sort().map((k) => {
    const v = dict[k];
    return `${JSON.stringify(k)}: ${FLOAT_KEYS.has(k) ? pyFloat(v) : JSON.stringify(v)}`;
  });
  return `{${items.join(", ")}}`;
}

// The top-level fields of an adapter file's config and metadata that Python holds as floats
// (ModelConfig.dropout, rope_theta, norm_eps; LoraConfig.alpha, dropout): json.dumps writes 2.0
// where JSON.stringify writes 2.
const PY_FLOAT_FIELDS = new Set(["dropout", "ropeTheta", "normEps", "alpha"]);

/** sllm/serialize.py's _json_bytes (json.dumps, separators "," and ":", no ASCII escaping) of a
 * config or metadata dict: Python's bytes for the same adapter. Nested values and other numbers
 * as JSON.stringify writes them (a metadata float such as 3.0 read from a file comes back 3). */
function pyCompactJson(dict) {
  const items = Object.entries(dict).filter(([, v]) => v !== undefined).map(([k, v]) =>
    `${JSON.stringify(k)}:${PY_FLOAT_FIELDS.has(k) && typeof v === "number" ? pyFloat(v) : JSON.stringify(v)}`);
  return `{${items.join(",")}}`;
}

/** repr() of a Python float: the shortest round-trip digits, positional for exponents
 * -4..15, else d.ddde+XX. */
export function pyFloat(x) {
  const [mant, e] = x.toExponential().split("e"), exp = Number(e);
  const digits = mant.replace("-", "").replace(".", ""), sign = x < 0 ? "-" : "";
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  const whole = digits.padEnd(exp + 1, "0");
  return `${sign}${whole.slice(0, exp + 1)}.${whole.slice(exp + 1) || "0"}`;
}

// ---- the adapter: data and file ----------------------------------------------------------
/**
 * A LoRA adapter (lora.Adapter): config {rank, alpha, targets, dropout}, target weight
 * names, tensors {"<w>.lora_a": {shape [in, R], data}, "<w>.lora_b": {shape [R, out], data}},
 * base {fingerprint, architecture, name}, the base's config and other metadata.
 */
export class Adapter {
  constructor({ config, targets, tensors, base, baseConfig, metadata = {} }) {
    Object.assign(this, { config, targets, tensors, base, baseConfig, metadata });
  }

  /**
   * A fresh adapter for `net`: A ~ U(-1/sqrt(in), 1/sqrt(in)) from `random` (a seeded
   * uniform generator: sllm.js's rng; not numpy's stream, so not Python's values for the
   * same seed), B = 0. `fp` is the base's fingerprint when already known.
   */
  static create(net, config, random, { name = "", fp = null } = {}) {
    const names = targetNames(net.config, config.targets), tensors = {};
    for (const name of names) {
      const [nIn, nOut] = weightShape(net.config, name);
      if (config.rank > Math.min(nIn, nOut)) {
        throw new ConfigError(`lora rank ${config.rank} must be between 1 and ${Math.min(nIn, nOut)}, the width of ${name} (${nIn} x ${nOut})`);
      }
      const bound = 1 / Math.sqrt(nIn), a = new Float32Array(nIn * config.rank);
      for (let i = 0; i < a.length; i++) a[i] = -bound + 2 * bound * random();
      tensors[name + ".lora_a"] = { shape: [nIn, config.rank], data: a };
      tensors[name + ".lora_b"] = { shape: [config.rank, nOut], data: new Float32Array(config.rank * nOut) };
    }
    const base = { fingerprint: fp || fingerprint(net), architecture: net.config.architecture, name };
    return new Adapter({ config, targets: names, tensors, base, baseConfig: net.config });
  }

  /** s = alpha / rank. */
  get scale() { return this.config.alpha / this.config.rank; }

  /** Trainable scalars of the adapter. */
  numParameters() { return Object.values(this.tensors).reduce((n, t) => n + t.data.length, 0); }

  /** LoraError unless `fp` is the fingerprint of the base this adapter was made for. */
  checkBase(fp) {
    const mine = this.base.fingerprint;
    if (mine !== fp) {
      throw new LoraError(`this adapter was made for another base model (fingerprint ${mine.slice(0, 12)}), not this one (${fp.slice(0, 12)}); load it onto the model it was trained on`);
    }
  }

  /**
   * The adapter file's bytes, as Adapter.save(path, dtype=...) writes them: the tensors in
   * `dtype` "f16" (the default, as `sllm finetune` writes adapters: half the bytes) or "f32".
   * FormatError when a value does not fit in f16.
   */
  write(metadata = {}, { dtype = "f16" } = {}) {
    if (dtype !== "f16" && dtype !== "f32") throw new ConfigError(`adapter dtype must be f32 or f16, got ${JSON.stringify(dtype)}`);
    const c = this.config;
    const meta = { ...this.metadata, ...metadata, kind: KIND, rank: c.rank, alpha: c.alpha, dropout: c.dropout,
      targets: this.targets.slice(), target_option: c.targets, base: { ...this.base } };
    const tensors = Object.entries(this.tensors).map(([n, t]) =>
      (dtype === "f16" ? [n, f32ToF16(t.data, n), t.shape, 1] : [n, t.data, t.shape, 0]));
    return writeModel({ configDict: configToDict(this.baseConfig), tokenizer: null, metadata: meta, tensors,
      stringify: pyCompactJson });
  }

  /** Read and validate an adapter file (FormatError when it is not a valid adapter). */
  static read(bytes, name = "adapter") {
    const { config: baseConfig, metadata: meta, tensors } = readFloatTensors(bytes, name);
    if (meta.kind !== KIND) throw new FormatError(`${name}: not a LoRA adapter (metadata kind ${JSON.stringify(meta.kind ?? null)})`);
    const { base, targets } = meta;
    if (!(base && typeof base === "object" && typeof base.fingerprint === "string" && Array.isArray(targets)
      && targets.length && targets.every((t) => typeof t === "string"))) {
      throw new FormatError(`${name}: adapter metadata needs 'base' with a 'fingerprint' and a non-empty list of 'targets'`);
    }
    let config;
    try {
      config = loraConfig({ rank: meta.rank ?? 0, alpha: meta.alpha ?? null, targets: meta.target_option ?? "all", dropout: meta.dropout ?? 0 });
    } catch (e) {
      throw new FormatError(`${name}: adapter metadata: ${e.message}`);
    }
    if (meta.token_ids !== undefined) {
      throw new FormatError(`${name}: this adapter has trainable token rows (token_ids), which the browser does not apply; merge it into its base (sllm merge) and load the merged model`);
    }
    const own = {};
    for (const target of targets) {
      const shape = weightShape(baseConfig, target);
      if (!shape || target + ".lora_a" in own) {
        throw new FormatError(`${name}: adapter target '${target.slice(0, 80)}' is not a matmul weight of its base`);
      }
      for (const [suffix, need] of [[".lora_a", [shape[0], config.rank]], [".lora_b", [config.rank, shape[1]]]]) {
        const t = tensors[target + suffix];
        if (!t || t.shape.join(",") !== need.join(",")) {
          throw new FormatError(`${name}: tensor '${target + suffix}' should have shape ${pyShape(need)}, found ${t ? pyShape(t.shape) : "None"}`);
        }
        own[target + suffix] = t;
      }
    }
    const checkpoint = meta.checkpoint && typeof meta.checkpoint === "object"; // its optim.* tensors: ignored here
    const extra = Object.keys(tensors).filter((n) => !(n in own) && !(checkpoint && n.startsWith("optim."))).sort();
    if (extra.length) throw new FormatError(`${name}: tensor '${extra[0].slice(0, 80)}' is not one of the adapter's`);
    const metadata = { ...meta };
    for (const k of ["kind", "rank", "alpha", "dropout", "targets", "target_option", "base", "checkpoint"]) delete metadata[k];
    return new Adapter({ config, targets: targets.slice(), tensors: own, base: { ...base }, baseConfig, metadata });
  }
}

// ---- an adapter attached to a model ------------------------------------------------------
/**
 * lora.Attached: the adapter's tensors in one flat buffer in linear memory (and one for their
 * gradients), so the optimizer runs over it as over a model (params, grads, layout.total,
 * layout.decayCount: every adapter tensor is a matrix, all decayed), and the forward and
 * backward of the delta at one matmul call site.
 */
export class Attached {
  constructor(net, adapter) {
    this.net = net;
    this.k = net.k;
    this.adapter = adapter;
    const heap = this.k.heap, offsets = {};
    let total = 0;
    for (const [name, t] of Object.entries(adapter.tensors)) {
      offsets[name] = total;
      total += Math.ceil(t.data.length / ALIGN) * ALIGN;
    }
    this.layout = { total, decayCount: total };
    this.params = heap.alloc(4 * total);
    this.grads = heap.alloc(4 * total);
    heap.f32(this.params, total).fill(0);
    heap.f32(this.grads, total).fill(0);
    this.adam = null;
    this.offsets = offsets;
    for (const [name, t] of Object.entries(adapter.tensors)) heap.f32(this.params + 4 * offsets[name], t.data.length).set(t.data);
    this.scale = adapter.scale;
    this.dropout = 0; // this forward's (the model sets it)
    // base weight offset -> {name, a, b, da, db, index, nIn, nOut}
    this.weights = new Map(adapter.targets.map((name, index) => {
      const [nIn, R] = adapter.tensors[name + ".lora_a"].shape, nOut = adapter.tensors[name + ".lora_b"].shape[1];
      const at = (suffix, base) => base + 4 * offsets[name + suffix];
      return [net.P[name], { name, index, nIn, nOut, R, a: at(".lora_a", this.params), b: at(".lora_b", this.params),
        da: at(".lora_a", this.grads), db: at(".lora_b", this.grads) }];
    }));
    this.buffers = null;
  }

  /** Work buffers for N rows (x dropped out, t, dt, delta, dx), grown when N grows. */
  work(N) {
    if (this.buffers && this.buffers.N >= N) return this.buffers;
    this.releaseWork();
    let nIn = 1, nOut = 1, R = 1;
    for (const w of this.weights.values()) { nIn = Math.max(nIn, w.nIn); nOut = Math.max(nOut, w.nOut); R = Math.max(R, w.R); }
    const heap = this.k.heap;
    this.buffers = { N, xd: heap.alloc(4 * N * nIn), dx: heap.alloc(4 * N * nIn), t: heap.alloc(4 * N * R),
      dt: heap.alloc(4 * N * R), delta: heap.alloc(4 * N * nOut) };
    return this.buffers;
  }

  releaseWork() {
    if (!this.buffers) return;
    for (const [key, off] of Object.entries(this.buffers)) if (key !== "N") this.k.heap.release(off);
    this.buffers = null;
  }

  /** x, or dropout(x) in the work buffer: the adapter's input at this call site. */
  input(x, w, N, seed, buf) {
    if (!this.dropout) return x;
    this.net.dropout(buf.xd, x, N * w.nIn, this.dropout, seed);
    return buf.xd;
  }

  /** t (N, R) = s * x @ A: forward's input to B. */
  down(buf, x, w, N) {
    this.k.call("matmul_fwd", buf.t, x, w.a, 0, N, w.nIn, w.R, 0, 0);
    scaleInPlace(this.k.heap.f32(buf.t, N * w.R), this.scale);
  }

  /** out (N, out) += s * (dropout(inp) @ A) @ B (the base matmul already wrote out):
   * lora.lora_delta's two matmuls and residual add. */
  forward(out, inp, w, N, seed) {
    const k = this.k, buf = this.work(N);
    this.down(buf, this.input(inp, w, N, seed, buf), w, N);
    k.call("matmul_fwd", buf.delta, buf.t, w.b, 0, N, w.R, w.nOut, 0, 0);
    k.call("residual_fwd", out, out, buf.delta, N * w.nOut);
  }

  /** dinp += the adapter's part of the input gradient; dA, dB += theirs (dinp already holds
   * the frozen base's part, dout @ W^T). */
  backward(dinp, dout, inp, w, N, seed) {
    const k = this.k, buf = this.work(N);
    const x = this.input(inp, w, N, seed, buf);
    this.down(buf, x, w, N);
    k.call("matmul_bwd", buf.dt, w.db, 0, dout, buf.t, w.b, N, w.R, w.nOut, 0, k.scratch(w.R * w.nOut)); // dt = dy B^T; dB += t^T dy
    scaleInPlace(k.heap.f32(buf.dt, N * w.R), this.scale); // through the scale
    k.call("matmul_bwd", buf.dx, w.da, 0, buf.dt, x, w.a, N, w.nIn, w.R, 0, k.scratch(w.nIn * w.R)); // dx = dt A^T; dA += x^T dt
    if (this.dropout) {
      k.call("dropout_bwd", buf.dx, buf.dx, N * w.nIn, dropoutThreshold(this.dropout), F(1 - this.dropout), seed >>> 0);
    }
    k.call("residual_fwd", dinp, dinp, buf.dx, N * w.nIn);
  }

  /** Copy the trained tensors back into the adapter, free the buffers; returns the adapter. */
  detach() {
    this.sync();
    const heap = this.k.heap;
    this.releaseWork();
    for (const off of [this.params, this.grads, ...(this.adam ? [this.adam.m, this.adam.v] : [])]) heap.release(off);
    return this.adapter;
  }

  /** Copy the flat buffer's values into the adapter's tensors (before saving it). */
  sync() {
    const heap = this.k.heap;
    for (const [name, t] of Object.entries(this.adapter.tensors)) t.data.set(heap.f32(this.params + 4 * this.offsets[name], t.data.length));
    return this.adapter;
  }
}

/** sllm.backends.base.dropout_threshold: the uint32 below which an element is dropped. */
export function dropoutThreshold(p) { return Math.min(Math.round(p * 2 ** 32), 2 ** 32 - 1); }

function scaleInPlace(v, s) {
  const f = Math.fround(s);
  for (let i = 0; i < v.length; i++) v[i] *= f; // float32 products, as numpy's in place
}

// ---- SHA-256 (FIPS 180-4): crypto.subtle is async and missing on plain-HTTP pages ----------
const K256 = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);

/** Incremental SHA-256: update(bytes) any number of times, then hex(). */
export class Sha256 {
  constructor() {
    this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.block = new Uint8Array(64);
    this.fill = 0;
    this.length = 0;
    this.w = new Int32Array(64);
  }
  update(bytes) {
    let i = 0;
    this.length += bytes.length;
    if (this.fill) {
      const take = Math.min(64 - this.fill, bytes.length);
      this.block.set(bytes.subarray(0, take), this.fill);
      this.fill += take;
      i = take;
      if (this.fill < 64) return;
      this.compress(this.block, 0, 64);
      this.fill = 0;
    }
    const whole = i + ((bytes.length - i) & ~63);
    if (whole > i) this.compress(bytes, i, whole);
    this.block.set(bytes.subarray(whole), 0);
    this.fill = bytes.length - whole;
  }
  /** The 64-byte blocks of b[at, end), the state in locals (int32 arithmetic throughout:
   * K256 and w are Int32Arrays, so V8 never falls back to doubles). */
  compress(b, at, end) {
    const w = this.w, h = this.h;
    let h0 = h[0], h1 = h[1], h2 = h[2], h3 = h[3], h4 = h[4], h5 = h[5], h6 = h[6], h7 = h[7];
    for (; at < end; at += 64) {
      for (let t = 0; t < 16; t++) {
        const j = at + 4 * t;
        w[t] = (b[j] << 24) | (b[j + 1] << 16) | (b[j + 2] << 8) | b[j + 3];
      }
      for (let t = 16; t < 64; t++) {
        const x = w[t - 15], y = w[t - 2];
        const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
        const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
      }
      let a = h0, bb = h1, c = h2, d = h3, e = h4, f = h5, g = h6, hh = h7;
      for (let t = 0; t < 64; t++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K256[t] + w[t]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (S0 + ((a & bb) ^ (a & c) ^ (bb & c))) | 0;
        hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = bb; bb = a; a = (t1 + t2) | 0;
      }
      h0 = (h0 + a) | 0; h1 = (h1 + bb) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
      h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + hh) | 0;
    }
    h[0] = h0; h[1] = h1; h[2] = h2; h[3] = h3; h[4] = h4; h[5] = h5; h[6] = h6; h[7] = h7;
  }
  hex() {
    const bits = this.length * 8, tail = new Uint8Array(((this.fill + 9 + 63) >> 6) * 64 - this.fill);
    tail[0] = 0x80;
    const v = new DataView(tail.buffer);
    v.setUint32(tail.length - 8, Math.floor(bits / 2 ** 32));
    v.setUint32(tail.length - 4, bits >>> 0);
    this.update(tail);
    return Array.from(this.h, (x) => x.toString(16).padStart(8, "0")).join("");
  }
}
