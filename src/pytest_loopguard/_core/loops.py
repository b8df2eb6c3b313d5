"""What the engine does when a loop starts or stops: the registry's ``Listener``, on the loop's
own thread.

Runs at every loop start and stop (pytest-asyncio starts a few a test), guard or none: kept to
a few lines each. A thread's first loop run reads its CPU clock and run-queue wait, so that the
first block's share of them counts from there, and starts tracing its greenlets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._base import clocks
from .._base.greenlets import trace as trace_greenlets
from .._base.greenlets import untrace as untrace_greenlets

if TYPE_CHECKING:
    from .._backends.base import LoopRun
    from .._backends.registry import LoopThread
    from .ledger import Ledger
    from .subscriber import Subscribers
    from .watchdog import Watchdog


class LoopEvents:
    """The registry's listener. ``watchdog`` is set by the engine once it has built it (the
    watchdog needs the registry, which needs this)."""

    watchdog: Watchdog

    def __init__(self, subscribers: Subscribers, ledger: Ledger) -> None:
        self._subs, self._ledger = subscribers, ledger

    def loop_started(self, thread: LoopThread, run: LoopRun) -> None:
        # Runs at every loop start (pytest-asyncio starts a few a test): kept to a few lines.
        if len(thread.runs) == 1:  # not a nested run: the thread was not in a unit till now
            clock = thread.cpu_clock
            if clock is None and not thread.cpu_tried:
                thread.cpu_tried = True
                clock = thread.cpu_clock = clocks.cpu_clock(thread.ident)
            thread.last_poll = now = clocks.now()
            thread.cpu_at_poll = None if clock is None else clock()  # its own thread: alive
            thread.queue.refresh_at_start(thread.native_id, now)
            thread.tracer = trace_greenlets(thread)
        debug = self._subs.debug
        if debug is not None:
            restore = run.debug(debug)
            if restore is not None:
                thread.restore_debug.append(restore)
        if self._subs.guards and self.watchdog.sleeping:
            self.watchdog.wake(loop_start=True)

    def loop_stopping(self, thread: LoopThread, run: LoopRun) -> None:
        if thread.block is not None:
            with self._ledger.lock:
                self._ledger.close(thread, clocks.now())
        if len(thread.runs) == 1:
            untrace_greenlets(thread.tracer)
            thread.tracer = thread.greenlet = None
            while thread.restore_debug:
                thread.restore_debug.pop()()

    def thread_done(self, thread: LoopThread) -> None:
        # A block opened on our own frames as the last loop stopped (no unit of the loop's).
        if thread.block is not None:
            with self._ledger.lock:
                self._ledger.close(thread, clocks.now())

    def trio_run_starting(self) -> None:
        # Trio's runs are posted to through their wake-up socket (``TrioRun.post``).
        if self.watchdog.detached:
            self.watchdog.share_files()

    def tick_period(self) -> float:
        return min(max(self._subs.threshold / 10, 0.001), 0.01)
