"""`sllm import` of llama2.c model files: a random model written in run.c's layout by the
small writer below gives the logits of a numpy re-implementation of run.c's forward
(interleaved rotary pairs, as run.c); damaged files are one-line errors naming the file.
A tokenizer.bin written here in run.c's layout becomes sllm's spm tokenizer, whose encode
and decode equal a straight port of run.c's encode/decode."""
from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from sllm import tokenizer as tokenizers
from sllm.errors import SLLMError
from sllm.export import import_model
from sllm.hf_tokenizer import from_tokenizer_json, to_tokenizer_json
from sllm.llama2c import interleaved_to_half

FUZZ_RUNS = 1000


def _random_model(rng, dim=16, hidden=24, layers=2, heads=4, kv_heads=2, vocab=11, seq=12,
                  shared=True):
    """run.c's TransformerWeights as a dict of float32 arrays ((out, in) matrices)."""
    D = dim // heads

    def r(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"token_embedding_table": r(vocab, dim, scale=1.0),
         "rms_att_weight": 1 + r(layers, dim, scale=0.1),
         "wq": r(layers, heads * D, dim), "wk": r(layers, kv_heads * D, dim),
         "wv": r(layers, kv_heads * D, dim), "wo": r(layers, dim, heads * D),
         "rms_ffn_weight": 1 + r(layers, dim, scale=0.1),
         "w1": r(layers, hidden, dim), "w2": r(layers, dim, hidden), "w3": r(layers, hidden, dim),
         "rms_final_weight": 1 + r(dim, scale=0.1),
         "freq_cis_real": r(seq * D // 2), "freq_cis_imag": r(seq * D // 2)}
    if not shared:
        w["wcls"] = r(vocab, dim)
    header = (dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq)
    return header, w


def _write(path, header, w):
    """The file run.c memory-maps: 7 int32, then every tensor in dict (= run.c's) order."""
    path.write_bytes(struct.pack("<7i", *header)
                     + b"".join(a.astype("<f4").tobytes() for a in w.values()))


def _rmsnorm(x, g):
    return x / np.sqrt(np.mean(x * x) + 1e-5) * g


def _run_c_forward(header, w, tokens):
    """run.c's forward(), one position at a time over a KV cache, in float64."""
    dim, _, layers, heads, kv_heads, _, _ = header
    D, kv_mul = dim // heads, heads // kv_heads
    w = {k: v.astype(np.float64) for k, v in w.items()}
    cls = w.get("wcls", w["token_embedding_table"])
    kc = np.zeros((layers, len(tokens), kv_heads * D))
    vc = np.zeros_like(kc)
    out = []
    for pos, tok in enumerate(tokens):
        x = w["token_embedding_table"][tok].copy()
        for layer in range(layers):
            xb = _rmsnorm(x, w["rms_att_weight"][layer])
            q, k, v = w["wq"][layer] @ xb, w["wk"][layer] @ xb, w["wv"][layer] @ xb
            for vec in (q, k):  # run.c's RoPE: interleaved pairs (2i, 2i+1) of each head
                for i in range(0, len(vec), 2):
                    val = pos * 10000.0 ** (-(i % D) / D)
                    c, s = np.cos(val), np.sin(val)
                    vec[i], vec[i + 1] = vec[i] * c - vec[i + 1] * s, vec[i] * s + vec[i + 1] * c
            kc[layer, pos], vc[layer, pos] = k, v
            att_out = np.zeros(heads * D)
            for h in range(heads):
                kvh = h // kv_mul
                keys = kc[layer, :pos + 1, kvh * D:(kvh + 1) * D]
                scores = keys @ q[h * D:(h + 1) * D] / np.sqrt(D)
                p = np.exp(scores - scores.max())
                att_out[h * D:(h + 1) * D] = (p / p.sum()) @ vc[layer, :pos + 1, kvh * D:(kvh + 1) * D]
            x = x + w["wo"][layer] @ att_out
            xb = _rmsnorm(x, w["rms_ffn_weight"][layer])
            h1, h3 = w["w1"][layer] @ xb, w["w3"][layer] @ xb
            x = x + w["w2"][layer] @ (h1 / (1 + np.exp(-h1)) * h3)
        out.append(cls @ _rmsnorm(x, w["rms_final_weight"]))
    return np.array(out)


@pytest.mark.parametrize("shared,kv_heads", [(True, 2), (False, 2), (False, 4), (True, 1)])
def test_imported_logits_equal_run_c(tmp_path, shared, kv_heads):
    header, w = _random_model(np.random.default_rng(kv_heads), kv_heads=kv_heads, shared=shared)
    _write(tmp_path / "m.bin", header, w)
    model = import_model(tmp_path / "m.bin")
    assert model.config.tie_embeddings == shared and model.config.kv_heads == kv_heads
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    got = model.forward(np.array([tokens]))[0]
    np.testing.assert_allclose(got, _run_c_forward(header, w, tokens), atol=1e-4, rtol=0)
    model.save(tmp_path / "m.sllm")  # and it round-trips through the .sllm format
    import sllm
    again = sllm.load(tmp_path / "m.sllm", backend="numpy")
    np.testing.assert_array_equal(again.forward(np.array([tokens]))[0], got)


def test_the_permutation_is_needed():
    """Without reordering wq/wk the rotate-half model would differ: the permutation moves
    rows, so a head's rows (0..D) become (0, 2, .., 1, 3, ..)."""
    w = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert interleaved_to_half(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_cli_import_writes_a_model(tmp_path):
    from typer.testing import CliRunner

    from sllm.cli import app
    header, w = _random_model(np.random.default_rng(0))
    _write(tmp_path / "m.bin", header, w)
    res = CliRunner().invoke(app, ["import", str(tmp_path / "m.bin"), "-o", str(tmp_path / "o.sllm")])
    assert res.exit_code == 0, res.output
    assert "tokenizer.bin" in res.output and (tmp_path / "o.sllm").is_file()


@pytest.mark.parametrize("change,message", [
    (lambda h: h[:5] + (0,) + h[6:], "vocab_size is 0"),
    (lambda h: (15,) + h[1:], "multiple of n_heads"),
    (lambda h: h[:4] + (3,) + h[5:], "multiple of n_kv_heads"),
    (lambda h: h[:2] + (2**31 - 1,) + h[3:], "needs exactly"),
])
def test_bad_headers_are_refused_before_reading(tmp_path, change, message):
    header, w = _random_model(np.random.default_rng(0))
    _write(tmp_path / "m.bin", change(header), w)
    with pytest.raises(SLLMError, match=message) as e:
        import_model(tmp_path / "m.bin")
    assert str(tmp_path / "m.bin") in str(e.value) and "\n" not in str(e.value)


def _damage(data: bytes, rng: np.random.Generator) -> bytes:
    raw = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # a few bytes anywhere (header fields, or floats made NaN)
        for _ in range(rng.integers(1, 9)):
            raw[rng.integers(min(len(raw), 64) if rng.integers(2) else len(raw))] = rng.integers(256)
    elif kind == 1:
        raw = raw[:rng.integers(len(raw))]
    elif kind == 2:  # an int32 header field set to an extreme
        at = 4 * rng.integers(7)
        raw[at:at + 4] = struct.pack("<i", [2**31 - 1, -2**31, 65536, -1, 0][rng.integers(5)])
    else:
        at = rng.integers(len(raw))
        raw[at:at] = bytes(rng.integers(256, size=rng.integers(1, 16), dtype=np.uint8))
    return bytes(raw)


def test_fuzzed_files_are_one_line_errors(tmp_path):
    header, w = _random_model(np.random.default_rng(5), shared=False)
    _write(tmp_path / "good.bin", header, w)
    good, path = (tmp_path / "good.bin").read_bytes(), tmp_path / "f.bin"
    rng, errors = np.random.default_rng(0), 0
    for _ in range(FUZZ_RUNS):
        path.write_bytes(_damage(good, rng))
        try:
            import_model(path)
        except SLLMError as e:
            assert str(path) in str(e) and "\n" not in str(e), str(e)
            errors += 1
    assert errors > FUZZ_RUNS // 2


@pytest.mark.parametrize("shared", [True, False])
def test_gguf_export_has_llama_cpp_names_and_run_c_rows(tmp_path, shared):
    """llama.cpp's llama architecture rotates interleaved pairs, as run.c: a llama2.c model
    imported and exported to GGUF holds run.c's own wq/wk rows, under llama.cpp's names
    and metadata keys (what gguf's reader sees; llama.cpp's runtime is not run here)."""
    gguf = pytest.importorskip("gguf")
    from sllm.export import export_model
    header, w = _random_model(np.random.default_rng(3), shared=shared)
    _write(tmp_path / "m.bin", header, w)
    export_model(import_model(tmp_path / "m.bin"), "gguf", tmp_path / "m.gguf")
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    fields = {k: f.contents() for k, f in r.fields.items()}
    dim, hidden, layers, heads, kv_heads, vocab, seq = header
    assert fields["general.architecture"] == "llama"
    assert {k: fields[f"llama.{k}"] for k in (
        "embedding_length", "feed_forward_length", "block_count", "context_length",
        "attention.head_count", "attention.head_count_kv", "rope.dimension_count")} == {
        "embedding_length": dim, "feed_forward_length": hidden, "block_count": layers,
        "context_length": seq, "attention.head_count": heads,
        "attention.head_count_kv": kv_heads, "rope.dimension_count": dim // heads}
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    tensors = {t.name: np.asarray(t.data) for t in r.tensors}
    per_layer = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                 "ffn_gate", "ffn_up", "ffn_down")
    want = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} - ({"output.weight"}
            if shared else set())) | {f"blk.{i}.{n}.weight" for i in range(layers) for n in per_layer}
    assert set(tensors) == want
    for i in range(layers):
        for gname, cname in (("attn_q", "wq"), ("attn_k", "wk"), ("attn_v", "wv"),
                             ("attn_output", "wo"), ("ffn_gate", "w1"), ("ffn_up", "w3"),
                             ("ffn_down", "w2")):
            np.testing.assert_array_equal(tensors[f"blk.{i}.{gname}.weight"], w[cname][i])
    if not shared:
        np.testing.assert_array_equal(tensors["output.weight"], w["wcls"])


# ---- tokenizer.bin ------------------------------------------------------------------------
SAMPLE = "Once upon a time, there was a little dog. The dog saw a big tree and ran to it."
ODD = ["", " ", "Once", "  two  spaces ", "zebra quiz\n\tTab", "caf\u00e9 na\u00efve \U0001f642 \u65e5\u672c",
       "<0x41> <s> </s> <unk>", "a" * 40, SAMPLE, SAMPLE.upper()]


def _vocab(rng, n_pieces=150):
    """llama2.c's layout: <unk>, <s>, </s>, the 256 byte tokens, then pieces with scores.
    Pieces are substrings of SAMPLE (so merges chain), scores random with some ties; 'z',
    'q', '\u00e9' and the non-Latin characters are not pieces (byte fallback)."""
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    scores = [0.0] * len(pieces)
    singles = sorted(set(SAMPLE) | set("bcdfghjklmnprstvwxyABCDEFGHIJKLMNOPRSTUVWXY\n\t<>/0x"))
    pieces += singles
    scores += [-1000.0 - i for i in range(len(singles))]
    seen = set(pieces)
    while len(pieces) < len(singles) + 259 + n_pieces:
        start = int(rng.integers(len(SAMPLE) - 2))
        piece = SAMPLE[start:start + int(rng.integers(2, 7))]
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)
            scores.append(float(np.float32(-rng.integers(1, 40) / 4)))  # ties on purpose
    pieces.append("</s>")  # a duplicate piece: looked up as its lowest id
    scores.append(5.0)
    return pieces, scores


def _write_tokenizer(path, pieces, scores):
    """run.c's build_tokenizer layout: int max_token_length, then (float, int, bytes) each."""
    raw = [p.encode() for p in pieces]
    path.write_bytes(struct.pack("<i", max(map(len, raw))) + b"".join(
        struct.pack("<fi", s, len(b)) + b for s, b in zip(scores, raw, strict=True)))


def _run_c_encode(pieces, scores, text):
    """run.c's encode(text, bos=0, eos=0), as written there (str_lookup: the lowest id)."""
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p.encode(), i)
    tokens = [lookup[b" "]] if text else []  # add_dummy_prefix
    raw, at = text.encode(), 0
    while at < len(raw):
        end = at + 1
        while end < len(raw) and (raw[end] & 0xC0) == 0x80 and end - at < 4:
            end += 1
        buf = raw[at:end]
        tokens += [lookup[buf]] if buf in lookup else [b + 3 for b in buf]
        at = end
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            key = (pieces[tokens[i]] + pieces[tokens[i + 1]]).encode()
            if key in lookup and scores[lookup[key]] > best_score:
                best_score, best_id, best_idx = scores[lookup[key]], lookup[key], i
        if best_idx == -1:
            return tokens
        tokens[best_idx:best_idx + 2] = [best_id]


def _run_c_decode(pieces, ids):
    """run.c's decode(prev, token) over a sequence, bytes joined (BOS/EOS left out)."""
    out, prev = b"", None
    for t in ids:
        piece = pieces[t]
        if prev == 1 and piece.startswith(" "):
            piece = piece[1:]
        if t not in (1, 2):
            m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
            out += bytes([int(m.group(1), 16)]) if m else piece.encode()
        prev = t
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tokenizer_bin_encodes_and_decodes_as_run_c(tmp_path, seed):
    from sllm.llama2c import read_tokenizer_bin
    pieces, scores = _vocab(np.random.default_rng(seed))
    _write_tokenizer(tmp_path / "tokenizer.bin", pieces, scores)
    tok = read_tokenizer_bin(tmp_path / "tokenizer.bin", len(pieces))
    assert tok.kind == "spm" and tok.byte_fallback and tok.vocab_size == len(pieces)
    for text in ODD:
        want = _run_c_encode(pieces, scores, text)
        assert tok.encode(text) == want, text
        assert tok.decode([1, *want]) == _run_c_decode(pieces, [1, *want]) == text
        assert tok.decode(want) == (" " if text else "") + text  # no BOS: the prefix stays
    rng = np.random.default_rng(seed)
    for _ in range(50):  # random ids, bytes that are not UTF-8 included
        ids = rng.integers(len(pieces), size=12).tolist()
        assert tok.decode(ids) == _run_c_decode(pieces, ids)
    again = tokenizers.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)


def _model_with_tokenizer(tmp_path):
    """m.bin and tokenizer.bin beside it, of the same vocabulary size."""
    pieces, scores = _vocab(np.random.default_rng(0))
    header, w = _random_model(np.random.default_rng(0), vocab=len(pieces))
    _write(tmp_path / "m.bin", header, w)
    _write_tokenizer(tmp_path / "tokenizer.bin", pieces, scores)
    return pieces, scores


def test_import_picks_up_tokenizer_bin(tmp_path):
    import sllm
    pieces, scores = _model_with_tokenizer(tmp_path)
    model = import_model(tmp_path / "m.bin")
    assert model.tokenizer["type"] == "spm" and "tokenizer_note" not in model.metadata
    model.save(tmp_path / "m.sllm")
    back = sllm.load(tmp_path / "m.sllm", backend="numpy")
    tok = tokenizers.from_dict(back.tokenizer)
    assert tok.encode(SAMPLE) == _run_c_encode(pieces, scores, SAMPLE)
    from sllm.generate import encode_prompt
    assert encode_prompt(tok, "Once upon")[0] == 1  # prompts start with run.c's BOS
    pytest.importorskip("gguf")
    from sllm.export import export_model
    export_model(back, "gguf", tmp_path / "m.gguf")  # a SentencePiece vocabulary with scores
    assert import_model(tmp_path / "m.gguf").tokenizer == back.tokenizer


@pytest.mark.parametrize("change,message", [
    (lambda raw: raw[:-3], "ends at token|has length"),
    (lambda raw: raw + b"x", "1 bytes after the last"),
    (lambda raw: struct.pack("<i", 2) + raw[4:], "has length"),
    (lambda raw: raw[:4] + struct.pack("<fi", 0.0, -5) + raw[12:], "token 0 has length -5"),
    (lambda raw: raw[:4] + struct.pack("<f", float("nan")) + raw[8:], "finite"),
    (lambda raw: raw[:12] + b"\xff" + raw[13:], "token 0 is not UTF-8"),
])
def test_bad_tokenizer_bin_is_refused(tmp_path, change, message):
    _model_with_tokenizer(tmp_path)
    raw = (tmp_path / "tokenizer.bin").read_bytes()
    (tmp_path / "tokenizer.bin").write_bytes(change(raw))
    with pytest.raises(SLLMError, match=message) as e:
        import_model(tmp_path / "m.bin")
    assert "tokenizer.bin" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("seed", [0, 1])
def test_spm_tokenizer_json_gives_sllms_ids(tmp_path, seed):
    """`sllm export --to hf` writes an spm tokenizer as LlamaConverter would; the
    `tokenizers` library then encodes as run.c and decodes as sllm after [BOS]."""
    hf_tokenizers = pytest.importorskip("tokenizers")
    pieces, scores = _vocab(np.random.default_rng(seed))
    scores = [s - 1e-4 * i for i, s in enumerate(scores)]  # distinct: no order among equals
    tok = tokenizers.SPMTokenizer(pieces, scores)
    doc = to_tokenizer_json(tok)
    hf = hf_tokenizers.Tokenizer.from_str(json.dumps(doc))
    hf.encode_special_tokens = True  # tokenizer_config.json's split_special_tokens, as sllm
    pieces, scores = pieces[:-1], scores[:-1]  # without the repeated piece: ids 0..n-1
    back = from_tokenizer_json(to_tokenizer_json(tokenizers.SPMTokenizer(pieces, scores)))
    for text in ODD[1:]:
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == tok.encode(text) == back.encode(text), text
        assert hf.decode(ids) == tok.decode([1, *ids]) == back.decode([1, *ids]), text


def test_hf_export_of_an_imported_llama2c_model_reads_back(tmp_path):
    pytest.importorskip("safetensors")
    from sllm.export import export_model
    pieces, scores = _vocab(np.random.default_rng(4))
    pieces[-1] = "x-unique"  # the repeated piece would leave a hole in tokenizer.json's ids
    header, w = _random_model(np.random.default_rng(4), vocab=len(pieces))
    _write(tmp_path / "m.bin", header, w)
    _write_tokenizer(tmp_path / "tokenizer.bin", pieces, scores)
    model = import_model(tmp_path / "m.bin")
    export_model(model, "hf", tmp_path / "hf")
    back = import_model(tmp_path / "hf")
    tok, again = (tokenizers.from_dict(m.tokenizer) for m in (model, back))
    for text in ODD:
        assert again.encode(text) == tok.encode(text), text
    assert (again.bos_id, again.eos_id, again.unk_id) == (1, 2, 0)
    np.testing.assert_array_equal(back.forward([[1, 5, 9]]), model.forward([[1, 5, 9]]))


def _two_of_a_piece(merges):
    return next(i for i in range(len(merges) - 1) if "".join(merges[i]) == "".join(merges[i + 1]))


def _drop_one_of_two(merges):
    """The merges without one of two that make the same piece (a piece no merge makes is
    fine: neither tokenizer ever makes it)."""
    i = _two_of_a_piece(merges)
    return merges[:i] + merges[i + 1:]


def _rank_apart(merges):
    """The second of two merges that make the same piece moved to the front."""
    i = _two_of_a_piece(merges)
    return [merges[i + 1], *merges[:i + 1], *merges[i + 2:]]


@pytest.mark.parametrize("change,message", [
    (_drop_one_of_two, "are not all of its splits"),
    (_rank_apart, "not ranked together"),
    (lambda m: m + [["a", "zz"]], "makes no piece"),
])
def test_foreign_merges_sllm_cannot_follow_are_refused(change, message):
    from sllm.errors import DataError
    pieces, scores = _vocab(np.random.default_rng(0))
    doc = to_tokenizer_json(tokenizers.SPMTokenizer(pieces[:-1], scores[:-1]))
    doc["model"]["merges"] = change(doc["model"]["merges"])
    with pytest.raises(DataError, match=message):
        from_tokenizer_json(doc)


def test_fuzzed_tokenizer_bin_is_a_one_line_error_or_loads(tmp_path):
    _model_with_tokenizer(tmp_path)
    path = tmp_path / "tokenizer.bin"
    good, rng, outcomes = path.read_bytes(), np.random.default_rng(7), {"ok": 0, "error": 0}
    for _ in range(FUZZ_RUNS):
        path.write_bytes(_damage(good, rng))
        try:
            import_model(tmp_path / "m.bin")
            outcomes["ok"] += 1
        except SLLMError as e:
            assert "tokenizer.bin" in str(e) and "\n" not in str(e), str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > FUZZ_RUNS // 2 and outcomes["ok"] > 0
