"""The stdlib asyncio loop (and every ``BaseEventLoop`` subclass, nest_asyncio's included).

Each callback runs in a new ``Handle._run`` frame: that frame *is* the unit of work, so seeing
the same frame object on two looks proves the same callback still holds the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import Any

from .._base import clocks
from .._base.frames import Stack
from .base import frames_until

RUN_CODE: CodeType = asyncio.events.Handle._run.__code__


class AsyncioRun:
    """One run of a stdlib loop on its thread."""

    needs_beat = False
    backend = "asyncio"

    def __init__(self, loop: Any) -> None:
        self.loop = loop

    def unit(self, frames: Iterable[FrameType]) -> FrameType | None:
        for frame in frames:
            if frame.f_code is RUN_CODE:
                return frame
            if frame.f_code.co_name == "_run_once":
                # A callback that runs the loop itself (nest_asyncio's nested
                # ``run_until_complete``), and the loop is between callbacks: free, not held.
                return None
        return None

    def started(self, unit: object, since: float, now: float) -> float:
        # The loop notes in ``_run_once`` when its current batch of callbacks began: the
        # batch's first callback began then, give or take microseconds. A later one began
        # after the ones before it, which may have taken up to a look interval between them.
        batch, first = _batch_start(unit) if isinstance(unit, FrameType) else (None, False)
        if batch is None or not since <= batch <= now:
            return (since + now) / 2
        return batch if first else (batch + now) / 2

    def stack(self, frames: Iterable[FrameType]) -> Stack:
        return frames_until(frames, RUN_CODE)

    def post(self, callback: Callable[[], None]) -> None:
        # Onto the loop's ready queue (a deque: one append is atomic), as ``call_soon`` does,
        # which raises off the loop's thread in debug mode. No wake-up, which would write to
        # the loop's socket, not in the watchdog's file table (``_filetable``): a unit holds
        # the loop, and the loop does not wait for I/O while its ready queue has work.
        ready = getattr(self.loop, "_ready", None)
        if isinstance(ready, deque) and not self.loop.is_closed():
            ready.append(asyncio.Handle(callback, (), self.loop))

    def debug(self, threshold: float) -> Callable[[], None] | None:
        loop, was, slow = self.loop, self.loop.get_debug(), self.loop.slow_callback_duration
        loop.set_debug(True)
        loop.slow_callback_duration = threshold

        def restore() -> None:
            if not loop.is_closed():
                loop.set_debug(was)
            loop.slow_callback_duration = slow

        return restore

    def close(self) -> None:
        pass


def _batch_start(run_frame: FrameType) -> tuple[float | None, bool]:
    """When the loop began the batch ``run_frame``'s callback belongs to, on our clock, and
    whether that callback is the batch's first; (None, False) when the loop notes no batch."""
    caller = run_frame.f_back
    # By name: nest_asyncio's re-implementation of _run_once keeps the same ``end_time``.
    if caller is None or caller.f_code.co_name != "_run_once":
        return None, False
    local = caller.f_locals
    end_time, index = local.get("end_time"), local.get("i")
    if not isinstance(end_time, float):
        return None, False
    # ``i`` counts the batch's callbacks in the stdlib loop (3.10-3.13); a loop that keeps
    # no count (nest_asyncio) is taken as before: from the batch's start.
    return end_time + clocks.loop_time_offset(), not isinstance(index, int) or index == 0
