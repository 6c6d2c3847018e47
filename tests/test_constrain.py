"""Constrained decoding (sllm.grammar + sllm.constrain): random schemas, regexes and
choice lists on random models of every tokenizer kind; every output parses and validates
(jsonschema and Python's re are the oracles), also when max_tokens runs short."""
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sllm
from sllm import constrain
from sllm import grammar as G
from sllm.corpus import generate_corpus
from sllm.generate import generate
from sllm.tokenizer import BPETokenizer, CharTokenizer, WordTokenizer

jsonschema = pytest.importorskip("jsonschema")

TEXT = generate_corpus(20_000, seed=1)
JSON_CHARS = '{}[]":,0123456789-.eE+_ abcdefghijklmnopqrstuvwxyz\\/'


def _model(tok, seed=1):
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=16, num_layers=1,
                           num_heads=2, ffn_hidden_dim=32, max_seq_len=256)
    return sllm.SLLM(cfg, backend="numpy", seed=seed)


@pytest.fixture(scope="module")
def vocabularies():
    """(tokenizer, model) for a char, a byte-level BPE and a word vocabulary with byte
    fallback (words, their spacing rule and raw bytes in one text)."""
    toks = [CharTokenizer.train(TEXT + JSON_CHARS), BPETokenizer.train(TEXT, 400),
            WordTokenizer.train(TEXT, 600)]
    return [(tok, _model(tok)) for tok in toks]


def _new_text(tok, model, max_tokens, seed, **grammar):
    start = [tok.bos_id] if tok.bos_id is not None else tok.encode("a")
    grammar.setdefault("temperature", 1.0)
    out = generate(model, start, max_tokens, seed=seed, tokenizer=tok, **grammar)
    return tok.decode(out[len(start):])


# ---- random schemas ----------------------------------------------------------------------
NAMES = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)
SCALAR = st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "number"},
                          {"type": "boolean"}, {"type": "null"},
                          {"type": "string", "maxLength": 5},
                          {"enum": ["red", "green", 3, None]}])


def _arrays(inner):
    return st.builds(lambda items, lo, extra: {"type": "array", "items": items,
                                               "minItems": lo, "maxItems": lo + extra},
                     inner, st.integers(0, 2), st.integers(0, 2))


def _objects(inner):
    return st.dictionaries(NAMES, inner, min_size=1, max_size=4).flatmap(
        lambda props: st.builds(lambda req: {"type": "object", "properties": props,
                                             "required": req},
                                st.lists(st.sampled_from(sorted(props)), unique=True)))


SCHEMAS = _objects(st.recursive(SCALAR, lambda inner: _arrays(inner) | _objects(inner),
                                max_leaves=6))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS, which=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_random_schemas_on_random_models_always_validate(vocabularies, schema, which, seed):
    tok, model = vocabularies[which]
    # A schema whose shortest JSON is longer than 120 tokens gets the budget it needs: a
    # smaller one is refused up front (test_too_small_a_budget_is_refused).
    budget = max(120, constrain.compile_for(tok, json_schema=schema).min_tokens())
    text = _new_text(tok, model, budget, seed, json_schema=schema)
    jsonschema.validate(json.loads(text), schema)


def test_too_small_a_budget_is_refused(vocabularies):
    tok, model = vocabularies[0]
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    need = constrain.compile_for(tok, json_schema=schema).min_tokens()
    with pytest.raises(ValueError, match="max_new_tokens = .* too small"):
        _new_text(tok, model, need - 1, 0, json_schema=schema)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), extra=st.integers(0, 6))
def test_output_still_validates_when_max_tokens_runs_short(vocabularies, seed, extra):
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "tags": {"type": "array",
                                                        "items": {"type": "string"}}},
              "required": ["name", "tags"]}
    tok, model = vocabularies[seed % 3]
    budget = constrain.compile_for(tok, json_schema=schema).min_tokens() + extra
    text = _new_text(tok, model, budget, seed, json_schema=schema)
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_any_json_object(vocabularies, which):
    tok, model = vocabularies[which]
    for seed in range(4):
        value = json.loads(_new_text(tok, model, 150, seed, json_schema={"type": "object"}))
        assert isinstance(value, dict)


REGEXES = ["[a-c]{2,4}x?", r"\d{3}-\d{2}", "(cat|dog|bird)s?", r"[a-z]+ [a-z]+\.",
           "(?:ab|cd)*e", r"\w{1,3}", "no|yes|maybe"]


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_output_fullmatches(vocabularies, pattern):
    for which, (tok, model) in enumerate(vocabularies):
        for seed in range(3):
            text = _new_text(tok, model, 40, seed + which, regex=pattern)
            assert re.fullmatch(pattern, text), (tok.kind, pattern, text)


def test_choices_and_a_word_vocabulary():
    tok = WordTokenizer.train(TEXT, 300, byte_fallback=False)
    model = _model(tok)
    options = ["the man", "a day", "he said", "zzz qqq"]  # the last is not in the words
    seen = {_new_text(tok, model, 10, seed, choices=options, temperature=3.0)
            for seed in range(12)}
    assert seen <= set(options[:3]) and len(seen) > 1


def test_a_grammar_the_vocabulary_cannot_write_is_refused():
    tok = WordTokenizer.train(TEXT, 300, byte_fallback=False)  # no "{" among its words
    with pytest.raises(constrain.ConstraintError, match="cannot write"):
        constrain.compile_for(tok, json_schema={"type": "object"})


@pytest.mark.parametrize("bad, match", [
    ({"json_schema": {"type": "thing"}}, "type"),
    ({"json_schema": {"$ref": "#/x"}}, r"\$ref"),
    ({"json_schema": {"type": "array", "minItems": 3, "maxItems": 1}}, "maxItems"),
    ({"json_schema": {"enum": []}}, "enum"),
    ({"regex": "(ab"}, r"missing \)"),
    ({"regex": r"(a)\1"}, "backreferences"),
    ({"regex": "(?=a)"}, "lookaround"),
    ({"regex": "a{3,1}"}, "max < min"),
    ({"choices": []}, "choices"),
    ({"choices": ["a", 3]}, "choices"),
    ({"regex": "a", "choices": ["a"]}, "exactly one"),
    ({"regex": "(" * 5000 + ")" * 5000}, "nested too deeply"),
])
def test_bad_grammars_name_the_problem(vocabularies, bad, match):
    with pytest.raises(G.GrammarError, match=match):
        constrain.compile_for(vocabularies[0][0], **bad)


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(0, 0x10FFFF), size=st.integers(0, 3000), probe=st.integers(0, 0x10FFFF))
def test_utf8_sequences_match_exactly_the_code_points(lo, size, probe):
    hi = min(lo + size, 0x10FFFF)
    seqs = constrain.utf8_sequences(lo, hi)
    if 0xD800 <= probe <= 0xDFFF:
        return
    data = chr(probe).encode()
    hit = any(len(s) == len(data) and all(a <= b <= c for (a, c), b in zip(s, data, strict=True))
              for s in seqs)
    assert hit == (lo <= probe <= hi)


def test_masks_are_cached_per_grammar():
    tok = CharTokenizer.train(TEXT + JSON_CHARS, byte_fallback=False)  # one way to write "a"
    g1 = constrain.compile_for(tok, regex="[ab]+")
    assert constrain.compile_for(tok, regex="[ab]+") is g1
    c = g1.start()
    allowed = c.allowed(10)
    assert sorted(tok.decode([int(t)]) for t in allowed) == ["a", "b"]
    assert np.array_equal(c.allowed(10), allowed)
