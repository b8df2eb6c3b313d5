"""SQLAlchemy guards, part 2: one AsyncSession in two tasks, connections never given back.

Each runs on aiosqlite and on a real PostgreSQL through asyncpg (the ``db_url`` fixture)."""

from __future__ import annotations

import pytest

from conftest import SA_CANARY, assert_guarded, run, run_sa

pytest.importorskip("sqlalchemy.ext.asyncio")

GUARDED = "loop_guard_sqlalchemy = true"

SERVICES = """
import asyncio, gc
import pytest
from sqlalchemy import select, text
from conftest import User, Post


async def load_users(session):
    return (await session.execute(select(User))).scalars().all()


async def load_posts(session):
    return (await session.execute(select(Post))).scalars().all()


async def rename(session):
    user = await session.get(User, 1)
    user.name = "grace"
    await session.flush()
"""


def _ini(pytester: pytest.Pytester) -> None:
    from conftest import write_ini

    write_ini(pytester, "auto", GUARDED)


# -- one session, two tasks -------------------------------------------------------------------


def test_two_tasks_on_one_session_name_both_places(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        test_shared=SERVICES
        + """

async def test_gather_of_reads(sessionmaker):
    async with sessionmaker() as session:
        await asyncio.gather(load_users(session), load_posts(session))


async def test_read_while_another_task_flushes(sessionmaker):
    async with sessionmaker() as session:
        await asyncio.gather(rename(session), load_posts(session))
"""
    )
    _ini(pytester)
    result = run_sa(pytester)
    # The other task's operation is still in flight when the test leaves `async with`: on
    # PostgreSQL closing the session fails too (ours then shows as the hint of that failure),
    # and the connection it held is a leak at teardown.
    assert result.parseoutcomes()["failed"] == 2
    result.stdout.fnmatch_lines(
        [
            "*ConcurrentSessionError: one AsyncSession used by two tasks at once: task '*' "
            "started an operation at test_shared.py:12 in load_posts while the one task '*' "
            "started at test_shared.py:8 in load_users was still in flight*",
            "fix: a session per task — `async with sessionmaker() as session:` inside each "
            "task — or run them one after the other*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*at test_shared.py:12 in load_posts while the one task '*' started at "
            "test_shared.py:1[68] in rename was still in flight*"
        ]
    )


def test_sessions_of_their_own_and_one_after_the_other_pass(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        test_fine=SERVICES
        + """

async def test_sequential(sessionmaker):
    async with sessionmaker() as session:
        await load_users(session)
        await load_posts(session)
        await rename(session)
        await session.commit()


async def test_a_session_per_task(sessionmaker):
    async def users():
        async with sessionmaker() as session:
            return await load_users(session)

    async def posts():
        async with sessionmaker() as session:
            return await load_posts(session)

    await asyncio.gather(*(f() for f in (users, posts, users, posts)))


async def test_other_task_between_operations(sessionmaker):
    async with sessionmaker() as session:
        async def later():
            await asyncio.sleep(0.05)
            return await load_posts(session)

        task = asyncio.create_task(later())
        await load_users(session)
        assert len(await task) == 2
"""
        + SA_CANARY
    )
    _ini(pytester)
    result = run_sa(pytester)
    assert_guarded(result, passed=3)


def test_swallowed_concurrent_use_fails_at_teardown(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        test_swallow=SERVICES
        + """

async def test_swallows(sessionmaker):
    async with sessionmaker() as session:
        results = await asyncio.gather(
            load_users(session), load_posts(session), return_exceptions=True
        )
    assert any(isinstance(r, Exception) for r in results)
"""
    )
    _ini(pytester)
    result = run_sa(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_swallows*",
            "pytest-loopguard caught 1 SQLAlchemy mistake(s) in this test:",
            "ConcurrentSessionError: one AsyncSession used by two tasks at once*",
        ]
    )


def test_sqlalchemy_own_concurrency_errors_get_the_hint_unguarded(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        """
        from sqlalchemy.exc import InvalidRequestError

        async def test_as_sqlalchemy_says_it():
            raise InvalidRequestError(
                "This session is provisioning a new connection; concurrent operations are "
                "not permitted"
            )
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- hint (pytest-loopguard) -*",
            "One AsyncSession used by two tasks at once*",
            "fix: a session per task*",
        ]
    )


# -- connections never given back -------------------------------------------------------------


def test_unclosed_session_and_connection_fail_at_teardown(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        test_leaks=SERVICES
        + """

async def test_session_left_open(sessionmaker):
    session = sessionmaker()
    await load_users(session)


async def test_connection_left_open(engine):
    conn = await engine.connect()
    await conn.execute(text("select 1"))


@pytest.mark.allow_blocking(reason="an explicit gc.collect() may take 0.1 s on a busy machine")
async def test_reclaimed_by_the_gc_still_counts(sessionmaker):
    session = sessionmaker()
    await load_users(session)
    del session
    gc.collect()
"""
    )
    _ini(pytester)
    result = run_sa(pytester, "-W", "ignore::sqlalchemy.exc.SAWarning")
    result.assert_outcomes(passed=3, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_session_left_open*",
            "1 database connection(s) taken by this test and never given back:",
            "  an AsyncSession created at test_leaks.py:22 in test_session_left_open took a "
            "connection at test_leaks.py:8 in load_users",
            "fix: close what you open — `async with sessionmaker() as session:`*",
            "*ERROR at teardown of test_connection_left_open*",
            "  an AsyncConnection took a connection at test_leaks.py:27 in test_connection_*",
            "*ERROR at teardown of test_reclaimed_by_the_gc_still_counts*",
            "  an AsyncSession created at test_leaks.py:33 in test_reclaimed_by_the_gc_still_"
            "counts took a connection at test_leaks.py:8 in load_users",
        ]
    )


def test_closed_ones_and_wider_scoped_fixtures_are_not_leaks(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        test_no_leaks=SERVICES
        + """
import pytest_asyncio
from sqlalchemy.ext.asyncio import create_async_engine
from conftest import DB_URL


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_conn():
    engine = create_async_engine(DB_URL)
    conn = await engine.connect()
    yield conn
    await conn.close()
    await engine.dispose()


@pytest.fixture
async def session(sessionmaker):
    session = sessionmaker()
    yield session
    await session.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_module_connection_stays_open(shared_conn):
    await shared_conn.execute(text("select 1"))


@pytest.mark.asyncio(loop_scope="module")
async def test_module_connection_still_open(shared_conn):
    await shared_conn.execute(text("select 2"))


async def test_fixture_closes_it_after_the_guard_asked_first(session, loopguard_sqlalchemy):
    await load_users(session)


async def test_closed_explicitly(sessionmaker, engine):
    session = sessionmaker()
    try:
        await load_users(session)
    finally:
        await session.close()
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))
"""
        + SA_CANARY
    )
    _ini(pytester)
    result = run_sa(pytester)
    assert_guarded(result, passed=4)


def test_the_guard_leaves_nothing_behind() -> None:
    """No listener outlives a guard, nor the wrappers that note where sessions are made and
    when their operations start; and no listener is on Engine even while it is active (one
    would send every connection down SQLAlchemy's slower event path, for good)."""
    import sqlalchemy.ext.asyncio.session as async_session
    from sqlalchemy import event
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import Pool

    from pytest_loopguard.sqlalchemy import SQLAlchemyGuard

    def wrapped() -> tuple[object, ...]:
        inits = AsyncSession.__dict__["__init__"], AsyncConnection.__dict__["__init__"]
        return (*inits, async_session.greenlet_spawn)

    before = wrapped()
    guard = SQLAlchemyGuard(nplusone=10)
    with guard:
        assert all(now is not then for now, then in zip(wrapped(), before, strict=True))
        listeners = list(guard._listeners)
        assert all(event.contains(target, name, fn) for target, name, fn in listeners)
    assert wrapped() == before
    assert not any(event.contains(target, name, fn) for target, name, fn in listeners)
    assert {target for target, _, _ in listeners} == {Session, Dialect, Pool}


WIDER_SCOPES = """
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from conftest import DB_URL


def _fixture(scope):
    @pytest_asyncio.fixture(scope=scope, loop_scope=scope)
    async def made_before_the_test():
        engine = create_async_engine(DB_URL)
        session = async_sessionmaker(engine)()  # takes its connection in the first test
        connection = engine.connect()  # likewise (started by the first test)
        yield session, connection
        await connection.close()
        await session.close()
        await engine.dispose()

    return made_before_the_test


module_made = _fixture("module")
package_made = _fixture("package")
session_made = _fixture("session")


async def use(made):
    session, connection = made
    assert (await session.execute(text("select 1"))).scalar() == 1
    if connection.sync_connection is None:
        await connection.start()
    assert (await connection.execute(text("select 2"))).scalar() == 2


@pytest.mark.asyncio(loop_scope="module")
async def test_module_first_use(module_made):
    await use(module_made)


@pytest.mark.asyncio(loop_scope="module")
async def test_module_used_again(module_made):
    await use(module_made)


@pytest.mark.asyncio(loop_scope="package")
async def test_package_first_use(package_made):
    await use(package_made)


@pytest.mark.asyncio(loop_scope="package")
async def test_package_used_again(package_made):
    await use(package_made)


@pytest.mark.asyncio(loop_scope="session")
async def test_session_first_use(session_made):
    await use(session_made)


@pytest.mark.asyncio(loop_scope="session")
async def test_session_used_again(session_made):
    await use(session_made)


@pytest.fixture
async def leaky():
    engine = create_async_engine(DB_URL)
    session = async_sessionmaker(engine)()
    await session.execute(text("select 1"))
    yield session  # never closed: this test's leak


async def test_a_function_fixture_that_leaks(leaky):
    pass
"""


def test_wider_scoped_sessions_are_not_the_test_s_and_stay_open(
    pytester: pytest.Pytester, any_driver_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session or connection made by a module-, package- or session-scoped fixture and first
    used inside a test is that fixture's: never reported, never closed, so the next test that
    uses it passes too. One a function-scoped fixture leaks is still the test's."""
    from sa_src import CONFTEST

    monkeypatch.setenv("LOOPGUARD_TEST_DB_URL", any_driver_url)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_wider=WIDER_SCOPES)
    _ini(pytester)
    # In a process of its own: the leaked psycopg connection, closed for the next test with no
    # loop to await its close on, warns when collected, wherever that happens.
    result = run(pytester, subprocess=True)
    result.assert_outcomes(passed=7, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_a_function_fixture_that_leaks*",
            "1 database connection(s) taken by this test and never given back:",
            "  an AsyncSession created at test_wider.py:68 in leaky took a connection at "
            "test_wider.py:69 in leaky",
        ]
    )
    result.stdout.no_fnmatch_line("*never given back*used_again*")


GATHERED = """
import asyncio

import pytest
from sqlalchemy import select
from conftest import Post, User


class Repository:
    async def users(self, session, uid):
        return (await session.scalars(select(User).where(User.id == uid))).all()

    async def posts(self, session, uid):
        return (await session.scalars(select(Post).where(Post.user_id == uid))).all()


async def addresses(session, uid):
    return await Repository().users(session, uid)


async def orders(session, uid):
    return await Repository().posts(session, uid)


@pytest.mark.parametrize("attempt", range(8))
async def test_gathered_service_calls(sessionmaker, attempt):
    async with sessionmaker() as session:
        await asyncio.gather(addresses(session, 1), orders(session, 1))
"""


def test_gathered_service_calls_fail_the_same_way_every_time(
    pytester: pytest.Pytester, any_driver_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two service calls gathered on one fresh session, each awaiting its repository's query:
    the second is caught before the driver sees it (while the first still checks out its
    connection), on aiosqlite, asyncpg and psycopg, every time; no leak reported after it."""
    from sa_src import CONFTEST

    monkeypatch.setenv("LOOPGUARD_TEST_DB_URL", any_driver_url)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gathered=GATHERED)
    _ini(pytester)
    result = run(pytester, subprocess=True)
    result.assert_outcomes(failed=8)
    text = result.stdout.str()
    # Caught in the second task, before its query reached the driver. What fails the test may
    # still be SQLAlchemy's or the driver's (closing the session while the first task's query
    # runs): then it carries ours as its hint. The connection the first task kept is not
    # reported as a second problem.
    assert text.count("ConcurrentSessionError: one AsyncSession used by two tasks at once") >= 8
    assert "never given back" not in text
    result.stdout.fnmatch_lines(
        [
            "*ConcurrentSessionError: one AsyncSession used by two tasks at once: task '*' "
            "started an operation at test_gathered.py:1[03] in * while the one task '*' started "
            "at test_gathered.py:1[03] in * was still in flight*"
        ]
    )


LOCK_HOLDER = """
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from conftest import DB_URL, Base, User

KEPT = []  # the leaked session stays reachable: no garbage collector comes to the rescue


@pytest.fixture
async def engine():
    # As the shared conftest's, with a bound on the wait for the leaked transaction's locks:
    # without the guard's close, this test's DROP would wait for them till the process ends.
    engine = create_async_engine(DB_URL)
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SET LOCAL lock_timeout = '20s'"))
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


async def test_leaves_a_reader_open(sessionmaker):
    session = sessionmaker()
    KEPT.append(session)
    assert (await session.get(User, 1)).name == "ada"  # a transaction holding a read lock


async def test_next_one_drops_the_tables(sessionmaker):
    async with sessionmaker() as session:
        assert (await session.get(User, 1)).name == "ada"
"""


def test_a_leaked_transaction_s_locks_are_released_for_the_next_test(
    pytester: pytest.Pytester, any_driver_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leak is ended on the server when its test ends, though its loop is closed by then
    and the session is still referenced: the next test's DDL does not wait for its locks."""
    from sa_src import CONFTEST

    monkeypatch.setenv("LOOPGUARD_TEST_DB_URL", any_driver_url)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_locks=LOCK_HOLDER)
    _ini(pytester)
    result = run(pytester, subprocess=True)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_reader_open*",
            "1 database connection(s) taken by this test and never given back:",
            "  an AsyncSession created at test_locks.py:24 in test_leaves_a_reader_open took a "
            "connection at test_locks.py:26 in test_leaves_a_reader_open",
        ]
    )
    result.stdout.no_fnmatch_line("*lock timeout*")
    result.stdout.no_fnmatch_line("*database is locked*")
