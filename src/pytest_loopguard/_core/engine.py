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
from types import FrameType
from typing import TYPE_CHECKING

from .._backends.registry import Registry
from .._base import clocks
from .._base.frames import FrameFilter
from .block import Label
from .ledger import Ledger
from .loops import LoopEvents
from .subscriber import Subscriber, Subscribers
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .._backends.base import LoopRun
    from .._base.events import BlockEvent
    from .hang import HangInterrupt

# Imported on first use, not with the plugin: a sync suite never opens a block, and strict mode
# and the hang guard are off unless asked for (every module imported is start-up time).


class Engine:
    """One per process (``ENGINE``)."""

    def __init__(self) -> None:
        self._lease_lock = threading.Lock()
        self._leases = 0
        self.subscribers = Subscribers()
        self.filter = FrameFilter()
        self.gc = clocks.GcLog()
        self._hang: HangInterrupt | None = None
        self.ledger = Ledger(self.gc, self.subscribers, self.filter)
        self.loops = LoopEvents(self.subscribers, self.ledger)
        self.registry = Registry(self.loops)
        self.watchdog = self.loops.watchdog = Watchdog(
            self.subscribers, self.registry, self.ledger, self.gc, self.filter, self._hung
        )

    @property
    def guards(self) -> tuple[Subscriber, ...]:
        return self.subscribers.guards

    @property
    def threshold(self) -> float:
        """The smallest of the guards' thresholds: paces the watchdog."""
        return self.subscribers.threshold

    # -- leases: the machinery's lifetime ------------------------------------------------

    def acquire(self, *, strict: bool = False, hang: bool = False) -> None:
        with self._lease_lock:
            if self._leases == 0:
                self._install()
            self._leases += 1
            if strict:
                from .strict import HUB

                HUB.acquire()
            if hang:
                self.hang.acquire()

    def release(self, *, strict: bool = False, hang: bool = False) -> None:
        with self._lease_lock:
            if hang:
                self.hang.release()
            if strict:
                from .strict import HUB

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
            from .hang import HangInterrupt

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
        strict = sys.modules.get(f"{__package__}.strict")
        if strict is not None and (strict.HUB.patched or strict.HUB.recorders):
            left.append("strict mode's wrappers or recorders")
        if self._hang is not None and self._hang.installed:
            left.append("the hang signal handler")
        return left

    def after_fork(self, defer: bool = False) -> None:
        """In a forked child (gunicorn's workers): only the forking thread came along. The
        watchdog did not, and a lock another thread held at the fork would stay held: fresh
        locks, no blocks, no other thread's records, and the watchdog again if a lease holds
        the machinery up — at once, or with ``defer`` when the child's first loop starts (a
        fork's handlers may run in a child about to exec: no thread there)."""
        self._lease_lock = threading.Lock()
        self.ledger.lock = threading.Lock()
        self.ledger.clear()
        here = threading.get_ident()
        for ident in [i for i in self.registry.threads if i != here]:
            del self.registry.threads[ident]  # in place: the loop hooks hold this dict
        self.watchdog.after_fork(defer=defer and self._leases > 0)
        if self._leases and not defer:
            self.watchdog.start()

    def _install(self) -> None:
        try:
            self.registry.install()
            self.gc.on_explicit = self._explicit_collection
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
        self.ledger.clear()

    # -- guards ---------------------------------------------------------------------------

    def subscribe(self, guard: Subscriber) -> None:
        """From now on, blocks that begin are (also) ``guard``'s."""
        if not self.registry.active and asyncio._get_running_loop() is None:
            # No loop runs: nothing to take over, no watchdog to wake (a sync test's case).
            self._subscribed(guard)
            return
        running = asyncio._get_running_loop()
        if running is not None and isinstance(running, asyncio.BaseEventLoop):
            self.registry.adopt(running)  # entered inside a loop started before we were set up
        with self.ledger.lock:
            if self.registry.active:
                if not self.guards:
                    self._wake_threads()
                self._take_over(guard)
            self._subscribed(guard)
        if self.registry.active and self.watchdog.sleeping:
            self.watchdog.wake()

    def idle(self) -> bool:
        """No loop runs and no block is open or waiting: subscribing or not changes nothing."""
        ledger = self.ledger
        return not (self.registry.active or ledger.open_blocks or ledger.ended)

    def retune(self) -> None:
        """A subscribed guard's threshold changed."""
        self.subscribers.retune()

    def unsubscribe(self, guard: Subscriber) -> None:
        """``guard`` is done: what it saw so far of an ongoing block counts up to now."""
        if guard.quiet():  # no block open, nothing to record: a switch
            self._unsubscribed(guard)
            return
        ledger = self.ledger
        with ledger.lock:
            if ledger.busy():
                threads = tuple(self.registry.threads.values())
                ledger.settle_all(threads)
                now = clocks.now()
                for thread in threads:
                    ledger.release(thread, guard, now, 0.0)
                ledger.flush()
            guard.flush_calls()
            self._unsubscribed(guard)

    def _subscribed(self, guard: Subscriber) -> None:
        self.subscribers.add(guard)
        self.gc.watching = True

    def _unsubscribed(self, guard: Subscriber) -> None:
        self.subscribers.remove(guard)
        self.gc.watching = bool(self.subscribers.guards)

    def _wake_threads(self) -> None:
        # The watchdog slept while no guard was active: its last looks are stale, and a start
        # estimated from them would stretch the next block back into the idle time.
        now = clocks.now()
        for thread in self.registry.running():
            thread.last_poll, thread.cpu_at_poll = now, clocks.read(thread.cpu_clock)

    def _take_over(self, guard: Subscriber) -> None:
        """Units running now on other threads' loops began before ``guard``: not its. One
        running on this thread (a guard entered inside a callback) is."""
        here = threading.get_ident()
        others = [t for t in self.registry.running() if t.ident != here]
        if others:
            self.ledger.take_over(others, self.guards)
        mine = self.registry.threads.get(here)
        if mine is not None and mine.block is not None:
            mine.block.labels.append(Label(guard, guard.phase, guard.fixture))

    def relabel(self, guard: Subscriber) -> None:
        """``guard`` moved to a new phase: a unit on another thread's loop that began late in
        the last one and still runs counts in the new one (the last one has had its verdict)."""
        here = threading.get_ident()
        with self.ledger.lock:
            others = [t for t in self.registry.running() if t.ident != here]
            self.ledger.relabel(others, guard)

    def close_ongoing(self, guard: Subscriber) -> None:
        """End of a phase: a unit still holding another thread's loop past ``guard``'s
        threshold is recorded now, in this phase; the rest of it is not ``guard``'s."""
        if not self.ledger.busy():
            return
        here, ledger = threading.get_ident(), self.ledger
        with ledger.lock:
            threads = tuple(self.registry.threads.values())
            ledger.settle_all(threads)
            now = clocks.now()
            for thread in threads:
                if thread.ident != here:
                    ledger.release(thread, guard, now, guard.threshold)

    def events_of(self, guard: Subscriber) -> None:
        """Bring ``guard``'s events up to date: settle every open block, make pending events."""
        ledger = self.ledger
        if ledger.busy():
            with ledger.lock:
                ledger.settle_all(tuple(self.registry.threads.values()))
                ledger.flush()
        # Strict mode's calls are made events only when read: a call counted after that would
        # be missing from its event's count of times.
        if guard.calls_pending():
            with ledger.lock:
                guard.flush_calls()

    def _explicit_collection(self, start: float, end: float, caller: FrameType) -> None:
        """On the loop thread, right after a ``gc.collect()``: a long one is a block at its
        line, even when the callback ends before the watchdog can look (the collection held
        the GIL throughout)."""
        thread = self.registry.threads.get(threading.get_ident())
        run = thread.run if thread is not None else None
        if thread is None or run is None or not self.guards or end - start < self.threshold / 2:
            return
        from .._base.greenlets import here, walk

        frames = list(walk(caller, here()))
        unit = run.unit(frames)
        if unit is not None:
            with self.ledger.lock:
                self.ledger.held(thread, run, unit, (start, end), run.stack(frames))

    def _hung(self, ident: int, run: LoopRun, unit: object, event: BlockEvent) -> None:
        self.hang.fire(ident, run, unit, event)


ENGINE = Engine()
