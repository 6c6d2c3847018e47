"""examples/sllm-backend-example, loaded through a real entry point from its source tree
(CI also pip-installs it and runs its own tests): it registers, and passes the checker."""
from pathlib import Path

import pytest

from sllm import backends
from sllm.backends import conformance

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sllm-backend-example"


@pytest.fixture
def example_plugin(tmp_path, monkeypatch):
    """The example package on sys.path, with dist-info declaring its entry point."""
    dist = tmp_path / "sllm_backend_example-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sllm-backend-example\n"
                                   "Version: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[sllm]\nsllm-backend-example = sllm_backend_example\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.delenv("SLLM_BACKEND", raising=False)
    monkeypatch.delenv("SLLM_LOAD_PLUGINS", raising=False)
    backends.reset()
    yield
    backends.reset()


def test_example_passes_the_conformance_suite(example_plugin):
    rows = {r["name"]: r for r in backends.info()}
    assert rows["example"]["available"] and rows["example"]["plugin"] == "sllm-backend-example"
    assert backends.get().name != "example"  # priority 40: auto keeps the built-ins
    report = conformance.run("example")
    assert report.passed, conformance.render(report)


def test_load_plugins_takes_the_entry_point_name(example_plugin, monkeypatch):
    monkeypatch.setenv("SLLM_LOAD_PLUGINS", "example")  # the backend name: not a plugin name
    assert "example" not in backends.available()
    monkeypatch.setenv("SLLM_LOAD_PLUGINS", "sllm-backend-example")
    backends.reset()
    assert "example" in backends.available()
