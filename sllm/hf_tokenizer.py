"""sllm tokenizers as Hugging Face `tokenizer.json` files, and back.

Each sllm tokenizer becomes a `tokenizers` pipeline that gives the same ids:
- word: WordLevel over sllm's vocabulary; the pre-tokenizer drops runs of non-newline
  whitespace, then isolates sllm's word pattern (a word with inner apostrophes, a
  newline, or one symbol); a Lowercase normalizer when the vocabulary is lowercased.
  The decoder is sllm's spacing rule (word_decoder). Where sllm's byte fallback writes
  bytes -- an unknown word, whitespace other than the rule's, a word glued where the rule
  puts a space -- WordLevel cannot follow (it has no byte fallback and drops whitespace):
  there Hugging Face's ids are [UNK] or fewer; on text of known words with ordinary
  spacing (the demo corpus, for the demo vocabulary) they are the same.
- char: one pre-token per character; WordLevel (unknown characters are [UNK], id 0) or,
  with byte fallback, a merge-less BPE model with `byte_fallback`, which writes an unknown
  character as <0xXX> tokens exactly as sllm does. The decoder joins the pieces.
- bpe: sllm's own byte-level BPE (it is a `tokenizers` pipeline already), with a first
  pre-tokenization step that ends a piece after each line break, because sllm encodes
  text line by line.
- spm: transformers' LlamaConverter pipeline (sllm.hf_spm), read back as spm too.
`from_tokenizer_json` reverses word, char and bpe and also accepts a GPT-2 byte-level BPE (with
`<|endoftext|>` as BOS and EOS).
"""
from __future__ import annotations

import json
import os
from typing import Any

from .errors import DataError
from .hf_spm import is_spm_pipeline, replace_step, special_text, spm_from_tokenizer_json, spm_tokenizer_json
from .tokenizer import BYTE_TOKENS, SPECIALS, BPETokenizer, CharTokenizer, SPMTokenizer, Tokenizer, WordTokenizer

# The same pattern as sllm.tokenizer._WORD_RE, in the regex dialect of `tokenizers`.
WORD_PATTERN = "\\n|\\w+(?:['\u2019]\\w+)*|[^\\w\\s]"
SPACES_PATTERN = "[^\\S\\n]+"
CHAR_PATTERN = "[\\s\\S]"
# str.splitlines() ends a line at each of these; "\r\n" counts as one break.
LINE_BREAK_PATTERN = "\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"  # literal characters
GPT2_EOS = "<|endoftext|>"


def _split(pattern: str, behavior: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": behavior,
            "invert": False}


def _added(tokens: list[str]) -> list[dict[str, Any]]:
    # [UNK] is not "special": decode(skip_special_tokens=True) then shows it, as sllm does
    return [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": t != "[UNK]"} for i, t in enumerate(tokens)]


def _word_level(vocab: list[str], normalizer: Any, pre_tokenizer: dict[str, Any],
                specials: list[str], decoder: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": _added(specials), "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": decoder,
            "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(vocab)},
                      "unk_token": "[UNK]"}}


# Markers the word decoder puts on each piece and removes again: two noncharacters that
# text does not hold (a vocabulary holding one is refused by word_decoder).
_TAKES_SPACE, _GIVES_SPACE = "\ufdd0", "\ufdd1"
_BYTE_PIECE = "<0x[0-9A-F]{2}>"


def word_decoder(tok: WordTokenizer) -> dict[str, Any]:
    """sllm.tokenizer._space_between as `tokenizers` decoders: each piece gets a mark
    after it when a space may follow it (not "\n ( [ { $") and a mark before it when it
    takes one (not "\n" nor a piece starting with .,!?;:)]}%'’…); byte pieces
    get neither, as sllm's byte runs; the pieces are joined and each pair of marks becomes
    one space."""
    if any(_TAKES_SPACE in t or _GIVES_SPACE in t for t in tok.tokens):
        raise DataError("the word vocabulary holds U+FDD0/U+FDD1, which its Hugging Face "
                        "decoder uses as marks")
    attach = "".join(sorted(".,!?;:)]}%'\u2019\u2026")).replace("]", "\\]")
    gives = f"(?<!^[\\n(\\[{{$])(?<!^{_BYTE_PIECE})\\z"
    takes = f"\\A(?!{_BYTE_PIECE}\\z)(?![{attach}]|\\n\\z)"
    return {"type": "Sequence", "decoders": [
        replace_step(gives, _GIVES_SPACE), replace_step(takes, _TAKES_SPACE),  # this order: see gives
        {"type": "ByteFallback"}, {"type": "Fuse"},
        replace_step(_GIVES_SPACE + _TAKES_SPACE, " ", regex=False),
        replace_step(_TAKES_SPACE, "", regex=False), replace_step(_GIVES_SPACE, "", regex=False)]}


_JOIN = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}


def _char_doc(tok: CharTokenizer) -> dict[str, Any]:
    pre = _split(CHAR_PATTERN, "Isolated")
    if not tok.byte_fallback:
        return _word_level(tok.chars, None, pre, ["[UNK]"], _JOIN)
    doc = _word_level(tok.chars, None, pre, ["[UNK]"], _JOIN)
    doc["model"] = {"type": "BPE", "dropout": None, "unk_token": "[UNK]",
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": False, "byte_fallback": True, "ignore_merges": False,
                    "vocab": {t: i for i, t in enumerate(tok.chars)}, "merges": []}
    return doc


def to_tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """The `tokenizer.json` document that encodes text to the same ids as `tok`."""
    if isinstance(tok, WordTokenizer):
        pre = {"type": "Sequence", "pretokenizers": [
            _split(SPACES_PATTERN, "Removed"), _split(WORD_PATTERN, "Isolated")]}
        norm = {"type": "Lowercase"} if tok.lowercase else None
        doc = _word_level(tok.tokens, norm, pre, list(SPECIALS), word_decoder(tok))
    elif isinstance(tok, CharTokenizer):
        doc = _char_doc(tok)
    elif isinstance(tok, SPMTokenizer):
        doc = spm_tokenizer_json(tok)
    elif isinstance(tok, BPETokenizer):
        doc = json.loads(tok._hf.to_str())
        doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            _split(LINE_BREAK_PATTERN, "MergedWithPrevious"), doc["pre_tokenizer"]]}
    else:
        raise DataError(f"no Hugging Face form for a {type(tok).__name__}")
    _check_loads(doc)
    return doc


def _check_loads(doc: dict[str, Any]) -> Any:
    from tokenizers import Tokenizer as HFTokenizer
    try:
        return HFTokenizer.from_str(json.dumps(doc))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"tokenizer.json is not a valid Hugging Face tokenizer: {e}") from None


def special_tokens(tok: Tokenizer) -> dict[str, str]:
    """tokenizer_config.json's bos/eos/unk/pad entries for `tok` (the ones it has)."""
    out = {}
    for key, attr in (("bos_token", "bos_id"), ("eos_token", "eos_id"),
                      ("unk_token", "unk_id"), ("pad_token", "pad_id")):
        i = getattr(tok, attr)
        if i is not None:
            out[key] = _token_text(tok, i)
    return out


def _token_text(tok: Tokenizer, i: int) -> str:
    if isinstance(tok, SPMTokenizer):
        return tok.pieces[i]
    if isinstance(tok, WordTokenizer):
        return tok.tokens[i]
    if isinstance(tok, CharTokenizer):
        return tok.chars[i]
    return str(tok._hf.id_to_token(i))  # type: ignore[attr-defined]  # a BPETokenizer: the other kinds are above


# ---- back to sllm --------------------------------------------------------------------------
def from_tokenizer_json(doc: dict[str, Any], config: dict[str, Any] | None = None,
                        where: str = "tokenizer.json") -> Tokenizer:
    """The sllm tokenizer for a `tokenizer.json` document: one exported by sllm, or a
    byte-level BPE (GPT-2's kind). `config` is tokenizer_config.json, for special tokens.
    Anything else raises DataError saying why sllm cannot represent it."""
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise DataError(f"{where}: no 'model' object; not a Hugging Face tokenizer")
    kind, pre = model.get("type"), doc.get("pre_tokenizer")
    if kind == "WordLevel" or (kind == "BPE" and model.get("byte_fallback")
                               and pre == _split(CHAR_PATTERN, "Isolated")):
        return _word_level_back(doc, model, pre, where)
    if kind == "BPE" and _byte_level(pre):
        return _bpe_back(doc, config or {}, where)
    if kind == "BPE" and is_spm_pipeline(doc):
        return spm_from_tokenizer_json(doc, config or {}, where)
    raise DataError(f"{where}: a {kind} tokenizer with pre-tokenizer "
                    f"{(pre or {}).get('type')}; sllm represents byte-level BPE (GPT-2's "
                    f"kind), SentencePiece BPE with byte fallback (Llama's) and the word and "
                    f"char tokenizers it exports itself")


def _ordered(vocab: dict[str, int], where: str) -> list[str]:
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise DataError(f"{where}: the vocabulary ids are not 0..{len(tokens) - 1}")
    return tokens


def _word_level_back(doc: dict[str, Any], model: dict[str, Any], pre: Any,
                     where: str) -> Tokenizer:
    tokens = _ordered(model.get("vocab") or {}, where)
    if pre == _split(CHAR_PATTERN, "Isolated"):
        return CharTokenizer(tokens, model.get("type") == "BPE")
    steps = (pre or {}).get("pretokenizers")
    if steps == [_split(SPACES_PATTERN, "Removed"), _split(WORD_PATTERN, "Isolated")]:
        lowercase = (doc.get("normalizer") or {}).get("type") == "Lowercase"
        return WordTokenizer(tokens, lowercase, tuple(tokens[4:260]) == BYTE_TOKENS)
    raise DataError(f"{where}: a WordLevel tokenizer whose pre-tokenizer sllm did not write; "
                    f"sllm cannot reproduce its splitting")


def _byte_level(pre: Any) -> bool:
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        return len(steps) == 2 and steps[0] == _split(LINE_BREAK_PATTERN, "MergedWithPrevious") \
            and _byte_level(steps[1])
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def _bpe_back(doc: dict[str, Any], config: dict[str, Any], where: str) -> BPETokenizer:
    doc = dict(doc)
    if doc["pre_tokenizer"].get("type") == "Sequence":  # sllm's line-break step: sllm does it
        doc["pre_tokenizer"] = doc["pre_tokenizer"]["pretokenizers"][1]
    hf = _check_loads(doc)
    vocab = hf.get_vocab(with_added_tokens=True)
    if [hf.id_to_token(i) for i in range(4)] == list(SPECIALS):
        return BPETokenizer(hf)
    specials = {}
    for key in ("bos", "eos", "pad", "unk"):
        text = special_text(config.get(f"{key}_token"))
        if text is None and key in ("bos", "eos") and GPT2_EOS in vocab:
            text = GPT2_EOS  # GPT-2 has no tokenizer_config.json entries by default
        if text is not None and text not in vocab:
            raise DataError(f"{where}: {key}_token {text!r} is not in the vocabulary")
        specials[key] = vocab[text] if text is not None else None
    return BPETokenizer(hf, specials)


def read_hf_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer | None:
    """The tokenizer of a Hugging Face model directory: tokenizer.json, else GPT-2's
    vocab.json + merges.txt; None when it has neither."""
    d = os.fspath(directory)
    config = _read_json(os.path.join(d, "tokenizer_config.json")) or {}
    if not isinstance(config, dict):
        raise DataError(f"{d}: tokenizer_config.json must hold a JSON object")
    doc = _read_json(os.path.join(d, "tokenizer.json"))
    if doc is not None:
        where = os.path.join(d, "tokenizer.json")
        try:
            return from_tokenizer_json(doc, config, where)
        except (AttributeError, TypeError, KeyError, IndexError) as e:  # a value of the wrong type
            raise DataError(f"{where}: not a tokenizer sllm can read ({e!r})") from None
    vocab, merges = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
    if os.path.isfile(vocab) and os.path.isfile(merges):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers
        hf = HFTokenizer(models.BPE.from_file(vocab, merges))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        return from_tokenizer_json(json.loads(hf.to_str()), config, vocab)
    return None


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
