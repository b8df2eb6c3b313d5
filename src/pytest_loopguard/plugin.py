"""The pytest side: options, markers, fixtures, and a verdict after each test phase.

Thin on purpose: it reads the config and the items, drives the engine (one lease for the
session, one guard per test) and hands events to ``_verdict`` and text to ``_report``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from . import _settings, _summary
from ._engine import ENGINE
from ._events import BlockEvent, LoopBlockedError, LoopguardError, LoopHangError
from ._guard import LoopGuard
from ._settings import SETTINGS_KEY, Settings
from ._verdict import NOTHING, Verdict, judge

_ITEM_SETTINGS = pytest.StashKey[Settings]()
_WATCH = pytest.StashKey["_Watch"]()
_SECTION = "event loop blocked (pytest-loopguard)"


# One row a setting: ini name, CLI flag (None: ini only), metavar (None: an on/off flag with its
# --no- twin), ini type, ini default, and the one help text both surfaces show.
_OPTIONS: tuple[tuple[str, str | None, str | None, str, object, str], ...] = (
    (
        "loop_block_threshold",
        "--loop-block-threshold",
        "SECONDS",
        "string",
        "",
        _settings.THRESHOLD_HELP,
    ),
    ("loop_debug", "--loop-debug", None, "string", "false", _settings.DEBUG_HELP),
    ("loop_block_mode", "--loop-block-mode", "fail|warn", "string", "fail", _settings.MODE_HELP),
    ("loop_block_report", "--loop-block-report", "PATH", "string", "", _settings.REPORT_HELP),
    ("loop_block_timeout", "--loop-block-timeout", "SECONDS", "string", "", _settings.TIMEOUT_HELP),
    ("loop_block_strict", "--loop-block-strict", None, "string", "false", _settings.STRICT_HELP),
    ("loop_block_allow", None, None, "linelist", [], _settings.ALLOW_HELP),
    ("loop_guard_sqlalchemy", None, None, "string", "false", _settings.SQLALCHEMY_HELP),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare each setting once on the command line and once in the ini, with one help text."""
    group = parser.getgroup("loopguard", "pytest-loopguard: event loop blocking")
    for name, flag, metavar, kind, default, text in _OPTIONS:
        if flag is not None and metavar is None:
            on_off = argparse.BooleanOptionalAction
            group.addoption(flag, dest=name, action=on_off, default=None, help=text)
        elif flag is not None:
            group.addoption(flag, dest=name, default=None, metavar=metavar, help=text)
        parser.addini(name, text, type=kind, default=default)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers, resolve the settings once (failing fast on bad values), and set
    up the engine's machinery for the whole session."""
    config.addinivalue_line("markers", _settings.THRESHOLD_MARKER)
    config.addinivalue_line("markers", _settings.ALLOW_MARKER)
    config.addinivalue_line("markers", _settings.LAZY_MARKER)
    settings = config.stash[SETTINGS_KEY] = _settings.resolve(config)
    collector = _summary.Collector(config, settings)
    config.pluginmanager.register(collector, "loopguard-summary")
    if _summary.distributed(config):
        config.pluginmanager.register(_summary.Relay(collector), "loopguard-relay")
    ENGINE.acquire(strict=settings.strict, hang=settings.timeout is not None)
    watch = config.stash[_WATCH] = _Watch(config, settings, collector)
    config.pluginmanager.register(watch, "loopguard-watch")
    config.pluginmanager.register(_PhaseEnds(watch), "loopguard-phase-ends")


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Take the machinery down first, so nothing of it is left for later hooks to see."""
    watch = config.stash.get(_WATCH, None)
    if watch is not None:
        del config.stash[_WATCH]
        watch.guard.pause()
        settings = watch.settings
        ENGINE.release(strict=settings.strict, hang=settings.timeout is not None)


def pytest_report_header(config: pytest.Config) -> str:
    """Say in one line what the plugin will do, so a CI log shows it."""
    from . import _report  # the text layer: imported when needed

    s = config.stash[SETTINGS_KEY]
    return _report.header(s.threshold, s.threshold_source, s.debug, s.timeout, s.strict)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate every test's markers before anything runs, so a typo is a usage error."""
    settings = config.stash[SETTINGS_KEY]
    for item in items:
        item.stash[_ITEM_SETTINGS] = _settings.for_item(item, settings)
        if settings.guard_sqlalchemy and isinstance(item, pytest.Function):
            _use_sqlalchemy_guard(item)


def _use_sqlalchemy_guard(item: pytest.Function) -> None:
    # Like @pytest.mark.usefixtures, for every test: pytest requests fixtures by these names.
    if "loopguard_sqlalchemy" not in item.fixturenames:
        item.fixturenames.insert(0, "loopguard_sqlalchemy")


def _root(config: pytest.Config) -> Path:
    # Locations relative to where pytest was started, like pytest's own summary lines.
    return config.invocation_params.dir


class _TestRun:
    """One test's view of the session's guard, and what has been decided about it so far."""

    __slots__ = ("call_error", "guard", "item", "judged", "mark", "settings", "verdicts")

    def __init__(self, item: pytest.Item, settings: Settings, guard: LoopGuard) -> None:
        self.item, self.settings, self.guard = item, settings, guard
        self.verdicts: dict[str, Verdict] = {}
        self.judged = 0  # how many of the guard's events earlier verdicts have seen
        self.mark: int | None = None  # events before teardown: the rest get fixture names
        self.call_error: BaseException | None = None


class _Watch:
    """The per-test hooks, on an object that holds the session's guard and the running test.

    Every hook here is a plain one but the report's: a wrapper costs a test several times what
    a plain hook does, and these run for every test of every suite (see bench/overhead.py).
    """

    def __init__(
        self, config: pytest.Config, settings: Settings, collector: _summary.Collector
    ) -> None:
        self.config, self.settings, self.collector = config, settings, collector
        self.root = _root(config)
        # One guard for the session, resumed for each test and paused after it.
        s = settings
        self.guard = LoopGuard(s.threshold, debug=s.debug, timeout=s.timeout, strict=s.strict)
        self.current: _TestRun | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Hand the session's guard to this test: what blocks from now on is its."""
        settings = item.stash.get(_ITEM_SETTINGS, None)
        if settings is None:  # an item collected without our collection hook
            settings = item.stash[_ITEM_SETTINGS] = _settings.for_item(item, self.settings)
        self.current = _TestRun(item, settings, self.guard)
        self.guard.resume(settings.threshold)
        self.guard.set_context("setup")

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

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Show our message as the failure, or beside the test's own failure, never instead."""
        report = yield
        run = self.current
        if run is None or run.item is not item:
            return report
        when, error = call.when, call.excinfo.value if call.excinfo is not None else None
        if when == "call":
            run.call_error = error
        if when == "call" or (when == "setup" and not report.passed):
            self._start_teardown(run)
        elif when == "teardown":
            self._finish()
        if error is None and when not in run.verdicts:
            return report  # nothing blocked and nothing failed: the common case, kept cheap
        if error is not None:
            self.judge(run, when)  # the phase failed on its own: its blocks go beside that
        self._decorate(run, report, error)
        return report

    def _start_teardown(self, run: _TestRun) -> None:
        # Blocks from now on happen in teardown; the ones after ``mark`` get fixture names.
        self.guard.set_context("teardown")
        run.mark = self.guard.recorded

    def _finish(self) -> None:
        self.guard.pause()
        self.current = None

    def judge(self, run: _TestRun, phase: str) -> Verdict:
        """Judge the phase once; everything after reads the verdict kept on the test."""
        guard = self.guard
        if guard.quiet(run.judged):
            return NOTHING  # nothing new since the last verdict: the common case, kept cheap
        guard.close_ongoing()
        events = guard.events
        run.judged = len(events)
        mine = [e for e in events if e.phase == phase]
        if not mine:
            return NOTHING
        verdict = run.verdicts[phase] = judge(mine, run.settings)
        return verdict

    def end_phase(self, item: pytest.Item, phase: str) -> None:
        """The phase's work is done and did not fail: fail it (or warn) if it blocked."""
        run = self.current
        if run is None or run.item is not item:
            return
        verdict = self.judge(run, phase)
        if phase == "setup":
            self.guard.set_context("call")
        if verdict.warned:
            self._warn(item, verdict.warned)
        if verdict.failing:
            from . import _report  # the text layer: imported when there is something to say

            raise _report.blocked_error(verdict.failing, self.root)

    def _warn(self, item: pytest.Item, events: tuple[BlockEvent, ...]) -> None:
        from . import _report

        for event in _report.worst_first(events):
            text, filename, lineno = _report.warning_text(event, self.root, item.nodeid)
            warnings.warn_explicit(pytest.PytestWarning(text), None, filename, lineno)

    def _decorate(
        self, run: _TestRun, report: pytest.TestReport, error: BaseException | None
    ) -> None:
        from . import _report

        verdict, root = run.verdicts.get(report.when, NOTHING), self.root
        if verdict.events:
            # Plain data on the report: it reaches the summary and the JSON report, from xdist.
            blocks = _summary.as_dicts(verdict, report.nodeid, root)
            report.loopguard_blocks = blocks  # type: ignore[attr-defined]
            self.collector.add(blocks)
        hint = _known_error_hint(error) if report.failed and error is not None else None
        if hint is not None:
            report.sections.append(("hint (pytest-loopguard)", hint))
        if isinstance(error, LoopHangError):
            error = _report.hang_error(verdict.events, error, root)
        if isinstance(error, LoopguardError):
            report.longrepr = _report.failure_repr(error, root)  # type: ignore[assignment]
            if isinstance(error, LoopBlockedError):
                return
        if verdict.failing and report.failed:
            report.sections.append((_SECTION, _report.render(verdict.failing, root)))


class _PhaseEnds:
    """Record during a phase, fail right after it, as pytest's own unraisable-exception plugin
    does: ``trylast`` runs once the phase's work is done, and only when it did not fail."""

    def __init__(self, watch: _Watch) -> None:
        self._watch = watch

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Fail the setup (an error naming the fixture) when a fixture blocked the loop."""
        self._watch.end_phase(item, "setup")

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        """Fail the test when its body blocked the loop."""
        self._watch.end_phase(item, "call")

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        """Fail the teardown (an error naming the fixture) when a finalizer blocked the loop."""
        self._watch.end_phase(item, "teardown")


def _known_error_hint(error: BaseException) -> str | None:
    from ._hints import for_error

    return for_error(error)


def _error_chain(error: BaseException | None) -> list[BaseException]:
    from ._hints import chain

    return chain(error)


class LoopguardFixture:
    """What the ``loopguard`` fixture gives a test: its threshold, its blocks, an allow block."""

    def __init__(self, guard: LoopGuard) -> None:
        self._guard = guard

    @property
    def threshold(self) -> float:
        return self._guard.threshold

    @property
    def events(self) -> list[BlockEvent]:
        return self._guard.events

    @contextmanager
    def allow(self) -> Iterator[None]:
        """Blocks inside this ``with`` block are recorded but do not fail the test."""
        with self._guard.allow():
            yield


@pytest.fixture(name="loopguard")
def loopguard_fixture(request: pytest.FixtureRequest) -> LoopguardFixture:
    """The running test's loop guard: ``.threshold``, ``.events``, ``with loopguard.allow():``."""
    run = _run_of(request.node)
    if run is None:
        raise RuntimeError("the loopguard fixture is only available inside a running test")
    return LoopguardFixture(run.guard)


def _run_of(node: object) -> _TestRun | None:
    watch = node.config.stash.get(_WATCH, None) if isinstance(node, pytest.Item) else None
    run = None if watch is None else watch.current
    return run if run is not None and run.item is node else None


def _guards() -> Any:
    try:
        from . import sqlalchemy as guards
    except ImportError as exc:
        pytest.fail(
            f"pytest-loopguard's SQLAlchemy fixtures need SQLAlchemy 2 with asyncio support "
            f"(pip install 'pytest-loopguard[sqlalchemy]'): {exc}",
            pytrace=False,
        )
    return guards


def _swallowed(item: pytest.Item, errors: list[BaseException]) -> bool:
    """Whether none of ``errors`` reached pytest as the test's own failure."""
    run = _run_of(item)
    seen = set(map(id, _error_chain(None if run is None else run.call_error)))
    return not any(id(error) in seen for error in errors)


@pytest.fixture(name="loopguard_sqlalchemy")
def loopguard_sqlalchemy_fixture(request: pytest.FixtureRequest) -> Iterator[object]:
    """Lazy loads and sync engines on the loop fail early; swallowed ones fail at teardown."""
    guards = _guards()
    if request.node.get_closest_marker("allow_lazy_loads") is not None:
        yield None
        return
    with guards.SQLAlchemyGuard(root=str(_root(request.config))) as guard:
        yield guard
    errors = [violation.error for violation in guard.violations]
    if errors and isinstance(request.node, pytest.Item) and _swallowed(request.node, errors):
        pytest.fail(guards.render(guard.violations), pytrace=False)


@pytest.fixture(name="loopguard_sessionmaker")
def loopguard_sessionmaker_fixture(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[object], object]]:
    """``loopguard_sessionmaker(factory)``: sessions whose detached objects refuse reads."""
    guards = _guards()
    made: list[Any] = []

    def strict(factory: object) -> object:
        __tracebackhide__ = True
        made.append(guards.StrictSessionFactory(factory, str(_root(request.config))))
        return made[-1]

    yield strict
    for factory in made:
        factory.close()
