"""Shared helpers: run pytest for real, with exactly the plugins each test names."""

from __future__ import annotations

import asyncio
import http.cookiejar  # noqa: F401  (see below)
import os
import re
import signal
import sys
import threading
import warnings

# The SQLAlchemy stack the inner sessions use, imported once here (see below): an inner session
# that imported a dialect or a driver first would drop it at its end, and SQLAlchemy's registries
# (and asyncpg's C extension) do not take a second import well.
import aiosqlite  # noqa: F401

# The plugins the inner sessions pin with -p, and the modules ours imports lazily, imported once
# here: pytester drops what an inner session imported first, so each in-process run would
# import (and assertion-rewrite) them all again — about 0.15 s a run, half the suite's time.
import anyio.pytest_plugin  # noqa: F401
import asyncpg  # noqa: F401
import httpx  # noqa: F401
import psycopg  # noqa: F401
import pytest
import pytest_asyncio.plugin  # noqa: F401
import pytest_timeout  # noqa: F401
import pytest_trio.plugin  # noqa: F401
import requests  # noqa: F401
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.postgresql.psycopg
import sqlalchemy.dialects.sqlite.aiosqlite
import sqlalchemy.dialects.sqlite.pysqlite
import sqlalchemy.ext.asyncio
import sqlalchemy.ext.asyncio.session
import sqlalchemy.orm  # noqa: F401

import pytest_loopguard._base.report
import pytest_loopguard._core.hang
import pytest_loopguard._core.strict
import pytest_loopguard._plugin.trio_fixtures
import pytest_loopguard.plugin
import pytest_loopguard.sqlalchemy  # noqa: F401
from pytest_loopguard._core.engine import ENGINE
from pytest_loopguard._procs import pth
from pytest_loopguard._procs.channel import CHANNEL_ENV, SETTINGS_ENV

pytest_plugins = ["pytester"]

# In-process pytester runs drop every module an inner session imported first. A package that
# stays (`http`) then keeps a stale submodule attribute (`http.cookiejar`), and a re-imported
# `requests` mixes the two: `isinstance(jar, cookielib.CookieJar)` fails and requests raises
# "You can only merge into CookieJar" (seen in CI, order-dependent). Importing the stacks the inner
# sessions use here, before any snapshot, keeps one copy of each for the whole run.

ASYNCIO = ("-p", "pytest_loopguard", "-p", "asyncio")
SUBPROCESS_TIMEOUT = 180  # seconds; the slowest inner session takes about 20
# An inner test still running after this long dumps every thread's stack to its stderr, which
# the timeout's failure shows: a hang seen once in CI is then diagnosed from its log.
HANG_DUMP_AFTER = 60
INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
filterwarnings = ignore::pytest.PytestAssertRewriteWarning
{extra}
"""


@pytest.fixture(autouse=True)
def _pinned_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions load only the plugins a test passes with -p, never whatever is installed."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(autouse=True)
def _no_leaks() -> object:
    """Every test (every inner session) leaves nothing of ours behind: no patch, thread, gc
    callback, import hook, strict wrapper or signal handler."""
    yield
    assert ENGINE.leftovers() == []
    assert getattr(asyncio.events._set_running_loop, "__wrapped__", None) is None
    names = [t.name for t in threading.enumerate()]
    assert "pytest-loopguard-watchdog" not in names, names
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL, "the hang guard's handler stayed"
    # Nor of the children's watch: the environment, the startup hook's file, its finder.
    assert CHANNEL_ENV not in os.environ
    assert SETTINGS_ENV not in os.environ
    assert not list(pth.site_dir().glob(f"{pth.PREFIX}{os.getpid()}.pth"))
    assert not [f for f in sys.meta_path if hasattr(f, "pytest_loopguard_startup")]
    # Nor of the lifecycle checks' wrappers.
    wrapped = [
        asyncio.BaseEventLoop.create_task,
        asyncio.BaseEventLoop.call_exception_handler,
        threading.Thread.start,
        getattr(getattr(asyncio, "Runner", None), "close", None),  # Python 3.11+
        getattr(warnings, "_warn_unawaited_coroutine", None),
    ]
    assert not [f for f in wrapped if hasattr(f, "__wrapped__")], wrapped


def write_ini(pytester: pytest.Pytester, mode: str = "strict", extra: str = "") -> None:
    pytester.makefile(".ini", pytest=INI.format(mode=mode, extra=extra))


def run(
    pytester: pytest.Pytester,
    *args: str,
    mode: str = "auto",
    extra: str = "",
    subprocess: bool = False,
) -> pytest.RunResult:
    """Run the files made so far under pytest-asyncio (auto mode unless told) and the plugin."""
    if not (pytester.path / "pytest.ini").exists():
        write_ini(pytester, mode, extra)
    if subprocess:
        return _run_subprocess(pytester, *ASYNCIO, *args)
    with warnings.catch_warnings():
        # As in a user's own process: this session's filterwarnings = error is not the inner's.
        warnings.resetwarnings()
        return pytester.runpytest(*ASYNCIO, *args)


def _run_subprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """A bound: an inner session that never ends fails its test, not the whole CI job — with
    what it printed, faulthandler's stacks included."""
    dump = f"faulthandler_timeout={HANG_DUMP_AFTER}"
    try:
        return pytester.runpytest_subprocess("-o", dump, *args, timeout=SUBPROCESS_TIMEOUT)
    except pytester.TimeoutExpired as exc:
        printed = [
            f"--- inner {name} ---\n{(pytester.path / name).read_text(errors='replace')}"
            for name in ("stdout", "stderr")
            if (pytester.path / name).exists()
        ]
        raise pytester.TimeoutExpired("\n".join([str(exc), *printed])) from None


# Appended to a clean case's test file: an allowed block in the same inner run proves the watcher
# was live there, so "nothing reported" cannot come from a watcher that never ran. A sync test
# running its own loop works under every runner (pytest-asyncio, anyio, pytest-trio, none).
CANARY = """

import asyncio as _lg_asyncio
import time as _lg_time

import pytest as _lg_pytest


@_lg_pytest.mark.allow_blocking(reason="the watcher was live in this run")
def test_zz_watcher_was_live():
    async def hold():
        _lg_time.sleep(0.25)

    _lg_asyncio.run(hold())
"""


# The same for the SQLAlchemy guards (with the inner conftest of ``sa_project``): a lazy load the
# guards must turn into LazyLoadError, and an N+1 of three the counter must report (at a count
# of 3 or less: the tests that use it set loop_sqlalchemy_nplusone lower than the default).
SA_CANARY = """

import pytest as _lg_pytest
from pytest_loopguard.sqlalchemy import LazyLoadError as _LgLazyLoadError


@_lg_pytest.mark.xfail(raises=_LgLazyLoadError, strict=True, reason="the guards were live")
async def test_zz_guards_were_live(sessionmaker, loopguard_sqlalchemy):
    from conftest import User as _LgUser

    async with sessionmaker() as session:
        (await session.get(_LgUser, 1)).posts
"""
NPLUSONE_CANARY = """


async def test_zz_counting_was_live(sessionmaker, loopguard_sqlalchemy):
    from conftest import Post as _LgPost

    async with sessionmaker() as session:
        for i in (1, 2, 1, 2):
            session.expunge_all()
            await session.get(_LgPost, i)
"""


def assert_guarded(result: pytest.RunResult, passed: int) -> None:
    """The clean tests passed, beside the SQLAlchemy canary the guards caught."""
    result.assert_outcomes(passed=passed, xfailed=1)
    result.stdout.no_fnmatch_line("*LoopBlockedError*")


def assert_clean(result: pytest.RunResult, passed: int) -> None:
    """The clean tests passed with no block, beside the canary's one allowed block."""
    result.assert_outcomes(passed=passed + 1)
    result.stdout.fnmatch_lines(["0 block(s) in 0 test(s); 1 allowed block(s) not counted"])
    result.stdout.no_fnmatch_line("*LoopBlockedError*")


def blocked(where: str, *, seconds: str = "*", threshold: str = "0.10") -> str:
    """The first line of a block's failure, as a pattern for fnmatch_lines. Just past the
    threshold, both get more digits ("0.1004 s (threshold 0.1000 s)"): hence ``0.10*``."""
    what = f"event loop blocked for {seconds} s (threshold {threshold}* s)"
    return f"LoopBlockedError: {what} at {where}"


def hung(where: str, *, seconds: str = "*") -> str:
    """The first line of a hang's failure (the hang guard interrupted the callback)."""
    return (
        f"LoopBlockedError: event loop hung: a callback held it for {seconds} s, past the hang "
        f"timeout, and was interrupted at {where}"
    )


def strict_call(call: str, where: str, *, times: int = 1) -> str:
    """The first line of a strict-mode failure: a known blocking call made on the loop."""
    count = f", {times} times" if times > 1 else ""
    return (
        f"LoopBlockedError: blocking call {call} on the event loop at {where} "
        f"(strict mode: fails however short{count})"
    )


_SECONDS = re.compile(r"(?:blocked for|held it for) (\d+\.\d+) s")


def reported_seconds(result: pytest.RunResult) -> list[float]:
    """Every block's duration the run printed, in order: for bounds that hold on a loaded
    machine (a 0.2 s sleep is reported between 0.15 and 1.5 s), never pinned to digits."""
    return [float(s) for s in _SECONDS.findall(result.stdout.str())]


def assert_blocked(
    result: pytest.RunResult, where: str, line: str, fix: str, *, threshold: str = "0.10"
) -> None:
    """The failure signature a user reads: verdict with file:line, the source line, the fix."""
    result.stdout.fnmatch_lines(
        [blocked(f"{where}*", threshold=threshold), f"    {line}", f"fix: {fix}"]
    )


def assert_usage_error(result: pytest.RunResult, message: str) -> None:
    """A bad setting stops the run with exit code 4 and one line naming it — no traceback."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-loopguard: {message}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.fixture(scope="session")
def postgres_url() -> object:
    """A real PostgreSQL server for the session: skipped where absent, unless CI requires it."""
    import postgres

    try:
        with postgres.cluster() as url:
            yield url
    except postgres.Unavailable as exc:
        if os.environ.get("LOOPGUARD_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here (LOOPGUARD_REQUIRE_POSTGRES=1): {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")


@pytest.fixture(params=["aiosqlite", "asyncpg", "psycopg"])
def any_driver_url(request: pytest.FixtureRequest, pytester: pytest.Pytester) -> str:
    """aiosqlite, and a real PostgreSQL through each async driver users have: asyncpg and
    psycopg 3 (for the tests where the driver's own behaviour matters)."""
    if request.param == "aiosqlite":
        return f"sqlite+aiosqlite:///{pytester.path / 'test.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url if request.param == "asyncpg" else url.replace("+asyncpg", "+psycopg")


@pytest.fixture(params=["aiosqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, pytester: pytest.Pytester) -> str:
    """Each SQLAlchemy test runs on embedded aiosqlite and on a real PostgreSQL via asyncpg."""
    if request.param == "aiosqlite":
        return f"sqlite+aiosqlite:///{pytester.path / 'test.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def run_sa(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner session of SQLAlchemy tests, in a process of its own: the mistakes these tests
    make on purpose leave driver connections and transports for the garbage collector, and in
    this process it would collect them during some later test (seen under xdist on 3.12)."""
    return run(pytester, *args, subprocess=True)


@pytest.fixture
def sa_project(pytester: pytest.Pytester, db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Models, an engine and seeded data for the inner session, on ``db_url``."""
    from sa_src import CONFTEST

    monkeypatch.setenv("LOOPGUARD_TEST_DB_URL", db_url)
    pytester.makeconftest(CONFTEST)
    return db_url
