"""The inner sessions' conftest for SQLAlchemy tests: models, an engine, seeded data."""

CONFTEST = """
import os

import pytest
from sqlalchemy import ForeignKey, String
from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

DB_URL = os.environ["LOOPGUARD_TEST_DB_URL"]


def sync_url():
    if DB_URL.startswith("sqlite"):
        return DB_URL.replace("+aiosqlite", "")
    return DB_URL.replace("+asyncpg", "+psycopg").replace("postgres@", "postgres:s3cret@")


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "lg_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    posts: Mapped[list["Post"]] = relationship(back_populates="user")


class Post(Base):
    __tablename__ = "lg_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    user_id: Mapped[int] = mapped_column(ForeignKey("lg_users.id"))
    user: Mapped[User] = relationship(back_populates="posts")


@pytest.fixture
async def engine():
    engine = create_async_engine(DB_URL)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def sessionmaker(engine):
    factory = async_sessionmaker(engine)
    async with factory() as session:
        session.add(User(id=1, name="ada", posts=[Post(id=1, title="a"), Post(id=2, title="b")]))
        await session.commit()
    return factory
"""
