# The two commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SOURCES := pyproject.toml CMakeLists.txt $(shell find cpp wasm -type f 2>/dev/null)

.PHONY: test test-interop demo bench clean lint lint-ruff lint-mypy

$(BIN)/python:
	@echo "creating $(VENV) (a virtual environment for sllm and its dependencies)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when the build inputs change; Python sources are picked up editable.
# pip is quiet, so say first what it is doing and for how long.
$(VENV)/.installed: $(BIN)/python $(SOURCES)
	@echo "installing sllm into $(VENV): downloading its dependencies, then building the C++"
	@echo "extension and the WebAssembly modules from source (about 2 minutes on 2 cores)..."
	$(BIN)/python -m pip install -q -e '.[test,mpi]'
	@$(BIN)/python -c "$$CHECK_CPP"
	@echo "sllm installed; backends: $$($(BIN)/python -c 'import sllm.backends as b; print(", ".join(b.available()))')"
	touch $@

# pip installs sllm without its native parts when building them fails (pyproject.toml's
# fallback, for a plain `pip install`), and says nothing under -q. Here a missing or unloadable
# C++ extension stops make with the reason (and no .installed stamp, so the next make
# retries), unless SLLM_ALLOW_NO_CPP=1: then a warning, and the numpy and wasm backends only.
define CHECK_CPP
import os, sys
import sllm.backends as b
cpp = next(r for r in b.info() if r["name"] == "cpp")
why = f"the C++ extension did not build or does not load: {cpp['reason']}"
if cpp["available"]:
    pass
elif os.environ.get("SLLM_ALLOW_NO_CPP") == "1":
    print(f"warning: {why}; installing without it (SLLM_ALLOW_NO_CPP=1)", file=sys.stderr)
else:
    sys.exit(f"error: {why}.\nSee the compiler's messages with: $(BIN)/python -m pip install -v -e ."
             f"\nor set SLLM_ALLOW_NO_CPP=1 to install without the cpp backend.")
endef
export CHECK_CPP

# Static checks, zero findings expected: ruff and mypy (config in pyproject.toml), pinned so
# that a new release's rules do not fail a build; mypy runs twice as tests/ and bench/ each
# have a conftest.py. The pre-commit hooks (.pre-commit-config.yaml) call these targets.
LINT_TOOLS := ruff==0.17.6 mypy==2.4.1
$(VENV)/.lint-tools: | $(VENV)/.installed
	@echo "installing the pinned lint tools: $(LINT_TOOLS)"
	$(BIN)/python -m pip install -q $(LINT_TOOLS)
	touch $@

lint: lint-ruff lint-mypy

lint-ruff: $(VENV)/.lint-tools
	$(BIN)/ruff check sllm tests bench examples

lint-mypy: $(VENV)/.lint-tools
	$(BIN)/mypy
	$(BIN)/mypy bench

test: $(VENV)/.installed
	@echo "running the test suite with coverage (several minutes on 2 cores; a dot per test)"
	$(BIN)/python -m pytest -p no:cacheprovider --cov=sllm --cov-report=term --cov-fail-under=70 tests

# transformers + torch against sllm's exports, in an environment of their own (the main one
# stays light). sllm runs from the source tree on its numpy backend: no native build here.
IVENV := .venv-interop
$(IVENV)/.installed: pyproject.toml
	@echo "creating $(IVENV) with torch and transformers (a large download, several minutes)"
	$(PYTHON) -m venv $(IVENV)
	$(IVENV)/bin/python -m pip install -q --upgrade pip
	$(IVENV)/bin/python -m pip install -q torch==2.13.0 transformers pytest \
		numpy pluggy typer rich wasmtime tokenizers safetensors gguf
	touch $@

# llama.cpp's Python binding, compiled from source without -march=native (GGML_NATIVE=OFF) so
# that a CPU feature of the building machine cannot crash the tests on another; slow on 2
# cores (10-20 minutes), so it has a stamp of its own and is built once per venv.
LLAMA_CPP := llama-cpp-python==0.3.36
$(IVENV)/.llama-cpp: | $(IVENV)/.installed
	@echo "building $(LLAMA_CPP) from source into $(IVENV) (portable, GGML_NATIVE=OFF; 10-20 minutes)"
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(IVENV)/bin/python -m pip install -q --no-binary llama-cpp-python $(LLAMA_CPP)
	touch $@

# PEFT, for the LoRA adapter export tests; a stamp of its own so that an existing venv gains it.
PEFT := peft==0.21.2
$(IVENV)/.peft: | $(IVENV)/.installed
	$(IVENV)/bin/python -m pip install -q $(PEFT)
	touch $@

test-interop: $(IVENV)/.installed $(IVENV)/.llama-cpp $(IVENV)/.peft
	PYTHONPATH=$(CURDIR) $(IVENV)/bin/python -m pytest -p no:cacheprovider tests/interop

demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py

bench: $(VENV)/.installed
	mkdir -p bench/results
	$(BIN)/python -m pytest bench -p no:cacheprovider --benchmark-only --benchmark-json=bench/results/latest.json
	$(BIN)/python bench/summarize.py bench/results/latest.json > bench/results/latest.md
	cat bench/results/latest.md

clean:
	rm -rf $(VENV) $(IVENV) build .coverage
