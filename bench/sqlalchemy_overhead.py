"""Overhead of the SQLAlchemy guards on an async workload: guards off vs on, interleaved.

    python bench/sqlalchemy_overhead.py [--rounds 7] [--queries 2000] [--url sqlite+aiosqlite://]

Runs a 2,000-query AsyncSession workload (selectinload, refresh, awaitable_attrs, get) with the
``loopguard_sqlalchemy`` guard (``SQLAlchemyGuard``) off and on, alternating, and prints medians
and the ratio next to the target. Use ``--url postgresql+asyncpg://...`` for a real server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time

from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload
from sqlalchemy.pool import NullPool

from pytest_loopguard.sqlalchemy import SQLAlchemyGuard

TARGET = 1.03


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "bench_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    posts: Mapped[list[Post]] = relationship(back_populates="user")


class Post(Base):
    __tablename__ = "bench_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("bench_users.id"))
    user: Mapped[User] = relationship(back_populates="posts")


async def setup(url: str) -> async_sessionmaker:  # type: ignore[type-arg]
    # NullPool: every round runs its own event loop, and asyncpg connections belong to one.
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as session:
        for i in range(1, 21):
            session.add(User(id=i, name=f"u{i}", posts=[Post(id=i * 10 + j) for j in range(3)]))
        await session.commit()
    return factory


async def workload(factory: async_sessionmaker, queries: int) -> None:  # type: ignore[type-arg]
    """Five statements per step: selectinload (two), get, refresh, awaitable_attrs."""
    async with factory() as session:
        for i in range(queries // 5):
            uid = i % 20 + 1
            stmt = select(User).where(User.id == uid).options(selectinload(User.posts))
            user = (await session.execute(stmt)).scalar_one()
            assert len(user.posts) == 3
            other = await session.get(User, uid % 20 + 1)
            assert other is not None
            await session.refresh(other)
            session.expire(other, ["posts"])
            assert len(await other.awaitable_attrs.posts) == 3


def timed(factory: async_sessionmaker, queries: int, guarded: bool) -> float:  # type: ignore[type-arg]
    # As the plugin sets the guards up by default: N+1 counting (threshold 10) included.
    guard = SQLAlchemyGuard(nplusone=10) if guarded else contextlib.nullcontext()
    start = time.perf_counter()
    with guard:
        asyncio.run(workload(factory, queries))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--url", help="a database URL (default: SQLite in a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loopguard-bench-") as tmp:
        args.url = args.url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        run(args)


def run(args: argparse.Namespace) -> None:
    factory = asyncio.run(setup(args.url))
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            times[name].append(timed(factory, args.queries, name == "on"))
            print(f"  round {r + 1} {name:>3}: {times[name][-1]:.3f} s", flush=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    pairs = statistics.median(a / b for a, b in zip(times["on"], times["off"], strict=True))
    print(f"{args.queries} queries on {args.url.split(':')[0]}, {args.rounds} rounds")
    print(f"off: median {off:.3f} s")
    print(
        f" on: median {on:.3f} s, ratio {on / off:.3f}x (paired {pairs:.3f}x), target <= {TARGET}x"
    )
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
