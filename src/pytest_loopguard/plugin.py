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

from . import _hints, _report, _settings, _summary
from ._engine import ENGINE
from ._events import BlockEvent, LoopBlockedError, LoopguardError, LoopHangError
from ._guard import LoopGuard
from ._settings import SETTINGS_KEY, Settings
from ._verdict import NOTHING, Verdict, judge

_GUARD = pytest.StashKey[LoopGuard]()
_ITEM_SETTINGS = pytest.StashKey[Settings]()
_VERDICTS = pytest.StashKey[dict[str, Verdict]]()
_TEARDOWN_MARK = pytest.StashKey[int]()
_CURRENT = pytest.StashKey[pytest.Item]()
_CALL_ERROR = pytest.StashKey[BaseException | None]()
_LEASED = pytest.StashKey[Settings]()
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
    config.pluginmanager.register(_summary.Collector(config, settings), "loopguard-summary")
    ENGINE.acquire(strict=settings.strict, hang=settings.timeout is not None)
    config.stash[_LEASED] = settings


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Take the machinery down first, so nothing of it is left for later hooks to see."""
    settings = config.stash.get(_LEASED, None)
    if settings is not None:
        del config.stash[_LEASED]
        ENGINE.release(strict=settings.strict, hang=settings.timeout is not None)


def pytest_report_header(config: pytest.Config) -> str:
    """Say in one line what the plugin will do, so a CI log shows it."""
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


def _item_settings(item: pytest.Item) -> Settings:
    if _ITEM_SETTINGS not in item.stash:
        item.stash[_ITEM_SETTINGS] = _settings.for_item(item, item.config.stash[SETTINGS_KEY])
    return item.stash[_ITEM_SETTINGS]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Watch the loops of one test, from its first fixture to its last teardown."""
    s = _item_settings(item)
    guard = LoopGuard(s.threshold, debug=s.debug, timeout=s.timeout, strict=s.strict)
    item.stash[_GUARD] = guard
    item.stash[_VERDICTS] = {}
    item.config.stash[_CURRENT] = item
    with guard:
        try:
            return (yield)
        finally:
            del item.config.stash[_CURRENT]
            del item.stash[_GUARD]


def _guard(item: pytest.Item) -> LoopGuard | None:
    return item.stash.get(_GUARD, None)


def _judge(item: pytest.Item, phase: str) -> Verdict:
    """Judge the phase once; everything after reads the verdict kept on the item."""
    guard = _guard(item)
    if guard is None:
        return NOTHING
    guard.close_ongoing()
    events = [e for e in guard.events if e.phase == phase]
    verdict = item.stash[_VERDICTS][phase] = judge(events, _item_settings(item))
    return verdict


def _verdict(item: pytest.Item, phase: str) -> Verdict:
    return item.stash.get(_VERDICTS, {}).get(phase, NOTHING)


def _run_phase(item: pytest.Item, phase: str) -> Generator[None, object, object]:
    # Record during the phase, fail after it: raising inside user code could be swallowed.
    guard = _guard(item)
    if guard is not None:
        guard.set_context(phase)
    try:
        result = yield
    except BaseException:
        _judge(item, phase)  # the phase's own error stays the failure; blocks go beside it
        raise
    verdict = _judge(item, phase)
    if verdict.warned:
        _warn(item, verdict.warned)
    if verdict.failing:
        raise _report.blocked_error(verdict.failing, _root(item.config))
    return result


def _warn(item: pytest.Item, events: tuple[BlockEvent, ...]) -> None:
    for event in _report.worst_first(events):
        text, filename, lineno = _report.warning_text(event, _root(item.config), item.nodeid)
        warnings.warn_explicit(pytest.PytestWarning(text), None, filename, lineno)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    """Fail the setup (an error naming the fixture) when a fixture blocked the loop."""
    return (yield from _run_phase(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fail the test when its body blocked the loop."""
    return (yield from _run_phase(item, "call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    """Fail the teardown (an error naming the fixture) when a finalizer blocked the loop."""
    guard = _guard(item)
    item.stash[_TEARDOWN_MARK] = len(guard.events) if guard else 0
    return (yield from _run_phase(item, "teardown"))


def _current_guard(config: pytest.Config) -> tuple[pytest.Item, LoopGuard] | None:
    item = config.stash.get(_CURRENT, None)
    guard = None if item is None else _guard(item)
    return None if item is None or guard is None else (item, guard)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    """Name the fixture whose setup is running, so a block in it is reported against it."""
    current = _current_guard(request.config)
    if current is None:
        return (yield)
    _, guard = current
    phase, fixture = guard.context
    guard.set_context(phase or "setup", fixturedef.argname)
    try:
        return (yield)
    finally:
        guard.set_context(phase, fixture)


def pytest_fixture_post_finalizer(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> None:
    """Name the fixture whose finalizers just ran for the teardown blocks they caused."""
    current = _current_guard(request.config)
    if current is None:
        return
    item, guard = current
    since = item.stash.get(_TEARDOWN_MARK, None)
    if since is not None:
        guard.name_fixture(since, fixturedef.argname)
        item.stash[_TEARDOWN_MARK] = len(guard.events)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Show our message as the failure, or next to the test's own failure — never instead of it."""
    report = yield
    error = call.excinfo.value if call.excinfo is not None else None
    if call.when == "call":
        item.stash[_CALL_ERROR] = error
    verdict, root = _verdict(item, call.when), _root(item.config)
    if verdict.events:
        # Plain data on the report: it reaches the summary and the JSON report, from xdist too.
        report.loopguard_blocks = _summary.as_dicts(verdict, item.nodeid, root)  # type: ignore[attr-defined]
    hint = _hints.for_error(error) if report.failed and error is not None else None
    if hint is not None:
        report.sections.append(("hint (pytest-loopguard)", hint))
    if isinstance(error, LoopHangError):
        error = _report.hang_error(verdict.events, error, root)
    if isinstance(error, LoopguardError):
        report.longrepr = _report.failure_repr(error, root)  # type: ignore[assignment]
        if isinstance(error, LoopBlockedError):
            return report
    if verdict.failing and report.failed:
        report.sections.append((_SECTION, _report.render(verdict.failing, root)))
    return report


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
    guard = _guard(request.node) if isinstance(request.node, pytest.Item) else None
    if guard is None:
        raise RuntimeError("the loopguard fixture is only available inside a running test")
    return LoopguardFixture(guard)


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
    seen = set(map(id, _hints.chain(item.stash.get(_CALL_ERROR, None))))
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
