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
from typing import TYPE_CHECKING, Any

from .engine import ENGINE

if TYPE_CHECKING:
    from .._base.events import BlockEvent
    from .._base.frames import Stack
    from .strict import CallLog


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
        self.timeout = timeout
        self.threshold = _checked(threshold, timeout)
        self.debug = debug
        self.phase: str | None = None
        self.fixture: str | None = None
        self.calls: CallLog | None = _call_log(self) if strict else None
        self._events: list[BlockEvent] = []
        self._allow_depth: dict[int, int] = {}
        self._active = False
        self._resting = False  # between two tests, still subscribed (see ``rest``)
        self._ledger = ENGINE.ledger  # read by every test phase: one attribute, not two

    @property
    def events(self) -> list[BlockEvent]:
        """The blocks recorded so far, in the order they ended."""
        if self._active:
            ENGINE.events_of(self)
        return list(self._events)

    @property
    def recorded(self) -> int:
        """How many events are recorded so far (without settling open blocks)."""
        return len(self._events)

    def quiet(self, since: int | None = None) -> bool:
        """Whether reading ``events`` now would add nothing to it (and, given ``since``, it
        holds no more than that many): the cheap check every test phase makes."""
        if since is not None and len(self._events) != since:
            return False
        ledger = self._ledger
        if ledger.open_blocks or ledger.ended:  # ledger.busy(), without a call
            return False
        calls = self.calls
        return calls is None or not calls.pending

    @property
    def context(self) -> tuple[str | None, str | None]:
        """The (phase, fixture) label that new blocks get."""
        return self.phase, self.fixture

    def set_context(self, phase: str | None = None, fixture: str | None = None) -> None:
        """Label the blocks that start from now on (the plugin passes its test phase here)."""
        changed = phase != self.phase
        self.phase, self.fixture = phase, fixture
        if changed and self._active and self._ledger.busy():
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
        if self.quiet(since):
            return
        events = self.events
        for i in range(since, len(events)):
            if events[i].fixture is None:
                self._events[i] = replace(events[i], fixture=fixture)

    def rephase(self, since: int, old: str, new: str) -> None:
        """Move the blocks recorded after the first ``since`` events from phase ``old`` to
        ``new`` (a phase thought over was not)."""
        events = self.events
        for i in range(since, len(events)):
            if events[i].phase == old:
                self._events[i] = replace(events[i], phase=new)

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

    def busy(self, since: float) -> None:
        """A unit has held the loop for half the threshold: nothing to do in this process
        (a watched child's guard tells its session, see ``_procs.child``)."""

    def settled(self, counted: bool) -> None:
        """That unit is over (see ``busy``)."""

    def calls_pending(self) -> bool:
        return self.calls is not None and bool(self.calls.pending)

    def flush_calls(self) -> None:
        calls = self.calls
        if calls is not None and calls.pending:
            calls.drain(self._events)

    def unit_here(self, frame: FrameType) -> tuple[str, Stack, str] | None:
        from .._base.greenlets import here, walk

        thread = ENGINE.registry.threads.get(threading.get_ident())
        run = thread.run if thread is not None else None
        unit = run.unit(walk(frame, here())) if run is not None else None
        if thread is None or run is None or unit is None:
            return None
        block = thread.block
        if (
            block is not None
            and block.unit is unit
            and not any(label.guard is self for label in block.labels)
        ):
            return None  # a unit that began before this guard took its loop over
        return thread.name, run.stack(walk(frame, here())), run.backend

    def __enter__(self) -> LoopGuard:
        if self._active:
            raise RuntimeError("this LoopGuard is already active")
        ENGINE.acquire(strict=self.calls is not None, hang=self.timeout is not None)
        try:
            self.resume()
        except BaseException:
            ENGINE.release(strict=self.calls is not None, hang=self.timeout is not None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.pause()
        ENGINE.release(strict=self.calls is not None, hang=self.timeout is not None)

    def resume(self, threshold: float | None = None, phase: str | None = None) -> None:
        """Record from now on, afresh: no events, no allowed blocks, a new threshold if given,
        and ``phase`` as the label of what blocks from now on (see ``set_context``).

        With ``pause``, what the pytest plugin does around each test with one guard for the
        whole session (whose lease keeps the machinery up): a switch, not a set-up.
        """
        resting, self._resting = self._resting, False
        if resting and ENGINE.idle():
            self._switch(threshold, phase)  # still subscribed, and nothing happened since
            return
        if self._active:
            self.pause()  # a test interrupted before its end left it running
        if threshold is not None and threshold != self.threshold:
            self.threshold = _checked(threshold, self.timeout)
        self._events = []
        if self._allow_depth:
            self._allow_depth = {}
        self.phase, self.fixture = phase, None  # the label of what blocks from now on
        if self.calls is not None:
            self.calls = _call_log(self)
            _hub().add(self.calls.record)
        ENGINE.subscribe(self)
        self._active = True

    def rest(self) -> None:
        """Between two tests: like ``pause``, but when no loop runs and nothing is open it stays
        subscribed, so that the next ``resume`` is a switch of labels (a sync suite's common
        case: an unsubscribe and a subscribe a test saved). What blocks meanwhile is dropped by
        that ``resume``, as it would not have been recorded after a ``pause``."""
        if self._active and self.calls is None and ENGINE.idle():
            self.phase, self.fixture, self._resting = None, None, True
        else:
            self.pause()

    def _switch(self, threshold: float | None, phase: str | None) -> None:
        if threshold is not None and threshold != self.threshold:
            self.threshold = _checked(threshold, self.timeout)
            ENGINE.retune()
        self._events = []
        if self._allow_depth:
            self._allow_depth = {}
        self.phase = phase

    def pause(self) -> None:
        """Stop recording: a unit still running counts up to now, the rest of it is not ours."""
        self._resting = False
        if not self._active:
            return
        if self.calls is not None:
            _hub().remove(self.calls.record)
        ENGINE.unsubscribe(self)
        self._active = False


def _call_log(guard: LoopGuard) -> CallLog:
    from .strict import CallLog  # strict mode's module, only for strict guards

    return CallLog(guard, ENGINE.filter, ENGINE.ledger.lock)


def _hub() -> Any:
    from .strict import HUB

    return HUB


def _checked(threshold: float, timeout: float | None) -> float:
    if not _positive(threshold):
        raise ValueError(f"threshold must be a finite number of seconds > 0, got {threshold!r}")
    if timeout is not None and not (_positive(timeout) and timeout > threshold):
        raise ValueError(f"timeout must be a number of seconds > threshold, got {timeout!r}")
    return float(threshold)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and 0 < value < math.inf  # NaN fails both
