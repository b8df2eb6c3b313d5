"""Hints where the generic one misleads: password hashing, the sync TestClient, native work."""

from __future__ import annotations

import pytest

from conftest import blocked, run
from pytest_loopguard._base import hints as _hints


@pytest.mark.parametrize(
    ("line", "callees", "key"),
    [
        ("ph.verify(hashed, password)", ("argon2._password_hasher",), "password-hash"),
        ("password_hash.verify(password, hashed)", ("pwdlib._hash", "argon2"), "password-hash"),
        ("pwd_context.verify(password, hashed)", ("passlib.context",), "password-hash"),
        ("bcrypt.checkpw(password, hashed)", (), "password-hash"),
        ("bcrypt.hashpw(password, bcrypt.gensalt())", (), "password-hash"),
        ("client.get('/users')", ("starlette.testclient", "httpx._client"), "testclient"),
        ("client.get('/users')", ("httpx._client",), "http"),
    ],
)
def test_hint_table(line: str, callees: tuple[str, ...], key: str) -> None:
    assert _hints.classify(line, callees, 0.0).key == key


def test_password_hashing_on_the_loop_says_to_hash_in_a_thread(pytester: pytest.Pytester) -> None:
    pytest.importorskip("argon2")
    pytester.makepyfile(
        test_login="""
        from argon2 import PasswordHasher

        password_hash = PasswordHasher(time_cost=10, memory_cost=65536, parallelism=4)

        async def test_login():
            assert password_hash.verify(password_hash.hash("s3cret"), "s3cret")
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            blocked("test_login.py:6 in test_login"),
            "*password_hash.verify(password_hash.hash(*",
            "fix: password hashing is slow on purpose (that is its security), and it holds the "
            "loop — use `await asyncio.to_thread(password_hash.verify, password, hashed)` (and "
            "the same for `.hash(...)`)",
            # argon2 runs its lanes in threads of its own while the loop thread waits for them.
            "wall * s, CPU * s: waiting on native work (* s of CPU in other threads)*",
        ]
    )


def test_the_sync_test_client_in_an_async_test(pytester: pytest.Pytester) -> None:
    pytest.importorskip("fastapi")
    pytester.makepyfile(
        test_client="""
        import asyncio
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        app = FastAPI()

        @app.get("/slow")
        async def slow():
            await asyncio.sleep(0.2)
            return {"ok": True}

        async def test_uses_the_sync_client():
            assert TestClient(app).get("/slow").json() == {"ok": True}
        """
    )
    # Starlette deprecates its TestClient on httpx (for httpx2): a warning, not this test's.
    result = run(pytester, "-W", "ignore::DeprecationWarning", subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            blocked("test_client.py:13 in test_uses_the_sync_client"),
            "fix: the sync `TestClient` inside an `async def` test blocks this loop while the app "
            "runs — use `httpx.AsyncClient(transport=httpx.ASGITransport(app=app))` in async tests",
        ]
    )


LITESTAR = """
import asyncio

import httpx
from litestar import Litestar, get
from litestar.testing import AsyncTestClient, TestClient


@get("/")
async def index() -> dict[str, str]:
    await asyncio.sleep(0.3)
    return {"ok": "yes"}


app = Litestar([index])


async def test_sync_client():
    with TestClient(app=app) as client:
        assert client.get("/").status_code == 200


async def test_async_client():
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/")).status_code == 200


async def test_the_fix():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/")).status_code == 200
"""


def test_litestar_s_test_clients_name_themselves_and_the_fix(pytester: pytest.Pytester) -> None:
    """Both of Litestar's clients hold the test's loop for a whole request (a blocking portal):
    each gets a hint naming it; the fix runs the same app on the loop and passes."""
    pytest.importorskip("litestar")
    pytester.makepyfile(test_litestar=LITESTAR)
    result = run(pytester, subprocess=True)
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            blocked("test_litestar.py:19 in test_sync_client"),
            "fix: Litestar's sync `TestClient` inside an `async def` test blocks this loop while "
            "the app runs — use `httpx.AsyncClient(transport=httpx.ASGITransport(app=app))` in "
            "async tests (Litestar's `AsyncTestClient` blocks it too*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            blocked("test_litestar.py:24 in test_async_client"),
            "fix: Litestar's `AsyncTestClient` runs each request through a blocking portal in "
            "another thread: it holds the test's loop for the whole request — use "
            "`httpx.AsyncClient(transport=httpx.ASGITransport(app=app))`: the app then runs on "
            "the test's own loop",
        ]
    )
