"""Plugins cannot take the product down (issue 29, items 6 and 8 of "Why"): a kernel
calling sys.exit(0) made `check-backend` print nothing and exit 0 and made train/eval/
generate exit 0 with nothing done; a raising kernel gave a RuntimeError traceback; a
segfaulting probe() crashed `--backend numpy` commands, a 20 s probe delayed every command,
and `auto` picked a priority-200 plugin whose kernels return NaN or wrong values.

A plugin's kernels now raise BackendError naming the plugin and the kernel; its probe and a
conformance smoke test run once in a time-limited child process whose verdict is cached
(sllm/backends/isolation.py), and `auto` uses a plugin only after it passes the smoke test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import install_plugin
from typer.testing import CliRunner

import sllm
from sllm import backends
from sllm.backends import isolation
from sllm.cli import app
from sllm.errors import BackendError, ConfigError

PLUGIN = '''
import sys
import sllm
from sllm.backends.base import Backend, KERNELS

class Exiting(Backend):
    """Every kernel from the reference, except layernorm_fwd, which ends the process."""
    name = "exiting"
    priority = -1000
    reference_kernels = frozenset(KERNELS) - {"layernorm_fwd"}

    def layernorm_fwd(self, *args, **kwargs):
        sys.exit(0)

class Raising(Backend):
    name = "raising"
    priority = -1000
    reference_kernels = frozenset(KERNELS) - {"layernorm_fwd"}

    def layernorm_fwd(self, *args, **kwargs):
        raise RuntimeError("kaboom")

@sllm.hookimpl
def register_backends(register):
    register(Exiting)
    register(Raising)
'''


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """No plugin but the test's own; a verdict cache of the test's own."""
    monkeypatch.delenv("SLLM_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("SLLM_BACKEND", raising=False)
    monkeypatch.delenv(isolation.TIMEOUT_ENV, raising=False)
    monkeypatch.setenv("SLLM_CACHE_DIR", str(tmp_path / "cache"))
    backends.reset()
    yield
    backends.reset()


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "sllm_exit_plugin", PLUGIN)


@pytest.mark.parametrize("name,why", [("exiting", r"sys\.exit\(0\)"), ("raising", "kaboom")])
def test_a_failing_kernel_is_a_backend_error_naming_plugin_and_kernel(plugin, name, why):
    cfg = sllm.ModelConfig(vocab_size=7, embedding_dim=4, num_heads=2, num_layers=1,
                           ffn_hidden_dim=4, max_seq_len=4)
    model = sllm.SLLM(cfg, backend=name).eval()
    with pytest.raises(BackendError, match=rf"plugin 'sllm_exit_plugin', kernel "
                                           rf"layernorm_fwd: .*{why}"):
        model.forward(np.array([[1, 2, 3]]))


def test_check_backend_fails_loudly_on_a_plugin_that_exits(plugin):
    result = CliRunner().invoke(app, ["check-backend", "exiting", "-k", "layernorm"])
    assert result.exit_code == 1, result.output
    assert "layernorm_fwd" in result.output and "sys.exit(0)" in result.output


def test_builtin_backends_are_not_wrapped():
    numpy_backend = backends.get("numpy")
    assert "layernorm_fwd" not in vars(numpy_backend)


# ---- probes in a child process, verdicts cached -------------------------------------------
PROBES = '''
import ctypes, os, sys, time
import sllm
from sllm.backends.base import Backend, KERNELS

class Segfaults(Backend):
    name = "segfaults"
    priority = 9000
    reference_kernels = frozenset(KERNELS)
    @classmethod
    def probe(cls):
        ctypes.string_at(0)  # reads address 0: SIGSEGV

class Hangs(Backend):
    name = "hangs"
    priority = 9000
    reference_kernels = frozenset(KERNELS)
    @classmethod
    def probe(cls):
        time.sleep(600)

class Exits(Backend):
    name = "exits"
    priority = 9000
    reference_kernels = frozenset(KERNELS)
    @classmethod
    def probe(cls):
        print("about to leave", file=sys.stderr)
        os._exit(3)

class StartsForever(Backend):
    """Probes fine; its constructor (run by the smoke test) never returns."""
    name = "starts-forever"
    priority = 9000
    reference_kernels = frozenset(KERNELS)
    def __init__(self):
        time.sleep(600)

@sllm.hookimpl
def register_backends(register):
    register(Segfaults)
    register(Hangs)
    register(Exits)
    register(StartsForever)
'''


def _count_children(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The backends probed in a child process from now on (the work the cache saves)."""
    runs: list[str] = []
    real = isolation.run_child

    def counted(plugin: str, key: str) -> isolation.Verdict:
        runs.append(key)
        return real(plugin, key)
    monkeypatch.setattr(isolation, "run_child", counted)
    return runs


def test_crashing_hanging_and_exiting_probes_are_reported_not_fatal(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "sllm_bad_probes", PROBES)
    monkeypatch.setenv(isolation.TIMEOUT_ENV, "3")
    runs = _count_children(monkeypatch)
    assert backends.get("numpy").name == "numpy" and runs == []  # never probes a plugin
    t0 = time.monotonic()
    rows = {r["name"]: r for r in backends.info()}
    assert time.monotonic() - t0 < 60
    assert sorted(runs) == ["exits", "hangs", "segfaults", "starts-forever"]
    assert rows["segfaults"]["reason"] == "the probe crashed (SIGSEGV)"
    assert rows["hangs"]["reason"].startswith("the probe took longer than 3 s")
    assert rows["exits"]["reason"] == "the probe exited with status 3: about to leave"
    assert rows["starts-forever"]["reason"].startswith("the smoke test took longer than 3 s")
    with pytest.raises(BackendError, match="unavailable: the smoke test took longer"):
        backends.get("starts-forever")  # by name too: constructing it would hang the command
    assert backends.available()[0] not in ("segfaults", "hangs", "exits")
    backends.reset()  # a new command: the verdicts come from the cache, at once
    t0 = time.monotonic()
    assert {r["name"]: r["reason"] for r in backends.info()}["hangs"] == rows["hangs"]["reason"]
    assert time.monotonic() - t0 < 2 and len(runs) == 4
    cached = json.loads(isolation.cache_path().read_text())
    assert set(cached) == {f"sllm_bad_probes/{n}" for n in
                           ("exits", "hangs", "segfaults", "starts-forever", "import")}


def test_a_command_not_using_the_plugin_is_unaffected(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "sllm_bad_probes", PROBES)
    model = sllm.SLLM(sllm.ModelConfig(vocab_size=7, embedding_dim=4, num_heads=2,
                                       num_layers=1, ffn_hidden_dim=4, max_seq_len=4),
                      backend="numpy")
    assert np.isfinite(model.eval().forward(np.array([[1, 2]]))).all()
    env = {"PYTHONPATH": str(tmp_path), "SLLM_PROBE_TIMEOUT": "3"}
    proc = subprocess.run([sys.executable, "-m", "sllm.cli", "backends"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    assert "SIGSEGV" in proc.stdout and "auto picks: " in proc.stdout


@pytest.mark.parametrize("body,why", [
    ("import os\nos._exit(3)", "importing it exited with status 3"),
    ("import time\ntime.sleep(600)", "importing it took longer than 3 s"),
    ("import ctypes\nctypes.string_at(0)", "importing it crashed (SIGSEGV)"),
    ("import sys\nsys.exit(0)", "importing it raised called sys.exit(0)")])
def test_a_plugin_whose_import_ends_the_process_is_never_imported_here(tmp_path, monkeypatch,
                                                                      body, why):
    """Its module is imported in a child first: the command's process lives on."""
    install_plugin(tmp_path, monkeypatch, "sllm_bad_import", body)
    monkeypatch.setenv(isolation.TIMEOUT_ENV, "3" if "sleep" in body else "60")
    assert backends.get("numpy").name == "numpy"
    assert "sllm_bad_import" not in sys.modules
    reason = {r["name"]: r["reason"] for r in backends.info()}["sllm_bad_import"]
    assert reason.startswith("plugin 'sllm_bad_import' (sllm_bad_import) failed to load: " + why)
    backends.reset()  # the next command: the verdict from the cache, no child
    monkeypatch.setattr(isolation, "_child", None)
    assert {r["name"]: r["reason"] for r in backends.info()}["sllm_bad_import"] == reason


BAD_KERNELS = '''
import numpy as np
import sllm
from sllm.backends.numpy_ref import NumpyBackend

class NanOut(NumpyBackend):
    """Outranks the built-ins; its matmul returns NaN."""
    name = "nan-out"
    priority = 200
    def matmul_fwd(self, out, *args, **kwargs):
        super().matmul_fwd(out, *args, **kwargs)
        out[...] = np.nan

class Skewed(NumpyBackend):
    """Outranks the built-ins; its matmul is 1% off."""
    name = "skewed"
    priority = 300
    def matmul_fwd(self, out, *args, **kwargs):
        super().matmul_fwd(out, *args, **kwargs)
        out *= np.float32(1.01)

@sllm.hookimpl
def register_backends(register):
    register(NanOut)
    register(Skewed)
'''


def test_auto_skips_a_plugin_that_fails_the_smoke_test_with_a_warning(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "sllm_bad_kernels", BAD_KERNELS)
    assert backends.available()[:2] == ["skewed", "nan-out"]  # they probe fine...
    with pytest.warns(RuntimeWarning) as caught:
        chosen = backends.get("auto")
    assert chosen.name not in ("skewed", "nan-out")  # ...but auto falls back to a built-in
    said = " | ".join(str(w.message) for w in caught)
    assert "backend 'skewed' of plugin 'sllm_bad_kernels' failed the conformance smoke test" in said
    assert "backend 'nan-out' of plugin 'sllm_bad_kernels'" in said
    assert said.count("(model [tie=False act=gelu] logits: error ") == 2  # the first failure
    assert backends.get("skewed").name == "skewed"  # still usable when asked for by name
    notes = {r["name"]: r.get("note") for r in backends.info()}
    assert notes["nan-out"].startswith("not used by auto: failed the conformance smoke test")


GOOD = '''
import sllm
from sllm.backends.numpy_ref import NumpyBackend

class Good(NumpyBackend):
    name = "good"
    priority = 5000

@sllm.hookimpl
def register_backends(register):
    register(Good)
'''


def test_auto_picks_a_plugin_that_passes_and_caches_per_version(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "sllm_good", GOOD)
    runs = _count_children(monkeypatch)
    assert backends.get("auto").name == "good" and runs == ["good"]
    backends.reset()
    assert backends.get("auto").name == "good" and runs == ["good"]  # cached
    dist = tmp_path / "sllm_good-0.1.dist-info"
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sllm_good\nVersion: 0.2\n")
    dist.rename(tmp_path / "sllm_good-0.2.dist-info")
    backends.reset()
    assert backends.get("auto").name == "good" and runs == ["good", "good"]  # a new version
    isolation.cache_path().write_text("{not json")  # a damaged cache is made again
    backends.reset()
    assert backends.get("auto").name == "good" and len(runs) == 3
    cache = json.loads(isolation.cache_path().read_text())
    for bad in ({"reason": None, "capabilities": [], "smoke": None}, {"reason": 5},
                "ok", {"reason": None, "capabilities": {}, "smoke": 1}):
        cache["sllm_good/good"]["verdict"] = bad  # an entry of the wrong shape: probed again
        isolation.cache_path().write_text(json.dumps(cache))
        backends.reset()
        assert backends.get("auto").name == "good"
    assert len(runs) == 7
    assert "sllm_good/good" in json.loads(isolation.cache_path().read_text())
    isolation.cache_path().unlink()
    isolation.cache_path().mkdir()  # a cache path that is not a file: probed, not fatal
    backends.reset()
    assert backends.get("auto").name == "good" and len(runs) == 8


def test_reprobe_forgets_the_verdicts(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "sllm_good", GOOD)
    backends.available()
    assert isolation.cache_path().exists()
    result = CliRunner().invoke(app, ["backends", "--reprobe"])
    assert result.exit_code == 0, result.output
    assert "auto picks: good" in result.output


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "1e9"])
def test_probe_timeout_is_validated(monkeypatch, value):
    monkeypatch.setenv(isolation.TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=isolation.TIMEOUT_ENV):
        isolation.timeout()
