"""Several LoRA adapters served over one base model in the same batch (`sllm serve
--adapter NAME=PATH`, POST/DELETE /v1/adapters).

An AdapterBank holds named adapters of one base (their A and B on the model's backend).
While it holds any, every weight one of them targets stands in the model as a
RoutedWeight: the model's matmul call site (SLLM._matmul) runs the base GEMM once over
all the rows of the batch, then for each adapter the rows that use it get its low-rank
delta — gathered, `sllm.lora.lora_delta` (the training forward's helper), scattered back.
Rows of the bare base get nothing more. Before each forward the engine says which rows
use which adapter (`route`): a prefill is one sequence (all its rows one adapter), a
decode step one row per sequence.

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
    freed: bool = False  # its tensors are gone: no forward may use it


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
        k = self.backend
        tensors = {t: (k.from_numpy(adapter.tensors[t + ".lora_a"]),
                       k.from_numpy(adapter.tensors[t + ".lora_b"])) for t in adapter.targets}
        served = Served(name, adapter, tensors, adapter.scale)
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

    def add_deltas(self, weight: str, out: Any, inp: Any) -> None:
        """out (N, out) += each routed adapter's delta on its rows of inp (N, in) (the base
        GEMM has written out)."""
        o, x = out.reshape(-1, out.shape[-1]), inp.reshape(-1, inp.shape[-1])
        if len(self._scratch) > 256:  # prompt lengths and batch sizes come and go
            self._release_scratch()
        for served, rows in self.groups:
            ab = served.tensors.get(weight)
            if ab is None:
                continue
            a, b = ab
            if rows is None:  # every row: no gather
                lora_delta(self.backend, o, x, a, b, served.scale,
                           self._buf("t", (len(o), a.shape[1])), self._buf("d", o.shape))
                continue
            n = len(rows)
            xg, og = self._buf("x", (n, x.shape[1])), self._buf("o", (n, o.shape[1]))
            np.take(x, rows, axis=0, out=xg)
            np.take(o, rows, axis=0, out=og)
            lora_delta(self.backend, og, xg, a, b, served.scale,
                       self._buf("t", (n, a.shape[1])), self._buf("d", og.shape))
            o[rows] = og

    def _install(self) -> None:
        """Stand a RoutedWeight in for every weight a held adapter targets (none: the
        base's own weights, the fused decode block back)."""
        with self._lock:
            held = list(self.served.values()) + self.retiring
        targets = {t for s in held for t in s.tensors}
        self.model.route_weights({t: RoutedWeight(t, self._bases[t], self)
                                  for t in sorted(targets)} or None)
        self._release_scratch()

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
