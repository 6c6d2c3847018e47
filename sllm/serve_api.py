"""The OpenAI API's request checks and response shapes, for `sllm serve` (plain data in,
plain data out; no HTTP here).

Every request field is checked by type and range; a bad one raises ApiError naming the
field, which the server answers with 400 and OpenAI's error body. Fields of the OpenAI
API that sllm does not implement (suffix, tools...) are accepted only with their neutral
values; fields the API does not have are refused, as OpenAI refuses them. Extensions
(as vLLM names them): top_k, min_p, repetition_penalty, and `regex` / `choices` for
constrained output beside OpenAI's `response_format`.

Chat template: `messages` become the dialogue form `sllm chat` uses (the demo corpus's):
[BOS], then one line per message, `A: <text>` for "user", `B: <text>` for "assistant",
the bare text for "system"/"developer" (first), then `B:`; the model's answer is the rest
of that line (generation stops at the newline). Whitespace inside a message (newlines
too) is collapsed to single spaces so each message stays one line.
"""
from __future__ import annotations

import base64
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from .corpus import BOT_PREFIX, USER_PREFIX
from .generate import encode_prompt

MAX_STOP = 4
MAX_STOP_CHARS = 256  # per stop string: 250,000 characters cost seconds of engine time
MAX_N = 8
MAX_LOGPROBS = 20
MAX_PROMPTS = 64


class ApiError(Exception):
    """A request the server refuses: HTTP status plus OpenAI's error fields."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = (
            message, param, status, code, kind)

    def body(self) -> dict[str, Any]:
        """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


# ---- field checks: each returns the cleaned value or raises ApiError ---------------------
Check = Callable[[str, Any], Any]


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """An integer (not a boolean, not 1.0) in [lo, hi]."""
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ApiError(f"'{name}' must be an integer, got {_type_name(v)} {v!r}", name)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ApiError(f"'{name}' must be in [{lo}, {hi}], got {v}", name)
        return v
    return check


def number(lo: float, hi: float, lo_open: bool = False) -> Check:
    """A finite number in [lo, hi] ((lo, hi] when lo_open)."""
    def check(name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ApiError(f"'{name}' must be a number, got {_type_name(v)} {v!r}", name)
        if v > hi or v < lo or (lo_open and v == lo):
            raise ApiError(f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], "
                           f"got {v}", name)
        return float(v)
    return check


def boolean(name: str, v: Any) -> bool:
    """true or false."""
    if not isinstance(v, bool):
        raise ApiError(f"'{name}' must be a boolean, got {_type_name(v)} {v!r}", name)
    return v


def string(name: str, v: Any) -> str:
    """A string."""
    if not isinstance(v, str):
        raise ApiError(f"'{name}' must be a string, got {_type_name(v)}", name)
    return v


def neutral(*allowed: Any) -> Check:
    """An OpenAI field sllm does not implement: only its neutral values are accepted."""
    def same(v: Any, a: Any) -> bool:
        if isinstance(a, bool) or isinstance(v, bool):
            return type(v) is type(a) and v == a
        if isinstance(a, (int, float)):
            return isinstance(v, (int, float)) and v == a
        return bool(v == a)

    def check(name: str, v: Any) -> Any:
        if not any(same(v, a) for a in allowed):
            raise ApiError(f"'{name}' is not supported by this server (only "
                           f"{' or '.join(repr(a) for a in allowed)}), got {v!r}", name,
                           code="unsupported_parameter")
        return v
    return check


def stop_strings(name: str, v: Any) -> tuple[str, ...]:
    """A string or up to 4 non-empty strings."""
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(f"'{name}' must be a string or an array of strings, got "
                       f"{_type_name(v)}", name)
    if len(stops) > MAX_STOP:  # the count, not the list: it may be long
        raise ApiError(f"'{name}' takes at most {MAX_STOP} strings, got {len(stops):,}", name)
    if any(not s for s in stops):
        raise ApiError(f"'{name}': a stop string cannot be empty", name)
    if any(len(s) > MAX_STOP_CHARS for s in stops):  # matching costs its length per token
        raise ApiError(f"'{name}': each stop string is at most {MAX_STOP_CHARS} characters, "
                       f"got one of {max(map(len, stops)):,}", name)
    return tuple(stops)


def stream_options(name: str, v: Any) -> dict[str, bool]:
    """{"include_usage": bool}."""
    if not isinstance(v, dict):
        raise ApiError(f"'{name}' must be an object, got {_type_name(v)}", name)
    unknown = sorted(set(v) - {"include_usage"})
    if unknown:
        raise ApiError(f"Unrecognized request argument supplied: {name}.{unknown[0]}",
                       f"{name}.{unknown[0]}")
    return {"include_usage": boolean(f"{name}.include_usage", v.get("include_usage", False))}


def _one_prompt(name: str, v: Any) -> str | list[int]:
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool)
                                         for t in v):
        return list(v)
    raise ApiError(f"'{name}' must be a string, an array of token ids, or an array of "
                   f"those, got {_type_name(v)} {str(v)[:60]}", name)


def prompt_field(name: str, v: Any) -> list[str | list[int]]:
    """One prompt (a string or token ids) or a list of them -> the list of prompts."""
    many = isinstance(v, list) and v and all(isinstance(p, (str, list)) for p in v)
    prompts = v if many else [v]
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(f"'{name}' takes at most {MAX_PROMPTS} prompts, got {len(prompts)}",
                       name)
    return [_one_prompt(f"{name}[{i}]" if many else name, p) for i, p in enumerate(prompts)]


def logit_bias(name: str, v: Any) -> tuple[tuple[int, float], ...]:
    """{"token id": bias in [-100, 100]} (ids are checked against the vocabulary later)."""
    if not isinstance(v, dict):
        raise ApiError(f"'{name}' must be an object mapping token ids to numbers", name)
    out = []
    for key, bias in v.items():
        if not str(key).lstrip("-").isdigit():
            raise ApiError(f"'{name}' keys must be token ids, got {key!r}", name)
        out.append((int(key), number(-100.0, 100.0)(f"{name}[{key}]", bias)))
    return tuple(sorted(out))


def response_format(name: str, v: Any) -> dict[str, Any]:
    """{"type": "text" | "json_object"} or {"type": "json_schema", "json_schema":
    {"name", "schema", "strict"?, "description"?}}."""
    if not isinstance(v, dict) or v.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(f"'{name}.type' must be one of text, json_object, json_schema", name)
    if v["type"] != "json_schema":
        if set(v) != {"type"}:
            raise ApiError(f"'{name}' of type {v['type']} takes no other field", name)
        return dict(v)
    spec = v.get("json_schema")
    if set(v) != {"type", "json_schema"} or not isinstance(spec, dict):
        raise ApiError(f"'{name}.json_schema' must be an object", f"{name}.json_schema")
    unknown = sorted(set(spec) - {"name", "schema", "strict", "description"})
    if unknown:
        raise ApiError(f"Unrecognized request argument supplied: {name}.json_schema."
                       f"{unknown[0]}", f"{name}.json_schema.{unknown[0]}")
    string(f"{name}.json_schema.name", spec.get("name"))
    if not isinstance(spec.get("schema", {}), dict):
        raise ApiError(f"'{name}.json_schema.schema' must be an object",
                       f"{name}.json_schema.schema")
    return dict(v)


def no_tools(name: str, v: Any) -> Any:
    """Tool calling needs a chat template that knows tools; sllm's models have none."""
    if v in ([], "none", None, False):
        return v
    raise ApiError(f"'{name}': this model has no tool-calling template (it was trained on "
                   f"plain A:/B: dialogues), so it cannot call tools; send the request "
                   f"without '{name}', or ask for JSON with response_format", name,
                   code="tools_not_supported")


def choice_list(name: str, v: Any) -> list[str]:
    """A non-empty list of non-empty strings (constrained output: exactly one of them)."""
    if not isinstance(v, list) or not v or not all(isinstance(c, str) and c for c in v):
        raise ApiError(f"'{name}' must be a non-empty array of non-empty strings", name)
    return list(v)


def messages_field(name: str, v: Any) -> list[tuple[str, str]]:
    """[{"role", "content", "name"?}, ...] -> [(role, text)]."""
    if not isinstance(v, list) or not v:
        raise ApiError(f"'{name}' must be a non-empty array of messages", name)
    out = []
    for i, m in enumerate(v):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise ApiError(f"'{where}' must be an object, got {_type_name(m)}", where)
        unknown = sorted(set(m) - {"role", "content", "name"})
        if unknown:
            raise ApiError(f"Unrecognized request argument supplied: {where}.{unknown[0]}",
                           f"{where}.{unknown[0]}")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(f"'{where}.role' must be one of system, developer, user, assistant;"
                           f" got {role!r}", f"{where}.role")
        out.append((role, _content(f"{where}.content", m.get("content"))))
    return out


def _content(name: str, v: Any) -> str:
    """A message's text: a string or an array of {"type": "text", "text": ...} parts."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                   and isinstance(p.get("text"), str) and len(p) == 2
                                   for p in v):
        return " ".join(p["text"] for p in v)
    raise ApiError(f"'{name}' must be a string or an array of text parts, got "
                   f"{_type_name(v)}", name)


SAMPLING: dict[str, Check] = {
    "model": string, "temperature": number(0.0, 2.0), "top_p": number(0.0, 1.0, lo_open=True),
    "top_k": integer(1), "seed": integer(0, 2**63 - 1), "stop": stop_strings,
    "n": integer(1, MAX_N), "stream": boolean, "stream_options": stream_options,
    "user": string, "frequency_penalty": number(-2.0, 2.0),
    "presence_penalty": number(-2.0, 2.0), "repetition_penalty": number(0.0, 10.0, True),
    "min_p": number(0.0, 1.0), "logit_bias": logit_bias, "response_format": response_format,
    "regex": string, "choices": choice_list,
}
COMPLETION_FIELDS: dict[str, Check] = {
    **SAMPLING, "prompt": prompt_field, "max_tokens": integer(0), "echo": boolean,
    "best_of": neutral(1), "logprobs": integer(0, MAX_LOGPROBS), "suffix": neutral(""),
}
CHAT_FIELDS: dict[str, Check] = {
    **SAMPLING, "messages": messages_field, "max_tokens": integer(1),
    "max_completion_tokens": integer(1), "logprobs": boolean,
    "top_logprobs": integer(0, MAX_LOGPROBS), "tools": no_tools, "tool_choice": no_tools,
    "functions": no_tools, "function_call": no_tools, "parallel_tool_calls": boolean,
    "store": neutral(False), "metadata": neutral({}),
}
GRAMMAR_FIELDS = ("response_format", "regex", "choices")


def embedding_input(name: str, v: Any) -> list[str | list[int]]:
    """A string, token ids, or a non-empty list of either (at most MAX_PROMPTS)."""
    if isinstance(v, list) and not v:
        raise ApiError(f"'{name}' must not be empty", name)
    return prompt_field(name, v)


def one_of(*allowed: str) -> Check:
    """One of a few strings."""
    def check(name: str, v: Any) -> str:
        if v not in allowed:
            raise ApiError(f"'{name}' must be one of {', '.join(allowed)}, got {v!r}", name)
        return str(v)
    return check


EMBEDDING_FIELDS: dict[str, Check] = {
    "model": string, "input": embedding_input, "encoding_format": one_of("float", "base64"),
    "dimensions": neutral(None), "user": string,
}


def check_body(body: Any, fields: dict[str, Check], required: tuple[str, ...]) -> dict[str, Any]:
    """The request's fields, checked and cleaned; null means "not given"."""
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, got {_type_name(body)}")
    for name in body:
        if name not in fields:
            raise ApiError(f"Unrecognized request argument supplied: {name}", name)
    out = {name: fields[name](name, v) for name, v in body.items() if v is not None}
    for name in required:
        if name not in out:
            raise ApiError(f"you must provide '{name}'", name)
    if "stream_options" in out and not out.get("stream"):
        raise ApiError("'stream_options' is only allowed when 'stream' is true",
                       "stream_options")
    given = [f for f in GRAMMAR_FIELDS if f in out and out[f] != {"type": "text"}]
    if len(given) > 1:
        raise ApiError(f"give at most one of {', '.join(GRAMMAR_FIELDS)}; got "
                       f"{' and '.join(given)}", given[1])
    if out.get("top_logprobs") and not out.get("logprobs"):
        raise ApiError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return out


def grammar_spec(b: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(the field that asked, constrain.compile_for's keyword arguments), or None."""
    fmt = b.get("response_format", {"type": "text"})
    if fmt["type"] == "json_object":
        return "response_format", {"json_object": True}
    if fmt["type"] == "json_schema":
        return "response_format", {"json_schema": fmt["json_schema"].get("schema", {})}
    if "regex" in b:
        return "regex", {"regex": b["regex"]}
    if "choices" in b:
        return "choices", {"choices": b["choices"]}
    return None


# ---- prompts -----------------------------------------------------------------------
def render_chat(messages: list[tuple[str, str]]) -> str:
    """The dialogue text (without [BOS]) that `sllm chat` would feed the model."""
    lines = []
    for role, text in messages:
        text = " ".join(text.split())
        prefix = {"user": USER_PREFIX + " ", "assistant": BOT_PREFIX + " "}.get(role, "")
        lines.append(prefix + text)
    return "\n".join(lines + [BOT_PREFIX])


def fit_chat(tok: Any, messages: list[tuple[str, str]], context: int,
             max_tokens: int | None, overflow: str = "trim") -> list[int]:
    """The prompt ids of a dialogue that fits the context with room to answer (max_tokens,
    or a quarter of the context when not given). "trim": the leading system messages and
    the most recent turns that fit are kept, the oldest turns dropped whole (the system
    messages too when even the last turn cannot fit beside them); refused only when the
    last message alone does not fit. "error": refused whenever anything would be dropped."""
    reserve = max_tokens if max_tokens is not None else max(1, context // 4)
    room = context - reserve
    system = 0
    while system < len(messages) - 1 and messages[system][0] in ("system", "developer"):
        system += 1

    def ids_of(drop: int, keep_system: bool = True) -> list[int]:
        kept = (messages[:system] if keep_system else []) + messages[system + drop:]
        return prompt_ids(tok, render_chat(kept), 1 << 62)
    ids = ids_of(0)
    if len(ids) <= room or overflow == "error" or reserve >= context:
        return ids  # token_budget() says what is wrong, naming the field
    lo, hi = 1, len(messages) - system - 1  # the fewest dropped turns that make it fit
    lo = min(lo, hi)  # a single turn: nothing to drop but the system messages
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(ids_of(mid)) <= room else (mid + 1, hi)
    for candidate in (ids_of(lo), ids_of(lo, keep_system=False)):
        if len(candidate) <= room:
            return candidate
    last = ids_of(len(messages) - system - 1, keep_system=False)
    raise ApiError(f"This model's maximum context length is {context} tokens; the last "
                   f"message alone takes {len(last)} tokens with {context - room} kept "
                   f"free for the answer.", "messages", code="context_length_exceeded")


def prompt_ids(tok: Any, prompt: str | list[int], vocab_size: int) -> list[int]:
    """Token ids of a prompt: text as `sllm generate` encodes it ([BOS] + ids), or ids."""
    if isinstance(prompt, list):
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise ApiError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})",
                           "prompt")
        return prompt
    try:
        return encode_prompt(tok, prompt, warn=False)
    except ValueError as e:
        raise ApiError(str(e), "prompt") from None


def token_budget(n_prompt: int, max_tokens: int | None, context: int, param: str,
                 prompt_param: str = "prompt") -> int:
    """max_tokens checked against the context (None: all the room left)."""
    room = context - n_prompt
    if max_tokens == 0 and room >= 0:  # scoring the prompt (echo): nothing is generated
        return 0
    if room < 1:
        raise ApiError(f"This model's maximum context length is {context} tokens; the prompt "
                       f"has {n_prompt} tokens, which leaves no room to generate.",
                       prompt_param, code="context_length_exceeded")
    if max_tokens is not None and max_tokens > room:
        raise ApiError(f"'{param}' is too large: {max_tokens}. This model's maximum context "
                       f"length is {context} tokens and the prompt has {n_prompt}, so at most "
                       f"{room} can be generated.", param, code="context_length_exceeded")
    return room if max_tokens is None else max_tokens


def embedding_ids(tok: Any, x: str | list[int], vocab_size: int, context: int, i: int
                  ) -> list[int]:
    """An embedding input's ids: the text's tokens (no [BOS]) or the ids given; it must
    have at least one token and fit the context."""
    name = f"input[{i}]"
    if isinstance(x, list):
        ids = prompt_ids(tok, x, vocab_size)
    else:
        ids = tok.encode(x)
    if not ids:
        raise ApiError(f"'{name}' has no tokens", name)
    if len(ids) > context:
        raise ApiError(f"'{name}' has {len(ids)} tokens; this model's context holds "
                       f"{context}", name, code="context_length_exceeded")
    return ids


# ---- response shapes ---------------------------------------------------------------
def new_id(prefix: str) -> str:
    """A response id such as cmpl-3f2a...; unique per request."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(rid: str, model: str, choices: list[dict[str, Any]],
               use: dict[str, int] | None, chunk: bool = False) -> dict[str, Any]:
    """A text_completion (or one of its stream chunks)."""
    out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": int(time.time()),
                           "model": model, "choices": choices}
    if use is not None or not chunk:
        out["usage"] = use
    return out


def completion_choice(index: int, text: str, finish: str | None,
                      logprobs: dict[str, Any] | None = None, note: str | None = None
                      ) -> dict[str, Any]:
    """One choice of a text_completion (`note`: why it stopped, when that needs saying)."""
    out = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
    return {**out, "note": note} if note else out


def chat_completion(rid: str, model: str, choices: list[dict[str, Any]],
                    use: dict[str, int]) -> dict[str, Any]:
    """A chat.completion."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": use}


def chat_choice(index: int, text: str, finish: str | None,
                logprobs: dict[str, Any] | None = None, note: str | None = None
                ) -> dict[str, Any]:
    """One choice of a chat.completion (`note`: why it stopped, when that needs saying)."""
    out = {"index": index, "message": {"role": "assistant", "content": text},
           "logprobs": logprobs, "finish_reason": finish}
    return {**out, "note": note} if note else out


def chat_chunk(rid: str, model: str, delta: dict[str, str], finish: str | None,
               use: dict[str, int] | None = None, choices: bool = True, index: int = 0,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A chat.completion.chunk: a delta, the finish, or (choices=False) the usage."""
    out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk",
                           "created": int(time.time()), "model": model,
                           "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                        "finish_reason": finish}] if choices else []}
    if use is not None:
        out["usage"] = use
    return out


# ---- log-probabilities -------------------------------------------------------------------
def _bytes(text: str) -> list[int]:
    return list(text.encode())


def chat_logprobs(entries: list[Any], k: int) -> dict[str, Any]:
    """OpenAI's chat logprobs: {"content": [{token, logprob, bytes, top_logprobs}]};
    `token_id` (sllm's tokenizer) is an extension."""
    return {"content": [{"token": e.text, "logprob": e.logprob, "bytes": _bytes(e.text),
                         "token_id": e.token,
                         "top_logprobs": [{"token": text, "logprob": lp, "bytes": _bytes(text),
                                           "token_id": t} for t, text, lp in e.top[:k]]}
                        for e in entries]}


def completion_logprobs(entries: list[Any], k: int, offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy completion logprobs: parallel lists of tokens, their logprobs, the
    top-k as {text: logprob}, text offsets; `token_ids` is an extension."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.text)
    return {"tokens": [e.text for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [None if e.logprob is None else
                             {text: lp for _, text, lp in e.top[:k]} for e in entries],
            "text_offset": offsets, "token_ids": [e.token for e in entries]}


def embedding_list(model: str, vectors: Any, encoding: str, tokens: int) -> dict[str, Any]:
    """OpenAI's embedding list; base64 is the float32 little-endian bytes, as OpenAI
    sends them."""
    def encode(v: Any) -> Any:
        if encoding == "base64":
            return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
        return [float(x) for x in v]
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
