"""`sllm export` / `sllm import`: pick the format's module for a model going out or a file
coming in. The formats live in their own modules: sllm.hf (a Hugging Face GPT-2 directory)
and sllm.gguf_file (a GGUF file for llama.cpp).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ExportError
from .finite import check_f16_range, check_weights

# ---- one entry point per direction (what `sllm export` / `sllm import` call) ------------------
FORMATS = ("hf", "gguf")


def export_model(model: Any, to: str, path: str | os.PathLike[str],
                 dtype: str = "f32") -> str:
    """Write `model` as `to` ("hf": a directory, "gguf": a file); a one-line summary."""
    if dtype == "f16":  # as `sllm convert`: a weight f16 cannot hold would become inf
        check_f16_range(model.parameters())
    if to == "hf":
        from .hf import export_hf
        files = export_hf(model, path, dtype)
        return f"wrote {', '.join(files)} to {path}"
    if to == "gguf":
        from .gguf_file import export_gguf
        counts = export_gguf(model, path, dtype)
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
        return f"wrote {path} ({os.path.getsize(path):,} bytes; tensors: {kinds})"
    raise ExportError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")


def export_adapter(adapter: Any, to: str, path: str | os.PathLike[str], dtype: str = "f32",
                   base_name: str = "", base: Any = None) -> str:
    """Write the LoRA `adapter` as `to` ("peft": a PEFT directory, "gguf": llama.cpp's LoRA
    GGUF) for its base exported --to hf / --to gguf; a one-line summary. The caller has
    checked the base (Adapter.load(path, base))."""
    from .export_lora import check_adapter_format, export_lora_gguf, export_peft
    check_adapter_format(to)
    if dtype == "f16":
        check_f16_range(adapter.tensors)
    if to == "peft":
        files = export_peft(adapter, path, dtype, base_name)
        return f"wrote {', '.join(files)} to {path} (PEFT LoRA, rank {adapter.config.rank})"
    count = export_lora_gguf(adapter, path, dtype, base_name, base)  # base: token rows' own
    return (f"wrote {path} ({os.path.getsize(path):,} bytes; llama.cpp LoRA adapter, "
            f"{count} tensors, rank {adapter.config.rank})")


def import_model(source: str | os.PathLike[str], backend: Any = "numpy") -> Any:
    """An SLLM from a Hugging Face directory (or its model.safetensors), a GGUF file of
    architecture gpt2, or a llama2.c model file (.bin)."""
    src = Path(source)
    if src.is_file() and src.suffix == ".gguf":
        from .gguf_file import import_gguf
        model = import_gguf(src, backend=backend)
    elif src.is_file() and src.suffix == ".bin":
        from .llama2c import import_llama2c
        model = import_llama2c(src, backend=backend)
    else:
        if src.is_file() and src.name.endswith(".safetensors"):
            src = src.parent
        if not src.exists():
            raise ExportError(f"{source}: no such file or directory")
        from .hf import import_hf
        model = import_hf(src, backend=backend)
    check_weights(model.parameters(), source)  # NaN/inf weights refused by name and index
    return model
