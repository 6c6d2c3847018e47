"""What is specific to the WebAssembly backends: freestanding modules, linear-memory
storage (growth, out-of-memory, free and reuse, staging of foreign arrays), the exp/tanh
approximations' error bounds, runtime SIMD detection, the wasmer host, and the whole
model against the numpy reference. Kernel-by-kernel conformance is tests/test_kernels.py."""
import numpy as np
import pytest

import sllm
from sllm import BackendError, backends
from sllm.backends import KERNELS, wasm_runtime
from sllm.backends.wasm import WasmBackend, WasmSimdBackend, find_module
from sllm.backends.wasm_runtime import RuntimeUnavailable, wasmer_importable
from sllm.budget import BudgetError

WASM: list[str] = [n for n in ("wasm", "wasm-simd") if n in backends.available()]
pytestmark = pytest.mark.skipif(not WASM, reason="the wasm modules were not built or no runtime")
CLASSES = {"wasm": WasmBackend, "wasm-simd": WasmSimdBackend}
MODULES = ["sllm_scalar.wasm", "sllm_simd128.wasm", "sllm_relaxed.wasm", "sllm_simd128_compat.wasm"]


@pytest.fixture(params=WASM or ["none"])
def be(request):
    """A fresh instance of each available wasm backend (its own linear memory)."""
    return CLASSES[request.param]()


@pytest.mark.parametrize("filename", MODULES)
def test_modules_need_no_imports(filename):
    wasmtime = pytest.importorskip("wasmtime")
    config = wasmtime.Config()
    config.wasm_relaxed_simd = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module(engine, find_module(filename).read_bytes())
    assert list(module.imports) == []  # instantiable in a browser with {}
    exports = {e.name for e in module.exports}
    assert set(KERNELS) <= exports
    assert {"memory", "args_address", "heap_base"} <= exports
    wasmtime.Instance(wasmtime.Store(engine), module, [])


def test_capabilities_are_data(be):
    caps = be.capabilities
    assert caps["runtime"] in ("wasmtime", "wasmer")
    assert caps["simd"] == (None if be.name == "wasm" else "simd128")
    assert be.missing_kernels() == [] and not be.reference_kernels


def test_storage_is_zero_copy_and_reused(be):
    a = be.zeros((3, 5))
    offset = be.memory.offset_of(a)
    assert offset > 0 and not a.any() and a.flags.c_contiguous and a.flags.writeable
    view = be.memory.view(offset, (15,), np.dtype(np.float32))
    a[1, 2] = 7.0
    assert view[7] == 7.0  # the same bytes: no copy
    b = be.empty(1000)
    be.free(a)
    c = be.empty((2, 2))
    assert be.memory.offset_of(c) == offset  # first fit reuses the freed block
    be.free(b)
    be.free(c)
    with pytest.raises(ValueError, match="not the start"):
        be.memory.free(offset + 4)


def test_memory_growth_keeps_views_and_results(be, tiny_config):
    model = sllm.SLLM(tiny_config, backend=be, seed=3)
    x = np.arange(12).reshape(2, 6) % tiny_config.vocab_size
    before = model.eval().forward(x)
    end, params = be.memory.end, model.flat_params
    big = be.zeros(64 * 2**20 // 4)  # 64 MiB: linear memory must grow
    assert be.memory.end >= end + 64 * 2**20
    big[:] = 1.0
    assert model.flat_params is params and np.shares_memory(params, model.flat_params)
    np.testing.assert_array_equal(model.forward(x), before)
    loss = model.train().forward_backward(x, x)
    assert np.isfinite(loss) and np.abs(model.flat_grads).sum() > 0
    be.free(big)


def test_out_of_memory_is_a_clear_backend_error(be):
    with pytest.raises(BackendError, match="out of WebAssembly linear memory"):
        be.empty(5 * 2**30 // 4)  # beyond wasm32's 4 GiB address space
    small = type(be)(memory_limit=8 * 2**20)
    with pytest.raises(BackendError, match=r"cannot allocate 16\.0 MiB.*limit 8 MiB"):
        small.empty(4 * 2**20)
    small.empty(1000)  # still usable afterwards


def test_out_of_memory_under_a_model_is_clear():
    small = WasmBackend(memory_limit=2 * 2**20)
    cfg = sllm.ModelConfig(vocab_size=5000, embedding_dim=128, num_layers=1, num_heads=4,
                           ffn_hidden_dim=512, max_seq_len=64)
    with pytest.raises(BudgetError, match=r"needs 16.3 MiB .* \(wasm linear memory\)"):
        sllm.SLLM(cfg, backend=small)  # refused by the budget, before any allocation
    with pytest.raises(BackendError, match="out of WebAssembly linear memory"):
        small.empty((1 << 20,))  # the allocator's own message, below the budget


class _MovingRuntime(wasm_runtime.Runtime):
    """A runtime whose memory moves when it grows (what the backend must never allow)."""

    name = "moving"

    def __init__(self):
        self.base, self.size = 1 << 20, wasm_runtime.WASM_PAGE

    def base_address(self):
        return self.base

    def memory_size(self):
        return self.size

    def grow(self, pages):
        before = self.base
        self.base, self.size = self.base + (1 << 20), self.size + pages * wasm_runtime.WASM_PAGE
        self._check_base(before)
        return True


def test_memory_that_moves_on_growth_is_refused():
    from sllm.backends.wasm_memory import LinearMemory
    memory = LinearMemory(_MovingRuntime(), heap_base=1024)
    assert memory.alloc(1000) > 0  # fits without growing
    with pytest.raises(BackendError, match="moved on growth"):
        memory.alloc(1 << 20)


def test_exp_and_tanh_error_bounds(be):
    x = be.from_numpy(np.linspace(-87.0, 88.0, 400_003, dtype=np.float32))
    out = be.empty(x.shape)
    be.vec_exp(out, x)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - exact) / exact) < 2e-7  # documented in wasm/mathfn.h
    x = be.from_numpy(np.linspace(-12.0, 12.0, 400_003, dtype=np.float32))
    be.vec_tanh(out, x)
    assert np.max(np.abs(out - np.tanh(x.astype(np.float64)))) < 2e-7
    extremes = np.array([-np.inf, -200.0, 200.0, np.inf, 0.0], np.float32)
    be.vec_exp(out[:5], extremes)
    assert np.all(np.isfinite(out[:5])) and out[4] == 1.0
    be.vec_tanh(out[:5], extremes)
    np.testing.assert_array_equal(out[:5], [-1, -1, 1, 1, 0])


def test_foreign_arrays_are_staged_and_written_back(be, rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    out = np.zeros((5, 7), np.float64)[:, :]  # not in linear memory, and float64
    be.gelu_fwd(out, x[:, :])
    expected = np.zeros_like(x)
    sllm.backends.reference.gelu_fwd(expected, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert be.memory.in_use() == 0  # staging buffers were released


def test_bad_input_gives_clear_errors(be, rng):
    with pytest.raises(ValueError, match="ids must be in"):
        be.encoder_fwd(be.zeros((1, 2, 4)), np.array([[0, 9]]), be.zeros((5, 4)), be.zeros((4, 4)))
    with pytest.raises(ValueError, match="does not match weight"):
        be.matmul_fwd(be.zeros((2, 3)), be.zeros((2, 4)), be.zeros((5, 3)), None)


def test_llama_kernels_are_native(be):
    """No llama kernel falls back to the numpy reference on wasm."""
    from sllm.backends import reference
    from sllm.backends.base import LLAMA_KERNELS
    assert not [k for k in LLAMA_KERNELS if getattr(type(be), k) is getattr(reference, k)]


@pytest.mark.parametrize("positions", ["batch", "offset"])
def test_rope_table_and_per_row_angles_match_reference(be, rng, positions):
    """A training batch repeats positions (the module tabulates them first); a KV-cache step
    far into the context computes its rows' angles one by one. Both equal the reference."""
    from sllm.backends import reference
    B, T, H, Hkv, D = 3, 11, 4, 2, 10
    pos = np.tile(np.arange(T), B) if positions == "batch" else 3000 + np.arange(B * T)
    pos = pos.astype(np.int32)
    for kernel in ("rope_fwd", "rope_bwd"):
        x = rng.standard_normal((B * T, (H + 2 * Hkv) * D)).astype(np.float32)
        mine, ref = be.from_numpy(x), x.copy()
        getattr(be, kernel)(mine, pos, H, Hkv, 500000.0)
        getattr(reference, kernel)(ref, pos, H, Hkv, 500000.0)
        np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(mine[:, (H + Hkv) * D:], x[:, (H + Hkv) * D:])  # v stays


def test_llama_bad_input_gives_clear_errors(be):
    with pytest.raises(ValueError, match="even head dim"):
        be.rope_fwd(be.zeros((2, 3 * 5)), np.zeros(2, np.int32), 1, 1, 10000.0)
    with pytest.raises(ValueError, match="positions must be"):
        be.rope_fwd(be.zeros((2, 3 * 4)), np.array([0, -1], np.int32), 1, 1, 10000.0)
    with pytest.raises(ValueError, match="must be > 0 and divide n_head"):
        be.attention_fwd(be.zeros((1, 2, 12)), be.zeros((1, 4, 2, 2)), be.zeros((1, 2, 36)), 4, 3)
    with pytest.raises(ValueError, match="kcache and vcache must be"):
        be.attention_decode(be.zeros((1, 1, 8)), be.zeros((1, 1, 16)), be.zeros((1, 4, 5, 2)),
                            be.zeros((1, 4, 5, 2)), 0, 4, 2)


TRAP_SCRIPT = """
import numpy as np, sys
from sllm import BackendError
from sllm.backends.wasm import WasmBackend, WasmSimdBackend
be = {"wasm": WasmBackend, "wasm-simd": WasmSimdBackend}[sys.argv[1]]()
try:
    be._call("gelu_fwd", "<IIi", 0xFFFFFF00, 0xFFFFFF00, 1024)  # out of bounds: traps
except BackendError as e:
    assert "gelu_fwd failed" in str(e), e
else:
    raise SystemExit("no trap")
x = be.from_numpy(np.arange(-4, 5, dtype=np.float32))
out = be.empty(9)
be.relu_fwd(out, x)
assert (out == np.maximum(x, 0)).all()
print("ok")
"""


@pytest.mark.parametrize("name", WASM)
def test_a_trap_is_a_backend_error_and_the_backend_keeps_working(name):
    # In a child process: wasm traps arrive as signals, and pytest's faulthandler, re-armed
    # after the runtime installed its handler, would take them as a crash.
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", TRAP_SCRIPT, name], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


class _NoSimdWasmtime(wasm_runtime.WasmtimeRuntime):
    """wasmtime configured without SIMD: stands in for a host that lacks it."""

    @staticmethod
    def _config(wasmtime, relaxed_simd):
        config = wasm_runtime.WasmtimeRuntime._config(wasmtime, False)
        config.wasm_relaxed_simd = False
        config.wasm_simd = False
        return config


def test_simd_rejected_by_the_runtime_leaves_scalar_working(monkeypatch):
    pytest.importorskip("wasmtime")
    monkeypatch.setitem(wasm_runtime.RUNTIMES, "wasmtime", _NoSimdWasmtime)
    monkeypatch.setenv("SLLM_WASM_RUNTIME", "wasmtime")
    monkeypatch.setattr(WasmSimdBackend, "_probed", {})
    monkeypatch.setattr(WasmBackend, "_probed", {})
    with pytest.raises(RuntimeUnavailable, match="wasmtime rejects the module"):
        WasmSimdBackend.probe()
    assert WasmBackend.probe()["simd"] is None


def test_missing_modules_make_the_backends_unavailable_with_the_reason(monkeypatch, tmp_path):
    import sllm.backends.wasm as wasm_backend
    monkeypatch.setattr(wasm_backend, "module_dirs", lambda: [tmp_path])
    monkeypatch.setattr(WasmBackend, "_probed", {})
    with pytest.raises(RuntimeUnavailable, match="sllm_scalar.wasm was not built"):
        WasmBackend.probe()


def test_unknown_runtime_name_is_reported(monkeypatch):
    monkeypatch.setenv("SLLM_WASM_RUNTIME", "v8")
    with pytest.raises(RuntimeUnavailable, match="SLLM_WASM_RUNTIME='v8'"):
        wasm_runtime.runtime_name()


@pytest.mark.skipif(not wasmer_importable(),
                    reason="wasmer needs Python <= 3.10 (.ci/run runs this file there)")
def test_wasmer_host_matches_wasmtime(tiny_config, rng):
    x = rng.integers(0, tiny_config.vocab_size, (2, 5))
    logits = {}
    for runtime in ("wasmer", "wasmtime"):
        model = sllm.SLLM(tiny_config, backend=WasmBackend(runtime), seed=1).eval()
        assert model.backend.capabilities["runtime"] == runtime
        logits[runtime] = model.forward(x)
    np.testing.assert_array_equal(logits["wasmer"], logits["wasmtime"])
    # wasmer 1.x knows only the early SIMD128 operators: since the quantized matmul uses
    # i16x8.extmul, it refuses the SIMD module, and wasm-simd under wasmer says so plainly
    # (the scalar wasm backend above still runs there).
    try:
        simd = WasmSimdBackend("wasmer")
    except RuntimeUnavailable as e:
        assert "wasmer rejects the module" in str(e) and "Unsupported feature" in str(e)
    else:
        assert simd.capabilities["relaxed_simd"] is False  # wasmer 1.x: SIMD128 only


AWKWARD = sllm.ModelConfig(vocab_size=67, embedding_dim=12, num_layers=2, num_heads=3,
                           ffn_hidden_dim=21, dropout=0.1, max_seq_len=9)


@pytest.mark.parametrize("tie,family", [(False, {}), (True, {}),
                                        (False, {"architecture": "llama", "num_heads": 6,
                                                 "num_kv_heads": 2, "embedding_dim": 24})])
def test_whole_model_matches_reference(be, rng, tie, family):
    cfg = AWKWARD.replace(tie_embeddings=tie, **family)
    mine, ref = sllm.SLLM(cfg, backend=be, seed=7), sllm.SLLM(cfg, backend="numpy", seed=7)
    x = rng.integers(0, cfg.vocab_size, (3, 9))
    y = np.roll(x, -1, axis=1)
    y[0, 3] = -1
    for model in (mine, ref):
        model.train()
    loss, loss_ref = mine.forward_backward(x, y), ref.forward_backward(x, y)
    assert abs(loss - loss_ref) <= 1e-4 * abs(loss_ref)
    for name, g_ref in ref.gradients().items():
        g = mine.gradients()[name]
        err = np.abs(g - g_ref).max() / max(np.abs(g_ref).max(), 1e-12)
        assert err <= 1e-4, f"{name}: relative error {err:.2e}"
    logits, logits_ref = mine.eval().forward(x), ref.eval().forward(x)
    assert np.abs(logits - logits_ref).max() <= 1e-4 * np.abs(logits_ref).max()


@pytest.mark.parametrize("filename", MODULES)
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_quantized_decode_matches_reference_in_every_module(filename, qtype):
    """Each module's quantized kernels (four rows at a time, q4 nibbles unsigned, q8_0's
    sign trick on x in the relaxed module; the scalar loops in the MVP one) decode the
    numpy reference's greedy tokens, its embedding lookup included (tied wte)."""
    cls = type(f"Only_{filename}", (WasmSimdBackend,),
               {"modules": ((filename, False, "simd128"),), "_probed": {}})
    if filename == "sllm_relaxed.wasm":
        cls = WasmSimdBackend  # relaxed is wasm-simd's first choice where the runtime runs it
    elif filename == "sllm_scalar.wasm":
        cls = WasmBackend
    try:
        be = cls()
    except RuntimeUnavailable as e:
        pytest.skip(f"{filename}: {e}")
    if filename == "sllm_relaxed.wasm" and be.capabilities["module"] != filename:
        pytest.skip("this runtime does not run the relaxed-SIMD module")
    cfg = AWKWARD.replace(tie_embeddings=True, vocab_size=70, embedding_dim=45, max_seq_len=40)
    mine = sllm.SLLM(cfg, backend=be, seed=3).quantize(qtype).eval()
    ref = sllm.SLLM(cfg, backend="numpy", seed=3).quantize(qtype).eval()
    prompt = [5, 17, 60, 3]
    assert mine.generate(prompt, 30, temperature=0) == ref.generate(prompt, 30, temperature=0)
    logits, logits_ref = mine.forward([prompt]), ref.forward([prompt])
    assert np.abs(logits - logits_ref).max() <= 1e-4 * np.abs(logits_ref).max()


def test_embed_q_fwd_checks_its_tokens(be):
    from sllm import quant
    wq = quant.quantize(np.ones((9, 40), np.float32), "q4_1")
    out = np.zeros((1, 2, 40), np.float32)
    be.embed_q_fwd(out, np.array([[8, 0]], np.int32), wq, "q4_1")
    np.testing.assert_allclose(out, 1.0, rtol=1e-3)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 9\)"):
        be.embed_q_fwd(out, np.array([[9, 0]], np.int32), wq, "q4_1")
    with pytest.raises(ValueError, match="embed_q_fwd: out must be"):
        be.embed_q_fwd(np.zeros((1, 3, 40), np.float32), np.array([[1, 0]], np.int32), wq, "q4_1")


@pytest.mark.parametrize("qtype", ["q8_0", "q4_1"])
def test_quantized_scales_of_every_float16_kind_convert_exactly(be, qtype):
    """Float16 scales (and q4_1's offsets) of every kind, four rows' scales multiplied as
    one vector: subnormal, zero, negative, largest, infinite and NaN scales give the
    reference's floats bit for bit (one block: the same float operations)."""
    from sllm import quant
    from sllm.backends import reference
    halves = [0x0001, 0x03FF, 0x0400, 0x8000, 0x0000, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00,
              0x3C00, 0xB555]
    rng = np.random.default_rng(1)
    wq = quant.quantize(rng.standard_normal((len(halves), 32)).astype(np.float32), qtype)
    wq[:, 0:2] = np.array(halves, np.uint16).view(np.uint8).reshape(-1, 2)
    if qtype == "q4_1":
        wq[:, 2:4] = np.array(halves[::-1], np.uint16).view(np.uint8).reshape(-1, 2)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    out, ref = np.zeros((2, len(halves)), np.float32), np.zeros((2, len(halves)), np.float32)
    with np.errstate(all="ignore"):
        be.matmul_q_fwd(out, x, wq, None, qtype)
        reference.matmul_q_fwd(ref, x, wq, None, qtype)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    finite = ~np.isnan(ref)
    assert np.array_equal(out[finite].view(np.uint32), ref[finite].view(np.uint32))
