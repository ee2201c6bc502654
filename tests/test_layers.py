"""The layering the README declares: runtime <- sed <- export <- benchmarks <- sed_trt, no cycles.

Read from the source with ``ast`` (every import statement, lazy ones inside functions too),
so the test needs none of the optional packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Each package may import only itself and the packages listed after it.
LAYERS = ("sed_trt", "benchmarks", "export", "sed", "runtime")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Project modules imported by ``path`` (absolute and relative imports, at any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in LAYERS}


def _graph() -> dict[str, set[str]]:
    files = [p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target in _imports(path, name):
            # "from pkg import name" names a module when pkg.name is one, else an attribute of pkg
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def _upward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        allowed = LAYERS[LAYERS.index(module.split(".")[0]) :]
        bad += [f"{module} -> {d}" for d in sorted(deps) if d.split(".")[0] not in allowed]
    return bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_checks_can_fail():
    toy = {"runtime.a": {"sed.b"}, "sed.b": {"runtime.a"}, "export.c": set()}
    assert _upward(toy) == ["runtime.a -> sed.b"]
    assert _cycles(toy) == [["runtime.a", "sed.b", "runtime.a"]]


def test_each_layer_imports_only_the_layers_below():
    bad = _upward(_graph())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_runtime_is_torch_free():
    """The deployment core needs numpy, Pillow and an inference engine, never torch (the TensorRT
    backend included: cuda-python buffers); the torch backend and its array ops live in sed."""
    offenders = []
    for path in (ROOT / "runtime").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] == "torch" for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", LAYERS)
def test_each_package_says_where_it_stands(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert "layer" in doc.lower() or "Layers" in doc, f"{package}/__init__.py does not state its layer"
