"""A small FastAPI shop: users and posts, async routes, an AsyncSession per request.

Every pitfall of the lesson appears twice: a ``broken`` route and its ``fixed`` twin.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import certifi
import httpx
import requests
from fastapi import Depends, FastAPI, Query, Request
from sqlalchemy import ForeignKey, String, select, text
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, async_sessionmaker
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    posts: Mapped[list[Post]] = relationship(back_populates="author")


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    author: Mapped[User] = relationship(back_populates="posts")


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


DB = Annotated[AsyncSession, Depends(get_db)]
app = FastAPI()


def count_primes(limit: int) -> int:
    """CPU-heavy work: counts primes below ``limit`` the slow way."""
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


# -- time.sleep in an async route ------------------------------------------------------------
@app.get("/broken/sleep")
async def broken_sleep() -> dict[str, str]:
    time.sleep(0.3)  # waits for a rate limit; every other request waits too
    return {"status": "ok"}


@app.get("/fixed/sleep")
async def fixed_sleep() -> dict[str, str]:
    await asyncio.sleep(0.3)
    return {"status": "ok"}


# -- sync HTTP in an async route ----------------------------------------------------------------
@app.get("/broken/weather")
async def broken_weather(request: Request) -> dict[str, str]:
    reply = requests.get(request.app.state.weather_url, timeout=5)
    return {"weather": reply.text}


# Made once, at import, off the loop: ``httpx.AsyncClient()`` alone loads the CA bundle, 50-100 ms
# of CPU (more under coverage), which would make the fix a block of its own. An app would keep
# one client for its lifetime (a lifespan); the tests here run each on its own loop.
TLS = ssl.create_default_context(cafile=certifi.where())


@app.get("/fixed/weather")
async def fixed_weather(request: Request) -> dict[str, str]:
    async with httpx.AsyncClient(verify=TLS) as client:
        reply = await client.get(request.app.state.weather_url, timeout=5)
    return {"weather": reply.text}


# -- a sync SQLAlchemy session in async def ------------------------------------------------------
@app.get("/broken/report")
async def broken_report(request: Request) -> dict[str, int]:
    with Session(request.app.state.sync_engine) as session:
        # A slow report query, run by the sync driver: the loop waits for the database.
        total = session.execute(text("SELECT count(*) FROM users WHERE slow_check(0.15) IS NULL"))
        return {"users": total.scalar_one()}


@app.get("/fixed/report")
async def fixed_report(db: DB) -> dict[str, int]:
    total = await db.execute(text("SELECT count(*) FROM users WHERE slow_check(0.15) IS NULL"))
    return {"users": total.scalar_one()}


# -- open(file).read() of a slow file -----------------------------------------------------------
@app.get("/broken/export")
async def broken_export(request: Request) -> dict[str, int]:
    data = open(request.app.state.export_path).read()  # noqa: SIM115 - a slow network file
    return {"bytes": len(data)}


@app.get("/fixed/export")
async def fixed_export(request: Request) -> dict[str, int]:
    def read() -> str:
        with open(request.app.state.export_path) as f:
            return f.read()

    data = await asyncio.to_thread(read)
    return {"bytes": len(data)}


# -- CPU-heavy computation ----------------------------------------------------------------------
@app.get("/broken/primes")
async def broken_primes() -> dict[str, int]:
    return {"primes": count_primes(150_000)}


@app.get("/fixed/primes")
async def fixed_primes() -> dict[str, int]:
    return {"primes": await asyncio.to_thread(count_primes, 150_000)}


# -- a sync engine in an async route (the seed's MissingGreenlet example) ------------------------
@app.get("/broken/users")
async def broken_users(request: Request) -> list[str]:
    with request.app.state.sync_engine.connect() as conn:
        return [row.name for row in conn.execute(select(User.name))]


@app.get("/fixed/users")
async def fixed_users(db: DB) -> list[str]:
    return list((await db.execute(select(User.name))).scalars())


# -- a lazy-loaded relationship -----------------------------------------------------------------
@app.get("/broken/users/{user_id}/posts")
async def broken_posts(user_id: int, db: DB) -> list[str]:
    user = await db.get(User, user_id)
    assert user is not None
    return [post.title for post in user.posts]


@app.get("/fixed/users/{user_id}/posts")
async def fixed_posts(user_id: int, db: DB) -> list[str]:
    query = select(User).where(User.id == user_id).options(selectinload(User.posts))
    user = (await db.execute(query)).scalar_one()
    return [post.title for post in user.posts]


# -- an attribute expired by commit -------------------------------------------------------------
@app.post("/broken/users/{user_id}/rename")
async def broken_rename(user_id: int, name: str, db: DB) -> dict[str, str]:
    user = await db.get(User, user_id)
    assert user is not None
    user.name = name
    await db.commit()
    return {"name": user.name}


@app.post("/fixed/users/{user_id}/rename")
async def fixed_rename(user_id: int, name: str, db: DB) -> dict[str, str]:
    user = await db.get(User, user_id)
    assert user is not None
    user.name = name
    await db.commit()
    await db.refresh(user)
    return {"name": user.name}


# -- a detached instance read after the session closed ------------------------------------------
async def load_user(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> User:
    async with sessionmaker() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user  # the session closes here: the object is detached


async def load_user_name(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> str:
    async with sessionmaker() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.name  # read what you need while the session is open


# -- one AsyncSession shared by two tasks -------------------------------------------------------
async def user_names(db: AsyncSession) -> list[str]:
    return list((await db.execute(select(User.name).order_by(User.id))).scalars())


async def post_titles(db: AsyncSession) -> list[str]:
    return list((await db.execute(select(Post.title).order_by(Post.id))).scalars())


@app.get("/broken/dashboard")
async def broken_dashboard(db: DB) -> dict[str, list[str]]:
    names, titles = await asyncio.gather(user_names(db), post_titles(db))  # one session, 2 tasks
    return {"users": names, "posts": titles}


@app.get("/fixed/dashboard")
async def fixed_dashboard(request: Request) -> dict[str, list[str]]:
    async def on_its_own_session(query: Any) -> list[str]:
        async with request.app.state.sessionmaker() as db:  # a session per task
            return await query(db)  # type: ignore[no-any-return]

    names, titles = await asyncio.gather(
        on_its_own_session(user_names), on_its_own_session(post_titles)
    )
    return {"users": names, "posts": titles}


# -- a session never closed ---------------------------------------------------------------------
@app.get("/broken/users/count")
async def broken_count(request: Request) -> int:
    db = request.app.state.sessionmaker()  # never closed: its connection is never given back
    return len(await user_names(db))


@app.get("/fixed/users/count")
async def fixed_count(request: Request) -> int:
    async with request.app.state.sessionmaker() as db:
        return len(await user_names(db))


# -- N+1 queries through awaits -----------------------------------------------------------------
@app.get("/broken/posts")
async def broken_titles(ids: Annotated[list[int], Query()], db: DB) -> list[str]:
    titles = []
    for post_id in ids:
        post = await db.get(Post, post_id)  # one query per id
        if post is not None:
            titles.append(post.title)
    return titles


@app.get("/fixed/posts")
async def fixed_titles(ids: Annotated[list[int], Query()], db: DB) -> list[str]:
    posts = (await db.execute(select(Post).where(Post.id.in_(ids)))).scalars()
    return [post.title for post in posts]
