"""One sampler for `generate()`, `sllm generate`, `sllm chat` and the server's engine.

A row of logits becomes a token in a fixed order: logit_bias is added; repetition,
frequency and presence penalties are applied; a constraint (sllm.constrain) masks the
tokens its grammar cannot take next; then temperature, top-k, top-p and min-p shape the
distribution the token is drawn from (temperature 0: the likeliest allowed token).

Log-probabilities reported with a token (`logprobs`) are the model's own: log-softmax of
the raw logits, before any of the above, as vLLM reports them by default, so that the
log-probability of a text is the same however it was sampled and equals what `sllm eval`
computes.

JavaScript twin: sllm/web/sllm.js's sampleNext (temperature, top-k, top-p; the browser's copy;
tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import validate
from .finite import check_logits

MAX_LOGPROBS = 20
MAX_BIAS = 100.0


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn (OpenAI's names; top_k, min_p and repetition_penalty as in
    vLLM). logprobs: None reports nothing, 0 the chosen token's, k also the k likeliest."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None

    def check(self, vocab_size: int | None = None) -> SamplingParams:
        """self, or ConfigError naming the first setting outside its range."""
        validate.check_number("temperature", self.temperature, 0.0, 1e6)
        validate.check_int("top_k", self.top_k, 1, optional=True)
        validate.check_number("top_p", self.top_p, 0.0, 1.0, lo_open=True, optional=True)
        validate.check_number("min_p", self.min_p, 0.0, 1.0, optional=True)
        validate.check_int("seed", self.seed, 0, 2**63 - 1, optional=True)
        validate.check_number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        validate.check_number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        validate.check_number("repetition_penalty", self.repetition_penalty, 0.0, 10.0, lo_open=True)
        validate.check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS, optional=True)
        hi = (vocab_size - 1) if vocab_size else 2**31 - 1
        for token, bias in self.logit_bias:
            validate.check_int("logit_bias token id", token, 0, hi)
            validate.check_number("logit_bias value", bias, -MAX_BIAS, MAX_BIAS)
        return self


@dataclass
class Choice:
    """A sampled token, its log-probability and (logprobs > 0) the likeliest alternatives."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


def greedy(logits: np.ndarray) -> int:
    """The likeliest token of a row of logits as it is (widening to float64 keeps the order);
    the array's own argmax: np.argmax's wrapper costs 1 us a token."""
    return int(np.asarray(logits).argmax())


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None,
                min_p: float | None = None) -> int:
    """One token id from a (V,) row of logits (-inf: not allowed). temperature 0 means
    greedy."""
    if temperature <= 0:
        return greedy(logits)
    z = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):
        z = z / temperature
    if not np.isfinite(z.max()):  # a tiny (even subnormal) temperature overflows the
        return int(np.argmax(logits))  # scaled logits: its limit is the greedy choice
    if top_k is not None and 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    with np.errstate(over="ignore"):  # a far-below-the-max logit may overflow to -inf: p 0
        probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p is not None and 0 < top_p < 1:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        cut = int(np.searchsorted(cumulative, top_p)) + 1  # smallest set reaching top_p
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[:cut]] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    if min_p:  # drop tokens less likely than min_p times the likeliest
        probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def top_logprobs(logp: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k likeliest (token, logprob) of a (V,) row, likeliest first (ties: lower id)."""
    if k <= 0:
        return []
    # k argmax passes (argmax takes the lowest id among equals) beat a partition of the
    # row several times over for k <= MAX_LOGPROBS
    rest = np.array(logp, dtype=np.float64)
    out: list[tuple[int, float]] = []
    for _ in range(min(k, logp.size)):
        t = int(rest.argmax())
        if rest[t] == -np.inf:  # only -inf is left: the lowest such ids not taken yet
            taken = {i for i, _ in out}
            return out + [(int(i), -np.inf) for i in np.flatnonzero(logp == -np.inf)
                          if int(i) not in taken][:k - len(out)]
        out.append((t, float(logp[t])))
        rest[t] = -np.inf
    return out


class Sampler:
    """The per-sequence state of sampling: the generator, the counts of tokens so far
    (penalties) and the constraint. `next(logits, remaining)` draws one token, or returns
    None when the constraint allows no token at all."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: Any = (),
                 constraint: Any = None, eos_id: int | None = None,
                 rng: np.random.Generator | None = None):
        self.p, self.constraint, self.eos_id = params, constraint, eos_id
        self._rng = rng  # made on the first draw that needs it (see rng)
        self.output_counts = np.zeros(vocab_size, np.int64)  # frequency/presence
        self.seen = np.zeros(vocab_size, bool)  # repetition: prompt and output
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        self.seen[prompt[(prompt >= 0) & (prompt < vocab_size)]] = True
        self.bias: np.ndarray | None = None
        if params.logit_bias:
            self.bias = np.zeros(vocab_size)
            for token, b in params.logit_bias:
                self.bias[token] += b
        self.as_is = (self.bias is None and params.repetition_penalty == 1.0  # adjusted():
                      and not params.frequency_penalty and not params.presence_penalty
                      and constraint is None)  # the logits as they are

    @property
    def rng(self) -> np.random.Generator:
        """The generator of the draws: the one given, else default_rng(seed), made on first
        use (20 us: a greedy sequence never needs one)."""
        if self._rng is None:
            self._rng = np.random.default_rng(self.p.seed)
        return self._rng

    def adjusted(self, logits: np.ndarray, remaining: int) -> np.ndarray | None:
        """The logits after bias, penalties and the constraint's mask (float64; `logits`
        itself, uncopied, when there is none of them); None when the constraint allows no
        token at all."""
        p = self.p
        if self.as_is:
            return logits  # a plain decode: nothing to add, no copy
        z = np.array(logits, dtype=np.float64)
        if self.bias is not None:
            z += self.bias
        if p.repetition_penalty != 1.0 and self.seen.any():
            r = p.repetition_penalty
            z = np.where(self.seen, np.where(z > 0, z / r, z * r), z)
        if p.frequency_penalty or p.presence_penalty:
            z -= p.frequency_penalty * self.output_counts
            z -= p.presence_penalty * (self.output_counts > 0)
        if self.constraint is not None:
            allow = self.constraint.allowed_mask(remaining, self.eos_id)
            if not allow.any():
                return None
            z = np.where(allow, z, -np.inf)
        return z

    def next(self, logits: np.ndarray, remaining: int = 1 << 30, checked: bool = False,
             argmax: int | None = None) -> Choice | None:
        """Draw the next token (and its log-probabilities when asked); None: nothing is
        allowed (the constraint's grammar cannot continue with this vocabulary).
        checked: the caller found every logit finite (one check over a batch's rows);
        argmax: the caller's argmax of `logits` (one over a batch's rows), the token when
        this draw is greedy over the logits as they are."""
        p = self.p
        if not checked:
            check_logits(logits, "next-token logits")  # NaN would be drawn as some token
        z = self.adjusted(logits, remaining)
        if z is None:
            return None
        if argmax is not None and p.temperature <= 0 and z is logits:
            token = argmax
        elif p.temperature <= 0:  # greedy: sample_next's, without a generator
            token = greedy(z)
        else:
            token = sample_next(z, self.rng, p.temperature, p.top_k, p.top_p, p.min_p)
        if not self.as_is:  # only the penalties read the counts
            self.output_counts[token] += 1
            self.seen[token] = True
        if self.constraint is not None and token != self.eos_id:
            self.constraint.advance(token)
        if p.logprobs is None:
            return Choice(token)
        logp = log_softmax(logits)
        return Choice(token, float(logp[token]), top_logprobs(logp, p.logprobs))
