"""Operating `sllm serve`: one access-log line per request, latency histograms and
per-model counters for /metrics, and the startup and shutdown lines.

An access line (text, or one JSON object with --log-format json) names the method, path,
status, prompt and completion tokens, milliseconds to the first token and in total; it is
written when the last byte of the answer has been sent, so a streamed answer is timed to
its end. Histograms use Prometheus' cumulative buckets (`le`), in seconds.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOG_FORMATS = ("text", "json")


def stderr_line(line: str) -> None:
    """The default log writer: one line on stderr, flushed."""
    print(line, file=sys.stderr, flush=True)


class Histogram:
    """Counts of observations at or under each bucket bound, their sum and count."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        """The Prometheus sample lines: _bucket per bound and +Inf, _sum, _count."""
        inner = labels[1:-1] + "," if labels else ""
        out = [f'{name}_bucket{{{inner}le="{b:g}"}} {c}'
               for b, c in zip(self.buckets, self.counts, strict=True)]
        out.append(f'{name}_bucket{{{inner}le="+Inf"}} {self.count}')
        out += [f"{name}_sum{labels} {self.sum:g}", f"{name}_count{labels} {self.count}"]
        return out


@dataclass
class Record:
    """What a generating endpoint tells the access log about its request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None  # time.monotonic() of the first generated token
    queue_wait: float | None = None  # seconds the longest-waiting prompt waited for slots


class Observer:
    """Per-model counters and histograms, and the access log."""

    HISTOGRAMS = {"sllm_queue_wait_seconds": "Seconds a request waited for KV-cache slots.",
                  "sllm_time_to_first_token_seconds": "Seconds from arrival to the first "
                                                      "generated token.",
                  "sllm_request_duration_seconds": "Seconds from arrival to the last byte "
                                                   "of the answer."}

    def __init__(self, model_id: str, log_format: str = "text",
                 write: Callable[[str], None] | None = None):
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be text or json, got {log_format!r}")
        self.model_id, self.log_format = model_id, log_format
        self.write = write or stderr_line
        self.histograms = {name: Histogram() for name in self.HISTOGRAMS}
        self.requests: dict[tuple[str, int], int] = {}
        self.tokens = {"prompt": 0, "completion": 0}

    def event(self, what: str, **fields: Any) -> None:
        """A startup or shutdown line."""
        if self.log_format == "json":
            self.write(json.dumps({"time": round(time.time(), 3), "event": what, **fields}))
        else:
            self.write(f"sllm serve {what}: " + " ".join(f"{k}={v}" for k, v in fields.items()))

    def finished(self, method: str, path: str, status: int, started: float,
                 rec: Record | None) -> None:
        """Count one answered request and write its access line."""
        now = time.monotonic()
        key = (path, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        ttft = None
        if rec is not None:
            self.tokens["prompt"] += rec.prompt_tokens
            self.tokens["completion"] += rec.completion_tokens
            if rec.queue_wait is not None:
                self.histograms["sllm_queue_wait_seconds"].observe(rec.queue_wait)
            if rec.first_token is not None:
                ttft = rec.first_token - started
                self.histograms["sllm_time_to_first_token_seconds"].observe(ttft)
            self.histograms["sllm_request_duration_seconds"].observe(now - started)
        self.write(self.line(method, path, status, rec, ttft, now - started))

    def line(self, method: str, path: str, status: int, rec: Record | None,
             ttft: float | None, total: float) -> str:
        fields = {"method": method, "path": path, "status": status,
                  "prompt_tokens": rec.prompt_tokens if rec else 0,
                  "completion_tokens": rec.completion_tokens if rec else 0,
                  "first_token_ms": None if ttft is None else round(ttft * 1000, 1),
                  "total_ms": round(total * 1000, 1)}
        if self.log_format == "json":
            return json.dumps({"time": round(time.time(), 3), "model": self.model_id, **fields})
        first = "-" if ttft is None else f"{fields['first_token_ms']}ms"
        return (f'"{method} {path}" {status} prompt={fields["prompt_tokens"]} '
                f'completion={fields["completion_tokens"]} first_token={first} '
                f'total={fields["total_ms"]}ms')

    def prometheus(self) -> list[str]:
        """The request counters, per-model token counters and histograms."""
        model = f'model="{self.model_id}"'
        lines = ["# HELP sllm_requests_total HTTP requests answered, by path and status.",
                 "# TYPE sllm_requests_total counter"]
        lines += [f'sllm_requests_total{{path="{p}",code="{c}",{model}}} {n}'
                  for (p, c), n in sorted(self.requests.items())]
        for kind, n in self.tokens.items():
            name = f"sllm_model_{kind}_tokens_total"
            lines += [f"# HELP {name} {kind.capitalize()} tokens of answered requests, per "
                      f"model.", f"# TYPE {name} counter", f"{name}{{{model}}} {n}"]
        for name, doc in self.HISTOGRAMS.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
            lines += self.histograms[name].lines(name, f"{{{model}}}")
        return lines


class Observe:
    """ASGI middleware: times each HTTP request to its last byte (handed to the server),
    then hands it to the Observer (handlers leave a Record in scope["state"]["sllm"])."""

    def __init__(self, app: ASGIApp, observer: Observer, paths: tuple[str, ...]):
        self.app, self.observer, self.paths = app, observer, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state = scope.setdefault("state", {})
        path = scope["path"]
        if path.startswith("/v1/models/"):
            path = "/v1/models/{id}"
        elif path.startswith("/v1/adapters/"):
            path = "/v1/adapters/{name}"
        elif path not in self.paths:
            path = "other"
        status, logged = [499], [False]  # 499: the client left before an answer began

        def log() -> None:
            if not logged[0]:
                logged[0] = True
                self.observer.finished(scope["method"], path, status[0], started,
                                       state.get("sllm"))

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # before the last bytes go out, not after: a client that has its answer
                # finds it in /metrics and the log (after, a send that waits for the socket
                # to drain would let the loop serve the client's next request first)
                log()
            await send(message)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            log()
