"""The child process of a plugin probe (sllm/backends/isolation.py runs
`python -m sllm.backends.probe_child PLUGIN NAME`): load only that plugin, probe backend
NAME, smoke-test it, and print each result on a line starting with isolation.MARK; or, with
`--import PLUGIN`, only import the plugin's module.

A module of its own because it needs the registry and the conformance suite, which import
the registry themselves: the parent side (isolation.py) only names this module.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from .isolation import MARK


def _report(**result: Any) -> None:
    sys.stdout.write(MARK + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def child(plugin: str, key: str) -> None:
    """Load only `plugin`, probe backend `key`, then smoke-test it; print the results."""
    os.environ["SLLM_LOAD_PLUGINS"] = plugin
    from . import probe_in_process, registered
    entries = registered()
    entry = entries.get(key) or entries.get(key.partition(":")[2])  # unshadowed in the child
    if entry is None or entry.cls is None:
        why = entry.reason if entry is not None else f"plugin {plugin!r} did not register {key!r}"
        _report(probe={"reason": why})
        return
    reason, caps = probe_in_process(entry.cls)
    _report(probe={"reason": reason, "capabilities": caps})
    if reason is None:
        _report(smoke={"reason": smoke_test(entry.cls, plugin)})


def smoke_test(cls: type, plugin: str) -> str | None:
    """None when the whole-model and generation cases 0 agree with numpy, else the first
    failure."""
    from ..plugins import describe_failure
    from . import guard_kernels
    from .conformance import Case
    try:
        backend = cls()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - reported as the verdict
        return f"failed to start: {describe_failure(e)}"
    guard_kernels(backend, plugin)
    for section in ("model", "generate"):
        for check in Case(section, 0).run(backend):
            if not check.passed and check.output.startswith("raised "):
                return f"{check.kernel} [{check.case}] {check.output}"
            if not check.passed:
                return (f"{check.kernel} [{check.case}] {check.output}: error {check.error:.3g} "
                        f"> allowed {check.allowed:.3g}")
    return None


def import_only(plugin: str) -> None:
    """Import entry point `plugin`'s module; report None, or why it raised."""
    from importlib import metadata

    from ..plugins import ENTRY_POINT_GROUP, describe_failure
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=plugin):
        try:
            ep.load()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - reported as the verdict
            _report(**{"import": {"reason": f"importing it raised {describe_failure(e)}"}})
            return
    _report(**{"import": {"reason": None}})


if __name__ == "__main__":
    if sys.argv[1] == "--import":
        import_only(sys.argv[2])
    else:
        child(sys.argv[1], sys.argv[2])
