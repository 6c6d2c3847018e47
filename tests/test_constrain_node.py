"""sllm/web/constrain.js against sllm/constrain.py under Node: for word, char and BPE
vocabularies and schemas, regexes, choice lists and json_object, both walk the same token
path (at each step the k-th allowed token, k fixed by the step) and must allow exactly
the same tokens, with [EOS] and the budget, agree on completeness and on the fewest tokens
a grammar needs; bad grammars fail on both sides with the same message."""
from __future__ import annotations

import numpy as np
import pytest
from node_js import run_node, skip_without_node

from sllm import constrain
from sllm import grammar as G
from sllm.corpus import generate_corpus
from sllm.tokenizer import BPETokenizer, CharTokenizer, WordTokenizer


@pytest.fixture(scope="module", autouse=True)
def _node():
    skip_without_node()


TEXT = generate_corpus(20_000, seed=4) + ' {}[]":,0123456789-.eE+_ é日本'
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6}, "n": {"type": "integer"},
    "x": {"type": "number"}, "tags": {"type": "array", "items": {"enum": ["a", "b", 2, None]},
                                      "minItems": 1, "maxItems": 3},
    "ok": {"type": ["boolean", "null"]}, "sub": {"type": "object", "properties": {
        "k": {"const": "v"}}}}, "required": ["name", "tags"]}
GRAMMARS = [{"json_schema": SCHEMA}, {"json_object": True},
            {"regex": r"(the|a) [a-z]{2,5}( [a-z]+)?\."}, {"regex": r"\d{2,3}-[^\s]{1,2}é?"},
            {"choices": ["the man", "a day", "日本"]}, {"json_schema": {"type": "array", "items":
                                                                       {"type": "string"}}}]
STEPS = 40


@pytest.fixture(scope="module")
def tokenizers():
    return {"word": WordTokenizer.train(TEXT, 400, byte_fallback=False),
            "word-bytes": WordTokenizer.train(TEXT, 600), "char": CharTokenizer.train(TEXT),
            "bpe": BPETokenizer.train(TEXT, 400)}


def _python_path(tok, spec, budget):
    try:
        g = constrain.compile_for(tok, **spec)
    except G.GrammarError as e:
        return {"error": str(e)}
    c, steps = g.start(), []
    for step in range(STEPS):
        allowed = c.allowed(budget - step, tok.eos_id).tolist()
        steps.append([allowed, c.accepting()])
        real = [t for t in allowed if t != tok.eos_id]
        if not real or c.finished():
            break
        c.advance(real[(step * 7919 + 3) % len(real)])
    return {"min": g.min_tokens(), "steps": steps}


JS_PATH = """
const out = [];
for (const [d, spec, budget, steps] of args[0]) {
  const tok = web.tokenizers.tokenizerFromDict(d);
  const js = {jsonSchema: spec.json_schema, regex: spec.regex, choices: spec.choices,
              jsonObject: spec.json_object || false};
  let g;
  try { g = web.constrain.compileFor(tok, js); }
  catch (e) { out.push({error: e.message}); continue; }
  const c = g.start(), path = [];
  for (let step = 0; step < steps; step++) {
    const allowed = c.allowed(budget - step, tok.eosId);
    path.push([allowed, c.accepting()]);
    const real = allowed.filter((t) => t !== tok.eosId);
    if (!real.length || c.finished()) break;
    c.advance(real[(step * 7919 + 3) % real.length]);
  }
  out.push({min: g.minTokens(), steps: path});
}
return out;
"""


@pytest.mark.parametrize("kind", ["word", "word-bytes", "char", "bpe"])
def test_the_same_tokens_are_allowed_along_a_path(tokenizers, kind):
    tok = tokenizers[kind]
    cases, expected = [], []
    for spec in GRAMMARS:
        for budget in (STEPS + 200, 24):  # plenty, and short enough that the budget steers
            cases.append([tok.to_dict(), spec, budget, STEPS])
            expected.append(_python_path(tok, spec, budget))
    got = run_node(JS_PATH, cases)
    for spec, g, e in zip([c[1] for c in cases], got, expected, strict=True):
        assert g == e, (kind, spec)
    assert sum("steps" in e for e in expected) >= 4  # a word vocabulary has no "{" or digits


BAD = [{"json_schema": {"type": "thing"}}, {"json_schema": {"$ref": "#/x"}},
       {"json_schema": {"type": "array", "minItems": 3, "maxItems": 1}},
       {"json_schema": {"enum": []}}, {"regex": "(ab"}, {"regex": r"(a)\1"}, {"regex": "(?=a)"},
       {"regex": "a{3,1}"}, {"choices": []}, {"regex": "a", "choices": ["a"]}, {"regex": "[]"},
       {"regex": "(" * 20000 + ")" * 20000}]


def test_bad_grammars_fail_alike(tokenizers):
    tok = tokenizers["char"]
    expected = [_python_path(tok, spec, 10) for spec in BAD]
    got = run_node(JS_PATH, [[tok.to_dict(), spec, 10, 1] for spec in BAD])
    assert all("error" in e for e in expected)
    assert got == expected


def test_utf8_sequences_alike():
    rng = np.random.default_rng(1)
    ranges = [[int(lo), int(min(lo + size, 0x10FFFF))] for lo, size in
              zip(rng.integers(0, 0x10FFFF, 60), rng.integers(0, 70_000, 60), strict=True)]
    ranges += [[0, 0x10FFFF], [0x7F, 0x80], [0xD700, 0xE100], [0xFFFF, 0x10000]]
    got = run_node("return args[0].map(([lo, hi]) => web.constrain.utf8Sequences(lo, hi));",
                   ranges)
    assert got == [[[list(r) for r in seq] for seq in constrain.utf8_sequences(lo, hi)]
                   for lo, hi in ranges]


@pytest.mark.parametrize("spec", [{"json_schema": SCHEMA}, {"regex": r"(the|a) [a-z]{2,8}\."},
                                  {"choices": ["yes", "no", "maybe so"]}])
def test_greedy_constrained_generation_equals_python(tmp_path, tokenizers, spec):
    """The browser's model.generate with a grammar writes what generate(json_schema=...)
    writes, token for token (greedy, the same scalar WebAssembly module on both sides)."""
    import sllm
    from sllm.backends.wasm import WasmBackend
    from sllm.generate import encode_prompt, generate
    if "wasm" not in sllm.backends.available():
        pytest.skip("the WebAssembly modules were not built")
    tok = tokenizers["bpe"]
    cfg = {"vocabSize": tok.vocab_size, "embeddingDim": 32, "numLayers": 2, "numHeads": 2,
           "ffnHiddenDim": 64, "dropout": 0.0, "maxSeqLen": 96}
    model = sllm.SLLM(cfg, backend="numpy", seed=7)
    model.tokenizer = tok.to_dict()
    path = tmp_path / "bpe.sllm"
    model.save(path)
    py = sllm.load(path, backend=WasmBackend())
    ids = encode_prompt(tok, "the person", warn=False)
    out = generate(py, ids, 60, temperature=0, tokenizer=tok, **spec)
    expected = tok.decode(out[len(ids):])
    js = {"jsonSchema": spec.get("json_schema"), "regex": spec.get("regex"),
          "choices": spec.get("choices")}
    got = run_node("""
const m = await web.loadModel(args[0], "scalar");
return await m.generate("the person", {maxTokens: 60, temperature: 0, ...args[1]});
""", str(path), {k: v for k, v in js.items() if v is not None})
    assert got == expected
