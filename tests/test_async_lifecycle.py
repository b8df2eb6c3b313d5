"""Async lifecycle bugs (``loop_lifecycle``): tasks left pending, task exceptions nobody
retrieved, coroutines never awaited, threads left running — each at the line that created it,
in the test that created it; and the correct shapes that must never be flagged."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ASYNCIO, run, write_ini

LEFT_BEHIND = """
import asyncio, threading, time
import pytest


async def send_email(to):
    await asyncio.sleep(0.5)


async def boom():
    raise ValueError("smtp down")


async def test_pending():
    asyncio.create_task(send_email("a"))
    await asyncio.sleep(0)


async def test_unretrieved():
    asyncio.create_task(boom())
    await asyncio.sleep(0.01)


async def test_unawaited():
    send_email("a")


def test_thread():
    threading.Thread(target=time.sleep, args=(1,)).start()


def test_under_asyncio_run():
    async def main():
        asyncio.create_task(send_email("x"))

    asyncio.run(main())
"""


def _line(source: str, text: str) -> int:
    return source.strip("\n").splitlines().index(text) + 1


PENDING = _line(LEFT_BEHIND, '    asyncio.create_task(send_email("a"))')
UNRETRIEVED = _line(LEFT_BEHIND, "    asyncio.create_task(boom())")
UNAWAITED = _line(LEFT_BEHIND, '    send_email("a")')
THREAD = _line(LEFT_BEHIND, "    threading.Thread(target=time.sleep, args=(1,)).start()")
UNDER_RUN = _line(LEFT_BEHIND, '        asyncio.create_task(send_email("x"))')
# asyncio.run's shutdown is seen through asyncio.Runner, which Python 3.10 does not have.
RUNNER = sys.version_info >= (3, 11)


def test_each_kind_is_a_warning_at_its_line_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_left=LEFT_BEHIND)
    result = run(pytester, "-W", "ignore::RuntimeWarning")
    result.assert_outcomes(passed=5, warnings=4 + RUNNER)
    result.stdout.fnmatch_lines(
        [
            f"*test_left.py:{PENDING}: PytestWarning: task send_email() created at "
            f"test_left.py:{PENDING} in test_pending was still pending when the test ended*",
            "*fix: await it, or create it in an `async with asyncio.TaskGroup() as tg:` block*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"*PytestWarning: task boom() (ValueError: smtp down) created at "
            f"test_left.py:{UNRETRIEVED} in test_unretrieved failed, and nobody retrieved its "
            "exception*",
            "*fix: await the task where it is created, or keep a reference and add a done "
            "callback that logs*",
            "*Traceback (most recent call last):",
            '*raise ValueError("smtp down")',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"*test_left.py:{UNAWAITED}: PytestWarning: coroutine send_email() called at "
            f"test_left.py:{UNAWAITED} in test_unawaited was never awaited*",
            "*fix: `await` the call*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"*PytestWarning: thread 'Thread-* (sleep)' (target sleep) started at "
            f"test_left.py:{THREAD} in test_thread was still running when the test ended*",
            "*fix: `join()` it before the test ends*",
        ]
    )
    section = [
        "*= pytest-loopguard: async lifecycle =*",
        f"{1 + RUNNER} task(s), 1 exception(s), 1 coroutine(s), 1 thread(s) left behind in "
        f"{4 + RUNNER} test(s)",
        f"test_left.py:{PENDING}  task send_email()  test_left.py::test_pending  [[]warned]",
    ]
    result.stdout.fnmatch_lines(section)
    if RUNNER:
        result.stdout.fnmatch_lines(
            [f"*task send_email() created at test_left.py:{UNDER_RUN} in main was still pending*"]
        )


def test_fail_mode_fails_each_test_at_its_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_left=LEFT_BEHIND)
    result = run(pytester, "--loop-lifecycle=fail", "-W", "ignore::RuntimeWarning")
    # A thread is checked once the test's fixtures are torn down too: an error at teardown.
    result.assert_outcomes(failed=3 + RUNNER, passed=2 - RUNNER, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_pending _*",
            f"pytest-loopguard: task send_email() created at test_left.py:{PENDING} in "
            "test_pending was still pending when the test ended*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["ERROR test_left.py::test_thread - Failed: pytest-loopguard: thread 'Thread-*"]
    )
    result.stdout.fnmatch_lines(["*[[]failed]"])


def test_the_test_that_created_it_gets_it(pytester: pytest.Pytester) -> None:
    """Left by one test, never reported on the next (which creates nothing)."""
    pytester.makepyfile(
        test_order="""
        import asyncio

        async def test_leaves_one():
            asyncio.create_task(asyncio.sleep(1))

        async def test_next_one():
            await asyncio.sleep(0.01)
        """
    )
    result = run(pytester, "--loop-lifecycle=fail")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["FAILED test_order.py::test_leaves_one - Failed: *sleep()*"])


NEVER_FLAGGED = """
import asyncio, threading, time
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest
import pytest_asyncio
from fastapi import BackgroundTasks, FastAPI

app = FastAPI()
sent = []


async def send(to):
    await asyncio.sleep(0)
    sent.append(to)


@app.post("/signup")
async def signup(tasks: BackgroundTasks):
    tasks.add_task(send, "welcome")
    return {"ok": True}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server_loop_task():
    # A wider fixture's background task: its own, checked at its teardown, not the tests'.
    task = asyncio.create_task(asyncio.sleep(3600))
    yield task
    task.cancel()


@pytest.fixture
async def ticker():
    task = asyncio.create_task(asyncio.sleep(3600))
    yield task
    task.cancel()


async def test_awaited_cancelled_groups_and_timeouts():
    await asyncio.create_task(send("a"))
    task = asyncio.ensure_future(asyncio.sleep(10))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.TaskGroup() as group:
        group.create_task(send("b"))
    async with anyio.create_task_group() as group:
        group.start_soon(send, "c")
    async with asyncio.timeout(1):
        await asyncio.wait_for(send("d"), 1)
    await asyncio.gather(send("e"), send("f"))


async def test_threads_that_end_and_executors_that_are_shut_down():
    await asyncio.to_thread(time.sleep, 0.01)
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.01)
    with ThreadPoolExecutor(2) as pool:
        pool.submit(time.sleep, 0.01)
    thread = threading.Thread(target=time.sleep, args=(0.01,))
    thread.start()
    thread.join()
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
    threading.Thread(target=time.sleep, args=(0.01,)).start()  # ends before the test does
    await asyncio.sleep(0.05)


async def test_fixture_tasks_and_background_tasks(server_loop_task, ticker):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/signup")).status_code == 200
    assert "welcome" in sent


@pytest.mark.asyncio(loop_scope="module")
async def test_a_module_loop_task_is_not_this_test(server_loop_task):
    assert not server_loop_task.done()


async def test_zz_the_checks_were_live():
    asyncio.create_task(asyncio.sleep(1))
"""


def test_correct_shapes_are_never_flagged(pytester: pytest.Pytester) -> None:
    pytest.importorskip("fastapi")
    if sys.version_info < (3, 11):
        pytest.skip("asyncio.TaskGroup and asyncio.timeout are 3.11+")
    pytester.makepyfile(test_lc_clean=NEVER_FLAGGED)
    result = run(pytester)
    # Only the canary's task, in the same run: the checks were live.
    result.assert_outcomes(passed=5, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*PytestWarning: task sleep() created at test_lc_clean.py:* in "
            "test_zz_the_checks_were_live was still pending*",
            "1 task(s), 0 exception(s), 0 coroutine(s), 0 thread(s) left behind in 1 test(s)",
        ]
    )


def test_a_failing_test_is_not_blamed_twice(pytester: pytest.Pytester) -> None:
    """``gather`` leaves the other task running when one fails: that follows from the test's
    own failure, which stays its only one."""
    pytester.makepyfile(
        test_gather="""
        import asyncio

        async def fails():
            raise RuntimeError("one of them failed")

        async def test_gathered():
            await asyncio.gather(fails(), asyncio.sleep(1))

        async def test_canary():
            asyncio.create_task(asyncio.sleep(1))
        """
    )
    result = run(pytester, "--loop-lifecycle=fail")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_gather.py::test_gathered - RuntimeError: one of them failed",
            "FAILED test_gather.py::test_canary - Failed: pytest-loopguard: task sleep()*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_gathered*still pending*")


def test_marker_ini_and_precedence(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_lc_settings="""
        import asyncio
        import pytest

        @pytest.mark.allow_leaks(reason="fire and forget, on purpose")
        async def test_allowed():
            asyncio.create_task(asyncio.sleep(1))

        async def test_left():
            asyncio.create_task(asyncio.sleep(1))
        """
    )
    write_ini(pytester, "auto", "loop_lifecycle = off")
    result = run(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*async lifecycle*")
    # The command line beats the ini; the marker beats both.
    result = run(pytester, "--loop-lifecycle=fail", "--loop-block-report=report.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-loopguard: async lifecycle =*",
            "1 task(s), 0 exception(s), 0 coroutine(s), 0 thread(s) left behind in 1 test(s); "
            "1 allowed or known not counted",
        ]
    )
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["version"] == 6
    kinds = {(f["nodeid"].split("::")[1], f["kind"], f["verdict"]) for f in report["findings"]}
    assert kinds == {("test_allowed", "task", "allowed"), ("test_left", "task", "failed")}
    assert {f["what"] for f in report["findings"]} == {"task sleep()"}


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (("--loop-lifecycle=loud",), "", "'loud' from --loop-lifecycle is not a valid"),
        ((), "loop_lifecycle = sometimes", "'sometimes' from ini loop_lifecycle is not a valid"),
    ],
    ids=["cli", "ini"],
)
def test_a_bad_value_is_a_usage_error(
    pytester: pytest.Pytester, args: tuple[str, ...], ini: str, message: str
) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    write_ini(pytester, "auto", ini)
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*pytest-loopguard: {message} loop_lifecycle: expected one of fail, warn, off"]
    )


def test_a_bad_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
        import pytest

        @pytest.mark.allow_leaks(reason=3)
        def test_x():
            pass
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*bad @pytest.mark.allow_leaks on test_x.py::test_x: reason must be a string, got 3"]
    )


def test_xdist_junit_and_annotations(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_left=LEFT_BEHIND)
    write_ini(pytester, "auto")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result = pytester.runpytest_subprocess(
        *ASYNCIO, "-p", "xdist", "-n", "2", "--junitxml=junit.xml", "-W", "ignore::RuntimeWarning"
    )
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-loopguard: async lifecycle =*",
            f"{1 + RUNNER} task(s), 1 exception(s), 1 coroutine(s), 1 thread(s) left behind in "
            f"{4 + RUNNER} test(s)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"::warning file=test_left.py,line={PENDING},title=pytest-loopguard::task "
            "send_email() left behind by test_left.py::test_pending (task)"
        ]
    )
    xml = (pytester.path / "junit.xml").read_text()
    assert xml.count('name="loopguard.finding"') == 4 + RUNNER


def test_trio_coroutines_and_threads(pytester: pytest.Pytester) -> None:
    pytest.importorskip("trio")
    pytester.makepyfile(
        test_trio_left="""
        import threading, time
        import trio

        async def ping():
            await trio.sleep(0)

        def test_unawaited_under_trio():
            async def main():
                ping()
            trio.run(main)

        def test_thread_under_trio():
            async def main():
                threading.Thread(target=time.sleep, args=(1,)).start()
            trio.run(main)

        def test_nursery_is_clean():
            async def main():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ping)
            trio.run(main)
        """
    )
    result = run(pytester, "--loop-lifecycle=fail", "-W", "ignore::RuntimeWarning")
    result.assert_outcomes(failed=1, passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_trio_left.py::test_unawaited_under_trio - Failed: pytest-loopguard: "
            "coroutine ping() called at test_trio_left.py:9 in main was never awaited*",
            "ERROR test_trio_left.py::test_thread_under_trio - Failed: pytest-loopguard: "
            "thread 'Thread-* (sleep)' (target sleep) started at test_trio_left.py:14 in main*",
        ]
    )


def test_uvloop_coroutines_and_threads(pytester: pytest.Pytester) -> None:
    pytest.importorskip("uvloop")
    pytester.makepyfile(
        test_uv="""
        import asyncio, threading, time
        import uvloop

        async def ping():
            await asyncio.sleep(0)

        def test_unawaited_on_uvloop():
            async def main():
                ping()
            uvloop.run(main())

        def test_thread_on_uvloop():
            async def main():
                threading.Thread(target=time.sleep, args=(1,)).start()
            uvloop.run(main())
        """
    )
    result = run(pytester, "--loop-lifecycle=fail", "-W", "ignore::RuntimeWarning")
    result.assert_outcomes(failed=1, passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_uv.py::test_unawaited_on_uvloop - Failed: pytest-loopguard: coroutine "
            "ping() called at test_uv.py:9 in main*",
            "ERROR test_uv.py::test_thread_on_uvloop - Failed: pytest-loopguard: thread*",
        ]
    )
