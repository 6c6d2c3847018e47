"""`sllm serve`: the OpenAI HTTP API (starlette + uvicorn) over the continuous-batching
engine of sllm.batching.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both with
`stream: true` as server-sent events), GET /health, GET /metrics (Prometheus text).
Request checks and response shapes live in sllm.serve_api. A full queue answers 503 with
Retry-After; a bad request 400 with OpenAI's error body; a client that goes away while
its answer streams is cancelled and its KV-cache slot is free before the next step.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import json
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import serve_api as api
from .batching import Engine, Event, QueueFull, Sampling
from .batching import Request as GenRequest

MAX_BODY = 1 << 20  # bytes; a request body larger than this is refused
RETRY_AFTER_S = 1
ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics")


class Mailbox:
    """Hands the engine thread's events to the event loop, one wake-up for all the events
    posted meanwhile (a decode step makes one per active request), not one per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: deque[tuple[asyncio.Queue, Event]] = deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def post(self, events: asyncio.Queue, event: Event) -> None:
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


class ClientGone(Exception):
    """The client disconnected before its (non-streamed) answer was ready."""


class Server:
    """The app's state: the engine, the model's name, the API key, request counters."""

    def __init__(self, engine: Engine, model_id: str, api_key: str | None = None):
        self.engine, self.model_id, self.api_key = engine, model_id, api_key
        self.context = engine.model.config.max_seq_len
        self.vocab_size = engine.model.config.vocab_size
        self.started = time.time()
        self.requests: dict[tuple[str, int], int] = {}
        self.mailbox: Mailbox | None = None

    # ---- plumbing ----------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        """With --api-key, require `Authorization: Bearer <key>`."""
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise api.ApiError("Incorrect API key provided (send 'Authorization: Bearer "
                               "<key>')", status=401, code="invalid_api_key")

    async def body(self, request: Request, fields: dict[str, Any], required: tuple[str, ...]
                   ) -> dict[str, Any]:
        """The checked JSON body."""
        self.authorize(request)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise api.ApiError(f"the request body has {len(raw)} bytes, more than {MAX_BODY}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise api.ApiError(f"We could not parse the JSON body of your request ({e}).") \
                from None
        checked = api.check_body(data, fields, required)
        if checked["model"] != self.model_id:
            raise api.ApiError(f"The model '{checked['model']}' does not exist; this server "
                               f"serves '{self.model_id}'", "model", status=404,
                               code="model_not_found")
        return checked

    def sampling(self, b: dict[str, Any], max_tokens: int, extra_stop: tuple[str, ...] = ()
                 ) -> Sampling:
        """The engine's Sampling from a checked body."""
        top_p = b.get("top_p", 1.0)
        return Sampling(max_tokens=max_tokens, temperature=b.get("temperature", 1.0),
                        top_p=None if top_p >= 1.0 else top_p, top_k=b.get("top_k"),
                        seed=b.get("seed"), stop=b.get("stop", ()) + extra_stop)

    def start(self, ids: list[int], sampling: Sampling) -> tuple[GenRequest, asyncio.Queue]:
        """Submit to the engine; its events arrive on the returned asyncio queue."""
        if self.mailbox is None:
            self.mailbox = Mailbox(asyncio.get_running_loop())
        events: asyncio.Queue = asyncio.Queue()
        req = GenRequest(ids, sampling, functools.partial(self.mailbox.post, events))
        try:
            self.engine.submit(req)
        except QueueFull as e:
            raise api.ApiError(f"The server is busy: {e}. Retry later.", status=503,
                               code="queue_full", kind="server_busy") from None
        return req, events

    async def collect(self, request: Request, req: GenRequest, events: asyncio.Queue
                      ) -> tuple[str, Event]:
        """Wait for the whole answer; a client that goes away meanwhile cancels it."""
        gone = asyncio.ensure_future(_disconnected(request))
        pieces = []
        try:
            async for event in _until_done(events, gone):
                if event.kind == "text":
                    pieces.append(event.text)
                else:
                    return "".join(pieces), event
        finally:
            gone.cancel()
        self.engine.cancel(req)
        raise ClientGone()

    # ---- endpoints ---------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        """GET /v1/models."""
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": int(self.started),
             "owned_by": "sllm", "max_model_len": self.context}]})

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions."""
        b = await self.body(request, api.COMPLETION_FIELDS, ("model", "prompt"))
        ids = api.prompt_ids(self.engine.tok, b["prompt"], self.vocab_size)
        budget = api.token_budget(len(ids), b.get("max_tokens", 16), self.context, "max_tokens")
        req, events = self.start(ids, self.sampling(b, budget))
        rid = api.new_id("cmpl")
        if b.get("stream"):
            usage = b.get("stream_options", {}).get("include_usage", False)
            return self.sse(self.completion_chunks(rid, req, events, usage), req)
        text, end = await self.collect(request, req, events)
        return JSONResponse(api.completion(rid, self.model_id, text, end.finish_reason,
                                           api.usage(end.prompt_tokens, end.completion_tokens)))

    async def completion_chunks(self, rid: str, req: GenRequest, events: asyncio.Queue,
                                include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        """The stream of a completion: text chunks, the finish, the usage when asked."""
        async for event in _until_done(events):
            if event.kind == "text":
                yield api.completion(rid, self.model_id, event.text, None, None, chunk=True)
            else:
                yield api.completion(rid, self.model_id, "", event.finish_reason, None, True)
                if include_usage:
                    yield {**api.completion(rid, self.model_id, "", None, None, True),
                           "choices": [], "usage": api.usage(event.prompt_tokens,
                                                             event.completion_tokens)}

    async def chat(self, request: Request) -> Response:
        """POST /v1/chat/completions: the dialogue rendered as `sllm chat` renders it."""
        b = await self.body(request, api.CHAT_FIELDS, ("model", "messages"))
        ids = api.prompt_ids(self.engine.tok, api.render_chat(b["messages"]), self.vocab_size)
        param = "max_completion_tokens" if "max_completion_tokens" in b else "max_tokens"
        budget = api.token_budget(len(ids), b.get(param), self.context, param, "messages")
        req, events = self.start(ids, self.sampling(b, budget, extra_stop=("\n",)))
        rid = api.new_id("chatcmpl")
        if b.get("stream"):
            usage = b.get("stream_options", {}).get("include_usage", False)
            return self.sse(self.chat_chunks(rid, req, events, usage), req)
        text, end = await self.collect(request, req, events)
        return JSONResponse(api.chat_completion(
            rid, self.model_id, text.strip(), end.finish_reason,
            api.usage(end.prompt_tokens, end.completion_tokens)))

    async def chat_chunks(self, rid: str, req: GenRequest, events: asyncio.Queue,
                          include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        """The stream of a chat answer: role, content deltas, the finish, the usage."""
        yield api.chat_chunk(rid, self.model_id, {"role": "assistant", "content": ""}, None)
        started = False
        async for event in _until_done(events):
            if event.kind == "text":
                text = event.text if started else event.text.lstrip()
                started = started or bool(text)
                if text:
                    yield api.chat_chunk(rid, self.model_id, {"content": text}, None)
            else:
                yield api.chat_chunk(rid, self.model_id, {}, event.finish_reason)
                if include_usage:
                    yield api.chat_chunk(rid, self.model_id, {}, None, api.usage(
                        event.prompt_tokens, event.completion_tokens), choices=False)

    def sse(self, chunks: AsyncIterator[dict[str, Any]], req: GenRequest) -> Response:
        """Server-sent events; the request is cancelled when the stream stops early."""
        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
            except RuntimeError as e:  # the engine failed this request
                yield f"data: {json.dumps(api.ApiError(str(e), kind='server_error').body())}\n\n"
            finally:  # also when the client disconnects (cancelled / send fails)
                self.engine.cancel(req)
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        """GET /health: 200 while the engine runs."""
        return JSONResponse({"status": "ok", "model": self.model_id,
                             "active": self.engine.busy_slots(),
                             "queued": self.engine.queue_depth()})

    async def metrics(self, request: Request) -> Response:
        """GET /metrics in Prometheus' text format."""
        self.authorize(request)
        return PlainTextResponse(self.prometheus(), media_type="text/plain; version=0.0.4")

    def prometheus(self) -> str:
        """The metrics text."""
        e, s = self.engine, self.engine.stats
        lines: list[str] = []

        def metric(name: str, kind: str, doc: str, samples: dict[str, float]) -> None:
            lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples.items())
        metric("sllm_requests_total", "counter", "HTTP requests answered, by path and status.",
               {f'{{path="{p}",code="{c}"}}': n for (p, c), n in sorted(self.requests.items())})
        metric("sllm_prompt_tokens_total", "counter", "Prompt tokens prefilled.",
               {"": s.prompt_tokens})
        metric("sllm_completion_tokens_total", "counter", "Tokens generated.",
               {"": s.completion_tokens})
        metric("sllm_sequences_finished_total", "counter", "Sequences ended, by reason.",
               {f'{{reason="{r}"}}': n for r, n in sorted(s.finished.items())})
        metric("sllm_decode_steps_total", "counter", "Batched decode steps.", {"": s.steps})
        metric("sllm_decode_rows_total", "counter", "Sequences summed over decode steps "
               "(rows / steps = mean batch size).", {"": s.batched_rows})
        metric("sllm_queue_depth", "gauge", "Requests waiting for a slot.",
               {"": e.queue_depth()})
        metric("sllm_active_sequences", "gauge", "Slots decoding a sequence.",
               {"": e.busy_slots()})
        metric("sllm_batch_slots", "gauge", "KV-cache slots (--max-batch).", {"": e.max_batch})
        metric("sllm_tokens_per_second", "gauge", "Tokens generated per second, last 10 s.",
               {"": s.tokens_per_s()})
        return "\n".join(lines) + "\n"


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until_done(events: asyncio.Queue, stop: asyncio.Future[None] | None = None
                      ) -> AsyncIterator[Event]:
    """The engine's events for one request up to its end (or until `stop` is done); an
    error event raises RuntimeError."""
    while True:
        if stop is None:
            event = await events.get()
        else:
            get = asyncio.ensure_future(events.get())
            await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                return
            event = get.result()
        if event.kind == "error":
            raise RuntimeError(event.text)
        yield event
        if event.kind == "done":
            return


def _error_response(e: api.ApiError) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _guard(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Bad requests become OpenAI error bodies; anything unexpected a 500, never a crash."""
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except api.ApiError as e:
            return _error_response(e)
        except ClientGone:  # nobody reads the answer; nginx's code for it
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            return _error_response(api.ApiError(f"internal error: {e}", status=500,
                                                kind="server_error"))
    return endpoint


def build_app(engine: Engine, model_id: str, api_key: str | None = None) -> ASGIApp:
    """The ASGI app over a (not yet started) engine; the app's lifespan starts and stops it."""
    server = Server(engine, model_id, api_key)
    routes = [Route("/v1/models", _guard(server.models), methods=["GET"]),
              Route("/v1/completions", _guard(server.completions), methods=["POST"]),
              Route("/v1/chat/completions", _guard(server.chat), methods=["POST"]),
              Route("/health", server.health, methods=["GET"]),
              Route("/metrics", _guard(server.metrics), methods=["GET"])]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        what = "no such endpoint" if status == 404 else "method not allowed"
        return _error_response(api.ApiError(f"{request.method} {request.url.path}: {what}",
                                            status=status, code=what.replace(" ", "_")))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found})
    app.state.server = server
    return _CountRequests(app, server)


class _CountRequests:
    """ASGI middleware: counts answered requests by path and status for /metrics."""

    def __init__(self, app: Starlette, server: Server):
        self.app, self.server = app, server
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in ENDPOINTS else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                key = (path, int(message["status"]))
                self.server.requests[key] = self.server.requests.get(key, 0) + 1
            await send(message)
        await self.app(scope, receive, counting_send)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def run(app: Any, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve `app` on `sock` with uvicorn until interrupted."""
    import uvicorn
    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=30)
    uvicorn.Server(config).run(sockets=[sock])
