"""Trio: ``trio.run`` (pytest-trio) and guest runs (anyio's trio backend, qtrio).

Trio's run loop is the generator ``unrolled_run``; it runs one task step at a time with
``task.context.run(next_send_fn, next_send)``. ``next_send_fn`` (the task's ``coro.send``, a
new bound method each time the task is rescheduled) is a fresh object for every step, held by
the run loop's frame while that step runs: it is the unit, at no cost per step. An instrument
with only ``before_run``/``after_run`` tells the registry when a run starts and ends on its
thread (trio calls only the hooks an instrument overrides, so steps cost nothing extra).

Runs are found by wrapping the public entry points ``trio.run`` and
``trio.lowlevel.start_guest_run`` to add the instrument: now if trio is imported, else the
moment it is. A ``from trio import run`` bound before the session started is not seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from types import CodeType, FrameType, ModuleType
from typing import Any, Protocol

from .._base.frames import Stack
from .base import LoopRun, frames_until


class Entry(Protocol):
    """What the instrument tells (the registry), on the run's own thread."""

    def enter_trio(self, token: object) -> None: ...

    def leave(self, loop: Any) -> None: ...


def run_loop_code(trio: ModuleType) -> CodeType | None:
    """The code of trio's run loop generator, found by name where it lives."""
    core = getattr(getattr(trio, "_core", None), "_run", None)
    function = getattr(core, "unrolled_run", None)
    code = getattr(function, "__code__", None)
    return code if isinstance(code, CodeType) else None


class TrioRun:
    """One trio run on its thread; ``outer`` is the run it started inside (a host loop whose
    callbacks drive a guest run), asked about whatever runs outside trio's steps."""

    needs_beat = False

    def __init__(self, token: Any, code: CodeType, outer: LoopRun | None) -> None:
        self.loop, self._code, self._outer = token, code, outer
        self._frame: FrameType | None = None  # the run loop's, as last seen in a step
        self._outside = False  # the unit last found was the outer run's

    @property
    def backend(self) -> str:
        """The loop whose unit was found last: a host loop's callback is not trio's."""
        return self._outer.backend if self._outside and self._outer is not None else "trio"

    def unit(self, frames: Iterable[FrameType]) -> object | None:
        frames = tuple(frames)
        for depth, frame in enumerate(frames):
            if frame.f_code is self._code:
                # Between steps nothing runs above the run loop's frame: the loop is free.
                self._frame, self._outside = frame, False
                return frame.f_locals.get("next_send_fn") if depth else None
        self._outside = self._outer is not None
        return self._outer.unit(frames) if self._outer is not None else None

    def started(self, unit: object, since: float, now: float) -> float:
        batch, last = _batch_start(self._frame) if self._frame is not None else (None, False)
        if batch is None or not since <= batch <= now:
            return (since + now) / 2
        # A batch's only (or last) step began when the batch did, give or take the steps
        # before it. Any other may have begun long after: a batch can hold thousands of short
        # steps (a nursery's children all waking at once), and trio notes no time per step.
        return batch if last else (batch + now) / 2

    def stack(self, frames: Iterable[FrameType]) -> Stack:
        frames = tuple(frames)
        if self._outer is not None and not any(f.f_code is self._code for f in frames):
            return self._outer.stack(frames)
        return frames_until(frames, self._code)

    def post(self, callback: Callable[[], None]) -> None:
        # Through the run's wake-up socket: the watchdog shares the process's file table
        # from the first trio run on (``Watchdog.share_files``). A finished run runs nothing
        # more.
        with suppress(Exception):
            self.loop.run_sync_soon(callback)

    def debug(self, threshold: float) -> Callable[[], None] | None:
        return None  # trio has no slow-step debugging to turn on

    def close(self) -> None:
        self._frame = None


def _batch_start(run_loop: FrameType) -> tuple[float | None, bool]:
    """When the run loop began its current batch of steps, on our clock (``perf_counter``),
    and whether the step running now is the batch's last. The run loop reads its clock
    (``now``) once a batch, and trio's ``SystemClock`` is ``perf_counter`` plus an ``offset``;
    no step of the batch started earlier. (None, False) under a mock clock."""
    local = run_loop.f_locals
    clock = getattr(local.get("runner"), "clock", None)
    batch, offset, left = local.get("now"), getattr(clock, "offset", None), local.get("batch")
    if type(clock).__name__ != "SystemClock" or not isinstance(batch, float):
        return None, False
    if not isinstance(offset, float):
        return None, False
    return batch - offset, isinstance(left, list) and not left


def instrument(trio: ModuleType, entry: Entry) -> object:
    """A ``trio.abc.Instrument`` that announces each run it is added to."""
    current_token = trio.lowlevel.current_trio_token

    class LoopguardInstrument(trio.abc.Instrument):  # type: ignore[name-defined,misc]
        # Trio removes an instrument that raises (and logs it): ours must never, whatever
        # goes wrong in the registry; a run it misses is only unwatched. (try/except rather
        # than ``suppress``: free when nothing is raised, and this runs for every trio run.)
        def before_run(self) -> None:
            try:  # noqa: SIM105
                entry.enter_trio(current_token())
            except Exception:
                pass

        def after_run(self) -> None:
            try:  # noqa: SIM105
                entry.leave(current_token())
            except Exception:
                pass

        def __dir__(self) -> list[str]:
            # Trio reads ``dir(instrument)`` on every run to find the hooks it defines: the
            # two, not every attribute of the class (that took half our cost per run).
            return ["after_run", "before_run"]

    return LoopguardInstrument()


def with_instrument(original: Callable[..., Any], ours: object) -> Callable[..., Any]:
    """``original`` (``trio.run``, ``start_guest_run``) with ``ours`` among its instruments."""

    def entry_point(*args: Any, **kwargs: Any) -> Any:
        given = kwargs.get("instruments")
        kwargs["instruments"] = (*given, ours) if given else (ours,)
        return original(*args, **kwargs)

    entry_point.__wrapped__ = original  # type: ignore[attr-defined]
    entry_point.__name__ = getattr(original, "__name__", "run")
    entry_point.__doc__ = getattr(original, "__doc__", None)
    return entry_point
