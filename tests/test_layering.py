"""The import graph of the package has no cycles: the file formats read and write plain
data (the model side builds the SLLM), the reference kernels import nothing of the
registry, hook specs live apart from the plugin manager. Imports inside functions count;
imports under `if TYPE_CHECKING:` load nothing and do not (a family's forward annotating
the model it is handed)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sllm"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _defined(path: Path) -> set[str]:
    """Names a module binds at its top level (assignments, defs, classes, imports)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool, modules: dict) -> set[str]:
    """The sllm modules an import statement loads: a submodule, or the module it takes a
    name from. A name that is neither a .py submodule nor bound by the package (the
    compiled sllm._cpp) loads no Python module of the package."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source not in modules:
        return set()
    found = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if sub in modules:
            found.add(sub)
        elif modules[source].name != "__init__.py" or alias.name in _defined(modules[source]):
            found.add(source)
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree except what sits under `if TYPE_CHECKING:`."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the sllm modules it imports when it runs (at any depth of its code)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _targets(name, node, path.name == "__init__.py", modules)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("module,forbidden", [
    ("sllm.serialize", {"sllm", "sllm.model"}),
    ("sllm.interchange", {"sllm", "sllm.model"}),
    ("sllm.backends.reference", {"sllm.backends", "sllm.backends.base"}),
    ("sllm.hookspecs", {"sllm.plugins", "sllm.backends"}),
    ("sllm.backends.builtin", {"sllm.plugins"}),
    ("sllm.backends.conformance", {"sllm.bench"}),  # both use sllm.timing
    ("sllm.backends.cases", {"sllm.backends.conformance", "sllm.bench", "sllm.bench_shapes"}),
])
def test_layers(module, forbidden):
    assert not import_graph()[module] & forbidden


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_typing_only_imports_are_not_edges():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n"
                     "    import b\ndef f():\n    import c\n")
    names = {a.name for n in _runtime_nodes(tree) if isinstance(n, ast.Import) for a in n.names}
    assert names == {"b", "c"}


def test_files_are_written_through_fileio():
    """One atomic-write helper (temp file, fsync of file and directory, rename): no module
    renames temp files into place by hand."""
    offenders = [path.name for path in PACKAGE.rglob("*.py") if path.name != "fileio.py"
                 and ("os.replace(" in path.read_text(encoding="utf-8")
                      or "os.rename(" in path.read_text(encoding="utf-8"))]
    assert offenders == []
