"""Several LoRA adapters served over one base model in the same batch (`sllm serve
--adapter NAME=PATH`, POST/DELETE /v1/adapters).

An AdapterBank holds named adapters of one base (their A and B on the model's backend).
While it holds any, every weight one of them targets stands in the model as a
RoutedWeight: the model's matmul call site (SLLM._matmul) runs the base GEMM once over
all the rows of the batch, then adds each row's own adapter's low-rank delta with
`sllm.lora.lora_delta` (the training forward's helper). A forward of one adapter (a
prefill) uses that adapter's A and B. A mixed decode step uses, per weight, the A of every
adapter that targets it side by side (in, sum of ranks) and their B one under the other,
with a mask that keeps, in each row, its own adapter's columns times its scale (zero for
the bare base): two GEMMs per weight whatever the number of adapters, not two per adapter
plus a gather and a scatter (measured: bench/serve_adapters.py). Before each forward the
engine says which rows use which adapter (`route`): a prefill is one sequence (all its
rows one adapter), a decode step one row per sequence.

An adapter with trainable token rows (sllm/lora_tokens.py) keeps the shared base
embedding and head too: the bank holds each such adapter's rows' difference from the base
rows, adds it to the embedded input where a row's own adapter's ids occur
(`embed_fwd`), and adds that row's hidden state times its adapter's head difference
to the logit columns of its ids (`head_fwd`). Only those ids touch the rows.

Removing an adapter (`retire`) takes its name away at once, so no new request can ask for
it; the sequences already using it finish with it, and its tensors are freed when the
last of them has left (`sweep`, on the engine thread).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, LoraError
from .lora import Adapter, lora_delta
from .lora_tokens import row_deltas

if TYPE_CHECKING:
    from .model import SLLM
    from .quant import QTensor

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_adapter_name(name: Any, taken: set[str]) -> str:
    """An adapter's served name: 1-64 letters, digits, '.', '_' or '-' (a letter or digit
    first), not the base's model id nor another adapter's name."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"adapter name {str(name)[:80]!r} must be 1-64 letters, digits, '.', "
                          f"'_' or '-', beginning with a letter or digit")
    if name in taken:
        raise ConfigError(f"adapter name {name!r} is taken (the base model or another adapter "
                          f"is served under it); choose another")
    return name


@dataclass(eq=False)
class Served:
    """One adapter as the bank holds it: its name, its targets' (A, B) on the backend, s."""

    name: str
    adapter: Adapter
    tensors: dict[str, tuple[np.ndarray, np.ndarray]]
    scale: float
    rows: ServedRows | None = None  # its trainable token rows, if it has any
    freed: bool = False  # its tensors are gone: no forward may use it


@dataclass(eq=False)
class ServedRows:
    """A served adapter's token rows as differences from the base's rows: `embed` and
    `head` (n, C) for the ids, `lookup` token id -> its row or -1."""

    ids: np.ndarray
    lookup: np.ndarray
    embed: np.ndarray
    head: np.ndarray

    @classmethod
    def of(cls, model: SLLM, adapter: Adapter) -> ServedRows:
        """The rows of `adapter` against `model`'s (LoraError on a quantized embedding or
        head: the base rows a merge would replace are not float)."""
        ids = list(adapter.token_ids)
        deltas = list(row_deltas(model, adapter).values())  # the embedding's, then the head's
        lookup = np.full(model.config.vocab_size, -1, np.int64)
        lookup[ids] = np.arange(len(ids))
        return cls(np.asarray(ids, np.int64), lookup, deltas[0], deltas[-1])


@dataclass(eq=False)
class RoutedWeight:
    """A weight some served adapter targets: the base weight, and the bank that adds each
    routed adapter's delta after the base GEMM."""

    name: str
    base: np.ndarray | QTensor
    bank: AdapterBank


class AdapterBank:
    """Named adapters of `model` decoded side by side. `add`, `sweep` and `route` run on
    the thread that runs the model (the engine's); `get` and `retire` on any thread."""

    def __init__(self, model: SLLM):
        if model.adapter is not None:
            raise LoraError("this model has an adapter attached; serve the bare base and "
                            "name its adapters instead")
        self.model, self.backend = model, model.backend
        self.served: dict[str, Served] = {}
        self.retiring: list[Served] = []  # removed; freed once no sequence uses them
        self.groups: list[tuple[Served, np.ndarray | None]] = []  # this forward's routing
        self.stacks: dict[str, tuple[tuple[Served, ...], np.ndarray, np.ndarray]] = {}
        self._masks: dict[tuple[Served, ...], np.ndarray] = {}  # this forward's, per stack
        self._lock = threading.Lock()
        self._scratch: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self._bases: dict[str, Any] = {**model.parameters(), **model.quantized_weights()}

    # ---- names (any thread) ----------------------------------------------------------
    def get(self, name: str) -> Served | None:
        """The adapter served as `name`, or None."""
        with self._lock:
            return self.served.get(name)

    def names(self) -> list[str]:
        """The served adapters' names, in the order they were added."""
        with self._lock:
            return list(self.served)

    def retire(self, name: str) -> Served:
        """Stop serving `name` (KeyError when it is not served): no new request gets it;
        sequences using it finish, then `sweep` frees it."""
        with self._lock:
            served = self.served.pop(name)
            self.retiring.append(served)
        return served

    # ---- the model's thread ----------------------------------------------------------
    def add(self, name: str, adapter: Adapter, taken: tuple[str, ...] = ()) -> Served:
        """Serve `adapter` as `name` (checked; `taken`: other names in use, the base's
        model id). LoraError when the adapter was made for another base."""
        with self._lock:
            check_adapter_name(name, set(self.served) | set(taken))
        adapter.check_base(self.model)
        rows = ServedRows.of(self.model, adapter) if adapter.token_ids else None
        k = self.backend
        tensors = {t: (k.from_numpy(adapter.tensors[t + ".lora_a"]),
                       k.from_numpy(adapter.tensors[t + ".lora_b"])) for t in adapter.targets}
        served = Served(name, adapter, tensors, adapter.scale, rows)
        with self._lock:
            self.served[name] = served
        self._install()
        return served

    def sweep(self, in_use: set[Any]) -> None:
        """Free the retired adapters no sequence in `in_use` (their Served) still uses."""
        with self._lock:
            done = [s for s in self.retiring if s not in in_use]
            self.retiring = [s for s in self.retiring if s in in_use]
        if not done:
            return
        for served in done:
            served.freed = True
            for a, b in served.tensors.values():
                self.backend.free(a)
                self.backend.free(b)
        self._install()

    def route(self, adapters: list[Served | None]) -> None:
        """Which rows of the next forward use which adapter: row r uses adapters[r] (None:
        the bare base). A single entry (or all the same) covers every row: a prefill."""
        firsts: dict[Served, list[int]] = {}
        for row, served in enumerate(adapters):
            if served is not None and served.freed:
                raise LoraError(f"the adapter '{served.name}' has been removed")
            if served is not None:
                firsts.setdefault(served, []).append(row)
        if len(firsts) == 1 and len(next(iter(firsts.values()))) == len(adapters):
            self.groups = [(next(iter(firsts)), None)]
        else:
            self.groups = [(s, np.array(rows, np.int64)) for s, rows in firsts.items()]
        self._masks = {}

    def add_deltas(self, weight: str, out: Any, inp: Any) -> None:
        """out (N, out) += each row's routed adapter's delta on inp (N, in) (the base GEMM
        has written out)."""
        o, x = out.reshape(-1, out.shape[-1]), inp.reshape(-1, inp.shape[-1])
        if not self.groups:
            return
        if len(self._scratch) > 256:  # prompt lengths and batch sizes come and go
            self._release_scratch()
        served, rows = self.groups[0]
        if rows is None:  # one adapter on every row (a prefill): its own A and B
            if weight in served.tensors:
                a, b = served.tensors[weight]
                lora_delta(self.backend, o, x, a, b, served.scale,
                           self._buf("t", (len(o), a.shape[1])), self._buf("d", o.shape))
            return
        stack = self.stacks.get(weight)
        if stack is None:
            return
        members, a, b = stack
        lora_delta(self.backend, o, x, a, b, 1.0, self._buf("t", (len(o), a.shape[1])),
                   self._buf("d", o.shape), mask=self._mask(members, len(o)))

    def _row_groups(self, n: int) -> list[tuple[ServedRows, np.ndarray]]:
        """This forward's (token rows, batch rows using them) for the adapters with rows."""
        return [(s.rows, np.arange(n) if rows is None else rows)
                for s, rows in self.groups if s.rows is not None]

    def embed_fwd(self, x0: np.ndarray, tokens: np.ndarray) -> None:
        """x0 (B, T, C) += each batch row's adapter's row difference where its ids occur
        in tokens (B, T)."""
        for rows, batch in self._row_groups(len(tokens)):
            j = rows.lookup[tokens[batch]]  # (b, T): the row of each position's id, or -1
            b, t = np.nonzero(j >= 0)
            if len(b):
                x0[batch[b], t] += rows.embed[j[b, t]]

    def head_fwd(self, logits: np.ndarray, h: np.ndarray) -> None:
        """logits (B, T, V) columns of each batch row's adapter's ids += h (B, T, C) of
        that row times its head rows' difference."""
        for rows, batch in self._row_groups(len(logits)):
            logits[np.ix_(batch, np.arange(logits.shape[1]), rows.ids)] += h[batch] @ rows.head.T

    def _mask(self, members: tuple[Served, ...], n: int) -> np.ndarray:
        """(n, sum of the members' ranks): row r holds its adapter's scale in that
        adapter's columns of the stack, zeros elsewhere (this forward's routing)."""
        mask = self._masks.get(members)
        if mask is None:
            rows = dict(self.groups)
            mask = self._masks[members] = self._buf(f"mask{len(self._masks)}",
                                                   (n, sum(s.adapter.config.rank
                                                           for s in members)))
            mask.fill(0)
            col = 0
            for s in members:
                rank = s.adapter.config.rank
                if s in rows:
                    mask[rows[s], col:col + rank] = s.scale
                col += rank
        return mask

    def _install(self) -> None:
        """Stand a RoutedWeight in for every weight a held adapter targets (none: the
        base's own weights, the fused decode block back)."""
        with self._lock:
            held = list(self.served.values()) + self.retiring
        targets = {t for s in held for t in s.tensors}
        self.model.route_weights({t: RoutedWeight(t, self._bases[t], self)
                                  for t in sorted(targets)} or None,
                                 self if any(s.rows is not None for s in held) else None)
        self._release_scratch()
        for _, a, b in self.stacks.values():
            self.backend.free(a)
            self.backend.free(b)
        self.stacks = {}
        for t in sorted(targets):
            members = tuple(s for s in held if t in s.tensors)
            self.stacks[t] = (members, self.backend.from_numpy(np.concatenate(
                [s.tensors[t][0] for s in members], axis=1)), self.backend.from_numpy(
                np.concatenate([s.tensors[t][1] for s in members], axis=0)))

    def _buf(self, role: str, shape: tuple[int, ...]) -> np.ndarray:
        """A reusable work buffer on the backend per (role, shape)."""
        key = (role, shape)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = self.backend.empty(shape)
        return buf

    def _release_scratch(self) -> None:
        for buf in self._scratch.values():
            self.backend.free(buf)
        self._scratch.clear()
