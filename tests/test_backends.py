"""The backend registry and plugin discovery through real entry points."""
import numpy as np
import pytest
from conftest import install_plugin as _install_plugin

import sllm
from sllm import BackendError, backends
from sllm.backends.base import KERNELS, Backend

PLUGIN = '''
import sllm
from sllm.backends.base import Backend, KERNELS

class Fast(Backend):
    """A plugin backend that leaves every kernel to the reference."""
    name = "fast"
    priority = 1000
    reference_kernels = frozenset(KERNELS)

class Broken(Backend):
    name = "broken"
    @classmethod
    def probe(cls):
        raise RuntimeError("needs a GPU")

@sllm.hookimpl
def register_backends(register):
    register(Fast)
    register(Broken)
'''


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv("SLLM_BACKEND", raising=False)
    monkeypatch.delenv("SLLM_LOAD_PLUGINS", raising=False)
    backends.reset()
    yield
    backends.reset()


def test_numpy_always_available():
    assert "numpy" in backends.available()
    rows = {r["name"]: r for r in backends.info()}
    assert rows["numpy"]["available"] and rows["numpy"]["reason"] is None
    assert "blas" in rows["numpy"]["capabilities"]
    assert {"cpp", "wasm", "wasm-simd"} & set(rows) == {"cpp", "wasm", "wasm-simd"} & set(rows)


def test_unknown_backend_lists_available():
    with pytest.raises(BackendError, match="available backends: .*numpy"):
        backends.get("no-such-backend")


def test_env_override(monkeypatch):
    monkeypatch.setenv("SLLM_BACKEND", "numpy")
    assert backends.get().name == "numpy"
    assert sllm.SLLM(sllm.ModelConfig(vocab_size=5, embedding_dim=4, num_heads=1,
                                      num_layers=1, ffn_hidden_dim=4)).backend.name == "numpy"


def test_entry_point_plugin(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "sllm_fake_plugin", PLUGIN)
    assert backends.available()[0] == "fast"
    assert backends.get().name == "fast"  # auto takes the highest priority
    rows = {r["name"]: r for r in backends.info()}
    assert rows["fast"]["plugin"] == "sllm_fake_plugin"
    assert rows["fast"]["reference_kernels"] == sorted(KERNELS)
    assert not rows["broken"]["available"] and "needs a GPU" in rows["broken"]["reason"]
    with pytest.raises(BackendError, match="needs a GPU"):
        backends.get("broken")
    cfg = sllm.ModelConfig(vocab_size=7, embedding_dim=4, num_heads=2, num_layers=1,
                           ffn_hidden_dim=4, max_seq_len=4)
    x = np.array([[1, 2, 3]])
    np.testing.assert_allclose(sllm.SLLM(cfg, backend="fast").eval().forward(x),
                               sllm.SLLM(cfg, backend="numpy").eval().forward(x))


def test_load_plugins_filter(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "sllm_fake_plugin2", PLUGIN)
    monkeypatch.setenv("SLLM_LOAD_PLUGINS", "")
    assert "fast" not in backends.available() and "numpy" in backends.available()


def test_plugin_import_error_is_reported(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "sllm_bad_import", "raise ImportError('no libfoo')")
    rows = {r["name"]: r for r in backends.info()}
    assert not rows["sllm_bad_import"]["available"]
    assert "no libfoo" in rows["sllm_bad_import"]["reason"]
    assert "numpy" in backends.available()


def test_plugin_register_error_is_reported(tmp_path, monkeypatch):
    source = "import sllm\n@sllm.hookimpl\ndef register_backends(register):\n    1 / 0\n"
    _install_plugin(tmp_path, monkeypatch, "sllm_bad_hook", source)
    rows = {r["name"]: r for r in backends.info()}
    assert "ZeroDivisionError" in rows["sllm_bad_hook"]["reason"]
    assert "numpy" in backends.available()


def test_plugin_registering_a_non_backend_class_is_reported(tmp_path, monkeypatch):
    source = ("import sllm\nclass Plain:\n    name = 'numpy'\n    @classmethod\n"
              "    def probe(cls):\n        return {}\n"
              "@sllm.hookimpl\ndef register_backends(register):\n    register(Plain)\n")
    _install_plugin(tmp_path, monkeypatch, "sllm_plain", source)
    rows = {r["name"]: r for r in backends.info()}
    assert "not a subclass of sllm.backends.Backend" in rows["sllm_plain:numpy"]["reason"]
    assert backends.get("numpy").name == "numpy" and rows["numpy"]["plugin"] != "sllm_plain"


def test_required_kernels_name_themselves():
    class Partial(Backend):
        name = "partial"
        reference_kernels = frozenset({"gelu_fwd"})

    b = Partial()
    with pytest.raises(NotImplementedError, match="'layernorm_fwd'"):
        b.layernorm_fwd(None, None, None, None, None, None)
    assert "layernorm_fwd" in b.missing_kernels() and "gelu_fwd" not in b.missing_kernels()
    out = np.zeros(3, np.float32)
    b.gelu_fwd(out, np.ones(3, np.float32))
    assert out[0] == pytest.approx(0.8412, abs=1e-4)


def test_backend_storage():
    b = backends.get("numpy")
    z = b.zeros((2, 3))
    assert z.dtype == np.float32 and not z.any()
    c = b.from_numpy(np.arange(4), np.int32)
    assert c.dtype == np.int32 and list(c) == [0, 1, 2, 3]


# ---- the contract: declared signatures, one way of attaching kernels ----------------------
def test_contract_declares_every_kernel_with_the_reference_signature():
    import inspect

    from sllm.backends import reference
    for kernel in KERNELS:
        declared = inspect.signature(getattr(Backend, kernel))
        params = list(declared.parameters)[1:]  # without self
        assert params == list(inspect.signature(getattr(reference, kernel)).parameters), kernel
        assert getattr(Backend, kernel).__doc__, f"{kernel} has no docstring"
        with pytest.raises(NotImplementedError, match=repr(kernel)):
            getattr(Backend(), kernel)(*[None] * len(params))


def test_reference_module_imports_nothing_of_the_registry():
    import ast
    import sys

    from sllm.backends import reference
    tree = ast.parse(open(reference.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and n.level == 0}
    relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    # sllm.quant: the block formats (numpy only), which matmul_q_fwd decodes
    stdlib = {m for m in imported if m.split(".")[0] in sys.stdlib_module_names}
    assert not relative and imported - stdlib <= {"numpy", "sllm.quant"}, (imported, relative)


def test_kernels_are_attached_on_the_class():
    from sllm.backends import reference
    from sllm.backends.numpy_ref import NumpyBackend
    for kernel in KERNELS:  # no per-instance copies, no stub left on the class
        assert getattr(NumpyBackend, kernel) is getattr(reference, kernel)
    assert NumpyBackend.missing_kernels() == [] and NumpyBackend.reference_kernels == frozenset()
    rows = {r["name"]: r for r in backends.info()}
    assert rows["numpy"]["reference_kernels"] == []
    for row in rows.values():
        if row["available"]:
            assert backends.get(row["name"]).missing_kernels() == [], row["name"]


def test_cpp_kernels_are_the_compiled_functions():
    if "cpp" not in backends.available():
        pytest.skip("the cpp backend is not built here")
    from sllm import _cpp
    from sllm.backends.cpp import CppBackend
    # the attention kernels dispatch grouped-query calls to the reference (one Python frame)
    direct = [k for k in KERNELS if not k.startswith("attention")]
    assert all(getattr(CppBackend, k) is getattr(_cpp, k) for k in direct)


INCOMPLETE = '''
import sllm
from sllm.backends.base import Backend

class Half(Backend):
    """Implements gelu_fwd, leaves relu_fwd to the reference, forgets the rest."""
    name = "half"
    priority = 2000
    reference_kernels = frozenset({"relu_fwd"})
    def gelu_fwd(self, out, inp):
        out[...] = inp

@sllm.hookimpl
def register_backends(register):
    register(Half)
'''


def test_backend_missing_kernels_is_refused_at_registration(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "sllm_half_plugin", INCOMPLETE)
    rows = {r["name"]: r for r in backends.info()}
    assert not rows["half"]["available"]
    reason = rows["half"]["reason"]
    named = reason.split("kernels ", 1)[1].split(" (", 1)[0].split(", ")
    assert named == [k for k in KERNELS if k not in ("gelu_fwd", "relu_fwd")]
    assert "half" not in backends.available() and backends.get().name != "half"
    with pytest.raises(BackendError, match="attention_decode"):
        backends.get("half")


# ---- plugin guards --------------------------------------------------------------------
def test_plugin_sys_exit_at_import_is_reported(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "sllm_exit_import", "import sys\nsys.exit(3)\n")
    rows = {r["name"]: r for r in backends.info()}
    assert not rows["sllm_exit_import"]["available"]
    assert "sys.exit(3)" in rows["sllm_exit_import"]["reason"]
    assert backends.get("numpy").name == "numpy"


def test_plugin_sys_exit_at_registration_and_probe_is_reported(tmp_path, monkeypatch):
    source = '''
import sys
import sllm
from sllm.backends.base import Backend, KERNELS

class Quits(Backend):
    name = "quits"
    reference_kernels = frozenset(KERNELS)
    @classmethod
    def probe(cls):
        sys.exit("no GPU here")

@sllm.hookimpl
def register_backends(register):
    register(Quits)
'''
    _install_plugin(tmp_path, monkeypatch, "sllm_exit_probe", source)
    _install_plugin(tmp_path, monkeypatch, "sllm_exit_hook",
                    "import sys, sllm\n@sllm.hookimpl\ndef register_backends(register):\n"
                    "    sys.exit(1)\n")
    rows = {r["name"]: r for r in backends.info()}
    assert "sys.exit('no GPU here')" in rows["quits"]["reason"]
    assert "failed to register: called sys.exit(1)" in rows["sllm_exit_hook"]["reason"]
    assert "numpy" in backends.available() and "quits" not in backends.available()


def test_keyboard_interrupt_raised_by_a_plugin_import_is_its_load_error(tmp_path, monkeypatch):
    """The import runs in a child process first (sllm/backends/isolation.py): a module
    raising KeyboardInterrupt is a broken plugin there, not a Ctrl-C of this command."""
    _install_plugin(tmp_path, monkeypatch, "sllm_ctrl_c", "raise KeyboardInterrupt\n")
    assert "numpy" in backends.available()
    reason = {r["name"]: r["reason"] for r in backends.info()}["sllm_ctrl_c"]
    assert reason.endswith("failed to load: importing it crashed (SIGINT)")


SHADOW = '''
import sllm
from sllm.backends.base import Backend, KERNELS

class FakeNumpy(Backend):
    """Claims the built-in name, with a priority that would win auto."""
    name = "numpy"
    priority = 5000
    reference_kernels = frozenset(KERNELS)

@sllm.hookimpl
def register_backends(register):
    register(FakeNumpy)
'''


def test_plugin_cannot_replace_a_builtin_name(tmp_path, monkeypatch):
    from sllm.backends.numpy_ref import NumpyBackend
    _install_plugin(tmp_path, monkeypatch, "sllm_shadow", SHADOW)
    assert type(backends.get("numpy")) is NumpyBackend
    assert "sllm_shadow:numpy" not in backends.available()  # never picked by auto
    assert type(backends.get()).__name__ != "FakeNumpy"
    rows = {r["name"]: r for r in backends.info()}
    assert rows["numpy"]["plugin"] == "builtin"
    assert "select it as 'sllm_shadow:numpy'" in rows["sllm_shadow:numpy"]["note"]
    assert type(backends.get("sllm_shadow:numpy")).__name__ == "FakeNumpy"  # explicit choice


FAILS_TO_START = '''
import sllm
from sllm.backends.base import Backend, KERNELS

class Flaky(Backend):
    """Probes fine, but its constructor fails (a device that vanished, say)."""
    name = "flaky"
    priority = 5000
    reference_kernels = frozenset(KERNELS)
    def __init__(self):
        raise RuntimeError("device lost")

@sllm.hookimpl
def register_backends(register):
    register(Flaky)
'''


def test_sllm_backends_reports_what_auto_and_the_env_resolve_to(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sllm.cli import app
    _install_plugin(tmp_path, monkeypatch, "sllm_flaky", FAILS_TO_START)
    assert backends.available()[0] == "flaky"  # it probes fine...
    out = CliRunner().invoke(app, ["backends"]).output
    best = [n for n in backends.available() if n != "flaky"][0]
    assert f"auto picks: {best}" in out and "auto picks: flaky" not in out  # ...but cannot start
    assert "device lost" in out and "smoke test" in out  # the table wraps the reason
    note = {r["name"]: r.get("note") for r in backends.info()}["flaky"]
    assert note == ("not used by auto: failed the conformance smoke test: failed to start: "
                    "RuntimeError: device lost")
    monkeypatch.setenv("SLLM_BACKEND", "numpy")
    backends.reset()
    out = CliRunner().invoke(app, ["backends"]).output
    assert "SLLM_BACKEND=numpy: models use numpy" in out
    monkeypatch.setenv("SLLM_BACKEND", "flaky")
    backends.reset()
    out = CliRunner().invoke(app, ["backends"]).output
    assert "SLLM_BACKEND=flaky: models use nothing" in out and "device lost" in out


def test_builtins_registered_once_through_the_hook():
    from sllm import hookspecs, plugins
    pm, errors = plugins.plugin_manager()
    names = [impl.plugin_name for impl in pm.hook.register_backends.get_hookimpls()]
    assert names.count("builtin") == 1 and not errors
    assert sllm.hookimpl is hookspecs.hookimpl is plugins.hookimpl


GPT2_ONLY = '''
import sllm
from sllm.backends.base import Backend, KERNELS

class Gpt2Only(Backend):
    """Every GPT-2 kernel (from the reference), none of the llama kernels."""
    name = "gpt2only"
    priority = 2000
    reference_kernels = frozenset(KERNELS)

@sllm.hookimpl
def register_backends(register):
    register(Gpt2Only)
'''


def test_a_gpt2_only_backend_runs_gpt2_and_names_the_llama_kernels(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "sllm_gpt2only_plugin", GPT2_ONLY)
    assert "gpt2only" in backends.available()
    cfg = dict(vocab_size=11, embedding_dim=8, num_layers=1, num_heads=2, ffn_hidden_dim=12,
               max_seq_len=8)
    model = sllm.SLLM(cfg, backend="gpt2only")
    assert model.forward([[1, 2, 3]]).shape == (1, 3, 11)
    with pytest.raises(BackendError, match="rmsnorm_fwd.*rope_fwd.*swiglu_bwd"):
        sllm.SLLM({**cfg, "architecture": "llama"}, backend="gpt2only")
