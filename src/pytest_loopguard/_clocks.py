"""Clocks: wall time, a thread's CPU time, its wait for a CPU, and garbage-collection pauses."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

# Captured at import, so that a test patching time.perf_counter cannot skew a verdict.
now = time.perf_counter
_monotonic = time.monotonic


def loop_time_offset() -> float:
    """What to add to a stdlib loop's clock (time.monotonic) to move a reading onto ``now``.

    Read back to back: an offset from an earlier reading would shift it by the delay.
    """
    return now() - _monotonic()


process_cpu = time.process_time  # all threads of the process
own_cpu = time.thread_time  # the calling thread's (the watchdog's, to leave its own work out)
CpuClock = Callable[[], float]
Collecting = Callable[[float, float], float]  # seconds of GC on a thread between two times


def cpu_clock(ident: int) -> CpuClock | None:
    """A reader of another thread's CPU time, where the platform offers one."""
    try:
        clock_id = time.pthread_getcpuclockid(ident)
        time.clock_gettime(clock_id)
    except (AttributeError, OSError):
        return None
    return partial(time.clock_gettime, clock_id)  # no Python frame: read at every loop start


def read(clock: CpuClock | None) -> float | None:
    if clock is None:
        return None
    try:
        return clock()
    except OSError:  # the thread has ended
        return None


class RunQueueClock:
    """Linux: how long a thread has waited, runnable, for a CPU (``/proc/.../schedstat``).

    That time is the machine's load, not the test's code: a loaded CI runner can stretch a
    40 ms callback past the threshold while the thread sits in the run queue.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, native_id: int) -> RunQueueClock | None:
        try:
            return cls(os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY))
        except (OSError, ValueError):
            return None

    def read(self) -> float | None:
        try:
            return int(os.pread(self._fd, 96, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        with suppress(OSError):
            os.close(self._fd)


class GcLog:
    """The recent automatic garbage collections of each thread, while the engine is watching.

    A collection stalls only its own thread's loop. One that a callback's own allocations set
    off is part of what the callback costs, and counts in its duration; but a callback that is
    short without it is not a block (a collection merely landed in it), so the verdict leaves
    these spans out. An explicit ``gc.collect()`` is the code's own call: never left out, and
    not kept here. Spans are tuples, replaced rather than grown: a collection can start while a
    reader sums them (it allocates).
    """

    def __init__(self) -> None:
        self.watching = False
        self._spans: dict[int, tuple[tuple[float, float], ...]] = {}
        # Collections running now, by thread: (start, whether gc.collect() was called).
        self._running: dict[int, tuple[float, bool]] = {}

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """The ``gc.callbacks`` entry; runs with the GIL held, so needs no lock."""
        if not self.watching:
            return
        ident = threading.get_ident()
        if phase == "start":
            self._running[ident] = (now(), info.get("generation") == 2 and _explicit())
            return
        started = self._running.pop(ident, None)
        if started is not None and not started[1]:
            recent = self._spans.get(ident, ())[-255:]
            self._spans[ident] = (*recent, (started[0], now()))

    def automatic(self, ident: int) -> bool:
        """Whether an automatic collection runs on thread ``ident`` right now: frames a sample
        finds then (finalizers, gc callbacks) ran only because of it, and name no line."""
        running = self._running.get(ident)
        return running is not None and not running[1]

    def collecting(self, ident: int, start: float, end: float) -> float:
        """Seconds of automatic collection on thread ``ident`` between ``start`` and ``end``."""
        spans = self._spans.get(ident, ())
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)

    def clear(self) -> None:
        self._spans.clear()
        self._running.clear()


def _explicit() -> bool:
    """Whether the collection starting now was asked for by the Python code on this thread
    (``gc.collect()`` makes a full collection; the frame that called it names ``collect``)."""
    try:
        caller = sys._getframe(2)  # 0: here, 1: on_gc, 2: the code running when it started
    except ValueError:
        return False
    return "collect" in caller.f_code.co_names
