"""Every kernel of every available backend against the numpy reference: a thin caller of
sllm.backends.conformance (the suite `sllm check-backend` runs), one test per case."""
import pytest

from sllm import backends
from sllm.backends import cases, conformance
from sllm.backends.base import LLAMA_KERNELS, OPTIONAL_KERNELS

OTHER = [n for n in backends.available() if n != "numpy"]
pytestmark = pytest.mark.skipif(not OTHER, reason="only the numpy reference is available")


@pytest.fixture(params=OTHER or ["none"])
def be(request):
    """A non-reference backend instance."""
    return backends.get(request.param)


@pytest.mark.parametrize("case", conformance.cases(),
                         ids=lambda c: f"{c.section}[{c.label}]".replace(" ", ","))
def test_conformance(be, case):
    if case.needs_llama and be.missing_llama_kernels():  # as `sllm check-backend` skips them
        pytest.skip(f"{be.name} lacks the llama kernels (it runs GPT-2 models only)")
    checks = case.run(be)
    assert checks, f"{case.section} [{case.label}] ran no check"
    failed = [c for c in checks if not c.passed]
    assert not failed, "\n".join(f"{c.kernel} [{c.case}] {c.output}: error {c.error:.3e} > "
                                 f"allowed {c.allowed:.3e}" for c in failed)


def test_every_kernel_of_the_contract_has_cases():
    assert set(cases.CASES) == set(backends.KERNELS) | set(LLAMA_KERNELS) | set(OPTIONAL_KERNELS)
    assert all(spec.shapes for spec in cases.CASES.values())
