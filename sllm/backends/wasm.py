"""The `wasm` and `wasm-simd` backends: the C kernels of wasm/ compiled to WebAssembly.

Tensors live in the module's linear memory; empty/zeros/from_numpy return numpy views
into it, so kernels run with no copies in or out. A kernel call writes its arguments
(byte offsets, sizes, floats) into the module's parameter block and calls a zero-argument
export, the cheapest call the runtime offers. Arrays that live elsewhere (a plain numpy
array a caller passes in) are staged through linear memory and copied back if written.

Quantized weights are held packed (pack_q: PackedQ, four rows' blocks with float32 scales),
made once when a model is quantized or loaded; the kernels take ggml's rows too.

A decode step runs each block in one call (decode_block, llama_decode_block; wasm/decode.c:
the module calls its own layer kernels), not ten or twelve: on the small seed configs a
call's host overhead is most of a token.

`wasm` runs the scalar (MVP) module; `wasm-simd` runs the SIMD128 module, preferring the
build with relaxed-SIMD fused multiply-add where the runtime accepts it, and falling back
to the build without extmul where the runtime refuses that (wasmer 1.x). The runtime is
wasmtime unless SLLM_WASM_RUNTIME=wasmer selects wasmer (see wasm_runtime.py).

JavaScript twin: sllm/web/kernels.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendError
from ..quant import chunk_columns
from .base import Array, Backend
from .reference import dropout_threshold
from .wasm_memory import LinearMemory
from .wasm_runtime import RUNTIMES, Runtime, RuntimeUnavailable, runtime_name

F32, I32, U8 = np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint8)
_QTYPE_CODES = {"q8_0": 0, "q4_0": 1, "q4_1": 2}  # wasm/quant.c's qtype argument
_QBLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
_PACKED = 4  # added to the qtype code when wq is in pack_q's layout
# bytes of one block of four packed rows: float32 scales (q4_1: and offsets), four rows' codes
_QPACKED_BYTES = {"q8_0": 16 + 4 * 32, "q4_0": 16 + 4 * 16, "q4_1": 32 + 4 * 16}
OFFSET_CACHE = 4096
# decode_block's F, the offsets of its 12 tensors, and its weights' qtype argument
_BlockSlots = tuple[int, tuple[int, ...], int]
# the fused blocks' parameter blocks (wasm/decode.c); decode_block adds its tail
_BLOCK_SLOTS = "<" + "I" * 17 + "i" * 8
_LLAMA_BLOCK_SLOTS = "<" + "I" * 12 + "i" * 9 + "Idf"


def module_dirs() -> list[Path]:
    """Where the built .wasm files may be: the installed package's sllm/wasm/ (an editable
    install keeps them in site-packages, apart from the sources)."""
    here = Path(__file__).resolve().parent.parent / "wasm"
    return [here] + [Path(p) / "sllm" / "wasm" for p in sys.path if p]


def find_module(filename: str) -> Path:
    """Path of a built module, or RuntimeUnavailable saying where it was looked for."""
    for folder in module_dirs():
        if (folder / filename).is_file():
            return folder / filename
    raise RuntimeUnavailable(f"{filename} was not built (no WebAssembly toolchain at install "
                             f"time? reinstall with the ziglang package available)")


@dataclass(frozen=True)
class PackedQ:
    """Quantized rows in the modules' packed layout (wasm/quant.c, made by pack_q): four
    rows' blocks interleaved, their float16 scales converted to float32 once. `data` lives
    in the backend's linear memory: (groups of four rows, blocks, bytes of a block)."""

    data: np.ndarray
    qtype: str
    rows: int  # OC: rows of the matrix (the last group may hold spare zero rows)
    blocks: int  # blocks of 32 values a row: ceil(K / 32)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, row bytes) of ggml's rows these stand for, as a uint8 wq's shape."""
        return self.rows, self.blocks * _QBLOCK_BYTES[self.qtype]


class _WasmBase(Backend):
    """Storage in linear memory plus the kernel wrappers; subclasses pick the modules."""

    # (file name, needs relaxed SIMD, capability "simd" value), most preferred first
    modules: ClassVar[tuple[tuple[str, bool, str | None], ...]] = ()
    _probed: ClassVar[dict[str, Any]]

    def __init__(self, runtime: str | None = None, memory_limit: int | None = None) -> None:
        super().__init__()
        self.runtime, self.module = self._instantiate(runtime or runtime_name())
        limit = {} if memory_limit is None else {"limit_bytes": memory_limit}
        self.memory = LinearMemory(self.runtime, self.runtime.call_i32("heap_base"), **limit)
        self._args = self.runtime.call_i32("args_address")
        self._kernels: dict[str, Any] = {}
        self._staged: list[tuple[np.ndarray, Any]] = []
        self._offsets: dict[int, tuple[np.ndarray, int]] = {}
        self._scratch_offset, self._scratch_bytes = 0, 0
        self._block_slots: dict[int, tuple[Any, tuple[Any, ...], _BlockSlots]] = {}

    @classmethod
    def _instantiate(cls, runtime: str) -> tuple[Runtime, tuple[str, bool, str | None]]:
        reasons = []
        for module in cls.modules:
            filename, relaxed, _ = module
            try:
                wasm = find_module(filename).read_bytes()
                return RUNTIMES[runtime](wasm, relaxed_simd=relaxed), module
            except RuntimeUnavailable as e:
                reasons.append(str(e))
        raise RuntimeUnavailable("; ".join(reasons))

    @classmethod
    def probe(cls) -> dict[str, Any]:
        """Instantiate the module once in the selected runtime; capabilities as data."""
        runtime = runtime_name()
        if runtime not in cls._probed:
            try:
                instance, module = cls._instantiate(runtime)
                cls._probed[runtime] = _capabilities(instance, module)
            except RuntimeUnavailable as e:
                cls._probed[runtime] = e
        result = cls._probed[runtime]
        if isinstance(result, Exception):
            raise result
        return dict(result)

    @property
    def capabilities(self) -> dict[str, Any]:
        """Capabilities of this instance: runtime, SIMD level, module, memory in use."""
        return {**_capabilities(self.runtime, self.module), "memory_bytes": self.memory.end}

    # ---- storage ---------------------------------------------------------------------
    def empty(self, shape: int | tuple[int, ...], dtype: Any = None) -> np.ndarray:
        """A new uninitialised array in linear memory (a numpy view, no copy)."""
        return self.memory.array(shape, self.dtype if dtype is None else dtype)

    def zeros(self, shape: int | tuple[int, ...], dtype: Any = None) -> np.ndarray:
        """A new zero-filled array in linear memory."""
        out = self.empty(shape, dtype)
        out.fill(0)
        return out

    def free(self, array: np.ndarray | PackedQ) -> None:
        """Give an array from empty/zeros/from_numpy (or pack_q's rows) back; arrays from
        elsewhere are ignored."""
        if isinstance(array, PackedQ):
            array = array.data
        offset = self.memory.offset_of(array)
        if offset >= 0:
            self.memory.free(offset)

    def pack_q(self, wq: Any, qtype: str) -> PackedQ:
        """wq's ggml rows (OC, row bytes) in the modules' packed layout (a new PackedQ in
        linear memory; wq is left as it was): the quantized kernels read four rows' scales
        with one load instead of converting eight float16s per block of four rows."""
        _check(np.ndim(wq) == 2, lambda: f"pack_q: wq must be (rows, row bytes), got {np.shape(wq)}")
        OC, nb = np.shape(wq)[0], np.shape(wq)[1] // _QBLOCK_BYTES.get(qtype, 1)
        _check_q_rows(wq, qtype, OC, 32 * nb)
        data = self.memory.array(((OC + 3) // 4, nb, _QPACKED_BYTES[qtype]), U8)
        self._call("pack_q", "<IIiii", self._ptr(data, U8, write=True), self._ptr(wq, U8), OC,
                   32 * nb, _QTYPE_CODES[qtype])
        return PackedQ(data, qtype, OC, nb)

    def unpack_q(self, packed: Any, qtype: str) -> np.ndarray:
        """ggml's rows, byte for byte, read back from a PackedQ (a new numpy array); ggml's
        rows as they are."""
        if not isinstance(packed, PackedQ):
            return packed
        _check(packed.qtype == qtype, lambda: f"unpack_q: rows packed as {packed.qtype}, not {qtype}")
        rows = self.memory.array(packed.shape, U8)
        try:
            self._call("unpack_q", "<IIiii", self._ptr(rows, U8, write=True),
                       self._ptr(packed.data, U8), packed.rows, 32 * packed.blocks,
                       _QTYPE_CODES[qtype])
            return rows.copy()
        finally:
            self.free(rows)

    # ---- the call path ---------------------------------------------------------------
    def _ptr(self, array: Any, dtype: np.dtype = F32, write: bool = False) -> int:
        """Byte offset of `array` in linear memory, staging a copy when it lives elsewhere."""
        if array is None:
            return 0
        known = self._offsets.get(id(array))
        if known is not None and known[0] is array and array.dtype == dtype:
            return known[1]
        if isinstance(array, np.ndarray) and array.dtype == dtype and array.flags.c_contiguous:
            offset = self.memory.offset_of(array)
            if offset >= 0:
                self._remember(array, offset)
                return offset
        source = np.ascontiguousarray(array, dtype=dtype)
        staged = self.memory.array(source.shape, dtype)
        staged[...] = source
        self._staged.append((staged, array if write else None))
        return self.memory.offset_of(staged)

    def _remember(self, array: np.ndarray, offset: int) -> None:
        # Finding an array's address costs more than a small kernel; the model passes the
        # same array objects every step, so their offsets are cached (holding the array
        # keeps its id unique). Bounded: cleared when it grows past OFFSET_CACHE entries.
        if len(self._offsets) >= OFFSET_CACHE:
            self._offsets.clear()
        self._offsets[id(array)] = (array, offset)

    def _scratch(self, nfloats: int) -> int:
        """Offset of a scratch area of at least nfloats, reused across calls."""
        nbytes = 4 * nfloats
        if nbytes > self._scratch_bytes:
            if self._scratch_bytes:
                self.memory.free(self._scratch_offset)
            self._scratch_offset = self.memory.alloc(nbytes)
            self._scratch_bytes = nbytes
        return self._scratch_offset

    def _call(self, name: str, fmt: str, *values: Any) -> None:
        """Write the parameter block, run the kernel, copy staged outputs back."""
        try:
            struct.pack_into(fmt, self.memory.arena, self._args, *values)
            kernel = self._kernels.get(name) or self._kernels.setdefault(name, self.runtime.kernel(name))
            kernel()
            for staged, original in self._staged:
                if original is not None:
                    original[...] = staged.reshape(np.shape(original))
        except Exception as e:  # traps and runtime errors become BackendError
            raise BackendError(f"{self.name} kernel {name} failed: {e}") from e
        finally:
            for staged, _ in self._staged:
                self.memory.free(self.memory.offset_of(staged))
            self._staged.clear()

    # ---- kernels (semantics: sllm/backends/reference.py) ---------------------------------
    def encoder_fwd(self, out: Array, tokens: Array, wte: Array, wpe: Array,
                    pos: int = 0) -> None:
        """out (B,T,C) = wte[tokens] + wpe[pos:pos+T]."""
        B, T = np.shape(tokens)
        _check_tokens(tokens, wte.shape[0])
        _check(pos + T <= wpe.shape[0], lambda: f"positions {pos}..{pos + T} exceed wpe rows {wpe.shape[0]}")
        self._call("encoder_fwd", "<IIIIiiii", self._ptr(out, write=True), self._ptr(tokens, I32),
                   self._ptr(wte), self._ptr(wpe), B * T, T, wte.shape[1], pos)

    def encoder_bwd(self, dwte: Array, dwpe: Array, dout: Array, tokens: Array,
                    pos: int = 0) -> None:
        """dwte[tokens] += dout; dwpe[pos:pos+T] += dout summed over the batch."""
        B, T = np.shape(tokens)
        _check_tokens(tokens, dwte.shape[0])
        self._call("encoder_bwd", "<IIIIiiii", self._ptr(dwte, write=True),
                   self._ptr(dwpe, write=True), self._ptr(dout), self._ptr(tokens, I32),
                   B * T, T, dwte.shape[1], pos)

    def layernorm_fwd(self, out: Array, mean: Array, rstd: Array, inp: Array,
                      weight: Array, bias: Array) -> None:
        """LayerNorm over the last axis; saves mean and 1/std per row."""
        C = inp.shape[-1]
        self._call("layernorm_fwd", "<IIIIIIii", self._ptr(out, write=True),
                   self._ptr(mean, write=True), self._ptr(rstd, write=True), self._ptr(inp),
                   self._ptr(weight), self._ptr(bias), inp.size // C, C)

    def layernorm_bwd(self, dinp: Array, dweight: Array, dbias: Array, dout: Array,
                      inp: Array, weight: Array, mean: Array, rstd: Array) -> None:
        """Accumulates into dinp, dweight and dbias."""
        C = inp.shape[-1]
        self._call("layernorm_bwd", "<IIIIIIIIii", self._ptr(dinp, write=True),
                   self._ptr(dweight, write=True), self._ptr(dbias, write=True), self._ptr(dout),
                   self._ptr(inp), self._ptr(weight), self._ptr(mean), self._ptr(rstd),
                   inp.size // C, C)

    def matmul_fwd(self, out: Array, inp: Array, weight: Array, bias: Array | None,
                   trans_w: bool = False) -> None:
        """out = inp @ weight (+ bias); weight (OC, C) used transposed when trans_w."""
        C, OC = _matmul_dims(inp, weight, trans_w)
        scratch = self._scratch(C * OC) if trans_w else 0
        self._call("matmul_fwd", "<IIIIiiiiI", self._ptr(out, write=True), self._ptr(inp),
                   self._ptr(weight), self._ptr(bias), inp.size // C, C, OC, int(trans_w),
                   scratch)

    def matmul_bwd(self, dinp: Array | None, dweight: Array, dbias: Array | None,
                   dout: Array, inp: Array, weight: Array, trans_w: bool = False) -> None:
        """dinp = dout @ W^T (overwritten); dweight += inp^T @ dout; dbias += column sums."""
        C, OC = _matmul_dims(inp, weight, trans_w)
        scratch = self._scratch(C * OC) if dinp is not None and not trans_w else 0
        self._call("matmul_bwd", "<IIIIIIiiiiI", self._ptr(dinp, write=True),
                   self._ptr(dweight, write=True), self._ptr(dbias, write=True),
                   self._ptr(dout), self._ptr(inp), self._ptr(weight), inp.size // C, C, OC,
                   int(trans_w), scratch)

    def matmul_q_fwd(self, out: Array, inp: Array, wq: Array | PackedQ, bias: Array | None,
                     qtype: str) -> None:
        """out = q8_0(inp) . W^T (+ bias) for W held as quantized rows wq (sllm.quant)."""
        K, OC = inp.shape[-1], out.shape[-1]
        rows, code = _q_operand(wq, qtype, OC, K)
        nb = -(-K // 32)
        N = inp.size // K
        if out.size != N * OC:  # formatted only on failure: it costs a third of the wrapper
            raise ValueError(f"out must be ({N}, {OC})")
        scratch = self._scratch(N * nb * 8 + 2 * N * nb)
        self._call("matmul_q_fwd", "<IIIIiiiiI", self._ptr(out, write=True), self._ptr(inp),
                   self._ptr(rows, U8), self._ptr(bias), N, K, OC, code, scratch)

    def embed_q_fwd(self, out: Array, tokens: Array, wq: Array | PackedQ, qtype: str) -> None:
        """out (B,T,C) = rows tokens (B,T) of quantized rows wq, dequantized."""
        C = out.shape[-1]
        V = wq.rows if isinstance(wq, PackedQ) else np.shape(wq)[0]
        rows, code = _q_operand(wq, qtype, V, C)
        n = tokens.size if isinstance(tokens, np.ndarray) else np.size(tokens)
        if out.size != n * C:
            raise ValueError(f"embed_q_fwd: out must be (B, T, {C}) for tokens {np.shape(tokens)}")
        _check_tokens(tokens, V)
        self._call("embed_q_fwd", "<IIIiii", self._ptr(out, write=True), self._ptr(tokens, I32),
                   self._ptr(rows, U8), n, C, code)

    def encoder_q_fwd(self, out: Array, tokens: Array, wq: Array | PackedQ, wpe: Array,
                      qtype: str, pos: int = 0) -> None:
        """out (B,T,C) = rows tokens (B,T) of quantized rows wq, dequantized, + wpe[pos:pos+T]."""
        C = out.shape[-1]
        V = wq.rows if isinstance(wq, PackedQ) else np.shape(wq)[0]
        rows, code = _q_operand(wq, qtype, V, C)
        B, T = np.shape(tokens)
        if out.size != B * T * C or wpe.shape[1] != C:
            raise ValueError(f"encoder_q_fwd: out must be (B, T, {C}) for tokens {np.shape(tokens)} "
                             f"and wpe (maxT, {C}), got wpe {np.shape(wpe)}")
        _check_tokens(tokens, V)
        _check(pos + T <= wpe.shape[0], lambda: f"positions {pos}..{pos + T} exceed wpe rows {wpe.shape[0]}")
        self._call("encoder_q_fwd", "<IIIIiiiii", self._ptr(out, write=True),
                   self._ptr(tokens, I32), self._ptr(rows, U8), self._ptr(wpe), B * T, T, C, pos,
                   code)

    def matmul_q_bwd(self, dinp: Array, dout: Array, wq: Array | PackedQ, qtype: str) -> None:
        """dinp = dout @ W (overwritten) for W held as quantized rows wq (sllm.quant)."""
        K, OC = dinp.shape[-1], dout.shape[-1]
        rows, code = _q_operand(wq, qtype, OC, K)
        N = dout.size // OC
        _check(dinp.size == N * K, lambda: f"dinp must be ({N}, {K}) for dout ({N}, {OC})")
        cols = chunk_columns(OC, K)
        self._call("matmul_q_bwd", "<IIIiiiiIi", self._ptr(dinp, write=True), self._ptr(dout),
                   self._ptr(rows, U8), N, K, OC, code, self._scratch(OC * cols), cols)

    def attention_fwd(self, out: Array, saved: Array, qkv: Array, n_head: int,
                      n_kv_head: int | None = None) -> None:
        """Causal (grouped-query) attention; saves the probabilities (B,H,T,T)."""
        B, T, C, Hkv = _attention_dims(qkv, n_head, n_kv_head)
        self._call("attention_fwd", "<IIIiiiii", self._ptr(out, write=True),
                   self._ptr(saved, write=True), self._ptr(qkv), B, T, C, n_head, Hkv)

    def attention_bwd(self, dqkv: Array, dout: Array, qkv: Array, out: Array, saved: Array,
                      n_head: int, n_kv_head: int | None = None) -> None:
        """Gradient of attention_fwd with respect to qkv (overwritten)."""
        B, T, C, Hkv = _attention_dims(qkv, n_head, n_kv_head)
        scratch = self._scratch(T)
        self._call("attention_bwd", "<IIIIiiiiIi", self._ptr(dqkv, write=True), self._ptr(dout),
                   self._ptr(qkv), self._ptr(saved), B, T, C, n_head, scratch, Hkv)

    def attention_decode(self, out: Array, qkv: Array, kcache: Array, vcache: Array,
                         pos: int, n_head: int, n_kv_head: int | None = None) -> None:
        """Store new keys/values at pos.., then attend causally over the cache."""
        B, Tn, C, Hkv = _attention_dims(qkv, n_head, n_kv_head)
        max_t = _check_cache(kcache, vcache, B, Hkv, C // n_head)
        _check(0 <= pos and pos + Tn <= max_t, lambda: f"KV cache holds {max_t} positions, need {pos + Tn}")
        scratch = self._scratch(max_t)
        self._call("attention_decode", "<IIIIiiiiiiIi", self._ptr(out, write=True),
                   self._ptr(qkv), self._ptr(kcache, write=True), self._ptr(vcache, write=True),
                   B, Tn, C, n_head, max_t, pos, scratch, Hkv)

    def attention_decode_batch(self, out: Array, qkv: Array, kcache: Array, vcache: Array,
                               slots: Array, positions: Array, n_head: int,
                               n_kv_head: int | None = None) -> None:
        """One new position per sequence, row b in cache slot slots[b] at positions[b]."""
        B, Tn, C, Hkv = _attention_dims(qkv, n_head, n_kv_head)
        _check(Tn == 1, lambda: f"qkv must be (B, 1, (n_head + 2 * n_kv_head) * D), got {np.shape(qkv)}")
        S = kcache.shape[0]
        max_t = _check_cache(kcache, vcache, S, Hkv, C // n_head)
        _check(np.size(out) == B * C, lambda: f"out must be (B, 1, C) = ({B}, 1, {C})")
        sl, ps = _batch_rows(slots, positions, B, S, max_t)
        scratch = self._scratch(max_t)
        self._call("attention_decode_batch", "<IIIIIIiiiiIi", self._ptr(out, write=True),
                   self._ptr(qkv), self._ptr(kcache, write=True), self._ptr(vcache, write=True),
                   self._ptr(sl, I32), self._ptr(ps, I32), B, C, n_head, max_t, scratch, Hkv)

    def decode_block(self, out: Array, x: Array, kcache: Array, vcache: Array, work: Array,
                     params: Sequence[Any], pos: int, n_head: int, activation: str,
                     qtype: str | None = None) -> None:
        """One GPT-2 block over a decode step's new rows in one call: wasm/decode.c runs the
        layer kernels inside the module, as the composed default runs them from the host."""
        B, Tn, C = x.shape
        max_t = _cache_rows(kcache, vcache, B, n_head, C // n_head, pos, Tn)
        self._block("decode_block", _BLOCK_SLOTS + "Ii", out, x, kcache, vcache, work, params,
                    n_head, activation, qtype, max_t, pos)

    def decode_block_batch(self, out: Array, x: Array, kcache: Array, vcache: Array,
                           work: Array, params: Sequence[Any], slots: Array, positions: Array,
                           n_head: int, activation: str, qtype: str | None = None) -> None:
        """decode_block for B sequences at their own cache slots and positions, in one call."""
        B, Tn, C = x.shape
        _check(Tn == 1, lambda: f"x must be (B, 1, C), got {x.shape}")
        max_t = _check_cache(kcache, vcache, kcache.shape[0], n_head, C // n_head)
        sl, ps = _batch_rows(slots, positions, B, kcache.shape[0], max_t)
        self._block("decode_block_batch", _BLOCK_SLOTS + "III", out, x, kcache, vcache, work,
                    params, n_head, activation, qtype, max_t, self._ptr(sl, I32),
                    self._ptr(ps, I32))

    def llama_decode_block(self, out: Array, x: Array, kcache: Array, vcache: Array,
                           work: Array, params: Sequence[Any], pos: int, n_head: int,
                           n_kv_head: int, ffn_dim: int, theta: float, eps: float,
                           qtype: str | None = None) -> None:
        """One llama block over a decode step's new rows in one call (wasm/decode.c), as
        decode_block is for GPT-2."""
        self._llama_block("llama_decode_block", out, x, kcache, vcache, work, params, n_head,
                          n_kv_head, ffn_dim, theta, eps, qtype, x.shape[0], pos, None)

    def llama_decode_block_batch(self, out: Array, x: Array, kcache: Array, vcache: Array,
                                 work: Array, params: Sequence[Any], slots: Array,
                                 positions: Array, n_head: int, n_kv_head: int, ffn_dim: int,
                                 theta: float, eps: float, qtype: str | None = None) -> None:
        """llama_decode_block for B sequences at their own cache slots and positions, in one
        call."""
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"llama_decode_block_batch: x must be (B, 1, C), got {x.shape}")
        self._llama_block("llama_decode_block_batch", out, x, kcache, vcache, work, params,
                          n_head, n_kv_head, ffn_dim, theta, eps, qtype, kcache.shape[0], 0,
                          (slots, positions))

    def _llama_block(self, name: str, out: Array, x: Array, kcache: Array, vcache: Array,
                     work: Array, params: Sequence[Any], n_head: int, n_kv_head: int,
                     ffn_dim: int, theta: float, eps: float, qtype: str | None,
                     cache_rows: int, pos: int, rows: tuple[Array, Array] | None) -> None:
        """The call llama_decode_block and its batch form share (wasm/decode.c's slots),
        checked by plain ifs (per block call, lambdas and tuple() cost a small model's
        token a few percent)."""
        B, Tn, C = x.shape
        H, Hkv, F, N = n_head, n_kv_head, ffn_dim, B * Tn
        if not (H > 0 and Hkv > 0 and H % Hkv == 0 and C % H == 0 and C // H % 2 == 0):
            raise ValueError(f"{name}: n_kv_head ({Hkv}) must divide n_head ({H}), "
                             f"which must divide C ({C}) into an even head dim")
        if not theta > 0:
            raise ValueError(f"{name}: theta must be > 0, got {theta}")
        D = C // H
        max_t = _cache_rows(kcache, vcache, cache_rows, Hkv, D, pos, Tn)
        tail: tuple[int, ...] = ()
        if rows is not None:
            sl, ps = _batch_rows(rows[0], rows[1], B, cache_rows, max_t)
            tail = (self._ptr(sl, I32), self._ptr(ps, I32))
        _check_block_buffers(name, out, x, work, N * (8 * C + 3 * F + 2))
        tensors, code = self._llama_tensors(params, C, (H + 2 * Hkv) * D, F, qtype)
        nb = -(-max(C, F) // 32)
        scratch = self._scratch(max(max_t, 2 * D, N * nb * 8 + 2 * N * nb))
        self._call(name, _LLAMA_BLOCK_SLOTS + "I" * len(tail), self._ptr(out, write=True),
                   self._ptr(x), self._ptr(kcache, write=True), self._ptr(vcache, write=True),
                   self._ptr(work, write=True), *tensors, B, Tn, C, F, H, Hkv, max_t, pos, code,
                   scratch, float(theta), eps, *tail)

    def _llama_tensors(self, params: Sequence[Any], C: int, W: int, F: int,
                       qtype: str | None) -> tuple[tuple[int, ...], int]:
        """The offsets of the llama block's 7 tensors (matmul weights as their kernels take
        them) and the quantized kernels' qtype argument (-1: float weights), checked; kept
        per params tuple as _block_tensors keeps GPT-2's."""
        known = self._block_slots.get(id(params))
        if known is not None and known[0] is params and known[1] == (C, W, F, qtype):
            return known[2][1], known[2][2]
        ln1_w, qkv_w, o_w, ln2_w, gate_w, up_w, down_w = params
        staged, code, weights = len(self._staged), -1, []
        for w, K, OC in ((qkv_w, C, W), (o_w, C, C), (gate_w, C, F), (up_w, C, F), (down_w, F, C)):
            if qtype is None:
                if w.shape != (K, OC):
                    raise ValueError(f"llama block: a weight is {w.shape}, not {(K, OC)}")
                weights.append(self._ptr(w))
            else:
                rows_q, code = _q_operand(w, qtype, OC, K)
                weights.append(self._ptr(rows_q, U8))
        for v in (ln1_w, ln2_w):
            if np.size(v) != C:
                raise ValueError(f"llama block: a norm weight has {np.size(v)} values, not {C}")
        tensors = (self._ptr(ln1_w), weights[0], weights[1], self._ptr(ln2_w), *weights[2:])
        if len(self._staged) == staged:
            if len(self._block_slots) >= OFFSET_CACHE:
                self._block_slots.clear()
            self._block_slots[id(params)] = (params, (C, W, F, qtype), (F, tensors, code))
        return tensors, code

    def _block(self, name: str, slots: str, out: Array, x: Array, kcache: Array, vcache: Array,
               work: Array, params: Sequence[Any], n_head: int, activation: str,
               qtype: str | None, max_t: int, *rows: int) -> None:
        """The call decode_block and decode_block_batch share (wasm/decode.c's slots)."""
        B, Tn, C = x.shape
        N = B * Tn
        if activation != "gelu" and activation != "relu":
            raise ValueError(f"{name}: activation must be 'gelu' or 'relu', got {activation!r}")
        F, tensors, code = self._block_tensors(name, params, C, qtype)
        _check_block_buffers(name, out, x, work, N * (8 * C + 2 * F + 2))
        nb = -(-max(C, F) // 32)
        scratch = self._scratch(max(max_t, N * nb * 8 + 2 * N * nb))
        self._call(name, slots, self._ptr(out, write=True),
                   self._ptr(x), self._ptr(kcache, write=True), self._ptr(vcache, write=True),
                   self._ptr(work, write=True), *tensors, B, Tn, C, F, n_head, max_t,
                   int(activation == "relu"), code, scratch, *rows)

    def _block_tensors(self, name: str, params: Sequence[Any], C: int,
                       qtype: str | None) -> _BlockSlots:
        """F, the offsets of the block's 12 tensors (matmul weights as their kernels take
        them) and the quantized kernels' qtype argument (-1: float weights), checked. A decode step passes the
        same params tuple every token: its answer is kept (while every tensor lives in
        linear memory: staged copies last one call), as _ptr keeps arrays' offsets."""
        known = self._block_slots.get(id(params))
        if known is not None and known[0] is params and known[1] == (C, qtype):
            return known[2]
        ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b = params
        shapes = ((attn_w, C, 3 * C), (proj_w, C, C), (fc_w, C, 0), (fcproj_w, 0, C))  # 0: F
        staged, code = len(self._staged), -1
        if qtype is None:
            F = fc_w.shape[1]
            weights = []
            for w, K, OC in shapes:
                want = (K or F, OC or F)
                if w.shape != want:
                    raise ValueError(f"{name}: a weight is {w.shape}, not {want}")
                weights.append(self._ptr(w))
        else:
            F = fc_w.rows if isinstance(fc_w, PackedQ) else np.shape(fc_w)[0]
            weights = []
            for w, K, OC in shapes:
                rows_q, code = _q_operand(w, qtype, OC or F, K or F)
                weights.append(self._ptr(rows_q, U8))
        for v, n in ((ln1_w, C), (ln1_b, C), (attn_b, 3 * C), (proj_b, C), (ln2_w, C), (ln2_b, C),
                     (fc_b, F), (fcproj_b, C)):
            if np.size(v) != n:
                raise ValueError(f"{name}: a vector of the block has {np.size(v)} values, not {n}")
        answer: _BlockSlots = (F, (self._ptr(ln1_w), self._ptr(ln1_b), weights[0], self._ptr(attn_b),
                      weights[1], self._ptr(proj_b), self._ptr(ln2_w), self._ptr(ln2_b),
                      weights[2], self._ptr(fc_b), weights[3], self._ptr(fcproj_b)), code)
        if len(self._staged) == staged:
            if len(self._block_slots) >= OFFSET_CACHE:
                self._block_slots.clear()
            self._block_slots[id(params)] = (params, (C, qtype), answer)
        return answer

    def rmsnorm_fwd(self, out: Array, rstd: Array, inp: Array, weight: Array, eps: float) -> None:
        """RMSNorm over the last axis; saves 1/rms per row."""
        C = inp.shape[-1]
        self._call("rmsnorm_fwd", "<IIIIiif", self._ptr(out, write=True),
                   self._ptr(rstd, write=True), self._ptr(inp), self._ptr(weight),
                   inp.size // C, C, eps)

    def rmsnorm_bwd(self, dinp: Array, dweight: Array, dout: Array, inp: Array, weight: Array,
                    rstd: Array) -> None:
        """Accumulates into dinp and dweight."""
        C = inp.shape[-1]
        self._call("rmsnorm_bwd", "<IIIIIIii", self._ptr(dinp, write=True),
                   self._ptr(dweight, write=True), self._ptr(dout), self._ptr(inp),
                   self._ptr(weight), self._ptr(rstd), inp.size // C, C)

    def rope_fwd(self, qkv: Array, positions: Array, n_head: int, n_kv_head: int,
                 theta: float) -> None:
        """Rotary embedding of the q and k heads in place (rotate-half pairs)."""
        self._rope("rope_fwd", qkv, positions, n_head, n_kv_head, theta)

    def rope_bwd(self, dqkv: Array, positions: Array, n_head: int, n_kv_head: int,
                 theta: float) -> None:
        """The inverse rotation of dq and dk in place."""
        self._rope("rope_bwd", dqkv, positions, n_head, n_kv_head, theta)

    def _rope(self, name: str, qkv: Array, positions: Array, n_head: int, n_kv_head: int,
              theta: float) -> None:
        W = qkv.shape[-1]
        heads = n_head + 2 * n_kv_head
        _check(n_kv_head > 0 and n_head % n_kv_head == 0 and W % heads == 0
               and W // heads % 2 == 0, lambda: f"{name}: qkv width {W} is not (n_head + 2 * n_kv_head)"
               f" * an even head dim for n_head={n_head}, n_kv_head={n_kv_head}")
        _check(theta > 0, lambda: f"{name}: theta must be > 0, got {theta}")
        N, D, pos = qkv.size // W, W // heads, np.asarray(positions)
        _check(pos.size == N and (N == 0 or int(pos.min()) >= 0),
               lambda: f"{name}: positions must be {N} integers >= 0")
        # a table of every position's angles pays only when positions repeat (a batch)
        rows = int(pos.max()) + 1 if N else 0
        table_rows = rows if rows < N else 0
        self._call(name, "<IIiiiidIi", self._ptr(qkv, write=True), self._ptr(pos, I32), N,
                   n_head, n_kv_head, D, float(theta), self._scratch((table_rows + 2) * D),
                   table_rows)

    def swiglu_fwd(self, out: Array, gate: Array, up: Array) -> None:
        """out = silu(gate) * up."""
        self._call("swiglu_fwd", "<IIIi", self._ptr(out, write=True), self._ptr(gate),
                   self._ptr(up), _size(out, gate))

    def swiglu_bwd(self, dgate: Array, dup: Array, dout: Array, gate: Array, up: Array) -> None:
        """dgate = dout * up * silu'(gate), dup = dout * silu(gate); both overwritten."""
        self._call("swiglu_bwd", "<IIIIIi", self._ptr(dgate, write=True),
                   self._ptr(dup, write=True), self._ptr(dout), self._ptr(gate), self._ptr(up),
                   _size(dgate, gate))

    def gelu_fwd(self, out: Array, inp: Array) -> None:
        """GPT-2's tanh-approximated GELU."""
        self._call("gelu_fwd", "<IIi", self._ptr(out, write=True), self._ptr(inp), _size(out, inp))

    def gelu_bwd(self, dinp: Array, dout: Array, inp: Array) -> None:
        """dinp = dout * gelu'(inp); dinp may alias dout."""
        self._call("gelu_bwd", "<IIIi", self._ptr(dinp, write=True), self._ptr(dout),
                   self._ptr(inp), _size(dinp, inp))

    def relu_fwd(self, out: Array, inp: Array) -> None:
        """out = max(inp, 0)."""
        self._call("relu_fwd", "<IIi", self._ptr(out, write=True), self._ptr(inp), _size(out, inp))

    def relu_bwd(self, dinp: Array, dout: Array, inp: Array) -> None:
        """dinp = dout where inp > 0, else 0."""
        self._call("relu_bwd", "<IIIi", self._ptr(dinp, write=True), self._ptr(dout),
                   self._ptr(inp), _size(dinp, inp))

    def residual_fwd(self, out: Array, a: Array, b: Array) -> None:
        """out = a + b."""
        self._call("residual_fwd", "<IIIi", self._ptr(out, write=True), self._ptr(a),
                   self._ptr(b), _size(out, a))

    def dropout_fwd(self, out: Array, inp: Array, p: float, seed: int) -> None:
        """Inverted dropout with the counter-based mask of reference.dropout_keep_mask."""
        self._dropout("dropout_fwd", out, inp, p, seed)

    def dropout_bwd(self, dinp: Array, dout: Array, p: float, seed: int) -> None:
        """The same mask, recomputed from the seed."""
        self._dropout("dropout_bwd", dinp, dout, p, seed)

    def _dropout(self, name: str, out: Array, inp: Array, p: float, seed: int) -> None:
        self._call(name, "<IIIIfI", self._ptr(out, write=True), self._ptr(inp), _size(out, inp),
                   dropout_threshold(p), 1.0 - p, seed & 0xFFFFFFFF)

    def vec_exp(self, out: Array, inp: Array) -> None:
        """out = exp(inp) by the module's approximation (see wasm/mathfn.h for its error)."""
        self._call("vec_exp", "<IIi", self._ptr(out, write=True), self._ptr(inp), _size(out, inp))

    def vec_tanh(self, out: Array, inp: Array) -> None:
        """out = tanh(inp) by the module's approximation (see wasm/mathfn.h for its error)."""
        self._call("vec_tanh", "<IIi", self._ptr(out, write=True), self._ptr(inp), _size(out, inp))

    def softmax_xent(self, losses: Array, dlogits: Array | None, logits: Array,
                     targets: Array, dloss: float) -> None:
        """Fused softmax + cross-entropy; targets of -1 give zero loss and gradient."""
        V = logits.shape[-1]
        _check_tokens(targets, V, allow_ignore=True)
        self._call("softmax_xent", "<IIIIiif", self._ptr(losses, write=True),
                   self._ptr(dlogits, write=True), self._ptr(logits), self._ptr(targets, I32),
                   logits.size // V, V, dloss)

    def sgd_update(self, params: Array, grads: Array, momentum_buf: Array | None, lr: float,
                   momentum: float, weight_decay: float, decay_count: int) -> None:
        """torch.optim.SGD over a flat buffer."""
        buf = self._ptr(momentum_buf, write=True) if momentum else 0
        self._call("sgd_update", "<IIIifffi", self._ptr(params, write=True), self._ptr(grads),
                   buf, params.size, lr, momentum, weight_decay, decay_count)

    def adam_update(self, params: Array, grads: Array, m: Array, v: Array, lr: float,
                    beta1: float, beta2: float, eps: float, weight_decay: float, step: int,
                    decay_count: int, decoupled: bool) -> None:
        """torch Adam (L2 in the gradient) or AdamW (decoupled decay)."""
        self._call("adam_update", "<IIIIifffffiiff", self._ptr(params, write=True),
                   self._ptr(grads), self._ptr(m, write=True), self._ptr(v, write=True),
                   params.size, lr, beta1, beta2, eps, weight_decay, decay_count,
                   int(decoupled), 1.0 - beta1 ** step, 1.0 - beta2 ** step)

    def grad_norm_sq(self, grads: Array) -> float:
        """Sum of squares of a flat buffer, accumulated in float64."""
        out = self._scratch(2)
        self._call("grad_norm_sq", "<IiI", self._ptr(grads), grads.size, out)
        return float(struct.unpack_from("<d", self.memory.arena, out)[0])


def _capabilities(runtime: Runtime, module: tuple[str, bool, str | None]) -> dict[str, Any]:
    filename, relaxed, simd = module
    return {"runtime": runtime.name, "simd": simd, "relaxed_simd": relaxed, "module": filename,
            "threads": 1, "simd_level": runtime.call_i32("simd_level")}


def _check(ok: bool, message: Callable[[], str]) -> None:
    """ValueError(message()) unless ok: the message is formatted only on failure (formatting
    it on every call cost a decode step's small kernels a third of their host time)."""
    if not ok:
        raise ValueError(message())


def _check_tokens(ids: Any, limit: int, allow_ignore: bool = False) -> None:
    low = -1 if allow_ignore else 0
    if isinstance(ids, np.ndarray) and ids.size == 1:  # a decode step's token: 0.16 us, not 0.68
        lo = hi = ids.item()
    else:
        ids = np.asarray(ids)
        if ids.size <= 64:  # a few tokens: Python's min and max beat numpy's (5 us)
            flat = ids.ravel().tolist()
            lo, hi = (min(flat), max(flat)) if flat else (low, low)
        else:
            lo, hi = ids.min(), ids.max()
    if not (lo >= low and hi < limit):
        raise ValueError(f"ids must be in [{low}, {limit}), got [{lo}, {hi}]")


def _check_q_rows(wq: Any, qtype: str, OC: int, K: int) -> None:
    """wq must be uint8 (OC, row bytes): OC ggml rows of K values of qtype."""
    if qtype not in _QTYPE_CODES:
        raise ValueError(f"qtype must be one of {', '.join(_QTYPE_CODES)}, got {qtype!r}")
    row_bytes = -(-K // 32) * _QBLOCK_BYTES[qtype]
    if isinstance(wq, np.ndarray):  # the model's case, read without np.shape / np.asarray
        if wq.shape == (OC, row_bytes) and wq.dtype == U8:
            return
    if np.shape(wq) != (OC, row_bytes) or np.asarray(wq).dtype != U8:
        # the message is formatted only here: a dtype's str costs more than a small GEMV
        raise ValueError(f"wq must be uint8 ({OC}, {row_bytes}) for {qtype} rows of K={K}, "
                         f"got {np.asarray(wq).dtype} {np.shape(wq)}")


def _q_operand(wq: Any, qtype: str, OC: int, K: int) -> tuple[np.ndarray, int]:
    """The bytes a quantized kernel reads and its qtype argument: ggml's rows (checked as
    _check_q_rows does) or a PackedQ of these OC rows of K values of qtype."""
    if isinstance(wq, PackedQ):
        if wq.qtype != qtype or wq.rows != OC or wq.blocks != -(-K // 32):
            raise ValueError(f"wq: {wq.rows} rows of {wq.blocks} blocks packed as {wq.qtype}, "
                             f"used as {OC} {qtype} rows of K={K}")
        return wq.data, _QTYPE_CODES[qtype] + _PACKED
    _check_q_rows(wq, qtype, OC, K)
    return wq, _QTYPE_CODES[qtype]


def _batch_rows(slots: Array, positions: Array, B: int, S: int,
                max_t: int) -> tuple[np.ndarray, np.ndarray]:
    """A continuous-batching step's slots and positions (B,), checked: distinct slots in
    [0, S), positions in [0, max_t)."""
    sl, ps = np.asarray(slots), np.asarray(positions)
    _check(sl.shape == ps.shape == (B,), lambda: f"slots and positions must have {B} entries")
    _check(bool(np.all((sl >= 0) & (sl < S))) and len(set(sl.tolist())) == B,
           lambda: f"slots must be distinct and in [0, {S}), got {sl.tolist()}")
    _check(bool(np.all((ps >= 0) & (ps < max_t))),
           lambda: f"positions must be in [0, {max_t}), got {ps.tolist()}")
    return sl, ps


def _size(out: np.ndarray, inp: np.ndarray) -> int:
    n = inp.size if isinstance(inp, np.ndarray) else np.size(inp)  # .size: a sixth of np.size's time
    _check((out.size if isinstance(out, np.ndarray) else np.size(out)) == n,
           lambda: f"size mismatch: {np.shape(out)} vs {np.shape(inp)}")
    return int(n)


def _matmul_dims(inp: np.ndarray, weight: np.ndarray, trans_w: bool) -> tuple[int, int]:
    C = inp.shape[-1]
    w_in, OC = (weight.shape[1], weight.shape[0]) if trans_w else weight.shape
    if w_in != C:  # the message is formatted only here (per call it costs ~0.3 us)
        raise ValueError(f"matmul: input width {C} does not match weight {weight.shape}"
                         f"{' (transposed)' if trans_w else ''}")
    return C, OC


def _attention_dims(qkv: np.ndarray, n_head: int,
                    n_kv_head: int | None) -> tuple[int, int, int, int]:
    """B, T, C = n_head * D (the output width) and Hkv of a (B, T, (H + 2*Hkv) * D) qkv."""
    B, T, W = qkv.shape
    Hkv = n_head if n_kv_head is None else n_kv_head
    _check(n_head > 0 and Hkv > 0 and n_head % Hkv == 0,
           lambda: f"n_kv_head ({Hkv}) must be > 0 and divide n_head ({n_head})")
    heads = n_head + 2 * Hkv
    _check(W % heads == 0, lambda: f"qkv width {W} is not (n_head + 2 * n_kv_head) ({heads}) * head size")
    return B, T, W // heads * n_head, Hkv


def _cache_rows(kcache: np.ndarray, vcache: np.ndarray, B: int, Hkv: int, D: int, pos: int,
                Tn: int) -> int:
    """_check_cache, and that positions pos..pos+Tn-1 fit: max_T (plain ifs, for the fused
    blocks' once-a-layer calls)."""
    shape = kcache.shape
    if len(shape) != 4 or shape != vcache.shape or shape[0] != B or shape[1] != Hkv or shape[3] != D:
        _check_cache(kcache, vcache, B, Hkv, D)  # raises, naming the shapes
    if not (0 <= pos and pos + Tn <= shape[2]):
        raise ValueError(f"KV cache holds {shape[2]} positions, need {pos + Tn}")
    return int(shape[2])


def _check_block_buffers(name: str, out: np.ndarray, x: np.ndarray, work: np.ndarray,
                         need: int) -> None:
    """A fused block's out is x's size and its work holds `need` floats."""
    if out.size != x.size:
        raise ValueError(f"{name}: out must be {x.shape}")
    if work.size < need:
        raise ValueError(f"{name}: work needs {need} floats, has {work.size}")


def _check_cache(kcache: np.ndarray, vcache: np.ndarray, B: int, Hkv: int, D: int) -> int:
    """max_T of a KV cache (B or slots, Hkv, max_T, D), checked."""
    _check(kcache.ndim == 4 and tuple(kcache.shape) == tuple(vcache.shape)
           and kcache.shape[0] == B and kcache.shape[1] == Hkv and kcache.shape[3] == D,
           lambda: f"kcache and vcache must be ({B}, {Hkv}, max_T, {D}), got {kcache.shape} and "
           f"{vcache.shape}")
    return int(kcache.shape[2])


class WasmBackend(_WasmBase):
    """The scalar (MVP) WebAssembly module: runs in any WebAssembly host."""

    name: ClassVar[str] = "wasm"
    priority: ClassVar[int] = 10
    modules = (("sllm_scalar.wasm", False, None),)
    _probed: ClassVar[dict[str, Any]] = {}


class WasmSimdBackend(_WasmBase):
    """The SIMD128 WebAssembly module (with relaxed-SIMD FMA where the runtime accepts it)."""

    name: ClassVar[str] = "wasm-simd"
    priority: ClassVar[int] = 20
    # The compat build (no extmul) is the one wasmer 1.x accepts; wasmtime takes the first.
    modules: ClassVar[tuple[tuple[str, bool, str | None], ...]] = (
        ("sllm_relaxed.wasm", True, "simd128"), ("sllm_simd128.wasm", False, "simd128"),
        ("sllm_simd128_compat.wasm", False, "simd128"))
    _probed: ClassVar[dict[str, Any]] = {}
