"""pytest-trio runs a trio test's async fixtures inside the test's own ``trio.run``, in the call
phase: their blocks are named after the fixture (and its setup or teardown) from their stack."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Sequence
from dataclasses import replace
from types import CodeType

import pytest

from .._base.events import BlockEvent

# (file, function) of a fixture's code -> (fixture name, line of its first yield or None).
Codes = dict[tuple[str, str], tuple[str, "int | None"]]


def name_fixtures(events: Sequence[BlockEvent], item: pytest.Item) -> list[BlockEvent]:
    """``events`` of the call phase, those that ran in one of the test's fixtures named."""
    if not any(e.backend == "trio" and e.fixture is None for e in events):
        return list(events)  # every other loop runs fixtures in setup and teardown
    codes = _fixture_codes(item)
    return [_named(e, codes) if e.backend == "trio" and e.fixture is None else e for e in events]


def _named(event: BlockEvent, codes: Codes) -> BlockEvent:
    for frame in reversed(event.stack):  # innermost first: the fixture that blocked
        found = codes.get((frame.filename, frame.function))
        if found is not None:
            name, yields = found
            phase = "teardown" if yields is not None and frame.lineno > yields else "setup"
            return replace(event, fixture=name, phase=phase)
    return event


def _fixture_codes(item: pytest.Item) -> Codes:
    # Private: pytest has no public map from a test to its fixtures' definitions (pytest-trio
    # reads the same attribute to find the fixtures it runs).
    info = getattr(item, "_fixtureinfo", None)
    codes: Codes = {}
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        for definition in definitions:
            code = getattr(inspect.unwrap(definition.func), "__code__", None)
            if isinstance(code, CodeType):
                codes[(code.co_filename, code.co_name)] = (definition.argname, _first_yield(code))
    return codes


def _first_yield(code: CodeType) -> int | None:
    """The line of the first ``yield`` of a fixture's source: before it is setup, after it
    teardown. None for a fixture that returns, or whose source cannot be read."""
    try:
        lines, start = inspect.getsourcelines(code)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, SyntaxError, TypeError):
        return None
    found = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Yield)]
    return min(found) + start - 1 if found else None
