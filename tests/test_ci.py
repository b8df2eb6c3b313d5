"""Messages that land where people look: crash location, GitHub annotations, JUnit, pytest-html."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import ASYNCIO, blocked, run, write_ini

BLOCKS = """
import time

async def test_blocks():
    time.sleep(0.2)

async def test_clean():
    pass
"""
HEADLINE = blocked("test_ci_suite.py:4 in ")


def test_the_crash_location_is_the_blocking_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ci_suite=BLOCKS)
    result = run(pytester, "--tb=line")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([f"test_ci_suite.py:4: {HEADLINE}test_blocks"])
    result = run(pytester, "--tb=short")
    result.stdout.fnmatch_lines([HEADLINE + "test_blocks", "    time.sleep(0.2)"])


@pytest.mark.parametrize("mode", ["fail", "warn"])
def test_pytest_github_actions_annotate_failures_points_at_the_blocking_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """That plugin annotates a failure at its crash location and a warning at its line: both
    are the blocking line. Ours stand down beside it (auto), so each block is annotated once."""
    pytest.importorskip("pytest_github_actions_annotate_failures")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    pytester.makepyfile(test_ci_suite=BLOCKS)
    write_ini(pytester, "auto")
    plugin = ("-p", "pytest_github_actions_annotate_failures", f"--loop-block-mode={mode}")
    result = pytester.runpytest_subprocess(*ASYNCIO, *plugin)
    if mode == "fail":
        result.assert_outcomes(failed=1, passed=1)
        expected = "::error file=test_ci_suite.py,line=4::test_blocks%0A%0A" + HEADLINE
    else:
        result.assert_outcomes(passed=2, warnings=1)
        expected = "::warning file=*test_ci_suite.py,line=4::*event loop blocked for *"
    result.stderr.fnmatch_lines([expected + "*"])
    assert [line for line in result.outlines if line.startswith("::")] == []


def _annotations(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("::")]


ANNOTATION = (
    "::error file=test_ci_suite.py,line=4,title=pytest-loopguard::event loop blocked for * s "
    "(threshold 0.10* s) in test_ci_suite.py::test_blocks (call)%0Afix: time.sleep blocks every "
    "request — use `await asyncio.sleep(...)`"
)


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_github_annotations_without_any_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, xdist: bool
) -> None:
    pytester.makepyfile(test_ci_suite=BLOCKS)
    write_ini(pytester, "auto")
    extra = ("-p", "xdist", "-n", "2") if xdist else ()
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    result = pytester.runpytest_subprocess(*ASYNCIO, *extra)
    assert _annotations(result) == []
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = pytester.runpytest_subprocess(*ASYNCIO, *extra)
    result.assert_outcomes(failed=1, passed=1)
    assert len(_annotations(result)) == 1  # once, even with the block found on an xdist worker
    result.stdout.fnmatch_lines([ANNOTATION])
    result = pytester.runpytest_subprocess(*ASYNCIO, *extra, "--loop-block-mode=warn")
    result.stdout.fnmatch_lines([ANNOTATION.replace("::error ", "::warning ")])
    result = pytester.runpytest_subprocess(*ASYNCIO, *extra, "--no-loop-block-annotations")
    assert _annotations(result) == []


def test_github_annotations_off_in_the_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    pytester.makepyfile(test_ci_suite=BLOCKS)
    write_ini(pytester, "auto", "loop_block_annotations = false")
    result = pytester.runpytest_subprocess(*ASYNCIO)
    result.assert_outcomes(failed=1, passed=1)
    assert _annotations(result) == []


def test_junit_keeps_the_headline_and_gets_each_block_as_properties(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_ci_suite=BLOCKS)
    result = run(pytester, "--junitxml=junit.xml")
    result.assert_outcomes(failed=1, passed=1)
    xml = (pytester.path / "junit.xml").read_text()
    failure = r'<failure message="LoopBlockedError: event loop blocked for \d\.\d{2,4} s'
    assert re.search(failure, xml)
    held = re.search(r'name="loopguard.duration" value="(\d+\.\d+)"', xml)
    assert held is not None
    assert 0.15 <= float(held.group(1)) <= 1.5  # the 0.2 s sleep, on a loaded machine too
    for prop in (
        r'name="loopguard.location" value="test_ci_suite.py:4"',
        r'name="loopguard.phase" value="call"',
        r'name="loopguard.hint" value="sleep"',
        r'name="loopguard.verdict" value="failed"',
    ):
        assert re.search(f"<property {prop}", xml), prop


def _html_rows(page: str) -> dict[str, str]:
    """pytest-html 4 keeps its rows as JSON in the page: each test's log, by node id."""
    blob = re.search(r'data-jsonblob="([^"]*)"', page)
    assert blob, "no data blob in the pytest-html page"
    tests = json.loads(html.unescape(blob.group(1)))["tests"]
    return {nodeid: "".join(r.get("log", "") for r in rows) for nodeid, rows in tests.items()}


@pytest.mark.parametrize("mode", ["fail", "warn"])
def test_pytest_html_shows_the_message_in_the_test_row(
    pytester: pytest.Pytester, mode: str
) -> None:
    """Failed on a block: the row's log is the message (once). Warned: the test passed, so the
    log has no traceback; the plugin adds the message to it."""
    pytest.importorskip("pytest_html")
    pytester.makepyfile(test_ci_suite=BLOCKS)
    plugins = ("-p", "html", "-p", "html_fixtures", "-p", "metadata")
    args = (*plugins, "--html=report.html", f"--loop-block-mode={mode}")
    result = run(pytester, *args, subprocess=True)
    result.assert_outcomes(**({"failed": 1, "passed": 1} if mode == "fail" else {"passed": 2}))
    logs = _html_rows((pytester.path / "report.html").read_text())
    log = logs["test_ci_suite.py::test_blocks"]
    assert len(re.findall(r"event loop blocked for \d\.\d{2,4} s", log)) == 1, log
    assert "stack while blocked (most recent call last):" in log
    assert ('<pre class="loopguard">' in log) == (mode == "warn"), log
    assert "event loop blocked" not in logs["test_ci_suite.py::test_clean"]


def test_coverage_is_said_in_the_header_and_fixed_routes_stay_clean(
    pytester: pytest.Pytester,
) -> None:
    """Coverage's tracer slows CPU-bound code several times (5-10x measured): said in the
    header. On its own it never makes a clean route a block (the examples' fixed twins, on
    aiosqlite: what the tracer slows is the Python code, the same on every database; the live
    server's, in a process of its own; the lifecycle example's, which leave nothing behind)."""
    pytest.importorskip("pytest_cov")
    examples = Path(__file__).parent.parent / "conftest_examples"
    shutil.copytree(examples, pytester.path / "conftest_examples")
    args = ("-p", "pytest_cov", "--cov=conftest_examples", "-k", "fixed")
    result = pytester.runpytest_subprocess(*ASYNCIO, *args, "conftest_examples")
    result.assert_outcomes(passed=20)
    result.stdout.fnmatch_lines(["loopguard: * — a tracer (coverage) is active: *"])
    result.stdout.no_fnmatch_line("*LoopBlockedError*")
