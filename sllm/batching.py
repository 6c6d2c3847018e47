"""Continuous batching: concurrent generation requests decoded together.

The Engine owns a model and a KV cache of `max_batch` slots and runs in one background
thread. `submit()` queues a request (a bounded queue: `QueueFull` when it is full).
Between steps the engine drops cancelled sequences (their slots are free at once), admits
waiting requests into free slots (one prefill forward of the prompt each, into the slot's
view of the cache), then runs one `model.decode_batch` over every active sequence, each at
its own position in its own slot, and hands each its next token. A sequence that is
finished leaves at once and its slot is reused by the next waiting request.

Sampling per sequence is exactly `sllm.generate.stream`'s: the same `sample_next` with a
generator seeded by the request's seed, so a request's output does not depend on what
else is in the batch, and greedy output equals `sllm generate --temperature 0`.
"""
from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .generate import sample_next


class QueueFull(Exception):
    """The engine's queue holds --max-queue requests already; try again later."""


@dataclass(frozen=True)
class Sampling:
    """How one request is decoded (OpenAI's names; top_k is an extension)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Event:
    """What the engine tells a request: a text piece, the end, or an error."""

    kind: str  # "text" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class Request:
    """A prompt (token ids) to continue; `emit` receives its Events from the engine thread."""

    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    cancelled: bool = False
    id: int = field(default_factory=itertools.count().__next__)


class TextStream:
    """Turns new token ids into text pieces: each piece is the growth of decode(prompt +
    new ids) (as `sllm generate` prints it), held back while it ends in an incomplete UTF-8
    sequence or could be the start of a stop string; text from a stop string on is cut.

    The growth is computed over the last CONTEXT ids already shown plus the new ones (the
    tokenizers' decode is local: spacing and byte sequences depend on a few neighbours),
    so a token costs the same at position 10 and at position 1,000."""

    CONTEXT = 16

    def __init__(self, tok: Any, prompt_ids: list[int], stop: tuple[str, ...]):
        self.tok, self.ids, self.stop = tok, list(prompt_ids), stop
        self.shown = len(self.ids)  # ids whose text is in self.text (or the prompt)
        self.text = ""  # the completion so far
        self.sent = 0   # characters of self.text already handed out

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (text that is safe to send now, whether a stop string hit)."""
        self.ids.append(token)
        context = self.ids[max(0, self.shown - self.CONTEXT):self.shown]
        before = self.tok.decode(context)
        after = self.tok.decode(context + self.ids[self.shown:])
        if after.endswith("\ufffd") or not after.startswith(before):
            return "", False
        self.text += after[len(before):]
        self.shown = len(self.ids)
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            return self._send(min(hits)), True
        hold = max((k for s in self.stop for k in range(1, len(s))
                    if self.text.endswith(s[:k])), default=0)
        return self._send(len(self.text) - hold), False

    def flush(self) -> str:
        """Whatever was held back (the sequence ended without a stop string)."""
        return self._send(len(self.text))

    def _send(self, upto: int) -> str:
        piece = self.text[self.sent:max(upto, self.sent)]
        self.sent = max(upto, self.sent)
        return piece


@dataclass(eq=False)
class Sequence:
    """An admitted request: its cache slot, its length so far and its sampler state."""

    request: Request
    slot: int
    pos: int
    rng: np.random.Generator
    text: TextStream
    last: int = -1
    generated: int = 0


class Stats:
    """Counters the /metrics endpoint shows (written by the engine thread only)."""

    def __init__(self) -> None:
        self.prompt_tokens = self.completion_tokens = self.steps = self.batched_rows = 0
        self.finished: dict[str, int] = {}
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last 10 s

    def tokens(self, n: int) -> None:
        """Count n generated tokens now."""
        self.completion_tokens += n
        now = time.monotonic()
        self.recent.append((now, n))
        while self.recent and self.recent[0][0] < now - 10.0:
            self.recent.popleft()

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the last 10 seconds."""
        now = time.monotonic()
        return sum(n for t, n in list(self.recent) if t >= now - 10.0) / 10.0


class Engine:
    """Decodes every active request in one batched forward per step (continuous batching)."""

    def __init__(self, model: Any, tok: Any, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} "
                             f"and {max_queue}")
        self.model, self.tok = model.eval(), tok
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache = model.new_cache(max_batch)
        self.free = list(reversed(range(max_batch)))
        self.active: list[Sequence] = []
        self.waiting: deque[Request] = deque()
        self.stats = Stats()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    # ---- the caller's side (any thread) ----------------------------------------------
    def start(self) -> None:
        """Start the decoding thread."""
        self._running = True
        self._thread = threading.Thread(target=self._run, name="sllm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the decoding thread, fail what is still queued or active, free the cache."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        for req in list(self.waiting) + [s.request for s in self.active]:
            req.emit(Event("error", "the server is shutting down"))
        self.waiting.clear()
        self.active.clear()
        self.cache.release()

    def submit(self, request: Request) -> None:
        """Queue a request; raises QueueFull when max_queue requests wait for a slot."""
        with self._cond:
            room = self.max_queue + len(self.free)
            if len(self.waiting) >= room:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (--max-queue "
                                f"{self.max_queue}, all {self.max_batch} slots busy)")
            self.waiting.append(request)
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """Forget a request (its client went away): its slot is free before the next step."""
        with self._cond:
            request.cancelled = True
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
            self._cond.notify()

    def queue_depth(self) -> int:
        """Requests waiting for a slot."""
        return len(self.waiting)

    def busy_slots(self) -> int:
        """Slots holding a sequence."""
        return self.max_batch - len(self.free)

    # ---- the decoding thread ---------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while self._running and not self.waiting and not self.active:
                    self._cond.wait()
                if not self._running:
                    return
                self._drop_cancelled()
                admitted = []
                while self.waiting and self.free:
                    admitted.append((self.waiting.popleft(), self.free.pop()))
            for request, slot in admitted:
                self._guarded([request], functools.partial(self._prefill, request, slot), [slot])
            if self.active:
                seqs = list(self.active)
                self._guarded([s.request for s in seqs], functools.partial(self._step, seqs),
                              [s.slot for s in seqs])

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.active if s.request.cancelled]:
            self._leave(seq, "cancelled")

    def _guarded(self, requests: list[Request], work: Callable[[], None], slots: list[int]
                 ) -> None:
        """Run prefill or a step; on an error fail those requests, keep the server alive."""
        try:
            work()
        except Exception as e:  # noqa: BLE001 - one bad step must not stop the engine
            for seq in [s for s in self.active if s.slot in slots]:
                self.active.remove(seq)
            with self._cond:
                self.free.extend(s for s in slots if s not in self.free)
            for req in requests:
                req.emit(Event("error", f"generation failed: {e}"))

    def _prefill(self, request: Request, slot: int) -> None:
        p = request.sampling
        if request.cancelled:
            with self._cond:
                self.free.append(slot)
            return
        logits = self.model.decode(np.array([request.prompt_ids]), self.cache.slot(slot))
        seq = Sequence(request, slot, len(request.prompt_ids), np.random.default_rng(p.seed),
                       TextStream(self.tok, request.prompt_ids, p.stop))
        self.stats.prompt_tokens += len(request.prompt_ids)
        self.active.append(seq)
        self._advance(seq, logits[0])

    def _step(self, seqs: list[Sequence]) -> None:
        logits = self.model.decode_batch([s.last for s in seqs], self.cache,
                                         [s.slot for s in seqs], [s.pos for s in seqs])
        self.stats.steps += 1
        self.stats.batched_rows += len(seqs)
        for seq, row in zip(seqs, logits, strict=True):
            seq.pos += 1
            self._advance(seq, row)

    def _advance(self, seq: Sequence, logits: np.ndarray) -> None:
        """Sample the sequence's next token, send its text, finish it when it is done."""
        p = seq.request.sampling
        token = sample_next(logits, seq.rng, p.temperature, p.top_k, p.top_p)
        if token == self.tok.eos_id:
            self._finish(seq, "stop")
            return
        seq.last, seq.generated = token, seq.generated + 1
        self.stats.tokens(1)
        piece, stopped = seq.text.push(token)
        if piece:
            seq.request.emit(Event("text", piece))
        if stopped:
            self._finish(seq, "stop", flush=False)
        elif seq.generated >= p.max_tokens:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str, flush: bool = True) -> None:
        """Send the held-back text (unless a stop string cut it), then the end."""
        rest = seq.text.flush() if flush else ""
        if rest:
            seq.request.emit(Event("text", rest))
        self._leave(seq, reason)  # the slot is free before the client hears of the end
        seq.request.emit(Event("done", finish_reason=reason,
                               prompt_tokens=len(seq.request.prompt_ids),
                               completion_tokens=seq.generated))

    def _leave(self, seq: Sequence, reason: str) -> None:
        self.active.remove(seq)
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        with self._cond:
            self.free.append(seq.slot)
