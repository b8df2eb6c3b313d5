"""Opting out: @pytest.mark.allow_blocking at every level, and the loopguard fixture."""

from __future__ import annotations

import pytest

from conftest import run


def test_allow_blocking_on_function_class_and_module(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_module="""
        import time, pytest

        pytestmark = pytest.mark.allow_blocking(reason="legacy client")

        async def test_module_level():
            time.sleep(0.2)
        """,
        test_other="""
        import time, pytest

        @pytest.mark.allow_blocking
        async def test_function_level():
            time.sleep(0.2)

        @pytest.mark.allow_blocking("warming a cache")
        class TestClassLevel:
            async def test_in_class(self):
                time.sleep(0.2)

        async def test_not_allowed():
            time.sleep(0.2)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_other.py::test_not_allowed - LoopBlockedError: *"])


def test_allowed_blocks_are_still_recorded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time, pytest

        @pytest.mark.allow_blocking
        async def test_records(loopguard):
            time.sleep(0.2)
            await asyncio.sleep(0.02)
            [event] = loopguard.events
            assert event.duration >= 0.15
            assert event.frame.lineno == 5
            assert event.hint.key == "sleep"
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)


def test_fixture_exposes_threshold_events_and_allow(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time, pytest

        @pytest.mark.loop_block_threshold(0.15)
        async def test_allow_block(loopguard):
            assert loopguard.threshold == 0.15
            assert loopguard.events == []
            with loopguard.allow():
                time.sleep(0.2)
            await asyncio.sleep(0.02)
            [event] = loopguard.events
            assert event.allowed
            assert event.threshold == 0.15

        async def test_block_outside_allow_still_fails(loopguard):
            with loopguard.allow():
                time.sleep(0.2)
            await asyncio.sleep(0)
            time.sleep(0.25)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["LoopBlockedError: event loop blocked for * s (threshold 0.10* s) at *.py:18 in *"]
    )
    result.stdout.no_fnmatch_line("*more block*")
