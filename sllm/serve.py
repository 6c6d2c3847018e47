"""`sllm serve`: the OpenAI HTTP API (starlette + uvicorn) over the continuous-batching
engine of sllm.batching.

Endpoints: GET /v1/models and /v1/models/{id}, POST /v1/completions and
/v1/chat/completions (both with `stream: true` as server-sent events; sllm.serve_generate),
POST /v1/embeddings, GET /health, GET /metrics (Prometheus text; sllm.serve_ops, which
also writes the access log). Request checks and response shapes live in sllm.serve_api. A full queue answers 503 with
Retry-After; a bad request 400 with OpenAI's error body; a client that goes away while
its answer streams is cancelled and its KV-cache slot is free before the next step.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from . import serve_api as api
from .batching import Engine
from .errors import LoraError
from .lora_bank import AdapterBank
from .serve_adapters import AdapterEndpoints
from .serve_generate import (
    DEFAULT_REQUEST_TIMEOUT_S,
    ClientGone,
    GenerationEndpoints,
    Mailbox,
    TimedOut,
)
from .serve_ops import Observe, Observer, Record

MAX_BODY = 1 << 20  # bytes; a request body larger than this is refused
MAX_REQUEST_TIMEOUT_S = 86400.0  # --request-timeout: at most a day, never "forever"
RETRY_AFTER_S = 1
ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings",
             "/v1/adapters", "/health", "/metrics")


class Server(AdapterEndpoints, GenerationEndpoints):
    """The app's state: the engine, the model's name, its adapters, the API key, request
    counters."""

    def __init__(self, engine: Engine, model_id: str, api_key: str | None = None,
                 context_overflow: str = "trim", observer: Observer | None = None,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S):
        if context_overflow not in ("trim", "error"):
            raise ValueError(f"context_overflow must be trim or error, got {context_overflow!r}")
        if not 0 < request_timeout <= MAX_REQUEST_TIMEOUT_S:
            raise ValueError(f"request_timeout must be in (0, {MAX_REQUEST_TIMEOUT_S:g}] "
                             f"seconds, got {request_timeout!r}")
        self.request_timeout = float(request_timeout)
        self.engine, self.model_id, self.api_key = engine, model_id, api_key
        self.context_overflow = context_overflow
        self.context = engine.model.config.max_seq_len
        self.vocab_size = engine.model.config.vocab_size
        self.started = time.time()
        self.observer = observer or Observer(model_id)
        self.mailbox: Mailbox | None = None
        if engine.adapters is None and engine.model.adapter is None:
            engine.adapters = AdapterBank(engine.model)  # POST /v1/adapters may add some
        self.adapters = engine.adapters

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
        """The checked JSON body of a request for a model (404 for an unknown one)."""
        checked = api.check_body(await self.json_body(request), fields, required)
        self.served_model(checked["model"])
        return checked

    async def json_body(self, request: Request) -> Any:
        """The authorized request's JSON body, parsed (400 when it cannot be)."""
        self.authorize(request)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise api.ApiError(f"the request body has {len(raw)} bytes, more than {MAX_BODY}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # deep nesting: 400
            raise api.ApiError(f"We could not parse the JSON body of your request "
                               f"({e or 'nested too deeply'}).") from None
        return data

    # ---- endpoints ---------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings: each input's final hidden states, mean-pooled over its
        tokens and L2-normalised; the inputs run as one batch on the engine thread."""
        b = await self.body(request, api.EMBEDDING_FIELDS, ("model", "input"))
        ids = [api.embedding_ids(self.engine.tok, x, self.vocab_size, self.context, i)
               for i, x in enumerate(b["input"])]
        adapter = self.served_model(b["model"])
        job = self.engine.run_job(lambda: embed(self.engine, ids, adapter))
        try:
            vectors = await asyncio.wait_for(asyncio.wrap_future(job), self.request_timeout)
        except asyncio.TimeoutError:
            job.cancel()
            raise TimedOut(f"no embeddings within {self.request_timeout:g} s "
                           f"(--request-timeout)") from None
        except RuntimeError as e:
            raise api.ApiError(str(e), status=503, kind="server_error") from None
        except LoraError as e:  # removed while the job waited
            raise api.ApiError(str(e), "model", status=404, code="model_not_found") from None
        request.state.sllm = Record(prompt_tokens=sum(len(x) for x in ids))
        return JSONResponse(api.embedding_list(self.model_id, vectors,
                                               b.get("encoding_format", "float"),
                                               sum(len(x) for x in ids)))

    async def health(self, request: Request) -> Response:
        """GET /health: 200 while the engine runs, 503 once its thread has stopped."""
        if not self.engine.alive():
            return JSONResponse({"status": "engine stopped", "model": self.model_id,
                                 "error": self.engine.died}, status_code=503)
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
        lines.extend(self.observer.prometheus())
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
        except TimedOut as e:  # past --request-timeout before any answer: a gateway timeout
            return _error_response(api.ApiError(str(e), status=504, code="request_timeout",
                                                kind="server_error"))
        except Exception as e:  # noqa: BLE001 - report, keep serving
            return _error_response(api.ApiError(f"internal error: {e}", status=500,
                                                kind="server_error"))
    return endpoint


def build_app(engine: Engine, model_id: str, api_key: str | None = None,
              context_overflow: str = "trim", observer: Observer | None = None,
              request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S) -> ASGIApp:
    """The ASGI app over a (not yet started) engine; the app's lifespan starts and stops it
    (and writes the shutdown line). context_overflow: "trim" drops a chat's oldest turns to
    fit the context, "error" refuses it. observer: where access lines go (default: text
    lines on stderr). request_timeout: seconds a request may take (see docs/serving.md)."""
    server = Server(engine, model_id, api_key, context_overflow, observer, request_timeout)
    routes = [Route("/v1/models", _guard(server.models), methods=["GET"]),
              Route("/v1/models/{model:path}", _guard(server.model), methods=["GET"]),
              Route("/v1/adapters", _guard(server.add_adapter), methods=["POST"]),
              Route("/v1/adapters/{name:path}", _guard(server.remove_adapter),
                    methods=["DELETE"]),
              Route("/v1/embeddings", _guard(server.embeddings), methods=["POST"]),
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
            server.observer.event("stopped", model=model_id,
                                  requests=sum(server.observer.requests.values()),
                                  uptime_s=round(time.time() - server.started, 1))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found})
    app.state.server = server
    return Observe(app, server.observer, ENDPOINTS)


def embed(engine: Engine, ids: list[list[int]], adapter: Any = None) -> np.ndarray:
    """(len(ids), C) mean-pooled final hidden states of the engine's model (with `adapter`,
    a sllm.lora_bank.Served, when given), L2-normalised. One right-padded batch: attention
    is causal, so padding after a sequence does not change its states."""
    model = engine.model
    if engine.adapters is not None:
        engine.adapters.route([adapter])
    width = max(len(x) for x in ids)
    tokens = np.zeros((len(ids), width), np.int64)
    for row, x in enumerate(ids):
        tokens[row, :len(x)] = x
    hidden = model.hidden_states(tokens)
    pooled = np.stack([hidden[row, :len(x)].mean(axis=0) for row, x in enumerate(ids)])
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12)


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
