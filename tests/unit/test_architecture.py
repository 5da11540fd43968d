"""The package's shape: no import cycle, and the light entry points stay light.

Imports are read from the source (every `import`, at module level or inside a function, except
under `if TYPE_CHECKING:`), so a cycle through a lazy import counts too: it is still a knot a
reader has to untie.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "src" / "face_analysis"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if "generated" not in path.relative_to(PACKAGE).parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _lazy_homes(tree: ast.AST, module: str) -> Iterator[str]:
    """The modules a package's `lazy_names(__name__, {...})` loads on first use."""
    package = module
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_names":
            for value in node.args[1].values if isinstance(node.args[1], ast.Dict) else ():
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield _resolve(package, value.value)


def _resolve(package: str, relative: str) -> str:
    level = len(relative) - len(relative.lstrip("."))
    base = package.split(".")
    base = base[: len(base) - level + 1] if level else []
    rest = relative.lstrip(".")
    return ".".join([*base, rest] if rest else base)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set(_lazy_homes(tree, package))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
                continue
            base = (
                _resolve(package, "." * node.level + (node.module or "")) if node.level else node.module or ""
            )
            for alias in node.names:  # `from . import models` imports a module, else the package
                edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[module] = {edge for edge in edges if edge in modules and edge != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "face_analysis.runtime" in graph["face_analysis.detection.centerface"]  # the graph is real
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_only_the_quantize_command_imports_quantize() -> None:
    importers = sorted(m for m, edges in import_graph().items() if "face_analysis.quantize" in edges)
    assert importers == ["face_analysis.cli"]


def test_models_loads_no_model_runtime() -> None:
    edges = import_graph()["face_analysis.models"]
    assert edges <= {"face_analysis.cpu", "face_analysis.errors"}, edges


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("face_analysis.cli", ("numpy", "onnxruntime", "onnx", "cv2", "PIL", "grpc")),
        ("face_analysis.services.health", ("onnxruntime", "onnx", "cv2", "numpy")),
        ("face_analysis.services.data_storage", ("onnxruntime", "onnx", "cv2")),
    ],
)
def test_light_entry_points_import_no_heavy_module(module: str, absent: tuple[str, ...]) -> None:
    """--help must answer at once; the health check and data storage load no model runtime."""
    pytest.importorskip("grpc", reason="the services extra")
    code = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "", f"{module} imports {loaded.stdout.strip()}"
