"""Plugins: the pluggy hook specification and the loading of entry points (group "sllm").

A plugin is a module with a function decorated by `sllm.hookimpl`:

    @sllm.hookimpl
    def register_backends(register):
        register(MyBackend)

The built-in backends register through this same hook (sllm/backends/builtin.py).
`SLLM_LOAD_PLUGINS` (comma-separated entry-point names, empty for none) limits which
third-party plugins load; a plugin that fails to import or to register is reported, never
fatal.
"""
from __future__ import annotations

import os
from importlib import metadata
from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("sllm")
hookimpl = pluggy.HookimplMarker("sllm")

ENTRY_POINT_GROUP = "sllm"


class Hooks:
    """The hooks a plugin may implement."""

    @hookspec
    def register_backends(self, register: Callable[[type], None]) -> None:
        """Call register(BackendClass) once for each backend the plugin provides."""


def plugin_manager() -> tuple[pluggy.PluginManager, dict[str, str]]:
    """A manager with the built-ins and the allowed entry points; also {plugin: load error}."""
    from .backends import builtin
    pm = pluggy.PluginManager("sllm")
    pm.add_hookspecs(Hooks)
    pm.register(builtin, name="builtin")
    errors: dict[str, str] = {}
    allowed = os.environ.get("SLLM_LOAD_PLUGINS")
    allow = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or (allow is not None and ep.name not in allow):
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as e:  # noqa: BLE001 - any plugin failure is reported, not fatal
            errors[ep.name] = f"plugin {ep.name!r} ({ep.value}) failed to load: " \
                              f"{type(e).__name__}: {e}"
    return pm, errors
