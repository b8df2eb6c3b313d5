"""The package's layout holds: a module a job, no import circle, the engine free of pytest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_loopguard

PACKAGE = Path(pytest_loopguard.__file__).parent
MODULES = {p.stem: p for p in PACKAGE.glob("*.py")}
# The pytest side; everything else is the engine (and its vocabulary), usable without pytest.
PYTEST_SIDE = {
    "plugin",
    "_markers",
    "_phases",
    "_reprs",
    "_settings",
    "_summary",
    "_trio_fixtures",
    "_verdict",
}


def _imports(path: Path) -> set[str]:
    """Package modules imported at module level (not inside functions or TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module)
            else:
                found.update(alias.name for alias in node.names)
    return found & set(MODULES)


def _third_party(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_import_circle() -> None:
    graph = {name: _imports(path) for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import circle: {' -> '.join((*trail, name))}"
        if name not in done:
            for other in sorted(graph[name]):
                visit(other, (*trail, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize("name", sorted(set(MODULES) - PYTEST_SIDE))
def test_the_engine_does_not_import_pytest(name: str) -> None:
    imported = _third_party(MODULES[name])
    assert not imported & {"pytest", "_pytest", "pluggy"}
    if name != "sqlalchemy" and not name.startswith("_sa_"):
        assert "sqlalchemy" not in imported


def test_settings_do_not_import_the_engine() -> None:
    assert _imports(MODULES["_settings"]) <= {"_options"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_about_300_lines(name: str) -> None:
    assert len(MODULES[name].read_text().splitlines()) <= 320


def test_public_api() -> None:
    for name in ("BlockEvent", "LoopBlockedError", "LoopHangError", "LoopguardError", "LoopGuard"):
        assert name in pytest_loopguard.__all__
        assert getattr(pytest_loopguard, name).__module__.startswith("pytest_loopguard.")
    assert issubclass(pytest_loopguard.LoopBlockedError, pytest_loopguard.LoopguardError)
