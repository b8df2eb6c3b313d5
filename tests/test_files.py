"""File descriptors: the watchdog's own file table holds none of the process's, and the loop
threads' clocks are closed with their threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import blocked, run

pytestmark = pytest.mark.skipif(
    not Path("/proc/thread-self/fd").is_dir(), reason="needs Linux's per-thread file tables"
)


# Run in a process of their own: the outer session's watchdog, on the process's table while
# pytest-trio's trio is imported, would be the one listed.
PRELUDE = """
import asyncio, os, sys, threading, time
from pathlib import Path
from pytest_loopguard import LoopGuard
from pytest_loopguard._core.engine import ENGINE


def watchdog_files():
    # Above stdio, but for the main thread's run-queue clock (there once the watchdog looked).
    time.sleep(0.1)  # no loop runs: the watchdog is asleep, done with whatever it opened
    (watchdog,) = [t for t in threading.enumerate() if t.name == ENGINE.watchdog.NAME]
    folder = Path(f"/proc/self/task/{watchdog.native_id}/fd")
    files = [os.readlink(folder / name) for name in os.listdir(folder) if int(name) > 2]
    main = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat"
    return [f for f in files if f != main]


def watchdog_signals():
    # The signals the watchdog does not block: a handler run on its thread would use its table.
    (watchdog,) = [t for t in threading.enumerate() if t.name == ENGINE.watchdog.NAME]
    status = Path(f"/proc/self/task/{watchdog.native_id}/status").read_text()
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if "SigBlk" in line)
    return {n for n in range(1, 32) if not mask >> (n - 1) & 1}


"""


def _python(tmp_path: Path, source: str) -> list[str]:
    """Run ``source`` (after the prelude) in a new interpreter; its output lines."""
    (tmp_path / "script.py").write_text(PRELUDE + textwrap.dedent(source))
    done = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_a_socket_closed_during_the_session_is_closed(pytester: pytest.Pytester) -> None:
    """The watchdog starts with a copy of the process's file table: a copy of a listening
    socket left in it would keep accepting connections after the test closed it."""
    pytester.makeconftest(
        """
        import socket

        LISTENER = socket.create_server(("127.0.0.1", 0))  # before the session starts
        """
    )
    pytester.makepyfile(
        """
        import asyncio, socket, time
        import pytest
        from conftest import LISTENER

        async def test_blocks():
            time.sleep(0.2)

        def test_closes_the_listener():
            port = LISTENER.getsockname()[1]
            LISTENER.close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        """
    )
    # A process of its own: in this one, the outer session's watchdog would be the one.
    result = run(pytester, "-p", "no:randomly", subprocess=True)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [blocked("test_a_socket_closed_during_the_session_is_closed.py:6*")]
    )


def test_the_watchdog_holds_only_its_own_files(tmp_path: Path) -> None:
    lines = _python(
        tmp_path,
        """
        with LoopGuard(threshold=0.1) as guard:
            print("detached", ENGINE.watchdog.detached)
            asyncio.run(asyncio.sleep(0.2))  # looked at: the watchdog reads its run queue
            print("files", watchdog_files())
            print("signals it takes", sorted(watchdog_signals()))
        print("events", guard.events)
        """,
    )
    expected = ["detached True", "files []", "signals it takes [9, 19]"]
    assert lines == [*expected, "events []"]


def test_loop_threads_leave_no_descriptor_behind(tmp_path: Path) -> None:
    """Each loop thread gets run-queue clocks (one read at its loop starts, one the watchdog
    reads): both close once its loop is over, each in the table it was opened in."""
    lines = _python(
        tmp_path,
        """
        def worker():
            asyncio.run(asyncio.sleep(0.12))  # long enough for the watchdog to look at it

        main = Path(f"/proc/self/task/{threading.get_native_id()}/fd")
        with LoopGuard(threshold=0.1) as guard:
            asyncio.run(asyncio.sleep(0))  # the main thread's clock, kept for the session
            before = sorted(os.listdir(main))
            for _ in range(12):
                thread = threading.Thread(target=worker)
                thread.start()
                thread.join()
            asyncio.run(asyncio.sleep(0.2))  # more looks: they close the workers' clocks
            print("main's table", "same" if sorted(os.listdir(main)) == before else "grew")
            print("watchdog's table", watchdog_files())
        print("events", guard.events)
        """,
    )
    assert lines == ["main's table same", "watchdog's table []", "events []"]


def test_the_watchdog_shares_the_file_table_once_trio_runs(tmp_path: Path) -> None:
    """Trio's runs are posted to through their wake-up socket: the detached watchdog is
    replaced by one on the process's table as the first trio run starts (importing trio is
    not enough: anyio's pytest plugin imports it wherever it is installed)."""
    pytest.importorskip("trio")
    lines = _python(
        tmp_path,
        """
        import trio

        async def blocks():
            time.sleep(0.2)

        with LoopGuard(threshold=0.1) as guard:
            print("imported", ENGINE.watchdog.detached)
            asyncio.run(asyncio.sleep(0))
            print("asyncio ran", ENGINE.watchdog.detached)
            trio.run(blocks)
            print("trio ran", ENGINE.watchdog.detached)
            watchdogs = [t for t in threading.enumerate() if t.name == ENGINE.watchdog.NAME]
            print("watchdogs", len(watchdogs))
        print("events", [e.frame.function for e in guard.events if e.frame])
        """,
    )
    expected = ["imported True", "asyncio ran True", "trio ran False", "watchdogs 1"]
    assert lines == [*expected, "events ['blocks']"]


def test_a_callback_ends_where_it_let_go_of_the_loop(pytester: pytest.Pytester) -> None:
    """0.17 s on the loop (under the 0.2 s threshold), then steps of C code that keep the GIL
    for 90 ms each: the watchdog's next look comes one of those late, and halfway to it is
    past the threshold. The beat posted behind the callback (onto the ready queue, without
    the loop's descriptors) marks where it ended."""
    pytester.makepyfile(
        """
        import asyncio, time

        start = time.perf_counter()
        sum(range(10**6))
        N = int(10**6 * 0.09 / (time.perf_counter() - start))

        async def test_short_then_gil_held():
            time.sleep(0.17)
            for _ in range(4):
                await asyncio.sleep(0)
                sum(range(N))
        """
    )
    result = run(pytester, "--loop-block-threshold=0.2")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*LoopBlockedError*")


def test_many_loop_runs_add_no_descriptor(tmp_path: Path) -> None:
    """Nothing of ours accumulates per loop run (a suite runs thousands)."""
    lines = _python(
        tmp_path,
        """
        with LoopGuard(threshold=0.1):
            for _ in range(300):
                asyncio.run(asyncio.sleep(0))
            print("watchdog's table", watchdog_files())
        """,
    )
    assert lines == ["watchdog's table []"]
