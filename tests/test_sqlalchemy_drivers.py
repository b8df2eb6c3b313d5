"""Every SQLAlchemy guard on SQLModel's AsyncSession (``session.exec(select(...))``) and on
SQLAlchemy's own, on aiosqlite and on a real PostgreSQL server through asyncpg and psycopg 3."""

from __future__ import annotations

import pytest

from conftest import run

pytest.importorskip("sqlmodel")

CONFTEST = """import os

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as PlainAsyncSession, async_sessionmaker
from sqlalchemy.orm import sessionmaker as orm_sessionmaker
from sqlmodel import Field, Relationship, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

DB_URL = os.environ["LOOPGUARD_TEST_DB_URL"]


class OwnAsyncSession(PlainAsyncSession):
    # SQLAlchemy's own AsyncSession, with the one method these tests call SQLModel's way.

    async def exec(self, statement):
        return (await self.execute(statement)).scalars()


class Team(SQLModel, table=True):
    __tablename__ = "sqm_teams"
    id: int | None = Field(default=None, primary_key=True)
    name: str
    heroes: list["Hero"] = Relationship(back_populates="team")


class Hero(SQLModel, table=True):
    __tablename__ = "sqm_heroes"
    id: int | None = Field(default=None, primary_key=True)
    name: str
    team_id: int | None = Field(default=None, foreign_key="sqm_teams.id")
    team: Team | None = Relationship(back_populates="heroes")


@pytest.fixture
async def engine():
    engine = create_async_engine(DB_URL)
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.drop_all)
        await conn.run_sync(SQLModel.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def sessionmaker(engine):
    if os.environ["LOOPGUARD_TEST_SESSION"] == "sqlmodel":
        factory = orm_sessionmaker(engine, class_=AsyncSession)
    else:
        factory = async_sessionmaker(engine, class_=OwnAsyncSession)
    async with factory() as session:
        team = Team(name="avengers")
        session.add_all([Hero(name=f"hero{i}", team=team) for i in range(12)])
        await session.commit()
    return factory
"""

TESTS = """import asyncio

import pytest
from sqlalchemy import create_engine
from sqlmodel import select
from sqlmodel import Session as SyncSession
from conftest import DB_URL, Hero, Team


async def test_lazy_load(sessionmaker):
    async with sessionmaker() as session:
        team = (await session.exec(select(Team))).first()
        assert len(team.heroes) == 12


async def test_expired(sessionmaker):
    async with sessionmaker() as session:
        hero = (await session.exec(select(Hero))).first()
        hero.name = "renamed"
        await session.commit()
        assert hero.name == "renamed"


async def test_nplusone(sessionmaker):
    async with sessionmaker() as session:
        heroes = (await session.exec(select(Hero))).all()
        for hero in heroes:
            await session.exec(select(Team).where(Team.id == hero.team_id))


async def test_two_tasks(sessionmaker):
    async def names(session):
        return (await session.exec(select(Hero.name))).all()

    async with sessionmaker() as session:
        await asyncio.gather(names(session), names(session))


async def test_leak(sessionmaker):
    session = sessionmaker()
    await session.exec(select(Hero))


async def test_sync_engine(sessionmaker):
    url = DB_URL.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    engine = create_engine(url)
    with SyncSession(engine) as session:
        session.exec(select(Hero)).all()


async def test_detached_strict(sessionmaker, loopguard_sessionmaker):
    strict = loopguard_sessionmaker(sessionmaker)
    async with strict() as session:
        hero = (await session.exec(select(Hero))).first()
    session.expunge_all()
    assert hero.name


async def test_clean(sessionmaker):
    from sqlalchemy.orm import selectinload

    async with sessionmaker() as session:
        team = (await session.exec(select(Team).options(selectinload(Team.heroes)))).first()
        assert len(team.heroes) == 12
        heroes = (await session.exec(select(Hero))).all()
        assert len(heroes) == 12
"""


def _line(text: str) -> int:
    return TESTS.strip().splitlines().index(text) + 1


@pytest.mark.parametrize("session", ["sqlmodel", "sqlalchemy"])
def test_every_guard_on_each_driver(
    pytester: pytest.Pytester, any_driver_url: str, session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each guard on SQLModel's AsyncSession and on SQLAlchemy's, through each driver."""
    monkeypatch.setenv("LOOPGUARD_TEST_DB_URL", any_driver_url)
    monkeypatch.setenv("LOOPGUARD_TEST_SESSION", session)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_sqlmodel=TESTS)
    # In a process of its own, as every inner SQLAlchemy session (see conftest.run_sa). The
    # two-tasks test leaves asyncpg a connection its own close could not roll back: when the
    # collector reaches that transport is chance (seen on 3.10), and its complaint is not ours.
    unraisable = ("-W", "ignore::pytest.PytestUnraisableExceptionWarning")
    result = run(pytester, *unraisable, extra="loop_guard_sqlalchemy = true", subprocess=True)
    # The clean test passes beside them: the guards were live and did not flag eager loads.
    result.assert_outcomes(failed=5, passed=3, errors=1, warnings=1)
    lazy = _line("        assert len(team.heroes) == 12")
    expired = _line('        assert hero.name == "renamed"')
    loop = _line("            await session.exec(select(Team).where(Team.id == hero.team_id))")
    result.stdout.fnmatch_lines(
        [
            f"*LazyLoadError: lazy load of Team.heroes on Team(id=1) at test_sqlmodel.py:{lazy} "
            "in test_lazy_load*",
            "fix: load it in the query*",
        ]
    )
    result.stdout.fnmatch_lines(
        [f"*LazyLoadError: Hero.name on Hero(id=1) was expired*test_sqlmodel.py:{expired}*"]
    )
    result.stdout.fnmatch_lines(["*ConcurrentSessionError: one AsyncSession used by two tasks*"])
    result.stdout.fnmatch_lines(["*SyncEngineOnLoopError: sync Engine * used on the event-loop*"])
    result.stdout.fnmatch_lines(["*DetachedAccessError: Hero.name read at test_sqlmodel.py:*"])
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leak*",
            "1 database connection(s) taken by this test and never given back:",
        ]
    )
    # With the plain session's ``exec`` in conftest.py, that is the innermost user line.
    where = f"test_sqlmodel.py:{loop}" if session == "sqlmodel" else "conftest.py:* in exec"
    result.stdout.fnmatch_lines([f"*N+1 queries: the same SELECT ran 12 times from {where} *"])
    result.stdout.no_fnmatch_line("*test_clean*FAILED*")
    result.stdout.no_fnmatch_line("*PydanticSchemaGenerationError*")
