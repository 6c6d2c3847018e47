#!/usr/bin/env bash
# The wasm backends' conformance tests under the wasmer runtime. wasmer has real wheels
# only for Python <= 3.10, so they run in a 3.10 venv when such an interpreter works here,
# and are skipped with a message otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY310=""
for candidate in python3.10 "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.10*/bin/python3.10; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
    PY310=$candidate
    break
  fi
done
if [ -z "$PY310" ]; then
  echo "SKIPPED wasmer conformance tests: no working python3.10 on this machine"
  exit 0
fi
VENV=build/venv310
[ -x "$VENV/bin/python" ] || "$PY310" -m venv "$VENV"
if ! "$VENV/bin/python" -m pip install -q -e '.[test]' wasmer==1.1.0 wasmer-compiler-cranelift==1.1.0; then
  echo "SKIPPED wasmer conformance tests: wasmer 1.1.0 could not be installed for $PY310"
  exit 0
fi
SLLM_WASM_RUNTIME=wasmer "$VENV/bin/python" -m pytest -p no:cacheprovider tests/test_wasm.py tests/test_kernels.py \
  tests/test_wasm_pack.py tests/test_wasm_q8_activations.py
