"""Continuous batching: the attention_decode_batch kernel on every backend against the
numpy reference, and the model's batched decode against unbatched decoding, token for
token, with sequences of different lengths joining and leaving between steps."""
import numpy as np
import pytest

import sllm
from sllm import backends
from sllm.backends import reference
from sllm.backends.base import decode_block_workspace

RTOL, ATOL = 1e-4, 1e-5


def _f(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# (slots S, heads H, head size D, cache length maxT, [(slot, position) per row])
CASES = [(1, 1, 8, 4, [(0, 0)]), (3, 1, 5, 12, [(2, 5), (0, 0)]),
         (5, 3, 5, 9, [(4, 8), (1, 0), (3, 3)]), (2, 2, 16, 40, [(1, 33), (0, 7)]),
         (4, 4, 3, 70, [(3, 69), (0, 31), (2, 32), (1, 1)])]


@pytest.mark.parametrize("S,H,D,maxT,rows", CASES)
def test_kernel_matches_reference(backend_name, rng, S, H, D, maxT, rows):
    be, C = backends.get(backend_name), H * D
    B = len(rows)
    slots = np.array([r[0] for r in rows], np.int32)
    positions = np.array([r[1] for r in rows], np.int32)
    k_ref, v_ref, qkv = _f(rng, S, H, maxT, D), _f(rng, S, H, maxT, D), _f(rng, B, 1, 3 * C)
    out_ref = np.zeros((B, 1, C), np.float32)
    kc, vc = be.from_numpy(k_ref), be.from_numpy(v_ref)
    reference.attention_decode_batch(out_ref, qkv, k_ref, v_ref, slots, positions, H)
    out = be.zeros((B, 1, C))
    be.attention_decode_batch(out, be.from_numpy(qkv), kc, vc, slots, positions, H)
    np.testing.assert_allclose(out, out_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(kc, k_ref)  # new keys/values stored where asked, only there
    np.testing.assert_array_equal(vc, v_ref)


@pytest.mark.parametrize("S,H,D,maxT,rows", CASES)
def test_reference_row_is_single_sequence_decode(rng, S, H, D, maxT, rows):
    """Row b of the batched reference == attention_decode on slot slots[b] alone."""
    C = H * D
    k0, v0, qkv = _f(rng, S, H, maxT, D), _f(rng, S, H, maxT, D), _f(rng, len(rows), 1, 3 * C)
    out = np.zeros((len(rows), 1, C), np.float32)
    kb, vb = k0.copy(), v0.copy()
    reference.attention_decode_batch(out, qkv, kb, vb, np.array([r[0] for r in rows], np.int32),
                                     np.array([r[1] for r in rows], np.int32), H)
    for b, (slot, pos) in enumerate(rows):
        k1, v1 = k0[slot:slot + 1].copy(), v0[slot:slot + 1].copy()
        one = np.zeros((1, 1, C), np.float32)
        reference.attention_decode(one, qkv[b:b + 1], k1, v1, pos, H)
        np.testing.assert_allclose(out[b], one[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(kb[slot], k1[0])


# (query heads H, KV heads Hkv, head size D): decode takes a sequence's query heads in
# groups (smaller ones where a call has few sequences and more threads), so odd H, groups
# across KV heads, sizes past whole vectors, and one where a single sequence's call at
# position 159 runs on several threads
GROUPED = [(1, 1, 32), (3, 3, 20), (5, 5, 16), (6, 2, 8), (8, 2, 32), (8, 8, 33), (8, 8, 64)]


@pytest.mark.parametrize("H,Hkv,D", GROUPED)
def test_kernel_row_is_bitwise_single_sequence_decode(backend_name, rng, H, Hkv, D):
    """Row b of attention_decode_batch, bit for bit, == attention_decode on slot slots[b]
    alone and == the same row in a batch of one, on 1-3 threads: a sequence's tokens
    must not depend on what else is in the batch (the engine's contract)."""
    be = backends.get(backend_name)
    S, B, maxT, W = 17, 16, 160, (H + 2 * Hkv) * D
    k0, v0, qkv = _f(rng, S, Hkv, maxT, D), _f(rng, S, Hkv, maxT, D), _f(rng, B, 1, W)
    slots = rng.permutation(S)[:B].astype(np.int32)
    positions = rng.integers(0, maxT, B).astype(np.int32)
    positions[[0, 7]] = maxT - 1, 0

    def batch(rows):
        out = be.zeros((len(rows), 1, H * D))
        be.attention_decode_batch(out, be.from_numpy(qkv[rows]), be.from_numpy(k0),
                                  be.from_numpy(v0), slots[rows], positions[rows], H, Hkv)
        return out
    threads = [1, 2, 3] if hasattr(be, "set_num_threads") else [None]
    before = be.capabilities.get("threads")
    try:
        for n in threads:
            if n:
                be.set_num_threads(n)
            out = batch(np.arange(B))
            for b in (0, 7, B - 1):
                one = be.zeros((1, 1, H * D))
                be.attention_decode(one, be.from_numpy(qkv[b:b + 1]),
                                    be.from_numpy(k0[slots[b]][None]),
                                    be.from_numpy(v0[slots[b]][None]), int(positions[b]), H, Hkv)
                np.testing.assert_array_equal(out[b], one[0])
                np.testing.assert_array_equal(batch(np.array([b]))[0], one[0])
    finally:
        if before:
            be.set_num_threads(before)


@pytest.mark.parametrize("slots,positions,match", [
    ([0, 0], [1, 2], "slot"), ([0, 5], [1, 2], "slot"), ([0, 1], [1, 12], "position"),
    ([0, -1], [1, 2], "slot")])
def test_kernel_refuses_bad_rows(backend_name, rng, slots, positions, match):
    be = backends.get(backend_name)
    kc, vc = be.zeros((3, 2, 12, 4)), be.zeros((3, 2, 12, 4))
    with pytest.raises(ValueError, match=match):
        be.attention_decode_batch(be.zeros((2, 1, 8)), be.from_numpy(_f(rng, 2, 1, 24)), kc, vc,
                                  np.array(slots, np.int32), np.array(positions, np.int32), 2)


def _model(backend_name, tie=False, llama=False):
    """A small GPT-2 model, or (llama) a grouped-query llama one; a backend without the llama
    kernels skips the llama case."""
    if llama and backends.get(backend_name).missing_llama_kernels():
        pytest.skip(f"{backend_name} runs GPT-2 models only")
    arch = dict(num_heads=4, num_kv_heads=2, architecture="llama") if llama else dict(num_heads=3)
    cfg = sllm.ModelConfig(vocab_size=37, embedding_dim=24, num_layers=2, ffn_hidden_dim=40,
                           dropout=0.0, max_seq_len=24, tie_embeddings=tie, **arch)
    return sllm.SLLM(cfg, backend=backend_name, seed=7).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_batched_greedy_equals_unbatched(backend_name, tie):
    """Prompts of different lengths join at different steps, in scattered slots; each
    sequence's greedy tokens equal model.generate(temperature=0) of it alone."""
    model = _model(backend_name, tie)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 37, n).tolist() for n in (1, 5, 9, 3, 13)]
    n_new = [12, 7, 10, 15, 11]
    joins = [0, 0, 2, 3, 6]  # step at which each sequence is prefilled
    slots = [4, 0, 2, 5, 1]
    expected = [model.generate(p, n, temperature=0)[len(p):] for p, n in zip(prompts, n_new, strict=True)]
    cache = model.new_cache(6)
    got: list[list[int]] = [[] for _ in prompts]
    pos = [0] * len(prompts)
    try:
        for step in range(40):
            for i in [i for i, j in enumerate(joins) if j == step]:
                logits = model.decode(np.array([prompts[i]]), cache.slot(slots[i]))
                got[i].append(int(np.argmax(logits[0])))
                pos[i] = len(prompts[i])
            live = [i for i in range(len(prompts)) if got[i] and len(got[i]) < n_new[i]]
            if not live and step > max(joins):
                break
            if live:
                logits = model.decode_batch([got[i][-1] for i in live], cache,
                                            [slots[i] for i in live], [pos[i] for i in live])
                for i, row in zip(live, logits, strict=True):
                    got[i].append(int(np.argmax(row)))
                    pos[i] += 1
    finally:
        cache.release()
    assert got == expected


def test_batched_logits_match_unbatched(backend_name):
    model = _model(backend_name)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    nxt = [11, 12, 13]
    solo = []
    for p, t in zip(prompts, nxt, strict=True):
        cache = model.new_cache(1)
        model.decode(np.array([p]), cache)
        solo.append(model.decode(np.array([[t]]), cache)[0])
        cache.release()
    cache = model.new_cache(3)
    for s, p in enumerate(prompts):
        model.decode(np.array([p]), cache.slot(2 - s))
    batched = model.decode_batch(nxt, cache, [2, 1, 0], [len(p) for p in prompts])
    cache.release()
    np.testing.assert_allclose(batched, np.stack(solo), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("slots,positions,match", [
    ([0, 0], [1, 2], "distinct"), ([0, 3], [1, 2], "distinct"), ([0, 1], [1, 24], "positions"),
    ([0], [1, 2], "one slot")])
def test_decode_batch_refuses_bad_rows(slots, positions, match):
    model = _model("numpy")
    cache = model.new_cache(3)
    with pytest.raises(ValueError, match=match):
        model.decode_batch([1, 2], cache, slots, positions)


@pytest.mark.parametrize("llama", [False, True])
@pytest.mark.parametrize("qtype", [None, "q8_0", "q4_1"])
def test_fused_step_equals_kernel_by_kernel(backend_name, qtype, llama):
    """decode_batch through decode_block_batch (llama_decode_block_batch; one call per
    block, where the backend has its own) gives exactly the logits and cache of the same
    step run kernel by kernel."""
    if llama and backends.get(backend_name).missing_llama_kernels():
        pytest.skip(f"{backend_name} runs GPT-2 models only")
    out = []
    for fused in (True, False):
        model = _model(backend_name)
        if llama:  # grouped-query attention, head dim 6
            cfg = sllm.ModelConfig(vocab_size=37, embedding_dim=24, num_layers=2, num_heads=4,
                                   num_kv_heads=2, ffn_hidden_dim=40, dropout=0.0,
                                   max_seq_len=24, architecture="llama")
            model = sllm.SLLM(cfg, backend=backend_name, seed=7).eval()
        if qtype:
            model.quantize(qtype)
        if backend_name in ("cpp", "wasm", "wasm-simd"):
            assert model._fused_batch, f"{backend_name} has its own fused batch block"
        model._fused_batch = fused and model._fused_batch
        cache = model.new_cache(4)
        for s, p in enumerate([[1, 2, 3], [4], [5, 6, 7, 8]]):
            model.decode(np.array([p]), cache.slot(3 - s))
        logits = model.decode_batch([11, 12, 13], cache, [3, 2, 1], [3, 1, 4])
        out.append((logits, [np.array(k) for k in cache.k], [np.array(v) for v in cache.v]))
        cache.release()
    (a, ka, va), (b, kb, vb) = out
    np.testing.assert_array_equal(a, b)
    for x, y in zip(ka + va, kb + vb, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("slots,positions,match", [
    ([0, 0], [1, 2], "slot 0 appears twice"), ([0, 4], [1, 2], "slot 4 outside"),
    ([0, 1], [1, 12], "position 12 outside")])
def test_fused_block_refuses_bad_rows(rng, slots, positions, match):
    if "cpp" not in backends.available():
        pytest.skip("the cpp backend is not built here")
    be = backends.get("cpp")
    C, F = 8, 16
    params = [be.from_numpy(_f(rng, *shape)) for shape in
              ((C,), (C,), (C, 3 * C), (3 * C,), (C, C), (C,), (C,), (C,), (C, F), (F,), (F, C), (C,))]
    work = be.zeros((decode_block_workspace(2, 1, C, F),))
    with pytest.raises(ValueError, match=f"decode_block_batch: {match}"):
        be.decode_block_batch(be.zeros((2, 1, C)), be.from_numpy(_f(rng, 2, 1, C)),
                              be.zeros((4, 2, 12, 4)), be.zeros((4, 2, 12, 4)), work, params,
                              np.array(slots, np.int32), np.array(positions, np.int32), 2, "gelu")


def _steps(model, rows=6):
    """Two decode_batch steps of `rows` sequences (more than the GEMV's 4 rows: cpp reads
    the packed weights' panels), scattered slots and positions; their logits."""
    cache = model.new_cache(rows + 1)
    slots = np.arange(rows)[::-1] + 1
    out = [model.decode_batch(np.arange(rows) + s, cache, slots, np.arange(rows) * 2 + s)
           for s in range(2)]
    cache.release()
    return np.stack(out)


@pytest.mark.parametrize("tie,llama", [(False, False), (True, False), (True, True)])
def test_packed_weights_give_the_same_step(backend_name, tie, llama):
    """decode_batch reads the weights as Backend.pack_weight packs them (cpp: its GEMM's
    panels, the tied head transposed), in either family; the logits equal, exactly, those of
    the weights read as they are."""
    model = _model(backend_name, tie, llama)
    packed = _steps(model)
    assert model._decode_packed is not None
    model.pack_weights = False  # the model's own arrays
    assert model._decode_packed is None
    np.testing.assert_array_equal(packed, _steps(model))


@pytest.mark.parametrize("value", ["false", 0, None])
def test_pack_weights_takes_only_a_bool(value):
    """bool("false") is True: the setter refuses anything but True or False, by name."""
    model = sllm.SLLM(sllm.ModelConfig(vocab_size=11, embedding_dim=8, num_layers=1,
                                       num_heads=2, max_seq_len=8), backend="numpy")
    with pytest.raises(sllm.errors.ConfigError, match="pack_weights must be True or False"):
        model.pack_weights = value
    assert model.pack_weights is True


def test_packed_weights_follow_the_weights(backend_name):
    """The packed copy is dropped when the weights may change: a write through parameters(),
    a training step, quantize()."""
    model, fresh = _model(backend_name), _model(backend_name)
    before = _steps(model)
    for m in (model, fresh):
        m.parameters()["h.0.mlp.c_fc.weight"][...] *= 2
        m.parameters()["lm_head.weight"][...] += 0.5
    after = _steps(model)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, _steps(fresh))
    model.train()
    model.forward_backward(np.zeros((1, 4), np.int64), np.ones((1, 4), np.int64))
    assert model._decode_packed is None
    model.eval()
    _steps(model)
    model.quantize("q8_0")
    assert model._decode_packed is None
    _steps(model)


def test_generating_again_keeps_the_packed_weights(backend_name):
    """generate() puts the model in eval mode every call; that must not repack the weights
    (a second copy of every matmul weight each time)."""
    model = _model(backend_name)
    model.generate([1, 2, 3, 4, 5, 6], 2, temperature=0)
    packed = model._decode_packed
    assert packed is not None
    model.generate([7, 8, 9], 2, temperature=0)
    assert model._decode_packed is packed


@pytest.mark.parametrize("llama", [False, True])
@pytest.mark.parametrize("qtype,tie", [(None, False), (None, True), ("q8_0", False),
                                       ("q4_0", True)])
def test_prefill_batch_equals_prefills_one_at_a_time(backend_name, llama, qtype, tie):
    """Prompts of different lengths prefilled in one forward (SLLM.prefill_batch, scattered
    slots) give each slot the keys and values and each prompt the next-token logits that
    decode() of the prompt alone gives: on cpp bit for bit (its matmul rows do not depend
    on the row count, but for the transposed tied head's, whose one-row path differs, as
    in decode_batch), elsewhere within the tolerance decode_batch has against decode
    (numpy's BLAS adds in another order for another row count)."""
    model = _model(backend_name, tie, llama)
    if qtype:
        model.quantize(qtype)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 37, n).tolist() for n in (1, 5, 9, 3, 13, 9)]
    slots = [4, 0, 6, 2, 5, 1]
    alone, together = model.new_cache(7), model.new_cache(7)
    try:
        want = np.stack([model.decode(np.array([p]), alone.slot(s))[0]
                         for p, s in zip(prompts, slots, strict=True)])
        got = model.prefill_batch(prompts, together, slots)
        for a, b in zip(alone.k + alone.v, together.k + together.v, strict=True):
            if backend_name == "cpp":
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    finally:
        alone.release()
        together.release()
    if backend_name == "cpp" and (qtype or not tie):
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("prompts,slots,match", [
    ([[1, 2], []], [0, 1], "none empty"), ([[1, 2], [3]], [0, 0], "distinct slot"),
    ([[1, 2], [3]], [0, 3], "distinct slot"), ([[1, 2], [37]], [0, 1], "token ids"),
    ([[1] * 25], [0], "max_seq_len")])
def test_prefill_batch_refuses_bad_prompts(prompts, slots, match):
    model = _model("numpy")
    cache = model.new_cache(3)
    with pytest.raises(ValueError, match=match):
        model.prefill_batch(prompts, cache, slots)


def test_prefill_batch_with_an_attached_adapter_after_training_has_no_dropout(backend_name):
    """An adapter trained with dropout, then prefilled: no dropout mask in the batched
    prefill either (the same logits as decode() of each prompt alone)."""
    from sllm.lora import Adapter, LoraConfig
    model = _model(backend_name)
    adapter = Adapter.create(model, LoraConfig(rank=2, dropout=0.5), 3)
    for t in adapter.tensors.values():
        t[...] = np.random.default_rng(1).standard_normal(t.shape) * 0.5
    model.attach_adapter(adapter)
    model.train()
    model.forward_backward(np.array([[1, 2, 3, 4]]), np.array([[2, 3, 4, 5]]))
    model.eval()
    prompts, slots = [[1, 2, 3], [4, 5, 6, 7, 8]], [1, 0]
    alone, together = model.new_cache(2), model.new_cache(2)
    want = np.stack([model.decode(np.array([p]), alone.slot(s))[0]
                     for p, s in zip(prompts, slots, strict=True)])
    model.train()
    model.forward_backward(np.array([[1, 2, 3, 4]]), np.array([[2, 3, 4, 5]]))
    model.eval()
    got = model.prefill_batch(prompts, together, slots)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
