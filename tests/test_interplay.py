"""A block's failure is a test failure like any other to pytest's own features: xfail, warnings
turned into errors, ``-x``. (The plugin decides it when the phase ends, before the report.)"""

from __future__ import annotations

import pytest

from conftest import blocked, run

XFAILS = """
import time, pytest

@pytest.fixture
async def slow():
    time.sleep(0.2)

@pytest.mark.xfail(reason="a known block")
async def test_known():
    time.sleep(0.2)

@pytest.mark.xfail(reason="a known block in a fixture")
async def test_known_in_setup(slow):
    pass

@pytest.mark.xfail(raises=ValueError, reason="only a ValueError is expected")
async def test_other_error_expected():
    time.sleep(0.2)

@pytest.mark.xfail(strict=True, reason="should block, does not")
async def test_clean():
    pass
"""


def test_xfail_applies_to_a_block_as_to_any_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_xfails=XFAILS)
    result = run(pytester, "-rfxX")
    result.assert_outcomes(xfailed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_xfails.py::test_other_error_expected - *LoopBlockedError*",
            "FAILED test_xfails.py::test_clean*should block, does not",
            "XFAIL *test_xfails.py::test_known - a known block",
            "XFAIL *test_xfails.py::test_known_in_setup - a known block in a fixture",
        ]
    )


WARNED = """
import time

async def test_blocks():
    time.sleep(0.2)

async def test_clean():
    pass
"""


def test_a_filter_that_makes_our_warning_an_error_changes_no_outcome(
    pytester: pytest.Pytester,
) -> None:
    """Warn mode never changes an outcome, whatever the filters: even one aimed at our warning
    shows it as a warning (at the user's line), not as the test's failure."""
    pytester.makepyfile(test_warned=WARNED)
    # In a subprocess: in-process runs inherit this session's warning filters.
    args = ("--loop-block-mode=warn", "-W", "error:event loop blocked:pytest.PytestWarning")
    result = run(pytester, *args, subprocess=True)
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "test_warned.py::test_blocks",
            "  test_warned.py:4: PytestWarning: event loop blocked for * s (threshold 0.10* s) "
            "at test_warned.py:4 in test_blocks",
        ]
    )


def test_exitfirst_stops_at_the_first_block(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_first=WARNED.replace("def test_clean", "def test_later"))
    result = run(pytester, "-x", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([blocked("test_first.py:4 in test_blocks"), "*stopping after 1*"])


SUBTESTS = """
import asyncio, time

async def test_parts(subtests):
    with subtests.test("clean"):
        await asyncio.sleep(0)
    with subtests.test("blocks"):
        time.sleep(0.2)
        await asyncio.sleep(0)
    with subtests.test("after"):
        await asyncio.sleep(0)
    time.sleep(0.15)
"""


@pytest.mark.skipif(not hasattr(pytest, "Subtests"), reason="pytest's own subtests: 9.0 on")
def test_a_block_in_a_subtest_fails_that_subtest_and_counts_once(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_subtests=SUBTESTS)
    result = run(pytester, "-p", "no:randomly")
    result.stdout.fnmatch_lines(
        [
            "*test_parts [[]blocks[]]*",
            blocked("test_subtests.py:7 in test_parts"),
            "*test_parts _*",
            blocked("test_subtests.py:11 in test_parts"),
            "2 block(s) in 1 test(s)*",
        ]
    )
    result.stdout.no_fnmatch_line("*in teardown*")
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_unittest_failure_stays_the_failure_with_the_block_beside_it(
    pytester: pytest.Pytester,
) -> None:
    # unittest keeps its failure on the item until pytest's own report hook moves it to the
    # call, after the plugin has judged the phase.
    pytester.makepyfile(
        test_unit="""
        import time, unittest

        class TestService(unittest.IsolatedAsyncioTestCase):
            async def test_blocks_and_fails(self):
                time.sleep(0.2)
                self.assertEqual(1, 2)
        """
    )
    result = run(pytester, mode="strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: 1 != 2",
            "*event loop blocked (pytest-loopguard)*",
            blocked("test_unit.py:5 in test_blocks_and_fails"),
            "FAILED test_unit.py::TestService::test_blocks_and_fails - AssertionError: 1 != 2",
        ]
    )
