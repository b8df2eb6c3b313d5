"""Trio (pytest-trio, anyio's trio backend, trio.run in a sync test): same verdicts as asyncio."""

from __future__ import annotations

import json

import pytest

from conftest import CANARY, INI, assert_blocked, assert_clean, blocked, hung, strict_call
from helpers_src import SLOW_SERVER
from test_detection import KINDS
from test_detection import PRELUDE as BLOCKING_PRELUDE

trio = pytest.importorskip("trio")
pytest.importorskip("pytest_trio")

TRIO = ("-p", "pytest_loopguard", "-p", "trio", "-p", "asyncio")
ANYIO = ("-p", "pytest_loopguard", "-p", "anyio", "-p", "asyncio")
TRIO_MODE = "trio_mode = true"


def run_trio(
    pytester: pytest.Pytester, *args: str, extra: str = TRIO_MODE, plugins: tuple[str, ...] = TRIO
) -> pytest.RunResult:
    """Run the files made so far under pytest-trio (trio mode: every async test is trio's)."""
    if not (pytester.path / "pytest.ini").exists():
        pytester.makefile(".ini", pytest=INI.format(mode="strict", extra=extra))
    return pytester.runpytest(*plugins, *args)


def trio_fix(kind: str) -> str:
    """The fix line of a kind of block on trio: the asyncio cause, a fix that names trio."""
    cause = KINDS[kind][2].split(" — ")[0]
    return f"{cause} — *trio*"


# -- blocks: the body, fixtures, nursery tasks -------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_blocking_kind_on_trio(pytester: pytest.Pytester, kind: str) -> None:
    code, line, _ = KINDS[kind]
    pytester.makeconftest(SLOW_SERVER)
    body = f"\n\nasync def test_kind(slow_url):\n    await trio.sleep(0)\n    {code}\n"
    pytester.makepyfile(test_kind="import trio\n" + BLOCKING_PRELUDE + body)
    result = run_trio(pytester)
    result.assert_outcomes(failed=1)
    assert_blocked(result, "test_kind.py:*", line, trio_fix(kind))


def test_block_in_a_nursery_task_is_at_its_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, trio

        async def child(n):
            await trio.sleep(0.01 * n)
            if n == 3:
                time.sleep(0.3)

        async def test_nursery():
            async with trio.open_nursery() as nursery:
                for n in range(5):
                    nursery.start_soon(child, n)
        """
    )
    result = run_trio(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [blocked("test_block_in_a_nursery_task_is_at_its_line.py:6 in child"), "*time.sleep(0.3)"]
    )


def test_trio_fixtures_are_named_with_setup_and_teardown(pytester: pytest.Pytester) -> None:
    """pytest-trio runs async fixtures inside the test's trio.run: still named, and which half."""
    pytester.makepyfile(
        """
        import time, pytest, trio

        @pytest.fixture
        async def slow_db():
            time.sleep(0.3)
            yield "db"
            await trio.sleep(0)
            time.sleep(0.25)

        async def test_uses_it(slow_db):
            await trio.sleep(0)
        """
    )
    result = run_trio(pytester)
    result.assert_outcomes(failed=1)
    name = "test_trio_fixtures_are_named_with_setup_and_teardown.py"
    result.stdout.fnmatch_lines(
        [
            blocked(f"{name}:5 in slow_db (during setup of fixture 'slow_db')"),
            "*1 more block(s)*",
            "event loop blocked for * s (threshold 0.10* s) at "
            f"{name}:8 in slow_db (during teardown of fixture 'slow_db')",
        ]
    )


def test_trio_run_in_a_sync_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, trio

        def test_sync():
            async def main():
                await trio.sleep(0)
                time.sleep(0.3)
            trio.run(main)

        def test_sync_clean():
            async def main():
                await trio.sleep(0.3)
            trio.run(main)
        """
    )
    result = run_trio(pytester, extra="")
    result.assert_outcomes(failed=1, passed=1)
    assert_blocked(
        result, "test_trio_run_in_a_sync_test.py:6 in main", "time.sleep(0.3)", trio_fix("sleep")
    )


def test_trio_mark_without_trio_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest, trio

        @pytest.mark.trio
        async def test_marked():
            time.sleep(0.3)
        """
    )
    result = run_trio(pytester, extra="")
    result.assert_outcomes(failed=1)
    assert_blocked(result, "test_trio_mark_without_trio_mode.py:5*", "time.sleep(0.3)", "*trio*")


# -- anyio: both backends, fixtures, one runner shared across tests -----------------------------

ANYIO_TESTS = """
import time, anyio, pytest

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture
async def slow_client():
    time.sleep(0.3)
    yield "client"


async def test_body():
    await anyio.sleep(0)
    time.sleep(0.3)


async def test_fixture(slow_client):
    await anyio.sleep(0)


async def test_clean():
    for _ in range(2000):
        await anyio.sleep(0)
    await anyio.to_thread.run_sync(time.sleep, 0.3)
"""


def test_anyio_on_both_backends(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_anyio=ANYIO_TESTS)
    result = run_trio(pytester, "-v", extra="", plugins=ANYIO)
    result.assert_outcomes(failed=2, errors=2, passed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_anyio.py::test_body[[]asyncio[]] FAILED*",
            "*test_anyio.py::test_body[[]trio[]] FAILED*",
            "*test_anyio.py::test_fixture[[]trio[]] ERROR*",
            "*test_anyio.py::test_clean[[]trio[]] PASSED*",
            "*use `await asyncio.sleep(...)`",
            "*use `await trio.sleep(...)` (anyio: `await anyio.sleep(...)`)",
            blocked("test_anyio.py:13 in slow_client (during setup of fixture 'slow_client')"),
        ]
    )


def test_anyio_runner_shared_across_tests_attributes_each_block(
    pytester: pytest.Pytester,
) -> None:
    """anyio keeps one trio runner for a module-scoped fixture and every test that uses it:
    a block belongs to the test (or fixture) whose code ran, not to the one that started it."""
    pytester.makepyfile(
        """
        import time, anyio, pytest

        pytestmark = pytest.mark.anyio

        @pytest.fixture(scope="module")
        def anyio_backend():
            return "trio"

        @pytest.fixture(scope="module")
        async def server():
            time.sleep(0.3)
            yield "srv"

        async def test_first(server):
            await anyio.sleep(0.2)

        async def test_second(server):
            time.sleep(0.3)

        async def test_third(server):
            await anyio.sleep(0.2)
        """
    )
    result = run_trio(pytester, "-v", extra="", plugins=ANYIO)
    result.assert_outcomes(errors=1, failed=1, passed=1)
    name = "test_anyio_runner_shared_across_tests_attributes_each_block.py"
    result.stdout.fnmatch_lines_random(
        [
            f"*{name}::test_first ERROR*",
            f"*{name}::test_second FAILED*",
            f"*{name}::test_third PASSED*",
            blocked(f"{name}:11 in server (during setup of fixture 'server')"),
            blocked(f"{name}:18 in test_second"),
        ]
    )


# -- clean trio code never flags ----------------------------------------------------------------

CLEAN_TRIO = {
    "trio_sleep": "await trio.sleep(0.3)",
    "to_thread": "await trio.to_thread.run_sync(time.sleep, 0.5)",
    "many_short_steps": "for _ in range(30000):\n        await trio.sleep(0)",
    "many_short_sleeps": (
        "for _ in range(20):\n        time.sleep(0.005)\n        await trio.sleep(0)"
    ),
    "nursery_of_thousands": (
        "async with trio.open_nursery() as nursery:\n"
        "        for _ in range(3000):\n"
        "            nursery.start_soon(trio.sleep, 0.05)"
    ),
    "trio_sockets": (
        "host, port = slow_url[7:-1].split(':')\n"
        "    stream = await trio.open_tcp_stream(host, int(port))\n"
        "    await stream.send_all(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "    data = b''\n"
        "    while chunk := await stream.receive_some(1000):\n"
        "        data += chunk\n"
        "    assert data.endswith(b'ok')\n"
        "    await stream.aclose()"
    ),
    "httpx_on_trio": (
        "async with httpx.AsyncClient(verify=False) as c:\n"
        "        assert (await c.get(slow_url)).text == 'ok'"
    ),
    "only_waits": "await trio.sleep_forever() if False else await trio.sleep(0.5)",
    "under_threshold": "time.sleep(0.03)",
    "other_thread_blocks": (
        "t = threading.Thread(target=time.sleep, args=(0.3,)); t.start()\n"
        "    await trio.sleep(0.4); t.join()"
    ),
}


@pytest.mark.parametrize("case", sorted(CLEAN_TRIO))
def test_clean_trio_code_passes(pytester: pytest.Pytester, case: str) -> None:
    pytester.makeconftest(SLOW_SERVER)
    body = f"\n\nasync def test_clean(slow_url):\n    {CLEAN_TRIO[case]}\n"
    pytester.makepyfile(test_trio_clean="import threading, time, httpx, trio\n" + body + CANARY)
    result = run_trio(pytester)
    assert_clean(result, passed=1)


# -- every setting and surface -------------------------------------------------------------------


SETTINGS_TESTS = """
import time, pytest, trio


@pytest.mark.allow_blocking(reason="legacy client")
async def test_allowed():
    time.sleep(0.3)


async def test_allowed_block(loopguard):
    with loopguard.allow():
        time.sleep(0.3)
    await trio.sleep(0)


@pytest.mark.loop_block_threshold(0.5)
async def test_own_threshold():
    time.sleep(0.3)


async def test_blocks():
    time.sleep(0.3)
"""


def test_markers_and_allow_on_trio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_trio_settings=SETTINGS_TESTS)
    result = run_trio(pytester)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [blocked("test_trio_settings.py:21 in test_blocks"), "*1 block(s) in 1 test(s)*"]
    )


def test_warn_mode_on_trio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_trio_settings=SETTINGS_TESTS)
    pytester.makefile(".ini", pytest=INI.format(mode="strict", extra=TRIO_MODE))
    # In a subprocess: this session turns warnings into errors, and in-process runs inherit that.
    args = ("--loop-block-mode=warn", "--loop-block-threshold=0.2")
    result = pytester.runpytest_subprocess(*TRIO, *args)
    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines(
        ["*test_trio_settings.py:21: PytestWarning: event loop blocked for * s (threshold 0.20 s)*"]
    )


def test_strict_mode_on_the_trio_thread(pytester: pytest.Pytester) -> None:
    """Known blocking calls fail however short; trio's own threads and sockets do not."""
    pytester.makepyfile(
        """
        import time, trio

        async def test_short_sleep():
            time.sleep(0.001)

        async def test_trio_machinery():
            await trio.to_thread.run_sync(time.sleep, 0.01)
            a, b = trio.socket.socketpair()
            await a.send(b"x")
            assert await b.recv(1) == b"x"
            a.close(); b.close()
        """
    )
    result = run_trio(pytester, "--loop-block-strict")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            strict_call("time.sleep()", "test_strict_mode_on_the_trio_thread.py:4 in test_short*"),
            "fix: time.sleep blocks every request — use `await trio.sleep(...)`*",
        ]
    )


def test_hang_guard_interrupts_a_trio_step(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, trio

        async def test_spins():
            await trio.sleep(0)
            while True: pass  # one line: 3.14 reports the body's line, earlier ones the while's

        async def test_next_one_runs():
            await trio.sleep(0.01)
        """
    )
    result = run_trio(pytester, "--loop-block-timeout=0.5")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([hung("test_hang_guard_interrupts_a_trio_step.py:5 in test_spins")])


def test_json_report_names_the_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_both="""
        import asyncio, time, pytest

        @pytest.mark.trio
        async def test_trio_block():
            time.sleep(0.3)

        @pytest.mark.asyncio
        async def test_asyncio_block():
            time.sleep(0.3)
        """
    )
    result = run_trio(pytester, "--loop-block-report=blocks.json", extra="")
    result.assert_outcomes(failed=2)
    report = json.loads((pytester.path / "blocks.json").read_text())
    backends = {b["nodeid"].split("::")[1]: b["backend"] for b in report["blocks"]}
    assert backends == {"test_trio_block": "trio", "test_asyncio_block": "asyncio"}
    assert report["version"] == 6


def test_xdist_on_trio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_trio_settings=SETTINGS_TESTS)
    result = run_trio(pytester, "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([blocked("test_trio_settings.py:21 in test_blocks")])


def test_nothing_of_trio_stays_patched(pytester: pytest.Pytester) -> None:
    """The session wraps trio's entry points and gives them back; runs after it are unwatched."""
    pytester.makepyfile("async def test_x():\n    pass\n")
    run_trio(pytester).assert_outcomes(passed=1)
    assert not hasattr(trio.run, "__wrapped__")
    assert not hasattr(trio.lowlevel.start_guest_run, "__wrapped__")


def test_trio_guest_run_on_an_asyncio_loop(pytester: pytest.Pytester) -> None:
    """A trio guest run driven by an asyncio loop's callbacks: a block in a trio step and a
    block in a plain asyncio callback, while the guest runs, are both caught, each with its
    own fix."""
    pytester.makepyfile(
        """
        import asyncio, time, pytest, trio

        async def guest_blocks():
            await trio.sleep(0.05)
            time.sleep(0.3)

        async def guest_waits():
            await trio.sleep(0.6)

        async def host(guest):
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            trio.lowlevel.start_guest_run(
                guest,
                run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                done_callback=lambda outcome: done.set_result(outcome),
            )
            return done

        @pytest.mark.asyncio
        async def test_block_in_the_guest():
            (await (await host(guest_blocks))).unwrap()

        @pytest.mark.asyncio
        async def test_block_in_the_host():
            done = await host(guest_waits)
            await asyncio.sleep(0.1)
            time.sleep(0.3)
            (await done).unwrap()
        """
    )
    result = run_trio(pytester, extra="")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            blocked("test_trio_guest_run_on_an_asyncio_loop.py:5 in guest_blocks"),
            "fix: time.sleep blocks every request — use `await trio.sleep(...)`*",
            blocked("test_trio_guest_run_on_an_asyncio_loop.py:28 in test_block_in_the_host"),
            "fix: time.sleep blocks every request — use `await asyncio.sleep(...)`",
        ]
    )


def test_the_instrument_never_raises_into_trio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trio drops (and logs) an instrument that raises: whatever goes wrong on our side, the
    run goes on and the instrument stays quiet."""
    from pytest_loopguard import LoopGuard
    from pytest_loopguard._core.engine import ENGINE

    def broken(_token: object) -> None:
        raise RuntimeError("registry broke")

    async def main() -> int:
        await trio.sleep(0)
        return 7

    with LoopGuard(threshold=0.1):
        monkeypatch.setattr(ENGINE.registry, "enter_trio", broken)
        monkeypatch.setattr(ENGINE.registry, "leave", broken)
        with pytest.MonkeyPatch.context() as logs:
            calls: list[object] = []
            logs.setattr("trio._core._instrumentation.INSTRUMENT_LOGGER.exception", calls.append)
            assert trio.run(main) == 7
        monkeypatch.undo()
    assert calls == []


def test_allowlist_and_ini_threshold_on_trio(pytester: pytest.Pytester) -> None:
    """The allowlist and the ini threshold work on trio as on asyncio."""
    pytester.makepyfile(
        vendor_sdk="import time\n\ndef warm_up():\n    time.sleep(0.3)\n",
        test_trio_vendor="""
        import time, trio, vendor_sdk

        async def test_warm_up():
            vendor_sdk.warm_up()

        async def test_own_block():
            await trio.sleep(0)
            time.sleep(0.3)

        async def test_under_the_ini_threshold():
            time.sleep(0.2)
        """,
    )
    pytester.syspathinsert()
    extra = f"{TRIO_MODE}\nloop_block_threshold = 0.25\nloop_block_allow =\n    vendor_sdk"
    result = run_trio(pytester, "-v", extra=extra)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_trio_vendor.py::test_warm_up PASSED*",
            "*test_trio_vendor.py::test_under_the_ini_threshold PASSED*",
            blocked("test_trio_vendor.py:8 in test_own_block", threshold="0.25"),
        ]
    )
