"""The code's layers, read from its imports with `ast`: no module imports a higher layer, no import circle,
no file over 400 lines, no undefined name (pyflakes) (docs/architecture.md).

formats < backend.models < backend.sources < backend.settings < backend.training < backend.prediction
< backend.interactive < backend.serving (and the entry points backend/_wsgi.py, backend/gunicorn.conf.py) < tools.
Models and sources take plain values, not the settings object, so they sit below it.
Every import counts, also those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("formats", "backend", "tools")
LAYERS = ("formats", "backend.models", "backend.sources", "backend.settings", "backend.training",
          "backend.prediction", "backend.interactive", "backend.serving", "tools")
MAX_LINES = 400
ENTRY_POINTS = {"backend._wsgi": "backend.serving", "backend.gunicorn.conf": "backend.serving", "backend": "formats"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def layer_of(module: str) -> int:
    module = next((layer for name, layer in ENTRY_POINTS.items() if module == name), module)
    ranks = [rank for rank, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    if not ranks:
        raise AssertionError(f"{module} belongs to no layer: add it to one (tests/test_layers.py)")
    return ranks[-1]


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports (a `from package import name` counts as package.name when that is a module)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {module: imported_modules(module, path, known) for module, path in modules.items()}


def test_every_module_belongs_to_a_layer() -> None:
    for module in project_modules():
        layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{module} ({LAYERS[layer_of(module)]}) imports {target} ({LAYERS[layer_of(target)]})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle() -> None:
    graph = {module: {target for target in targets if not module.startswith(target + ".")}
             for module, targets in import_graph().items()}  # a package's __init__ may be imported by its modules
    assert find_cycle(graph) is None


def test_no_file_over_the_line_limit() -> None:
    long = {str(path.relative_to(REPO_ROOT)): lines for path in project_modules().values()
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set()}, None),
])
def test_cycle_finder(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_layer_checker_sees_a_function_level_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def late():\n    from backend.serving import app\n")
    assert imported_modules("formats.mod", source, {"backend.serving", "backend.serving.app", "formats.mod"}) == \
        {"backend.serving.app"}


def undefined_names(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """pyflakes' undefined names in one file (a name used but never imported or defined, in any scope)."""
    from pyflakes import checker, messages

    tree = ast.parse(path.read_text(), str(path))
    found = checker.Checker(tree, filename=str(path)).messages
    return [f"{path.relative_to(root)}:{m.lineno}: {m.message % m.message_args}" for m in found
            if isinstance(m, (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport))]


def test_no_undefined_names() -> None:
    """A name a function uses but never imports fails only when that function runs (a training job, say)."""
    pytest.importorskip("pyflakes")
    files = [*project_modules().values(), *sorted((REPO_ROOT / "bench").glob("*.py"))]
    assert [problem for path in files for problem in undefined_names(path)] == []


def test_the_undefined_name_check_sees_a_name_missing_inside_a_function(tmp_path: Path) -> None:
    pytest.importorskip("pyflakes")
    source = tmp_path / "mod.py"
    source.write_text("def late():\n    from pathlib import Path\n    return Path(), PurePath()\n")
    assert undefined_names(source, tmp_path) == ["mod.py:3: undefined name 'PurePath'"]
