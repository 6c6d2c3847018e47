"""Run JavaScript under Node against sllm/web's modules: the parity tests' harness.

`run_node(body, *args)` runs `body` as the inside of an async function in an ES module
that starts with `import * as web from "tests/node/web.mjs"`, so the body can use
`web.format`, `web.tokenizers`, `web.kernels`, `web.model`, `web.sllm` (the browser's
modules, as a page imports them) and `web.loadModel(path, wasm)`. `args` is the JSON of
the Python arguments; whatever the body returns comes back through JSON. It mirrors
tests/browser.py's `run_js`, so a case moves between the two hosts with few changes.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent / "node"
MIN_VERSION = 18


@functools.cache
def node() -> str | None:
    """The node executable, when it is new enough."""
    path = shutil.which("node")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    found = re.match(r"v(\d+)", version)
    return path if found and int(found[1]) >= MIN_VERSION else None


def why_no_node() -> str | None:
    """None when Node can run the parity tests, else the reason."""
    if node() is None:
        return f"node >= {MIN_VERSION} is not on PATH (apt-get install nodejs; .ci/run does)"
    return None


def run_node(body: str, *args: Any, timeout: float = 300) -> Any:
    """Run `body` (JavaScript, with `web` and `args` in scope) and return its result."""
    from sllm.export_web import wasm_modules
    wasm_dir = next(iter(wasm_modules().values())).parent
    with tempfile.TemporaryDirectory(prefix="sllm-node-") as tmp:
        script, data = Path(tmp) / "case.mjs", Path(tmp) / "args.json"
        script.write_text(f"import * as web from {json.dumps((NODE_DIR / 'web.mjs').as_uri())};\n"
                          "const args = JSON.parse(new TextDecoder().decode(await web.bytes(process.argv[2])));\n"
                          f"const result = await (async () => {{\n{body}\n}})();\n"
                          "process.stdout.write(JSON.stringify(result === undefined ? null : result));\n",
                          encoding="utf-8")
        data.write_text(json.dumps(args), encoding="utf-8")
        done = subprocess.run([node() or "node", str(script), str(data)],
                              capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, SLLM_WASM_DIR=str(wasm_dir)))
    if done.returncode != 0:
        raise AssertionError(f"node failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def skip_without_node() -> None:
    """Skip the calling test module when Node cannot run the twins (fail instead when
    SLLM_REQUIRE_NODE=1, as in .ci/run)."""
    import pytest
    reason = why_no_node()
    if reason and os.environ.get("SLLM_REQUIRE_NODE") == "1":
        pytest.fail(f"SLLM_REQUIRE_NODE=1 but {reason}")
    if reason:
        pytest.skip(reason)
