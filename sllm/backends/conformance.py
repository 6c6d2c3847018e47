"""The conformance suite: every kernel of a backend against the numpy reference.

Modelled on ggml's test-backend-ops. The cases (sllm/backends/cases.py) give each kernel
of the contract its awkward shapes and an argument builder. The checker runs the kernel on
the backend and on the reference with the same arguments and compares every output element:

    |mine - ref| <= atol * scale + rtol * |ref|,   scale = max(1, max |ref|)

Beyond single kernels it checks the whole model (logits, loss, every gradient, with
dropout on) and generation (KV-cache decode logits, greedy ids) against the numpy backend.
`sllm check-backend NAME [-k KERNEL] [--perf]` prints the report and exits non-zero on any
failure; `--perf` also times each kernel against the reference.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..timing import timed
from .base import KERNELS, LLAMA_KERNELS, OPTIONAL_KERNELS, Backend
from .cases import ATOL, CASES, MODEL_CASES, RTOL, Args, KernelCases, PackedFloats, PackedRows, case_label, case_rng


@dataclass(frozen=True)
class Check:
    """One output of one case compared with the reference."""

    kernel: str
    case: str
    output: str
    error: float     # |mine - ref| at the element that used most of its tolerance
    allowed: float   # the tolerance at that element
    passed: bool


@dataclass
class Report:
    """Every check of a run, and the timings when --perf was asked for."""

    backend: str
    checks: list[Check] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # llama cases of a GPT-2-only backend

    @property
    def passed(self) -> bool:
        """True when every check passed (and at least one ran)."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]


def compare(kernel: str, case: str, output: str, mine: Any, ref: Any, rtol: float = RTOL,
            atol: float = ATOL, scale: float | None = None) -> Check:
    """Compare arrays elementwise: |mine - ref| <= atol * scale + rtol * |ref|."""
    mine = np.atleast_1d(np.asarray(mine, dtype=np.float64))
    ref = np.atleast_1d(np.asarray(ref, dtype=np.float64))
    if mine.shape != ref.shape:
        return Check(kernel, case, f"{output} shape {mine.shape} != {ref.shape}",
                     math.inf, 0.0, False)
    if ref.size == 0:
        return Check(kernel, case, output, 0.0, 0.0, True)
    if scale is None:
        scale = max(1.0, float(np.nanmax(np.abs(ref))))
    diff = np.abs(mine - ref)
    diff[np.isnan(mine) != np.isnan(ref)] = math.inf
    diff[np.isnan(mine) & np.isnan(ref)] = 0.0
    allowed = atol * scale + rtol * np.nan_to_num(np.abs(ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / allowed)
    worst = int(np.argmax(ratio))
    return Check(kernel, case, output, float(diff.flat[worst]), float(allowed.flat[worst]),
                 bool(ratio.flat[worst] <= 1.0))


# ---- running one kernel on a backend and on the reference ----------------------------------
def _reference_backend() -> Backend:
    from .numpy_ref import NumpyBackend
    return NumpyBackend()


def on_backend(backend: Backend, args: Args, spec: KernelCases,
               in_place: bool = False) -> Args:
    """Copies of args owned by `backend`, with the spec's aliases and setup applied."""
    out = [_own(backend, a) for a in args]
    for i, j in spec.aliases if in_place else ():
        out[j] = out[i]
    if spec.setup is not None:
        spec.setup(backend, out)
    return out

def _own(backend: Backend, arg: Any) -> Any:
    """A backend-owned copy of an array argument (each array of a tuple: decode_block's
    params; quantized rows packed as the backend packs them); anything else as it is."""
    if isinstance(arg, np.ndarray):
        return backend.from_numpy(arg, arg.dtype)
    if isinstance(arg, PackedRows):
        return backend.pack_q(backend.from_numpy(arg.rows, np.uint8), arg.qtype)
    if isinstance(arg, PackedFloats):
        return backend.pack_weight(backend.from_numpy(arg.weight, np.float32), arg.trans_w)
    if isinstance(arg, tuple):
        return tuple(_own(backend, a) for a in arg)
    return arg


def output_names(kernel: str) -> list[str]:
    """The parameter names of a kernel, from its declaration in base.Backend."""
    return list(inspect.signature(getattr(Backend, kernel)).parameters)[1:]

def check_kernel(backend: Backend, kernel: str, index: int) -> list[Check]:
    """Run case `index` of `kernel` on the backend and on the reference; compare outputs."""
    spec = CASES[kernel]
    shape = dict(spec.shapes[index])
    in_place = bool(shape.pop("in_place", False))
    args = spec.args(case_rng(kernel, index), **shape)
    reference = _reference_backend()
    ref, mine = on_backend(reference, args, spec, in_place), on_backend(backend, args, spec, in_place)
    ref_value = getattr(reference, kernel)(*ref)
    value = getattr(backend, kernel)(*mine)
    names = output_names(kernel)
    label = case_label(spec.shapes[index])
    checks = [compare(kernel, label, names[i], mine[i], ref[i], spec.rtol, spec.atol)
              for i in spec.outputs if ref[i] is not None]
    if spec.returns:
        checks.append(compare(kernel, label, "returned value", value, ref_value, spec.rtol,
                              0.0))
    return checks

# ---- the whole model and generation ----------------------------------------------------------
def _model_pair(backend: Backend, tie: bool, act: str, arch: str = "gpt2",
                kv: int | None = None) -> tuple[Any, Any]:
    """The same small model (dropout 0.1) on the numpy backend and on `backend`."""
    from ..config import ModelConfig
    from ..model import SLLM
    heads = 6 if arch == "llama" else 3  # llama: an even head dim (4) for the rotary pairs
    cfg = ModelConfig(vocab_size=67, embedding_dim=24, num_layers=2, num_heads=heads,
                      ffn_hidden_dim=40, dropout=0.1, max_seq_len=16, activation=act,
                      tie_embeddings=tie, architecture=arch, num_kv_heads=kv)
    return SLLM(cfg, backend=_reference_backend(), seed=3), SLLM(cfg, backend=backend, seed=3)


def check_model(backend: Backend, index: int) -> list[Check]:
    """Logits (eval), loss and every gradient (train mode, dropout on) against numpy."""
    case = MODEL_CASES[index]
    label = case_label(case)
    ref, mine = _model_pair(backend, **case)
    rng = case_rng("model", index)
    x, y = rng.integers(0, 67, (2, 13)), rng.integers(0, 67, (2, 13))
    y[1, :4] = -1
    checks = [compare("model", label, "logits", mine.eval().forward(x), ref.eval().forward(x),
                      rtol=1e-4, atol=1e-4, scale=1.0)]
    ref.train(), mine.train()  # dropout on: the counter-based masks must agree too
    checks.append(compare("model", label, "loss", mine.forward_backward(x, y),
                          ref.forward_backward(x, y), rtol=1e-5, atol=0.0))
    for name, g in ref.gradients().items():
        scale = float(np.abs(g).max()) + 1e-6  # relative to the tensor's largest gradient
        checks.append(compare("model", label, f"grad {name}", mine.gradients()[name], g,
                              rtol=0.0, atol=1e-4, scale=scale))
    return checks


def check_generate(backend: Backend, index: int) -> list[Check]:
    """Generation: logits of KV-cache decoding, step by step, and greedy ids against numpy."""
    case = MODEL_CASES[index]
    label = case_label(case)
    ref, mine = (m.eval() for m in _model_pair(backend, **case))
    tokens = case_rng("generate", index).integers(0, 67, (1, 16))

    def decode_rows(model: Any) -> np.ndarray:
        cache = model.new_cache(1)
        rows = [model.decode(tokens[:, :5], cache)[0]]
        rows += [model.decode(tokens[:, t:t + 1], cache)[0] for t in range(5, 16)]
        return np.concatenate(rows)

    checks = [compare("generate", label, "decode logits", decode_rows(mine), decode_rows(ref),
                      rtol=1e-4, atol=1e-4, scale=1.0)]
    prompt = [int(t) for t in tokens[0, :3]]
    want, got = ref.generate(prompt, 9, temperature=0), mine.generate(prompt, 9, temperature=0)
    differ = sum(a != b for a, b in zip(want, got, strict=False)) + abs(len(want) - len(got))
    checks.append(Check("generate", label, "greedy ids (count differing)", float(differ), 0.0,
                        differ == 0))
    return checks


# ---- selecting and running cases -----------------------------------------------------------
WHOLE_MODEL = {"model": check_model, "generate": check_generate}


@dataclass(frozen=True)
class Case:
    """One case of the suite: a kernel (or "model", "generate") and a shape index."""

    section: str
    index: int

    @property
    def label(self) -> str:
        """The shape, as printed in reports and test ids."""
        shapes = CASES[self.section].shapes if self.section in CASES else MODEL_CASES
        return case_label(shapes[self.index])

    @property
    def needs_llama(self) -> bool:
        """A llama kernel, a grouped-query attention shape or a llama model: checked only on
        a backend that provides the llama kernels (a GPT-2-only backend skips it)."""
        if self.section in LLAMA_KERNELS:
            return True
        shapes = CASES[self.section].shapes if self.section in CASES else MODEL_CASES
        shape = shapes[self.index]
        return shape.get("Hkv") is not None or shape.get("arch") == "llama"

    def run(self, backend: Backend) -> list[Check]:
        """Run this case on `backend`; an exception in the backend is a failed check."""
        try:
            if self.section in CASES:
                return check_kernel(backend, self.section, self.index)
            return WHOLE_MODEL[self.section](backend, self.index)
        except Exception as e:  # noqa: BLE001 - a crashing kernel is reported as a failure
            return [Check(self.section, self.label, f"raised {type(e).__name__}: {e}",
                          math.inf, 0.0, False)]


def sections() -> list[str]:
    """Every section of the suite: the kernels of the contract (required, then optional),
    then model and generate."""
    return [*KERNELS, *LLAMA_KERNELS, *OPTIONAL_KERNELS, *WHOLE_MODEL]


def select(patterns: Iterable[str] | None = None) -> list[str]:
    """Sections whose name contains one of `patterns` (all when none); unknown ones raise."""
    patterns = [p for p in (patterns or []) if p]
    if not patterns:
        return sections()
    chosen = [s for s in sections() if any(p in s for p in patterns)]
    unmatched = [p for p in patterns if not any(p in s for s in sections())]
    if unmatched:
        raise ValueError(f"no kernel matches {', '.join(map(repr, unmatched))}; the suite has "
                         f"{', '.join(sections())}")
    return chosen


def cases(patterns: Iterable[str] | None = None) -> list[Case]:
    """The cases of the selected sections."""
    out: list[Case] = []
    for section in select(patterns):
        if section not in CASES and section not in WHOLE_MODEL:
            raise KeyError(f"kernel {section!r} of the contract has no entry in "
                           f"conformance.CASES")
        count = len(CASES[section].shapes) if section in CASES else len(MODEL_CASES)
        out.extend(Case(section, i) for i in range(count))
    return out


def run(backend: Backend | str, patterns: Iterable[str] | None = None, perf: bool = False,
        repeats: int = 20) -> Report:
    """Check `backend` (a name or an instance) against the reference; time it if perf."""
    from . import get
    be = get(backend) if isinstance(backend, str) else backend
    report = Report(be.name)
    llama = not be.missing_llama_kernels()
    for case in cases(patterns):
        if case.needs_llama and not llama:
            report.skipped.append(f"{case.section} [{case.label}]")
            continue
        report.checks.extend(case.run(be))
    if perf:
        report.timings = [time_kernel(be, k, repeats) for k in select(patterns) if k in CASES]
    return report


def time_kernel(backend: Backend, kernel: str, repeats: int = 20) -> dict[str, Any]:
    """Median time of `kernel` on its largest case, on the backend and on the reference."""
    spec = CASES[kernel]
    index, shape = spec.largest()
    args = spec.args(case_rng(kernel, index), **shape)
    row: dict[str, Any] = {"kernel": kernel, "case": case_label(shape)}
    for who, be in (("reference", _reference_backend()), ("backend", backend)):
        call = functools.partial(getattr(be, kernel), *on_backend(be, args, spec))
        row[f"{who}_s"] = float(np.median(timed(call, repeats)))
    row["speedup"] = row["reference_s"] / row["backend_s"] if row["backend_s"] else math.inf
    return row

# ---- the report ----------------------------------------------------------------------------
def render(report: Report, verbose: bool = False) -> str:
    """The report as text: one line per kernel (all its cases), then failures in detail."""
    lines = [f"conformance of backend {report.backend!r} against the numpy reference",
             f"{'kernel':<22} {'cases':>5} {'checks':>6} {'max error':>10} {'tolerance':>10}  result"]
    by_section: dict[str, list[Check]] = {}
    for check in report.checks:
        by_section.setdefault(check.kernel, []).append(check)
    for section, checks in by_section.items():
        worst = max(checks, key=_used)
        ok = all(c.passed for c in checks)
        ncases = len({c.case for c in checks})
        lines.append(f"{section:<22} {ncases:>5} {len(checks):>6} {worst.error:>10.2e} "
                     f"{worst.allowed:>10.2e}  {'ok' if ok else 'FAIL'}")
    shown = report.checks if verbose else report.failures()
    if shown:
        lines.append("")
        lines.append("details:" if verbose else "failures:")
        lines += [f"  {c.kernel} [{c.case}] {c.output}: error {c.error:.3e}, allowed "
                  f"{c.allowed:.3e}  {'ok' if c.passed else 'FAIL'}" for c in shown]
    if report.timings:
        lines += ["", f"{'kernel':<22} {'case':<44} {'numpy':>10} {report.backend:>10} {'speedup':>8}"]
        lines += [f"{t['kernel']:<22} {t['case']:<44} {_us(t['reference_s']):>10} "
                  f"{_us(t['backend_s']):>10} {t['speedup']:>7.2f}x" for t in report.timings]
    if report.skipped:
        lines += ["", f"skipped {len(report.skipped)} llama cases: the backend lacks the llama "
                      f"kernels (it runs GPT-2 models only)"]
    failed = len(report.failures())
    lines.append("")
    lines.append(f"{len(report.checks) - failed} of {len(report.checks)} checks passed" +
                 ("" if not failed else f"; {failed} FAILED"))
    return "\n".join(lines)


def _used(check: Check) -> float:
    """How much of its tolerance a check used (inf for a failure with no tolerance)."""
    if check.error == 0:
        return 0.0
    return check.error / check.allowed if check.allowed else math.inf


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}us" if seconds < 1e-3 else f"{seconds * 1e3:.2f}ms"

