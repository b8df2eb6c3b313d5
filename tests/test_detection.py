"""Each kind of real blocking, in each place a test's code runs on the loop, fails the test."""

from __future__ import annotations

import sys

import pytest

from conftest import assert_blocked, blocked, reported_seconds, run
from helpers_src import SLOW_SERVER

SLEEP_FIX = "time.sleep blocks every request — use `await asyncio.sleep(...)`"
HTTP_FIX = (
    "sync HTTP (requests/urllib/http.client) blocks every request — use `await client.get(url)` "
    "on one `httpx.AsyncClient` made once*"
)

KINDS = {
    "sleep": ("time.sleep(0.2)", "time.sleep(0.2)", SLEEP_FIX),
    "urllib": (
        "urllib.request.urlopen(slow_url).read()",
        "urllib.request.urlopen(slow_url).read()",
        HTTP_FIX,
    ),
    "http_client": (
        "conn = http.client.HTTPConnection(slow_url[7:-1]); conn.request('GET', '/'); "
        "conn.getresponse().read()",
        "conn = http.client.HTTPConnection*",
        HTTP_FIX,
    ),
    "requests": (
        "requests.get(slow_url, timeout=5)",
        "requests.get(slow_url, timeout=5)",
        HTTP_FIX,
    ),
    "sqlalchemy": (
        "sync_engine(slow_url).connect().execute(sqlalchemy.text('select pg_sleep(0.2)'))",
        "sync_engine(slow_url).connect()*",
        "a sync SQLAlchemy engine/session blocks the loop on every query — use `AsyncSession`*",
    ),
    "file": (
        "open(slow_fifo()).read()",
        "open(slow_fifo()).read()",
        "file I/O blocks the loop — use `await asyncio.to_thread(path.read_text)` or aiofiles",
    ),
    "cpu": ("busy(0.2)", "while time.thread_time() < end:*", "CPU-bound work holds the loop — *"),
    "subprocess": (
        "subprocess.run([sys.executable, '-c', 'import time; time.sleep(0.2)'], check=True)",
        "subprocess.run(*",
        "subprocess waits for the child on the loop thread — use `await asyncio.create_subp*",
    ),
    "socket": (
        "a, b = socket.socketpair(); later(0.3, b.send, b'x'); a.recv(1); a.close(); b.close()",
        "a, b = socket.socketpair(); later(0.3, b.send, b'x'); a.recv(1)*",
        "a blocking socket call holds the loop — use asyncio streams*",
    ),
    "lock": (
        "lock = threading.Lock(); lock.acquire(); later(0.3, lock.release); lock.acquire()",
        "lock = threading.Lock(); *",
        "a threading lock/event/queue wait holds the loop — use `asyncio.Lock`*",
    ),
    "future": (
        "pool = ThreadPoolExecutor(1); pool.submit(time.sleep, 0.3).result(); pool.shutdown()",
        "pool = ThreadPoolExecutor(1); *",
        "`concurrent.futures.Future.result()` waits on the loop thread — use `await asyncio.wrap*",
    ),
    "many_short": (
        "for _ in range(40): time.sleep(0.01)",
        "for _ in range(40): time.sleep(0.01)",
        SLEEP_FIX,
    ),
}

PRELUDE = """
import http.client, os, socket, subprocess, sys, tempfile, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

import requests
import sqlalchemy


def later(delay, func, *args):
    threading.Timer(delay, func, args).start()


def busy(seconds):
    end = time.thread_time() + seconds  # CPU time: the same on a loaded machine
    while time.thread_time() < end:
        pass


def slow_fifo():
    path = os.path.join(tempfile.mkdtemp(), "fifo")
    os.mkfifo(path)

    def writer():
        time.sleep(0.2)
        with open(path, "w") as f:
            f.write("data")
    threading.Thread(target=writer).start()
    return path


def sync_engine(_url):
    # NullPool: the connection closes when the test drops it, not when the engine is collected
    # in a later test (an unclosed sqlite3 connection is a ResourceWarning from Python 3.13).
    engine = sqlalchemy.create_engine("sqlite://", poolclass=sqlalchemy.pool.NullPool)

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        # Like PostgreSQL's pg_sleep: the wait happens inside the database driver, in C.
        dbapi_connection.create_function("pg_sleep", 1, time.sleep)
    return engine
"""


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_blocking_kind_fails_at_its_line_with_its_fix(pytester: pytest.Pytester, kind: str) -> None:
    if kind == "file" and sys.platform == "win32":
        pytest.skip("named pipes via os.mkfifo are POSIX only")
    code, line, fix = KINDS[kind]
    pytester.makeconftest(SLOW_SERVER)
    pytester.makepyfile(test_kind=PRELUDE + f"\n\nasync def test_kind(slow_url):\n    {code}\n")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert_blocked(result, "test_kind.py:*", line, fix)


def test_test_body_block_names_line_and_duration(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time

        async def test_users():
            await asyncio.sleep(0)
            time.sleep(0.2)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            blocked("test_test_body_block_names_line_and_duration.py:5 in test_users"),
            "    time.sleep(0.2)",
            f"fix: {SLEEP_FIX}",
            "wall * s, CPU 0.0* s: waiting (not on the CPU)*",
            "stack while blocked (most recent call last):",
            "  test_test_body_block_names_line_and_duration.py:5 in test_users",
            "FAILED *::test_users - LoopBlockedError: event loop blocked for * s *",
        ]
    )
    # The headline, the summary line: the 0.2 s sleep, within bounds a loaded machine keeps.
    seconds = reported_seconds(result)
    assert len(seconds) == 2
    assert all(0.15 <= s <= 1.5 for s in seconds), seconds
    result.stdout.no_fnmatch_line("*pluggy/*")
    result.stdout.no_fnmatch_line("*pytest_loopguard*")


def test_cpu_bound_block_is_reported_as_cpu_bound(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PRELUDE + "\n\nasync def test_cpu():\n    busy(0.2)\n")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["wall 0.* s, CPU 0.* s: CPU-bound*"])


def test_async_fixture_setup_and_teardown_are_errors_naming_the_fixture(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.fixture
        async def database():
            time.sleep(0.2)
            yield "db"
            time.sleep(0.25)

        async def test_uses_db(database):
            assert database == "db"
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_uses_db*",
            blocked("*.py:5 in database (during setup of fixture 'database')"),
            "*ERROR at teardown of test_uses_db*",
            blocked("*.py:7 in database (during teardown of fixture 'database')"),
        ]
    )


def test_module_scoped_fixture_block_is_reported_on_the_first_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import time, pytest, pytest_asyncio

        @pytest_asyncio.fixture(scope="module", loop_scope="module")
        async def shared():
            time.sleep(0.2)
            return 1

        @pytest.mark.asyncio(loop_scope="module")
        async def test_one(shared):
            pass

        @pytest.mark.asyncio(loop_scope="module")
        async def test_two(shared):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*(during setup of fixture 'shared')"])


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (
            "await asyncio.create_task(blocker())",
            "time.sleep(0.2)",
        ),
        (
            "await asyncio.gather(blocker(), asyncio.sleep(0.1))",
            "time.sleep(0.2)",
        ),
        (
            "loop = asyncio.get_running_loop(); loop.call_soon(sync_blocker); "
            "await asyncio.sleep(0.3)",
            "time.sleep(0.2)",
        ),
        (
            "loop = asyncio.get_running_loop(); loop.call_later(0.01, sync_blocker); "
            "await asyncio.sleep(0.3)",
            "time.sleep(0.2)",
        ),
    ],
    ids=["create_task", "gather", "call_soon", "call_later"],
)
def test_blocks_in_tasks_and_callbacks(pytester: pytest.Pytester, body: str, line: str) -> None:
    pytester.makepyfile(
        f"""
        import asyncio, time

        async def blocker():
            time.sleep(0.2)

        def sync_blocker():
            time.sleep(0.2)

        async def test_spawns():
            {body}
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert_blocked(result, "*.py:*", line, SLEEP_FIX)


def test_fastapi_route_through_asgi_transport(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        app="""
        import time
        from fastapi import FastAPI

        app = FastAPI()

        @app.get("/users")
        async def list_users():
            time.sleep(0.2)
            return [{"name": "ada"}]

        @app.get("/fast")
        async def fast():
            return {"ok": True}
        """,
        test_api="""
        import httpx
        from app import app

        async def client():
            return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")

        async def test_users():
            async with await client() as c:
                assert (await c.get("/users")).status_code == 200

        async def test_fast():
            async with await client() as c:
                assert (await c.get("/fast")).json() == {"ok": True}
        """,
    )
    pytester.syspathinsert()
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    assert_blocked(result, "app.py:8 in list_users", "time.sleep(0.2)", SLEEP_FIX)
    result.stdout.fnmatch_lines(["  test_api.py:9 in test_users", "  app.py:8 in list_users"])


def test_several_blocks_are_all_listed_worst_first(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time

        async def test_two_blocks():
            time.sleep(0.15)
            await asyncio.sleep(0)
            time.sleep(0.35)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "LoopBlockedError: event loop blocked for * s * at *.py:6 in test_two_blocks",
            "1 more block(s) of the event loop in this phase:",
            "event loop blocked for * s * at *.py:4 in test_two_blocks",
        ]
    )
    worst, other = reported_seconds(result)[:2]
    assert 0.3 <= worst <= 2.0
    assert 0.1 <= other < worst


def test_own_failure_is_kept_and_block_reported_beside_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time

        async def test_both():
            time.sleep(0.2)
            assert 1 == 2
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E       assert 1 == 2",
            "*- event loop blocked (pytest-loopguard) -*",
            "LoopBlockedError: event loop blocked for * s * at *.py:4 in test_both",
            "FAILED *::test_both - assert 1 == 2",
        ]
    )


def test_asyncio_run_in_a_sync_test_is_watched(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time

        async def main():
            time.sleep(0.2)

        def test_sync_runs_a_loop():
            asyncio.run(main())
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert_blocked(result, "*.py:4 in main", "time.sleep(0.2)", SLEEP_FIX)


def test_fastapi_testclient_from_a_sync_test(pytester: pytest.Pytester) -> None:
    """Most FastAPI suites use the sync TestClient, which runs the app's loop in a portal
    thread: an async route that blocks it is caught; a def route (run in a worker thread by
    FastAPI) that sleeps is not a block."""
    pytester.makepyfile(
        """
        import time
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        app = FastAPI()

        @app.get("/async-blocks")
        async def async_blocks():
            time.sleep(0.2)
            return {}

        @app.get("/def-sleeps")
        def def_sleeps():
            time.sleep(0.2)
            return {}

        def test_async_route_blocks():
            with TestClient(app) as client:
                assert client.get("/async-blocks").status_code == 200

        def test_def_route_runs_in_a_thread():
            with TestClient(app) as client:
                assert client.get("/def-sleeps").status_code == 200
        """
    )
    # Starlette may warn about which httpx its TestClient uses: not what this test is about.
    result = run(pytester, "-W", "ignore::UserWarning")
    result.assert_outcomes(failed=1, passed=1)
    assert_blocked(result, "*.py:9 in async_blocks", "time.sleep(0.2)", SLEEP_FIX)
    result.stdout.fnmatch_lines(["FAILED *::test_async_route_blocks - LoopBlockedError*"])


def test_unittest_isolated_asyncio_test_case(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio, time, unittest

        class TestService(unittest.IsolatedAsyncioTestCase):
            async def test_blocks(self):
                time.sleep(0.2)

            async def test_clean(self):
                await asyncio.sleep(0.2)
        """
    )
    result = run(pytester, mode="strict")
    result.assert_outcomes(failed=1, passed=1)
    assert_blocked(result, "*.py:5 in test_blocks", "time.sleep(0.2)", SLEEP_FIX)
