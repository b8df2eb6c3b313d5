"""SQLAlchemy guards, part 2: N+1 through awaits (the same SELECT N times from one line).

On aiosqlite and on a real PostgreSQL through asyncpg (the ``db_url`` fixture)."""

from __future__ import annotations

import textwrap

import pytest

from conftest import NPLUSONE_CANARY, assert_usage_error, run_sa, write_ini

pytest.importorskip("sqlalchemy.ext.asyncio")


def assert_counted_only_the_canary(result: pytest.RunResult, passed: int) -> None:
    """The clean tests passed and sent no N+1; the canary beside them did, so counting was on."""
    result.assert_outcomes(passed=passed + 1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*N+1 queries: the same SELECT ran 4 times from *test_zz_counting_was_live*"]
    )


LOOPS = """
import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import selectinload
from conftest import User, Post


@pytest.fixture
async def many(sessionmaker):
    async with sessionmaker() as session:
        await session.execute(insert(User), [{"id": i, "name": f"u{i}"} for i in range(2, 1102)])
        await session.execute(
            insert(Post), [{"id": 100 + i, "title": "t", "user_id": i} for i in range(2, 30)]
        )
        await session.commit()
    return sessionmaker


async def test_awaitable_attrs_in_a_loop(many):
    async with many() as session:
        users = (await session.execute(select(User).where(User.id < 30))).scalars().all()
        for user in users:
            await user.awaitable_attrs.posts


async def test_get_in_a_loop(many):
    async with many() as session:
        for i in range(102, 130):
            await session.get(Post, i)
"""

CLEAN = """

async def test_selectinload_batches(many):
    async with many() as session:
        query = select(User).options(selectinload(User.posts))
        users = (await session.execute(query)).scalars().all()
        assert len(users) == 1101


async def test_identity_map_gets(many):
    async with many() as session:
        posts = (await session.execute(select(Post))).scalars().all()
        for i in range(102, 130):
            assert await session.get(Post, i) in posts


async def test_different_statements(many):
    async with many() as session:
        for column in (User.id, User.name, Post.id, Post.title, Post.user_id):
            await session.execute(select(column).limit(3))


async def test_flush_of_many_rows(many):
    async with many() as session:
        session.add_all(Post(id=5000 + i, title="new", user_id=2) for i in range(30))
        await session.flush()
        await session.commit()


@pytest.mark.allow_nplusone
async def test_allowed(many):
    async with many() as session:
        for i in range(102, 130):
            await session.get(Post, i)
"""


def test_nplusone_warns_at_the_line_with_the_fix(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(test_loops=LOOPS)
    write_ini(pytester, "auto", "loop_guard_sqlalchemy = true")
    result = run_sa(pytester)
    result.assert_outcomes(passed=2, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*test_loops.py:22: PytestWarning: N+1 queries: the same SELECT ran 29 times from "
            "test_loops.py:22 in test_awaitable_attrs_in_a_loop (lazy loads of User.posts): one "
            "round trip to the database per item",
            "  fix: load them in the first query: `select(User).options(selectinload("
            "User.posts))`*",
            "*test_loops.py:28: PytestWarning: N+1 queries: the same SELECT ran 28 times from "
            "test_loops.py:28 in test_get_in_a_loop (loads of Post)*",
            "  fix: one query for all of them: `select(Post).where(Post.id.in_(ids))`*",
        ]
    )


def test_nplusone_fails_under_strict(pytester: pytest.Pytester, sa_project: str) -> None:
    pytester.makepyfile(test_loops=LOOPS)
    write_ini(pytester, "auto", "loop_guard_sqlalchemy = true\nloop_block_strict = true")
    result = run_sa(pytester, "-k", "get_in_a_loop")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_get_in_a_loop*",
            "N+1 queries: the same SELECT ran 28 times from test_loops.py:28 in "
            "test_get_in_a_loop (loads of Post)*",
        ]
    )


def test_never_flagged_and_the_marker(pytester: pytest.Pytester, sa_project: str) -> None:
    """selectinload's batches (one per 500 parents), identity-map gets, different statements,
    a flush of many rows, and a test marked allow_nplusone — at a threshold of 2."""
    clean = LOOPS.split("\n\nasync def test_awaitable")[0] + CLEAN + NPLUSONE_CANARY
    pytester.makepyfile(test_nplusone_clean=clean)
    extra = "loop_guard_sqlalchemy = true\nloop_sqlalchemy_nplusone = 2"
    write_ini(pytester, "auto", extra)
    result = run_sa(pytester)
    assert_counted_only_the_canary(result, passed=5)


def test_off_switch_and_bad_values(pytester: pytest.Pytester, sa_project: str) -> None:
    pytester.makepyfile(test_loops=LOOPS)
    write_ini(pytester, "auto", "loop_guard_sqlalchemy = true\nloop_sqlalchemy_nplusone = off")
    result = run_sa(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*N+1*")
    for bad in ("1", "ten", "-3"):
        write_ini(pytester, "auto", f"loop_sqlalchemy_nplusone = {bad}")
        assert_usage_error(
            run_sa(pytester),
            f"'{bad}' from ini loop_sqlalchemy_nplusone is not a valid loop_sqlalchemy_nplusone:"
            " expected a whole number >= 2*",
        )


def test_schema_checks_and_core_work_are_not_counted(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    """`metadata.create_all` checks each table with the same SELECT from one line (seen on
    PostgreSQL): Core work on a connection, never an N+1, whatever the number of tables."""
    pytester.makepyfile(
        textwrap.dedent(
            """
        from sqlalchemy import MetaData, Table, Column, Integer, text

        async def test_many_tables(engine):
            metadata = MetaData()
            for i in range(12):
                Table(f"lg_extra_{i}", metadata, Column("id", Integer, primary_key=True))
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                await conn.run_sync(metadata.drop_all)
                for i in range(12):
                    await conn.execute(text("select 1 where 1 = :i"), {"i": i})
        """
        )
        + NPLUSONE_CANARY
    )
    write_ini(pytester, "auto", "loop_guard_sqlalchemy = true\nloop_sqlalchemy_nplusone = 2")
    result = run_sa(pytester)
    assert_counted_only_the_canary(result, passed=1)


WRITES = """

async def test_get_and_update_in_a_loop(many):
    async with many() as session:
        for i in range(102, 130):
            post = await session.get(Post, i)
            post.title = post.title + "!"  # autoflush: an UPDATE before the next SELECT


async def test_awaitable_attrs_while_changing_the_parents(many):
    async with many() as session:
        users = (await session.execute(select(User).where(User.id < 30))).scalars().all()
        for user in users:
            await user.awaitable_attrs.posts
            user.name = user.name + "!"


async def test_flush_between_the_reads(many):
    async with many() as session:
        for i in range(102, 130):
            post = await session.get(Post, i)
            post.title = "x"
            await session.flush()
"""


def test_nplusone_with_writes_between_the_reads(
    pytester: pytest.Pytester, any_driver_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same SELECT from one line is an N+1 whatever the loop writes between: autoflush's
    UPDATEs, an explicit flush. (It was read as "different statements" and never counted.) On
    aiosqlite, asyncpg and psycopg."""
    from sa_src import CONFTEST

    monkeypatch.setenv("LOOPGUARD_TEST_DB_URL", any_driver_url)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_writes=LOOPS.split("\n\nasync def test_awaitable")[0] + WRITES)
    write_ini(pytester, "auto", "loop_guard_sqlalchemy = true")
    result = run_sa(pytester)
    result.assert_outcomes(passed=3, warnings=3)
    result.stdout.fnmatch_lines(
        [
            "*N+1 queries: the same SELECT ran 28 times from test_writes.py:* in "
            "test_get_and_update_in_a_loop (loads of Post)*",
            "*N+1 queries: the same SELECT ran 29 times from test_writes.py:* in "
            "test_awaitable_attrs_while_changing_the_parents (lazy loads of User.posts)*",
            "*N+1 queries: the same SELECT ran 28 times from test_writes.py:* in "
            "test_flush_between_the_reads (loads of Post)*",
        ]
    )
