"""Adopting the plugin on a big suite: warn mode and the end-of-run summary of blocks."""

from __future__ import annotations

import pytest

from conftest import ASYNCIO, run, write_ini

SUITE = """
import time, pytest

async def test_blocks_long():
    time.sleep(0.35)

async def test_blocks_short():
    time.sleep(0.15)

@pytest.mark.allow_blocking
async def test_allowed():
    time.sleep(0.15)

async def test_clean():
    pass
"""


@pytest.mark.parametrize("how", ["cli", "ini"])
def test_warn_mode_keeps_outcomes_and_warns_at_the_line(
    pytester: pytest.Pytester, how: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto", "loop_block_mode = warn" if how == "ini" else "")
    # In a subprocess: this session turns warnings into errors, and in-process runs inherit that.
    args = ["--loop-block-mode=warn"] if how == "cli" else []
    result = pytester.runpytest_subprocess(*ASYNCIO, *args)
    result.assert_outcomes(passed=4, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "test_suite.py::test_blocks_long",
            "  test_suite.py:4: PytestWarning: event loop blocked for 0.3* s (threshold 0.10 s) "
            "at test_suite.py:4 in test_blocks_long",
            "    time.sleep(0.35)",
            "  fix: time.sleep blocks every request — use `await asyncio.sleep(...)`",
        ]
    )


@pytest.mark.parametrize(
    ("source", "args", "extra"),
    [
        ("--loop-block-mode", ["--loop-block-mode=loud"], ""),
        ("ini loop_block_mode", [], "loop_block_mode = loud"),
    ],
)
def test_bad_mode_is_a_usage_error(
    pytester: pytest.Pytester, source: str, args: list[str], extra: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    write_ini(pytester, "auto", extra)
    result = pytester.runpytest(*ASYNCIO, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-loopguard: 'loud' from {source} is not a valid loop_block_mode: "
            "expected one of fail, warn"
        ]
    )


def test_summary_lists_worst_first_and_counts_allowed_apart(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run(pytester, "-q")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-loopguard: event loop blocks =*",
            "2 block(s) in 2 test(s); 1 allowed block(s) not counted",
            "  0.3* s  test_suite.py:4 in test_blocks_long  [[]call[]]  *::test_blocks_long",
            "  0.1* s  test_suite.py:7 in test_blocks_short  [[]call[]]  *::test_blocks_short",
        ]
    )


def test_summary_is_silent_without_blocks_and_with_qq(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE.replace("time.sleep", "float"))
    result = run(pytester)
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("*pytest-loopguard: event loop blocks*")
    pytester.makepyfile(test_suite=SUITE)
    result = run(pytester, "-qq")
    result.stdout.no_fnmatch_line("*event loop blocks*")
