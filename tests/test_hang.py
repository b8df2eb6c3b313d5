"""The hang guard: a callback stuck past --loop-block-timeout is interrupted, the run goes on."""

from __future__ import annotations

import pytest

from conftest import hung, run

DEADLOCK = """
import asyncio, concurrent.futures, time, pytest


async def test_deadlock():
    loop = asyncio.get_running_loop()
    fut = concurrent.futures.Future()
    loop.call_soon(fut.set_result, 1)  # runs only once this callback lets go: never
    fut.result()


async def test_spins():
    while True: pass  # one line: 3.14 reports the body's line, earlier ones the while's


async def test_swallowing_does_not_help():
    try:
        threading_event().wait()
    except Exception:
        pass


def threading_event():
    import threading
    return threading.Event()


async def test_next_one_runs():
    await asyncio.sleep(0.01)
"""


def test_deadlocks_and_spins_are_interrupted_and_the_run_goes_on(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_hangs=DEADLOCK)
    result = run(pytester, "--loop-block-timeout=1", "-p", "no:randomly")
    result.assert_outcomes(failed=3, passed=1)
    result.stdout.fnmatch_lines(
        [
            "loopguard: threshold=0.1s (default), loop-debug=off, timeout=1s, strict=off",
            "*_ test_deadlock _*",
            hung("test_hangs.py:8 in test_deadlock", seconds="1.0*"),
            "    fut.result()",
            "fix: `concurrent.futures.Future.result()` waits on the loop thread*",
            "stack while blocked (most recent call last):",
            "  test_hangs.py:8 in test_deadlock",
            "  */concurrent/futures/_base.py:* in result",
            "*_ test_spins _*",
            hung("test_hangs.py:12 in test_spins"),
            "fix: CPU-bound work holds the loop*",
            "*_ test_swallowing_does_not_help _*",
            hung("test_hangs.py:17 in test_swallowing_*"),
        ]
    )


def test_hang_in_a_fixture_is_an_error_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading, pytest

        @pytest.fixture
        async def stuck():
            threading.Event().wait()
            yield

        async def test_uses(stuck):
            pass
        """
    )
    result = run(pytester, "--loop-block-timeout=0.5")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_uses*",
            hung("*.py:5 in stuck (during setup of fixture 'stuck')"),
            "fix: a threading lock/event/queue wait holds the loop*",
        ]
    )


def test_no_hang_guard_by_default_and_blocks_below_the_timeout_are_blocks(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import time

        async def test_blocks():
            time.sleep(0.2)
        """
    )
    result = run(pytester, "--loop-block-timeout=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["LoopBlockedError: event loop blocked for 0.* s*"])
    result.stdout.no_fnmatch_line("*hung*")
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = run(pytester)
    result.stdout.fnmatch_lines(["loopguard: *, timeout=off, strict=off"])


def test_works_with_pytest_timeout(pytester: pytest.Pytester) -> None:
    """pytest-timeout (SIGALRM) and the hang guard (SIGUSR2) each do their job in one run."""
    pytester.makepyfile(
        """
        import threading, time

        async def test_ours_fires_first():
            threading.Event().wait()

        def test_sync_hang_is_pytest_timeouts():
            time.sleep(30)

        async def test_clean():
            pass
        """
    )
    result = run(pytester, "-p", "pytest_timeout", "--timeout=3", "--loop-block-timeout=0.5")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "LoopBlockedError: event loop hung: * in test_ours_fires_first",
            "*Failed: Timeout (>3.0s) from pytest-timeout.*",
        ]
    )


def test_pytest_timeout_firing_inside_a_block_is_reported_as_its_timeout(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import time

        async def test_slow_block():
            time.sleep(30)

        async def test_after():
            pass
        """
    )
    result = run(pytester, "-p", "pytest_timeout", "--timeout=1")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>1.0s) from pytest-timeout.*"])
