"""Clocks: wall time, a thread's CPU time, its wait for a CPU, and garbage-collection pauses."""

from __future__ import annotations

import os
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
    """The recent garbage collections of each thread, while the engine is watching.

    A collection stalls only its own thread's loop. Spans are tuples, replaced rather than
    grown: a collection can start while a reader sums them (it allocates).
    """

    def __init__(self) -> None:
        self.watching = False
        self._spans: dict[int, tuple[tuple[float, float], ...]] = {}
        self._started: float | None = None

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """The ``gc.callbacks`` entry; runs with the GIL held, so needs no lock."""
        if not self.watching:
            return
        if phase == "start":
            self._started = now()
        elif self._started is not None:
            ident = threading.get_ident()
            recent = self._spans.get(ident, ())[-255:]
            self._spans[ident] = (*recent, (self._started, now()))
            self._started = None

    def collecting(self, ident: int, start: float, end: float) -> float:
        """Seconds of garbage collection on thread ``ident`` between ``start`` and ``end``."""
        spans = self._spans.get(ident, ())
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)

    def clear(self) -> None:
        self._spans.clear()
        self._started = None
