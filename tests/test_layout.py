"""The package's layout holds: the layers import only downwards, no import cycle anywhere (imports
inside functions and under ``TYPE_CHECKING`` included), the engine free of pytest, SQLAlchemy only
in its package, and modules and classes a reader can take in."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import pytest_loopguard

PACKAGE = Path(pytest_loopguard.__file__).parent
ROOT = PACKAGE.name


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
# Each layer may import its own and the ones before it; the top-level modules are the faces.
LAYERS = ["_base", "_backends", "_core", "_procs", "_lifecycle", "_sqlalchemy", "_plugin"]
ENGINE_SIDE = {"_base", "_backends", "_core", "_procs", "_lifecycle", "_sqlalchemy"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "top"


def _imports(module: str) -> set[str]:
    """Package modules ``module`` imports anywhere in its source: module level, functions,
    ``TYPE_CHECKING`` blocks. ``from .x import y`` counts ``x.y`` when that is a module."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES and name not in (module, ROOT)}


def _third_party(module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


GRAPH = {module: _imports(module) for module in MODULES}


def test_the_graph_sees_every_kind_of_import() -> None:
    # Guards the checks below: a type-checking import and a function-level one both count.
    assert "pytest_loopguard._core.hang" in GRAPH["pytest_loopguard._core.engine"]  # TYPE_CHECKING
    assert "pytest_loopguard._core.strict" in GRAPH["pytest_loopguard._core.guard"]  # in a function


def test_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import cycle: {' -> '.join((*trail, name))}"
        if name not in done:
            for other in sorted(GRAPH[name]):
                visit(other, (*trail, name))
            done.add(name)

    for name in sorted(GRAPH):
        visit(name, ())


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) != "top"))
def test_layers_import_only_downwards(module: str) -> None:
    mine = LAYERS.index(_layer(module))
    for other in GRAPH[module]:
        layer = _layer(other)
        assert layer != "top", f"{module} imports the face {other}"
        assert LAYERS.index(layer) <= mine, f"{module} imports {other} ({layer})"
        # _sqlalchemy and _core are side by side: neither imports the other.
        assert {layer, _layer(module)} != {"_core", "_sqlalchemy"}, f"{module} imports {other}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in ENGINE_SIDE))
def test_the_engine_does_not_import_pytest(module: str) -> None:
    imported = _third_party(module)
    assert not imported & {"pytest", "_pytest", "pluggy"}
    if _layer(module) != "_sqlalchemy":
        assert "sqlalchemy" not in imported


def test_only_its_package_and_face_import_sqlalchemy() -> None:
    importers = {m for m in MODULES if "sqlalchemy" in _third_party(m)}
    assert importers <= {f"{ROOT}.sqlalchemy"} | {m for m in MODULES if _layer(m) == "_sqlalchemy"}
    assert f"{ROOT}.sqlalchemy" in importers


def test_settings_do_not_import_the_engine() -> None:
    assert {_layer(m) for m in GRAPH[f"{ROOT}._plugin.settings"]} <= {"_base", "_plugin"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_its_job(module: str) -> None:
    assert ast.get_docstring(ast.parse(MODULES[module].read_text())), f"{module}: no docstring"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_400_lines_no_class_over_250(module: str) -> None:
    source = MODULES[module].read_text()
    assert len(source.splitlines()) <= 400
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            assert node.end_lineno - node.lineno + 1 <= 250, f"{module}.{node.name}"


def test_public_api() -> None:
    for name in ("BlockEvent", "LoopBlockedError", "LoopHangError", "LoopguardError", "LoopGuard"):
        assert name in pytest_loopguard.__all__
        assert getattr(pytest_loopguard, name).__module__.startswith("pytest_loopguard.")
    assert issubclass(pytest_loopguard.LoopBlockedError, pytest_loopguard.LoopguardError)


def test_importing_the_package_imports_neither_pytest_nor_sqlalchemy(
    pytester: pytest.Pytester,
) -> None:
    code = (
        "import sys; import pytest_loopguard; "
        "print(sorted({'pytest', 'sqlalchemy'} & set(sys.modules)))"
    )
    result = pytester.run(sys.executable, "-c", code)
    assert result.ret == 0
    assert result.outlines[-1] == "[]"
