"""What is specific to the cpp backend: each SIMD tier forced through SLLM_CPP_SIMD,
thread-count independence, rejection of bad buffers, the GEMM's blocking edges, and
training on cpp tracking training on numpy. (Every kernel against numpy on awkward shapes
is tests/test_kernels.py, which runs for every backend.)"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sllm
from sllm import backends

pytestmark = pytest.mark.skipif("cpp" not in backends.available(),
                                reason="the cpp backend is not built here")

TIER_CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from sllm import backends
    from sllm.backends import reference as R
    rows = {r["name"]: r for r in backends.info()}
    if not rows["cpp"]["available"]:
        print(json.dumps({"reason": rows["cpp"]["reason"]})); sys.exit(0)
    be, rng, errors = backends.get("cpp"), np.random.default_rng(0), {}
    def f(*shape): return rng.standard_normal(shape).astype(np.float32)
    def run(name, kernel, args, outs):
        ref = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        getattr(R, kernel)(*ref); getattr(be, kernel)(*args)
        errors[name] = max(float(np.abs(args[i] - ref[i]).max() / (np.abs(ref[i]).max() + 1e-6))
                           for i in outs)
    for N, C, OC in [(3, 300, 70), (61, 33, 45), (130, 260, 97)]:  # small-M, edge tiles, K > kc
        for tw in (False, True):
            w, x = (f(OC, C) if tw else f(C, OC)), f(N, C)
            run(f"mm{N}x{C}x{OC}{tw}", "matmul_fwd", [f(N, OC), x, w, f(OC), tw], [0])
            run(f"mmb{N}x{C}x{OC}{tw}", "matmul_bwd", [f(N, C), f(*w.shape), f(OC), f(N, OC), x, w, tw], [0, 1, 2])
    qkv, out_ref = f(2, 19, 3 * 12), np.zeros((2, 19, 12), np.float32)
    R.attention_fwd(out_ref, np.zeros((2, 3, 19, 19), np.float32), qkv, 3)
    out, lse = np.zeros_like(out_ref), np.zeros((2, 3, 19), np.float32)
    be.attention_fwd(out, lse, qkv, 3)
    errors["attention"] = float(np.abs(out - out_ref).max())
    gqa, gout_ref = f(2, 37, (4 + 2 * 2) * 6), np.zeros((2, 37, 24), np.float32)  # 4 q, 2 kv heads
    R.attention_fwd(gout_ref, np.zeros((2, 4, 37, 37), np.float32), gqa, 4, 2)
    gout, glse = np.zeros_like(gout_ref), np.zeros((2, 4, 37), np.float32)
    be.attention_fwd(gout, glse, gqa, 4, 2)
    errors["gqa attention"] = float(np.abs(gout - gout_ref).max())
    run("rmsnorm", "rmsnorm_bwd", [f(9, 70), f(70), f(9, 70), f(9, 70), f(70), f(9) ** 2], [0, 1])
    run("rope", "rope_fwd", [f(5, (3 + 2) * 66), np.arange(2040, 2045, dtype=np.int32), 3, 1,
                             10000.0], [0])
    run("swiglu", "swiglu_bwd", [f(1001), f(1001), f(1001), f(1001) * 8, f(1001)], [0, 1])
    run("gelu", "gelu_bwd", [f(1001), f(1001), f(1001) * 3], [0])
    run("layernorm", "layernorm_fwd", [f(7, 37), f(7), f(7), f(7, 37), f(37), f(37)], [0, 1, 2])
    run("xent", "softmax_xent", [f(4), f(4, 5003), f(4, 5003) * 4,
                                 np.array([1, 5002, -1, 0], np.int32), 0.25], [0, 1])
    print(json.dumps({"simd": be.capabilities["simd"], "errors": errors}))
""")


def _run_python(code, **env):
    full_env = {**os.environ, **env}
    done = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_has(tier):
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return {"scalar": True, "avx2": " avx2" in flags and " fma" in flags,
            "avx512": " avx512f" in flags and " avx512bw" in flags}[tier]


@pytest.mark.parametrize("tier", ["avx512", "avx2", "scalar"])
def test_each_simd_tier_matches_numpy(tier):
    if not _cpu_has(tier):
        pytest.skip(f"this CPU cannot run {tier}")
    result = _run_python(TIER_CHECK, SLLM_CPP_SIMD=tier)
    assert result.get("simd") == tier, result
    bad = {k: e for k, e in result["errors"].items() if e > 1e-5}
    assert not bad, bad


def test_unknown_tier_makes_cpp_unavailable_with_the_reason():
    result = _run_python(TIER_CHECK, SLLM_CPP_SIMD="sse9")
    assert "SLLM_CPP_SIMD=sse9" in result["reason"]


def test_thread_count_from_environment():
    code = "import json; from sllm import backends; print(json.dumps(backends.get('cpp').capabilities))"
    assert _run_python(code, SLLM_NUM_THREADS="1")["threads"] == 1
    assert _run_python(code, SLLM_NUM_THREADS="3")["threads"] == 3


@pytest.mark.parametrize("K,N", [(128, 384), (300, 45), (512, 128), (1000, 70)])
def test_few_rows_equal_the_same_rows_of_many(cpp, rng, K, N):
    """A few rows (a batched decode step: the weight read in place) give, bit for bit, what
    the same rows give inside a many-row GEMM (packed panels), also past one depth block
    (K > 256): a batched prefill and per-request prefills agree exactly."""
    w, bias = rng.standard_normal((K, N), dtype=np.float32), rng.standard_normal(N, dtype=np.float32)
    x = rng.standard_normal((200, K), dtype=np.float32)
    many = np.empty((200, N), np.float32)
    cpp.matmul_fwd(many, x, w, bias)
    for M in (5, 8, 16, 33, 64):
        few = np.empty((M, N), np.float32)
        cpp.matmul_fwd(few, np.ascontiguousarray(x[:M]), w, bias)
        np.testing.assert_array_equal(few, many[:M], err_msg=f"{M} rows")


@pytest.mark.parametrize("K,N,trans_w", [(128, 384, False), (300, 45, True), (1000, 70, False),
                                         (7, 3, True), (256, 1000, True), (256, 1024, False),
                                         (37, 45, False)])
def test_packed_weight_gives_the_weights_results(cpp, rng, K, N, trans_w):
    """pack_weight's panels (a decode step's weights) give, bit for bit, what the weight
    itself gives, for every row count: the GEMV's (<= 4 rows: the panels read in the
    unpacked GEMV's order, the tied head's weight itself), the few-row tiles and many rows;
    transposed (the tied head) too."""
    w = rng.standard_normal((N, K) if trans_w else (K, N), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32)
    packed = cpp.pack_weight(w, trans_w)
    assert packed.weight is w and packed.trans_w == trans_w and packed.nbytes >= K * N * 4
    for M in (1, 2, 3, 4, 5, 8, 16, 33, 64, 65, 130):
        x = rng.standard_normal((M, K), dtype=np.float32)
        want, got = np.empty((M, N), np.float32), np.full((M, N), np.nan, np.float32)
        cpp.matmul_fwd(want, x, w, bias, trans_w)
        cpp.matmul_fwd(got, x, packed, bias, trans_w)
        np.testing.assert_array_equal(got, want, err_msg=f"{M} rows")


def test_packed_weight_refuses_misuse(cpp, rng):
    w = rng.standard_normal((8, 3), dtype=np.float32)
    packed, x, out = cpp.pack_weight(w), np.zeros((6, 8), np.float32), np.zeros((6, 3), np.float32)
    with pytest.raises(ValueError, match="matmul_fwd: weight was packed with trans_w=False"):
        cpp.matmul_fwd(np.zeros((6, 8), np.float32), np.zeros((6, 3), np.float32), packed, None, True)
    with pytest.raises(ValueError, match="matmul_fwd: inp's width|weight does not match"):
        cpp.matmul_fwd(out, np.zeros((6, 5), np.float32), packed, None)
    with pytest.raises(TypeError, match="matmul_bwd: weight must be a numpy array"):
        cpp.matmul_bwd(None, np.zeros_like(w), None, out, x, packed)
    with pytest.raises(TypeError, match="pack_weight: weight must be float32"):
        cpp.pack_weight(w.astype(np.float64))
    with pytest.raises(ValueError, match="pack_weight: weight must have 2 dimensions"):
        cpp.pack_weight(np.zeros(5, np.float32))


def _train_step_grads(model, x, y):
    loss = model.forward_backward(x, y)
    return loss, {k: g.copy() for k, g in model.gradients().items()}


@pytest.mark.parametrize("family", [{}, {"architecture": "llama", "num_heads": 4, "num_kv_heads": 2}])
def test_results_do_not_depend_on_thread_count(rng, family):
    cfg = sllm.ModelConfig(**{**dict(vocab_size=301, embedding_dim=64, num_layers=2, num_heads=2,
                                     ffn_hidden_dim=96, dropout=0.1, max_seq_len=48), **family})
    model = sllm.SLLM(cfg, backend="cpp", seed=1)
    x, y = rng.integers(0, 301, (6, 48)), rng.integers(0, 301, (6, 48))
    be, before = model.backend, model.backend.capabilities["threads"]
    results = []
    try:
        for threads in (1, 2, 3):
            be.set_num_threads(threads)
            model.dropout_step = 0  # the same dropout masks each time
            results.append(_train_step_grads(model, x, y))
    finally:
        be.set_num_threads(before)
    for loss, grads in results[1:]:  # each output element is one thread's fixed-order sum
        assert loss == results[0][0]
        for name, g in grads.items():
            np.testing.assert_array_equal(g, results[0][1][name], err_msg=name)


def test_training_losses_bit_identical_for_1_2_3_threads(rng):
    """Whole steps (dropout, clipping, AdamW) give the same losses and weights bit for bit
    at 1, 2 and 3 threads: every reduction has a fixed order whatever the thread count."""
    from sllm.optim import AdamW
    cfg = sllm.ModelConfig(vocab_size=97, embedding_dim=72, num_layers=2, num_heads=3,
                           ffn_hidden_dim=200, dropout=0.1, max_seq_len=40)
    batches = [(rng.integers(0, 97, (5, 37)), rng.integers(0, 97, (5, 37))) for _ in range(4)]
    be = backends.get("cpp")
    before, runs = be.capabilities["threads"], []
    try:
        for threads in (1, 2, 3):
            be.set_num_threads(threads)
            model = sllm.SLLM(cfg, backend=be, seed=2)
            opt = AdamW(model, lr=3e-3)
            losses = []
            for x, y in batches:
                losses.append(model.forward_backward(x, y))
                losses.append(opt.clip_grad_norm(0.5))
                opt.step()
            runs.append((losses, model.flat_params.copy()))
    finally:
        be.set_num_threads(before)
    for losses, params in runs[1:]:
        assert losses == runs[0][0]
        np.testing.assert_array_equal(params, runs[0][1])


def test_kernels_from_concurrent_python_threads_are_exact(rng):
    """Two Python threads calling kernels at once (the GIL is released): the pool runs one
    job at a time and the other serially; both match a lone call bit for bit."""
    import threading
    be = backends.get("cpp")
    x, w = rng.standard_normal((97, 130)).astype(np.float32), rng.standard_normal(
        (130, 211)).astype(np.float32)
    expected = np.empty((97, 211), np.float32)
    be.matmul_fwd(expected, x, w, None)
    outs, errors = [np.empty_like(expected) for _ in range(4)], []

    def work(out):
        try:
            for _ in range(20):
                be.matmul_fwd(out, x, w, None)
                np.testing.assert_array_equal(out, expected)
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(o,)) for o in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_pool_survives_fork():
    """A child forked after the pool started (multiprocessing's default on Linux) has no
    workers; its kernels still finish (the caller runs every task)."""
    code = textwrap.dedent("""
        import json, os, numpy as np
        from sllm import backends
        be = backends.get("cpp"); be.set_num_threads(2)
        x = np.ones((300, 300), np.float32); out = np.empty_like(x)
        be.matmul_fwd(out, x, x, None)
        pid = os.fork()
        if pid == 0:
            be.matmul_fwd(out, x, x, None)
            os._exit(0 if out[0, 0] == 300 else 1)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}))
    """)
    assert _run_python(code)["status"] == 0


@pytest.fixture
def cpp():
    return backends.get("cpp")


def test_rejects_wrong_dtype(cpp):
    x, w = np.zeros((4, 8)), np.zeros((8, 3), np.float32)  # x is float64
    with pytest.raises(TypeError, match="matmul_fwd: inp must be float32, got float64"):
        cpp.matmul_fwd(np.zeros((4, 3), np.float32), x, w, None)
    with pytest.raises(TypeError, match="tokens must be int32"):
        cpp.encoder_fwd(np.zeros((1, 2, 8), np.float32), np.zeros((1, 2), np.int64),
                        np.zeros((5, 8), np.float32), np.zeros((4, 8), np.float32))
    with pytest.raises(TypeError, match="must be a numpy array, got list"):
        cpp.gelu_fwd(np.zeros(3, np.float32), [1.0, 2.0, 3.0])


def test_rejects_non_contiguous_read_only_and_mis_shaped(cpp):
    out = np.zeros((4, 3), np.float32)
    w = np.zeros((3, 8), np.float32).T  # a transposed view: not C-contiguous
    with pytest.raises(ValueError, match="weight must be C-contiguous"):
        cpp.matmul_fwd(out, np.zeros((4, 8), np.float32), w, None)
    frozen = np.zeros(5, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable"):
        cpp.relu_fwd(frozen, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="out has 4 elements, expected 5"):
        cpp.relu_fwd(np.zeros(4, np.float32), np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="weight does not match"):
        cpp.matmul_fwd(out, np.zeros((4, 8), np.float32), np.zeros((7, 3), np.float32), None)
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="out must not overlap inp"):
        cpp.matmul_fwd(x, x, np.zeros((8, 8), np.float32), None)


def test_rejects_out_of_range_ids(cpp):
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 5\), got 5"):
        cpp.encoder_fwd(np.zeros((1, 2, 8), np.float32), np.array([[0, 5]], np.int32),
                        np.zeros((5, 8), np.float32), np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match=r"targets must be in \[-1, 3\)"):
        cpp.softmax_xent(np.zeros(1, np.float32), None, np.zeros((1, 3), np.float32),
                         np.array([-2], np.int32), 1.0)
    with pytest.raises(ValueError, match="exceed the cache length"):
        cache = np.zeros((1, 1, 4, 2), np.float32)
        cpp.attention_decode(np.zeros((1, 1, 2), np.float32), np.zeros((1, 1, 6), np.float32),
                             cache, cache.copy(), 4, 1)


def test_llama_kernels_are_native(cpp):
    """No llama kernel falls back to the numpy reference on cpp."""
    from sllm.backends import reference
    from sllm.backends.base import LLAMA_KERNELS
    assert not [k for k in LLAMA_KERNELS if getattr(type(cpp), k) is getattr(reference, k)]


def test_saves_only_a_logsumexp_per_row(cpp):
    assert cpp.attention_saved_shape(2, 5, 3) == (2, 3, 5)


def test_missing_extension_is_reported(monkeypatch):
    from sllm.backends import cpp as cpp_module
    monkeypatch.setattr(cpp_module, "_cpp", None)
    monkeypatch.setattr(cpp_module, "_IMPORT_ERROR", "sllm._cpp is not built (test)")
    with pytest.raises(RuntimeError, match="not built"):
        cpp_module.CppBackend.probe()


@pytest.mark.parametrize("M,K,N", [(2048, 128, 384), (5, 600, 33), (128, 2048, 130)])
def test_gemm_blocking_edges(cpp, rng, M, K, N):
    """Model-sized GEMMs: depth beyond one packed block, and the weight gradient's long K."""
    x, w = rng.standard_normal((M, K), np.float32), rng.standard_normal((K, N), np.float32)
    out = np.empty((M, N), np.float32)
    cpp.matmul_fwd(out, x, w, None)
    np.testing.assert_allclose(out, x @ w, rtol=1e-4, atol=1e-4 * np.sqrt(K))


def test_training_curves_agree_with_numpy():
    """100 AdamW steps on both backends: the loss curves stay together."""
    cfg = sllm.ModelConfig(vocab_size=50, embedding_dim=32, num_layers=2, num_heads=2,
                           ffn_hidden_dim=48, dropout=0.1, max_seq_len=16)
    data = np.random.default_rng(5).integers(0, 50, (8, 17))
    data[:, 1::2] = (data[:, 0::2][:, :8] * 7 + 3) % 50  # something learnable
    curves = {}
    for name in ("numpy", "cpp"):
        model = sllm.SLLM(cfg, backend=name, seed=11)
        opt = sllm.optim.AdamW(model, lr=3e-3)
        curves[name] = []
        for _ in range(100):
            curves[name].append(model.forward_backward(data[:, :-1], data[:, 1:]))
            opt.step()
    ref, mine = np.array(curves["numpy"]), np.array(curves["cpp"])
    assert ref[-1] < ref[0] - 1.0  # it learned
    np.testing.assert_allclose(mine, ref, rtol=2e-3)


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_thread_count_in_environment(monkeypatch, value):
    from sllm.backends import cpp as cpp_module
    monkeypatch.setenv("SLLM_NUM_THREADS", value)
    with pytest.raises(ValueError, match="SLLM_NUM_THREADS must be a positive integer"):
        cpp_module.CppBackend()


def test_set_num_threads_rejects_zero(cpp):
    with pytest.raises(ValueError, match="must be >= 1"):
        cpp.set_num_threads(0)
