"""Constrained decoding: a grammar (sllm.grammar) held as a token mask over a vocabulary.

How (and why this way): the grammar's syntax tree becomes a Thompson NFA over *bytes*
(character ranges split into UTF-8 byte sequences, as RE2 and Rust's regex-syntax do),
determinized lazily: a DFA state is a set of NFA states, built the first time decoding
reaches it, with its 256-entry transition row. A token is a byte string, so one engine
serves every tokenizer: byte-level BPE pieces, byte-fallback pieces, characters and
words (a word tokenizer's decode puts a space between some tokens: the decoding state is
the DFA state plus "a space goes before the next token", which is exactly its rule).

The tokens allowed in a state are found by walking a trie of every token's bytes
alongside the DFA (a branch stops at the first byte the grammar refuses), as llama.cpp's
grammar sampler and outlines' index do; the result -- allowed ids and the state each one
leads to -- is cached per state, so a state costs one walk per grammar, not per token.
xgrammar's pushdown automaton handles unbounded nesting; a regular grammar cannot, so
json_object output nests at most sllm.grammar.JSON_DEPTH deep and schemas have no $ref.
Written here rather than with interegular or lark: those give a character automaton or a
parser, and the byte level, the word tokenizer's spacing and the budget below would still
have to be built around them; this engine is ~300 lines with no dependency, and
sllm/web/constrain.js is its JavaScript twin.

Budget: each DFA state knows the fewest bytes that complete the grammar from it. With r
tokens left, a token is allowed only when the state it leads to can be completed in r-1
bytes (an upper bound on tokens when the vocabulary has the single bytes or characters
needed), so output still parses when max_tokens runs out; [EOS] is allowed only where the
grammar is complete. A state where nothing is allowed ends the sequence (the caller says
why): a grammar that the vocabulary cannot express raises ConstraintError up front when
not even the first token exists.
"""
from __future__ import annotations

import collections
import json
import threading
from typing import Any

import numpy as np

from . import grammar as G

MAX_NFA_STATES = 200_000
DEAD = -1
INF = 1 << 30
CACHE_GRAMMARS = 8


class ConstraintError(G.GrammarError):
    """A grammar this vocabulary cannot produce (not even its first token)."""


# ---- code points -> UTF-8 byte ranges ---------------------------------------------------
def utf8_sequences(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """Byte-range sequences whose concatenations are exactly the UTF-8 encodings of the
    code points lo..hi (surrogates excluded)."""
    if lo <= 0xDFFF and hi >= 0xD800:  # surrogates have no UTF-8 encoding
        parts = ([(lo, 0xD7FF)] if lo < 0xD800 else []) + ([(0xE000, hi)] if hi > 0xDFFF else [])
        return [s for a, b in parts for s in utf8_sequences(a, b)]
    for edge in (0x7F, 0x7FF, 0xFFFF):
        if lo <= edge < hi:
            return utf8_sequences(lo, edge) + utf8_sequences(edge + 1, hi)
    n = len(chr(lo).encode())
    for i in range(1, n):  # split until every continuation byte spans a full range
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                return utf8_sequences(lo, lo | m) + utf8_sequences((lo | m) + 1, hi)
            if hi & m != m:
                return utf8_sequences(lo, (hi & ~m) - 1) + utf8_sequences(hi & ~m, hi)
    return [list(zip(chr(lo).encode(), chr(hi).encode(), strict=True))]


# ---- the NFA ---------------------------------------------------------------------------
class NFA:
    """Thompson NFA over bytes: edges[s] = [(lo, hi, target)], eps[s] = [targets]."""

    def __init__(self, node: G.Node):
        self.edges: list[list[tuple[int, int, int]]] = []
        self.eps: list[list[int]] = []
        self.start = self.new()
        self.accept = self.build(node, self.start)

    def new(self) -> int:
        if len(self.edges) >= MAX_NFA_STATES:
            raise G.GrammarError(f"the grammar is too large (more than {MAX_NFA_STATES} "
                                 f"automaton states); use smaller repetition counts")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def build(self, node: G.Node, s: int) -> int:
        """Add `node` starting at state s; returns its end state."""
        kind = node[0]
        if kind == "set":
            return self.char_set(node[1], s)
        if kind == "cat":
            for child in node[1]:
                s = self.build(child, s)
            return s
        if kind == "alt":
            end = self.new()
            for child in node[1]:
                self.eps[self.build(child, s)].append(end)
            return end
        _, child, lo, hi = node
        for _ in range(lo):
            s = self.build(child, s)
        if hi is None:  # a loop: s -> child -> back to s
            loop = self.new()
            self.eps[s].append(loop)
            self.eps[self.build(child, loop)].append(loop)
            return loop
        end = self.new()
        for _ in range(hi - lo):
            self.eps[s].append(end)
            s = self.build(child, s)
        self.eps[s].append(end)
        return end

    def char_set(self, ranges: tuple[tuple[int, int], ...], s: int) -> int:
        if not ranges:
            raise G.GrammarError("the grammar contains a character class that matches "
                                 "nothing")
        end = self.new()
        for lo, hi in ranges:
            for seq in utf8_sequences(lo, hi):
                cur = s
                for i, (a, b) in enumerate(seq):
                    nxt = end if i == len(seq) - 1 else self.new()
                    self.edges[cur].append((a, b, nxt))
                    cur = nxt
        return end

    def closure(self, states: set[int]) -> frozenset[int]:
        stack, seen = list(states), set(states)
        while stack:
            for t in self.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)


# ---- vocabulary ------------------------------------------------------------------------
class TokenTable:
    """Each token's bytes as decode() writes them, and the word tokenizer's spacing: a
    space goes before token t when the previous token allows one (space_after) and t takes
    one (space_before). Specials and [UNK] are never allowed."""

    def __init__(self, tok: Any):
        self.tok, self.vocab_size = tok, tok.vocab_size
        self.pieces = token_bytes(tok)
        self.space_before, self.space_after = _spacing(tok, self.pieces)
        self.eos_id = tok.eos_id
        self.grammars: collections.OrderedDict[str, Grammar] = collections.OrderedDict()
        self.tries = {flag: _Trie([(t, p) for t, p in enumerate(self.pieces)
                                   if p and bool(self.space_before[t]) == flag])
                      for flag in (False, True)}


def token_bytes(tok: Any) -> list[bytes]:
    """The bytes each token contributes (b"" for specials and [UNK], never allowed)."""
    skip = {tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id} - {None}
    if hasattr(tok, "token_bytes"):  # byte-fallback tokenizers say it themselves
        return [b"" if i in skip else tok.token_bytes(i) for i in range(tok.vocab_size)]
    if tok.kind == "bpe":
        from tokenizers import pre_tokenizers
        unbyte = {c: b for b, c in enumerate(pre_tokenizers.ByteLevel.alphabet_bytes())} \
            if hasattr(pre_tokenizers.ByteLevel, "alphabet_bytes") else _byte_decoder()
        out = []
        for i in range(tok.vocab_size):
            piece = tok._hf.id_to_token(i)
            ok = i not in skip and piece is not None and all(c in unbyte for c in piece)
            out.append(bytes(unbyte[c] for c in piece) if ok else b"")
        return out
    # A piece that decodes to U+FFFD alone is a byte of a longer character whose bytes this
    # path cannot see: never allowed (a byte-fallback tokenizer says them with token_bytes).
    texts = [tok.decode([i]) for i in range(tok.vocab_size)]
    return [b"" if i in skip or "\ufffd" in t else t.encode() for i, t in enumerate(texts)]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table (the ByteLevel pre-tokenizer's)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _spacing(tok: Any, pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Measured from decode(): does [a, t] decode to a + " " + t? Word tokenizers only;
    every other tokenizer's pieces simply concatenate."""
    V = len(pieces)
    before, after = np.zeros(V, bool), np.zeros(V, bool)
    if tok.kind != "word":
        return before, after
    probe = next((t for t, p in enumerate(pieces)  # a word with a space on both sides
                  if p.isalpha() and tok.decode([t, t]) == f"{p.decode()} {p.decode()}"), None)
    if probe is None:
        return before, after
    w = tok.decode([probe])
    for t, p in enumerate(pieces):
        if p:
            s = p.decode("utf-8", "replace")
            before[t] = tok.decode([probe, t]) == f"{w} {s}"
            after[t] = tok.decode([t, probe]) == f"{s} {w}"
    return before, after


class _Trie:
    """Token bytes as a trie: children[node] = [(byte, child)], ends[node] = token ids."""

    def __init__(self, items: list[tuple[int, bytes]]):
        self.children: list[list[tuple[int, int]]] = [[]]
        self.ends: list[list[int]] = [[]]
        index: list[dict[int, int]] = [{}]
        for token, piece in items:
            node = 0
            for b in piece:
                nxt = index[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    index[node][b] = nxt
                    self.children.append([])
                    self.ends.append([])
                    index.append({})
                    self.children[node].append((b, nxt))
                node = nxt
            self.ends[node].append(token)


# ---- grammar x vocabulary --------------------------------------------------------------
class Mask:
    """From one decoding state, over the whole vocabulary (so that a decoding step costs a
    few vectorized operations, not a search): which tokens are allowed, the decoding state
    each leads to (-1: not allowed) and the most tokens each then needs to finish (INF: not
    allowed); the same with [EOS] allowed too, for complete states."""

    def __init__(self, V: int, ids: np.ndarray, states: np.ndarray, bound: np.ndarray,
                 eos_id: int | None, complete: bool):
        self.ids = ids
        self.allow = np.zeros(V, bool)
        self.allow[ids] = True
        self.next = np.full(V, -1, np.int64)
        self.next[ids] = states
        self.bound = np.full(V, INF, np.int64)
        self.bound[ids] = bound
        self.max_bound = int(bound.max()) if len(ids) else 0
        self.allow_eos = self.allow
        if complete and eos_id is not None:
            self.allow_eos = self.allow.copy()
            self.allow_eos[eos_id] = True


class Grammar:
    """A compiled grammar over one vocabulary: a lazily built DFA, and per decoding state
    (DFA state x "a space may go before the next token", numbered 2*dfa + space) the
    allowed tokens and how many tokens at most each then needs to finish. Shared by every
    sequence that uses the same grammar; a lock guards the lazily built parts (the server
    compiles in one thread and decodes in another)."""

    def __init__(self, node: G.Node, table: TokenTable):
        self.nfa, self.table = NFA(node), table
        self.sets: list[frozenset[int]] = []
        self.ids: dict[frozenset[int], int] = {}
        self.rows: list[list[int] | None] = []
        self.walks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.bound: dict[int, int] = {}  # decoding state -> tokens to finish (INF: never)
        self.masks: dict[int, Mask] = {}
        self.lock = threading.RLock()
        self.start_state = 2 * self.intern(self.nfa.closure({self.nfa.start}))
        if not len(self.mask(self.start_state).ids) and not self.accepting(self.start_state):
            raise ConstraintError("this model's vocabulary cannot write any text of the "
                                  "grammar")

    def intern(self, states: frozenset[int]) -> int:
        got = self.ids.get(states)
        if got is None:
            got = self.ids[states] = len(self.sets)
            self.sets.append(states)
            self.rows.append(None)
        return got

    def accepting(self, p: int) -> bool:
        """The text up to decoding state p is complete."""
        return self.nfa.accept in self.sets[p // 2]

    def row(self, d: int) -> list[int]:
        """The DFA state after each byte from DFA state d (DEAD: refused)."""
        got = self.rows[d]
        if got is None:
            targets: dict[int, set[int]] = {}
            for s in self.sets[d]:
                for lo, hi, t in self.nfa.edges[s]:
                    for b in range(lo, hi + 1):
                        targets.setdefault(b, set()).add(t)
            got = [DEAD] * 256
            for b in sorted(targets):  # new states numbered in byte order (as constrain.js)
                got[b] = self.intern(self.nfa.closure(targets[b]))
            self.rows[d] = got
        return got

    def walk(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids whose bytes the grammar takes from decoding state p, the decoding
        state after each): the token trie walked alongside the DFA."""
        got = self.walks.get(p)
        if got is not None:
            return got
        tokens: list[int] = []
        states: list[int] = []
        d, space = divmod(p, 2)
        for spaced, trie in self.table.tries.items():
            start = self.row(d)[32] if (spaced and space) else d
            if start == DEAD:
                continue
            stack = [(0, start)]
            while stack:
                node, s = stack.pop()
                row = self.row(s)
                for b, child in trie.children[node]:
                    t = row[b]
                    if t == DEAD:
                        continue
                    for token in trie.ends[child]:
                        tokens.append(token)
                        states.append(t)
                    if trie.children[child]:
                        stack.append((child, t))
        ids = np.array(tokens, dtype=np.int64)
        got = self.walks[p] = (ids, 2 * np.array(states, np.int64) + self.table.space_after[ids])
        return got

    def explore(self, p: int) -> None:
        """Bound the tokens needed to finish from p: breadth-first over decoding states
        until one with a known bound (or complete) turns up, then the bounds of that
        explored part relaxed backwards. Bounds only ever decrease, and a state with bound
        b has a token to a state with bound <= b - 1; a fully explored part that never
        completes is INF (tokens into it are never allowed)."""
        edges: dict[int, set[int]] = {}
        frontier, found = [p], False
        while frontier and not found:
            nxt: list[int] = []
            for s in frontier:
                if self.accepting(s):
                    self.bound[s] = 0
                if s in self.bound:
                    found = True
                    continue
                edges[s] = set(self.walk(s)[1].tolist())
                nxt.extend(t for t in sorted(edges[s]) if t not in edges and t not in nxt)
            frontier = nxt
        changed = True
        while changed:
            changed = False
            for s, outs in edges.items():
                best = min((self.bound.get(t, INF) + 1 for t in outs), default=INF)
                if best < self.bound.get(s, INF):
                    self.bound[s], changed = best, True
        if not frontier and not found:
            for s in edges:
                self.bound.setdefault(s, INF)

    def mask(self, p: int) -> Mask:
        """The tokens allowed from decoding state p (those that can still finish)."""
        got = self.masks.get(p)
        if got is not None:
            return got
        with self.lock:
            ids, states = self.walk(p)
            for s in sorted(set(states.tolist())):  # in order: bounds are found as in the JS twin
                if s not in self.bound:
                    self.explore(s)
            bound = np.array([self.bound.get(s, INF) for s in states.tolist()], np.int64)
            live = bound < INF
            got = self.masks[p] = Mask(self.table.vocab_size, ids[live], states[live],
                                       bound[live], self.table.eos_id, self.accepting(p))
            return got

    def min_tokens(self) -> int:
        """The fewest tokens this vocabulary needs to write a complete text (at most:
        a bound found by search, not always the minimum)."""
        if self.accepting(self.start_state):
            return 0
        return int(self.mask(self.start_state).bound.min()) + 1  # INF when none finishes

    def finished(self, p: int) -> bool:
        """Complete, and no token can follow."""
        return self.accepting(p) and not len(self.mask(p).ids)

    def start(self) -> Constraint:
        """A fresh decoding state for one sequence."""
        return Constraint(self)


class Constraint:
    """One sequence's place in a grammar (what sllm.sampler.Sampler asks)."""

    def __init__(self, grammar: Grammar):
        self.g, self.state = grammar, grammar.start_state

    def allowed_mask(self, remaining: int, eos_id: int | None = None) -> np.ndarray:
        """(V,) bool: the tokens that keep the text on the grammar and can finish within
        `remaining` tokens ([EOS] where it is complete, when eos_id is given). Shared:
        do not modify it."""
        m = self.g.mask(self.state)
        allow = m.allow_eos if eos_id is not None else m.allow
        if len(m.ids) and m.max_bound > remaining - 1:  # the budget decides
            fits = m.bound <= remaining - 1
            if not fits.any():  # nothing finishes in time: take the quickest
                fits = m.bound == m.bound.min()
            allow = fits | (allow & ~m.allow)  # [EOS] stays as it was
        return allow

    def allowed(self, remaining: int, eos_id: int | None = None) -> np.ndarray:
        """The allowed token ids (see allowed_mask)."""
        return np.flatnonzero(self.allowed_mask(remaining, eos_id))

    def advance(self, token: int) -> None:
        """Move past `token` (one of allowed())."""
        nxt = int(self.g.mask(self.state).next[token])
        if nxt < 0:
            raise ValueError(f"token {token} is not allowed by the grammar here")
        self.state = nxt

    def accepting(self) -> bool:
        """The text so far is complete."""
        return self.g.accepting(self.state)

    def finished(self) -> bool:
        """Complete, and the grammar allows nothing more."""
        return self.g.finished(self.state)


# ---- the entry point ---------------------------------------------------------------------
_TABLES: collections.OrderedDict[int, TokenTable] = collections.OrderedDict()
_TABLES_LOCK = threading.Lock()


def table_for(tok: Any) -> TokenTable:
    """The TokenTable of a tokenizer (cached for the last few tokenizers seen)."""
    with _TABLES_LOCK:
        got = _TABLES.get(id(tok))
        if got is None or got.tok is not tok:
            got = _TABLES[id(tok)] = TokenTable(tok)
            while len(_TABLES) > 4:
                _TABLES.popitem(last=False)
        return got


def grammar_node(json_schema: Any = None, regex: Any = None, choices: Any = None,
                 json_object: bool = False) -> G.Node:
    """The syntax tree of exactly one of the grammar kinds."""
    given = [k for k, v in (("json_schema", json_schema), ("regex", regex),
                            ("choices", choices)) if v is not None] + (
        ["json_object"] if json_object else [])
    if len(given) != 1:
        raise G.GrammarError(f"give exactly one of json_schema, regex, choices; got "
                             f"{', '.join(given) or 'none'}")
    if json_schema is not None:
        return G.from_schema(json_schema)
    if regex is not None:
        return G.parse_regex(regex)
    if choices is not None:
        return G.from_choices(choices)
    return G.any_json()


def compile_for(tok: Any, json_schema: Any = None, regex: Any = None, choices: Any = None,
                json_object: bool = False) -> Grammar:
    """The Grammar of a schema / regex / choice list / any JSON object over a tokenizer's
    vocabulary (cached: the same grammar again reuses its masks)."""
    table = table_for(tok)
    key = json.dumps([json_schema, regex, choices, json_object], sort_keys=True)
    with _TABLES_LOCK:
        got = table.grammars.get(key)
        if got is not None:
            table.grammars.move_to_end(key)
            return got
    try:
        compiled = Grammar(grammar_node(json_schema, regex, choices, json_object), table)
    except RecursionError:
        raise G.GrammarError("the grammar is nested too deeply") from None
    with _TABLES_LOCK:
        table.grammars[key] = compiled
        while len(table.grammars) > CACHE_GRAMMARS:
            table.grammars.popitem(last=False)
    return compiled
