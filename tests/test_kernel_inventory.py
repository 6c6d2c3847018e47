"""Every kernel of the contract is present at every step that "Adding a kernel" in
sllm/backends/base.py lists: declared with a docstring, a numpy reference, conformance
cases; on cpp a C++ declaration, a binding and a stub signature (unless cpp leaves it to the
reference); on wasm an export, a wrapper and a row in docs/wasm-abi.md (unless wasm leaves
it to the reference); and every kernel the browser calls is an export. Read from the
sources, so it holds without a compiler too; the stub is also checked against the built
extension when there is one."""
import ast
import re
from pathlib import Path

import pytest

from sllm.backends import base, reference
from sllm.backends.base import KERNELS, LLAMA_KERNELS, OPTIONAL_KERNELS, Backend
from sllm.backends.cases import CASES
from sllm.backends.cpp import CppBackend
from sllm.backends.wasm import WasmBackend, WasmSimdBackend, _WasmBase

ROOT = Path(__file__).resolve().parent.parent
ALL = (*KERNELS, *LLAMA_KERNELS, *OPTIONAL_KERNELS)
# C++ functions that serve two kernels: dropout's backward is its forward with the same mask;
# decode_block (llama_decode_block) takes a batching step's slots and positions (DecodeRows)
# too.
CPP_SAME_AS = {"dropout_bwd": "dropout_fwd", "decode_block_batch": "decode_block",
               "llama_decode_block_batch": "llama_decode_block"}


def _text(pattern: str) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(ROOT.glob(pattern)))


def cpp_bindings() -> set[str]:
    """Functions the extension's binding sources give Python: `m.def("name"`, a binding
    helper's `(m, "name"`, or a loop over `{"name", ...}` of names."""
    text = _text("cpp/*bindings.cpp")
    names = set(re.findall(r'(?:m\.def|\(m), "?([a-z_0-9]+)"', text.replace('m.def("', 'm.def, "')))
    for group in re.findall(r"const char\* name : \{([^}]*)\}", text):
        names |= set(re.findall(r'"([a-z_0-9]+)"', group))
    return names


def cpp_declared() -> set[str]:
    """Functions the C++ headers declare."""
    return set(re.findall(r"\b([a-z_0-9]+)\s*\(", _text("cpp/*.h")))


def stub_functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse((ROOT / "sllm" / "_cpp.pyi").read_text(encoding="utf-8"))
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def wasm_exports() -> set[str]:
    return set(re.findall(r"^EXPORT\(([a-z_0-9]+)\)", _text("wasm/*.c"), re.M))


def abi_kernel_rows() -> set[str]:
    """Names in the first column of docs/wasm-abi.md's kernel table (| kernel | slots |)."""
    text = _text("docs/wasm-abi.md")
    table = text[text.index("| kernel | slots |"):].split("\n\n")[0]
    rows = re.findall(r"^\| (`[a-z_0-9]+`(?:, `[a-z_0-9]+`)*) \|", table, re.M)
    return {name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row)}


def native(cls: type, kernel: str) -> bool:
    """Whether the backend class provides `kernel` itself (not the reference, not the
    contract's default composition of an optional kernel)."""
    if kernel in getattr(cls, "reference_kernels", ()):
        return False
    return kernel not in OPTIONAL_KERNELS or getattr(cls, kernel) is not getattr(Backend, kernel)


@pytest.mark.parametrize("kernel", ALL)
def test_declared_with_a_reference_and_cases(kernel):
    declared = getattr(Backend, kernel, None)
    assert declared is not None and (declared.__doc__ or "").strip(), f"Backend.{kernel}: no docstring"
    assert callable(getattr(reference, kernel, None)), f"reference.py has no {kernel}"
    assert kernel in CASES and CASES[kernel].shapes, f"cases.py has no cases for {kernel}"


@pytest.mark.parametrize("kernel", ALL)
def test_cpp_declares_binds_and_stubs_it(kernel):
    if kernel in OPTIONAL_KERNELS and kernel not in cpp_bindings():
        pytest.skip(f"cpp runs {kernel} as the contract's composition")
    if kernel in getattr(CppBackend, "reference_kernels", ()):
        pytest.skip(f"cpp leaves {kernel} to the numpy reference")
    assert kernel in cpp_bindings(), f"no binding of {kernel} in cpp/*bindings.cpp"
    assert CPP_SAME_AS.get(kernel, kernel) in cpp_declared(), f"no declaration of {kernel} in cpp/*.h"
    assert kernel in stub_functions(), f"sllm/_cpp.pyi lacks {kernel}"


def test_the_stub_names_every_binding():
    assert set(stub_functions()) == cpp_bindings()


def test_the_stub_matches_the_built_extension():
    cpp = pytest.importorskip("sllm._cpp", reason="the C++ extension is not built")
    for name, node in stub_functions().items():
        doc = (getattr(cpp, name).__doc__ or "").strip().splitlines()[0]
        built = re.findall(r"(\w+): ", doc[doc.index("(") + 1:doc.rindex(")")])
        stubbed = [a.arg for a in node.args.args]
        assert stubbed == built, f"{name}: stub {stubbed}, extension {built}"


@pytest.mark.parametrize("kernel", ALL)
def test_wasm_exports_wraps_and_documents_it(kernel):
    if not any(native(cls, kernel) for cls in (WasmBackend, WasmSimdBackend)):
        pytest.skip(f"wasm leaves {kernel} to the reference or the contract's composition")
    assert kernel in vars(_WasmBase), f"sllm/backends/wasm.py has no {kernel} wrapper"
    assert kernel in wasm_exports(), f"no EXPORT({kernel}) in wasm/*.c"
    assert kernel in abi_kernel_rows(), f"docs/wasm-abi.md has no row for {kernel}"


def test_every_documented_and_called_wasm_kernel_is_exported():
    called = set(re.findall(r'_call\("([a-z_0-9]+)"', (ROOT / "sllm/backends/wasm.py").read_text()))
    browser = set(re.findall(r'\bk\.call\("([a-z_0-9]+)"', _text("sllm/web/*.js")))  # the kernel host
    exports = wasm_exports()
    assert abi_kernel_rows() - exports == set(), "docs/wasm-abi.md rows without an export"
    assert called - exports == set(), "wasm.py calls exports that do not exist"
    assert browser - exports == set(), "the browser calls exports that do not exist"


def test_adding_a_kernel_lists_every_step():
    text = base.__doc__ or ""
    for place in ("reference.py", "cases.py", "cpp/kernels.h", "bindings.cpp", "sllm/_cpp.pyi",
                  "wasm/", "wasm.py", "docs/wasm-abi.md", "model.js"):
        assert place in text, f"base.py's 'Adding a kernel' does not mention {place}"
