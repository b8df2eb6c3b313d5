"""uvloop loops get the same verdicts and messages as the stdlib loop."""

from __future__ import annotations

import sys
import textwrap

import pytest

from conftest import CANARY, assert_blocked, assert_clean, blocked, run
from helpers_src import SLOW_SERVER
from test_clean import CLEAN
from test_clean import PRELUDE as CLEAN_PRELUDE
from test_detection import KINDS
from test_detection import PRELUDE as BLOCKING_PRELUDE

pytest.importorskip("uvloop")

# pytest-asyncio 1.x's way to run tests on another loop: a loop factory hook in conftest.py.
UVLOOP_CONFTEST = (
    SLOW_SERVER
    + """
import uvloop


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}
"""
)
ON_UVLOOP = "    assert type(asyncio.get_running_loop()).__module__ == 'uvloop'\n"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_blocking_kind_on_uvloop(pytester: pytest.Pytester, kind: str) -> None:
    if kind == "file" and sys.platform == "win32":
        pytest.skip("named pipes via os.mkfifo are POSIX only")
    code, line, fix = KINDS[kind]
    pytester.makeconftest(UVLOOP_CONFTEST)
    body = f"\n\nasync def test_kind(slow_url):\n{ON_UVLOOP}    {code}\n"
    pytester.makepyfile(test_kind="import asyncio\n" + BLOCKING_PRELUDE + body)
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert_blocked(result, "test_kind.py:*", line, fix)


@pytest.mark.parametrize("case", sorted(set(CLEAN) - {"process_executor"}))
def test_clean_code_on_uvloop(pytester: pytest.Pytester, case: str) -> None:
    pytester.makeconftest(UVLOOP_CONFTEST)
    body = f"\n\nasync def test_clean(slow_url):\n{ON_UVLOOP}    {CLEAN[case]}\n"
    pytester.makepyfile(test_inner_clean=CLEAN_PRELUDE + body + CANARY)
    result = run(pytester)
    assert_clean(result, passed=1)


def test_busy_uvloop_tasks_are_not_one_long_block(pytester: pytest.Pytester) -> None:
    """On uvloop a task's coroutine frame is the same object on every step: many short steps
    must not read as one callback, even when the busy loop keeps the watchdog from the GIL."""
    pytester.makeconftest(UVLOOP_CONFTEST)
    pytester.makepyfile(
        textwrap.dedent(
            """
            import asyncio

            def spin(n):
                x = 0
                for i in range(n):
                    x += i

            async def worker():
                for _ in range(150):
                    spin(20_000)  # a couple of milliseconds of CPU per step
                    await asyncio.sleep(0)

            async def test_busy():
                await asyncio.gather(*(worker() for _ in range(3)))

            async def test_one_task_busy():
                await worker()
    """
        )
        + CANARY
    )
    result = run(pytester)
    assert_clean(result, passed=2)


def test_fixture_and_gil_holding_block_on_uvloop(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(UVLOOP_CONFTEST)
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.fixture
        async def database():
            time.sleep(0.2)
            yield "db"

        async def test_uses_db(database):
            pass

        async def test_c_code_holding_the_gil():
            sum(range(15_000_000))
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            blocked("*.py:5 in database (during setup of fixture 'database')", seconds="0.*"),
            blocked("*.py:1[12] in test_c_code_holding_the_gil"),
            "wall * s, CPU * s: CPU-bound*",
        ]
    )


def test_uvloop_run_inside_a_sync_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time
        import uvloop

        async def main():
            await asyncio.sleep(0)
            time.sleep(0.2)

        def test_runs_uvloop():
            uvloop.run(main())

        def test_clean_uvloop():
            uvloop.run(asyncio.sleep(0.2))
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    assert_blocked(result, "*.py:6 in main", "time.sleep(0.2)", "time.sleep blocks every request*")
