"""Loops in worker threads and nested loops: watched, blamed on the right test and thread."""

from __future__ import annotations

import pytest

from conftest import assert_blocked, blocked, run

SLEEP_FIX = "time.sleep blocks every request — use `await asyncio.sleep(...)`"


def test_a_loop_in_a_worker_thread_is_watched_and_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_worker="""
        import asyncio, threading, time

        async def blocker():
            time.sleep(0.3)

        async def busy_but_clean():
            for _ in range(60):
                await asyncio.sleep(0.005)

        async def wait_for(coro_fn):
            thread = threading.Thread(target=asyncio.run, args=(coro_fn(),), name="worker-loop")
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0.01)

        async def test_worker_loop_blocks():
            await wait_for(blocker)

        async def test_worker_loop_is_clean():
            await wait_for(busy_but_clean)

        async def test_main_loop_blocks_while_a_worker_loop_runs():
            thread = threading.Thread(target=asyncio.run, args=(busy_but_clean(),))
            thread.start()
            time.sleep(0.3)
            thread.join()
        """
    )
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(failed=2, passed=1)
    where = "test_worker.py:4 in blocker (loop in thread 'worker-loop')"
    assert_blocked(result, where, "time.sleep(0.3)", SLEEP_FIX)
    # The first callback of a new loop starts with its first batch: measured from there.
    result.stdout.fnmatch_lines([f"LoopBlockedError: event loop blocked for 0.3* s * at {where}"])
    result.stdout.fnmatch_lines(
        [
            "_* test_worker_loop_blocks _*",
            f"LoopBlockedError: * at {where}",
            "_* test_main_loop_blocks_while_a_worker_loop_runs _*",
            "LoopBlockedError: * at test_worker.py:25 in test_main_loop_blocks_while_a_*_runs",
        ]
    )
    result.stdout.no_fnmatch_line("*in thread 'MainThread'*")


SERVER = """
import asyncio, threading, time, pytest

@pytest.fixture(scope="module")
def server_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="server-loop")
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()

def call(loop, handler):
    return asyncio.run_coroutine_threadsafe(handler(), loop).result(5)

async def quick():
    await asyncio.sleep(0.05)

async def slow():
    time.sleep(0.3)

def test_first_uses_it_cleanly(server_loop):
    call(server_loop, quick)

def test_second_blocks_it(server_loop):
    call(server_loop, slow)

async def test_third_awaits_it_cleanly(server_loop):
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(quick(), server_loop))

async def test_fourth_blocks_it_from_async(server_loop):
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(slow(), server_loop))

def test_fifth_leaves_it_idle(server_loop):
    time.sleep(0.3)

def stall():
    time.sleep(0.6)

def test_sixth_fires_and_forgets(server_loop):
    server_loop.call_soon_threadsafe(stall)
    time.sleep(0.25)

def test_seventh_is_not_blamed_for_what_still_runs(server_loop):
    time.sleep(0.5)

@pytest.fixture
def fires_late_in_setup(server_loop):
    server_loop.call_soon_threadsafe(stall_across_phases)
    time.sleep(0.06)  # seen by the watchdog in setup, still under the threshold there

def stall_across_phases():
    time.sleep(0.3)

def test_eighth_block_that_began_in_setup_counts_in_the_call(fires_late_in_setup):
    time.sleep(0.5)
"""


def test_a_long_lived_loop_thread_is_blamed_on_the_test_that_blocks_it(
    pytester: pytest.Pytester,
) -> None:
    # The server's loop starts in the first test's setup and runs through all of them: each
    # test's guard takes it over, so a block lands on the test whose request caused it, and
    # only there, even when the test does not wait for it to end.
    pytester.makepyfile(test_server=SERVER)
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(failed=4, passed=4)
    where = "test_server.py:20 in slow (loop in thread 'server-loop')"
    result.stdout.fnmatch_lines(
        [
            "_* test_second_blocks_it _*",
            blocked(where, seconds="0.3*"),
            "    time.sleep(0.3)",
            f"fix: {SLEEP_FIX}",
            "_* test_fourth_blocks_it_from_async _*",
            blocked(where, seconds="0.3*"),
            "_* test_sixth_fires_and_forgets _*",
            blocked("test_server.py:38 in stall (loop in thread 'server-loop')", seconds="0.2*"),
            "_* test_eighth_block_that_began_in_setup_counts_in_the_call _*",
            blocked(
                "test_server.py:53 in stall_across_phases (loop in thread 'server-loop')",
                seconds="0.*",
            ),
            "*= short test summary info =*",
            "FAILED test_server.py::test_second_blocks_it - *",
            "FAILED test_server.py::test_fourth_blocks_it_from_async - *",
            "FAILED test_server.py::test_sixth_fires_and_forgets - *",
            "FAILED test_server.py::test_eighth_block_that_began_in_setup_counts_in_the_call - *",
            "*= 4 failed, 4 passed in *",
        ]
    )


NESTED = """
import asyncio, time, pytest
import nest_asyncio

async def test_asyncio_run_inside_a_running_loop_keeps_its_own_error():
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        asyncio.run(coro)
    coro.close()

async def test_nested_run_that_waits_is_not_a_block():
    nest_asyncio.apply()
    asyncio.get_running_loop().run_until_complete(asyncio.sleep(0.3))

async def blocker():
    time.sleep(0.3)

async def test_block_inside_a_nested_run():
    nest_asyncio.apply()
    asyncio.get_running_loop().run_until_complete(blocker())

async def test_after_nesting_loops_are_still_watched():
    time.sleep(0.3)
"""


def test_nested_loops(pytester: pytest.Pytester) -> None:
    # nest_asyncio patches the loop class for good: a process of its own.
    pytest.importorskip("nest_asyncio")
    pytester.makepyfile(test_nested=NESTED)
    result = run(pytester, "-p", "no:randomly", subprocess=True)
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(
        [
            "_* test_block_inside_a_nested_run _*",
            "LoopBlockedError: event loop blocked for * at test_nested.py:15 in blocker",
            "_* test_after_nesting_loops_are_still_watched _*",
            "LoopBlockedError: * at test_nested.py:22 in test_after_nesting_loops_are_still_*",
        ]
    )
