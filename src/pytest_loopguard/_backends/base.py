"""The seam between the watchdog and an event loop implementation: one small interface.

A ``LoopRun`` is one run of one loop on one thread (from ``run_forever`` starting to it
returning). The watchdog asks it only what differs between loop implementations: which unit of
work (callback, task step) runs now, since when, where that unit's own stack ends, how to get a
callback run on the loop from another thread, and how to turn its debug mode on. Everything
else — sampling, timing, verdicts, the hang interrupt — is the same for every loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, Protocol

from .._base.frames import Stack


class LoopRun(Protocol):
    """What the watchdog needs from a running loop; one module per implementation."""

    loop: Any
    # The unit's identity can outlive one unit of work (uvloop reuses a task's coroutine frame
    # for all its steps): a callback posted behind it, or a periodic tick, must confirm its end.
    needs_beat: bool

    @property
    def backend(self) -> str:
        """The loop the unit found last runs on (asyncio, uvloop, trio): its fixes fit it."""

    def unit(self, frames: Iterable[FrameType]) -> object | None:
        """The identity of the unit of work running now, given the thread's frames innermost
        first (``_greenlets.walk``); None while the loop waits for work."""

    def started(self, unit: object, since: float, now: float) -> float:
        """When ``unit``, first seen at ``now``, began; it was not running at ``since``."""

    def stack(self, frames: Iterable[FrameType]) -> Stack:
        """The running unit's frames, innermost first, down to where the loop called into it."""

    def post(self, callback: Callable[[], None]) -> None:
        """From the watchdog: have ``callback`` run on the loop once the unit running now lets
        go of it. Without the loop's descriptors: the watchdog's file table may be its own."""

    def debug(self, threshold: float) -> Callable[[], None] | None:
        """Turn on the loop's own slow-callback debugging; returns how to undo it."""

    def close(self) -> None:
        """The run is over, or the engine stops watching it (from any thread)."""


def frames_until(
    frames: Iterable[FrameType], code: object = None, base: FrameType | None = None
) -> Stack:
    """``frames`` up to, not including, the first running ``code`` or ``base``."""
    stack: Stack = []
    for frame in frames:
        if frame.f_code is code or frame is base:
            break
        stack.append((frame, frame.f_lineno or 0))
    return stack
