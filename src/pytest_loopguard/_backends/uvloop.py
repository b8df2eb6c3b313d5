"""Loops that run callbacks from C: uvloop (and any loop class listed in ``_loops.NATIVE``),
and how their classes are found: patched now if imported, or the moment they are.

No Python frame marks a callback's start, so the unit is the frame right above the one that
entered the loop (the ``run_forever`` wrapper): a callback's frame, or a task's coroutine frame,
which stays the same object across all the task's steps. A periodic tick on the loop notes when
it was last free, which bounds the start of whatever runs after it and ends a unit for good.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import threading
from collections.abc import Callable, Iterable, Sequence
from types import FrameType, ModuleType
from typing import Any

from .._base.frames import Stack
from .base import frames_until


class NativeRun:
    """One run of a C-implemented loop on its thread, entered at frame ``base``."""

    needs_beat = True

    def __init__(self, loop: Any, base: FrameType, tick: float, beat: Callable[[], None]) -> None:
        self.loop, self._base, self._tick = loop, base, tick
        self.backend: str = type(loop).__module__.split(".")[0]  # uvloop, winloop
        self._ticker = _Ticker(loop, tick, beat)

    def unit(self, frames: Iterable[FrameType]) -> FrameType | None:
        above = None
        for frame in frames:
            if frame is self._base:
                return above
            above = frame
        return None

    def started(self, unit: object, since: float, now: float) -> float:
        # ``since`` is at most one tick old unless this unit held the loop.
        return since + min(now - since, self._tick) / 2

    def stack(self, frames: Iterable[FrameType]) -> Stack:
        return frames_until(frames, base=self._base)

    def post(self, callback: Callable[[], None]) -> None:
        # Nothing: the ticker ends the block (``needs_beat``). A unit that held the loop for
        # half the threshold held it past a tick (a tenth of it), which then runs first thing
        # after it, with the timers, before anything posted would. ``call_soon_threadsafe``
        # writes to libuv's wake-up descriptor, which the watchdog's own file table
        # (``_filetable``) lacks, and libuv aborts the process when such a write fails.
        return

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


class ImportWatch(importlib.abc.MetaPathFinder):
    """Patches a C loop class the moment its module is first imported (inside a test too)."""

    def __init__(self, names: set[str], on_import: Callable[[ModuleType], None]) -> None:
        self._names, self._on_import = names, on_import

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ThenPatch(spec.loader, self._on_import)
        return spec


class _ThenPatch(importlib.abc.Loader):
    """Runs the real loader, puts it back on the module, then patches the loop class."""

    def __init__(self, inner: Any, after: Callable[[ModuleType], None]) -> None:
        self._inner, self._after = inner, after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self._inner.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._inner
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        self._inner.exec_module(module)
        self._after(module)
