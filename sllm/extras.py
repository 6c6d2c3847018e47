"""Optional dependencies (pyproject's extras): import one, or say how to install it."""
from __future__ import annotations

import importlib
from typing import Any

from .errors import DependencyError


def require(module: str, extra: str = "interop") -> Any:
    """The imported `module`, or DependencyError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise DependencyError(f"this needs the {package} package: pip install 'sllm[{extra}]' "
                              f"(or pip install {package})") from None
