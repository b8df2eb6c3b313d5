"""The machinery, set up once and shared by every active guard: leases, subscribers, dispatch.

A *lease* keeps the machinery up: the loop registry's patches, the gc callback, one watchdog
thread (and, for strict or hang leases, strict mode's wrappers and the hang signal handler).
The pytest plugin holds a lease for the whole session; a ``LoopGuard`` used on its own holds
one while it is active. A *guard* subscribes while its test (or ``with`` block) runs: blocks
that begin then are labelled for it. With no guard subscribed the watchdog sleeps and nothing
runs but the registry's bookkeeping of loop starts and stops.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _clocks
from ._frames import FrameFilter
from ._loops import LoopThread, Registry
from ._watchdog import Watchdog

if TYPE_CHECKING:
    from ._backend import LoopRun
    from ._block import Block, Label
    from ._guard import LoopGuard
    from ._hang import HangInterrupt

# Imported on first use, not with the plugin: a sync suite never opens a block, and strict mode
# and the hang guard are off unless asked for (every module imported is start-up time).

_DEFAULT_THRESHOLD = 0.1


@dataclass(frozen=True)
class _Ended:
    """A block that is over and long enough for at least one guard; made events in ``flush``
    (that reads source files, which drops the GIL: never while sampling)."""

    thread: str
    block: Block
    end: float
    queued: float
    labels: tuple[Label, ...]


class Engine:
    """One per process (``ENGINE``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # blocks, labels and pending events
        self._lease_lock = threading.Lock()
        self._leases = 0
        self.guards: tuple[LoopGuard, ...] = ()
        self.threshold = _DEFAULT_THRESHOLD  # the smallest of the guards': paces the watchdog
        self._debug: float | None = None  # a guard wants asyncio debug mode, at this threshold
        self.filter = FrameFilter()
        self.gc = _clocks.GcLog()
        self._hang: HangInterrupt | None = None
        self.registry = Registry(self)
        self.watchdog = Watchdog(self)
        self.ended: list[_Ended] = []
        self.open_blocks = 0  # blocks open on some thread: when none is, reading events is free

    # -- leases: the machinery's lifetime ------------------------------------------------

    def acquire(self, *, strict: bool = False, hang: bool = False) -> None:
        with self._lease_lock:
            if self._leases == 0:
                self._install()
            self._leases += 1
            if strict:
                from ._strict import HUB

                HUB.acquire()
            if hang:
                self.hang.acquire()

    def release(self, *, strict: bool = False, hang: bool = False) -> None:
        with self._lease_lock:
            if hang:
                self.hang.release()
            if strict:
                from ._strict import HUB

                HUB.release()
            self._leases -= 1
            if self._leases == 0:
                self._uninstall()

    @property
    def installed(self) -> bool:
        return self._leases > 0

    @property
    def hang(self) -> HangInterrupt:
        if self._hang is None:
            from ._hang import HangInterrupt

            self._hang = HangInterrupt()
        return self._hang

    def leftovers(self) -> list[str]:
        """What of the machinery is still in place (for leak checks: empty once released)."""
        left = [f"{self._leases} lease(s)"] if self._leases else []
        left += self.registry.leftovers()
        if self.watchdog.alive:
            left.append("the watchdog thread")
        if self.gc.on_gc in gc.callbacks:
            left.append("the gc callback")
        strict = sys.modules.get(f"{__package__}._strict")
        if strict is not None and (strict.HUB.patched or strict.HUB.recorders):
            left.append("strict mode's wrappers or recorders")
        if self._hang is not None and self._hang.installed:
            left.append("the hang signal handler")
        return left

    def _install(self) -> None:
        try:
            self.registry.install()
            gc.callbacks.append(self.gc.on_gc)
            self.watchdog.start()
        except BaseException:
            self._uninstall()  # all or nothing
            raise

    def _uninstall(self) -> None:
        self.watchdog.stop()
        if self.gc.on_gc in gc.callbacks:
            gc.callbacks.remove(self.gc.on_gc)
        self.registry.uninstall()
        self.gc.clear()
        self.ended.clear()
        self.open_blocks = 0

    # -- guards ---------------------------------------------------------------------------

    def subscribe(self, guard: LoopGuard) -> None:
        """From now on, blocks that begin are (also) ``guard``'s."""
        if not self.registry.active and asyncio._get_running_loop() is None:
            # No loop runs: nothing to take over, no watchdog to wake (a sync test's case).
            self.guards = (*self.guards, guard)
            self._tune()
            return
        running = asyncio._get_running_loop()
        if running is not None and isinstance(running, asyncio.BaseEventLoop):
            self.registry.adopt(running)  # entered inside a loop started before we were set up
        with self.lock:
            if self.registry.active:
                if not self.guards:
                    self._wake_threads()
                self._take_over(guard)
            self.guards = (*self.guards, guard)
            self._tune()
        if self.registry.active and self.watchdog.sleeping:
            self.watchdog.wake()

    def unsubscribe(self, guard: LoopGuard) -> None:
        """``guard`` is done: what it saw so far of an ongoing block counts up to now."""
        if guard.quiet():  # no block open, nothing to record: a switch
            self.guards = tuple(g for g in self.guards if g is not guard)
            self._tune()
            return
        with self.lock:
            if self.busy():
                self._settle_all()
                now = _clocks.now()
                for thread in tuple(self.registry.threads.values()):
                    self._release_label(thread, guard, now, 0.0)
                self.flush()
            guard.flush_calls()
            self.guards = tuple(g for g in self.guards if g is not guard)
            self._tune()

    def _tune(self) -> None:
        guards = self.guards
        if len(guards) == 1:  # the plugin's case: one test at a time
            self.threshold = guards[0].threshold
            self._debug = self.threshold if guards[0].debug else None
        else:
            self.threshold = min([g.threshold for g in guards], default=_DEFAULT_THRESHOLD)
            debug = [g.threshold for g in guards if g.debug]
            self._debug = min(debug) if debug else None
        self.gc.watching = bool(guards)

    def _wake_threads(self) -> None:
        # The watchdog slept while no guard was active: its last looks are stale, and a start
        # estimated from them would stretch the next block back into the idle time.
        now = _clocks.now()
        for thread in self.registry.running():
            thread.last_poll, thread.cpu_at_poll = now, _clocks.read(thread.cpu_clock)

    def _take_over(self, guard: LoopGuard) -> None:
        """A unit already running on another thread's loop began before ``guard``: not its."""
        here, frames = threading.get_ident(), None
        for thread in self.registry.running():
            run = thread.run
            if thread.ident == here and thread.block is not None:
                from ._block import Label

                thread.block.labels.append(Label(guard, guard.phase, guard.fixture))
            elif thread.ident != here and thread.block is None and run is not None:
                frames = frames if frames is not None else sys._current_frames()
                unit = run.unit(frames.get(thread.ident))
                if unit is not None:
                    self.open(thread, run, unit, _clocks.now())
        del frames

    def relabel(self, guard: LoopGuard) -> None:
        """``guard`` moved to a new phase: a unit on another thread's loop that began late in
        the last one and still runs counts in the new one (the last one has had its verdict)."""
        here = threading.get_ident()
        with self.lock:
            for thread in self.registry.running():
                if thread.ident != here and thread.block is not None:
                    for label in thread.block.labels:
                        if label.guard is guard:
                            label.phase, label.fixture = guard.phase, guard.fixture

    def close_ongoing(self, guard: LoopGuard) -> None:
        """End of a phase: a unit still holding another thread's loop past ``guard``'s
        threshold is recorded now, in this phase; the rest of it is not ``guard``'s."""
        if not self.busy():
            return
        here = threading.get_ident()
        with self.lock:
            self._settle_all()
            now = _clocks.now()
            for thread in tuple(self.registry.threads.values()):
                if thread.ident != here:
                    self._release_label(thread, guard, now, guard.threshold)

    def _release_label(
        self, thread: LoopThread, guard: LoopGuard, now: float, least: float
    ) -> None:
        block = thread.block
        label = next((lb for lb in block.labels if lb.guard is guard), None) if block else None
        if block is None or label is None or now - block.start < least:
            return
        if block.reportable:
            end, queued = block.measure(now, None, self._collecting(thread))
            if end - block.start >= guard.threshold:
                self.ended.append(_Ended(thread.name, block, end, queued, (label,)))
        block.labels.remove(label)

    def busy(self) -> bool:
        """Whether a block is open or waiting to become events (else reading them is free)."""
        return bool(self.open_blocks or self.ended)

    def events_of(self, guard: LoopGuard) -> None:
        """Bring ``guard``'s events up to date: settle every open block, make pending events."""
        if self.busy():
            with self.lock:
                self._settle_all()
                self.flush()
        # Strict mode's calls are made events only when read: a call counted after that would
        # be missing from its event's count of times.
        if guard.calls is not None and guard.calls.pending:
            with self.lock:
                guard.flush_calls()

    # -- the registry tells: on the loop's own thread --------------------------------------

    def loop_started(self, thread: LoopThread, run: LoopRun) -> None:
        # Runs at every loop start (pytest-asyncio starts a few a test): kept to a few lines.
        if len(thread.runs) == 1:  # not a nested run: the thread was not in a unit till now
            clock = thread.cpu_clock
            if clock is None and not thread.cpu_tried:
                thread.cpu_tried = True
                clock = thread.cpu_clock = _clocks.cpu_clock(thread.ident)
            thread.last_poll = _clocks.now()
            thread.cpu_at_poll = None if clock is None else clock()  # its own thread: alive
        if self._debug is not None:
            restore = run.debug(self._debug)
            if restore is not None:
                thread.restore_debug.append(restore)
        if self.guards and self.watchdog.sleeping:
            self.watchdog.wake()

    def loop_stopping(self, thread: LoopThread, run: LoopRun) -> None:
        if thread.block is not None:
            with self.lock:
                self.close(thread, _clocks.now())
        if thread.restore_debug and len(thread.runs) == 1:
            while thread.restore_debug:
                thread.restore_debug.pop()()

    def thread_done(self, thread: LoopThread) -> None:
        # A block opened on our own frames as the last loop stopped (no unit of the loop's).
        if thread.block is not None:
            with self.lock:
                self.close(thread, _clocks.now())

    def tick_period(self) -> float:
        return min(max(self.threshold / 10, 0.001), 0.01)

    # -- blocks (the caller holds ``lock``) -------------------------------------------------

    def open(self, thread: LoopThread, run: LoopRun, unit: object, now: float) -> Block:
        """Open a block for ``unit``, first seen running on ``thread`` at ``now``."""
        from ._block import Block, Label

        # CPU time is counted from the previous look: a block first seen when it is nearly
        # over (C code kept the watchdog waiting for the GIL) still gets a meaningful share.
        since = max(thread.last_poll, thread.beat_ran)
        start = run.started(unit, since, now)
        labels = [Label(g, g.phase, g.fixture) for g in self.guards]
        cpu = thread.cpu_at_poll
        block = Block(unit, start, now, cpu, thread.last_poll, now, labels, run.needs_beat)
        block.cpu_last = cpu
        thread.block = block
        self.open_blocks += 1
        return block

    def settle(self, thread: LoopThread, unit: object | None, now: float) -> None:
        """Close ``thread``'s block if it ended: proven by a beat, or ``unit`` runs instead."""
        block = thread.block
        if block is not None and block.ended_by is not None:
            self.close(thread, now, block.ended_by)
        elif block is not None and block.unit is not unit:
            self.close(thread, now)

    def close(self, thread: LoopThread, now: float, ended_by: float | None = None) -> None:
        """End ``thread``'s block: it was last seen running, and is gone at ``now``."""
        block, thread.block = thread.block, None
        if block is None:
            return
        if block.reportable:
            end, queued = block.measure(now, ended_by, self._collecting(thread))
            labels = tuple(lb for lb in block.labels if end - block.start >= lb.guard.threshold)
            if labels:
                self.ended.append(_Ended(thread.name, block, end, queued, labels))
        # Only now: ``busy`` is read without the lock, and must never see a block in neither.
        self.open_blocks -= 1

    def _collecting(self, thread: LoopThread) -> _clocks.Collecting:
        ident = thread.ident
        return lambda start, end: self.gc.collecting(ident, start, end)

    def _settle_all(self) -> None:
        # A block that is no longer its thread's running unit has ended, even if the watchdog
        # has not looked since: the caller (the plugin, at the end of a test phase) may have
        # been woken by the very callback that ends it, on a server loop's thread.
        frames = sys._current_frames()
        frames[threading.get_ident()] = sys._getframe()
        now = _clocks.now()
        for thread in tuple(self.registry.threads.values()):
            run = thread.run
            if thread.block is not None:
                self.settle(thread, run.unit(frames.get(thread.ident)) if run else None, now)
        del frames

    def flush(self) -> None:
        """Make the ended blocks events. They leave ``_ended`` only once recorded: ``busy`` is
        read without the lock, and resolving source lines lets other threads run meanwhile."""
        from ._block import for_label

        ended = list(self.ended)
        for item in ended:
            event = item.block.event(item.end, item.queued, item.thread)
            for label in item.labels:
                label.guard.record(for_label(event, label))
        del self.ended[: len(ended)]


ENGINE = Engine()
