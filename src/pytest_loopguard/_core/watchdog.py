"""The watchdog: one thread for the session, asleep unless a guard is active and a loop runs.

Nothing runs per callback. The watchdog looks at the loop threads' stacks
(``sys._current_frames()``) every half threshold, and every few milliseconds once a unit of work
has held its loop for half the threshold, counting the user lines it finds there. Looks are rare
on purpose: each one takes the GIL from a busy loop thread. While no guard is active or no loop
runs it waits without a timeout, and the first loop start (or guard) after that wakes it. It
runs on a file table of its own (``_filetable``) until a trio run starts.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING

# Imported here, on the main thread, never lazily on the watchdog's: an import there can run
from .._base import clocks, debugger
from .._base.frames import describe
from .._base.greenlets import walk
from . import filetable

# pytest's assertion rewriter concurrently with the main thread's (ast is not safe for that).
from .block import Block, for_label

if TYPE_CHECKING:
    from .._backends.base import LoopRun
    from .._backends.registry import LoopThread, Registry
    from .._base.events import BlockEvent
    from .._base.frames import FrameFilter
    from .ledger import Ledger
    from .subscriber import Subscribers

    # Interrupts the loop thread ``ident`` stuck in ``unit`` of ``run`` (the hang guard).
    OnHang = Callable[[int, LoopRun, object, BlockEvent], None]


_STALE = 0.005  # a look that took longer than this: the watchdog lost the GIL meanwhile


class Watchdog:
    """The sampling thread. ``wakes``, ``looks`` and ``naps`` count what it did (tests read
    them): every return from a wait, the ones that looked at loop threads, and every sleep
    with nothing to watch. ``detached``: it runs on a file table of its own (``_filetable``)."""

    NAME = "pytest-loopguard-watchdog"

    def __init__(
        self,
        subscribers: Subscribers,
        registry: Registry,
        ledger: Ledger,
        gc_log: clocks.GcLog,
        user_filter: FrameFilter,
        on_hang: OnHang,
    ) -> None:
        self._subs, self._registry, self._ledger = subscribers, registry, ledger
        self._gc, self._filter, self._on_hang = gc_log, user_filter, on_hang
        self._cond = threading.Condition(threading.Lock())
        self._life = threading.Lock()  # start, stop and share_files, from any thread
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.sleeping = self.detached = self.deferred = False
        self.wakes = self.looks = self.naps = 0
        self.queues = clocks.QueueClocks()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Returns once the thread runs, on its own file table where it can: from then on it
        holds no copy of the process's descriptors."""
        with self._life:
            self._start(detach=True)

    def stop(self) -> None:
        with self._life:
            self._stop()

    def share_files(self) -> None:
        """From now on, run on the process's file table (a trio run is about to start: trio's
        runs are posted to through their wake-up socket). A thread cannot take back a table
        it left: a new one starts, once a session."""
        with self._life:
            if self._thread is not None and self.detached:
                self._stop()
                self._start(detach=False)

    def after_fork(self, defer: bool = False) -> None:
        """A forked child's copy: no thread, fresh locks; with ``defer``, the child's first
        loop start starts it (see ``Engine.after_fork``)."""
        self._cond, self._life = threading.Condition(threading.Lock()), threading.Lock()
        self._thread, self._stopping, self.queues = None, False, clocks.QueueClocks()
        self.sleeping = self.deferred = defer  # "sleeping": a loop start wakes it

    def _start(self, detach: bool) -> None:
        self._stopping, self.sleeping, self.detached = False, False, False
        ready = threading.Event()
        unshare = filetable.unshare_call() if detach else None
        if detach:
            # ctypes makes a closure at import, and libffi (Debian's, with static trampolines)
            # then opens its own shared object and keeps the descriptor's number for every
            # later closure: that must happen here, in the process's table, not lazily on the
            # watchdog's own one, where the number would name nothing for the other threads.
            clocks.gil_holding_pread()
        self._thread = threading.Thread(
            target=self._run, args=(unshare, ready), name=self.NAME, daemon=True
        )
        self._thread.start()
        ready.wait()

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread.ident is not None:
            thread.join()

    def wake(self, loop_start: bool = False) -> None:
        """A loop started or a guard subscribed while the watchdog slept."""
        if self.deferred:  # a forked child's: started by its first loop (``after_fork``)
            if loop_start:
                self.deferred = False
                self.start()
            return
        with self._cond:
            # Checked again under the lock: by now it may be in a timed wait, which must not
            # be cut short (an early look is a wasted GIL hand-off).
            if self.sleeping:
                self._cond.notify_all()

    def _wanted(self) -> bool:
        threads = tuple(self._registry.threads.values())
        return bool(self._subs.guards) and any(t.runs for t in threads)

    def _run(self, unshare: filetable.Unshare | None, ready: threading.Event) -> None:
        try:
            self.detached = filetable.detach(unshare)
        except Exception:  # whatever went wrong, the watchdog still watches
            self.detached = False
        finally:
            ready.set()
        while True:
            with self._cond:
                self._pause()
                if self._stopping:
                    break
            if self._wanted():
                self.looks += 1
                self._poll()
        self.queues.close()  # in this thread's table: no other thread may close them

    def _pause(self) -> None:
        """Until the next look (the caller holds ``_cond``): asleep while there is nothing to
        watch, then one interval. Woken by a loop start, it waits that interval even if the
        loop has stopped meanwhile: pytest-asyncio runs a loop a few times a test, briefly,
        and waking for each run would cost a GIL hand-off each."""
        # ``sleeping`` is set before ``_wanted`` is read: a loop start that reads it after
        # that either sees it set (and wakes us) or was already seen here.
        self.sleeping = True
        if not self._stopping and not self._wanted():
            self.naps += 1
            self._cond.wait()
            self.wakes += 1
        self.sleeping = False
        due = self._due()
        if due > 0 and not self._stopping:
            self._cond.wait(due)
            self.wakes += 1

    def _due(self) -> float:
        """Seconds until the next look: an interval after the oldest look at a running loop (or
        its start). A wake that C code holding the GIL delayed past that looks at once, still
        inside the unit that held it: Python hands the GIL over at its first bytecode after."""
        threshold = self._subs.threshold
        threads = self._registry.running()
        # Look fast only while some unit has held its loop for half the threshold.
        if any(t.block is not None and t.block.armed for t in threads):
            interval = min(max(threshold / 20, 0.001), 0.005)
        else:
            interval = min(max(threshold / 2, 0.001), 0.05)
        oldest = min((t.last_poll for t in threads), default=clocks.now())
        return interval - (clocks.now() - oldest)

    def _poll(self) -> None:
        ledger = self._ledger
        with ledger.lock:
            frames = sys._current_frames()
            now = clocks.now()
            # What each thread's next block would start after, read with the frames: the
            # watchdog can lose the GIL mid-look, and a loop start meanwhile moves it on.
            seen = [(t, t.run, frames.get(t.ident), t.opening()) for t in self._registry.running()]
            looked = []
            for thread, run, top, since in seen:
                if run is not None:
                    top, now = self._look(thread, run, top, now, since)
                    looked.append((thread, run, top))
            # Only once every thread is sampled: a loop thread given the GIL would move on
            # from the line its sample must name.
            for thread, run, top in looked:
                self._after_sampling(thread, run, top, now)
            del frames, seen, looked
            ledger.flush()
        self.queues.sweep(self._registry.threads)

    def _look(
        self,
        thread: LoopThread,
        run: LoopRun,
        top: FrameType | None,
        now: float,
        since: tuple[float, float | None, float],
    ) -> tuple[FrameType | None, float]:
        """Look at ``thread`` as ``top`` showed it at ``now``; returns the (top, now) used."""
        ledger = self._ledger
        unit = run.unit(walk(top, thread.greenlet))
        ledger.settle(thread, unit, now)
        if unit is not None:
            block: Block = thread.block or ledger.open(
                thread, run, unit, now, self._subs.guards, since
            )
            self._see(thread, run, block, top, now)
            later = clocks.now()
            if later - now > _STALE:
                # The watchdog lost the GIL mid-look (a collection on the loop thread kept it):
                # if the same unit still runs, it ran all along. Seen again, at the later time.
                top = sys._current_frames().get(thread.ident)
                if run.unit(walk(top, thread.greenlet)) is unit:
                    now = later
                    self._see(thread, run, block, top, now)
        thread.last_poll = now
        return top, now

    def _see(
        self, thread: LoopThread, run: LoopRun, block: Block, top: FrameType | None, now: float
    ) -> None:
        if block.seen(now, self._subs.threshold):
            start = self._gc.sampling_top(thread.ident, top)
            block.observe(run.stack(walk(start, thread.greenlet)), self._filter)
        for label in block.labels:
            if label.guard.allowing(thread.ident):
                label.allowed = True

    def _after_sampling(
        self, thread: LoopThread, run: LoopRun, top: FrameType | None, now: float
    ) -> None:
        """What may drop the GIL (a socket write, /proc, source files): after every sample."""
        thread.cpu_at_poll = cpu = clocks.read(thread.cpu_clock)
        queued = thread.queue.note(self.queues.read(thread, thread.native_id), now)
        block = thread.block
        if block is None:
            return
        block.cpu_last = cpu
        if not block.armed:
            # Seen inside the unit: its own wait counts from here (one that arms when first
            # seen keeps the reading from before it began, see ``Ledger.open``).
            block.queued_first, block.queued_since = queued, now
            return  # the rest may drop the GIL: only for a block that may get a verdict
        block.queued_last = queued
        others = (clocks.process_cpu(), clocks.own_cpu(), cpu or 0.0)
        if block.others is None:
            block.others, block.others_since = others, now
        block.others_last = others
        if block.beat is None:
            for label in block.labels:  # once a unit: a child's guard tells its session
                label.guard.busy(block.start)
            # A late look must not stretch a block: the beat runs right after the unit and
            # bounds its end even when a busy loop keeps the watchdog from the GIL.
            block.beat = now
            run.post(thread.beat)
        timeout = min((lb.guard.timeout for lb in block.labels if lb.guard.timeout), default=None)
        late = timeout is not None and now - block.start >= timeout and not block.hung
        # Not at a debugger's prompt: someone is reading it, not stuck.
        if late and not debugger.in_frames(walk(top, thread.greenlet)):
            self._interrupt(thread, run, block, top, now)

    def _interrupt(
        self, thread: LoopThread, run: LoopRun, block: Block, top: FrameType | None, now: float
    ) -> None:
        """A hang: record it with the whole stack now, then break the loop thread out of it."""
        block.hung = True
        full = tuple(describe(f, n) for f, n in run.stack(walk(top, thread.greenlet)))
        queued = block.queue_wait(now)  # as for a block: CPU-bound is told on the CPU's time
        event = block.event(now - queued, queued, thread.name)
        event = replace(event, stack=tuple(reversed(full)), timed_out=True)
        for label in block.labels:
            label.guard.record(for_label(event, label))
        self._on_hang(thread.ident, run, block.unit, for_label(event, block.labels[0]))
