"""One test's phases under the session's guard: the switch to the test, a verdict at the end
of each phase, and what goes on the phase's report.

These hooks run for every test of every suite, so there are as few as the job allows (see
bench/overhead.py), and all are plain (a wrapper costs a test several times more): one as the
test starts, and the report's hook, which judges each phase as it ends. The log hook that puts
our message on a report is registered only while one waits. The hooks live on objects, not in
a module, so that they reach the session's state without a lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .._base import debugger as _debugger
from .._base.events import BlockEvent, LoopBlockedError, LoopguardError, LoopHangError
from .._core.guard import LoopGuard
from . import markers as _markers
from . import summary as _summary
from .baseline import Entry, entry_of_event
from .reprs import failure_repr, leading
from .settings import Settings
from .verdict import NOTHING, Verdict, judge
from .warn import warn_never_raise

if TYPE_CHECKING:
    from .children import Children
    from .lifecycle import Checks

ITEM_SETTINGS = pytest.StashKey[Settings]()
_SECTION = "event loop blocked (pytest-loopguard)"


class TestRun:
    """One test's view of the session's guard, and what has been decided about it so far."""

    __slots__ = (
        "call",
        "debugged",
        "guard",
        "item",
        "judged",
        "mark",
        "settings",
        "verdicts",
    )

    def __init__(self, item: pytest.Item, settings: Settings, guard: LoopGuard) -> None:
        self.item, self.settings, self.guard = item, settings, guard
        self.verdicts: dict[str, Verdict] = {}
        self.judged = 0  # how many of the guard's events earlier verdicts have seen
        self.mark: int | None = None  # events before teardown: the rest get fixture names
        self.call: pytest.CallInfo[None] | None = None  # its call phase's, once over
        self.debugged = False  # pdb was entered during it

    @property
    def call_error(self) -> BaseException | None:
        """What the test's body raised, read when asked: unittest's own failure reaches the
        call only after our report hook has run."""
        excinfo = self.call.excinfo if self.call is not None else None
        return excinfo.value if excinfo is not None else None


class Watch:
    """The per-test hooks, on an object that holds the session's guard and the running test.

    A phase is judged in the report's hook, before the report is made: a block then fails the
    phase the way its own exception would, for every plugin that reads the call (xfail,
    ``--pdb``, ``-x``, rerun plugins), without a hook after each phase.
    """

    def __init__(
        self, config: pytest.Config, settings: Settings, collector: _summary.Collector
    ) -> None:
        self.config, self.settings, self.collector = config, settings, collector
        self.root: Path = config.invocation_params.dir  # like pytest's own summary lines
        # One guard for the session, resumed for each test and paused after it.
        s = settings
        self.guard = LoopGuard(s.threshold, debug=s.debug, timeout=s.timeout, strict=s.strict)
        self.current: TestRun | None = None
        self.pending = Pending(config.pluginmanager, self._decorate)
        self.known: frozenset[Entry] | None = None  # the baseline's entries, when one is set
        self.children: Children | None = None  # the session's watched child processes
        self.lifecycle: Checks | None = None  # loop_lifecycle's checks, unless off

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Hand the session's guard to this test: what blocks from now on is its."""
        settings = item.stash.get(ITEM_SETTINGS, None)
        if settings is None:  # an item collected without our collection hook
            settings = item.stash[ITEM_SETTINGS] = _markers.for_item(item, self.settings)
        self.current = TestRun(item, settings, self.guard)
        self.pending.clear()  # reports made but never logged (runtestprotocol(log=False))
        self.guard.resume(settings.threshold, "setup")

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[object]) -> None:
        """Name the fixture whose setup runs now, so a block in it is reported against it."""
        # In setup only: a fixture the test body asks for by name is part of its call.
        if self.current is not None and self.guard.phase == "setup":
            self.guard.set_context("setup", fixturedef.argname)

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[object]) -> None:
        """Name the fixture whose finalizers just ran for the teardown blocks they caused."""
        run = self.current
        if run is not None and run.mark is not None and not self.guard.quiet(run.mark):
            self.guard.name_fixture(run.mark, fixturedef.argname)
            run.mark = self.guard.recorded

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> None:
        """Judge the phase that just ended, before its report is made: a block fails it as its
        own exception would (xfail, ``--pdb``, ``-x`` and rerun plugins see it)."""
        run = self.current
        if run is None or run.item is not item:
            return
        when = call.when
        children = self.children
        if children is not None and children.parent.busy:
            children.settle()  # a child's verdict still to come is this phase's
        if self.guard.quiet(run.judged) and (when != "call" or run.mark is None):
            if when == "setup":  # nothing recorded since the last verdict: none to make
                self.guard.set_context("call")
        else:
            self._end_phase(run, call)
        lifecycle = self.lifecycle
        if lifecycle is not None:
            if when == "call":
                lifecycle.after_call(item, run.settings, call)
            elif when == "teardown":
                lifecycle.after_teardown(item, run.settings, call)
            elif call.excinfo is None:  # the setup passed: the test's body runs next
                lifecycle.begin(item.nodeid)
        failed = call.excinfo is not None
        if when == "call":
            run.call = call
        if when == "call" or (when == "setup" and failed):
            self._start_teardown(run)
        elif when == "teardown":
            self._finish()
        # Private: unittest's items keep their failure there until a later impl of this hook
        # moves it to the call, and pytest has no public way to see it sooner.
        if failed or when in run.verdicts or getattr(item, "_excinfo", None):
            self.pending.add((item.nodeid, when), (run, call, run.verdicts.get(when, NOTHING)))

    def pytest_enter_pdb(self) -> None:
        """pdb took over (``breakpoint()``, ``--pdb``, ``--trace``): the loop is held by someone
        reading its prompt. This test's blocks are not failed, and for the rest of the session
        the hang guard stands down (like pytest-timeout's)."""
        if self.current is not None:
            self.current.debugged = True
        self.guard.timeout = None

    def _start_teardown(self, run: TestRun) -> None:
        # Blocks from now on happen in teardown; the ones after ``mark`` get fixture names.
        self.guard.set_context("teardown")
        run.mark = self.guard.recorded

    def _finish(self) -> None:
        self.guard.rest()
        self.current = None

    def judge(self, run: TestRun, phase: str) -> Verdict:
        """Judge the phase's events not judged yet (a phase with subtests is judged at each);
        everything after reads the verdict kept on the test."""
        guard = self.guard
        if guard.quiet(run.judged):
            return NOTHING  # nothing new since the last verdict: the common case, kept cheap
        guard.close_ongoing()
        events = guard.events
        mine = [e for e in events[run.judged :] if e.phase == phase]  # each event judged once
        run.judged = len(events)
        if not mine:
            return NOTHING
        if phase == "call":
            from .trio_fixtures import name_fixtures

            mine = name_fixtures(mine, run.item)
        settings = run.settings
        debugger = "pdb" if run.debugged else _debugger.attached()  # attached mid-session?
        if debugger and not settings.debugger:
            settings = replace(settings, debugger=debugger)
        verdict = run.verdicts[phase] = judge(mine, settings, self._known_in(run))
        return verdict

    def _known_in(self, run: TestRun) -> Callable[[BlockEvent], bool] | None:
        known, nodeid, root = self.known, run.item.nodeid, self.root
        if known is None:
            return None
        if self.settings.baseline_update:
            return lambda event: True  # the run writes the file: nothing of it is new
        return lambda event: entry_of_event(event, nodeid, root) in known

    def _end_phase(self, run: TestRun, call: pytest.CallInfo[None]) -> None:
        """Judge the phase's blocks; when the phase itself passed, fail it (or warn) on them."""
        phase = call.when
        if phase == "call" and run.mark is not None:
            self._back_in_call(run)
        run.verdicts.pop(phase, None)
        verdict = self.judge(run, phase)
        if phase == "setup":
            self.guard.set_context("call")
        if call.excinfo is not None or not (verdict.warned or verdict.failing):
            return
        try:
            if verdict.warned:
                self._warn(run.item, verdict.warned)
            if verdict.failing:
                from .._base import (
                    report as _report,  # the text layer: imported when there is something to say
                )

                raise _report.blocked_error(verdict.failing, self.root)
        except Exception:  # ours: the phase fails on it
            call.excinfo = pytest.ExceptionInfo.from_current()

    def _back_in_call(self, run: TestRun) -> None:
        # A second call report: the first was a subtest's (pytest's subtests, unittest's
        # subTest), made in the middle of the call. What blocked since is the call's still.
        self.guard.rephase(run.mark or 0, "teardown", "call")
        self.guard.set_context("call")
        run.mark = None

    def _warn(self, item: pytest.Item, events: tuple[BlockEvent, ...]) -> None:
        from .._base import report as _report

        for event in _report.worst_first(events):
            text, filename, lineno = _report.warning_text(event, self.root, item.nodeid)
            warn_never_raise(pytest.PytestWarning(text), filename, lineno)

    def _decorate(
        self, report: pytest.TestReport, run: TestRun, call: Call, verdict: Verdict
    ) -> None:
        from .._base import report as _report

        root, error = self.root, call.excinfo.value if call.excinfo is not None else None
        if verdict.events:
            # Plain data on the report: it reaches the summary and the JSON report, from xdist.
            blocks = _summary.as_dicts(verdict, report.nodeid, root)
            report.loopguard_blocks = blocks  # type: ignore[attr-defined]
            report.loopguard_text = _report.render(verdict.events, root)  # type: ignore[attr-defined]
            run.item.user_properties.extend(_summary.junit_properties(blocks))
            self.collector.add(blocks)
        error = _unwrapped(error)
        if report.failed and error is not None and not _left_behind(error):
            self._explain(report, error)
        if isinstance(error, LoopHangError):
            error = _report.hang_error(verdict.events, error, root)
        if isinstance(error, LoopguardError):
            path, lineno, _ = report.location
            failure = _report.failure(error, root, (path, (lineno or 0) + 1))
            report.longrepr = failure_repr(failure)
            if isinstance(error, LoopBlockedError):
                return
        if verdict.failing and report.failed:
            report.sections.append((_SECTION, _report.render(verdict.failing, root)))

    def _explain(self, report: pytest.TestReport, error: BaseException) -> None:
        """A known mistake behind the test's own failure: an unloaded ORM attribute that a
        response model could not read leads the failure; any other, a hint beside it."""
        from .._base.serialization import unloaded_attribute

        verdict = unloaded_attribute(error, self.root)
        if verdict is not None:
            path, lineno, _ = report.location
            led = leading(report.longrepr, f"pytest-loopguard: {verdict}", path, (lineno or 0) + 1)
            if led is not None:
                report.longrepr = led
                return
        hint = verdict or _known_error_hint(error)
        if hint is not None:
            report.sections.append(("hint (pytest-loopguard)", hint))


Call = pytest.CallInfo[None]
Waiting = tuple[TestRun, Call, Verdict]


class Pending:
    """Reports that wait for our message, and the log hook that puts it on them. The hook is
    registered only while one waits: a hook called for every phase of every test costs every
    test (bench/overhead.py), and most phases neither block nor fail."""

    def __init__(
        self,
        plugins: pytest.PytestPluginManager,
        decorate: Callable[[pytest.TestReport, TestRun, Call, Verdict], None],
    ) -> None:
        self._plugins, self._decorate = plugins, decorate
        self._waiting: dict[tuple[str, str], Waiting] = {}  # (node id, phase) -> what to add

    def add(self, key: tuple[str, str], waiting: Waiting) -> None:
        if not self._plugins.is_registered(self):
            self._plugins.register(self, "loopguard-pending")
        self._waiting[key] = waiting

    def clear(self) -> None:
        if self._waiting:
            self._waiting.clear()
            self._plugins.unregister(self)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Put our message on the report of a phase that blocked or failed: as the failure, or
        beside the test's own failure, never instead. First, so xdist sends it, and the
        terminal, JUnit XML and pytest-html show it."""
        found = self._waiting.pop((report.nodeid, report.when), None)
        if not self._waiting:
            self._plugins.unregister(self)
        if found is not None:
            self._decorate(report, *found)


def _unwrapped(error: BaseException | None) -> BaseException | None:
    """Our own error when it is all an exception group holds (a trio nursery wraps what its
    tasks raise, a hang interrupted in one included); else ``error`` as it is."""
    inner = error
    while isinstance(getattr(inner, "exceptions", None), tuple) and len(inner.exceptions) == 1:  # type: ignore[union-attr]
        inner = inner.exceptions[0]  # type: ignore[union-attr]
    return inner if isinstance(inner, LoopguardError | LoopHangError) else error


def _left_behind(error: BaseException) -> bool:
    from .lifecycle import left_behind  # only for a failure

    return left_behind(error)


def _known_error_hint(error: BaseException) -> str | None:
    from .._base.hints import for_error

    return for_error(error)
