"""How a real project wires pytest-loopguard: an ASGI client, a database, the guards.

The database is an aiosqlite file by default; set DATABASE_URL (postgresql+asyncpg://...) to run
the same tests on PostgreSQL. The loop-block threshold comes from ../pytest.ini.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from shop import Base, Post, User, app
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

SLOW_CHECK_PG = """
CREATE OR REPLACE FUNCTION slow_check(seconds float) RETURNS text
AS $$ SELECT NULL::text FROM pg_sleep(seconds) $$ LANGUAGE sql
"""


def _sqlite_slow_check(dbapi_connection: object, _record: object) -> None:
    # The same slow database function on SQLite: it sleeps inside the driver, like pg_sleep.
    dbapi_connection.create_function("slow_check", 1, time.sleep)  # type: ignore[attr-defined]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return os.environ.get("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")


@pytest.fixture
def sync_engine(database_url: str) -> Iterator[Engine]:
    """What a legacy module might still use: a sync engine on the same database."""
    url = database_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_slow_check)
    yield engine
    engine.dispose()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_slow_check)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        if engine.dialect.name == "postgresql":
            await conn.execute(text(SLOW_CHECK_PG))
    yield engine
    await engine.dispose()


@pytest.fixture
async def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The app's session factory, as production configures it (expire_on_commit=True)."""
    factory = async_sessionmaker(engine)
    async with factory() as session:
        session.add(User(id=1, name="ada", posts=[Post(id=1, title="Notes on the engine")]))
        session.add(User(id=2, name="grace", posts=[]))
        await session.commit()
    return factory


class _SlowWeather(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(0.3)  # a slow third-party API
        body = b"sunny"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def weather_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowWeather)
    # A short poll: shutdown() waits for the loop to notice (0.5 s a test by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def export_path(tmp_path: Path) -> str:
    """A file that is slow to read, like one on a network share: a pipe fed after 0.3 s."""
    path = tmp_path / "export.csv"
    os.mkfifo(path)

    def feed() -> None:
        time.sleep(0.3)
        path.write_text("id,name\n1,ada\n")

    threading.Thread(target=feed, daemon=True).start()
    return str(path)


@pytest.fixture
async def client(
    sessionmaker: async_sessionmaker[AsyncSession],
    sync_engine: Engine,
    weather_url: str,
) -> AsyncIterator[httpx.AsyncClient]:
    app.state.sessionmaker = sessionmaker
    app.state.sync_engine = sync_engine
    app.state.weather_url = weather_url
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        yield client


@pytest.fixture
def strict_sessionmaker(
    sessionmaker: async_sessionmaker[AsyncSession], loopguard_sessionmaker: object
) -> object:
    """The app's factory, made strict: reading a detached object fails at once."""
    return loopguard_sessionmaker(sessionmaker)  # type: ignore[operator]
