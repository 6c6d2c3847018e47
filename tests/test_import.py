"""`import sllm` stays fast: heavy pieces load on first use."""
import subprocess
import sys


def test_import_under_half_a_second():
    code = ("import time; t = time.perf_counter(); import sllm; "
            "print(time.perf_counter() - t); import sys; "
            "print(all(m not in sys.modules for m in ('typer', 'rich', 'tokenizers', 'wasmtime')))")
    best = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True).stdout.split()[0]) for _ in range(3))
    assert best < 0.5
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.split()[1] == "True"  # the CLI, tokenizer and wasm runtimes load lazily


def test_public_names():
    import sllm
    for name in ("ModelConfig", "SLLM", "load", "load_json", "hookimpl", "ConfigError",
                 "FormatError", "BackendError", "__version__"):
        assert hasattr(sllm, name), name
    assert sllm.optim.AdamW and sllm.schedule.WarmupCosine and sllm.backends.available()
