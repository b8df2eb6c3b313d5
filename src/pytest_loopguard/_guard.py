"""``LoopGuard``: the public face of the engine, usable around any asyncio code.

Entering a guard leases the shared machinery (set up by the first lease, kept by the pytest
session for its whole run) and subscribes the guard: the units of work that begin on any loop
from then on are recorded for it, labelled with its current phase and fixture.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import FrameType, TracebackType

from . import _strict
from ._engine import ENGINE
from ._events import BlockEvent
from ._frames import Stack


class LoopGuard:
    """Record every unit of work that holds an event loop for ``threshold`` seconds or more.

    ``with LoopGuard(threshold=0.1) as guard: asyncio.run(main())``, then read ``guard.events``.
    Works for loops started inside the ``with`` block in any thread, for the loop running in the
    current thread when the block is entered, and for loops that other threads run (taken over:
    the unit such a loop is in when the block is entered is not counted). ``debug=True`` also
    turns on asyncio's debug mode on loops started inside it, with ``slow_callback_duration``
    set to the threshold. ``timeout`` interrupts a unit stuck that long (``LoopHangError``);
    ``strict`` also records known blocking calls on a loop thread, however short.
    """

    def __init__(
        self,
        threshold: float = 0.1,
        *,
        debug: bool = False,
        timeout: float | None = None,
        strict: bool = False,
    ) -> None:
        if not _positive(threshold):
            raise ValueError(f"threshold must be a finite number of seconds > 0, got {threshold!r}")
        if timeout is not None and not (_positive(timeout) and timeout > threshold):
            raise ValueError(f"timeout must be a number of seconds > threshold, got {timeout!r}")
        self.threshold = float(threshold)
        self.timeout = timeout
        self.debug = debug
        self.phase: str | None = None
        self.fixture: str | None = None
        self.calls = _strict.CallLog(self, ENGINE.filter, ENGINE.lock) if strict else None
        self._events: list[BlockEvent] = []
        self._allow_depth: dict[int, int] = {}
        self._active = False

    @property
    def events(self) -> list[BlockEvent]:
        """The blocks recorded so far, in the order they ended."""
        if self._active:
            ENGINE.events_of(self)
        return list(self._events)

    @property
    def context(self) -> tuple[str | None, str | None]:
        """The (phase, fixture) label that new blocks get."""
        return self.phase, self.fixture

    def set_context(self, phase: str | None = None, fixture: str | None = None) -> None:
        """Label the blocks that start from now on (the plugin passes its test phase here)."""
        changed = phase != self.phase
        self.phase, self.fixture = phase, fixture
        if changed and self._active and ENGINE.busy():
            ENGINE.relabel(self)

    def close_ongoing(self) -> None:
        """End of a test phase: a unit still holding another thread's loop past the threshold
        is recorded now, in this phase; the rest of it is left out of later ones.

        A test that hands work to a server loop and does not wait for it would otherwise pass,
        and the next test be blamed for a block it did not start.
        """
        if self._active:
            ENGINE.close_ongoing(self)

    def name_fixture(self, since: int, fixture: str) -> None:
        """Give ``fixture`` to the unnamed blocks recorded after the first ``since`` events."""
        events = self.events
        for i in range(since, len(events)):
            if events[i].fixture is None:
                self._events[i] = replace(events[i], fixture=fixture)

    @contextmanager
    def allow(self) -> Iterator[None]:
        """Blocks of the current thread's loop inside this block are recorded as allowed."""
        ident = threading.get_ident()
        self._allow_depth[ident] = self._allow_depth.get(ident, 0) + 1
        try:
            yield
        finally:
            self._allow_depth[ident] -= 1

    def allowing(self, ident: int) -> bool:
        return self._allow_depth.get(ident, 0) > 0

    # -- what the engine calls ------------------------------------------------------------

    def record(self, event: BlockEvent) -> None:
        """A block of this guard's is over (the engine holds its lock)."""
        self._events.append(event)

    def flush_calls(self) -> None:
        if self.calls is not None and self.calls.pending:
            self._events.extend(self.calls.events())

    def unit_here(self, frame: FrameType) -> tuple[str, Stack] | None:
        thread = ENGINE.registry.threads.get(threading.get_ident())
        run = thread.run if thread is not None else None
        unit = run.unit(frame) if run is not None else None
        if thread is None or run is None or unit is None:
            return None
        block = thread.block
        if (
            block is not None
            and block.unit is unit
            and not any(label.guard is self for label in block.labels)
        ):
            return None  # a unit that began before this guard took its loop over
        return thread.name, run.stack(frame)

    def __enter__(self) -> LoopGuard:
        if self._active:
            raise RuntimeError("this LoopGuard is already active")
        ENGINE.acquire(strict=self.calls is not None, hang=self.timeout is not None)
        try:
            ENGINE.subscribe(self)
        except BaseException:
            ENGINE.release(strict=self.calls is not None, hang=self.timeout is not None)
            raise
        if self.calls is not None:
            _strict.HUB.add(self.calls.record)
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.calls is not None:
            _strict.HUB.remove(self.calls.record)
        ENGINE.unsubscribe(self)
        self._active = False
        ENGINE.release(strict=self.calls is not None, hang=self.timeout is not None)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
