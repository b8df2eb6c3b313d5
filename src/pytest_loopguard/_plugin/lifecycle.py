"""The async lifecycle checks around each test (``loop_lifecycle``): what the engine's
``Lifecycle`` recorded for the test, turned into warnings or a failure at the creating line, a
finding on the test's reports (JSON report, JUnit property, xdist), a summary section and
GitHub annotations.

What runs for every test is two attribute stores as its body starts and one check as each of
its call and teardown phases ends; everything else only when something was recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .._base.frames import FrameInfo, resolve
from .._base.report import location
from .._lifecycle.watch import COROUTINE, EXCEPTION, KINDS, TASK, THREAD, Finding, Lifecycle
from .baseline import FINDING, Entry, entry_at
from .settings import Settings
from .warn import warn_never_raise

Found = dict[str, object]  # a finding as the JSON report (and the summary) hold it
Call = pytest.CallInfo[None]

_WHY = {
    TASK: (
        "was still pending when the test ended: nothing awaited it, and its loop cancels it "
        "without a word when it closes (in production the loop keeps only a weak reference: "
        "it may be garbage-collected mid-flight, or outlive its request)"
    ),
    EXCEPTION: (
        'failed, and nobody retrieved its exception: the loop only logs "Task exception was '
        'never retrieved" to a logger nobody reads'
    ),
    COROUTINE: "was never awaited: it never ran (Python only warns, when it is collected)",
    THREAD: (
        "was still running when the test ended: a non-daemon thread runs on into the next "
        "tests and can keep the process from exiting"
    ),
}
_MADE = {TASK: "created", EXCEPTION: "created", COROUTINE: "called", THREAD: "started"}


PREFIX = "pytest-loopguard: "  # a lifecycle failure's message starts so (see left_behind)


def left_behind(error: BaseException) -> bool:
    """Whether ``error`` is a lifecycle failure of ours (which needs no hint beside it)."""
    return isinstance(error, pytest.fail.Exception) and str(error).startswith(PREFIX)


def message(finding: Finding, where: FrameInfo, root: Path) -> str:
    """The text of one finding, as the warning, the failure and the annotation say it."""
    text = f"{finding.what} {_MADE[finding.kind]} at {location(where, root)} {_WHY[finding.kind]}"
    text += f"\nfix: {finding.fix}"
    if finding.detail:
        text += "\n" + finding.detail
    return text


class Checks:
    """The session's lifecycle checks: the engine's recorder, and what to do with its findings."""

    def __init__(
        self, root: Path, known: frozenset[Entry] | None, update: bool, found: list[Found]
    ) -> None:
        self.root, self.known, self.update = root, known, update
        self.recorder = Lifecycle()
        self.found = found  # this process's findings, for the summary
        self.failed = False  # the running test's body failed
        self.recorder.install()

    def close(self) -> None:
        self.recorder.uninstall()

    def begin(self, nodeid: str) -> None:
        """The test's body starts: what is created from now on is its own."""
        recorder = self.recorder
        recorder.owner, recorder.in_call = nodeid, True

    def after_call(self, item: pytest.Item, settings: Settings, call: Call) -> None:
        recorder = self.recorder
        recorder.in_call = False
        self.failed = call.excinfo is not None
        if recorder.busy():
            self._judge(item, settings, call, self._unless_failed(recorder.pending()))

    def after_teardown(self, item: pytest.Item, settings: Settings, call: Call) -> None:
        recorder = self.recorder
        if recorder.busy():
            self._judge(item, settings, call, self._unless_failed(recorder.running()))
        recorder.owner, self.failed = None, False

    def _unless_failed(self, left: list[Finding]) -> list[Finding]:
        """What the test left running, with what was found meanwhile — but a test whose body
        failed left its tasks and threads because its exception cut the awaits and joins short
        (``gather`` does not cancel the others): that follows from its failure, not a second
        problem. Exceptions never retrieved and coroutines never awaited stay."""
        return self.recorder.take() + ([] if self.failed else left)

    def _judge(
        self, item: pytest.Item, settings: Settings, call: Call, findings: list[Finding]
    ) -> None:
        failing = []
        for finding in findings:
            where = resolve(finding.where)
            text = message(finding, where, self.root)
            entry = entry_at(finding.kind, item.nodeid, where, self.root)
            verdict = self._verdict(settings, entry)
            self._record(item, finding, entry, where.lineno, verdict)
            if verdict == "warned":
                warn_never_raise(pytest.PytestWarning(text), where.filename, where.lineno)
            elif verdict == "failed":
                failing.append(text)
        if failing and call.excinfo is None:  # never instead of the test's own failure
            try:
                pytest.fail(PREFIX + "\n\n".join(failing), pytrace=False)
            except pytest.fail.Exception:
                call.excinfo = pytest.ExceptionInfo.from_current()

    def _verdict(self, settings: Settings, entry: Entry | None) -> str:
        if settings.allow_leaks:
            return "allowed"
        if self.known is not None and (self.update or entry in self.known):
            return "known"
        return "failed" if settings.lifecycle == "fail" else "warned"

    def _record(
        self, item: pytest.Item, finding: Finding, entry: Entry | None, line: int, verdict: str
    ) -> None:
        if entry is None:
            return
        found = entry.finding(line, verdict)
        found["what"] = finding.what
        item.user_properties.append((FINDING, found))  # JUnit, xdist, the JSON report
        self.found.append(found)


def lifecycle_of(report: pytest.TestReport) -> list[Found]:
    """The lifecycle findings a test report carries (an xdist controller's view)."""
    return [
        value
        for name, value in report.user_properties
        if name == FINDING and isinstance(value, dict) and value.get("kind") in KINDS
    ]


def summary_lines(found: list[Found]) -> list[str]:
    """The end-of-run section: how many of each kind, then each one counted."""
    counted = [f for f in found if f["verdict"] in ("failed", "warned")]
    kinds = ", ".join(f"{sum(f['kind'] == k for f in counted)} {k}(s)" for k in KINDS)
    lines = [f"{kinds} left behind in {len({f['nodeid'] for f in counted})} test(s)"]
    others = len(found) - len(counted)
    if others:
        lines[0] += f"; {others} allowed or known not counted"
    for f in counted:
        lines.append(f"{f['file']}:{f['line']}  {f['what']}  {f['nodeid']}  [{f['verdict']}]")
    return lines


def annotation(found: Found) -> str:
    """One finding as a GitHub Actions workflow command at its line."""
    from .._base.report import workflow_command

    kind = "error" if found["verdict"] == "failed" else "warning"
    text = f"{found['what']} left behind by {found['nodeid']} ({found['kind']})"
    return workflow_command(kind, str(found["file"]), int(str(found["line"])), text)
