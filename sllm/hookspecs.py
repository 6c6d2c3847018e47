"""The hooks a plugin may implement (the pluggy specification, project name "sllm").

A plugin is a module with functions decorated by `sllm.hookimpl`:

    @sllm.hookimpl
    def register_backends(register):
        register(MyBackend)
"""
from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("sllm")
hookimpl = pluggy.HookimplMarker("sllm")


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Call register(BackendClass) once for each backend the plugin provides."""
