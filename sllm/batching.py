"""Continuous batching: concurrent generation requests decoded together.

The Engine owns a model and a KV cache of `max_batch` slots and runs in one background
thread. `submit()` queues a request (a bounded queue: `QueueFull` when it is full).
Between steps the engine drops cancelled sequences (their slots are free at once), admits
waiting requests into free slots (the prompts admitted together in one prefill forward,
`model.prefill_batch`, each into its own slot; see _admit), then runs one
`model.decode_batch` over every active sequence, each at
its own position in its own slot, and hands each its next token. A sequence that is
finished leaves at once and its slot is reused by the next waiting request.

Sampling per sequence is exactly `sllm.generate.stream`'s: the same sllm.sampler.Sampler
with a generator seeded by the request's seed, so a request's output does not depend on
what else is in the batch, and greedy output equals `sllm generate --temperature 0`. Each
sequence carries its own constraint (sllm.constrain) when its request has a grammar.

A request for n choices waits for n free slots: its prompt is prefilled once and the KV
cache copied to the other n - 1 slots; choice i > 0 draws from a generator seeded by
(seed, i), so choice 0 is the answer the same request with n = 1 gets. With `echo`, the
prompt's own log-probabilities come first (one full forward of the prompt).
"""
from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detok import TextStream
from .finite import first_nonfinite
from .sampler import Sampler, SamplingParams, log_softmax, top_logprobs


class QueueFull(Exception):
    """The engine's queue holds --max-queue requests already; try again later."""


class EngineDown(QueueFull):
    """The decoding thread has stopped (a kernel ended it): no request can be served."""


@dataclass(frozen=True)
class Sampling:
    """How one request is decoded (OpenAI's names; top_k, min_p, repetition_penalty as
    in vLLM). logprobs: None for none, k >= 0 for the chosen token's and the k likeliest;
    grammar: a sllm.constrain.Grammar every choice is held to."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_p: float | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    n: int = 1
    echo: bool = False
    grammar: Any = None

    def params(self) -> SamplingParams:
        """The sampler's settings."""
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.min_p, self.seed,
                              self.frequency_penalty, self.presence_penalty,
                              self.repetition_penalty, self.logit_bias, self.logprobs)


@dataclass(frozen=True)
class TokenLogprob:
    """A token of the answer (or of the prompt, with echo): its id, its text as decoded in
    place, its log-probability (None for the prompt's first token) and the likeliest
    alternatives as (id, text, logprob)."""

    token: int
    text: str
    logprob: float | None
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(slots=True)
class Event:
    """What the engine tells a request: a text piece (with its tokens' log-probabilities
    when asked), the prompt's log-probabilities (echo), the end of one choice, or an
    error. `index` is the choice (0..n-1). Treat it as read-only (not frozen: one is made
    per token, and a frozen dataclass costs three times as much to make)."""

    kind: str  # "text" | "prompt" | "done" | "error" | "timeout" (never admitted in time)
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    index: int = 0
    tokens: tuple[TokenLogprob, ...] = ()
    note: str | None = None


@dataclass(eq=False)
class Request:
    """A prompt (token ids) to continue; `emit` receives its Events from the engine thread."""

    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    cancelled: bool = False
    id: int = field(default_factory=itertools.count().__next__)
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None  # when its prefill began (time.monotonic())
    timeout: float | None = None  # seconds from submission to its deadline (see _expire)
    adapter: Any = None  # a sllm.lora_bank.Served: decoded with that adapter (None: the base)

    def expired(self, now: float) -> bool:
        """Whether the request is past its deadline."""
        return self.timeout is not None and now > self.submitted + self.timeout

    def deadline_note(self) -> str:
        """Why an answer ended at the deadline."""
        return (f"the request reached its deadline of {self.timeout:g} s (--request-timeout); "
                f"the answer is cut here")


@dataclass(eq=False)
class Sequence:
    """One choice of an admitted request: its cache slot, its length so far, its sampler."""

    request: Request
    slot: int
    pos: int
    sampler: Sampler
    text: TextStream
    index: int = 0
    last: int = -1
    generated: int = 0
    plain: bool = False  # greedy over the logits as they are, nothing else asked: a step's
    # argmax over the batch is its token (Sampler.next would return just that)


def token_texts(tok: Any, context: list[int], tokens: list[int]) -> dict[int, str]:
    """The text each of `tokens` adds after `context` (its last few ids), as decode()
    writes it; the context is decoded once, each distinct token once more."""
    ctx = context[-TextStream.CONTEXT:]
    before, out = tok.decode(ctx), {}
    for t in tokens:
        if t not in out:
            after = tok.decode(ctx + [t])
            out[t] = after[len(before):] if after.startswith(before) else tok.decode([t])
    return out


def logprob_entry(tok: Any, context: list[int], token: int, logprob: float | None,
                  top: list[tuple[int, float]]) -> TokenLogprob:
    """A TokenLogprob with every text decoded in place after `context`."""
    text = token_texts(tok, context, [token] + [t for t, _ in top])
    return TokenLogprob(token, text[token], logprob, tuple((t, text[t], lp) for t, lp in top))


def prompt_logprobs(model: Any, tok: Any, ids: list[int], k: int) -> tuple[TokenLogprob, ...]:
    """Each prompt token's log-probability given the ones before it (echo), from one
    forward of the whole prompt; the first token has none."""
    logp = log_softmax(model.forward(np.array([ids]))[0])
    out = [logprob_entry(tok, [], ids[0], None, [])]
    for i in range(1, len(ids)):
        row = logp[i - 1]
        context = ids[max(0, i - TextStream.CONTEXT):i]  # all token_texts reads
        out.append(logprob_entry(tok, context, ids[i], float(row[ids[i]]), top_logprobs(row, k)))
    return tuple(out)


class Stats:
    """Counters the /metrics endpoint shows (written by the engine thread only)."""

    def __init__(self) -> None:
        self.prompt_tokens = self.completion_tokens = self.steps = self.batched_rows = 0
        self.unmarked = 0  # tokens counted since the last mark()
        self.finished: dict[str, int] = {}
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last 10 s

    def tokens(self, n: int) -> None:
        """Count n generated tokens (timed at the next mark())."""
        self.completion_tokens += n
        self.unmarked += n

    def mark(self) -> None:
        """Time the tokens counted since the last mark (once a step, not once a token)."""
        if self.unmarked:
            now = time.monotonic()
            self.recent.append((now, self.unmarked))
            self.unmarked = 0
            while self.recent and self.recent[0][0] < now - 10.0:
                self.recent.popleft()

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the last 10 seconds."""
        now = time.monotonic()
        return sum(n for t, n in list(self.recent) if t >= now - 10.0) / 10.0


class Engine:
    """Decodes every active request in one batched forward per step (continuous batching)."""

    PREFILL_TOKENS = 1024  # the most (padded) prompt tokens one batched prefill forward takes

    def __init__(self, model: Any, tok: Any, max_batch: int = 8, max_queue: int = 64,
                 adapters: Any = None):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} "
                             f"and {max_queue}")
        self.model, self.tok = model.eval(), tok
        self.eos_id = tok.eos_id
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache = model.new_cache(max_batch)
        self.free = list(reversed(range(max_batch)))
        self.active: list[Sequence] = []
        self.waiting: deque[Request] = deque()
        self.jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self.stats = Stats()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.died: str | None = None  # why the decoding thread ended on its own, if it did
        self.adapters = adapters  # a sllm.lora_bank.AdapterBank over model, or None

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
        for _, future in self.jobs:
            future.set_exception(RuntimeError("the server is shutting down"))
        self.jobs.clear()
        self.waiting.clear()
        self.active.clear()
        self.cache.release()

    def submit(self, request: Request) -> None:
        """Queue a request; raises QueueFull when max_queue requests wait for a slot,
        ValueError when it asks for more choices than there are slots."""
        if self.died is not None:
            raise EngineDown(f"the engine stopped ({self.died}); restart the server")
        if request.sampling.n > self.max_batch:
            raise ValueError(f"n = {request.sampling.n} choices need as many KV-cache slots; "
                             f"this engine has {self.max_batch}")
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

    def run_job(self, fn: Callable[[], Any]) -> Future:
        """Run fn() on the engine thread between decode steps (the model is not shared
        across threads); its result or exception arrives on the returned Future."""
        future: Future = Future()
        with self._cond:
            if not self._running:
                raise RuntimeError("the engine is not running")
            self.jobs.append((fn, future))
            self._cond.notify()
        return future

    def queue_depth(self) -> int:
        """Requests waiting for a slot."""
        return len(self.waiting)

    def busy_slots(self) -> int:
        """Slots holding a sequence."""
        return self.max_batch - len(self.free)

    def alive(self) -> bool:
        """Whether the decoding thread runs (GET /health answers 503 when it does not)."""
        return self._running and self.died is None and self._thread is not None \
            and self._thread.is_alive()

    # ---- the decoding thread ---------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - the thread's last word: fail, not hang
            self.died = f"{type(e).__name__}: {e}"
            with self._cond:
                stranded = list(self.waiting) + [s.request for s in self.active]
                self.waiting.clear()
            for req in stranded:
                req.emit(Event("error", f"generation failed: the engine stopped ({self.died})"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not (self.waiting or self.active or self.jobs):
                    self._cond.wait()
                if not self._running:
                    return
                jobs = list(self.jobs)
                self.jobs.clear()
                self._drop_cancelled()
                self._sweep_adapters()
                self._expire(time.monotonic())
                admitted = []
                while self.waiting and len(self.free) >= self.waiting[0].sampling.n:
                    request = self.waiting.popleft()
                    admitted.append((request, [self.free.pop() for _ in
                                               range(request.sampling.n)]))
            for fn, future in jobs:
                _run_job(fn, future)
            if admitted:
                self._admit(admitted)
            if self.active:
                seqs = list(self.active)
                self._guarded(list({s.request: None for s in seqs}),
                              functools.partial(self._step, seqs), [s.slot for s in seqs])
            self.stats.mark()

    def _route(self, adapters: list[Any]) -> None:
        """Tell the adapter bank which rows of the next forward use which adapter."""
        if self.adapters is not None:
            self.adapters.route(adapters)

    def _sweep_adapters(self) -> None:
        """Free removed adapters once no sequence, active or waiting, uses them (the
        caller holds the lock)."""
        if self.adapters is not None and self.adapters.retiring:
            self.adapters.sweep({s.request.adapter for s in self.active}
                                | {r.adapter for r in self.waiting})

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.active if s.request.cancelled]:
            self._leave(seq, "cancelled")

    def _expire(self, now: float) -> None:
        """End what is past its deadline: a waiting request gets a "timeout" event (it never
        started), an active sequence ends as if it reached max_tokens ("length", with a
        note), keeping the text it has."""
        for req in [r for r in self.waiting if r.expired(now)]:
            self.waiting.remove(req)
            waited = now - req.submitted
            req.emit(Event("timeout", f"the request waited {waited:.1f} s for a free slot and "
                                      f"reached its deadline (--request-timeout); retry later"))
        for seq in [s for s in self.active if s.request.expired(now)]:
            self._finish(seq, "length", note=seq.request.deadline_note())

    def _guarded(self, requests: list[Request], work: Callable[[], Any], slots: list[int]
                 ) -> Any:
        """Run prefill or a step and return what it returns; on an error fail those
        requests, return None and keep the server alive (a kernel calling sys.exit
        included). Anything else still fails these requests before it ends the thread
        (then _run fails the rest and /health says 503)."""
        try:
            return work()
        except BaseException as e:
            for seq in [s for s in self.active if s.slot in slots]:
                self.active.remove(seq)
            with self._cond:
                self.free.extend(s for s in slots if s not in self.free)
            for req in requests:
                req.emit(Event("error", f"generation failed: {type(e).__name__}: {e}"))
            if not isinstance(e, (Exception, SystemExit)):
                raise

    def _admit(self, admitted: list[tuple[Request, list[int]]]) -> None:
        """Prefill the admitted requests' prompts: those of one adapter together, in
        forwards of at most PREFILL_TOKENS (padded) tokens (SLLM.prefill_batch, grouped by
        prefill_groups), a request alone or after a failed batch by itself (so an error
        reaches its own request)."""
        ready = [(r, slots) for r, slots in admitted
                 if self._guarded([r], functools.partial(self._prepare, r, slots), slots)]
        for group in prefill_groups(ready, self.PREFILL_TOKENS):
            if len(group) == 1 or not hasattr(self.model, "prefill_batch"):
                for request, slots in group:
                    self._guarded([request], functools.partial(self._prefill, request, slots),
                                  slots)
                continue
            try:
                self._route([group[0][0].adapter])
                logits = self.model.prefill_batch([r.prompt_ids for r, _ in group], self.cache,
                                                  [slots[0] for _, slots in group])
            except (Exception, SystemExit):  # noqa: BLE001 - each alone: the error reaches its own
                for request, slots in group:
                    self._guarded([request], functools.partial(self._prefill, request, slots),
                                  slots)
                continue
            for (request, slots), row in zip(group, logits, strict=True):
                self._guarded([request], functools.partial(self._start, request, slots, row),
                              slots)

    def _prepare(self, request: Request, slots: list[int]) -> bool:
        """A request's admission before its prefill (the prompt's log-probabilities with
        echo); False when it needs no prefill (cancelled, or scoring the prompt only)."""
        p, ids = request.sampling, request.prompt_ids
        request.admitted = time.monotonic()
        if request.cancelled:
            with self._cond:
                self.free.extend(slots)
            return False
        if p.echo:
            k = p.logprobs or 0
            self._route([request.adapter])
            request.emit(Event("prompt", tokens=prompt_logprobs(self.model, self.tok, ids, k)))
        self.stats.prompt_tokens += len(ids)
        if p.max_tokens == 0:  # scoring the prompt only (echo)
            with self._cond:
                self.free.extend(slots)
            for i in range(p.n):
                request.emit(Event("done", finish_reason="length", prompt_tokens=len(ids),
                                   index=i))
            return False
        return True

    def _prefill(self, request: Request, slots: list[int]) -> None:
        """One request's prompt alone (decode() into its first slot), then its start."""
        self._route([request.adapter])
        logits = self.model.decode(np.array([request.prompt_ids]),
                                   self.cache.slot(slots[0]))[0]
        self._start(request, slots, logits)

    def _start(self, request: Request, slots: list[int], logits: np.ndarray) -> None:
        """The request's sequences, from its prompt's KV (in slots[0]) and next-token
        logits: the n - 1 other choices copy the prompt's KV; each draws its first token."""
        p, ids = request.sampling, request.prompt_ids
        for i, slot in enumerate(slots):
            if i:
                self.cache.copy_slot(slots[0], slot, len(ids))
            sampler = self._sampler(request, i)
            seq = Sequence(request, slot, len(ids), sampler,
                           TextStream(self.tok, [] if p.grammar else ids, p.stop), index=i,
                           plain=sampler.as_is and p.temperature <= 0 and p.logprobs is None)
            self.active.append(seq)
            self._advance(seq, logits)

    def _sampler(self, request: Request, i: int) -> Sampler:
        """Choice i's sampler: seed for choice 0, (seed, i) for the others."""
        p = request.sampling
        seed = p.seed if i == 0 or p.seed is None else [p.seed, i]
        constraint = p.grammar.start() if p.grammar is not None else None
        return Sampler(p.params(), self.model.config.vocab_size, request.prompt_ids,
                       constraint, self.tok.eos_id, np.random.default_rng(seed))

    def _step(self, seqs: list[Sequence]) -> None:
        self._route([s.request.adapter for s in seqs])
        # the model's own logits buffer (no copy): read here, before the next step
        logits = self.model.decode_batch([s.last for s in seqs], self.cache,
                                         [s.slot for s in seqs], [s.pos for s in seqs], False)
        self.stats.steps += 1
        self.stats.batched_rows += len(seqs)
        # once for all rows: the finite check (else each row's own) and the greedy picks
        finite = first_nonfinite(logits) is None
        picks = logits.argmax(axis=1).tolist() if finite else [None] * len(seqs)
        take = self._take
        for i, (seq, pick) in enumerate(zip(seqs, picks, strict=True)):
            seq.pos += 1
            if seq.plain and pick is not None:
                take(seq, pick)
            else:  # (a row of the logits only where a sampler reads it)
                self._advance(seq, logits[i], finite, pick)

    def _advance(self, seq: Sequence, logits: np.ndarray, checked: bool = False,
                 argmax: int | None = None) -> None:
        """Sample the sequence's next token, then _take it (checked: the logits are known
        to be finite; argmax: theirs)."""
        p = seq.request.sampling
        choice = seq.sampler.next(logits, p.max_tokens - seq.generated, checked, argmax)
        if choice is None:
            self._finish(seq, "stop", note="the grammar allows no token of this vocabulary "
                                           "here; the output stops where it could not go on")
            return
        entry = None if choice.logprob is None or choice.token == self.tok.eos_id else \
            logprob_entry(self.tok, seq.text.ids, choice.token, choice.logprob, choice.top)
        self._take(seq, choice.token, entry)

    def _take(self, seq: Sequence, token: int, entry: TokenLogprob | None = None) -> None:
        """Send the sequence's new token's text (and log-probabilities), finish it when it
        is done."""
        if token == self.eos_id:
            self._finish(seq, "stop")
            return
        seq.last, seq.generated = token, seq.generated + 1
        self.stats.tokens(1)
        piece, stopped = seq.text.push(token)
        if entry:
            seq.request.emit(Event("text", piece, index=seq.index, tokens=(entry,)))
        elif piece:
            seq.request.emit(Event("text", piece, index=seq.index))
        constraint = seq.sampler.constraint
        p = seq.request.sampling
        if stopped:
            self._finish(seq, "stop", flush=False)
        elif constraint is not None and constraint.finished():
            self._finish(seq, "stop")
        elif seq.generated >= p.max_tokens:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str, flush: bool = True,
                note: str | None = None) -> None:
        """Send the held-back text (unless a stop string cut it), then the end."""
        rest = seq.text.flush() if flush else ""
        if rest:
            seq.request.emit(Event("text", rest, index=seq.index))
        self._leave(seq, reason)  # the slot is free before the client hears of the end
        seq.request.emit(Event("done", finish_reason=reason,
                               prompt_tokens=len(seq.request.prompt_ids),
                               completion_tokens=seq.generated, index=seq.index, note=note))

    def _leave(self, seq: Sequence, reason: str) -> None:
        self.active.remove(seq)
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        with self._cond:
            self.free.append(seq.slot)


def prefill_groups(ready: list[tuple[Request, list[int]]], limit: int
                   ) -> list[list[tuple[Request, list[int]]]]:
    """The admitted requests in prefill forwards: those of one adapter together, in order
    of admission, a forward closed where its padded tokens (count x the longest prompt)
    would pass `limit` or twice the prompts' own."""
    by_adapter: dict[Any, list[tuple[Request, list[int]]]] = {}
    for item in ready:
        by_adapter.setdefault(item[0].adapter, []).append(item)
    groups: list[list[tuple[Request, list[int]]]] = []
    for items in by_adapter.values():
        group: list[tuple[Request, list[int]]] = []
        longest = real = 0
        for item in items:
            n = len(item[0].prompt_ids)
            padded = (len(group) + 1) * max(longest, n)
            if group and (padded > limit or padded > 2 * (real + n)):
                groups.append(group)
                group, longest, real = [], 0, 0
            group.append(item)
            longest, real = max(longest, n), real + n
        groups.append(group)
    return groups


def _run_job(fn: Callable[[], Any], future: Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except Exception as e:  # noqa: BLE001 - the caller receives it
        future.set_exception(e)
