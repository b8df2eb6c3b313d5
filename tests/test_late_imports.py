"""A loop class imported during the session (in a test, a fixture, a library's lazy import) is
watched like one imported before it."""

from __future__ import annotations

import pytest

from conftest import blocked, run

pytest.importorskip("uvloop")

SLEEP_FIX = "fix: time.sleep blocks every request — use `await asyncio.sleep(...)`"

NOT_YET = """
import sys


def pytest_configure(config):
    assert "uvloop" not in sys.modules, "this check needs a process where uvloop is not imported"
"""

LAZY_LIBRARY = """
def serve(coro):
    import uvloop  # imported on first use, as server libraries do

    return uvloop.run(coro)
"""

TESTS = """
import asyncio, time, pytest

import server_lib


async def main():
    await asyncio.sleep(0)
    time.sleep(0.2)


def test_imported_in_the_test():
    import uvloop

    uvloop.run(main())


@pytest.fixture
def uv():
    import uvloop

    return uvloop


def test_imported_by_a_fixture(uv):
    uv.run(main())


def test_imported_by_a_library():
    server_lib.serve(main())


def test_clean_after_the_import():
    import uvloop

    uvloop.run(asyncio.sleep(0.2))
"""


def test_uvloop_imported_during_the_session_is_watched(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(NOT_YET)
    pytester.makepyfile(server_lib=LAZY_LIBRARY, test_late=TESTS)
    pytester.syspathinsert()
    # A process of its own: this one has imported uvloop long ago.
    result = run(pytester, "-p", "no:randomly", subprocess=True)
    result.assert_outcomes(failed=3, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_imported_in_the_test _*",
            blocked("test_late.py:8 in main", seconds="0.*"),
            "    time.sleep(0.2)",
            SLEEP_FIX,
            "*_ test_imported_by_a_fixture _*",
            blocked("test_late.py:8 in main", seconds="0.*"),
            "*_ test_imported_by_a_library _*",
            blocked("test_late.py:8 in main", seconds="0.*"),
        ]
    )
