"""sllm vocabularies as GGUF tokenizer metadata that llama.cpp loads, for any architecture.

- bpe: tokenizer.ggml.model "gpt2" (GPT-2's byte-level pieces and merges): llama.cpp
  tokenizes and detokenizes text exactly as sllm does.
- spm (llama2.c's tokenizer.bin, a GGUF llama vocabulary imported): tokenizer.ggml.model
  "llama" with its own scores, " " written as "\u2581"; llama.cpp's SentencePiece
  tokenizer merges by score as run.c does. `spm_from_fields` reads such a vocabulary back.
- char and word: tokenizer.ggml.model "llama" (SentencePiece): the pieces are sllm's, the
  256 byte tokens of a byte-fallback vocabulary are SentencePiece's own <0xXX> BYTE
  tokens, [UNK] is UNKNOWN and [PAD]/[BOS]/[EOS] are CONTROL. Given sllm's token ids,
  llama.cpp computes the same logits. What its own tokenizer does with text (`vocab_note`
  says it, and `sllm export` prints it):
  * char: the space character is written as SentencePiece's "\u2581" (llama.cpp turns
    every space into it), with no space prefix, so llama.cpp splits text into the same
    ids as sllm (byte fallback included) and detokenizes them to the same text.
  * word: SentencePiece builds pieces by merging pairs that are themselves pieces, and a
    word vocabulary has no partial words, so llama.cpp's tokenizer spells text in single
    characters and bytes instead of sllm's words: feed it sllm's ids (`sllm vocab encode`,
    or llama-server's /completion with a list of ids). A word that takes a space before
    it (sllm's spacing rule) is written "\u2581word", so llama.cpp's detokenizer puts the
    spaces back except after a newline, "(", "[", "{" and "$", where sllm puts none.
"""
from __future__ import annotations

import json
from typing import Any

from .errors import DataError

SPM_SPACE = "\u2581"
NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6  # llama.cpp's llama_token_type


def add_vocab(writer: Any, tok_dict: dict[str, Any], vocab_size: int) -> str | None:
    """Write `tok_dict`'s vocabulary into a GGUFWriter; returns a note on how llama.cpp's
    own tokenizer differs from sllm's (None when it does not)."""
    from . import tokenizer as tokenizers
    tok = tokenizers.from_dict(tok_dict)
    if tok.vocab_size > vocab_size:
        raise DataError(f"the tokenizer has {tok.vocab_size} ids, more than the model's "
                        f"{vocab_size}")
    if isinstance(tok, tokenizers.BPETokenizer):
        _add_bpe(writer, tok, vocab_size)
        return None
    if isinstance(tok, tokenizers.SPMTokenizer):
        _add_spm(writer, tok, vocab_size)
        return None
    pieces, types = spm_pieces(tok)
    pieces += [f"[PAD{i}]" for i in range(len(pieces), vocab_size)]  # llama.cpp wants V
    types += [UNUSED] * (vocab_size - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * vocab_size)
    writer.add_add_space_prefix(False)  # sllm adds none
    unk = tok.unk_id if tok.unk_id is not None else 0
    # llama.cpp defaults BOS/EOS to ids 1 and 2; a char vocabulary has neither: its [UNK]
    # stands in (never predicted in practice), and no BOS is added to prompts.
    for key, value in (("bos", tok.bos_id), ("eos", tok.eos_id), ("unk", unk),
                       ("pad", tok.pad_id)):
        getattr(writer, f"add_{key}_token_id")(unk if value is None else value)
    writer.add_add_bos_token(tok.bos_id is not None)
    writer.add_add_eos_token(False)
    return vocab_note(tok)


def spm_pieces(tok: Any) -> tuple[list[str], list[int]]:
    """(pieces, token types) of a word or char tokenizer in SentencePiece form."""
    from .tokenizer import BYTE_TOKENS, SPECIALS, _space_between
    names = tok.tokens if tok.kind == "word" else tok.chars
    pieces, types = [], []
    for i, name in enumerate(names):
        if tok.byte_fallback and name in BYTE_TOKENS and tok.token_bytes(i) == \
                bytes([BYTE_TOKENS.index(name)]):
            pieces.append(name)
            types.append(BYTE)
        elif (tok.kind == "word" and i < len(SPECIALS)) or (tok.kind == "char" and i == 0):
            pieces.append(name)
            types.append(UNKNOWN if name == "[UNK]" else CONTROL)
        elif tok.kind == "char":
            pieces.append(SPM_SPACE if name == " " else name)
            types.append(NORMAL)
        else:  # "\u2581word" where sllm's rule puts a space before it after an ordinary word
            pieces.append(SPM_SPACE + name if _space_between("a", name) else name)
            types.append(NORMAL)
    if len(set(pieces)) != len(pieces):  # e.g. a text that held "\u2581" itself
        raise DataError("the vocabulary holds both a piece and its SentencePiece form "
                        "(U+2581); it cannot be written as a llama.cpp vocabulary")
    return pieces, types


def vocab_note(tok: Any) -> str:
    """How llama.cpp's tokenizer treats text with this word or char vocabulary."""
    if tok.kind == "char" and tok.byte_fallback:
        return ("char vocabulary written as a SentencePiece ('llama') vocabulary: llama.cpp "
                "tokenizes and detokenizes text exactly as sllm does")
    if tok.kind == "char":
        return ("char vocabulary without byte fallback: llama.cpp tokenizes text as sllm "
                "does while every character is in the vocabulary; one that is not makes "
                "its tokenizer fail (retrain with byte fallback, the default)")
    missing = "" if tok.byte_fallback else ("; without byte fallback, a character that is "
                                            "not a word of the vocabulary makes its "
                                            "tokenizer fail")
    return ("word vocabulary written as a SentencePiece ('llama') vocabulary: given sllm's "
            "token ids llama.cpp computes the same logits, but its own tokenizer spells text "
            "in characters and bytes, not sllm's words; pass it sllm's ids (e.g. from `sllm "
            "vocab encode`). Its detokenizer writes a space before each word as sllm does "
            "between known words, but also after a newline and ( [ { $" + missing)


def _add_bpe(writer: Any, tok: Any, vocab_size: int) -> None:
    hf = json.loads(tok._hf.to_str())
    vocab: dict[str, int] = hf["model"]["vocab"]
    for added in hf.get("added_tokens") or []:
        vocab[added["content"]] = added["id"]
    if sorted(vocab.values()) != list(range(len(vocab))) or len(vocab) > vocab_size:
        raise DataError(f"the BPE vocabulary's ids are not 0..{len(vocab) - 1} within the "
                        f"model's {vocab_size}")
    tokens = sorted(vocab, key=vocab.__getitem__)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]  # llama.cpp wants V
    special = {a["id"] for a in hf.get("added_tokens") or [] if a.get("special")}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if i in special else (UNUSED if i >= len(vocab) else NORMAL)
                            for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                             for m in hf["model"]["merges"]])
    for key, value in (("bos", tok.bos_id), ("eos", tok.eos_id), ("unk", tok.unk_id),
                       ("pad", tok.pad_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(tok.bos_id is not None)  # sllm's prompts start with [BOS]


def _add_spm(writer: Any, tok: Any, vocab_size: int) -> None:
    """An spm tokenizer as a SentencePiece vocabulary with its scores."""
    from .tokenizer import BYTE_TOKENS
    specials = {tok.bos_id, tok.eos_id, tok.pad_id} - {None}
    types = [BYTE if p in BYTE_TOKENS else UNKNOWN if i == tok.unk_id
             else CONTROL if i in specials else NORMAL for i, p in enumerate(tok.pieces)]
    pieces = [p if t == BYTE else p.replace(" ", SPM_SPACE) for p, t in zip(tok.pieces, types,
                                                                           strict=True)]
    pad = vocab_size - len(pieces)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces + [f"[PAD{i}]" for i in range(len(pieces), vocab_size)])
    writer.add_token_types(types + [UNUSED] * pad)
    writer.add_token_scores(tok.scores + [0.0] * pad)
    writer.add_add_space_prefix(tok.add_dummy_prefix)
    for key in ("bos", "eos", "unk", "pad"):
        value = getattr(tok, f"{key}_id")
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(tok.bos_id is not None)
    writer.add_add_eos_token(False)


def spm_from_fields(fields: dict[str, Any], vocab_size: int, where: Any) -> dict[str, Any]:
    """The spm tokenizer dict of a GGUF "llama" vocabulary (tokenizer.ggml.* keys); a
    FormatError names what is wrong with it."""
    from .errors import FormatError
    from .foreign import get_bool, get_int
    from .tokenizer import SPMTokenizer
    pieces = fields.get("tokenizer.ggml.tokens")
    if not isinstance(pieces, list) or len(pieces) != vocab_size:
        size = len(pieces) if isinstance(pieces, list) else pieces
        raise FormatError(f"{where}: tokenizer.ggml.tokens has {size!r} entries; the model has "
                          f"{vocab_size} tokens")
    scores = fields.get("tokenizer.ggml.scores", [0.0] * vocab_size)
    types = fields.get("tokenizer.ggml.token_type", [NORMAL] * vocab_size)
    if not isinstance(scores, list) or not isinstance(types, list) \
            or len(scores) != vocab_size or len(types) != vocab_size:
        raise FormatError(f"{where}: tokenizer.ggml.scores and token_type need one entry per "
                          f"token ({vocab_size})")
    ids = {k: get_int(fields, f"tokenizer.ggml.{k}_token_id", where) for k in ("bos", "eos",
                                                                                "unknown", "padding")}
    try:
        tok = SPMTokenizer(
            [p if t == BYTE or not isinstance(p, str) else p.replace(SPM_SPACE, " ")
             for p, t in zip(pieces, types, strict=True)], scores,
            bos=ids["bos"], eos=ids["eos"], unk=ids["unknown"], pad=ids["padding"],
            add_dummy_prefix=get_bool(fields, "tokenizer.ggml.add_space_prefix", where, True))
    except DataError as e:
        raise FormatError(f"{where}: tokenizer.ggml.*: {e}") from None
    return tok.to_dict()
