// JavaScript twin of sllm/grammar.py and sllm/constrain.py: tests/test_constrain_node.py checks them equal under Node.
// Constrained decoding in the browser: a regex, a JSON Schema subset, any JSON object or a
// choice of strings, compiled to a byte automaton (built lazily) and held as a token mask
// over the model's vocabulary. See sllm/constrain.py for how and why; names follow it.
//
//   import { compileFor } from "./constrain.js";
//   const g = compileFor(tokenizer, { jsonSchema: {...} });   // or { regex }, { choices }, { jsonObject: true }
//   const c = g.start();  c.allowedMask(remaining, eosId) -> Uint8Array(V);  c.advance(token)

import { CHAR_BYTE } from "./tokenizers.js";

const MAX_UNICODE = 0x10ffff, JSON_DEPTH = 3, MAX_NFA_STATES = 200000, DEAD = -1, INF = 2 ** 30;

export class GrammarError extends Error {
  constructor(message) { super(message); this.name = "GrammarError"; }
}
export class ConstraintError extends GrammarError {
  constructor(message) { super(message); this.name = "ConstraintError"; }
}

// ---- syntax tree (sllm.grammar) ----------------------------------------------------------
export function chars(...ranges) {
  const out = [];
  for (const [lo, hi] of ranges.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1])) {
    if (out.length && lo <= out[out.length - 1][1] + 1) out[out.length - 1][1] = Math.max(out[out.length - 1][1], hi);
    else out.push([lo, hi]);
  }
  return ["set", out];
}
export function negate(node) {
  const out = [];
  let next = 0;
  for (const [lo, hi] of node[1]) {
    if (lo > next) out.push([next, lo - 1]);
    next = hi + 1;
  }
  if (next <= MAX_UNICODE) out.push([next, MAX_UNICODE]);
  return ["set", out];
}
const lit = (text) => ["cat", Array.from(text, (c) => chars([c.codePointAt(0), c.codePointAt(0)]))];
const cat = (...nodes) => ["cat", nodes];
const alt = (...nodes) => (nodes.length === 1 ? nodes[0] : ["alt", nodes]);
const rep = (node, lo, hi) => ["rep", node, lo, hi];
const opt = (node) => rep(node, 0, 1);
const EMPTY = ["cat", []];
const one = (c) => [c.codePointAt(0), c.codePointAt(0)];

const DIGIT = chars([48, 57]);
const WORD = chars([48, 57], [65, 90], [95, 95], [97, 122]);
const SPACE = chars([9, 13], [32, 32]);
const CLASS_ESCAPES = { d: DIGIT, w: WORD, s: SPACE, D: negate(DIGIT), W: negate(WORD), S: negate(SPACE) };
const CHAR_ESCAPES = { n: "\n", t: "\t", r: "\r", f: "\f", v: "\v", 0: "\0" };

class RegexParser {
  constructor(pattern) { this.p = pattern; this.cps = Array.from(pattern); this.i = 0; }
  fail(what) { return new GrammarError(`regex ${pyRepr(this.p)}: ${what} at position ${this.i}`); }
  peek() { return this.i < this.cps.length ? this.cps[this.i] : ""; }
  take() {
    const c = this.peek();
    if (!c) throw this.fail("unexpected end");
    this.i++;
    return c;
  }
  startsWith(s) { return this.cps.slice(this.i, this.i + s.length).join("") === s; }
  alternation() {
    const branches = [this.sequence()];
    while (this.peek() === "|") { this.i++; branches.push(this.sequence()); }
    return alt(...branches);
  }
  sequence() {
    const items = [];
    while (!["", "|", ")"].includes(this.peek())) items.push(this.quantified(this.atom()));
    return cat(...items);
  }
  quantified(node) {
    while (this.peek() && "*+?{".includes(this.peek())) {
      const c = this.take();
      let [lo, hi] = { "*": [0, null], "+": [1, null], "?": [0, 1] }[c] || [0, 0];
      if (c === "{") [lo, hi] = this.braces();
      if (this.peek() === "?" || this.peek() === "+") this.i++;
      node = rep(node, lo, hi);
    }
    return node;
  }
  braces() {
    const rest = this.cps.slice(this.i).join("");
    const end = rest.indexOf("}");
    const body = end >= 0 ? rest.slice(0, end) : "";
    const [loS, ...more] = body.split(",");
    const hiS = more.join(",");
    if (end < 0 || !/^\d+$/.test(loS) || (hiS && !/^\d+$/.test(hiS)) || more.length > 1) {
      throw this.fail("a repetition must read {m}, {m,} or {m,n}");
    }
    this.i += Array.from(body).length + 1;
    const lo = parseInt(loS, 10);
    const hi = !body.includes(",") ? lo : (hiS ? parseInt(hiS, 10) : null);
    if (hi !== null && hi < lo) throw this.fail(`repetition {${body}} has max < min`);
    return [lo, hi];
  }
  atom() {
    const c = this.take();
    if (c === "(") {
      if (this.startsWith("?:")) this.i += 2;
      else if (this.peek() === "?") throw this.fail("lookaround and group flags are not supported");
      const node = this.alternation();
      if (this.peek() !== ")") throw this.fail("missing )");
      this.i++;
      return node;
    }
    if (c === "[") return this.charClass();
    if (c === ".") return negate(chars(one("\n")));
    if (c === "\\") return this.escape();
    if (c === "^" || c === "$") return EMPTY;
    if ("*+?{)".includes(c)) throw this.fail(`nothing to repeat or unbalanced '${c}'`);
    return lit(c);
  }
  escape() {
    const c = this.take();
    if (c in CLASS_ESCAPES) return CLASS_ESCAPES[c];
    if (c in CHAR_ESCAPES) return lit(CHAR_ESCAPES[c]);
    if ("xuU".includes(c)) {
      const width = { x: 2, u: 4, U: 8 }[c];
      const digits = this.cps.slice(this.i, this.i + width).join("");
      if (digits.length !== width || !/^[0-9a-fA-F]+$/.test(digits)) throw this.fail(`\\${c} needs ${width} hex digits`);
      this.i += width;
      const v = parseInt(digits, 16);
      return chars([v, v]);
    }
    if (/^[\p{L}\p{N}]$/u.test(c)) throw this.fail(`escape \\${c} is not supported (no backreferences or anchors)`);
    return lit(c);
  }
  charClass() {
    const negated = this.peek() === "^";
    if (negated) this.i++;
    const ranges = [];
    let first = true;
    while (first || this.peek() !== "]") {
      first = false;
      const lo = this.classItem();
      const after = this.cps[this.i + 1];
      if (this.peek() === "-" && after !== "]" && after !== undefined) {
        this.i++;
        const hi = this.classItem();
        if (lo.length !== 1 || hi.length !== 1 || lo[0][0] > hi[0][0]) throw this.fail("bad character range");
        ranges.push([lo[0][0], hi[0][0]]);
      } else {
        ranges.push(...lo);
      }
    }
    this.i++;
    const node = chars(...ranges);
    return negated ? negate(node) : node;
  }
  classItem() {
    const c = this.take();
    if (c !== "\\") return [one(c)];
    const node = this.escape();
    return (node[0] === "set" ? node[1] : node[1][0][1]).map((r) => r.slice());
  }
}

export function parseRegex(pattern) {
  if (typeof pattern !== "string") throw new GrammarError(`regex must be a string, got ${typeof pattern}`);
  const r = new RegexParser(pattern);
  const node = r.alternation();
  if (r.i !== r.cps.length) throw r.fail("unbalanced )");
  return node;
}

// ---- JSON ------------------------------------------------------------------------------
const WS = opt(lit(" "));
const HEX = chars([48, 57], [65, 70], [97, 102]);
const STRING_CHAR = alt(negate(chars([0, 31], [34, 34], [92, 92])),
  cat(lit("\\"), chars(...Array.from('"\\/bfnrt', one))), cat(lit("\\u"), rep(HEX, 4, 4)));
const INTEGER = cat(opt(lit("-")), alt(lit("0"), cat(chars([49, 57]), rep(DIGIT, 0, null))));
const NUMBER = cat(INTEGER, opt(cat(lit("."), rep(DIGIT, 1, null))),
  opt(cat(chars([69, 69], [101, 101]), opt(chars([43, 43], [45, 45])), rep(DIGIT, 1, null))));
const SCALARS = { integer: INTEGER, number: NUMBER, boolean: alt(lit("true"), lit("false")), null: lit("null") };

const string = (lo = 0, hi = null) => cat(lit('"'), rep(STRING_CHAR, lo, hi), lit('"'));
const members = (member) => opt(cat(member, rep(cat(WS, lit(","), WS, member), 0, null)));

export function anyJson(depth = JSON_DEPTH, top = "object") {
  if (depth <= 0 && top === "value") return alt(string(), NUMBER, ...Object.values(SCALARS));
  const inner = anyJson(depth - 1, "value");
  const obj = cat(lit("{"), WS, members(cat(string(), WS, lit(":"), WS, inner)), WS, lit("}"));
  if (top === "object") return obj;
  const arr = cat(lit("["), WS, members(inner), WS, lit("]"));
  return alt(string(), NUMBER, ...Object.values(SCALARS), obj, arr);
}

const IGNORED = new Set(["title", "description", "default", "examples", "$schema", "$id", "$comment",
  "additionalProperties", "strict", "format", "readOnly", "writeOnly", "deprecated"]);
const SUPPORTED = new Set(["type", "properties", "required", "items", "minItems", "maxItems", "enum",
  "const", "minLength", "maxLength", "pattern", "anyOf", "oneOf"]);
/** Python's repr() of a JSON value, so that messages read as sllm/grammar.py's. */
function pyRepr(v) {
  if (typeof v === "string") return `'${v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\t/g, "\\t")}'`;
  if (v === null || v === undefined) return "None";
  if (typeof v === "boolean") return v ? "True" : "False";
  if (Array.isArray(v)) return "[" + v.map(pyRepr).join(", ") + "]";
  if (typeof v === "object") return "{" + Object.entries(v).map(([k, x]) => `${pyRepr(k)}: ${pyRepr(x)}`).join(", ") + "}";
  return String(v);
}
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

export function fromSchema(schema, where = "schema") {
  if (schema === true || (isObject(schema) && !Object.keys(schema).length)) return anyJson(JSON_DEPTH, "value");
  if (!isObject(schema)) throw new GrammarError(`${where} must be an object, got ${Array.isArray(schema) ? "list" : typeof schema}`);
  const unknown = Object.keys(schema).filter((k) => !SUPPORTED.has(k) && !IGNORED.has(k)).sort();
  if (unknown.length) {
    throw new GrammarError(`${where}: keyword ${pyRepr(unknown[0])} is not supported (supported: ${[...SUPPORTED].sort().join(", ")})`);
  }
  if ("const" in schema) return literal(schema.const);
  if ("enum" in schema) {
    if (!Array.isArray(schema.enum) || !schema.enum.length) throw new GrammarError(`${where}.enum must be a non-empty array`);
    return alt(...schema.enum.map(literal));
  }
  for (const key of ["anyOf", "oneOf"]) {
    if (key in schema) {
      const options = schema[key];
      if (!Array.isArray(options) || !options.length) throw new GrammarError(`${where}.${key} must be a non-empty array`);
      return alt(...options.map((s, i) => fromSchema(s, `${where}.${key}[${i}]`)));
    }
  }
  let kind = schema.type;
  if (Array.isArray(kind) && kind.length) return alt(...kind.map((k) => fromSchema({ ...schema, type: k }, where)));
  if (kind === undefined) kind = "properties" in schema ? "object" : "items" in schema ? "array" : undefined;
  if (kind === undefined) return anyJson(JSON_DEPTH, "value");
  return typed(schema, kind, where);
}

function typed(schema, kind, where) {
  if (kind in SCALARS) return SCALARS[kind];
  if (kind === "string") {
    if ("pattern" in schema) return cat(lit('"'), parseRegex(schema.pattern), lit('"'));
    const [lo, hi] = bounds(schema, "minLength", "maxLength", where);
    return string(lo, hi);
  }
  if (kind === "array") return array(schema, where);
  if (kind === "object") return object(schema, where);
  throw new GrammarError(`${where}.type ${pyRepr(kind)} is not one of string, number, integer, boolean, null, array, object`);
}

function bounds(schema, loKey, hiKey, where) {
  const lo = schema[loKey] ?? 0, hi = schema[hiKey] ?? null;
  for (const [key, v] of [[loKey, lo], [hiKey, hi]]) {
    if (v !== null && (!Number.isInteger(v) || v < 0 || v > 10000)) {
      throw new GrammarError(`${where}.${key} must be an integer in [0, 10000], got ${pyRepr(v)}`);
    }
  }
  if (hi !== null && hi < lo) throw new GrammarError(`${where}: ${hiKey} ${hi} < ${loKey} ${lo}: no value can satisfy it`);
  return [lo, hi];
}

function array(schema, where) {
  const item = fromSchema("items" in schema ? schema.items : true, `${where}.items`);
  const [lo, hi] = bounds(schema, "minItems", "maxItems", where);
  const sepItem = cat(WS, lit(","), WS, item);
  let body;
  if (hi === 0) body = EMPTY;
  else if (lo === 0) body = opt(cat(item, rep(sepItem, 0, hi === null ? null : hi - 1)));
  else body = cat(item, rep(sepItem, lo - 1, hi === null ? null : hi - 1));
  return cat(lit("["), WS, body, WS, lit("]"));
}

function object(schema, where) {
  const props = schema.properties;
  if (props === undefined) return anyJson(JSON_DEPTH - 1, "object");
  if (!isObject(props)) throw new GrammarError(`${where}.properties must be an object`);
  const required = schema.required ?? [];
  if (!Array.isArray(required) || required.some((r) => !(r in props))) {
    throw new GrammarError(`${where}.required must list names from properties, got ${pyRepr(required)}`);
  }
  const list = Object.entries(props).map(([name, sub]) => [
    cat(lit(pyJson(name)), WS, lit(":"), WS, fromSchema(sub, `${where}.properties.${name}`)), required.includes(name)]);
  return cat(lit("{"), WS, after(list, 0, false), WS, lit("}"));
}

function after(list, i, written) {
  if (i === list.length) return EMPTY;
  const [member, needed] = list[i];
  const comma = written ? cat(WS, lit(","), WS, member) : member;
  if (written) return cat(needed ? comma : opt(comma), after(list, i + 1, true));
  const withIt = cat(comma, after(list, i + 1, true));
  return needed ? withIt : alt(withIt, after(list, i + 1, false));
}

/** Python's json.dumps (ensure_ascii=True for keys, as json.dumps(name) writes them). */
function pyJson(value, ensureAscii = true) {
  if (typeof value === "string") {
    let out = '"';
    for (const ch of value) {
      const cp = ch.codePointAt(0);
      const esc = { '"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f" }[ch];
      if (esc) out += esc;
      else if (cp < 0x20 || (ensureAscii && cp > 0x7f)) {
        for (const unit of cp > 0xffff ? [0xd800 + ((cp - 0x10000) >> 10), 0xdc00 + ((cp - 0x10000) & 0x3ff)] : [cp]) {
          out += "\\u" + unit.toString(16).padStart(4, "0");
        }
      } else out += ch;
    }
    return out + '"';
  }
  if (value === null) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new GrammarError(`${value} is not a JSON value`);
    return Number.isInteger(value) ? String(value) : String(value);
  }
  if (Array.isArray(value)) return "[" + value.map((v) => pyJson(v, ensureAscii)).join(",") + "]";
  return "{" + Object.entries(value).map(([k, v]) => pyJson(k, ensureAscii) + ":" + pyJson(v, ensureAscii)).join(",") + "}";
}
const literal = (value) => lit(pyJson(value, false));

export function fromChoices(options) {
  if (!Array.isArray(options) || !options.length || !options.every((o) => typeof o === "string" && o)) {
    throw new GrammarError("choices must be a non-empty array of non-empty strings");
  }
  return alt(...options.map(lit));
}

// ---- code points -> UTF-8 byte ranges -----------------------------------------------------
const utf8 = (cp) => Array.from(new TextEncoder().encode(String.fromCodePoint(cp)));

export function utf8Sequences(lo, hi) {
  if (lo <= 0xdfff && hi >= 0xd800) {
    const parts = [...(lo < 0xd800 ? [[lo, 0xd7ff]] : []), ...(hi > 0xdfff ? [[0xe000, hi]] : [])];
    return parts.flatMap(([a, b]) => utf8Sequences(a, b));
  }
  for (const edge of [0x7f, 0x7ff, 0xffff]) {
    if (lo <= edge && edge < hi) return utf8Sequences(lo, edge).concat(utf8Sequences(edge + 1, hi));
  }
  const n = utf8(lo).length;
  for (let i = 1; i < n; i++) {
    const m = 2 ** (6 * i) - 1;
    const loTop = Math.floor(lo / (m + 1)), hiTop = Math.floor(hi / (m + 1));
    if (loTop !== hiTop) {
      if (lo % (m + 1)) return utf8Sequences(lo, loTop * (m + 1) + m).concat(utf8Sequences(loTop * (m + 1) + m + 1, hi));
      if (hi % (m + 1) !== m) return utf8Sequences(lo, hiTop * (m + 1) - 1).concat(utf8Sequences(hiTop * (m + 1), hi));
    }
  }
  const a = utf8(lo), b = utf8(hi);
  return [a.map((x, i) => [x, b[i]])];
}

// ---- the NFA ----------------------------------------------------------------------------
class NFA {
  constructor(node) {
    this.edges = [];
    this.eps = [];
    this.start = this.add();
    this.accept = this.build(node, this.start);
  }
  add() {
    if (this.edges.length >= MAX_NFA_STATES) {
      throw new GrammarError(`the grammar is too large (more than ${MAX_NFA_STATES} automaton states); use smaller repetition counts`);
    }
    this.edges.push([]);
    this.eps.push([]);
    return this.edges.length - 1;
  }
  build(node, s) {
    const kind = node[0];
    if (kind === "set") return this.charSet(node[1], s);
    if (kind === "cat") {
      for (const child of node[1]) s = this.build(child, s);
      return s;
    }
    if (kind === "alt") {
      const end = this.add();
      for (const child of node[1]) this.eps[this.build(child, s)].push(end);
      return end;
    }
    const [, child, lo, hi] = node;
    for (let i = 0; i < lo; i++) s = this.build(child, s);
    if (hi === null) {
      const loop = this.add();
      this.eps[s].push(loop);
      this.eps[this.build(child, loop)].push(loop);
      return loop;
    }
    const end = this.add();
    for (let i = 0; i < hi - lo; i++) {
      this.eps[s].push(end);
      s = this.build(child, s);
    }
    this.eps[s].push(end);
    return end;
  }
  charSet(ranges, s) {
    if (!ranges.length) throw new GrammarError("the grammar contains a character class that matches nothing");
    const end = this.add();
    for (const [lo, hi] of ranges) {
      for (const seq of utf8Sequences(lo, hi)) {
        let cur = s;
        seq.forEach(([a, b], i) => {
          const next = i === seq.length - 1 ? end : this.add();
          this.edges[cur].push([a, b, next]);
          cur = next;
        });
      }
    }
    return end;
  }
  closure(states) {
    const stack = [...states], seen = new Set(states);
    while (stack.length) {
      for (const t of this.eps[stack.pop()]) if (!seen.has(t)) { seen.add(t); stack.push(t); }
    }
    return [...seen].sort((a, b) => a - b);
  }
}

// ---- vocabulary -------------------------------------------------------------------------
/** The bytes each token contributes (empty for specials and [UNK], never allowed). */
export function tokenBytes(tok) {
  const skip = new Set([tok.padId, tok.bosId, tok.eosId, tok.unkId].filter((x) => x !== null && x !== undefined));
  const enc = new TextEncoder(), out = [];
  for (let i = 0; i < tok.vocabSize; i++) {
    if (skip.has(i)) { out.push([]); continue; }
    if (typeof tok.tokenBytes === "function") { out.push(Array.from(tok.tokenBytes(i))); continue; }
    if (tok.kind === "bpe") {
      const piece = tok.idToToken[i];
      const ok = piece !== undefined && [...piece].every((c) => CHAR_BYTE.has(c));
      out.push(ok ? [...piece].map((c) => CHAR_BYTE.get(c)) : []);
      continue;
    }
    const text = tok.decode([i]); // U+FFFD alone: a byte of a longer character, never allowed
    out.push(text.includes("\ufffd") ? [] : Array.from(enc.encode(text)));
  }
  return out;
}

function spacing(tok, pieces) {
  const V = pieces.length, before = new Uint8Array(V), after = new Uint8Array(V);
  if (tok.kind !== "word") return [before, after];
  const dec = new TextDecoder();  // Python's bytes.isalpha(): ASCII letters only
  const probe = pieces.findIndex((p, t) => { // a word with a space on both sides
    if (!p.length || !p.every((b) => (b >= 65 && b <= 90) || (b >= 97 && b <= 122))) return false;
    const s = dec.decode(new Uint8Array(p));
    return tok.decode([t, t]) === `${s} ${s}`;
  });
  if (probe < 0) return [before, after];
  const w = tok.decode([probe]);
  pieces.forEach((p, t) => {
    if (!p.length) return;
    const s = dec.decode(new Uint8Array(p));
    before[t] = tok.decode([probe, t]) === `${w} ${s}` ? 1 : 0;
    after[t] = tok.decode([t, probe]) === `${s} ${w}` ? 1 : 0;
  });
  return [before, after];
}

class Trie {
  constructor(items) {
    this.children = [[]];
    this.ends = [[]];
    const index = [new Map()];
    for (const [token, piece] of items) {
      let node = 0;
      for (const b of piece) {
        let next = index[node].get(b);
        if (next === undefined) {
          next = this.children.length;
          index[node].set(b, next);
          this.children.push([]);
          this.ends.push([]);
          index.push(new Map());
          this.children[node].push([b, next]);
        }
        node = next;
      }
      this.ends[node].push(token);
    }
  }
}

class TokenTable {
  constructor(tok) {
    this.tok = tok;
    this.vocabSize = tok.vocabSize;
    this.pieces = tokenBytes(tok);
    [this.spaceBefore, this.spaceAfter] = spacing(tok, this.pieces);
    this.eosId = tok.eosId;
    this.grammars = new Map();
    const items = (flag) => this.pieces.map((p, t) => [t, p]).filter(([t, p]) => p.length && Boolean(this.spaceBefore[t]) === flag);
    this.tries = [[false, new Trie(items(false))], [true, new Trie(items(true))]];
  }
}

// ---- grammar x vocabulary -----------------------------------------------------------------
class Mask {
  constructor(V, ids, states, bound, eosId, complete) {
    this.ids = ids;
    this.allow = new Uint8Array(V);
    this.next = new Int32Array(V).fill(-1);
    this.bound = new Float64Array(V).fill(INF);
    ids.forEach((t, i) => { this.allow[t] = 1; this.next[t] = states[i]; this.bound[t] = bound[i]; });
    this.maxBound = ids.length ? Math.max(...bound) : 0;
    this.minBound = ids.length ? Math.min(...bound) : INF;
    this.allowEos = this.allow;
    if (complete && eosId !== null && eosId !== undefined) {
      this.allowEos = this.allow.slice();
      this.allowEos[eosId] = 1;
    }
  }
}

export class Grammar {
  constructor(node, table) {
    this.nfa = new NFA(node);
    this.table = table;
    this.sets = [];
    this.ids = new Map();
    this.rows = [];
    this.walks = new Map();
    this.boundOf = new Map();
    this.masks = new Map();
    this.startState = 2 * this.intern(this.nfa.closure([this.nfa.start]));
    if (!this.mask(this.startState).ids.length && !this.accepting(this.startState)) {
      throw new ConstraintError("this model's vocabulary cannot write any text of the grammar");
    }
  }
  intern(states) {
    const key = states.join(",");
    let got = this.ids.get(key);
    if (got === undefined) {
      got = this.sets.length;
      this.ids.set(key, got);
      this.sets.push(new Set(states));
      this.rows.push(null);
    }
    return got;
  }
  accepting(p) { return this.sets[Math.floor(p / 2)].has(this.nfa.accept); }
  row(d) {
    let got = this.rows[d];
    if (got === null) {
      const targets = new Map();
      for (const s of this.sets[d]) {
        for (const [lo, hi, t] of this.nfa.edges[s]) {
          for (let b = lo; b <= hi; b++) {
            if (!targets.has(b)) targets.set(b, new Set());
            targets.get(b).add(t);
          }
        }
      }
      got = new Int32Array(256).fill(DEAD);
      for (const [b, ts] of [...targets].sort((x, y) => x[0] - y[0])) got[b] = this.intern(this.nfa.closure([...ts]));
      this.rows[d] = got;
    }
    return got;
  }
  walk(p) {
    let got = this.walks.get(p);
    if (got) return got;
    const tokens = [], states = [];
    const d = Math.floor(p / 2), space = p % 2;
    for (const [spaced, trie] of this.table.tries) {
      const start = spaced && space ? this.row(d)[32] : d;
      if (start === DEAD) continue;
      const stack = [[0, start]];
      while (stack.length) {
        const [node, s] = stack.pop();
        const row = this.row(s);
        for (const [b, child] of trie.children[node]) {
          const t = row[b];
          if (t === DEAD) continue;
          for (const token of trie.ends[child]) { tokens.push(token); states.push(t); }
          if (trie.children[child].length) stack.push([child, t]);
        }
      }
    }
    got = [tokens, states.map((s, i) => 2 * s + this.table.spaceAfter[tokens[i]])];
    this.walks.set(p, got);
    return got;
  }
  explore(p) {
    const edges = new Map();
    let frontier = [p], found = false;
    while (frontier.length && !found) {
      const next = [];
      for (const s of frontier) {
        if (this.accepting(s)) this.boundOf.set(s, 0);
        if (this.boundOf.has(s)) { found = true; continue; }
        const outs = new Set(this.walk(s)[1]);
        edges.set(s, outs);
        for (const t of [...outs].sort((a, b) => a - b)) if (!edges.has(t) && !next.includes(t)) next.push(t);
      }
      frontier = next;
    }
    let changed = true;
    while (changed) {
      changed = false;
      for (const [s, outs] of edges) {
        let best = INF;
        for (const t of outs) best = Math.min(best, (this.boundOf.has(t) ? this.boundOf.get(t) : INF) + 1);
        if (best < (this.boundOf.has(s) ? this.boundOf.get(s) : INF)) { this.boundOf.set(s, best); changed = true; }
      }
    }
    if (!frontier.length && !found) for (const s of edges.keys()) if (!this.boundOf.has(s)) this.boundOf.set(s, INF);
  }
  mask(p) {
    let got = this.masks.get(p);
    if (got) return got;
    const [ids, states] = this.walk(p);
    for (const s of [...new Set(states)].sort((a, b) => a - b)) if (!this.boundOf.has(s)) this.explore(s);
    const bound = states.map((s) => (this.boundOf.has(s) ? this.boundOf.get(s) : INF));
    const live = bound.map((b) => b < INF);
    got = new Mask(this.table.vocabSize, ids.filter((_, i) => live[i]), states.filter((_, i) => live[i]),
      bound.filter((_, i) => live[i]), this.table.eosId, this.accepting(p));
    this.masks.set(p, got);
    return got;
  }
  minTokens() { return this.accepting(this.startState) ? 0 : this.mask(this.startState).minBound + 1; }
  finished(p) { return this.accepting(p) && !this.mask(p).ids.length; }
  start() { return new Constraint(this); }
}

export class Constraint {
  constructor(grammar) { this.g = grammar; this.state = grammar.startState; }
  allowedMask(remaining, eosId = null) {
    const m = this.g.mask(this.state);
    let allow = eosId !== null ? m.allowEos : m.allow;
    if (m.ids.length && m.maxBound > remaining - 1) {
      const V = allow.length, out = new Uint8Array(V);
      let any = false;
      for (const t of m.ids) if (m.bound[t] <= remaining - 1) { out[t] = 1; any = true; }
      if (!any) for (const t of m.ids) if (m.bound[t] === m.minBound) out[t] = 1;
      for (let t = 0; t < V; t++) if (allow[t] && !m.allow[t]) out[t] = 1;
      allow = out;
    }
    return allow;
  }
  allowed(remaining, eosId = null) {
    const mask = this.allowedMask(remaining, eosId), out = [];
    mask.forEach((v, t) => { if (v) out.push(t); });
    return out;
  }
  advance(token) {
    const next = this.g.mask(this.state).next[token];
    if (next < 0) throw new Error(`token ${token} is not allowed by the grammar here`);
    this.state = next;
  }
  accepting() { return this.g.accepting(this.state); }
  finished() { return this.g.finished(this.state); }
}

// ---- the entry point --------------------------------------------------------------------
const TABLES = new WeakMap();

export function grammarNode({ jsonSchema, regex, choices, jsonObject = false } = {}) {
  const given = [["json_schema", jsonSchema], ["regex", regex], ["choices", choices]]
    .filter(([, v]) => v !== undefined && v !== null).map(([k]) => k).concat(jsonObject ? ["json_object"] : []);
  if (given.length !== 1) throw new GrammarError(`give exactly one of json_schema, regex, choices; got ${given.join(", ") || "none"}`);
  if (jsonSchema !== undefined && jsonSchema !== null) return fromSchema(jsonSchema);
  if (regex !== undefined && regex !== null) return parseRegex(regex);
  if (choices !== undefined && choices !== null) return fromChoices(choices);
  return anyJson();
}

/** The Grammar of { jsonSchema | regex | choices | jsonObject } over a tokenizer (cached per tokenizer). */
export function compileFor(tok, spec) {
  let table = TABLES.get(tok);
  if (!table) { table = new TokenTable(tok); TABLES.set(tok, table); }
  const key = JSON.stringify([spec.jsonSchema ?? null, spec.regex ?? null, spec.choices ?? null, Boolean(spec.jsonObject)]);
  let g = table.grammars.get(key);
  if (!g) {
    try {
      g = new Grammar(grammarNode(spec), table);
    } catch (e) {
      if (e instanceof RangeError) throw new GrammarError("the grammar is nested too deeply"); // the call stack ran out
      throw e;
    }
    table.grammars.set(key, g);
    if (table.grammars.size > 8) table.grammars.delete(table.grammars.keys().next().value);
  }
  return g;
}
