"""What must never fail a test: awaiting, work moved off the loop, other threads, sync tests."""

from __future__ import annotations

import textwrap

import pytest

from conftest import CANARY, assert_clean, run
from helpers_src import SLOW_SERVER

CLEAN = {
    "asyncio_sleep": "await asyncio.sleep(0.2)",
    "to_thread": "await asyncio.to_thread(time.sleep, 0.3)",
    "thread_executor": "await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.3)",
    "process_executor": (
        "with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:\n"
        "        await asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0.3)"
    ),
    "other_thread_blocks": (
        "t = threading.Thread(target=time.sleep, args=(0.2,)); t.start()\n"
        "    await asyncio.sleep(0.3); t.join()"
    ),
    "other_thread_cpu": (
        "t = threading.Thread(target=busy, args=(0.2,)); t.start()\n"
        "    await asyncio.sleep(0.3); t.join()"
    ),
    "many_short_callbacks": ("for _ in range(30000):\n        await asyncio.sleep(0)"),
    "many_short_sleeps": (
        "for _ in range(20):\n        time.sleep(0.005)\n        await asyncio.sleep(0)"
    ),
    "under_threshold": "time.sleep(0.03)",
    "httpx_async": (
        # verify=False: loading the CA bundle is ~50 ms of CPU on the loop (see the README FAQ),
        # and this URL is plain http anyway.
        "async with httpx.AsyncClient(verify=False) as c:\n"
        "        assert (await c.get(slow_url)).text == 'ok'"
    ),
    "aiosqlite": (
        "async with aiosqlite.connect(':memory:') as db:\n"
        "        await db.create_function('pg_sleep', 1, time.sleep)\n"
        "        await (await db.execute('select pg_sleep(0.2)')).fetchall()"
    ),
    "gather_of_sleeps": "await asyncio.gather(*(asyncio.sleep(0.2) for _ in range(200)))",
}

PRELUDE = """
import asyncio, multiprocessing, threading, time
from concurrent.futures import ProcessPoolExecutor

import aiosqlite
import httpx


def busy(seconds):
    end = time.thread_time() + seconds  # CPU time: the same on a loaded machine
    while time.thread_time() < end:
        pass
"""


@pytest.mark.parametrize("case", sorted(CLEAN))
def test_clean_code_passes(pytester: pytest.Pytester, case: str) -> None:
    pytester.makeconftest(SLOW_SERVER)
    pytester.makepyfile(
        test_inner_clean=PRELUDE
        + f"\n\nasync def test_clean(slow_url):\n    {CLEAN[case]}\n"
        + CANARY
    )
    # A process pool must unpickle its worker in a fresh interpreter: run pytest in one too.
    result = run(pytester, subprocess=case == "process_executor")
    assert_clean(result, passed=1)


def test_busy_loop_under_loop_debug_is_not_a_block(pytester: pytest.Pytester) -> None:
    """asyncio's debug mode slows every callback; a busy loop can then starve the watchdog of
    the GIL (the loop thread drops it around every select() and takes it straight back), which
    must never be mistaken for a block."""
    pytester.makepyfile(
        textwrap.dedent(
            """
            import asyncio, pytest

            @pytest.mark.parametrize("i", range(5))
            async def test_busy(i):
                for _ in range(3000):
                    await asyncio.sleep(0)
    """
        )
        + CANARY
    )
    result = run(pytester, "--loop-debug")
    assert_clean(result, passed=5)


def test_sync_tests_are_not_watched(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
            import time
            from pytest_loopguard._core.engine import ENGINE

            def test_sync_sleeps():
                time.sleep(0.2)

            def test_the_watchdog_sleeps_through_sync_tests():
                looks = ENGINE.watchdog.looks
                time.sleep(0.2)
                assert ENGINE.watchdog.sleeping
                assert ENGINE.watchdog.looks == looks
    """
        )
        + CANARY
    )
    result = run(pytester)
    assert_clean(result, passed=2)


def test_first_import_on_the_loop_is_not_a_block(pytester: pytest.Pytester) -> None:
    """A module imported for the first time inside async code (a driver, a dialect) stalls the
    loop once per process; that is not a line to fix, so import time is left out of verdicts."""
    pytester.makepyfile(
        heavy_module="""
        import time

        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass
        """,
        test_imports="""
        import importlib, time

        async def test_imports_on_the_loop():
            importlib.import_module("heavy_module")

        async def test_but_blocks_still_count():
            importlib.import_module("heavy_module")
            time.sleep(0.2)
        """,
    )
    pytester.syspathinsert()
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["LoopBlockedError: * in test_but_blocks_still_count"])
