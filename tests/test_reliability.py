"""The plugin never crashes a session, never leaks, and keeps its verdicts in hostile tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import socket
import threading
import time

import pytest

from conftest import run
from pytest_loopguard._core import strict as _strict
from pytest_loopguard._core.engine import ENGINE


def test_a_thousand_tests_leave_no_thread_patch_or_hook(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, threading, time, pytest

        def assert_clean():
            # One watchdog for the session, never one a test.
            names = [t.name for t in threading.enumerate()]
            assert names.count("pytest-loopguard-watchdog") == 1

        @pytest.mark.parametrize("i", range(500))
        async def test_async(i, loopguard):
            await asyncio.sleep(0)
            if i % 100 == 0:
                with loopguard.allow():
                    time.sleep(0.15)
                    time.sleep(0.001)  # strict mode sees it: allowed too

        @pytest.mark.parametrize("i", range(500))
        def test_sync_between(i):
            assert_clean()
        """
    )
    original = asyncio.BaseEventLoop.run_forever
    sleep, result_method = time.sleep, concurrent.futures.Future.result
    threads, gc_callbacks = threading.active_count(), len(gc.callbacks)
    args = ("-p", "no:randomly", "--loop-block-strict", "--loop-block-timeout=5")
    result = run(pytester, *args)
    result.assert_outcomes(passed=1000)
    assert asyncio.BaseEventLoop.run_forever is original
    assert ENGINE.leftovers() == []
    assert not _strict.HUB.patched
    assert not _strict.HUB.recorders
    assert (time.sleep, concurrent.futures.Future.result) == (sleep, result_method)
    assert "recv" not in socket.socket.__dict__
    assert (threading.active_count(), len(gc.callbacks)) == (threads, gc_callbacks)


def test_patched_clocks_and_sleep_do_not_change_verdicts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time

        REAL_SLEEP = time.sleep

        async def test_frozen_clocks(monkeypatch):
            monkeypatch.setattr(time, "monotonic", lambda: 0.0)
            monkeypatch.setattr(time, "perf_counter", lambda: 0.0)
            REAL_SLEEP(0.3)

        async def test_fake_sleep(monkeypatch):
            monkeypatch.setattr(time, "sleep", lambda s: None)
            time.sleep(10)
            await asyncio.sleep(0.01)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        ["LoopBlockedError: event loop blocked for * s * in test_frozen_clocks"]
    )


def test_loop_closed_or_replaced_by_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time

        def test_replaces_policy_loop():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.run_until_complete(asyncio.sleep(0.01))
            loop.close()
            asyncio.set_event_loop(None)

        def test_loop_stopped_from_a_callback():
            loop = asyncio.new_event_loop()
            loop.call_soon(loop.stop)
            loop.run_forever()
            loop.close()

        async def test_after_is_still_watched():
            time.sleep(0.2)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*LoopBlockedError: * in test_after_is_still_watched"])


def test_interrupted_session_tears_down_cleanly(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import threading
        from pytest_loopguard._core.engine import ENGINE

        def pytest_unconfigure(config):
            names = [t.name for t in threading.enumerate()]
            watchdog = "pytest-loopguard-watchdog" in names
            print("LEFT: patched", bool(ENGINE.leftovers()), "watchdog", watchdog)
        """
    )
    pytester.makepyfile(
        """
        import asyncio

        async def test_interrupts():
            await asyncio.sleep(0)
            raise KeyboardInterrupt

        async def test_never_runs():
            pass
        """
    )
    # A KeyboardInterrupt would reach this session too if the inner one ran in-process.
    result = run(pytester, subprocess=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*", "LEFT: patched False watchdog False"])


def test_broken_test_code_is_reported_as_its_own_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        async def broken():
            raise RuntimeError("fixture is broken")

        async def test_uses_broken(broken):
            pass

        async def test_raises():
            raise ValueError("boom")
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*RuntimeError: fixture is broken", "*ValueError: boom"], consecutive=False
    )
    result.stdout.no_fnmatch_line("*LoopBlockedError*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
