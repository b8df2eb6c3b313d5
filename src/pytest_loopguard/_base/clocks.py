"""Clocks: wall time, a thread's CPU time, its wait for a CPU, and garbage-collection pauses."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, ClassVar

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
# Seconds and count of automatic collections on a thread between two times.
Collecting = Callable[[float, float], tuple[float, float]]


def cpu_clock(ident: int) -> CpuClock | None:
    """A reader of another thread's CPU time, where the platform offers one."""
    try:
        clock_id = time.pthread_getcpuclockid(ident)
        time.clock_gettime(clock_id)
    except (AttributeError, OSError):
        return None
    return partial(time.clock_gettime, clock_id)  # no Python frame: read at every loop start


_SCHEDSTAT = 96  # bytes: three decimal counters


@cache
def gil_holding_pread() -> Callable[[int, int, int], bytes] | None:
    """libc's pread, called without letting go of the GIL; None where ctypes cannot.

    ``os.pread`` lets go of it, and the watchdog then waits for a busy loop thread to hand it
    back (a switch interval, 5 ms) and costs that thread a hand-off. A /proc read never waits:
    holding the GIL through it is cheaper, so the watchdog can read at every look.
    """
    try:
        import ctypes

        pread = ctypes.PyDLL(None).pread  # PyDLL: the GIL stays held through the call
    except (ImportError, OSError, AttributeError):
        return None
    pread.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long)
    pread.restype = ctypes.c_ssize_t

    def read(fd: int, size: int, offset: int) -> bytes:
        buffer = ctypes.create_string_buffer(size)  # one a call: two threads may read at once
        got = pread(fd, buffer, size, offset)
        if got < 0:
            raise OSError(f"pread({fd}) failed")
        return buffer.raw[:got]

    return read


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

    def read(self, *, keep_gil: bool = True) -> float | None:
        """``keep_gil=False`` on the loop's own thread: it saves importing ctypes in a run
        whose loops are never long enough for the watchdog to look."""
        pread = (gil_holding_pread() or os.pread) if keep_gil else os.pread
        try:
            return int(pread(self._fd, _SCHEDSTAT, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        with suppress(OSError):
            os.close(self._fd)


@dataclass(eq=False)
class RunQueue:
    """A loop thread's run-queue wait: the last reading, and the clock the thread itself reads.

    A block counts its wait from the reading before it began, like its CPU time, so that one
    the watchdog could not look at (C code kept the GIL) has its wait left out too. Read at
    every look (by the watchdog, on its own clock: see ``QueueClocks``), and at a loop start
    when older than ``refresh``.
    """

    clock: RunQueueClock | None = None  # opened in the loop threads' file table
    tried: bool = False
    last: tuple[float, float] | None = None  # (seconds waited so far, when read)
    refresh: ClassVar[float] = 0.05

    def note(self, waited: float | None, now: float) -> float | None:
        self.last = None if waited is None else (waited, now)
        return waited

    def refresh_at_start(self, native_id: int | None, now: float) -> None:
        """Unless a look read it lately: a read costs a µs or two, a test starts a few loops.
        ``os.pread`` here: it saves importing ctypes in a run whose loops are never long
        enough for the watchdog to look."""
        if self.last is not None and now - self.last[1] <= self.refresh:
            return
        if self.clock is None and not self.tried and native_id is not None:
            self.tried = True
            self.clock = RunQueueClock.open(native_id)
        self.note(None if self.clock is None else self.clock.read(keep_gil=False), now)

    def close(self) -> None:
        """On a thread that shares the loop threads' file table (not the watchdog's)."""
        if self.clock is not None:
            self.clock.close()
            self.clock = None


class QueueClocks:
    """The run-queue clocks the watchdog reads, one a loop thread record: opened in its own
    file table (``_filetable``), so closed only by it, once their record is gone."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[Any, RunQueueClock | None]] = {}  # id(record): both

    def read(self, record: Any, native_id: int | None) -> float | None:
        entry = self._open.get(id(record))
        if entry is None or entry[0] is not record:
            clock = None if native_id is None else RunQueueClock.open(native_id)
            entry = self._open[id(record)] = (record, clock)
        return None if entry[1] is None else entry[1].read()

    def sweep(self, records: dict[int, Any]) -> None:
        """Close the clocks of the records no longer in ``records`` (by ident)."""
        if len(self._open) <= len(records):
            # Most often every one of ours is still there; else a gone one lingers only until
            # one more goes (never more of ours than there are records).
            return
        for key, (record, clock) in tuple(self._open.items()):
            if records.get(record.ident) is not record:
                del self._open[key]
                if clock is not None:
                    clock.close()

    def close(self) -> None:
        self.sweep({})


# One collection of each generation may have merely landed in a block: its counter was nearly
# full when the callback began, and a big heap makes a full collection long whatever set it
# off. A second one of the same generation was set off by the callback's own allocations.


class GcLog:
    """The recent automatic garbage collections of each thread, while the engine is watching.

    A collection stalls only its own thread's loop. The collections a callback's allocations
    set off are part of what it costs, and count in its duration. But one can also land in a
    callback that is short without it (the heap was big, the counters nearly full): the spans
    kept here let the verdict tell the two apart (``Measured.counts``). An explicit
    ``gc.collect()`` is the code's own call: never left out, and not kept here. Spans are
    tuples, replaced rather than grown: a collection can start while a reader sums them.
    """

    def __init__(self) -> None:
        self.watching = False
        self._spans: dict[int, tuple[tuple[float, float, int], ...]] = {}  # start, end, generation
        # Collections running now, by thread: (start, the frame that called gc.collect() or
        # None for an automatic one, the frame that was running when it started).
        self._running: dict[int, tuple[float, Any, Any]] = {}
        # Told of each explicit collection as it ends, on its thread (start, end, caller): the
        # watchdog cannot look during one, and the callback may end right after it.
        self.on_explicit: Callable[[float, float, Any], None] | None = None

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """The ``gc.callbacks`` entry; runs with the GIL held, so needs no lock."""
        if not self.watching:
            return
        ident = threading.get_ident()
        if phase == "start":
            trigger = _caller()
            explicit = info.get("generation") == 2 and _asked_for(trigger)
            self._running[ident] = (now(), trigger if explicit else None, trigger)
            return
        started = self._running.pop(ident, None)
        if started is None:
            return
        if started[1] is None:
            recent = self._spans.get(ident, ())[-255:]
            span = (started[0], now(), info.get("generation", 2))
            self._spans[ident] = (*recent, span)
        elif self.on_explicit is not None:
            self.on_explicit(started[0], now(), started[1])

    def sampling_top(self, ident: int, top: Any) -> Any:
        """Where a sample of thread ``ident``, now at ``top``, should start: during a
        collection, at the frame that set it off, since the frames above it (finalizers,
        ``gc.callbacks``) ran only because it happened and name no line of the code's."""
        running = self._running.get(ident)
        if running is not None:
            return running[2]
        # A gc callback runs before our start or after our stop (the list's order).
        codes = {getattr(getattr(cb, "__func__", cb), "__code__", None) for cb in gc.callbacks}
        return top.f_back if top is not None and top.f_code in codes else top

    def collecting(self, ident: int, start: float, end: float) -> tuple[float, float]:
        """Seconds of automatic collections on ``ident`` between ``start`` and ``end``, and
        of the longest one of each generation: those may merely have landed there."""
        longest: dict[int, float] = {}
        total = 0.0
        for a, b, generation in self._spans.get(ident, ()):
            if b > start and a < end:
                seconds = min(b, end) - max(a, start)
                total += seconds
                longest[generation] = max(seconds, longest.get(generation, 0.0))
        return total, sum(longest.values())

    def clear(self) -> None:
        self._spans.clear()
        self._running.clear()


def _caller() -> Any:
    """The frame that was running when the collection starting now began."""
    try:
        return sys._getframe(2)  # 0: here, 1: on_gc, 2: the code running when it started
    except ValueError:
        return None


def _asked_for(frame: Any) -> bool:
    """Whether ``frame`` called ``gc.collect()`` (a full collection, from a frame that names
    ``collect``) rather than allocated its way into an automatic one."""
    return frame is not None and "collect" in frame.f_code.co_names
