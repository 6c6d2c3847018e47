"""Third-party backends are probed in a child process, once, with a time limit.

A plugin's `probe()` may crash the interpreter (a segfault in a driver), hang, or take
20 s; run in this process it would take down or delay every command, also those that never
use it. So the registry (sllm/backends/__init__.py) asks `verdict()`, which runs
`python -m sllm.backends.probe_child PLUGIN NAME` with a time limit: the child loads only that
plugin, runs its probe and the kernel check, then a quick conformance smoke test (the
whole-model case 0 and the generation case 0 of the conformance suite: logits, loss, every
gradient and KV-cache decoding against numpy, which every kernel of the contract takes part
in). A probe that crashes, exits or hangs makes the backend unavailable, and so does a
smoke test that does (the command would do the same); a smoke test that runs but finds
wrong values only keeps `auto` from choosing it. `sllm backends` shows each reason.

Importing a plugin's module is isolated the same way: before the command's process imports
it (sllm/plugins.py), `import_verdict()` has a child import it once (the verdict cached per
plugin version and module file, found without importing it), so a module that segfaults,
calls os._exit or sys.exit, or hangs while it is imported is reported as that plugin's load
error, never run in the command's process.

The verdict is cached in CACHE_NAME under the user's cache directory (SLLM_CACHE_DIR, else
$XDG_CACHE_HOME/sllm, else ~/.cache/sllm), written atomically, keyed by plugin and backend
and valid while the plugin's version, its module file (path, size, mtime), sllm's version
and the Python executable are unchanged. `sllm backends --reprobe` forgets it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError, SLLMError

CACHE_NAME = "plugin-verdicts.json"
TIMEOUT_ENV = "SLLM_PROBE_TIMEOUT"
DEFAULT_TIMEOUT_S = 20.0  # probe + smoke test: a child importing numpy on a loaded machine
MARK = "sllm-verdict "  # prefixes the child's result lines (a plugin may print too)
CHILD_ENV = "SLLM_PLUGIN_CHILD"  # set in the children: they are the isolation, they import


@dataclass
class Verdict:
    """What the child found: `reason` (None when the backend is usable), its capabilities,
    and `smoke` (None when the smoke test passed, else why not)."""

    reason: str | None
    capabilities: dict[str, Any] = field(default_factory=dict)
    smoke: str | None = None


# ---- the parent: cache, then child ----------------------------------------------------------
def cache_path() -> Path:
    """The verdict cache file under the user's cache directory."""
    root = os.environ.get("SLLM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "sllm")
    return Path(root) / CACHE_NAME


def timeout() -> float:
    """The child's time limit in seconds (SLLM_PROBE_TIMEOUT, default DEFAULT_TIMEOUT_S)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 3600:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds in (0, 3600), got {text!r}")
    return value


def verdict(plugin: str, key: str, cls: type) -> Verdict:
    """The cached verdict on backend `key` (its registry name) of `plugin`, or a fresh one
    from a child process (then cached)."""
    stamp = fingerprint(plugin, cls)
    cache = _read_cache()
    hit = cache.get(f"{plugin}/{key}")
    if isinstance(hit, dict) and hit.get("fingerprint") == stamp:
        cached = _valid(hit.get("verdict"))
        if cached is not None:
            return cached  # else a damaged entry: probe again
    found = run_child(plugin, key)
    cache = _read_cache()  # another process may have written meanwhile
    cache[f"{plugin}/{key}"] = {"fingerprint": stamp, "verdict": asdict(found)}
    _write_cache(cache)
    return found


def _valid(data: Any) -> Verdict | None:
    """A cached verdict, if it has the right fields of the right types."""
    if not isinstance(data, dict) or set(data) != {"reason", "capabilities", "smoke"}:
        return None
    reason, caps, smoke = data["reason"], data["capabilities"], data["smoke"]
    if not (isinstance(reason, (str, type(None))) and isinstance(smoke, (str, type(None)))
            and isinstance(caps, dict)):
        return None
    return Verdict(reason, caps, smoke)


def forget() -> None:
    """Drop every cached verdict (the next use probes again)."""
    path = cache_path()
    if path.exists():
        path.unlink()


def fingerprint(plugin: str, cls: type) -> dict[str, Any]:
    """What a verdict depends on: the plugin's version and module file, sllm, Python."""
    source = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return {"version": _plugin_version(plugin), **_file_stamp(source), "sllm": __version__,
            "python": sys.executable}


def _plugin_version(plugin: str) -> str | None:
    for ep in metadata.entry_points(group="sllm", name=plugin):
        return ep.dist.version if ep.dist is not None else None
    return None


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: every verdict is made again
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict[str, Any]) -> None:
    from ..fileio import atomic_write_text
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
    except (OSError, SLLMError):  # unwritable, or not a file (a directory, a device)
        pass  # an unwritable cache only costs a probe per command


def import_verdict(ep: metadata.EntryPoint) -> str | None:
    """None when entry point `ep`'s module imports cleanly in a child process (cached),
    else how that import ended (crashed, exited, took too long, raised)."""
    stamp = {"version": ep.dist.version if ep.dist is not None else None, "value": ep.value,
             **_file_stamp(_module_file(ep.module)), "sllm": __version__,
             "python": sys.executable}
    key = f"{ep.name}/import"
    hit = _read_cache().get(key)
    if isinstance(hit, dict) and hit.get("fingerprint") == stamp and \
            isinstance(hit.get("reason"), (str, type(None))):
        return hit["reason"]
    out, ended = _child(["--import", ep.name])
    done = _results(out).get("import")
    reason = (done.get("reason") if isinstance(done, dict) else None) if done is not None \
        else f"importing it {ended}"
    cache = _read_cache()
    cache[key] = {"fingerprint": stamp, "reason": reason}
    _write_cache(cache)
    return reason if isinstance(reason, (str, type(None))) else str(reason)


def _module_file(module: str) -> str | None:
    """The file of `module` (dotted), found without running it or its packages."""
    from importlib.machinery import PathFinder
    parts, path, spec = module.split("."), None, None
    for i in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[:i + 1]), path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
    return spec.origin if spec is not None else None


def _file_stamp(source: str | None) -> dict[str, Any]:
    stat = os.stat(source) if source and os.path.exists(source) else None
    return {"module": source, "size": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None}


def _child(args: list[str]) -> tuple[str, str]:
    """Run probe_child with `args` under the time limit: (its stdout, how it ended)."""
    limit = timeout()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               **{CHILD_ENV: "1"})
    proc = subprocess.Popen([sys.executable, "-m", "sllm.backends.probe_child", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True,
                            errors="replace")
    try:
        out, err = proc.communicate(timeout=limit)
        return out, _how_it_ended(proc.returncode, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own children too
        out, err = proc.communicate()
        return out, f"took longer than {limit:g} s (the limit; {TIMEOUT_ENV} sets it)"
    except KeyboardInterrupt:  # Ctrl-C reaches this process only: the child goes with it
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def run_child(plugin: str, key: str) -> Verdict:
    """Probe and smoke-test backend `key` of `plugin` in a child process."""
    out, ended = _child([plugin, key])
    results = _results(out)
    probe = results.get("probe")
    if not isinstance(probe, dict):
        return Verdict(f"the probe {ended}")
    reason, caps, smoke = probe.get("reason"), dict(probe.get("capabilities") or {}), \
        results.get("smoke")
    if reason is not None or isinstance(smoke, dict):
        return Verdict(reason, caps, smoke.get("reason") if isinstance(smoke, dict) else None)
    # The smoke test itself crashed, exited or hung: a command using this backend would
    # do the same, so it is unavailable, by name too (a larger SLLM_PROBE_TIMEOUT and
    # `sllm backends --reprobe` give a slow backend another chance).
    died = f"the smoke test {ended}"
    return Verdict(died, caps, died)


def _how_it_ended(code: int, err: str) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed ({name})"
    last = [line for line in err.splitlines() if line.strip()][-1:]
    return f"exited with status {code}" + (f": {last[0].strip()}" if last else "")


def _results(out: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith(MARK):
            try:
                found.update(json.loads(line[len(MARK):]))
            except ValueError:
                continue
    return found
