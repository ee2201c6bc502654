"""The layering the README declares: runtime <- sed <- export <- benchmarks <- sed_trt, no cycles.

Every layer installs under the one import root ``sed_trt`` (``sed_trt.runtime`` is the
repository's ``runtime/``, and so on); the top floor is the rest of ``sed_trt`` (api, cli, serve).

Read from the source with ``ast`` (every import statement, lazy ones inside functions too),
so the test needs none of the optional packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Each layer may import only itself and the layers listed after it.
LAYERS = ("sed_trt", "sed_trt.benchmarks", "sed_trt.export", "sed_trt.sed", "sed_trt.runtime")
# Where each layer's files lie in the repository (sed_trt/runtime etc. are links to these folders).
FOLDERS = {
    "sed_trt": "sed_trt",
    "sed_trt.benchmarks": "benchmarks",
    "sed_trt.export": "export",
    "sed_trt.sed": "sed",
    "sed_trt.runtime": "runtime",
}


def _layer(module: str) -> str:
    """The layer a module belongs to: the longest layer name that prefixes it."""
    return max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len, default="")


def _module_name(path: Path, layer: str) -> str:
    parts = [*layer.split("."), *path.relative_to(ROOT / FOLDERS[layer]).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files() -> dict[str, Path]:
    """Every module of the project by its import name (the links under sed_trt/ are not walked twice)."""
    modules = {}
    for layer, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if layer == "sed_trt" and path.relative_to(ROOT / folder).parts[0] in {
                "runtime",
                "sed",
                "export",
                "benchmarks",
            }:
                continue
            modules[_module_name(path, layer)] = path
    return modules


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
    return {m for m in found if _layer(m)}


def _graph() -> dict[str, set[str]]:
    modules = _files()
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
        allowed = LAYERS[LAYERS.index(_layer(module)) :]
        bad += [f"{module} -> {d}" for d in sorted(deps) if _layer(d) not in allowed]
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
    toy = {"sed_trt.runtime.a": {"sed_trt.sed.b"}, "sed_trt.sed.b": {"sed_trt.runtime.a"}, "sed_trt.export.c": set()}
    assert _upward(toy) == ["sed_trt.runtime.a -> sed_trt.sed.b"]
    assert _cycles(toy) == [["sed_trt.runtime.a", "sed_trt.sed.b", "sed_trt.runtime.a"]]


def test_each_layer_imports_only_the_layers_below():
    bad = _upward(_graph())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_runtime_is_torch_free():
    """The deployment core needs numpy, Pillow and an inference engine, never torch (the TensorRT
    backend included: cuda-python buffers); the torch backend and its array ops live in sed."""
    offenders = []
    for path in (ROOT / FOLDERS["sed_trt.runtime"]).rglob("*.py"):
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
    doc = ast.get_docstring(ast.parse((ROOT / FOLDERS[package] / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert "layer" in doc.lower() or "Layers" in doc, f"{package}/__init__.py does not state its layer"
