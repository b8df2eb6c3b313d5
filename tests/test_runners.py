"""Every way tests drive a loop is watched: pytest-asyncio modes, loop scopes, anyio, by hand."""

from __future__ import annotations

import pytest

from conftest import ASYNCIO, assert_blocked, run, write_ini

SLEEP_FIX = "time.sleep blocks every request — use `await asyncio.sleep(...)`"


def test_strict_mode_marked_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time, pytest

        @pytest.mark.asyncio
        async def test_blocks():
            time.sleep(0.2)

        @pytest.mark.asyncio
        async def test_clean():
            await asyncio.sleep(0.2)
        """
    )
    result = run(pytester, mode="strict")
    result.assert_outcomes(failed=1, passed=1)
    assert_blocked(result, "*.py:5 in test_blocks", "time.sleep(0.2)", SLEEP_FIX)


@pytest.mark.parametrize("scope", ["function", "class", "module", "package", "session"])
def test_loop_scopes(pytester: pytest.Pytester, scope: str) -> None:
    pytester.makepyfile(
        f"""
        import asyncio, time, pytest, pytest_asyncio

        @pytest_asyncio.fixture(loop_scope="{scope}")
        async def resource():
            await asyncio.sleep(0.01)
            yield 1

        @pytest.mark.asyncio(loop_scope="{scope}")
        class TestScoped:
            async def test_clean(self, resource):
                await asyncio.sleep(0.2)

            async def test_blocks(self, resource):
                time.sleep(0.2)

            async def test_clean_after(self, resource):
                await asyncio.sleep(0.2)
        """
    )
    result = run(pytester, mode="strict")
    result.assert_outcomes(failed=1, passed=2)
    assert_blocked(result, "*.py:14 in test_blocks", "time.sleep(0.2)", SLEEP_FIX)


def test_anyio_plugin_on_asyncio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, anyio, pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_blocks():
            time.sleep(0.2)

        @pytest.mark.anyio
        async def test_clean():
            await anyio.sleep(0.3)
        """
    )
    write_ini(pytester)
    result = pytester.runpytest("-p", "pytest_loopguard", "-p", "anyio")
    result.assert_outcomes(failed=1, passed=1)
    assert_blocked(result, "*.py:9 in test_blocks", "time.sleep(0.2)", SLEEP_FIX)


def test_new_loop_run_by_hand_in_a_sync_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time

        async def blocker():
            time.sleep(0.2)

        def test_manual_loop():
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(blocker())
            finally:
                loop.close()

        def test_next_one_is_clean():
            asyncio.run(asyncio.sleep(0.2))
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    assert_blocked(result, "*.py:4 in blocker", "time.sleep(0.2)", SLEEP_FIX)


def test_plugin_can_be_switched_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time

        async def test_blocks():
            time.sleep(0.2)
        """
    )
    write_ini(pytester, mode="auto")
    result = pytester.runpytest(*ASYNCIO, "-p", "no:pytest_loopguard")
    result.assert_outcomes(passed=1)
