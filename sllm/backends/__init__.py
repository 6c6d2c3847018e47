"""Backend registry: `available()`, `get(name)`, `info()`, `resolve(name)`.

Backends come from plugins (see sllm.plugins). Each is probed once, lazily; a backend
whose import, registration, probe or construction fails (an exception or a sys.exit) is
listed as unavailable with its reason and breaks nothing else, and so is a backend that
leaves a kernel of the contract unprovided. A third-party backend is probed in a child
process with a time limit, when first needed, and the verdict is cached
(sllm/backends/isolation.py): a probe that crashes or hangs makes that backend
unavailable, not the command. `backend="auto"` (or `get()`) picks the available backend
with the highest priority that starts, and a plugin's backend only if it passed the
conformance smoke test (else a warning names it); the environment variable SLLM_BACKEND
overrides that choice. A plugin cannot take a name already registered (the
built-ins' names above all): its backend is kept as "plugin:name", used only when selected
by that full name.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError
from .base import KERNELS, Backend

__all__ = ["Backend", "KERNELS", "available", "get", "info", "reset", "resolve"]


@dataclass
class _Entry:
    name: str
    cls: type[Backend] | None  # None when the plugin's registration was refused
    plugin: str
    priority: int = 0
    reason: str | None = None  # why unavailable, None when available
    capabilities: dict[str, Any] = field(default_factory=dict)
    instance: Backend | None = None
    explicit_only: bool = False  # selectable by its full name only, never by auto
    settled: bool = True  # False until a third-party backend's isolated probe has run
    smoke: str | None = None  # why a plugin's backend failed the smoke test (auto skips it)


_registry: dict[str, _Entry] | None = None


def _discover() -> dict[str, _Entry]:
    """Collect every plugin's backends (built-ins first); probe the built-ins here and
    leave the others to _settle (in a child process, when first needed)."""
    from ..plugins import BUILTIN
    entries = registered()
    for entry in entries.values():
        if entry.cls is not None and entry.plugin == BUILTIN:
            entry.reason, entry.capabilities = probe_in_process(entry.cls)
        elif entry.cls is not None:
            entry.settled = False
    return entries


def registered() -> dict[str, _Entry]:
    """Every plugin's backends (built-ins first), unprobed; a plugin that fails to load or
    register is an entry with the reason."""
    from ..plugins import BUILTIN, describe_failure, plugin_manager, reraise_interrupt
    pm, load_errors = plugin_manager()
    entries: dict[str, _Entry] = {}
    for plugin, error in load_errors.items():
        entries[plugin] = _Entry(plugin, None, plugin, reason=error)
    impls = sorted(pm.hook.register_backends.get_hookimpls(),
                   key=lambda impl: impl.plugin_name != BUILTIN)
    for impl in impls:
        def register(cls: type, _plugin: str = impl.plugin_name) -> None:
            _add(entries, cls, _plugin)
        try:
            impl.function(register=register)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a broken plugin is reported
            reraise_interrupt(e)
            entries[impl.plugin_name] = _Entry(
                impl.plugin_name, None, impl.plugin_name,
                reason=f"plugin {impl.plugin_name!r} failed to register: {describe_failure(e)}")
    return entries


def _add(entries: dict[str, _Entry], cls: type, plugin: str) -> None:
    """Register `cls`; a name already taken (a built-in's, say) is not replaced: the newcomer
    is kept as "plugin:name", usable only when selected by that full name."""
    name = str(getattr(cls, "name", "") or "")
    entry = _Entry(name, None, plugin, int(getattr(cls, "priority", 0)))
    if not name:
        entry.name, entry.reason = f"{plugin}:{cls!r}", \
            f"plugin {plugin!r} registered {cls!r}, which has no name"
    elif not (isinstance(cls, type) and issubclass(cls, Backend)):
        entry.name, entry.reason = f"{plugin}:{name}", \
            f"plugin {plugin!r} registered {cls!r}, which is not a subclass of sllm.backends.Backend"
    else:
        entry.cls = cls
        if name in entries and entries[name].plugin != plugin:
            entry.name, entry.explicit_only = f"{plugin}:{name}", True
    entries[entry.name] = entry


def probe_in_process(cls: type[Backend]) -> tuple[str | None, dict[str, Any]]:
    """Run the backend's probe here: (None, capabilities), or (why unavailable, {}) when it
    fails or leaves a kernel of the contract unprovided."""
    from ..plugins import describe_failure, reraise_interrupt
    try:
        capabilities = dict(cls.probe() or {})
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the reason is shown to the user
        reraise_interrupt(e)
        return describe_failure(e), {}
    missing = cls.missing_kernels()
    if missing:
        return (f"does not provide kernels {', '.join(missing)} (implement them, or list "
                f"them in reference_kernels to use the numpy reference)"), capabilities
    return None, capabilities


def _settle(entry: _Entry) -> _Entry:
    """A third-party backend's verdict (probe and smoke test), from the cache or a child."""
    if not entry.settled:
        from .isolation import verdict
        assert entry.cls is not None  # only registered classes wait for a verdict
        found = verdict(entry.plugin, entry.name, entry.cls)
        entry.reason, entry.capabilities, entry.smoke = found.reason, found.capabilities, found.smoke
        entry.settled = True
    return entry


def _entries() -> dict[str, _Entry]:
    global _registry
    if _registry is None:
        _registry = _discover()
    return _registry


def reset() -> None:
    """Forget discovered backends (tests and plugin installs call this to rediscover)."""
    global _registry
    _registry = None


def available() -> list[str]:
    """Names of the backends usable on this machine, best (highest priority) first."""
    candidates = [e for e in _entries().values() if e.cls is not None and not e.explicit_only]
    usable = [e for e in map(_settle, candidates) if e.reason is None]
    return [e.name for e in sorted(usable, key=lambda e: -e.priority)]


def get(name: str | Backend = "auto") -> Backend:
    """The backend called `name` ("auto": SLLM_BACKEND if set, else the best available)."""
    if isinstance(name, Backend):
        return name
    if name == "auto":
        name = os.environ.get("SLLM_BACKEND") or "auto"
    entries = _entries()
    if name == "auto":
        for candidate in available():
            if entries[candidate].smoke is not None:
                warnings.warn(f"backend {candidate!r} of plugin {entries[candidate].plugin!r} "
                              f"failed the conformance smoke test ({entries[candidate].smoke}); "
                              f"auto does not use it", RuntimeWarning, stacklevel=2)
                continue
            try:
                return _instance(entries[candidate])
            except BackendError as e:
                warnings.warn(f"backend {candidate!r} skipped: {e}", RuntimeWarning, stacklevel=2)
        raise BackendError("no backend is available")
    entry = entries.get(name)
    if entry is not None:
        _settle(entry)
    if entry is None or entry.reason is not None:
        why = "is not registered" if entry is None else f"is unavailable: {entry.reason}"
        raise BackendError(f"backend {name!r} {why}; available backends: "
                           f"{', '.join(available()) or 'none'}")
    return _instance(entry)


def _instance(entry: _Entry) -> Backend:
    if entry.instance is None:
        from ..plugins import describe_failure, reraise_interrupt
        assert entry.cls is not None  # get() instantiates available entries only
        from ..plugins import BUILTIN
        try:
            entry.instance = entry.cls()
        except (Exception, SystemExit) as e:  # it becomes unavailable
            reraise_interrupt(e)
            entry.reason = describe_failure(e)
            raise BackendError(f"backend {entry.name!r} failed to start: {entry.reason}") from e
        if entry.plugin != BUILTIN:
            guard_kernels(entry.instance, entry.plugin)
    return entry.instance


def guard_kernels(instance: Backend, plugin: str) -> None:
    """Make a third-party backend's kernels raise BackendError naming the plugin and the
    kernel for whatever they raise (SystemExit included), so that a broken plugin fails
    the command that uses it with a message instead of ending the process."""
    from .base import KERNELS, LLAMA_KERNELS, OPTIONAL_KERNELS
    for kernel in KERNELS + LLAMA_KERNELS + OPTIONAL_KERNELS:
        fn = getattr(instance, kernel, None)
        if callable(fn):
            setattr(instance, kernel, _guarded(fn, plugin, kernel))


def _guarded(fn: Any, plugin: str, kernel: str) -> Any:
    from ..plugins import describe_failure, reraise_interrupt

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (BackendError, NotImplementedError):  # already sllm's own, or the contract's
            raise
        except ValueError:  # the contract's refusal of bad arguments (slots, shapes): the caller's
            raise
        except (Exception, SystemExit) as e:  # noqa: BLE001 - reported with its origin
            reraise_interrupt(e)
            raise BackendError(f"plugin {plugin!r}, kernel {kernel}: "
                               f"{describe_failure(e)}") from None
    return call


def info() -> list[dict[str, Any]]:
    """For every registered backend: name, available, reason, capabilities, priority,
    plugin, and the kernels it leaves to the numpy reference."""
    rows = []
    for e in sorted(map(_settle, _entries().values()), key=lambda e: -e.priority):
        ref = sorted(getattr(e.cls, "reference_kernels", ())) if e.cls else []
        rows.append({"name": e.name, "available": e.reason is None, "reason": e.reason,
                     "capabilities": e.capabilities, "priority": e.priority,
                     "plugin": e.plugin, "reference_kernels": ref})
        if e.cls is not None and e.explicit_only and e.reason is None:
            rows[-1]["note"] = (f"not used by auto: the name {e.cls.name!r} belongs to plugin "
                                f"{_entries()[e.cls.name].plugin!r}; select it as {e.name!r}")
        elif e.smoke is not None and e.reason is None:
            rows[-1]["note"] = f"not used by auto: failed the conformance smoke test: {e.smoke}"
    return rows


def resolve(name: str = "auto") -> tuple[str | None, str | None]:
    """What `get(name)` really gives, after construction: (backend name, None) or (None, why not).

    For "auto" this honours SLLM_BACKEND, as get() does; a backend whose constructor fails
    is skipped (and marked unavailable) exactly as when a model is built.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return get(name).name, None
        except BackendError as e:
            return None, str(e)
