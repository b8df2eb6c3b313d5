"""SQLAlchemy guards on aiosqlite and on a real PostgreSQL server through asyncpg."""

from __future__ import annotations

import textwrap

import pytest

from conftest import CANARY, SA_CANARY, assert_clean, assert_guarded, run_sa, write_ini

pytest.importorskip("sqlalchemy")


def test_lazy_relationship_load_raises_before_any_sql(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        """
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from conftest import User

        async def test_lazy(sessionmaker, loopguard_sqlalchemy):
            sent = []
            event.listen(Engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
            async with sessionmaker() as session:
                user = await session.get(User, 1)
                sent.clear()
                try:
                    return user.posts
                finally:
                    assert sent == []
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "LazyLoadError: lazy load of User.posts on User(id=1) at "
            "test_lazy_relationship_load_raises_before_any_sql.py:12 in test_lazy: an "
            "AsyncSession cannot load a relationship on attribute access (MissingGreenlet)",
            "fix: load it in the query — `select(User).options(selectinload(User.posts))` — "
            'or `await user.awaitable_attrs.posts`, or `relationship(..., lazy="selectin")`',
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


def test_expired_attribute_after_commit(pytester: pytest.Pytester, sa_project: str) -> None:
    pytester.makepyfile(
        """
        from conftest import User

        async def test_expired(sessionmaker, loopguard_sqlalchemy):
            async with sessionmaker() as session:
                user = await session.get(User, 1)
                user.name = "grace"
                await session.commit()
                assert user.name == "grace"
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "LazyLoadError: User.name on User(id=1) was expired (by `await session.commit()` "
            "or `session.expire()`) and reading it at test_expired_attribute_after_commit.py:8 "
            "in test_expired would load it without await (MissingGreenlet)",
            "fix: `async_sessionmaker(..., expire_on_commit=False)`, or "
            "`await session.refresh(user)` before reading it",
        ]
    )


def test_session_stays_usable_and_swallowed_errors_fail_at_teardown(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy import select
        from sqlalchemy.exc import MissingGreenlet
        from conftest import User

        async def test_catches_it(sessionmaker, loopguard_sqlalchemy):
            async with sessionmaker() as session:
                user = await session.get(User, 1)
                with pytest.raises(MissingGreenlet):
                    user.posts
                names = (await session.execute(select(User.name))).scalars().all()
                assert names == ["ada"]
                assert len(await user.awaitable_attrs.posts) == 2
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_catches_it*",
            "pytest-loopguard caught 1 SQLAlchemy mistake(s) in this test:",
            "LazyLoadError: lazy load of User.posts on User(id=1) at *.py:10 in test_catches_it*",
        ]
    )


def test_fastapi_route_that_turns_it_into_a_500_still_fails(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        """
        import httpx
        from fastapi import FastAPI, HTTPException
        from conftest import User

        def make_app(sessionmaker):
            app = FastAPI()

            @app.get("/users/{user_id}/posts")
            async def posts(user_id: int):
                async with sessionmaker() as session:
                    user = await session.get(User, user_id)
                    try:
                        return [p.title for p in user.posts]
                    except Exception:
                        raise HTTPException(500, "something went wrong")
            return app

        async def test_route(sessionmaker, loopguard_sqlalchemy):
            transport = httpx.ASGITransport(app=make_app(sessionmaker))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.get("/users/1/posts")).status_code == 500
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["LazyLoadError: lazy load of User.posts on User(id=1) at *.py:13 in posts*"]
    )


def test_sync_engine_on_the_loop(pytester: pytest.Pytester, sa_project: str) -> None:
    pytester.makepyfile(
        """
        import asyncio
        from sqlalchemy import create_engine, text
        from conftest import sync_url

        async def test_sync_engine(loopguard_sqlalchemy):
            engine = create_engine(sync_url())
            try:
                with engine.connect() as conn:
                    conn.execute(text("select 1"))
            finally:
                engine.dispose()

        async def test_sync_engine_in_a_thread_is_fine(loopguard_sqlalchemy):
            engine = create_engine(sync_url())

            def query():
                with engine.connect() as conn:
                    return conn.execute(text("select 1")).scalar()
            assert await asyncio.to_thread(query) == 1
            engine.dispose()
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(failed=1, passed=1)
    shown = "postgresql+psycopg://postgres:***@*" if "postgresql" in sa_project else "sqlite:///*"
    result.stdout.fnmatch_lines(
        [
            f"SyncEngineOnLoopError: sync Engine {shown} used on the event-loop thread at "
            "test_sync_engine_on_the_loop.py:8 in test_sync_engine: its connect and every query "
            "block the loop",
            'fix: `create_async_engine("postgresql+asyncpg://...")`*asyncio.to_thread*',
        ]
    )
    result.stdout.no_fnmatch_line("*s3cret*")


def test_legitimate_paths_never_trigger(pytester: pytest.Pytester, sa_project: str) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
        from sqlalchemy import create_engine, select, text
        from sqlalchemy.orm import Session, selectinload
        from conftest import Post, User, sync_url

        async def test_async_paths(sessionmaker, engine, loopguard_sqlalchemy):
            async with sessionmaker() as session:
                user = await session.get(User, 1)
                await session.refresh(user)
                assert user.name == "ada"
                assert len(await user.awaitable_attrs.posts) == 2
                result = await session.execute(
                    select(User).options(selectinload(User.posts)).execution_options(
                        populate_existing=True
                    )
                )
                assert [p.id for p in result.scalar_one().posts] == [1, 2]
                await session.commit()
                await session.refresh(user)
                assert await session.run_sync(lambda s: s.get(Post, 1).user.name) == "ada"
            async with engine.connect() as conn:
                assert (await conn.execute(text("select 1"))).scalar() == 1

        def test_sync_code_in_a_sync_test(loopguard_sqlalchemy):
            engine = create_engine(sync_url())
            with Session(engine) as session:
                user = session.get(User, 1)
                assert len(user.posts) == 2
            engine.dispose()
        """
        )
        + SA_CANARY
    )
    result = run_sa(pytester)
    assert_guarded(result, passed=2)


def test_ini_turns_the_guard_on_for_every_test_and_the_marker_opts_out(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    write_ini(pytester, "auto", "loop_guard_sqlalchemy = true")
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy.exc import MissingGreenlet, StatementError
        from conftest import User

        async def test_guarded(sessionmaker):
            async with sessionmaker() as session:
                user = await session.get(User, 1)
                user.posts

        @pytest.mark.allow_lazy_loads
        async def test_opted_out(sessionmaker):
            async with sessionmaker() as session:
                user = await session.get(User, 1)
                # SQLAlchemy's own error: bare on asyncpg, inside a StatementError on aiosqlite.
                with pytest.raises((MissingGreenlet, StatementError), match="greenlet_spawn"):
                    user.posts
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["LazyLoadError: lazy load of User.posts on User(id=1) at *"])


def test_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    write_ini(pytester, "auto", "loop_guard_sqlalchemy = sometimes")
    pytester.makepyfile("def test_x(): pass")
    result = run_sa(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-loopguard: 'sometimes' from ini loop_guard_sqlalchemy is not a valid *"]
    )


def test_strict_sessionmaker_refuses_detached_reads(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from sqlalchemy.orm.exc import DetachedInstanceError
        from conftest import User

        async def get_user(factory):
            async with factory() as session:
                return await session.get(User, 1)

        async def test_loaded_attribute_after_close(sessionmaker, loopguard_sessionmaker):
            user = await get_user(loopguard_sessionmaker(sessionmaker))
            return user.name

        async def test_expunged(sessionmaker, loopguard_sessionmaker):
            strict = loopguard_sessionmaker(sessionmaker)
            async with strict() as session:
                user = await session.get(User, 1)
                assert user.name == "ada"
                session.expunge(user)
                with pytest.raises(DetachedInstanceError):
                    user.name
                session.add(user)
                assert user.name == "ada"

        async def test_plain_sessionmaker_returns_stale_data(sessionmaker):
            user = await get_user(sessionmaker)
            assert user.name == "ada"

        def test_not_a_sessionmaker(loopguard_sessionmaker):
            loopguard_sessionmaker("postgresql://")
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(
        [
            "DetachedAccessError: User.name read at *.py:11 in test_loaded_attribute_after_"
            "close after its session closed or expunged it: a loaded value is stale, an unloaded "
            "one raises DetachedInstanceError",
            "fix: use it inside `async with session:`, or load what you need first*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E *TypeError: loopguard_sessionmaker() expects an async_sessionmaker (or a "
            "sessionmaker), got str: 'postgresql://'"
        ]
    )


def test_hints_for_errors_the_guards_did_not_preempt(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        """
        from conftest import User

        async def test_missing_greenlet(sessionmaker):
            async with sessionmaker() as session:
                user = await session.get(User, 1)
                user.posts

        async def test_detached(sessionmaker):
            async with sessionmaker() as session:
                user = await session.get(User, 1)
                await session.commit()
            user.name
        """
    )
    result = run_sa(pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*- hint (pytest-loopguard) -*",
            "MissingGreenlet: async SQLAlchemy was asked for IO without `await`*",
            "fix: load in the query (`select(User).options(selectinload(User.posts))`)*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*- hint (pytest-loopguard) -*",
            "DetachedInstanceError: an ORM attribute was read after its session closed.",
        ]
    )


def test_asyncpg_and_aiosqlite_io_is_not_a_block(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
        import time

        from sqlalchemy import text
        from conftest import DB_URL

        # A query that keeps the database busy for about 0.3 s, while the loop only waits: on
        # aiosqlite it runs in the driver's thread, on PostgreSQL in the server.
        SLOW_SQLITE = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
            "SELECT count(*) FROM c"
        )

        async def test_slow_async_query(engine):
            query = "select pg_sleep(0.2)" if "postgresql" in DB_URL else SLOW_SQLITE
            async with engine.connect() as conn:
                start = time.perf_counter()
                await conn.execute(text(query))
                assert time.perf_counter() - start > 0.15  # it was slow, and nobody blocked
        """
        )
        + CANARY
    )
    result = run_sa(pytester)
    assert_clean(result, passed=1)
