"""Loops that run callbacks from C: uvloop (and any loop class listed in ``_loops.NATIVE``).

No Python frame marks a callback's start, so the unit is the frame right above the one that
entered the loop (the ``run_forever`` wrapper): a callback's frame, or a task's coroutine frame,
which stays the same object across all the task's steps. A periodic tick on the loop notes when
it was last free, which bounds the start of whatever runs after it and ends a unit for good.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from types import FrameType
from typing import Any

from ._backend import frames_until
from ._frames import Stack


class NativeRun:
    """One run of a C-implemented loop on its thread, entered at frame ``base``."""

    needs_beat = True

    def __init__(self, loop: Any, base: FrameType, tick: float, beat: Callable[[], None]) -> None:
        self.loop, self._base, self._tick = loop, base, tick
        self._ticker = _Ticker(loop, tick, beat)

    def unit(self, top: FrameType | None) -> FrameType | None:
        above, frame = None, top
        while frame is not None and frame is not self._base:
            above, frame = frame, frame.f_back
        return above if frame is not None else None

    def started(self, unit: object, since: float, now: float) -> float:
        # ``since`` is at most one tick old unless this unit held the loop.
        return since + min(now - since, self._tick) / 2

    def stack(self, top: FrameType | None) -> Stack:
        return frames_until(top, base=self._base)

    def post(self, callback: Callable[[], None]) -> None:
        with suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback)

    def debug(self, threshold: float) -> Callable[[], None] | None:
        return None  # uvloop has no slow-callback debugging to turn on

    def close(self) -> None:
        self._ticker.stop()


class _Ticker:
    """A callback every few milliseconds that notes when the loop was free.

    uvloop keeps no note of when its current batch of callbacks began that another thread can
    read, and a busy uvloop loop can keep the watchdog from the GIL for a long time (it drops
    the GIL on every iteration, so the watchdog's wait never times out). The last tick bounds
    the start of any callback seen afterwards, whatever the watchdog missed.
    """

    def __init__(self, loop: Any, period: float, beat: Callable[[], None]) -> None:
        self._loop, self._period, self._beat = loop, period, beat
        self._stopped, self._owner = False, threading.get_ident()
        self._handle = loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._beat()
        if not self._stopped:
            self._handle = self._loop.call_later(self._period, self._tick)

    def stop(self) -> None:
        """The next tick is the last; cancelled at once when called on the loop's thread (a
        handle is not safe to cancel from another one)."""
        self._stopped = True
        if threading.get_ident() == self._owner:
            self._handle.cancel()
