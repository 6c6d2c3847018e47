"""The plugin manager: the built-in backends plus the entry points of the group "sllm".

The hook specification is sllm/hookspecs.py. The built-in backends (sllm/backends/builtin.py)
are registered directly, once, under the plugin name "builtin", and reach the registry
through the same hook a third-party plugin implements. `SLLM_LOAD_PLUGINS` (a
comma-separated list of entry-point names, empty for none) limits which third-party plugins
load. A plugin's module is imported in this process only after a child process imported it
cleanly (sllm/backends/isolation.py: a module that segfaults, exits or hangs on import is
that plugin's load error), and then under a guard: an exception or a `sys.exit` is reported
as that plugin's load error and is never fatal (KeyboardInterrupt still stops the program).
"""
from __future__ import annotations

import os
from importlib import metadata

import pluggy

from . import hookspecs
from .hookspecs import hookimpl, hookspec

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "hookimpl", "hookspec", "plugin_manager",
           "describe_failure"]

ENTRY_POINT_GROUP = "sllm"
BUILTIN = "builtin"  # the plugin name of the built-in backends


def reraise_interrupt(error: BaseException) -> None:
    """Raise the KeyboardInterrupt that `error` is, in disguise: Python 3.11 wraps what a
    class body's __set_name__ raises in a RuntimeError, so a Ctrl-C or SIGTERM (see
    sllm.jobcontrol) landing while a module is imported on first use reached the guards
    below as an ordinary failure: a backend reported unavailable, and the signal lost (a run
    being prepared went on training until the launcher killed it, leaving run.lock)."""
    if isinstance(error, RuntimeError) and isinstance(error.__cause__, KeyboardInterrupt):
        raise error.__cause__


def describe_failure(error: BaseException) -> str:
    """`Type: message`, saying so when a plugin tried to exit the program."""
    if isinstance(error, SystemExit):
        return f"called sys.exit({error.code!r})"
    return f"{type(error).__name__}: {error}"


def plugin_manager() -> tuple[pluggy.PluginManager, dict[str, str]]:
    """A manager with the built-ins and the allowed entry points; also {plugin: load error}."""
    from .backends import builtin
    from .backends.isolation import CHILD_ENV, import_verdict
    pm = pluggy.PluginManager("sllm")
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name=BUILTIN)
    errors: dict[str, str] = {}
    allowed = os.environ.get("SLLM_LOAD_PLUGINS")
    allow = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or (allow is not None and ep.name not in allow):
            continue
        refused = None if os.environ.get(CHILD_ENV) else import_verdict(ep)
        if refused is not None:
            errors[ep.name] = f"plugin {ep.name!r} ({ep.value}) failed to load: {refused}"
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - reported, never fatal
            reraise_interrupt(e)
            errors[ep.name] = f"plugin {ep.name!r} ({ep.value}) failed to load: " \
                              f"{describe_failure(e)}"
    return pm, errors
