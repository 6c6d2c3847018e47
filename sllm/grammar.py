"""Grammars for constrained decoding, as a small regular-expression syntax tree.

Three front ends build the same tree, which sllm.constrain compiles to a byte automaton
and then to token masks:
- `parse_regex(pattern)`: Python `re` syntax without backreferences or lookaround
  (classes, escapes \\d \\w \\s, groups, alternation, * + ? {m,n}); it must match the
  whole text.
- `from_schema(schema)`: a JSON Schema subset (object with properties/required, string
  with minLength/maxLength/pattern/enum, number, integer, boolean, null, enum, const,
  array with items/minItems/maxItems, anyOf, type lists), written compact with at most one
  space around punctuation. Properties come in the schema's order (as outlines and
  llama.cpp's json-schema-to-grammar do), optional ones may be left out; no other keys.
- `any_json(depth)`: any JSON object, nesting bounded by `depth` (a regular language
  cannot count brackets; OpenAI's json_object mode promises valid JSON, not a shape).
- `from_choices(strings)`: exactly one of the strings.

sllm/web/constrain.js is the JavaScript twin of this module and of sllm/constrain.py.

Nodes: ("set", ranges) one character from sorted code-point ranges; ("cat", nodes);
("alt", nodes); ("rep", node, min, max or None). Anything outside the subset raises
GrammarError naming what is not supported.
"""
from __future__ import annotations

import json
import math
from typing import Any

from .errors import SLLMError

MAX_UNICODE = 0x10FFFF
JSON_DEPTH = 3


class GrammarError(SLLMError, ValueError):
    """A schema, regex or choice list that sllm cannot turn into a grammar."""


Node = tuple[Any, ...]
EMPTY: Node = ("cat", ())


# ---- building blocks ------------------------------------------------------------------
def chars(*ranges: tuple[int, int]) -> Node:
    """One character from the ranges (merged and sorted)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return ("set", tuple(out))


def negate(node: Node) -> Node:
    """Every character not in a set node."""
    out, nxt = [], 0
    for lo, hi in node[1]:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_UNICODE:
        out.append((nxt, MAX_UNICODE))
    return ("set", tuple(out))


def lit(text: str) -> Node:
    """The exact text."""
    return ("cat", tuple(chars((ord(c), ord(c))) for c in text))


def cat(*nodes: Node) -> Node:
    return ("cat", tuple(nodes))


def alt(*nodes: Node) -> Node:
    return nodes[0] if len(nodes) == 1 else ("alt", tuple(nodes))


def rep(node: Node, lo: int, hi: int | None) -> Node:
    return ("rep", node, lo, hi)


def opt(node: Node) -> Node:
    return rep(node, 0, 1)


# ---- regular expressions --------------------------------------------------------------
DIGIT = chars((48, 57))
WORD = chars((48, 57), (65, 90), (95, 95), (97, 122))
SPACE = chars((9, 13), (32, 32))
CLASS_ESCAPES = {"d": DIGIT, "w": WORD, "s": SPACE, "D": negate(DIGIT), "W": negate(WORD),
                 "S": negate(SPACE)}
CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}


class _Regex:
    """A recursive-descent parser over the pattern text."""

    def __init__(self, pattern: str):
        self.p, self.i = pattern, 0

    def fail(self, what: str) -> GrammarError:
        return GrammarError(f"regex {self.p!r}: {what} at position {self.i}")

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def take(self) -> str:
        c = self.peek()
        if not c:
            raise self.fail("unexpected end")
        self.i += 1
        return c

    def alternation(self) -> Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return alt(*branches)

    def sequence(self) -> Node:
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.quantified(self.atom()))
        return cat(*items)

    def quantified(self, node: Node) -> Node:
        while self.peek() and self.peek() in "*+?{":
            c = self.take()
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(c, (0, 0))
            if c == "{":
                lo, hi = self.braces()
            if self.peek() in ("?", "+"):  # lazy / possessive: same language
                self.i += 1
            node = rep(node, lo, hi)
        return node

    def braces(self) -> tuple[int, int | None]:
        end = self.p.find("}", self.i)
        body = self.p[self.i:end] if end >= 0 else ""
        lo_s, _, hi_s = body.partition(",")
        if end < 0 or not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
            raise self.fail("a repetition must read {m}, {m,} or {m,n}")
        self.i = end + 1
        lo = int(lo_s)
        hi = lo if "," not in body else (int(hi_s) if hi_s else None)
        if hi is not None and hi < lo:
            raise self.fail(f"repetition {{{body}}} has max < min")
        return lo, hi

    def atom(self) -> Node:
        c = self.take()
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise self.fail("lookaround and group flags are not supported")
            node = self.alternation()
            if self.peek() != ")":
                raise self.fail("missing )")
            self.i += 1
            return node
        if c == "[":
            return self.char_class()
        if c == ".":
            return negate(lit("\n")[1][0])
        if c == "\\":
            return self.escape(in_class=False)
        if c in "^$":  # the whole text is matched anyway
            return EMPTY
        if c in "*+?{)":
            raise self.fail(f"nothing to repeat or unbalanced {c!r}")
        return lit(c)

    def escape(self, in_class: bool) -> Node:
        c = self.take()
        if c in CLASS_ESCAPES:
            return CLASS_ESCAPES[c]
        if c in CHAR_ESCAPES:
            return lit(CHAR_ESCAPES[c])
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.p[self.i:self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {width} hex digits")
            self.i += width
            return chars((int(digits, 16), int(digits, 16)))
        if c.isalnum():
            raise self.fail(f"escape \\{c} is not supported (no backreferences or anchors)")
        return lit(c)

    def char_class(self) -> Node:
        negated = self.peek() == "^"
        self.i += negated
        ranges: list[tuple[int, int]] = []
        first = True
        while first or self.peek() != "]":
            first = False
            lo = self.class_item()
            if self.peek() == "-" and self.p[self.i + 1:self.i + 2] not in ("]", ""):
                self.i += 1
                hi = self.class_item()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] > hi[0][0]:
                    raise self.fail("bad character range")
                ranges.append((lo[0][0], hi[0][0]))
            else:
                ranges.extend(lo)
        self.i += 1
        node = chars(*ranges)
        return negate(node) if negated else node

    def class_item(self) -> list[tuple[int, int]]:
        c = self.take()
        if c != "\\":
            return [(ord(c), ord(c))]
        node = self.escape(in_class=True)
        return list(node[1] if node[0] == "set" else node[1][0][1])


def parse_regex(pattern: Any) -> Node:
    """The syntax tree of a regular expression (GrammarError when it is not one sllm
    supports)."""
    if not isinstance(pattern, str):
        raise GrammarError(f"regex must be a string, got {type(pattern).__name__}")
    r = _Regex(pattern)
    node = r.alternation()
    if r.i != len(pattern):
        raise r.fail("unbalanced )")
    return node


# ---- JSON ----------------------------------------------------------------------------
WS = opt(lit(" "))
HEX = chars((48, 57), (65, 70), (97, 102))
STRING_CHAR = alt(negate(chars((0, 31), (34, 34), (92, 92))),
                  cat(lit("\\"), chars(*((ord(c), ord(c)) for c in '"\\/bfnrt'))),
                  cat(lit("\\u"), rep(HEX, 4, 4)))
INTEGER = cat(opt(lit("-")), alt(lit("0"), cat(chars((49, 57)), rep(DIGIT, 0, None))))
NUMBER = cat(INTEGER, opt(cat(lit("."), rep(DIGIT, 1, None))),
             opt(cat(chars((69, 69), (101, 101)), opt(chars((43, 43), (45, 45))),
                     rep(DIGIT, 1, None))))
SCALARS = {"integer": INTEGER, "number": NUMBER, "boolean": alt(lit("true"), lit("false")),
           "null": lit("null")}


def string(lo: int = 0, hi: int | None = None) -> Node:
    """A JSON string of lo..hi characters (an escape counts as one)."""
    return cat(lit('"'), rep(STRING_CHAR, lo, hi), lit('"'))


def _members(member: Node) -> Node:
    return opt(cat(member, rep(cat(WS, lit(","), WS, member), 0, None)))


def any_json(depth: int = JSON_DEPTH, top: str = "object") -> Node:
    """Any JSON object (top="object") or value, containers nested at most `depth` deep."""
    if depth <= 0 and top == "value":
        return alt(string(), NUMBER, *SCALARS.values())
    inner = any_json(depth - 1, "value")
    obj = cat(lit("{"), WS, _members(cat(string(), WS, lit(":"), WS, inner)), WS, lit("}"))
    if top == "object":
        return obj
    arr = cat(lit("["), WS, _members(inner), WS, lit("]"))
    return alt(string(), NUMBER, *SCALARS.values(), obj, arr)


IGNORED = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
           "additionalProperties", "strict", "format", "readOnly", "writeOnly", "deprecated"}
SUPPORTED = {"type", "properties", "required", "items", "minItems", "maxItems", "enum",
             "const", "minLength", "maxLength", "pattern", "anyOf", "oneOf"}


def from_schema(schema: Any, where: str = "schema") -> Node:
    """The grammar of JSON texts that validate against a JSON Schema (the subset above)."""
    if schema is True or schema == {}:
        return any_json(JSON_DEPTH, "value")
    if not isinstance(schema, dict):
        raise GrammarError(f"{where} must be an object, got {type(schema).__name__}")
    unknown = sorted(set(schema) - SUPPORTED - IGNORED)
    if unknown:
        raise GrammarError(f"{where}: keyword {unknown[0]!r} is not supported (supported: "
                           f"{', '.join(sorted(SUPPORTED))})")
    if "const" in schema:
        return _literal(schema["const"])
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            raise GrammarError(f"{where}.enum must be a non-empty array")
        return alt(*(_literal(v) for v in values))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = schema[key]
            if not isinstance(options, list) or not options:
                raise GrammarError(f"{where}.{key} must be a non-empty array")
            return alt(*(from_schema(s, f"{where}.{key}[{i}]") for i, s in enumerate(options)))
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return alt(*(from_schema({**schema, "type": k}, where) for k in kind))
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind is None:
        return any_json(JSON_DEPTH, "value")
    return _typed(schema, kind, where)


def _typed(schema: dict[str, Any], kind: Any, where: str) -> Node:
    if kind in SCALARS:
        return SCALARS[kind]
    if kind == "string":
        if "pattern" in schema:
            return cat(lit('"'), parse_regex(schema["pattern"]), lit('"'))
        lo, hi = _bounds(schema, "minLength", "maxLength", where)
        return string(lo, hi)
    if kind == "array":
        return _array(schema, where)
    if kind == "object":
        return _object(schema, where)
    raise GrammarError(f"{where}.type {kind!r} is not one of string, number, integer, "
                       f"boolean, null, array, object")


def _bounds(schema: dict[str, Any], lo_key: str, hi_key: str, where: str
            ) -> tuple[int, int | None]:
    lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
    for key, v in ((lo_key, lo), (hi_key, hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0
                              or v > 10_000):
            raise GrammarError(f"{where}.{key} must be an integer in [0, 10000], got {v!r}")
    if hi is not None and hi < lo:
        raise GrammarError(f"{where}: {hi_key} {hi} < {lo_key} {lo}: no value can satisfy it")
    return lo, hi


def _array(schema: dict[str, Any], where: str) -> Node:
    item = from_schema(schema.get("items", True), f"{where}.items")
    lo, hi = _bounds(schema, "minItems", "maxItems", where)
    sep_item = cat(WS, lit(","), WS, item)
    if hi == 0:
        body = EMPTY
    elif lo == 0:
        body = opt(cat(item, rep(sep_item, 0, None if hi is None else hi - 1)))
    else:
        body = cat(item, rep(sep_item, lo - 1, None if hi is None else hi - 1))
    return cat(lit("["), WS, body, WS, lit("]"))


def _object(schema: dict[str, Any], where: str) -> Node:
    props = schema.get("properties")
    if props is None:
        return any_json(JSON_DEPTH - 1, "object")
    if not isinstance(props, dict):
        raise GrammarError(f"{where}.properties must be an object")
    required = schema.get("required", [])
    if not isinstance(required, list) or any(r not in props for r in required):
        raise GrammarError(f"{where}.required must list names from properties, got "
                           f"{required!r}")
    members = [(cat(lit(json.dumps(name)), WS, lit(":"), WS,
                    from_schema(sub, f"{where}.properties.{name}")), name in required)
               for name, sub in props.items()]
    return cat(lit("{"), WS, _after(members, 0, False), WS, lit("}"))


def _after(members: list[tuple[Node, bool]], i: int, written: bool) -> Node:
    """Members i.. in order, each optional one present or not; `written`: a member is
    already out (the next needs a comma). Linear in size when written (the comma is
    fixed), quadratic at worst before the first member."""
    if i == len(members):
        return EMPTY
    member, needed = members[i]
    comma = cat(WS, lit(","), WS, member) if written else member
    if written:
        head = comma if needed else opt(comma)
        return cat(head, _after(members, i + 1, True))
    with_it = cat(comma, _after(members, i + 1, True))
    return with_it if needed else alt(with_it, _after(members, i + 1, False))


def _literal(value: Any) -> Node:
    if isinstance(value, float) and not math.isfinite(value):
        raise GrammarError(f"{value!r} is not a JSON value")
    return lit(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def from_choices(options: Any) -> Node:
    """Exactly one of a non-empty list of non-empty strings."""
    if not isinstance(options, list) or not options or not all(
            isinstance(o, str) and o for o in options):
        raise GrammarError("choices must be a non-empty array of non-empty strings")
    return alt(*(lit(o) for o in options))
