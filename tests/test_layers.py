"""The package's shape, as rules a change can break: imports run one way (down the layers of the README's
Layout table), no module imports itself back through others, modules and functions stay readable.

Imports are read as text, those inside functions and under ``TYPE_CHECKING`` included: a lazy import is a
dependency all the same.
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "frugalray"

# Lowest first. A module may import its own package and the packages below it, never one above.
LAYERS = [
    {"_registry", "_version", "_files", "strategies"},  # vocabulary every layer shares
    {"config"},
    {"data"},
    {"results"},
    {"model"},
    {"training"},
    {"study"},
    {"deploy"},
    {"cluster"},
    {"cli"},
    {"testing"},  # helpers for tests, above everything they simulate
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """(imported frugalray module, line) for every import in ``path`` (the module ``module``, by default the one
    at that path); ``from pkg import module`` names the module. Relative imports (``from . import x``, ``from
    ..results import store``) are resolved against the importing module's package."""
    module = module or _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "frugalray" and not target.startswith("frugalray."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names
                      if alias.name == "frugalray" or alias.name.startswith("frugalray.")]
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "frugalray"


def test_every_package_has_a_layer():
    packages = {_package(m) for m in MODULES} - {"frugalray", "__main__"}
    assert packages <= set(LEVEL), f"place {sorted(packages - set(LEVEL))} in LAYERS (and the README's table)"


def test_imports_run_down_the_layers():
    upward = []
    for module, path in MODULES.items():
        mine = _package(module)
        if mine == "frugalray":
            continue  # the public API re-exports from every layer, lazily
        for target, line in _imports(path):
            theirs = _package(target)
            if theirs == "frugalray":
                upward.append(f"{path.name}:{line} {module} imports the public API 'frugalray' (import the module)")
            elif theirs != mine and LEVEL.get(theirs, 99) > LEVEL[mine]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {module} [{mine}] imports {target} [{theirs}]")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = defaultdict(set)
    for module, path in MODULES.items():
        graph[module] |= {t for t, _ in _imports(path) if t in MODULES and t != module and _package(module) != "frugalray"}
    circles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert not circles, f"import circles: {circles}"


def _strongly_connected(graph) -> list[list[str]]:
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_readable(module):
    path = MODULES[module]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(PACKAGE.parent)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The rules can fail: an upward import and a circle written to a scratch package are both found."""
    (tmp_path / "a.py").write_text("from frugalray.cli.run import x\nfrom frugalray.b import y\n")
    (tmp_path / "b.py").write_text("def f():\n    from frugalray.a import z\n")
    assert [t for t, _ in _imports(tmp_path / "a.py", "frugalray.a")] == ["frugalray.cli.run", "frugalray.b"]
    graph = {"frugalray.a": {"frugalray.b"}, "frugalray.b": {t for t, _ in _imports(tmp_path / "b.py", "frugalray.b")}}
    assert ["frugalray.a", "frugalray.b"] in _strongly_connected(graph)
    assert LEVEL["cli"] > LEVEL["data"]


def test_relative_imports_count_as_the_absolute_ones_they_are(tmp_path):
    """``from ..cli import run`` in frugalray/data/x.py is ``frugalray.cli.run``: an upward import all the same."""
    (tmp_path / "x.py").write_text("from ..cli import run\nfrom ..cli.read import export\nfrom . import readers\n"
                                   "from .tasks import load_task\nfrom ...elsewhere import y\nimport frugalrayish\n")
    assert _imports(tmp_path / "x.py", "frugalray.data.x") == [
        ("frugalray.cli.run", 1), ("frugalray.cli.read", 2), ("frugalray.data.readers", 3), ("frugalray.data.tasks", 4)]
    (tmp_path / "__init__.py").write_text("from .tasks import load_task\nfrom .. import strategies\n")
    assert _imports(tmp_path / "__init__.py", "frugalray.data") == [("frugalray.data.tasks", 1),
                                                                    ("frugalray.strategies", 2)]
