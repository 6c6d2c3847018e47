// JavaScript twin of sllm/tokenizer.py: tests/test_node_parity.py checks them equal under Node.
// The tokenizers of sllm/tokenizer.py, rebuilt from the vocabulary stored in a model file,
// encoding and decoding exactly as Python does: words (Python's `re` word classes), Unicode
// characters, byte-level BPE (the Hugging Face `tokenizers` GPT-2 pre-tokenizer and
// merge order), and SentencePiece pieces with scores (run.c's encode/decode). Word and BPE reserve [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3; char reserves [UNK]=0.

export const SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"];
export const PAD_ID = 0, UNK_ID = 1, BOS_ID = 2, EOS_ID = 3;

// Python's `\w` (str.isalnum() or "_") and `\s` (str.isspace()) as JS classes.
const PY_W = "\\p{L}\\p{N}_";
const PY_S = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
// sllm.tokenizer._WORD_RE: a newline, a word with inner apostrophes, or one symbol.
const WORD_RE = new RegExp(`\\n|[${PY_W}]+(?:['\\u2019][${PY_W}]+)*|[^${PY_W}${PY_S}]`, "gu");
const ATTACH_LEFT = new Set([...".,!?;:)]}%'\u2019\u2026"]);
const NO_SPACE_AFTER = new Set(["\n", "(", "[", "{", "$"]);

/** A vocabulary that is not a tokenizer description sllm knows. */
export class TokenizerError extends Error {
  constructor(message) {
    super(message);
    this.name = "TokenizerError";
  }
}

// Byte fallback (format version 2): "<0x00>".."<0xFF>" after the specials (word: ids 4-259,
// char: ids 1-256); a byte run decodes as one UTF-8 string and takes no implied space.
export const BYTE_TOKENS = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
// sllm.tokenizer._UNIT_RE: the word units plus the whitespace gaps between them (group 1).
const GAP = PY_S.replace("\\n", "");
const UNIT_RE = new RegExp(`([${GAP}]+)|\\n|[${PY_W}]+(?:['\\u2019][${PY_W}]+)*|[^${PY_W}${PY_S}]`, "gu");
const UTF8 = new TextEncoder();

/** Bytes to text as Python's bytes.decode("utf-8", "replace") (a leading BOM is text). */
function utf8Text(bytes) {
  return new TextDecoder("utf-8", { ignoreBOM: true }).decode(new Uint8Array(bytes));
}

function checkByteTokens(kind, tokens, first) {
  if (BYTE_TOKENS.some((t, b) => tokens[first + b] !== t)) {
    throw new TokenizerError(`a byte-fallback ${kind} vocabulary must hold the 256 byte tokens <0x00>..<0xFF> at ids ${first}-${first + 255}`);
  }
}

function fallbackFlag(d) {
  const flag = d.byte_fallback ?? false;
  if (typeof flag !== "boolean") throw new TokenizerError(`byte_fallback must be true or false, got ${JSON.stringify(flag)}`);
  return flag;
}

// sllm.tokenizer._space_between: does decode() put a space between prev and tok?
function spaceBetween(prev, tok) {
  return !NO_SPACE_AFTER.has(prev) && tok !== "\n" && !ATTACH_LEFT.has(tok[0]);
}

class WordTokenizer {
  constructor(d) {
    if (!Array.isArray(d.tokens) || SPECIALS.some((s, i) => d.tokens[i] !== s)) {
      throw new TokenizerError(`a word vocabulary must start with ${SPECIALS.join(", ")}`);
    }
    this.kind = "word";
    this.tokens = d.tokens;
    this.lowercase = Boolean(d.lowercase);
    this.byteFallback = fallbackFlag(d);
    if (this.byteFallback) {
      checkByteTokens("word", this.tokens, SPECIALS.length);
      if (this.lowercase) throw new TokenizerError("a lowercased word vocabulary cannot have byte fallback: lowercasing loses the text's case");
    }
    this.bytesEnd = SPECIALS.length + (this.byteFallback ? 256 : 0);
    this.ids = new Map();
    this.tokens.forEach((t, i) => { if (i < SPECIALS.length || i >= this.bytesEnd) this.ids.set(t, i); });
    Object.assign(this, { bosId: BOS_ID, eosId: EOS_ID, padId: PAD_ID, unkId: UNK_ID });
  }
  get vocabSize() { return this.tokens.length; }
  words(text) { return (this.lowercase ? text.toLowerCase() : text).match(WORD_RE) || []; }
  encode(text) {
    if (this.byteFallback) return this.encodeExact(text);
    return this.words(text).map((w) => this.ids.get(w) ?? UNK_ID);
  }
  byteIds(text) { return Array.from(UTF8.encode(text), (b) => SPECIALS.length + b); }
  // sllm.tokenizer.WordTokenizer._encode_exact: decode() gives the text back.
  encodeExact(text) {
    const ids = [];
    let gap = "", prev = "\n";
    for (const m of text.matchAll(UNIT_RE)) {
      const unit = m[0];
      if (m[1] !== undefined) { gap += unit; continue; }
      const i = this.ids.get(unit);
      const implied = spaceBetween(prev, unit) ? " " : "";
      if (i !== undefined && (gap === implied || gap)) {
        if (gap !== implied) ids.push(...this.byteIds(gap));
        ids.push(i);
        prev = unit;
      } else {
        ids.push(...this.byteIds(gap + unit));
        prev = "\n";
      }
      gap = "";
    }
    ids.push(...this.byteIds(gap));
    return ids;
  }
  unknownPieces(text) { return this.byteFallback ? [] : this.words(text).filter((w) => !this.ids.has(w)); }
  tokenBytes(i) {
    if (i >= SPECIALS.length && i < this.bytesEnd) return new Uint8Array([i - SPECIALS.length]);
    return i < SPECIALS.length ? new Uint8Array(0) : UTF8.encode(this.tokens[i]);
  }
  decode(ids) {
    const out = [];
    let run = [];
    let prev = "\n";
    for (const i of ids) {
      if (i === PAD_ID || i === BOS_ID || i === EOS_ID) continue;
      if (i >= SPECIALS.length && i < this.bytesEnd) { run.push(i - SPECIALS.length); continue; }
      if (run.length) { out.push(utf8Text(run)); run = []; prev = "\n"; }
      const tok = i >= 0 && i < this.tokens.length ? this.tokens[i] : SPECIALS[UNK_ID];
      if (out.length && spaceBetween(prev, tok)) out.push(" ");
      out.push(tok);
      prev = tok;
    }
    return out.join("") + (run.length ? utf8Text(run) : "");
  }
}

class CharTokenizer {
  constructor(d) {
    if (!Array.isArray(d.chars) || d.chars[0] !== "[UNK]") {
      throw new TokenizerError("a char vocabulary must start with [UNK]");
    }
    this.kind = "char";
    this.chars = d.chars;
    this.byteFallback = fallbackFlag(d);
    if (this.byteFallback) checkByteTokens("char", this.chars, 1);
    this.first = this.byteFallback ? 257 : 1;  // the first character's id
    this.ids = new Map();
    this.chars.forEach((c, i) => { if (i === 0 || i >= this.first) this.ids.set(c, i); });
    Object.assign(this, { bosId: null, eosId: null, padId: null, unkId: 0 });
  }
  get vocabSize() { return this.chars.length; }
  // Python iterates a str by code point; so does for..of ("[UNK]" is never one character).
  encode(text) {
    const out = [];
    for (const ch of text) {
      const id = this.ids.get(ch);
      if (id !== undefined) out.push(id);
      else if (this.byteFallback) for (const b of UTF8.encode(ch)) out.push(1 + b);
      else out.push(0);
    }
    return out;
  }
  unknownPieces(text) { return this.byteFallback ? [] : [...text].filter((c) => !this.ids.has(c)); }
  tokenBytes(i) {
    if (i >= 1 && i < this.first) return new Uint8Array([i - 1]);
    return i === 0 ? new Uint8Array(0) : UTF8.encode(this.chars[i]);
  }
  decode(ids) {
    const n = this.chars.length, out = [];
    let run = [];
    for (const i of ids) {
      if (i >= 1 && i < this.first) { run.push(i - 1); continue; }
      if (run.length) { out.push(utf8Text(run)); run = []; }
      out.push(i >= 0 && i < n ? this.chars[i] : "[UNK]");
    }
    return out.join("") + (run.length ? utf8Text(run) : "");
  }
}

/** "38 of 324 tokens are not in this model's vocabulary ..." (sllm.tokenizer.unknown_report),
 * or null when nothing became [UNK]. */
export function unknownReport(tok, ids) {
  if (tok.kind === "bpe" || tok.byteFallback || tok.unkId === null || !ids.length) return null;
  const unknown = ids.filter((i) => i === tok.unkId).length;
  if (!unknown) return null;
  return `${unknown} of ${ids.length} tokens are not in this model's vocabulary and became [UNK] (the model has no byte fallback; a tokenizer trained by this sllm has)`;
}

// ---- byte-level BPE ----------------------------------------------------------------------
const HF_S = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
// The GPT-2 pattern of tokenizers' ByteLevel pre-tokenizer (use_regex=True).
const GPT2_RE = new RegExp(
  `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^${HF_S}\\p{L}\\p{N}]+|[${HF_S}]+(?![^${HF_S}])|[${HF_S}]+`, "gu");
// Python's str.splitlines(keepends=True) boundaries: BPETokenizer encodes line by line.
const LINE_RE = /[^\n\r\v\f\x1c-\x1e\x85\u2028\u2029]*(?:\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029])?/gu;

/** GPT-2's bytes_to_unicode: byte -> printable character. */
function byteChars() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const table = new Array(256);
  bs.forEach((b, i) => { table[b] = String.fromCodePoint(cs[i]); });
  return table;
}
const BYTE_CHAR = byteChars();
/** GPT-2's printable character -> byte (decode; constrain.js reads token bytes with it). */
export const CHAR_BYTE = new Map(BYTE_CHAR.map((c, b) => [c, b]));

class BPETokenizer {
  constructor(d) {
    const model = d.hf && d.hf.model;
    if (!model || model.type !== "BPE" || typeof model.vocab !== "object") {
      throw new TokenizerError("corrupt bpe tokenizer description: no BPE model with a vocab");
    }
    this.kind = "bpe";
    this.vocab = new Map(Object.entries(model.vocab));
    this.idToToken = [];
    for (const [tok, id] of this.vocab) this.idToToken[id] = tok;
    for (const added of d.hf.added_tokens || []) this.idToToken[added.id] = added.content;
    this.ranks = new Map();
    (model.merges || []).forEach((m, i) => {
      const [a, b] = Array.isArray(m) ? m : m.split(" ");
      this.ranks.set(a + " " + b, i);
    });
    this.ignoreMerges = Boolean(model.ignore_merges);
    this.cache = new Map();
    Object.assign(this, { bosId: BOS_ID, eosId: EOS_ID, padId: PAD_ID, unkId: UNK_ID });
  }
  get vocabSize() { return this.idToToken.length; }
  encode(text) {
    const out = [];
    const enc = new TextEncoder();
    const lines = text.match(LINE_RE).filter((l) => l.length);
    for (const line of lines.length ? lines : [text]) {
      for (const piece of line.match(GPT2_RE) || []) {
        const word = Array.from(enc.encode(piece), (b) => BYTE_CHAR[b]).join("");
        for (const id of this.encodeWord(word)) out.push(id);
      }
    }
    return out;
  }
  encodeWord(word) {
    const hit = this.cache.get(word);
    if (hit) return hit;
    let ids;
    if (this.ignoreMerges && this.vocab.has(word)) {
      ids = [this.vocab.get(word)];
    } else {
      const symbols = [...word];
      for (;;) {
        let best = -1, bestRank = Infinity;
        for (let i = 0; i + 1 < symbols.length; i++) {
          const r = this.ranks.get(symbols[i] + " " + symbols[i + 1]);
          if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
        }
        if (best < 0) break;
        symbols.splice(best, 2, symbols[best] + symbols[best + 1]);
      }
      ids = symbols.map((s) => this.vocab.get(s) ?? UNK_ID);
    }
    if (this.cache.size < 10000) this.cache.set(word, ids);
    return ids;
  }
  unknownPieces() { return []; }
  decode(ids) {
    const bytes = [];
    for (const i of ids) {
      if (i === PAD_ID || i === BOS_ID || i === EOS_ID) continue;
      const tok = this.idToToken[i];
      if (tok === undefined) continue;
      for (const ch of tok) {
        const b = CHAR_BYTE.get(ch);
        if (b !== undefined) bytes.push(b);
        else bytes.push(...new TextEncoder().encode(ch));
      }
    }
    return utf8Text(bytes);
  }
}

// ---- SentencePiece pieces with scores (llama2.c's tokenizer.bin, GGUF llama vocabularies)
const BYTE_INDEX = new Map(BYTE_TOKENS.map((t, b) => [t, b]));
const NEVER = -1e10;  // run.c's initial best_score: a merge must score above it

/** A binary min-heap of [negated score, position, ...] entries (the leftmost on ties). */
class PairHeap {
  constructor() { this.items = []; }
  get size() { return this.items.length; }
  less(a, b) { return a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]); }
  push(item) {
    const h = this.items;
    h.push(item);
    for (let k = h.length - 1; k > 0;) {
      const up = (k - 1) >> 1;
      if (!this.less(h[k], h[up])) break;
      [h[k], h[up]] = [h[up], h[k]];
      k = up;
    }
  }
  pop() {
    const h = this.items, top = h[0], last = h.pop();
    if (h.length) {
      h[0] = last;
      for (let k = 0; ;) {
        const l = 2 * k + 1, r = l + 1;
        let m = k;
        if (l < h.length && this.less(h[l], h[m])) m = l;
        if (r < h.length && this.less(h[r], h[m])) m = r;
        if (m === k) break;
        [h[k], h[m]] = [h[m], h[k]];
        k = m;
      }
    }
    return top;
  }
}

function specialId(specials, key, n) {
  const v = specials[key] ?? null;
  if (v !== null && !(Number.isInteger(v) && v >= 0 && v < n)) {
    throw new TokenizerError(`spm special ${key} id ${JSON.stringify(v)} is not in [0, ${n})`);
  }
  return v;
}

// sllm.tokenizer.SPMTokenizer: run.c's encode (dummy prefix, characters or their byte
// tokens, then the best-scoring adjacent pair merged first, the leftmost on ties) and
// decode (a piece's leading space dropped after [BOS], byte tokens as raw bytes).
class SPMTokenizer {
  constructor(d) {
    const { pieces, scores } = d;
    if (!Array.isArray(pieces) || !Array.isArray(scores) || !pieces.length || pieces.length !== scores.length) {
      throw new TokenizerError("an spm vocabulary needs one score per piece");
    }
    if (!pieces.every((p) => typeof p === "string")) throw new TokenizerError("spm pieces must be strings");
    if (!scores.every((x) => typeof x === "number" && Number.isFinite(x))) throw new TokenizerError("spm scores must be finite numbers");
    const specials = d.specials ?? {};
    const n = pieces.length;
    this.kind = "spm";
    this.pieces = pieces;
    this.scores = scores;
    this.addDummyPrefix = d.add_dummy_prefix ?? true;
    if (typeof this.addDummyPrefix !== "boolean") throw new TokenizerError("add_dummy_prefix must be true or false");
    Object.assign(this, { bosId: specialId(specials, "bos", n), eosId: specialId(specials, "eos", n),
      unkId: specialId(specials, "unk", n), padId: specialId(specials, "pad", n) });
    this.ids = new Map();
    pieces.forEach((p, i) => { if (!this.ids.has(p)) this.ids.set(p, i); });
    this.byteOf = new Map();
    pieces.forEach((p, i) => { if (BYTE_INDEX.has(p)) this.byteOf.set(i, BYTE_INDEX.get(p)); });
    this.byteIds = BYTE_TOKENS.map((t) => this.ids.get(t) ?? this.unkId);
    this.byteFallback = BYTE_TOKENS.every((t) => this.ids.has(t));
  }
  get vocabSize() { return this.pieces.length; }
  encode(text) {
    const ids = [];
    for (const ch of (text && this.addDummyPrefix ? " " : "") + text) {
      const id = this.ids.get(ch);
      if (id !== undefined) ids.push(id);
      else for (const b of UTF8.encode(ch)) if (this.byteIds[b] !== null) ids.push(this.byteIds[b]);
    }
    return this.merge(ids);
  }
  merge(ids) {
    const n = ids.length, heap = new PairHeap();
    const next = ids.map((_, i) => i + 1), prev = ids.map((_, i) => i - 1), alive = ids.map(() => true);
    const push = (i) => {
      const j = next[i];
      if (i < 0 || j >= n) return;
      const m = this.ids.get(this.pieces[ids[i]] + this.pieces[ids[j]]);
      if (m !== undefined && this.scores[m] > NEVER) heap.push([-this.scores[m], i, ids[i], ids[j], m]);
    };
    for (let i = 0; i + 1 < n; i++) push(i);
    while (heap.size) {
      const [, i, a, b, m] = heap.pop();
      const j = next[i];
      if (!alive[i] || j >= n || ids[i] !== a || ids[j] !== b) continue;  // changed by an earlier merge
      ids[i] = m; alive[j] = false; next[i] = next[j];
      if (next[j] < n) prev[next[j]] = i;
      push(prev[i]);
      push(i);
    }
    return ids.filter((_, i) => alive[i]);
  }
  unknownPieces() { return []; }
  tokenBytes(i) {
    if (this.byteOf.has(i)) return new Uint8Array([this.byteOf.get(i)]);
    if ([this.bosId, this.eosId, this.padId, this.unkId].includes(i)) return new Uint8Array(0);
    return UTF8.encode(this.pieces[i]);
  }
  decode(ids) {
    const bytes = [], drop = [this.bosId, this.eosId, this.padId].filter((x) => x !== null);
    let prev = null;
    for (const i of ids) {
      if (this.byteOf.has(i)) bytes.push(this.byteOf.get(i));
      else if (drop.includes(i)) { /* [BOS], [EOS], [PAD] write nothing */ }
      else if (i >= 0 && i < this.pieces.length) {
        const piece = this.pieces[i];
        bytes.push(...UTF8.encode(prev === this.bosId && piece.startsWith(" ") ? piece.slice(1) : piece));
      } else bytes.push(...UTF8.encode("<unk>"));
      prev = i;
    }
    return utf8Text(bytes);
  }
}

const KINDS = { word: WordTokenizer, char: CharTokenizer, bpe: BPETokenizer, spm: SPMTokenizer };

/** Rebuild a tokenizer from its to_dict() description (as stored in a model file). */
export function tokenizerFromDict(d) {
  if (d === null || typeof d !== "object" || !(d.type in KINDS)) {
    const kind = d && typeof d === "object" ? d.type : typeof d;
    throw new TokenizerError(`not a tokenizer description (type ${JSON.stringify(kind)}); expected one of bpe, char, spm, word`);
  }
  if (Number(d.version ?? 1) > 2) {
    throw new TokenizerError(`tokenizer format version ${d.version} is newer than this sllm supports (2)`);
  }
  return new KINDS[d.type](d);
}
