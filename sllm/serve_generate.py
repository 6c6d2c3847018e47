"""The generating endpoints of `sllm serve`: POST /v1/completions and /v1/chat/completions,
whole or streamed, over the continuous-batching engine.

A call becomes one engine request per prompt (completions take a list of prompts), each
with n choices; answers are gathered by (prompt, choice) into OpenAI's choices, numbered
prompt * n + choice. Grammars (response_format, regex, choices) compile off the event
loop, so a first-time schema does not stall other clients.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from . import constrain
from . import serve_api as api
from .batching import Engine, Event, QueueFull, Sampling, TokenLogprob
from .batching import Request as GenRequest
from .grammar import GrammarError
from .serve_ops import Record


class ClientGone(Exception):
    """The client disconnected before its (non-streamed) answer was ready."""


class TimedOut(RuntimeError):
    """A request reached its deadline before its answer began (HTTP 504), or the engine
    sent nothing for GRACE_S past the deadline (a step that hangs)."""


DEFAULT_REQUEST_TIMEOUT_S = 300.0  # `sllm serve --request-timeout`
GRACE_S = 10.0  # past the deadline, how long the HTTP side still waits for the engine


class Mailbox:
    """Hands the engine thread's events to the event loop, one wake-up for all the events
    posted meanwhile (a decode step makes one per active request), not one per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: deque[tuple[asyncio.Queue, Any]] = deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def post(self, events: asyncio.Queue, event: Any) -> None:
        """From any thread: deliver `event` to `events` on the loop."""
        self.items.append((events, event))
        with self.lock:
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self.deliver)

    def deliver(self) -> None:
        """On the loop: put everything posted so far into its queue."""
        with self.lock:
            self.scheduled = False
        while self.items:
            events, event = self.items.popleft()
            events.put_nowait(event)


@dataclass
class Answer:
    """One choice as it arrives: text pieces, token log-probabilities, the end."""

    pieces: list[str] = field(default_factory=list)
    tokens: list[TokenLogprob] = field(default_factory=list)
    end: Event | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class Call:
    """The engine requests of one HTTP call and the queue their events arrive on, as
    (prompt index, Event)."""

    requests: list[GenRequest]
    events: asyncio.Queue
    n: int
    model: str  # what the request named: the base's model id or an adapter's name
    record: Record = field(default_factory=Record)
    deadline: float | None = None  # time.monotonic() after which waiting gives up

    @property
    def total(self) -> int:
        return len(self.requests) * self.n


class GenerationEndpoints:
    """Completions and chat; mixed into sllm.serve.Server, which provides the plumbing."""

    engine: Engine
    model_id: str
    context: int
    vocab_size: int
    context_overflow: str
    mailbox: Mailbox | None
    request_timeout: float

    async def body(self, request: Request, fields: dict[str, Any], required: tuple[str, ...]
                   ) -> dict[str, Any]:
        raise NotImplementedError("need body")

    def served_model(self, name: str) -> Any:
        raise NotImplementedError("need served_model")

    async def grammar(self, b: dict[str, Any]) -> constrain.Grammar | None:
        """The request's grammar, compiled in a worker thread (400 naming the field)."""
        spec = api.grammar_spec(b)
        if spec is None:
            return None
        param, kw = spec
        try:
            return await asyncio.to_thread(constrain.compile_for, self.engine.tok, **kw)
        except GrammarError as e:
            raise api.ApiError(str(e), param, code="invalid_grammar") from None

    def sampling(self, b: dict[str, Any], max_tokens: int, grammar: Any, param: str,
                 extra_stop: tuple[str, ...] = (), logprobs: int | None = None,
                 echo: bool = False) -> Sampling:
        """The engine's Sampling from a checked body."""
        bias = b.get("logit_bias", ())
        bad = [t for t, _ in bias if not 0 <= t < self.vocab_size]
        if bad:
            raise api.ApiError(f"'logit_bias': token id {bad[0]} is outside the vocabulary "
                               f"[0, {self.vocab_size})", "logit_bias")
        n = b.get("n", 1)
        if n > self.engine.max_batch:
            raise api.ApiError(f"'n' = {n} needs {n} KV-cache slots; this server has "
                               f"{self.engine.max_batch} (--max-batch)", "n")
        if grammar is not None and 0 < max_tokens < grammar.min_tokens():
            raise api.ApiError(f"'{param}' = {max_tokens} is too small for the requested "
                               f"format: this vocabulary needs at least "
                               f"{grammar.min_tokens()} tokens", param)
        top_p = b.get("top_p", 1.0)
        return Sampling(max_tokens=max_tokens, temperature=b.get("temperature", 1.0),
                        top_p=None if top_p >= 1.0 else top_p, top_k=b.get("top_k"),
                        seed=b.get("seed"), stop=b.get("stop", ()) + extra_stop,
                        min_p=b.get("min_p"), frequency_penalty=b.get("frequency_penalty", 0.0),
                        presence_penalty=b.get("presence_penalty", 0.0),
                        repetition_penalty=b.get("repetition_penalty", 1.0), logit_bias=bias,
                        logprobs=logprobs, n=n, echo=echo, grammar=grammar)

    def start(self, jobs: list[tuple[list[int], Sampling]], model: str) -> Call:
        """Submit one engine request per prompt, decoded with the adapter `model` names
        (looked up here, with no await before the submission: an adapter removed
        meanwhile is a 404, never a request without its adapter); their events share one
        asyncio queue."""
        adapter = self.served_model(model)
        if self.mailbox is None:
            self.mailbox = Mailbox(asyncio.get_running_loop())
        mailbox = self.mailbox
        events: asyncio.Queue = asyncio.Queue()
        call = Call([], events, jobs[0][1].n, model,
                    deadline=time.monotonic() + self.request_timeout + GRACE_S)
        call.record.prompt_tokens = sum(len(ids) for ids, _ in jobs)
        for i, (ids, sampling) in enumerate(jobs):
            def emit(event: Event, i: int = i) -> None:
                mailbox.post(events, (i, event))
            req = GenRequest(ids, sampling, emit, timeout=self.request_timeout,
                             adapter=adapter)
            try:
                self.engine.submit(req)
            except QueueFull as e:
                self.cancel(call)
                raise api.ApiError(f"The server is busy: {e}. Retry later.", status=503,
                                   code="queue_full", kind="server_busy") from None
            call.requests.append(req)
        return call

    def cancel(self, call: Call) -> None:
        for req in call.requests:
            self.engine.cancel(req)

    async def collect(self, request: Request, call: Call
                      ) -> tuple[dict[tuple[int, int], Answer], dict[int, list[TokenLogprob]]]:
        """Every choice's whole answer, and each prompt's own tokens (echo); a client that
        goes away meanwhile cancels them."""
        gone = asyncio.ensure_future(_disconnected(request))
        answers: dict[tuple[int, int], Answer] = {}
        prompts: dict[int, list[TokenLogprob]] = {}
        try:
            async for i, event in until_done(call, gone):
                a = answers.setdefault((i, event.index), Answer())
                if event.kind == "prompt":
                    prompts[i] = list(event.tokens)
                elif event.kind == "text":
                    a.pieces.append(event.text)
                    a.tokens.extend(event.tokens)
                else:
                    a.end = event
        except TimedOut:
            self.cancel(call)
            raise
        finally:
            gone.cancel()
        if all(a.end is not None for a in answers.values()) and len(answers) == call.total:
            return answers, prompts
        self.cancel(call)
        raise ClientGone()

    # ---- /v1/completions -------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        """POST /v1/completions."""
        b = await self.body(request, api.COMPLETION_FIELDS, ("model", "prompt"))
        ids = [api.prompt_ids(self.engine.tok, p, self.vocab_size) for p in b["prompt"]]
        grammar = await self.grammar(b)
        k, echo = b.get("logprobs"), b.get("echo", False)
        if b.get("max_tokens") == 0 and not echo:
            raise api.ApiError("'max_tokens' may be 0 only with echo (scoring the prompt)",
                               "max_tokens")
        call = self.start([(p, self.sampling(
            b, api.token_budget(len(p), b.get("max_tokens", 16), self.context, "max_tokens"),
            grammar, "max_tokens", logprobs=k, echo=echo)) for p in ids], b["model"])
        request.state.sllm = call.record
        rid = api.new_id("cmpl")
        if b.get("stream"):
            usage = b.get("stream_options", {}).get("include_usage", False)
            return self.sse(self.completion_chunks(rid, call, k, usage, b["prompt"], ids),
                            call)
        answers, prompt_tokens = await self.collect(request, call)
        choices = []
        for (i, j), a in sorted(answers.items()):
            head = self._echo(b["prompt"][i], ids[i]) if echo else ""
            tokens = prompt_tokens.get(i, []) + a.tokens
            lp = None if k is None else api.completion_logprobs(tokens, k)
            choices.append(api.completion_choice(i * call.n + j, head + a.text,
                                                 _finish(a.end), lp, _note(a.end)))
        return JSONResponse(api.completion(rid, call.model, choices,
                                           _usage(answers, ids)))

    def _echo(self, prompt: str | list[int], ids: list[int]) -> str:
        return prompt if isinstance(prompt, str) else self.engine.tok.decode(ids)

    async def completion_chunks(self, rid: str, call: Call, k: int | None, include_usage: bool,
                                prompts: list[Any], ids: list[list[int]]
                                ) -> AsyncIterator[dict[str, Any]]:
        """The stream of a completion: text chunks, each choice's finish, the usage."""
        answers: dict[tuple[int, int], Answer] = {}
        async for i, event in until_done(call):
            a = answers.setdefault((i, event.index), Answer())
            index = i * call.n + event.index
            if event.kind == "done":
                a.end = event
                yield api.completion(rid, call.model, [api.completion_choice(
                    index, "", _finish(event), note=event.note)], None, chunk=True)
                continue
            text = event.text if event.kind == "text" else self._echo(prompts[i], ids[i])
            lp = None if k is None else api.completion_logprobs(list(event.tokens), k)
            yield api.completion(rid, call.model, [api.completion_choice(index, text, None, lp)],
                                 None, chunk=True)
        if include_usage:
            yield api.completion(rid, call.model, [], _usage(answers, ids), chunk=True)

    # ---- /v1/chat/completions --------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        """POST /v1/chat/completions: the dialogue rendered as `sllm chat` renders it;
        one that passes the context loses its oldest turns (--context-overflow trim)."""
        b = await self.body(request, api.CHAT_FIELDS, ("model", "messages"))
        param = "max_completion_tokens" if "max_completion_tokens" in b else "max_tokens"
        ids = api.fit_chat(self.engine.tok, b["messages"], self.context, b.get(param),
                           self.context_overflow)
        budget = api.token_budget(len(ids), b.get(param), self.context, param, "messages")
        grammar = await self.grammar(b)
        k = b.get("top_logprobs", 0) if b.get("logprobs") else None
        call = self.start([(ids, self.sampling(b, budget, grammar, param,
                                               () if grammar else ("\n",), logprobs=k))],
                          b["model"])
        request.state.sllm = call.record
        rid = api.new_id("chatcmpl")
        if b.get("stream"):
            usage = b.get("stream_options", {}).get("include_usage", False)
            return self.sse(self.chat_chunks(rid, call, k, usage, [ids], grammar is None),
                            call)
        answers, _ = await self.collect(request, call)
        choices = [api.chat_choice(j, a.text if grammar else a.text.strip(), _finish(a.end),
                                   None if k is None else api.chat_logprobs(a.tokens, k),
                                   _note(a.end))
                   for (_, j), a in sorted(answers.items())]
        return JSONResponse(api.chat_completion(rid, call.model, choices,
                                                _usage(answers, [ids])))

    async def chat_chunks(self, rid: str, call: Call, k: int | None, include_usage: bool,
                          ids: list[list[int]], strip: bool) -> AsyncIterator[dict[str, Any]]:
        """The stream of a chat answer: role, content deltas, each choice's finish, the
        usage."""
        for j in range(call.n):
            yield api.chat_chunk(rid, call.model, {"role": "assistant", "content": ""},
                                 None, index=j)
        answers: dict[tuple[int, int], Answer] = {}
        async for i, event in until_done(call):
            a = answers.setdefault((i, event.index), Answer())
            if event.kind == "done":
                a.end = event
                yield api.chat_chunk(rid, call.model, {}, _finish(event), index=event.index)
                continue
            started = bool(a.pieces)
            text = event.text if started or not strip else event.text.lstrip()
            if text:
                a.pieces.append(text)
            lp = None if k is None else api.chat_logprobs(list(event.tokens), k)
            if text or lp:
                yield api.chat_chunk(rid, call.model, {"content": text}, None,
                                     index=event.index, logprobs=lp)
        if include_usage:
            yield api.chat_chunk(rid, call.model, {}, None, _usage(answers, ids),
                                 choices=False)

    def sse(self, chunks: AsyncIterator[dict[str, Any]], call: Call) -> Response:
        """Server-sent events; the requests are cancelled when the stream stops early."""
        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
            except RuntimeError as e:  # the engine failed this request
                yield f"data: {json.dumps(api.ApiError(str(e), kind='server_error').body())}\n\n"
            finally:  # also when the client disconnects (cancelled / send fails)
                self.cancel(call)
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


def _finish(end: Event | None) -> str | None:
    return None if end is None else end.finish_reason


def _note(end: Event | None) -> str | None:
    return None if end is None else end.note


def _usage(answers: dict[tuple[int, int], Answer], ids: list[list[int]]) -> dict[str, int]:
    """Each prompt counted once, every choice's tokens counted."""
    done = sum(a.end.completion_tokens for a in answers.values() if a.end is not None)
    return api.usage(sum(len(p) for p in ids), done)


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_done(call: Call, stop: asyncio.Future[None] | None = None
                     ) -> AsyncIterator[tuple[int, Event]]:
    """The engine's (prompt index, event) pairs for one call up to the end of every choice
    (or until `stop` is done); an error event raises RuntimeError, a request that timed
    out in the queue or an engine silent past the call's deadline raises TimedOut."""
    left = call.total
    while left:
        item = await _next_event(call, stop)
        if item is None:
            return
        event = item[1]
        if event.kind == "timeout":
            raise TimedOut(event.text)
        if event.kind == "error":
            raise RuntimeError(event.text)
        _record(call, event)
        yield item
        left -= event.kind == "done"


async def _next_event(call: Call, stop: asyncio.Future[None] | None
                      ) -> tuple[int, Event] | None:
    """The next event; None once `stop` is done; TimedOut past the call's deadline."""
    get = asyncio.ensure_future(call.events.get())
    wait = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
    await asyncio.wait({get} if stop is None else {get, stop}, timeout=wait,
                       return_when=asyncio.FIRST_COMPLETED)
    if get.done():
        return get.result()
    get.cancel()
    if stop is not None and stop.done():
        return None
    raise TimedOut(f"no answer from the engine {GRACE_S:g} s past the request's deadline "
                   f"(--request-timeout): a decoding step is stuck or the server is "
                   f"overloaded")


def _record(call: Call, event: Event) -> None:
    """Keep the call's Record (for the access log and /metrics) up to date."""
    rec = call.record
    if event.kind == "text" and rec.first_token is None:
        rec.first_token = time.monotonic()
    elif event.kind == "done":
        rec.completion_tokens += event.completion_tokens
        waits = [r.admitted - r.submitted for r in call.requests if r.admitted is not None]
        rec.queue_wait = max(waits, default=None)
