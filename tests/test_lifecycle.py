"""The machinery lives for the session: idle between tests, and gone after it."""

from __future__ import annotations

import pytest

from conftest import run

# Counts what the watchdog did during each test and between tests, read from the engine.
COUNTING = """
import time
import pytest
from pytest_loopguard._core.engine import ENGINE

SPANS = []  # (kind, nodeid, looks, wakes, time) at each test's start and finish


def _mark(kind, nodeid):
    watchdog = ENGINE.watchdog
    SPANS.append((kind, nodeid, watchdog.looks, watchdog.wakes, time.perf_counter()))


def pytest_runtest_logstart(nodeid, location):
    _mark("start", nodeid)


def pytest_runtest_logfinish(nodeid, location):
    _mark("finish", nodeid)


def _sum(pairs, index):
    return sum(b[index] - a[index] for a, b in pairs)


def pytest_terminal_summary(terminalreporter):
    pairs = list(zip(SPANS, SPANS[1:]))
    between = [(a, b) for a, b in pairs if a[0] == "finish" and b[0] == "start"]
    during = [(a, b) for a, b in pairs if a[0] == "start" and b[0] == "finish"]
    sync = [p for p in during if "sync" in p[0][1]]
    idle = [p for p in during if "idle" in p[0][1]]
    tiny = [p for p in during if "tiny" in p[0][1]]
    worst_idle = max(b[2] - a[2] for a, b in idle)
    terminalreporter.write_line(
        f"WATCHDOG between-tests looks={_sum(between, 2)} | "
        f"sync looks={_sum(sync, 2)} wakes={_sum(sync, 3)} | "
        f"idle-async most-looks={worst_idle} | "
        f"tiny-async looks={_sum(tiny, 2)} wakes={_sum(tiny, 3)} "
        f"seconds={tiny[-1][1][4] - tiny[0][0][4]:.2f}"
    )
"""

TESTS = """
import asyncio, time, pytest

@pytest.mark.parametrize("i", range(300))
def test_sync(i):
    if i % 100 == 0:
        time.sleep(0.2)  # a slow sync test: the watchdog must not wake for it either

@pytest.mark.parametrize("i", range(5))
async def test_idle(i):
    await asyncio.sleep(0.2)  # the loop runs, waiting: looked at every half threshold

@pytest.mark.parametrize("i", range(300))
async def test_tiny(i):
    await asyncio.sleep(0)
"""


def test_the_watchdog_is_idle_between_tests_and_in_sync_tests(pytester: pytest.Pytester) -> None:
    """One thread for the session that sleeps without a timeout while no loop runs: it never
    looks between tests, never wakes for sync tests, and wakes for async tests in proportion to
    the time their loops run, not to their number."""
    pytester.makeconftest(COUNTING)
    pytester.makepyfile(test_counted=TESTS)
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=605)
    result.stdout.fnmatch_lines(["WATCHDOG between-tests looks=0 | sync looks=0 wakes=0 | *"])
    [summary] = [s for s in result.outlines if s.startswith("WATCHDOG ")]
    idle, tiny_looks, tiny_wakes, seconds = _counts(summary)
    assert 1 <= idle <= 6, summary  # 0.2 s of a running loop: about one look per 50 ms
    # 300 tests of about a millisecond each: at most two wake-ups per 50 ms of them (one that
    # a loop start makes, one at the end of the interval), nowhere near one a test.
    assert tiny_looks <= tiny_wakes <= 2 * seconds / 0.05 + 4, summary
    assert tiny_wakes < 300 / 3, summary


def _counts(summary: str) -> tuple[int, int, int, float]:
    def value(name: str, text: str = summary) -> str:
        return text.split(f"{name}=")[1].split()[0]

    tiny = summary.split("tiny-async ")[1]
    idle = int(value("most-looks"))
    return idle, int(value("looks", tiny)), int(value("wakes", tiny)), float(value("seconds"))


LEFTOVERS = """
import asyncio, gc, os, signal, sys, threading

import pytest
import uvloop  # imported before the session: its loop class gets patched


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    from pytest_loopguard._core.engine import ENGINE
    from pytest_loopguard._core.strict import HUB

    checks = {
        "engine": ENGINE.leftovers(),
        "hook": getattr(asyncio.events._set_running_loop, "__wrapped__", None) is not None,
        "uvloop": hasattr(uvloop.Loop.__dict__.get("run_forever"), "__wrapped__"),
        "thread": [t.name for t in threading.enumerate() if "loopguard" in t.name],
        "gc": [c for c in gc.callbacks if "pytest_loopguard" in repr(c)],
        "meta_path": [f for f in sys.meta_path if "pytest_loopguard" in repr(type(f))],
        "audit": (bool(HUB.recorders), HUB.patched),
        "signal": signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL,
        "schedstat": [f for f in _open_files() if f.endswith("/schedstat")],
    }
    print("AFTER-SESSION", checks)


def _open_files():
    found = []
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            found.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass  # the listing's own descriptor
    return found
"""


def test_nothing_remains_after_the_session(pytester: pytest.Pytester) -> None:
    """After pytest_unconfigure: no thread, patch, gc callback, import hook, signal handler or
    descriptor (loops in worker threads included), and strict mode's audit hook (which Python
    cannot remove) has nothing to call."""
    pytest.importorskip("uvloop")
    pytester.makeconftest(LEFTOVERS)
    pytester.makepyfile(
        """
        import asyncio, threading, time

        async def test_blocks():
            time.sleep(0.2)

        def test_uvloop_imported_in_a_test():
            import uvloop
            uvloop.run(asyncio.sleep(0))

        def test_loops_in_threads():
            for _ in range(5):
                thread = threading.Thread(target=asyncio.run, args=(asyncio.sleep(0.06),))
                thread.start()
                thread.join()
        """
    )
    # A process of its own: strict mode's audit hook stays in a process for good.
    args = ("--loop-block-strict", "--loop-block-timeout=5", "-s")
    result = run(pytester, *args, subprocess=True)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "AFTER-SESSION {'engine': [], 'hook': False, 'uvloop': False, 'thread': [], "
            "'gc': [], 'meta_path': [], 'audit': (False, False), 'signal': True, "
            "'schedstat': []}"
        ]
    )


def test_a_lone_guard_owns_the_machinery_while_no_session_does() -> None:
    import asyncio
    import threading
    import time

    from pytest_loopguard import LoopGuard
    from pytest_loopguard._core.engine import ENGINE

    async def blocks() -> None:
        time.sleep(0.2)

    assert ENGINE.leftovers() == []
    with LoopGuard(threshold=0.1) as guard:
        assert ENGINE.installed
        asyncio.run(blocks())
    assert [e.frame.function for e in guard.events if e.frame] == ["blocks"]
    assert ENGINE.leftovers() == []
    assert "pytest-loopguard-watchdog" not in [t.name for t in threading.enumerate()]
