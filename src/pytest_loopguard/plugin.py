"""The pytest side: options, markers, the session's set-up and take-down, and the fixtures.

Thin on purpose: settings come from ``_settings``, the per-test hooks live in ``_phases``, the
engine is leased once for the session, and every text comes from ``_report``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ._base.events import BlockEvent
from ._core.engine import ENGINE
from ._core.guard import LoopGuard
from ._plugin import markers as _markers
from ._plugin import settings as _settings
from ._plugin import summary as _summary
from ._plugin.options import MARKERS, OPTIONS
from ._plugin.phases import ITEM_SETTINGS, TestRun, Watch
from ._plugin.settings import SETTINGS_KEY, Settings
from ._plugin.warn import warn_never_raise

_WATCH = pytest.StashKey[Watch]()
_UNWATCHED = pytest.StashKey[str]()  # why the session's child processes are not watched


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare each setting once on the command line and once in the ini, with one help text."""
    group = parser.getgroup("loopguard", "pytest-loopguard: event loop blocking")
    for o in OPTIONS:
        if o.flag is not None and o.metavar is None:
            on_off = argparse.BooleanOptionalAction
            group.addoption(o.flag, dest=o.ini, action=on_off, default=None, help=o.help)
        elif o.flag is not None:
            group.addoption(o.flag, dest=o.ini, default=None, metavar=o.metavar, help=o.help)
        parser.addini(o.ini, o.help, type=o.kind, default=o.default)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers, resolve the settings once (failing fast on bad values), and set
    up the engine's machinery for the whole session."""
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    settings = config.stash[SETTINGS_KEY] = _settings.resolve(config)
    known = _baseline(settings)  # a bad file is a usage error before anything is set up
    collector = _summary.Collector(config, settings)
    config.pluginmanager.register(collector, "loopguard-summary")
    if _summary.distributed(config):
        config.pluginmanager.register(_summary.Relay(collector), "loopguard-relay")
    if settings.report is not None and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_summary.Ran(collector), "loopguard-ran")
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(_summary.HtmlRows(), "loopguard-html")
    ENGINE.acquire(strict=settings.strict, hang=settings.timeout is not None)
    watch = config.stash[_WATCH] = Watch(config, settings, collector)
    if known is not None:
        watch.known = known
        if not hasattr(config, "workerinput"):  # the controller sees every worker's reports
            config.pluginmanager.register(_tracker(config, settings, known), "loopguard-baseline")
    config.pluginmanager.register(watch, "loopguard-watch")
    _watch_children(config, settings, watch, collector)
    if settings.lifecycle != "off" and not _summary.distributed(config):
        from ._plugin.lifecycle import Checks

        watch.lifecycle = Checks(
            _root(config), known, settings.baseline_update, collector.lifecycle
        )


def _watch_children(
    config: pytest.Config, settings: Settings, watch: Watch, collector: _summary.Collector
) -> None:
    from ._plugin import children as _children

    _children.stop_inherited_hook()  # this session watches its own process
    if not settings.subprocesses or _summary.distributed(config):
        return  # an xdist controller runs no test: each worker watches its own children
    kids = _children.Children(settings, watch.guard, lambda: watch.current is not None, collector)
    if kids.start():
        watch.children = kids
        config.pluginmanager.register(kids, "loopguard-children")
    else:
        config.stash[_UNWATCHED] = _children.UNWATCHED


def _baseline(settings: Settings) -> frozenset[Any] | None:
    if settings.baseline is None:
        return None
    from ._plugin import baseline

    return baseline.load(settings.baseline, settings.baseline_update)


def _tracker(config: pytest.Config, settings: Settings, known: frozenset[Any]) -> object:
    from ._plugin import baseline

    assert settings.baseline is not None
    update, strict = settings.baseline_update, settings.baseline_strict
    tracker = baseline.Tracker(settings.baseline, known, update, strict)
    tracker.rootpath = config.rootpath  # an xdist controller collects nothing, but knows it
    return tracker


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Take the machinery down first, so nothing of it is left for later hooks to see."""
    watch = config.stash.get(_WATCH, None)
    if watch is not None:
        del config.stash[_WATCH]
        watch.pending.clear()
        if watch.children is not None:
            watch.children.stop()
            watch.children = None
        watch.guard.pause()
        if watch.lifecycle is not None:
            watch.lifecycle.close()
            watch.lifecycle = None
        settings = watch.settings
        ENGINE.release(strict=settings.strict, hang=settings.timeout is not None)


def pytest_report_header(config: pytest.Config) -> str | list[str]:
    """Say in one line what the plugin will do, so a CI log shows it."""
    from ._base import report as _report  # the text layer: imported when needed

    s = config.stash[SETTINGS_KEY]
    shown = (s.threshold, s.threshold_source, s.debug, s.timeout, s.strict)
    line = _report.header(*shown, debugger=s.debugger, tracer=s.tracer)
    unwatched = config.stash.get(_UNWATCHED, None)
    return line if unwatched is None else [line, f"loopguard: {unwatched}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate every test's markers before anything runs, so a typo is a usage error."""
    settings = config.stash[SETTINGS_KEY]
    inherited: _markers.Inherited = {}
    for item in items:
        item.stash[ITEM_SETTINGS] = _markers.for_item(item, settings, inherited)
        if isinstance(item, pytest.Function):
            _use_sqlalchemy_guard(item, settings.guard_sqlalchemy)


def _use_sqlalchemy_guard(item: pytest.Function, always: bool) -> None:
    # Like @pytest.mark.usefixtures, for every test: pytest requests fixtures by these names.
    # First among the test's own fixtures, asked for or not: set up before, and torn down
    # after, every fixture whose sessions and connections its leak check must see closed.
    names = item.fixturenames
    if "loopguard_sqlalchemy" in names:
        names.remove("loopguard_sqlalchemy")
    elif not always:
        return
    names.insert(_first_function_scoped(item, names), "loopguard_sqlalchemy")


def _first_function_scoped(item: pytest.Function, names: list[str]) -> int:
    """Where the test's own fixtures begin: pytest sets up wider scopes first, and their
    connections are not the test's."""
    # Private: pytest has no public map from a test to its fixtures' definitions.
    definitions = getattr(item, "_fixtureinfo", None)
    by_name = getattr(definitions, "name2fixturedefs", {})
    for index, name in enumerate(names):
        found = by_name.get(name)
        if found and found[-1].scope == "function":
            return index
    return len(names)


def _root(config: pytest.Config) -> Path:
    # Locations relative to where pytest was started, like pytest's own summary lines.
    return config.invocation_params.dir


def _error_chain(error: BaseException | None) -> list[BaseException]:
    from ._base.hints import chain

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


def _run_of(node: object) -> TestRun | None:
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


def _item_settings(request: pytest.FixtureRequest) -> Settings:
    node, config = request.node, request.config
    found = node.stash.get(ITEM_SETTINGS, None) if isinstance(node, pytest.Item) else None
    return found if found is not None else config.stash[SETTINGS_KEY]


def _swallowed(item: pytest.Item, errors: list[BaseException]) -> bool:
    """Whether none of ``errors`` reached pytest as the test's own failure."""
    run = _run_of(item)
    failure = _error_chain(None if run is None else run.call_error)
    seen = set(map(id, failure))
    # Or its text: pydantic keeps only that of what an attribute read raised (a response model
    # reading an unloaded relationship), and the failure already leads with our verdict.
    texts = [str(error) for error in failure]
    return not any(id(error) in seen or _quoted(error, texts) for error in errors)


def _quoted(error: BaseException, texts: list[str]) -> bool:
    first = str(error).partition("\n")[0]
    return bool(first) and any(first in text for text in texts)


@pytest.fixture(name="loopguard_sqlalchemy")
def loopguard_sqlalchemy_fixture(request: pytest.FixtureRequest) -> Iterator[object]:
    """Lazy loads and sync engines on the loop fail early; swallowed ones fail at teardown."""
    guards = _guards()
    if request.node.get_closest_marker("allow_lazy_loads") is not None:
        yield None
        return
    root, settings = str(_root(request.config)), _item_settings(request)
    nplusone = None if request.node.get_closest_marker("allow_nplusone") else settings.nplusone
    with guards.SQLAlchemyGuard(root=root, nplusone=nplusone) as guard:
        yield guard
    known = _findings(request, settings.strict)
    guard.leaks = [leak for leak in guard.leaks if not known("leak", leak.where)]
    guard.nplusone = [found for found in guard.nplusone if not known("nplusone", found.where)]
    errors = [violation.error for violation in guard.violations]
    failures = [guards.leak_message(guard.leaks, root)] if guard.leaks else []
    failures += _nplusone(guards, guard, root, settings.strict)
    if errors and isinstance(request.node, pytest.Item) and _swallowed(request.node, errors):
        failures.insert(0, guards.render(guard.violations))
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def _findings(request: pytest.FixtureRequest, strict: bool) -> Callable[[str, Any], bool]:
    """Whether a guard's finding at a user's line is in the baseline. Each finding is put on
    the test's reports too (a user property: it reaches an xdist controller), for the JSON
    report and the baseline's fixed check."""
    watch, node = request.config.stash.get(_WATCH, None), request.node
    if watch is None or not isinstance(node, pytest.Item):
        return lambda kind, where: False
    from ._plugin.baseline import FINDING, entry_at

    known, update, root = watch.known, watch.settings.baseline_update, _root(request.config)

    def listed(kind: str, where: Any) -> bool:
        entry = entry_at(kind, node.nodeid, where, root)
        if entry is None:
            return False
        is_known = known is not None and (update or entry in known)
        verdict = "known" if is_known else "failed" if strict or kind == "leak" else "warned"
        node.user_properties.append((FINDING, entry.finding(where.lineno, verdict)))
        return is_known

    return listed


def _nplusone(guards: Any, guard: Any, root: str, strict: bool) -> list[str]:
    """Each N+1 the guard found: a warning at its line, or (strict) a failure's text."""
    failures = []
    for found in guard.nplusone:
        text = guards.nplusone_message(found, root, strict)
        if strict:
            failures.append(text)
        else:  # at the line, so that pytest's warnings summary points at it
            where = found.where
            warn_never_raise(pytest.PytestWarning(text), where.filename, where.lineno)
    return failures


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
