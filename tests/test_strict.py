"""Strict mode: known blocking calls on the loop thread fail a test however short they are."""

from __future__ import annotations

import pytest

from conftest import run, strict_call, write_ini

CASES = """
import asyncio, concurrent.futures, socket, subprocess, sys, threading, time, pytest


async def test_short_sleep():
    time.sleep(0.01)


async def test_file():
    with open(__file__) as f:
        f.read()


async def test_dns():
    socket.getaddrinfo("localhost", 80)


async def test_future():
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.submit(time.sleep, 0.01).result()
    pool.shutdown(wait=False)


async def test_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


async def test_many():
    for _ in range(5):
        time.sleep(0.001)


async def test_clean_async_equivalents():
    await asyncio.to_thread(time.sleep, 0.01)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()
    await asyncio.get_running_loop().getaddrinfo("localhost", 80)
    threading.Timer(0.01, lambda: None).start()


@pytest.mark.allow_blocking
async def test_allowed():
    time.sleep(0.01)


def test_sync_tests_are_not_watched():
    time.sleep(0.01)


async def test_worker_threads_never_count():
    def work():
        time.sleep(0.01)
        open(__file__).close()
    thread = threading.Thread(target=work)
    thread.start()
    await asyncio.sleep(0.05)
    await asyncio.to_thread(thread.join)
"""


def test_known_blocking_calls_fail_at_their_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_calls=CASES)
    result = run(pytester, "--loop-block-strict", "-p", "no:randomly")
    result.assert_outcomes(failed=6, passed=4)
    result.stdout.fnmatch_lines(
        [
            "loopguard: *, strict=on",
            strict_call("time.sleep()", "test_calls.py:5 in test_short_sleep"),
            "    time.sleep(0.01)",
            "fix: time.sleep blocks every request — use `await asyncio.sleep(...)`",
            strict_call("open()", "test_calls.py:9 *"),
            "fix: file I/O blocks the loop*",
            strict_call("socket.getaddrinfo()", "test_calls.py:14 *"),
            "fix: a sync DNS lookup holds the loop — use `await loop.getaddrinfo(host, port)`",
            strict_call("Future.result()", "test_calls.py:19 *"),
            strict_call("subprocess.Popen()", "test_calls.py:24 *"),
            strict_call("time.sleep()", "test_calls.py:29 in test_many", times=5),
        ]
    )


def test_strict_is_off_by_default_and_the_allowlist_applies(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_calls=CASES)
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=10)
    write_ini(pytester, "auto", "loop_block_strict = true\nloop_block_allow =\n    test_calls")
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=10)
    result.stdout.fnmatch_lines(["loopguard: *, strict=on"])


def test_strict_in_a_fixture_names_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.fixture
        async def warm():
            time.sleep(0.001)

        async def test_uses(warm):
            pass
        """
    )
    result = run(pytester, "--loop-block-strict")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [strict_call("time.sleep()", "*.py:5 in warm (during setup of fixture 'warm')")]
    )


def test_calls_under_pure_python_tasks_count(pytester: pytest.Pytester) -> None:
    # asyncio's pure-Python Task (what Python 3.10's Runner backport runs tests in) puts an
    # asyncio frame under every coroutine step: it must not make the user's calls exempt.
    pytester.makepyfile(
        """
        import asyncio, time

        def py_task(loop, coro, **kwargs):
            return asyncio.tasks._PyTask(coro, loop=loop, **kwargs)

        async def blocker():
            time.sleep(0.001)

        async def test_in_a_python_task():
            asyncio.get_running_loop().set_task_factory(py_task)
            await asyncio.create_task(blocker())
        """
    )
    result = run(pytester, "--loop-block-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([strict_call("time.sleep()", "*.py:7 in blocker")])


def test_one_time_mimetypes_load_is_not_the_tests(pytester: pytest.Pytester) -> None:
    # The first guess_type() in a process opens the system's mime.types files (httpx's multipart
    # encoder makes it): a one-time load, like a first import. A process of its own, so that
    # this is the first call; the test's own open() right after still counts.
    pytester.makepyfile(
        test_guess="""
        import mimetypes, os

        async def test_guess_then_open():
            assert mimetypes.guess_type("report.json")[0] == "application/json"
            open(os.devnull).close()
        """
    )
    result = run(pytester, "--loop-block-strict", subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [strict_call("open()", "test_guess.py:5 in test_*").split(" (strict")[0] + "*"]
    )
    result.stdout.no_fnmatch_line("*blocking call open() on the event loop at test_guess.py:4 *")
