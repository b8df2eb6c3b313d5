"""An ORM object returned through FastAPI's ``response_model`` (or ``model_validate(...,
from_attributes=True)``) with an attribute not loaded: the failure leads with our verdict."""

from __future__ import annotations

import pytest

from conftest import run

pytest.importorskip("sqlalchemy")
pytest.importorskip("fastapi")

ROUTES = """
import httpx, pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from conftest import User


class PostOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    title: str


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    posts: list[PostOut]


class NameOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str


def make_app(factory):
    app = FastAPI()

    async def session():
        async with factory() as s:
            yield s

    @app.get("/open/{uid}", response_model=UserOut)
    async def user_in_open_session(uid: int, s=Depends(session)):
        return await s.get(User, uid)

    @app.get("/closed/{uid}", response_model=UserOut)
    async def user_after_close(uid: int):
        async with factory() as s:
            return await s.get(User, uid)

    @app.get("/validated/{uid}")
    async def user_validated(uid: int):
        async with factory() as s:
            user = await s.get(User, uid)
        return UserOut.model_validate(user, from_attributes=True)

    @app.get("/expired/{uid}", response_model=NameOut)
    async def renamed(uid: int):
        async with factory() as s:
            user = await s.get(User, uid)
            user.name = "grace"
            await s.commit()
        return user

    @app.get("/loaded/{uid}", response_model=UserOut)
    async def user_loaded(uid: int):
        async with factory() as s:
            query = select(User).where(User.id == uid).options(selectinload(User.posts))
            return (await s.scalars(query)).one()

    return app


@pytest.mark.parametrize("path", ["open", "closed", "validated", "expired", "loaded"])
async def test_route(sessionmaker, path):
    app = make_app(sessionmaker)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(f"/{path}/1")
    assert response.status_code == 200
"""


# FastAPI names a route by its first line, the decorator's.
OPEN = '    @app.get("/open/{uid}", response_model=UserOut)'
CLOSED = '    @app.get("/closed/{uid}", response_model=UserOut)'
VALIDATE = "        return UserOut.model_validate(user, from_attributes=True)"
EXPIRED = '    @app.get("/expired/{uid}", response_model=NameOut)'


def _line(text: str) -> int:
    """The line of ``text`` in the inner test file (pytester strips the leading newline)."""
    return ROUTES.strip().splitlines().index(text) + 1


def _lead(route: str, attribute: str, reader: str, cause: str) -> list[str]:
    """The first lines of a failure: its header, then our verdict, before pytest's traceback."""
    return [
        f"*_ test_route[[]{route}[]] _*",
        f"E   pytest-loopguard: {attribute} was not loaded when {reader}: {cause}",
    ]


def test_an_unloaded_attribute_in_a_response_leads_the_failure(
    pytester: pytest.Pytester, any_driver_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sa_src import CONFTEST

    monkeypatch.setenv("LOOPGUARD_TEST_DB_URL", any_driver_url)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_routes=ROUTES)
    result = run(pytester, extra="loop_guard_sqlalchemy = true", subprocess=True)
    # The eager load passes: what fails is the serialisation, not the app or the guard.
    result.assert_outcomes(passed=1, failed=4)
    fastapi = "FastAPI read it to serialise the response of the route"
    closed = "the session that loaded it was closed before it was read"
    lazy = "an AsyncSession cannot load a relationship on attribute access (MissingGreenlet)"
    routes = {
        "open": f"user_in_open_session at test_routes.py:{_line(OPEN)} (GET /open/{{uid}})",
        "closed": f"user_after_close at test_routes.py:{_line(CLOSED)} (GET /closed/{{uid}})",
        "expired": f"renamed at test_routes.py:{_line(EXPIRED)} (GET /expired/{{uid}})",
    }
    validated = f"UserOut.model_validate read it at test_routes.py:{_line(VALIDATE)}"
    load_fix = "E   fix: load it in the query — `select(User).options(selectinload(User.posts))`*"
    expected = {
        "open": [*_lead("open", "User.posts", f"{fastapi} {routes['open']}", lazy), load_fix],
        "closed": [
            *_lead("closed", "User.posts", f"{fastapi} {routes['closed']}", closed),
            load_fix,
            "E   (SQLAlchemy said: DetachedInstanceError: *'posts'*",
        ],
        "validated": _lead("validated", "User.posts", f"{validated} in user_validated", closed),
        "expired": [
            *_lead(
                "expired",
                "User.name",
                f"{fastapi} {routes['expired']}",
                "expired (by a commit) and its session closed",
            ),
            "E   fix: `async_sessionmaker(..., expire_on_commit=False)`*",
        ],
    }
    for lines in expected.values():
        result.stdout.fnmatch_lines(lines)
    # The short summary names it too; the guard's own record of the lazy load is not repeated
    # as a second error at teardown.
    result.stdout.fnmatch_lines(
        ["FAILED test_routes.py::test_route[[]open[]] - pytest-loopguard:*"]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown*")
