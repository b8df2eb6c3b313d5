"""A debugger holding the loop is someone reading a prompt: not a block, never a hang."""

from __future__ import annotations

import sys

import pytest

from conftest import ASYNCIO, blocked, run, write_ini

BLOCKS = """
import time

async def test_blocks():
    time.sleep(0.2)
"""


def test_a_breakpoint_in_a_test_is_not_a_block_nor_a_hang(pytester: pytest.Pytester) -> None:
    write_ini(pytester, "auto")
    pytester.makepyfile(
        test_debugged="""
        import asyncio, time

        async def test_stops_at_a_breakpoint():
            await asyncio.sleep(0)
            breakpoint()
            await asyncio.sleep(0)
        """
    )
    # At the prompt, someone takes 0.4 s (longer than the threshold and the hang timeout).
    commands = b"import time; time.sleep(0.4)\ncontinue\n"
    cmd = [sys.executable, "-m", "pytest", *ASYNCIO, "--loop-block-timeout=0.3"]
    result = pytester.run(*cmd, stdin=commands)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*LoopBlockedError*")
    result.stdout.fnmatch_lines(["*1 allowed block(s) not counted*"])


PYDEVD = """
def trace(frame, event, arg):  # an IDE debugger's trace function, as far as anyone can tell
    return None
"""

ATTACHED = """
import sys, threading

import pydevd

sys.settrace(pydevd.trace)
threading.settrace(pydevd.trace)
"""


def test_an_ide_debugger_makes_the_plugin_stand_down(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(pydevd=PYDEVD, test_blocks=BLOCKS)
    pytester.makeconftest(ATTACHED)
    pytester.syspathinsert()
    result = run(pytester, "--loop-block-timeout=5", subprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "loopguard: *, timeout=off, strict=off — a debugger (pydevd) drives this run: blocks "
            "are recorded, not failed",
            "*1 allowed block(s) not counted*",
        ]
    )


@pytest.mark.parametrize("flag", ["--pdb", "--trace"])
def test_pdb_options_make_the_plugin_stand_down(pytester: pytest.Pytester, flag: str) -> None:
    write_ini(pytester, "auto")
    pytester.makepyfile(test_blocks=BLOCKS)
    cmd = [sys.executable, "-m", "pytest", *ASYNCIO, flag]
    result = pytester.run(*cmd, stdin=b"continue\n" * 5)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"loopguard: * — a debugger ({flag}) drives this run: *"])


def test_coverage_is_not_a_debugger(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_cov")
    pytester.makepyfile(test_blocks=BLOCKS)
    result = run(pytester, "-p", "pytest_cov", "--cov=.", subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([blocked("test_blocks.py:4 in test_blocks")])
    result.stdout.no_fnmatch_line("*a debugger*")
