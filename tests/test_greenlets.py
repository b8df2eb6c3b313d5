"""Code that AsyncSession's sync bridge runs on the loop thread, inside a greenlet: ORM event
hooks, run_sync functions, type decorators. Caught at its line, on aiosqlite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import blocked, run_sa
from helpers_src import SLOW_SERVER

pytest.importorskip("sqlalchemy")

BRIDGE = "fix: inside `AsyncSession`'s sync bridge: "

TESTS = (
    """
import time

import requests
from sqlalchemy import event, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import String, TypeDecorator

from conftest import Base, Post, User


def busy(seconds):
    end = time.thread_time() + seconds  # CPU time: the same on a loaded machine
    while time.thread_time() < end:
        pass


class SlowText(TypeDecorator):
    impl = String(50)
    cache_ok = True

    def process_result_value(self, value, dialect):
        time.sleep(0.2)
        return value


class Note(Base):
    __tablename__ = "lg_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(SlowText)


async def test_http_in_a_flush_hook(sessionmaker, slow_url):
    def audit(session, context, instances):
        requests.get(slow_url, timeout=5)

    event.listen(Session, "before_flush", audit)
    try:
        async with sessionmaker() as session:
            session.add(User(id=2, name="grace"))
            await session.flush()
    finally:
        event.remove(Session, "before_flush", audit)


async def test_cpu_in_run_sync(engine):
    async with engine.connect() as conn:
        await conn.run_sync(lambda sync_conn: busy(0.2))


async def test_sleep_in_a_type_decorator(sessionmaker):
    async with sessionmaker() as session:
        session.add(Note(id=1, body="x"))
        await session.commit()
    async with sessionmaker() as session:
        assert [n.body for n in (await session.execute(select(Note))).scalars()] == ["x"]


async def test_ordinary_session_use_is_clean(sessionmaker):
    async with sessionmaker() as session:
        session.add_all([Post(id=i, title=str(i), user_id=1) for i in range(10, 510)])
        await session.flush()
        await session.commit()
        posts = (await session.execute(select(Post))).scalars().all()
        assert len(posts) == 502
        await session.run_sync(lambda sync_session: sync_session.get(User, 1))
"""
    + SLOW_SERVER
)


def test_blocks_in_the_sync_bridge_are_caught_at_their_line(
    pytester: pytest.Pytester, sa_project: str
) -> None:
    pytester.makepyfile(test_bridge=TESTS)
    result = run_sa(pytester, "-p", "no:randomly")
    result.assert_outcomes(failed=3, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_http_in_a_flush_hook _*",
            blocked("test_bridge.py:34 in audit", seconds="0.*"),
            "    requests.get(slow_url, timeout=5)",
            BRIDGE + "sync HTTP (requests/urllib/http.client) blocks every request (ORM event "
            "hooks, `run_sync` functions, type decorators and result processing all run on the "
            "loop thread) — use `await client.get(url)` on one `httpx.AsyncClient` made once "
            "(making one loads the CA bundle) — outside the hook or "
            "`run_sync` function, e.g. before `await session.flush()`",
            "stack while blocked (most recent call last):",
            "  test_bridge.py:40 in test_http_in_a_flush_hook",
            "    await session.flush()",
            "  test_bridge.py:34 in audit",
            "*_ test_cpu_in_run_sync _*",
            blocked("test_bridge.py:13 in busy", seconds="0.*"),
            BRIDGE + "CPU-bound work holds the loop*",
            "wall 0.* s, CPU 0.* s: CPU-bound*",
            "*_ test_sleep_in_a_type_decorator _*",
            blocked("test_bridge.py:22 in process_result_value", seconds="0.*"),
            "    time.sleep(0.2)",
            BRIDGE + "time.sleep blocks every request*",
        ]
    )


def test_a_greenlet_on_the_loop_without_pytest() -> None:
    """The issue's own reproduction: LoopGuard around greenlet_spawn(busy, 0.3)."""
    from sqlalchemy.util.concurrency import greenlet_spawn

    from pytest_loopguard import LoopGuard

    def busy(seconds: float) -> None:
        end = time.thread_time() + seconds  # CPU time: the same on a loaded machine
        while time.thread_time() < end:
            pass

    async def main() -> None:
        await greenlet_spawn(busy, 0.3)

    with LoopGuard(threshold=0.1) as guard:
        asyncio.run(main())
    [event] = guard.events
    assert event.frame is not None
    assert event.frame.function == "busy"
    assert [f.function for f in event.stack] == ["main", "busy"]
    assert event.hint.cause.startswith("inside `AsyncSession`'s sync bridge: ")
    # A spin loop runs 0.3 s of wall time; on a loaded machine part of it is spent waiting for a
    # CPU, which the duration leaves out by design (the report says it apart), so bound the sum.
    assert event.duration < 0.45
    assert 0.25 <= event.duration + event.cpu_wait < 0.45
