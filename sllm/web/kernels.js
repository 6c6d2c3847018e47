// JavaScript twin of sllm/backends/wasm.py, sllm/backends/wasm_memory.py: tests/test_node_parity.py checks them equal under Node.
// The JavaScript host of the sllm WebAssembly kernels (docs/wasm-abi.md): picks the module
// the browser can run (relaxed SIMD, SIMD128 or scalar, by WebAssembly.validate on tiny
// probe modules), owns the heap in linear memory, and calls kernels by writing their
// arguments into the module's parameter block, exactly as sllm/backends/wasm.py does.

// (module () (func (result v128) i32.const 0 i8x16.splat i8x16.popcnt)): SIMD128.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0,
  10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);
// (module () (func (result v128) i32.const 1 i8x16.splat i32.const 2 i8x16.splat
//   i8x16.relaxed_swizzle)): relaxed SIMD.
const RELAXED_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1,
  0, 10, 15, 1, 13, 0, 65, 1, 253, 15, 65, 2, 253, 15, 253, 128, 2, 11]);

export const MODULES = {
  relaxed: "sllm_relaxed.wasm", simd128: "sllm_simd128.wasm", scalar: "sllm_scalar.wasm",
};

/** What this browser supports: {simd, relaxed} booleans. */
export function features() {
  const v = (bytes) => { try { return WebAssembly.validate(bytes); } catch { return false; } };
  return { simd: v(SIMD_PROBE), relaxed: v(RELAXED_PROBE) };
}

/**
 * The module variants to try, best first: ["relaxed", "simd128", "scalar"] or fewer.
 * prefer names one variant; feats ({simd, relaxed}, default: this realm's features()) lets
 * a page that detected them pass them on to a worker.
 */
export function variants(prefer = "auto", feats = null) {
  if (prefer !== "auto") return [prefer];
  const f = feats || features();
  return [...(f.relaxed && f.simd ? ["relaxed"] : []), ...(f.simd ? ["simd128"] : []), "scalar"];
}

const PAGE = 65536;
const ALIGN = 64;

/** A first-fit allocator over linear memory (the host owns the heap, as in wasm_memory.py). */
export class Heap {
  constructor(memory, heapBase) {
    this.memory = memory;
    const start = align(heapBase);
    this.end = memory.buffer.byteLength;
    this.free = this.end > start ? [[start, this.end - start]] : [];
    this.used = new Map();
  }
  alloc(nbytes) {
    const size = align(Math.max(nbytes, 1));
    for (let i = 0; i < this.free.length; i++) {
      const [offset, freeSize] = this.free[i];
      if (freeSize >= size) {
        if (freeSize === size) this.free.splice(i, 1);
        else this.free[i] = [offset + size, freeSize - size];
        this.used.set(offset, size);
        return offset;
      }
    }
    this.grow(size);
    return this.alloc(size);
  }
  release(offset) {
    const size = this.used.get(offset);
    if (size === undefined) throw new Error(`offset ${offset} is not a live allocation`);
    this.used.delete(offset);
    this.insertFree(offset, size);
  }
  insertFree(offset, size) {
    let i = 0;
    while (i < this.free.length && this.free[i][0] < offset) i++;
    if (i < this.free.length && offset + size === this.free[i][0]) size += this.free.splice(i, 1)[0][1];
    if (i > 0 && this.free[i - 1][0] + this.free[i - 1][1] === offset) {
      offset = this.free[i - 1][0];
      size += this.free[i - 1][1];
      this.free.splice(i - 1, 1);
      i--;
    }
    this.free.splice(i, 0, [offset, size]);
  }
  grow(size) {
    const last = this.free[this.free.length - 1];
    const tail = last && last[0] + last[1] === this.end ? last[1] : 0;
    const pages = Math.ceil((size - tail) / PAGE);
    try {
      this.memory.grow(pages);
    } catch {
      throw new Error(`out of WebAssembly memory: cannot allocate ${(size / 2 ** 20).toFixed(1)} MiB (${(this.inUse() / 2 ** 20).toFixed(1)} MiB in use)`);
    }
    const oldEnd = this.end;
    this.end = this.memory.buffer.byteLength;
    this.insertFree(oldEnd, this.end - oldEnd);
  }
  inUse() { let n = 0; for (const s of this.used.values()) n += s; return n; }
  /** A Float32Array view of n floats at byte offset `off` (views die when memory grows). */
  f32(off, n) { return new Float32Array(this.memory.buffer, off, n); }
  i32(off, n) { return new Int32Array(this.memory.buffer, off, n); }
}

function align(n) { return Math.ceil(n / ALIGN) * ALIGN; }

/** A float argument slot (every other argument is an int or a byte offset). */
export const F = (x) => ({ f: x });
/** A float64 argument: two slots, its 8 little-endian bytes (docs/wasm-abi.md, kind d). */
export const F64 = (x) => ({ f64: x });

/** One instance of one module: heap, parameter block, and the kernels by name. */
export class Kernels {
  static async create(source, prefer = "auto", feats = null) {
    const errors = [];
    for (const variant of variants(prefer, feats)) {
      try {
        const bytes = await source(MODULES[variant]);
        const { instance } = await WebAssembly.instantiate(bytes, {});
        return new Kernels(instance, variant);
      } catch (e) {
        errors.push(`${MODULES[variant]}: ${e.message}`);
      }
    }
    throw new Error(`no WebAssembly module could be instantiated: ${errors.join("; ")}`);
  }
  constructor(instance, variant) {
    this.exports = instance.exports;
    this.variant = variant;
    this.simdLevel = this.exports.simd_level();
    this.heap = new Heap(this.exports.memory, this.exports.heap_base());
    this.args = this.exports.args_address();
    this.scratchOff = 0;
    this.scratchBytes = 0;
  }
  /** Write the parameter block (ints/offsets, or F(x) floats) and run kernel `name`. */
  call(name, ...slots) {
    const buf = this.exports.memory.buffer, n = slots.length + 1; // room for one float64
    const u = new Uint32Array(buf, this.args, n), f = new Float32Array(buf, this.args, n);
    for (let i = 0, at = 0; i < slots.length; i++, at++) {
      const v = slots[i];
      if (typeof v === "number") u[at] = v >>> 0;
      else if (v.f64 !== undefined) new DataView(buf, this.args + 4 * at++, 8).setFloat64(0, v.f64, true);
      else f[at] = v.f;
    }
    this.exports[name]();
  }
  /** Byte offset of a reusable scratch area of at least n floats. */
  scratch(n) {
    const nbytes = 4 * n;
    if (nbytes > this.scratchBytes) {
      if (this.scratchBytes) this.heap.release(this.scratchOff);
      this.scratchOff = this.heap.alloc(nbytes);
      this.scratchBytes = nbytes;
    }
    return this.scratchOff;
  }
}
