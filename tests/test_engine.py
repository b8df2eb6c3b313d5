"""The engine on its own, without pytest hooks: LoopGuard around plain asyncio code."""

from __future__ import annotations

import asyncio
import pickle
import sys
import threading
import time

import pytest

import pytest_loopguard
from pytest_loopguard import LoopBlockedError, LoopGuard
from pytest_loopguard._base import hints as _hints
from pytest_loopguard._core.engine import ENGINE


async def _blocks(seconds: float) -> None:
    await asyncio.sleep(0)
    time.sleep(seconds)


def test_records_a_block_with_its_line() -> None:
    with LoopGuard(threshold=0.1) as guard:
        asyncio.run(_blocks(0.25))
    [event] = guard.events
    assert 0.2 <= event.duration < 0.5
    assert event.frame is not None
    assert event.frame.function == "_blocks"
    assert event.frame.line == "time.sleep(seconds)"
    assert event.hint is _hints.SLEEP
    assert event.cpu_bound is False


def test_clean_code_records_nothing() -> None:
    async def main() -> None:
        await asyncio.gather(*(asyncio.sleep(0.05) for _ in range(100)))
        await asyncio.to_thread(time.sleep, 0.2)

    with LoopGuard(threshold=0.1) as guard:
        asyncio.run(main())
    assert guard.events == []


def test_seed_profile_loop_case() -> None:
    """The seed's profile_loop.py: a blocking coroutine in gather delays asyncio.sleep(0.1)."""

    async def blocking_route_simulation() -> None:
        time.sleep(0.2)

    async def main() -> None:
        await asyncio.gather(blocking_route_simulation(), asyncio.sleep(0.1))

    with LoopGuard(threshold=0.1) as guard:
        asyncio.run(main())
    [event] = guard.events
    assert event.frame is not None
    assert event.frame.function == "blocking_route_simulation"


def test_guard_entered_inside_a_running_loop() -> None:
    async def main() -> list[pytest_loopguard.BlockEvent]:
        with LoopGuard(threshold=0.1) as guard:
            await asyncio.sleep(0)
            time.sleep(0.25)
            await asyncio.sleep(0.02)
        return guard.events

    events = asyncio.run(main())
    assert len(events) == 1


def test_loops_in_worker_threads_are_watched() -> None:
    with LoopGuard(threshold=0.1) as guard:
        worker = threading.Thread(target=asyncio.run, args=(_blocks(0.25),), name="worker")
        worker.start()
        worker.join()
    [event] = guard.events
    assert event.thread == "worker"


def test_allow_marks_blocks_as_allowed() -> None:
    async def main(guard: LoopGuard) -> None:
        with guard.allow():
            time.sleep(0.2)

    with LoopGuard(threshold=0.1) as guard:
        asyncio.run(main(guard))
    [event] = guard.events
    assert event.allowed


def test_nothing_is_left_after_exit() -> None:
    original = asyncio.events._set_running_loop
    with LoopGuard(threshold=0.1):
        assert ENGINE.installed
        asyncio.run(asyncio.sleep(0.02))
    assert asyncio.events._set_running_loop is original
    assert ENGINE.leftovers() == []
    assert "pytest-loopguard-watchdog" not in [t.name for t in threading.enumerate()]


def test_nested_guards_both_see_blocks() -> None:
    with LoopGuard(threshold=0.1) as outer:
        with LoopGuard(threshold=0.2) as inner:
            asyncio.run(_blocks(0.15))
        assert ENGINE.installed
    assert len(outer.events) == 1
    assert inner.events == []


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "0.1", None])
def test_bad_threshold_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="threshold must be a finite number of seconds > 0"):
        LoopGuard(threshold=bad)  # type: ignore[arg-type]


def test_events_and_errors_pickle() -> None:
    with LoopGuard(threshold=0.1) as guard:
        asyncio.run(_blocks(0.2))
    event = guard.events[0]
    assert pickle.loads(pickle.dumps(event)) == event
    error = LoopBlockedError(pytest_loopguard.render([event]), [event])
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert copy.events == (event,)


def test_render_lists_worst_first() -> None:
    with LoopGuard(threshold=0.1) as guard:
        asyncio.run(_blocks(0.15))
        asyncio.run(_blocks(0.3))
    text = pytest_loopguard.render(guard.events).splitlines()
    assert text[0].startswith("LoopBlockedError: event loop blocked for 0.3")
    assert "1 more block(s) of the event loop in this phase:" in text


def test_public_api_does_not_import_pytest() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pytest_loopguard; "
        "assert 'pytest' not in sys.modules and 'sqlalchemy' not in sys.modules, "
        "sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("line", "callees", "ratio", "key"),
    [
        ("time.sleep(1)", (), 0.0, "sleep"),
        ("requests.get(url)", ("requests.api", "requests.sessions"), 0.0, "http"),
        ("urlopen(url).read()", ("urllib.request",), 0.0, "http"),
        ("session.execute(q)", ("sqlalchemy.orm.session",), 0.0, "sqlalchemy"),
        ("data = open(p).read()", (), 0.0, "file"),
        ("Path(p).read_text()", ("pathlib",), 0.0, "file"),
        ("total += i * i", (), 0.9, "cpu"),
        ("json.dumps(big)", ("json",), 0.9, "cpu"),
        ("subprocess.run(cmd)", ("subprocess",), 0.0, "subprocess"),
        ("sock.recv(10)", (), 0.0, "socket"),
        ("socket.getaddrinfo('x', 80)", (), 0.0, "dns"),
        ("lock.acquire()", (), 0.0, "lock"),
        ("fut.result()", ("concurrent.futures._base",), 0.0, "future"),
        ("mystery()", (), 0.0, "blocking"),
        ("mystery()", (), None, "blocking"),
    ],
)
def test_hint_table(line: str, callees: tuple[str, ...], ratio: float | None, key: str) -> None:
    assert _hints.classify(line, callees, ratio).key == key


def test_c_call_that_keeps_the_gil_is_caught_at_its_line() -> None:
    start = time.perf_counter()
    sum(range(2_000_000))
    n = int(2_000_000 * 0.3 / max(time.perf_counter() - start, 1e-4))  # about 0.3 s of C

    async def main() -> None:
        await asyncio.sleep(0)
        total = sum(range(n))
        assert total > 0

    with LoopGuard(threshold=0.1) as guard:
        asyncio.run(main())
    [event] = guard.events
    assert event.frame is not None
    assert event.frame.line == "total = sum(range(n))"
    assert event.cpu_bound is True
    assert event.hint is _hints.CPU


def test_a_collection_during_the_gc_accounting_does_not_crash() -> None:
    """The gc callback records collections while the guard sums them for a verdict; a
    collection can start inside that sum (it allocates). A crash here failed a test once."""
    import gc

    with LoopGuard(threshold=0.1):
        ident = threading.get_ident()
        for _ in range(300):
            ENGINE.gc.on_gc("start", {})
            ENGINE.gc.on_gc("stop", {})
        old = gc.get_threshold()
        gc.set_threshold(1)
        try:
            for _ in range(2000):
                assert ENGINE.gc.collecting(ident, 0.0, 1e12)[0] >= 0
        finally:
            gc.set_threshold(*old)


def test_only_a_batch_s_first_callback_is_timed_from_the_batch_start() -> None:
    """A later callback of a batch began after the ones before it: timing it from the batch's
    start would add their time to its block (a false alarm when they were long)."""
    from pytest_loopguard._backends.asyncio import RUN_CODE, AsyncioRun
    from pytest_loopguard._base import clocks as _clocks

    loop = asyncio.new_event_loop()
    run, since, seen = AsyncioRun(loop), _clocks.now(), []

    def callback(seconds: float) -> None:
        began = _clocks.now()  # as a look right after it began would see it
        frame = sys._getframe()
        while frame.f_code is not RUN_CODE:
            frame = frame.f_back  # type: ignore[assignment]
        seen.append((began, run.started(frame, since, began)))
        time.sleep(seconds)

    loop.call_soon(callback, 0.08)  # both in the loop's first batch
    loop.call_soon(callback, 0.0)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    (first_began, first), (second_began, second) = seen
    assert first <= first_began < first + 0.01  # the batch's start: exact
    assert first + 0.03 < second <= second_began  # halfway from the batch's start
