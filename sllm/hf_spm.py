"""spm tokenizers (SentencePiece pieces with scores) as Hugging Face `tokenizer.json`, and
back: the pipeline transformers' LlamaConverter writes for a SentencePiece model.

Out: a BPE model with byte_fallback over the pieces (" " as U+2581), a normalizer that
prepends U+2581 (the dummy prefix) and turns spaces into it, and merges (a, b) for every
split of a piece into two pieces, ranked by the piece's score (highest first). A BPE
merges its lowest-ranked pair first, run.c its highest-scoring one, and both write an
unknown character as bytes before merging, so `tokenizers` gives sllm's ids (pieces
scored equally may merge in another order where they overlap). The decoder strips the
text's leading space, as sllm's decode does after [BOS].

Back: such a pipeline (or its newer form, a Metaspace pre-tokenizer with prepend_scheme
"first" and no split) becomes an spm tokenizer: pieces by id, U+2581 as " ", each merged
piece scored minus the rank of its first merge. That is the same tokenizer when every
split of a merged piece into two pieces is a merge and a piece's merges are ranked
together, as LlamaConverter writes them; other merges are refused by name (sllm merges
whatever pair makes a piece).
"""
from __future__ import annotations

from typing import Any

from .errors import DataError
from .tokenizer import BYTE_TOKENS, SPMTokenizer

SPACE = "\u2581"


def replace_step(pattern: str, content: str, regex: bool = True) -> dict[str, Any]:
    """A tokenizer.json Replace step (normalizer or decoder) of pattern by content."""
    return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern},
            "content": content}


def special_text(value: Any) -> str | None:
    """A special token's text in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def spm_tokenizer_json(tok: SPMTokenizer) -> dict[str, Any]:
    """LlamaConverter's tokenizer.json for an spm tokenizer (see the module docstring)."""
    names = [p if p in BYTE_TOKENS else p.replace(" ", SPACE) for p in tok.pieces]
    vocab: dict[str, int] = {}
    for i, name in enumerate(names):
        vocab.setdefault(name, i)  # a repeated piece: its lowest id, as sllm looks it up
    specials = {i for i in (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) if i is not None}
    ranked = []
    for name, i in vocab.items():
        if i in specials or name in BYTE_TOKENS or tok.scores[i] <= tok.NEVER:
            continue
        ranked += [(-tok.scores[i], i, k, name[:k], name[k:]) for k in range(1, len(name))
                   if name[:k] in vocab and name[k:] in vocab]
    ranked.sort()
    # [BOS]/[EOS]/[PAD] are special tokens; <unk> stays an ordinary piece (as in sllm,
    # decode shows it and typed text "<unk>" is not the token)
    added = [{"id": i, "content": names[i], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i in sorted(specials - {tok.unk_id})]
    prefix = [{"type": "Prepend", "prepend": SPACE}] if tok.add_dummy_prefix else []
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                *prefix, replace_step(" ", SPACE, regex=False)]},
            "pre_tokenizer": None, "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": [
                replace_step(SPACE, " ", regex=False), {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": None,
                      "unk_token": names[tok.unk_id] if tok.unk_id is not None else None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                      "vocab": vocab, "merges": [[a, b] for *_, a, b in ranked]}}


def is_spm_pipeline(doc: dict[str, Any]) -> bool:
    """A BPE with byte fallback behind LlamaConverter's normalizer or Metaspace."""
    return bool(doc["model"].get("byte_fallback")) and _dummy_prefix(doc) is not None


def _dummy_prefix(doc: dict[str, Any]) -> bool | None:
    """Whether the pipeline prepends U+2581 (None: not an spm pipeline)."""
    norm, pre = doc.get("normalizer"), doc.get("pre_tokenizer")
    replace = replace_step(" ", SPACE, regex=False)
    if pre is None and isinstance(norm, dict) and norm.get("type") == "Sequence":
        steps = norm.get("normalizers")
        if steps == [replace]:
            return False
        if steps == [{"type": "Prepend", "prepend": SPACE}, replace]:
            return True
    if norm is None and isinstance(pre, dict) and pre.get("type") == "Metaspace" \
            and pre.get("replacement") == SPACE and pre.get("split") is False:
        scheme = pre.get("prepend_scheme")
        return {"first": True, "always": True, "never": False}.get(str(scheme))
    return None


def spm_from_tokenizer_json(doc: dict[str, Any], config: dict[str, Any], where: str) -> SPMTokenizer:
    """The spm tokenizer of an spm pipeline (see the module docstring)."""
    model = doc["model"]
    vocab = dict(model.get("vocab") or {})
    for added in doc.get("added_tokens") or []:
        vocab[added["content"]] = added["id"]
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise DataError(f"{where}: the vocabulary ids are not 0..{len(ids) - 1}")
    names = sorted(vocab, key=vocab.__getitem__)
    ranks = _merge_ranks(model.get("merges") or [], vocab, where)
    # A piece no merge makes never results from one: run.c's "never" score.
    scores = [-float(ranks[n][0]) - 1.0 if n in ranks else SPMTokenizer.NEVER for n in names]
    specials = {}
    for key, default in (("bos", "<s>"), ("eos", "</s>"), ("pad", None), ("unk", None)):
        text = special_text(config.get(f"{key}_token")) or (model.get("unk_token") if key == "unk"
                                                             else default)
        specials[key] = None if text is None else vocab.get(text)
    pieces = [n if n in BYTE_TOKENS else n.replace(SPACE, " ") for n in names]
    try:
        return SPMTokenizer(pieces, scores, add_dummy_prefix=bool(_dummy_prefix(doc)), **specials)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def _merge_ranks(merges: list[Any], vocab: dict[str, int], where: str) -> dict[str, list[int]]:
    """{merged piece: [first rank, merges of it]}, refused unless every split of the piece
    into two pieces is a merge and its merges are ranked together (LlamaConverter's)."""
    ranks: dict[str, list[int]] = {}
    for rank, merge in enumerate(merges):
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError(f"{where}: merge {rank} is {merge!r}, not two pieces")
        a, b = pair
        piece = a + b
        if piece not in vocab:
            raise DataError(f"{where}: merge {a!r} + {b!r} makes no piece of the vocabulary")
        first, count = ranks.setdefault(piece, [rank, 0])
        if first + count != rank:
            raise DataError(f"{where}: the merges of {piece!r} are not ranked together (not "
                            f"a SentencePiece vocabulary); sllm's spm tokenizer would merge "
                            f"it differently")
        ranks[piece][1] += 1
    for piece, (_, count) in ranks.items():
        if count != sum(piece[:k] in vocab and piece[k:] in vocab for k in range(1, len(piece))):
            raise DataError(f"{where}: the merges of {piece!r} are not all of its splits into "
                            f"two pieces (not a SentencePiece vocabulary); sllm's spm "
                            f"tokenizer would merge it differently")
    return ranks
