"""`sllm export-web`: a static site that chats with, and fine-tunes, a model in the browser.

The site is the files of sllm/web/ (the ES module sllm.js and its parts, the worker, the
page), the WebAssembly modules the Python wasm backends run (the page picks relaxed SIMD,
SIMD128 or scalar by feature detection), the model as `model.sllm`, and `site.json`
naming it. No build step: any static file server serves it (see docs/browser.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import SLLMError
from .fileio import atomic_write
from .paths import model_file
from .quant import QTYPES
from .serialize import DTYPE_CODES, read_model_file

WEB_DIR = Path(__file__).resolve().parent / "web"
WEB_FILES = ("index.html", "style.css", "app.js", "worker.js", "sllm.js", "model.js",
             "llama.js", "kernels.js", "format.js", "tokenizers.js", "constrain.js",
             "lora.js")
WASM_FILES = ("sllm_relaxed.wasm", "sllm_simd128.wasm", "sllm_scalar.wasm")
MODEL_NAME = "model.sllm"
DTYPES = (*DTYPE_CODES, *QTYPES)  # what --dtype accepts


def wasm_modules() -> dict[str, Path]:
    """The built .wasm files by name; SLLMError when the scalar module (the fallback every
    browser can run) is missing."""
    from .backends.wasm import find_module
    from .backends.wasm_runtime import RuntimeUnavailable
    found = {}
    for name in WASM_FILES:
        try:
            found[name] = find_module(name)
        except RuntimeUnavailable:
            continue
    if "sllm_scalar.wasm" not in found:
        raise SLLMError("the WebAssembly modules were not built (no wasm toolchain at install "
                        "time); reinstall sllm with the ziglang package available")
    return found


def export_site(source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                dtype: str | None = None) -> dict[str, Any]:
    """Write the site for `source` (a .sllm file or run directory) into `out_dir`.

    dtype re-saves the model: "f32" or "f16" for every tensor, or a quantized type
    ("q8_0", "q4_0", "q4_1") for the matmul weights with the other tensors in f16 (the
    smallest download; the page then runs inference only). None keeps the file as it is.
    Returns {"dir", "files": {name: bytes}, "total_bytes", "model"}.
    """
    model_path = model_file(source)
    mf = read_model_file(model_path)  # refuse a malformed model before writing anything
    if mf.tokenizer is None:
        raise SLLMError(f"{model_path} has no tokenizer inside; the page could not read text "
                        f"(train with sllm train, which stores it)")
    if dtype is not None and dtype not in DTYPES:
        raise SLLMError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, int] = {}
    for name in WEB_FILES:
        files[name] = _write(out / name, (WEB_DIR / name).read_bytes())
    for name, path in wasm_modules().items():
        files[name] = _write(out / name, path.read_bytes())
    files[MODEL_NAME] = _write_model(model_path, out / MODEL_NAME, dtype, mf.dtype)
    site = {"model": MODEL_NAME, "source": model_path.name, "parameters": mf.config.num_parameters(),
            "dtype": dtype or mf.dtype}
    files["site.json"] = _write(out / "site.json", json.dumps(site, indent=2).encode() + b"\n")
    return {"dir": str(out), "files": files, "total_bytes": sum(files.values()), "model": site}


def _write_model(source: Path, dest: Path, dtype: str | None, current: str) -> int:
    if dtype is None or dtype == current:
        return _write(dest, source.read_bytes())
    from .model import load_model
    model = load_model(source, backend="numpy")
    if dtype in QTYPES:
        if model.qtype is not None:
            raise SLLMError(f"{source} is already quantized ({model.qtype}); export it as it is")
        model.quantize(dtype)
        model.save(dest, dtype="f16")
    else:
        if model.qtype is not None:
            raise SLLMError(f"{source} is quantized ({model.qtype}); it cannot be widened to {dtype}")
        model.save(dest, dtype=dtype)
    return dest.stat().st_size


def _write(path: Path, data: bytes) -> int:
    with atomic_write(path) as f:
        f.write(data)
    return len(data)
