"""`import sllm` stays light: heavy pieces load on first use.

How long the import takes is measured (`python -X importtime -c "import sllm"`), not
asserted: on a shared machine a wall-clock bound fails for reasons that are not sllm's.
What is asserted is the cause of a slow import: a heavy module pulled in at import time.
"""
import subprocess
import sys

import pytest

LAZY = ("typer", "rich", "tokenizers", "wasmtime", "mpi4py", "threadpoolctl", "safetensors",
        "gguf", "starlette", "uvicorn", "fastapi", "matplotlib", "selenium", "torch")


def test_heavy_modules_load_lazily():
    code = f"import sys, sllm; print(' '.join(m for m in {LAZY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []  # the CLI, runtimes and optional extras load on first use


def test_public_names():
    import sllm
    for name in ("ModelConfig", "SLLM", "load", "load_json", "hookimpl", "ConfigError",
                 "FormatError", "BackendError", "__version__", *sllm.__all__):
        assert hasattr(sllm, name), name
    assert issubclass(sllm.ConfigError, (sllm.SLLMError, ValueError))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sllm.nope  # noqa: B018 - the attribute access is the test


def test_lazy_submodules_are_the_modules():
    """`sllm.optim` and the others of LAZY_MODULES resolve to the submodule itself."""
    import sllm
    for name in sllm.LAZY_MODULES:
        assert getattr(sllm, name) is sys.modules[f"sllm.{name}"], name
    assert isinstance(sllm.optim.AdamW, type) and isinstance(sllm.schedule.WarmupCosine, type)
    assert "numpy" in sllm.backends.available()
