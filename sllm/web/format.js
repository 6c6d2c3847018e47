// JavaScript twin of sllm/serialize.py, sllm/config.py, sllm/layout.py: tests/test_node_parity.py checks them equal under Node.
// The SLLM binary model format (docs/binary-format.md), read and written in the browser
// with the same validation as sllm/serialize.py: every size is checked against the file
// before anything is allocated, and any malformation throws a FormatError naming the
// section, the offset, and what was expected versus found.

export const MAGIC = "SLLM";
export const VERSION = 1;
const ALIGN = 64;
const HEADER_SIZE = 24;
const SECTION_SIZE = 16;
const MAX_NDIM = 4;
export const SECTION = { config: 1, tokenizer: 2, metadata: 3, tensors: 4, data: 5 };
const SECTION_NAMES = { 1: "config", 2: "tokenizer", 3: "metadata", 4: "tensors", 5: "data" };

// dtype code -> name and bytes per element (f32, f16); the quantized block formats of
// sllm/quant.py (ggml's q8_0, q4_0, q4_1: blocks of 32 along K) -> bytes per block.
export const DTYPES = { 0: { name: "f32", size: 4 }, 1: { name: "f16", size: 2 } };
export const QDTYPES = { 2: { name: "q8_0", block: 34 }, 3: { name: "q4_0", block: 18 }, 4: { name: "q4_1", block: 20 } };
export const QK = 32;

/** A malformed model file; `message` says what is wrong and where. */
export class FormatError extends Error {
  constructor(message) {
    super(message);
    this.name = "FormatError";
  }
}

/** A config that breaks a rule of sllm.ModelConfig (names the key). */
export class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConfigError";
  }
}

// ---- CRC32 (zlib's polynomial), as Python's zlib.crc32 -----------------------------------
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** zlib.crc32(bytes, crc): continue a checksum over more bytes. */
export function crc32(bytes, crc = 0) {
  let c = (crc ^ 0xffffffff) >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ---- config: the rules of sllm.ModelConfig --------------------------------------------
const CAMEL = {
  vocabSize: "vocab_size", embeddingDim: "embedding_dim", numLayers: "num_layers",
  numHeads: "num_heads", ffnHiddenDim: "ffn_hidden_dim", dropout: "dropout",
  maxSeqLen: "max_seq_len", activation: "activation", tieEmbeddings: "tie_embeddings",
  architecture: "architecture", numKvHeads: "num_kv_heads", ropeTheta: "rope_theta", normEps: "norm_eps",
};
// the llama fields' defaults: a GPT-2 config leaves them so and its dict leaves them out
const LLAMA_DEFAULTS = { num_kv_heads: null, rope_theta: 10000, norm_eps: 1e-5 };
const DEFAULTS = {
  vocab_size: 5000, embedding_dim: 128, num_layers: 4, num_heads: 4, ffn_hidden_dim: 512,
  dropout: 0.1, max_seq_len: 256, activation: "gelu", tie_embeddings: false, architecture: "gpt2",
  ...LLAMA_DEFAULTS,
};
const SIZE_KEYS = ["vocab_size", "embedding_dim", "num_layers", "num_heads", "ffn_hidden_dim",
  "max_seq_len"];

/** A validated config (snake_case fields) from a dict with camelCase or snake_case keys. */
export function configFromDict(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new ConfigError(`a model config must be a JSON object, got ${jsonType(data)}`);
  }
  const fields = new Set(Object.values(CAMEL));
  const cfg = {};
  for (const [key, value] of Object.entries(data)) {
    const name = CAMEL[key] || key;
    if (!fields.has(name)) {
      throw new ConfigError(`unknown config key '${key}'; known keys: ${Object.keys(CAMEL).sort().join(", ")}`);
    }
    if (name in cfg) throw new ConfigError(`config key '${key}' given twice (camelCase and snake_case)`);
    cfg[name] = value;
  }
  const c = { ...DEFAULTS, ...cfg };
  for (const key of SIZE_KEYS) {
    if (!Number.isInteger(c[key]) || c[key] <= 0) {
      throw new ConfigError(`${key} must be a positive integer, got ${JSON.stringify(c[key])}`);
    }
  }
  if (c.embedding_dim % c.num_heads !== 0) {
    throw new ConfigError(`embedding_dim (${c.embedding_dim}) must be divisible by num_heads (${c.num_heads})`);
  }
  if (typeof c.dropout !== "number" || !(c.dropout >= 0 && c.dropout < 1)) {
    throw new ConfigError(`dropout must be a number in [0, 1), got ${JSON.stringify(c.dropout)}`);
  }
  if (c.activation !== "gelu" && c.activation !== "relu") {
    throw new ConfigError(`activation must be one of ('gelu', 'relu'), got ${JSON.stringify(c.activation)}`);
  }
  if (typeof c.tie_embeddings !== "boolean") {
    throw new ConfigError(`tie_embeddings must be true or false, got ${JSON.stringify(c.tie_embeddings)}`);
  }
  c.head_dim = c.embedding_dim / c.num_heads;
  checkFamily(c);
  c.kv_heads = c.num_kv_heads || c.num_heads;
  c.qkv_width = (c.num_heads + 2 * c.kv_heads) * c.head_dim;
  return c;
}

/** ModelConfig._check_family: the architecture and the llama fields. */
function checkFamily(c) {
  if (c.architecture !== "gpt2" && c.architecture !== "llama") {
    throw new ConfigError(`architecture must be one of ('gpt2', 'llama'), got ${JSON.stringify(c.architecture)}`);
  }
  const kv = c.num_kv_heads;
  if (kv !== null) {
    if (!Number.isInteger(kv) || kv <= 0) throw new ConfigError(`numKvHeads must be a positive integer, got ${JSON.stringify(kv)}`);
    if (c.num_heads % kv !== 0) throw new ConfigError(`numKvHeads (${kv}) must divide numHeads (${c.num_heads})`);
  }
  for (const [key, name] of [["rope_theta", "ropeTheta"], ["norm_eps", "normEps"]]) {
    if (typeof c[key] !== "number" || !Number.isFinite(c[key]) || c[key] <= 0) {
      throw new ConfigError(`${name} must be a positive number, got ${JSON.stringify(c[key])}`);
    }
  }
  if (c.architecture === "gpt2") {
    for (const [key, value] of Object.entries(LLAMA_DEFAULTS)) {
      if (c[key] !== value && !(key === "num_kv_heads" && c[key] === c.num_heads)) {
        const camel = Object.keys(CAMEL).find((k) => CAMEL[k] === key);
        throw new ConfigError(`${camel} (${c[key]}) applies to llama models only (architecture is gpt2: LayerNorm eps 1e-5, learned positions, one KV head per head)`);
      }
    }
  } else if (c.head_dim % 2 !== 0) {
    throw new ConfigError(`rotary embeddings need an even head dim: embeddingDim (${c.embedding_dim}) / numHeads (${c.num_heads}) = ${c.head_dim}`);
  }
}

/** The config back in the roadmap's camelCase keys (as ModelConfig.to_dict()). */
export function configToDict(c) {
  const out = {};
  for (const [camel, snake] of Object.entries(CAMEL)) {
    if (c.architecture !== "llama" && (snake === "architecture" || snake in LLAMA_DEFAULTS)) continue;
    out[camel] = snake === "num_kv_heads" ? c.kv_heads : c[snake];
  }
  return out;
}

/** Parameter count in closed form (ModelConfig.num_parameters). */
export function numParameters(c) {
  const C = c.embedding_dim, F = c.ffn_hidden_dim, V = c.vocab_size;
  if (c.architecture === "llama") { // qkv, o, gate, up, down; two RMSNorm weights
    const llamaBlock = C * c.qkv_width + C * C + 3 * C * F + 2 * C;
    return V * C + c.num_layers * llamaBlock + C + (c.tie_embeddings ? 0 : C * V);
  }
  const block = 4 * C * C + 2 * C * F + 9 * C + F;
  return V * C + c.max_seq_len * C + c.num_layers * block + 2 * C + (c.tie_embeddings ? 0 : C * V);
}

// ---- the parameter layout (sllm/layout.py) -------------------------------------------
/** (name, shape) of every parameter, matrices first: GPT-2 names, or llama's
 * (layout.llama_parameter_shapes: Hugging Face's names, a fused qkv_proj, (in, out) matrices). */
export function parameterShapes(c) {
  const V = c.vocab_size, C = c.embedding_dim, F = c.ffn_hidden_dim;
  if (c.architecture === "llama") return llamaParameterShapes(c);
  const matrices = [["wte", [V, C]], ["wpe", [c.max_seq_len, C]]];
  const vectors = [];
  for (let i = 0; i < c.num_layers; i++) {
    const p = `h.${i}.`;
    matrices.push([p + "attn.c_attn.weight", [C, 3 * C]], [p + "attn.c_proj.weight", [C, C]],
      [p + "mlp.c_fc.weight", [C, F]], [p + "mlp.c_proj.weight", [F, C]]);
    vectors.push([p + "ln_1.weight", [C]], [p + "ln_1.bias", [C]], [p + "attn.c_attn.bias", [3 * C]],
      [p + "attn.c_proj.bias", [C]], [p + "ln_2.weight", [C]], [p + "ln_2.bias", [C]],
      [p + "mlp.c_fc.bias", [F]], [p + "mlp.c_proj.bias", [C]]);
  }
  if (!c.tie_embeddings) matrices.push(["lm_head.weight", [C, V]]);
  vectors.push(["ln_f.weight", [C]], ["ln_f.bias", [C]]);
  return matrices.concat(vectors);
}

function llamaParameterShapes(c) {
  const V = c.vocab_size, C = c.embedding_dim, F = c.ffn_hidden_dim;
  const matrices = [["model.embed_tokens.weight", [V, C]]], vectors = [];
  for (let i = 0; i < c.num_layers; i++) {
    const p = `model.layers.${i}.`;
    matrices.push([p + "self_attn.qkv_proj.weight", [C, c.qkv_width]], [p + "self_attn.o_proj.weight", [C, C]],
      [p + "mlp.gate_proj.weight", [C, F]], [p + "mlp.up_proj.weight", [C, F]], [p + "mlp.down_proj.weight", [F, C]]);
    vectors.push([p + "input_layernorm.weight", [C]], [p + "post_attention_layernorm.weight", [C]]);
  }
  if (!c.tie_embeddings) matrices.push(["lm_head.weight", [C, V]]);
  return matrices.concat(vectors, [["model.norm.weight", [C]]]);
}

/** name -> {offset, shape, size} in floats (16-float aligned), total, decayCount. */
export function layout(c) {
  const slots = {};
  let offset = 0, decayCount = 0, count = 0;
  for (const [name, shape] of parameterShapes(c)) {
    const size = shape.reduce((a, b) => a * b, 1);
    slots[name] = { offset, shape, size };
    offset = alignTo(offset + size, 16);
    if (shape.length >= 2) decayCount = offset;
    count += size;
  }
  return { slots, total: offset, decayCount, numParameters: count };
}

// ---- reader ----------------------------------------------------------------------------
/**
 * Parse and validate a model file. Returns {config, configDict, tokenizer, metadata,
 * tensors: {name: {dtype, shape, bytes}}, version, dtype}. Throws FormatError.
 */
export function readModel(input, name = "model") {
  const { buf, version, config, configDict, payloads } = readContainer(input, name);
  const tokenizer = payloads[SECTION.tokenizer] ? readJson(payloads, SECTION.tokenizer, name) : null;
  const metadata = payloads[SECTION.metadata] ? readJson(payloads, SECTION.metadata, name) : {};
  if (tokenizer !== null && !isObject(tokenizer)) throw new FormatError(`${name}: tokenizer section: expected a JSON object`);
  if (!isObject(metadata)) throw new FormatError(`${name}: metadata section: expected a JSON object`);
  const dataLen = payloads[SECTION.data].length;
  const need = numParameters(config);
  if (Math.floor((need * 9) / 16) > dataLen) { // the smallest element: q4_0's 18 bytes per 32
    throw new FormatError(`${name}: the config needs ${need.toLocaleString("en")} parameters, but the data section holds only ${dataLen.toLocaleString("en")} bytes`);
  }
  const { tensors, dtype } = readTensors(payloads, name, config);
  return { config, configDict, tokenizer, metadata, tensors, version, dtype, fileSize: buf.length };
}

/**
 * The header, sections and config of an SLLM container (serialize.parse_container): model
 * files and LoRA adapter files (lora.js) alike. Returns {buf, version, config, configDict,
 * payloads: {section kind: bytes}}. Throws FormatError.
 */
export function readContainer(input, name) {
  const buf = toBytes(input);
  const size = buf.length;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (size < HEADER_SIZE) {
    throw new FormatError(`${name}: truncated header: file has ${size} bytes, the header needs ${HEADER_SIZE}`);
  }
  const magic = String.fromCharCode(...buf.subarray(0, 4));
  if (magic !== MAGIC) {
    throw new FormatError(`${name}: not an SLLM model file: magic ${bytesRepr(buf.subarray(0, 4))} at offset 0, expected b'SLLM'`);
  }
  const version = view.getUint32(4, true);
  if (version === 0 || version > VERSION) {
    throw new FormatError(`${name}: file format version ${version} is not supported: this sllm reads versions 1 to ${VERSION}; upgrade sllm to read it`);
  }
  const vocab = view.getUint32(8, true), emb = view.getUint32(12, true);
  const count = view.getUint32(16, true);
  if (crc32(buf.subarray(0, 20)) !== view.getUint32(20, true)) {
    throw new FormatError(`${name}: header checksum mismatch at offset 20`);
  }
  const payloads = readSections(buf, view, name, count);
  const configDict = readJson(payloads, SECTION.config, name);
  let config;
  try {
    config = configFromDict(configDict);
  } catch (e) {
    if (e instanceof ConfigError) throw new FormatError(`${name}: config section: ${e.message}`);
    throw e;
  }
  if (config.vocab_size !== vocab || config.embedding_dim !== emb) {
    throw new FormatError(`${name}: header says vocab_size ${vocab}, embedding_dim ${emb}; the config section says ${config.vocab_size}, ${config.embedding_dim}`);
  }
  return { buf, version, config, configDict, payloads };
}

/**
 * The config, metadata and float32 tensors ({name: {shape, data: Float32Array}}, f16
 * widened) of a container that holds no model weights, e.g. a LoRA adapter
 * (serialize.read_float_tensors). Throws FormatError.
 */
export function readFloatTensors(input, name) {
  const { config, configDict, payloads } = readContainer(input, name);
  const metadata = payloads[SECTION.metadata] ? readJson(payloads, SECTION.metadata, name) : null;
  if (!isObject(metadata)) throw new FormatError(`${name}: metadata section: expected a JSON object`);
  const { entries, data } = tableEntries(payloads, name);
  const tensors = {};
  for (const e of entries) {
    if (e.name in tensors) throw new FormatError(`${name}: tensor '${e.name}' appears twice in the tensor table`);
    if (!(e.dtype in DTYPES)) throw new FormatError(`${name}: tensor '${e.name}' is not float32 or float16`);
    const out = new Float32Array(e.shape.reduce((a, b) => a * b, 1));
    tensorToF32({ dtype: DTYPES[e.dtype].name, bytes: data.subarray(e.offset, e.offset + e.nbytes) }, out);
    tensors[e.name] = { shape: e.shape, data: out };
  }
  for (const [tname, t] of Object.entries(tensors)) { // finite.check_weights, after the table
    const bad = t.data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) {
      const what = Number.isNaN(t.data[bad]) ? "NaN" : t.data[bad] > 0 ? "+inf" : "-inf";
      throw new FormatError(`${name}: tensor '${tname}' holds ${what} at index [${unravel(bad, t.shape).join(", ")}]; a model with non-finite weights gives no answer (was it saved from a diverged run?)`);
    }
  }
  return { config, configDict, metadata, tensors };
}

function unravel(index, shape) {
  const out = [];
  for (let d = shape.length - 1; d >= 0; d--) { out.unshift(index % shape[d]); index = Math.floor(index / shape[d]); }
  return out;
}

function readSections(buf, view, name, count) {
  const size = buf.length, payloads = {};
  let pos = HEADER_SIZE;
  for (let i = 0; i < count; i++) {
    const start = alignTo(pos + SECTION_SIZE, ALIGN) - SECTION_SIZE;
    if (start + SECTION_SIZE > size) {
      throw new FormatError(`${name}: truncated: section ${i + 1} of ${count} should start at offset ${start}, but the file ends at ${size}`);
    }
    for (let j = pos; j < start; j++) {
      if (buf[j]) throw new FormatError(`${name}: non-zero padding before section ${i + 1} at offset ${pos}`);
    }
    const kind = view.getUint32(start, true), crc = view.getUint32(start + 4, true);
    const length = Number(view.getBigUint64(start + 8, true));
    const label = SECTION_NAMES[kind] || `#${kind}`;
    const begin = start + SECTION_SIZE;
    if (length > size - begin) {
      throw new FormatError(`${name}: truncated: ${label} section at offset ${start} declares ${length} bytes, only ${size - begin} remain in the file`);
    }
    const payload = buf.subarray(begin, begin + length);
    const actual = crc32(payload);
    if (actual !== crc) {
      throw new FormatError(`${name}: bad checksum in the ${label} section (offset ${start}): stored ${hex32(crc)}, computed ${hex32(actual)}`);
    }
    if (kind in payloads) throw new FormatError(`${name}: duplicate ${label} section at offset ${start}`);
    if (kind in SECTION_NAMES) payloads[kind] = payload;
    pos = begin + length;
  }
  if (pos !== size) {
    throw new FormatError(`${name}: ${size - pos} unexpected bytes after the last section (offset ${pos})`);
  }
  for (const required of ["config", "tensors", "data"]) {
    if (!payloads[SECTION[required]]) throw new FormatError(`${name}: missing the ${required} section`);
  }
  return payloads;
}

function readJson(payloads, kind, name) {
  const label = SECTION_NAMES[kind];
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(payloads[kind]);
  } catch {
    throw new FormatError(`${name}: ${label} section is not valid UTF-8`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FormatError(`${name}: ${label} section is not valid JSON: ${e.message}`);
  }
}

/** The tensor table's entries, each checked against the data section, and the data section
 * (serialize._table_entries). */
function tableEntries(payloads, name) {
  const table = payloads[SECTION.tensors], data = payloads[SECTION.data];
  const cur = new Cursor(table, name);
  const count = cur.u32();
  const minEntry = 2 + 4 + 16;
  if (count * minEntry > table.length) {
    throw new FormatError(`${name}: tensor table declares ${count} tensors but holds only ${table.length} bytes`);
  }
  const entries = [];
  for (let i = 0; i < count; i++) entries.push(readEntry(cur, name, data.length));
  checkOverlaps(entries, name);
  return { entries, data };
}

function readTensors(payloads, name, config) {
  const { entries, data } = tableEntries(payloads, name);
  const tensors = {};
  for (const e of entries) {
    if (e.name in tensors) throw new FormatError(`${name}: tensor '${e.name}' appears twice in the tensor table`);
    const q = QDTYPES[e.dtype];
    tensors[e.name] = { dtype: q ? q.name : DTYPES[e.dtype].name, quantized: Boolean(q), shape: e.shape,
      bytes: data.subarray(e.offset, e.offset + e.nbytes) };
  }
  const lay = layout(config);
  const embedding = embeddingName(config);
  const quantizable = new Set([...matmulWeightNames(config), embedding]); // sllm.quant.quantized_weight_names
  const codes = new Set();
  for (const [pname, slot] of Object.entries(lay.slots)) {
    const t = tensors[pname];
    if (!t) throw new FormatError(`${name}: tensor '${pname}' is missing`);
    let need = slot.shape;
    if (t.quantized) {
      need = pname === embedding ? slot.shape : slot.shape.slice().reverse();
      if (!quantizable.has(pname)) {
        throw new FormatError(`${name}: tensor '${pname}' is ${t.dtype}, but only matmul weights and wte may be quantized`);
      }
    }
    if (t.shape.join(",") !== need.join(",")) {
      throw new FormatError(`${name}: tensor '${pname}' has shape ${pyShape(t.shape)}, the config needs ${pyShape(need)}${t.quantized ? " (quantized rows run along K)" : ""}`);
    }
    codes.add(t.dtype);
  }
  const extra = Object.keys(tensors).filter((n) => tensors[n].quantized && !(n in lay.slots)).sort();
  if (extra.length) throw new FormatError(`${name}: tensor '${extra[0]}' is quantized but not a model weight`);
  return { tensors, dtype: [...codes].sort().join("/") };
}

/** The weights a quantized model holds as quantized rows (sllm.quant.matmul_weight_names). */
const LAYER_MATMULS = {
  gpt2: ["h.{i}.attn.c_attn.weight", "h.{i}.attn.c_proj.weight", "h.{i}.mlp.c_fc.weight", "h.{i}.mlp.c_proj.weight"],
  llama: ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
    "mlp.up_proj.weight", "mlp.down_proj.weight"].map((w) => `model.layers.{i}.${w}`),
};

/** The token embedding's name (layout.embedding_name). */
export function embeddingName(c) { return c.architecture === "llama" ? "model.embed_tokens.weight" : "wte"; }

/** sllm.quant.matmul_weight_names: every linear layer's weight and the output head. */
export function matmulWeightNames(c) {
  const names = [];
  for (let i = 0; i < c.num_layers; i++) {
    for (const w of LAYER_MATMULS[c.architecture]) names.push(w.replace("{i}", i));
  }
  names.push(c.tie_embeddings ? embeddingName(c) : "lm_head.weight");
  return names;
}

function readEntry(cur, name, dataLen) {
  const tname = cur.name();
  const dtype = cur.u8(), ndim = cur.u8(), reserved = cur.u16();
  if (!(dtype in DTYPES) && !(dtype in QDTYPES)) throw new FormatError(`${name}: tensor '${tname}' has unknown dtype code ${dtype}`);
  if (ndim < 1 || ndim > MAX_NDIM || reserved) {
    throw new FormatError(`${name}: tensor '${tname}' has invalid ndim ${ndim} (1..${MAX_NDIM})`);
  }
  const shape = [];
  for (let d = 0; d < ndim; d++) shape.push(cur.u32());
  const offset = cur.u64(), nbytes = cur.u64();
  if (dtype in QDTYPES) {
    checkQuantizedEntry(tname, QDTYPES[dtype], shape, nbytes, name);
  } else {
    const need = shape.reduce((a, b) => a * b, 1) * DTYPES[dtype].size;
    if (need !== nbytes) {
      throw new FormatError(`${name}: tensor '${tname}': shape ${pyShape(shape)} of ${DTYPES[dtype].name} needs ${need} bytes, the table says ${nbytes}`);
    }
  }
  if (offset % ALIGN || offset + nbytes > dataLen) {
    throw new FormatError(`${name}: tensor '${tname}' at data offset ${offset} with ${nbytes} bytes is misaligned or runs past the end of the data (${dataLen} bytes)`);
  }
  return { name: tname, dtype, shape, offset, nbytes };
}

/** A quantized tensor is (rows, K) stored as rows of ceil(K / 32) blocks. */
function checkQuantizedEntry(tname, q, shape, nbytes, name) {
  if (shape.length !== 2 || shape.includes(0)) {
    throw new FormatError(`${name}: tensor '${tname}': a ${q.name} tensor must have 2 non-zero dimensions (rows, K), got shape ${pyShape(shape)}`);
  }
  const [rows, K] = shape, blocks = Math.ceil(K / QK);
  if (rows * blocks * q.block !== nbytes) {
    throw new FormatError(`${name}: tensor '${tname}': ${rows} rows of K=${K} in ${q.name} are ${rows} x ${blocks} blocks of ${q.block} bytes = ${rows * blocks * q.block} bytes, the table says ${nbytes}`);
  }
}

function checkOverlaps(entries, name) {
  const spans = entries.map((e) => [e.offset, e.offset + e.nbytes, e.name]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) {
      throw new FormatError(`${name}: tensors '${spans[i - 1][2]}' and '${spans[i][2]}' overlap in the data section`);
    }
  }
}

class Cursor {
  constructor(buf, name) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = 0;
    this.path = name;
  }
  need(n) {
    if (this.pos + n > this.buf.length) {
      throw new FormatError(`${this.path}: tensor table truncated at byte ${this.pos} of ${this.buf.length} (needs ${n} more)`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }
  u8() { return this.view.getUint8(this.need(1)); }
  u16() { return this.view.getUint16(this.need(2), true); }
  u32() { return this.view.getUint32(this.need(4), true); }
  u64() {
    const v = this.view.getBigUint64(this.need(8), true);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  }
  name() {
    const n = this.u16();
    const at = this.need(n);
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(this.buf.subarray(at, at + n));
    } catch {
      throw new FormatError(`${this.path}: tensor name at table byte ${at} is not valid UTF-8`);
    }
  }
}

// ---- f16 <-> f32 ------------------------------------------------------------------------
/** Decode little-endian IEEE half floats into `out` (a Float32Array). */
export function f16ToF32(bytes, out) {
  const n = bytes.length >> 1;
  for (let i = 0; i < n; i++) {
    const h = bytes[2 * i] | (bytes[2 * i + 1] << 8);
    const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    if (exp === 0) out[i] = sign * frac * 2 ** -24;
    else if (exp === 31) out[i] = frac ? NaN : sign * Infinity;
    else out[i] = sign * (1024 + frac) * 2 ** (exp - 25);
  }
}

/**
 * Encode float32 values as IEEE half floats (a Uint16Array; little-endian once written), rounding
 * to nearest, ties to even, as numpy's astype(float16): subnormals kept, the smallest halves round
 * to a signed zero. `name` names the tensor in the FormatError for a value f16 cannot hold (NaN,
 * or beyond 65504: it would become inf), as sllm/finite.py's check_f16_range refuses it.
 */
export function f32ToF16(data, name) {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length), out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) {
    if (!(Math.abs(data[i]) <= F16_MAX)) {
      let largest = 0;
      for (const x of data) largest = Math.max(largest, Number.isNaN(x) ? NaN : Math.abs(x));
      throw new FormatError(`cannot save as f16: tensor '${name}' holds a value of magnitude ${pyG(largest)}, beyond f16's largest finite value 65504; save as f32 instead`);
    }
    const b = bits[i], sign = (b >>> 16) & 0x8000, e = (b >>> 23) & 0xff;
    if (e < 102) { out[i] = sign; continue; } // below half the smallest subnormal 2^-24
    // value = m * 2^(e - 150), m with its implicit bit; a half keeps m >> shift of it
    const m = (b & 0x7fffff) | 0x800000, shift = e < 113 ? 126 - e : 13;
    const rem = m & ((1 << shift) - 1), halfway = 1 << (shift - 1);
    let h = (e < 113 ? 0 : (e - 112) << 10) + ((e < 113 ? m : m & 0x7fffff) >>> shift);
    if (rem > halfway || (rem === halfway && (h & 1))) h += 1; // a carry moves into the exponent, as it should
    out[i] = sign | h;
  }
  return out;
}

const F16_MAX = 65504;

/** Python's f"{x:g}" for the magnitudes f32ToF16 reports (6 significant digits). */
function pyG(x) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return "inf";
  const [mant, exp] = x.toExponential(5).split("e"), e = Number(exp);
  const trim = (s) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  if (e < -4 || e >= 6) return `${trim(mant)}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  return trim(x.toFixed(Math.max(0, 5 - e)));
}

/** Copy a tensor of the file into `out` (a Float32Array of its size), converting to f32. */
export function tensorToF32(tensor, out) {
  if (tensor.dtype === "f32") {
    out.set(new Float32Array(tensor.bytes.slice().buffer));
  } else if (tensor.dtype === "f16") {
    f16ToF32(tensor.bytes, out);
  } else {
    throw new FormatError(`tensor dtype ${tensor.dtype} is not readable here`);
  }
}

// ---- writer ----------------------------------------------------------------------------
/**
 * The bytes of a model file, as sllm/serialize.py writes them.
 * tensors: [[name, Float32Array, Uint16Array (f16 bits) or Uint8Array, shape, dtype code (0 f32,
 * 1 f16, 2..4 quantized)], ...]. `stringify` writes the config and metadata JSON (lora.js passes
 * one that writes Python's floats, for byte-equal adapter files).
 */
export function writeModel({ configDict, tokenizer, metadata, tensors, stringify = JSON.stringify }) {
  const enc = new TextEncoder();
  const sections = [[SECTION.config, enc.encode(stringify(configDict))]];
  if (tokenizer) sections.push([SECTION.tokenizer, enc.encode(JSON.stringify(tokenizer))]);
  sections.push([SECTION.metadata, enc.encode(stringify(metadata))]);
  const { table, spans, dataLen } = tensorTable(tensors, enc);
  sections.push([SECTION.tensors, table]);
  // total size: header, then each section aligned so its payload starts at a multiple of 64
  let pos = HEADER_SIZE;
  const starts = [];
  for (const [, payload] of sections.concat([[SECTION.data, { length: dataLen }]])) {
    const start = alignTo(pos + SECTION_SIZE, ALIGN) - SECTION_SIZE;
    starts.push(start);
    pos = start + SECTION_SIZE + payload.length;
  }
  const out = new Uint8Array(pos);
  const view = new DataView(out.buffer);
  out.set(enc.encode(MAGIC), 0);
  view.setUint32(4, VERSION, true);
  view.setUint32(8, configDict.vocabSize, true);
  view.setUint32(12, configDict.embeddingDim, true);
  view.setUint32(16, sections.length + 1, true);
  view.setUint32(20, crc32(out.subarray(0, 20)), true);
  sections.forEach(([kind, payload], i) => {
    writeSectionHeader(view, starts[i], kind, crc32(payload), payload.length);
    out.set(payload, starts[i] + SECTION_SIZE);
  });
  const dataStart = starts[starts.length - 1] + SECTION_SIZE;
  tensors.forEach(([, arr], i) => {
    out.set(new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength), dataStart + spans[i]);
  });
  const data = out.subarray(dataStart, dataStart + dataLen);
  writeSectionHeader(view, starts[starts.length - 1], SECTION.data, crc32(data), dataLen);
  return out;
}

function tensorTable(tensors, enc) {
  const parts = [];
  const spans = [];
  let offset = 0, size = 4;
  for (const [name, arr, shape, code = 0] of tensors) {
    const raw = enc.encode(name);
    const entry = new Uint8Array(2 + raw.length + 4 + 4 * shape.length + 16);
    const v = new DataView(entry.buffer);
    v.setUint16(0, raw.length, true);
    entry.set(raw, 2);
    let p = 2 + raw.length;
    v.setUint8(p, code); v.setUint8(p + 1, shape.length); v.setUint16(p + 2, 0, true);
    p += 4;
    for (const d of shape) { v.setUint32(p, d, true); p += 4; }
    v.setBigUint64(p, BigInt(offset), true);
    v.setBigUint64(p + 8, BigInt(arr.byteLength), true);
    parts.push(entry);
    spans.push(offset);
    size += entry.length;
    offset = alignTo(offset + arr.byteLength, ALIGN);
  }
  const last = tensors.length ? spans[spans.length - 1] + tensors[tensors.length - 1][1].byteLength : 0;
  const table = new Uint8Array(size);
  new DataView(table.buffer).setUint32(0, tensors.length, true);
  let p = 4;
  for (const part of parts) { table.set(part, p); p += part.length; }
  return { table, spans, dataLen: last };
}

function writeSectionHeader(view, at, kind, crc, length) {
  view.setUint32(at, kind, true);
  view.setUint32(at + 4, crc, true);
  view.setBigUint64(at + 8, BigInt(length), true);
}

// ---- small helpers ---------------------------------------------------------------------
function toBytes(input) {
  if (input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  throw new FormatError(`expected the bytes of a model file, got ${jsonType(input)}`);
}

function alignTo(n, a) { return Math.ceil(n / a) * a; }
function isObject(x) { return x !== null && typeof x === "object" && !Array.isArray(x); }
function hex32(x) { return "0x" + x.toString(16).padStart(8, "0"); }
export function pyShape(shape) { return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`; }
function jsonType(x) { return x === null ? "null" : Array.isArray(x) ? "list" : typeof x; }

function bytesRepr(bytes) {
  let s = "";
  for (const b of bytes) s += b >= 32 && b < 127 && b !== 39 && b !== 92 ? String.fromCharCode(b) : "\\x" + b.toString(16).padStart(2, "0");
  return `b'${s}'`;
}
