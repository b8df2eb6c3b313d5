"""The ledger of blocks: the open one of each loop thread, which guards it counts for, and the
ended ones not yet made events.

The watchdog opens and settles blocks here while sampling; a guard's reads settle and flush
them. Everything happens holding ``lock`` except ``busy``, which every test phase reads without
it: a block is always in one of the two places, never in neither.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._base import clocks
from .._base.greenlets import walk
from .block import Block, Label, for_label

if TYPE_CHECKING:
    from .._backends.base import LoopRun
    from .._backends.registry import LoopThread
    from .._base.frames import FrameFilter, Stack
    from .subscriber import Subscriber, Subscribers


@dataclass(frozen=True)
class Ended:
    """A block that is over and long enough for at least one guard; made events in ``flush``
    (that reads source files, which drops the GIL: never while sampling)."""

    thread: str
    block: Block
    end: float
    queued: float
    labels: tuple[Label, ...]


class Ledger:
    """The blocks of every loop thread; ``lock`` guards all of it."""

    def __init__(
        self, gc_log: clocks.GcLog, subscribers: Subscribers, user_filter: FrameFilter
    ) -> None:
        self.subscribers, self.user_filter = subscribers, user_filter
        self.lock = threading.Lock()
        self.ended: list[Ended] = []
        self.open_blocks = 0  # blocks open on some thread: when none is, reading events is free
        self._gc = gc_log

    def clear(self) -> None:
        self.ended.clear()
        self.open_blocks = 0

    def busy(self) -> bool:
        """Whether a block is open or waiting to become events (else reading them is free)."""
        return bool(self.open_blocks or self.ended)

    def open(
        self,
        thread: LoopThread,
        run: LoopRun,
        unit: object,
        now: float,
        guards: Iterable[Subscriber],
        since: tuple[float, float | None, float] | None = None,
    ) -> Block:
        """Open a block for ``unit``, first seen running on ``thread`` at ``now``, for
        ``guards`` (each labels it with its phase and fixture of now). ``since`` is
        ``thread.opening()`` as it was at ``now`` (read now when not given)."""
        # CPU time is counted from the previous look: a block first seen when it is nearly
        # over (C code kept the watchdog waiting for the GIL) still gets a meaningful share.
        after, cpu, cpu_since = since if since is not None else thread.opening()
        labels = [Label(g, g.phase, g.fixture) for g in guards]
        start = run.started(unit, min(after, now), now)
        block = Block(unit, start, now, cpu, cpu_since, now, labels)
        block.needs_beat, block.cpu_last, block.backend = run.needs_beat, cpu, run.backend
        if thread.queue.last is not None:  # its wait, like its CPU time, from before it began
            block.queued_first, block.queued_since = thread.queue.last
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
        labels: tuple[Label, ...] = ()
        if block.reportable:
            took = block.measure(now, ended_by, self._collecting(thread))
            labels = tuple(
                lb for lb in block.labels if took.counts(block.start, lb.guard.threshold)
            )
            if labels:
                self.ended.append(Ended(thread.name, block, took.end, took.queued, labels))
        if block.beat is not None:  # announced as busy (see ``Subscriber.busy``)
            for label in block.labels:
                label.guard.settled(label in labels)
        # Only now: ``busy`` is read without the lock, and must never see a block in neither.
        self.open_blocks -= 1

    def held(
        self,
        thread: LoopThread,
        run: LoopRun,
        unit: object,
        span: tuple[float, float],
        stack: Stack,
    ) -> None:
        """``unit`` held the loop at least over ``span`` in C code that kept the watchdog from
        looking (an explicit collection), at the line ``stack`` ends in: count it as a look."""
        block = thread.block
        if block is None or block.unit is not unit:
            self.settle(thread, unit, span[1])
            block = self.open(thread, run, unit, span[1], self.subscribers.guards)
        block.start = min(block.start, span[0])
        if block.seen(span[1], self.subscribers.threshold):
            block.observe(stack, self.user_filter)

    def release(self, thread: LoopThread, guard: Subscriber, now: float, least: float) -> None:
        """What ``thread``'s block (running ``least`` seconds or more) did so far counts for
        ``guard``; the rest of it does not."""
        block = thread.block
        label = next((lb for lb in block.labels if lb.guard is guard), None) if block else None
        if block is None or label is None or now - block.start < least:
            return
        if block.reportable:
            took = block.measure(now, None, self._collecting(thread))
            if took.counts(block.start, guard.threshold):
                self.ended.append(Ended(thread.name, block, took.end, took.queued, (label,)))
        block.labels.remove(label)

    def relabel(self, threads: Iterable[LoopThread], guard: Subscriber) -> None:
        """``guard``'s phase changed: its open blocks on ``threads`` count in the new one."""
        for thread in threads:
            for label in thread.block.labels if thread.block is not None else ():
                if label.guard is guard:
                    label.phase, label.fixture = guard.phase, guard.fixture

    def take_over(self, threads: Iterable[LoopThread], guards: Iterable[Subscriber]) -> None:
        """Units already running on ``threads`` began before a new guard: they count only for
        ``guards``, the ones there were."""
        frames = sys._current_frames()
        now = clocks.now()
        for thread in threads:
            run = thread.run
            unit = run.unit(walk(frames.get(thread.ident), thread.greenlet)) if run else None
            if thread.block is None and run is not None and unit is not None:
                self.open(thread, run, unit, now, guards)
        del frames

    def settle_all(self, threads: Iterable[LoopThread]) -> None:
        """A block that is no longer its thread's running unit has ended, even if the watchdog
        has not looked since: the caller (the plugin, at the end of a test phase) may have
        been woken by the very callback that ends it, on a server loop's thread."""
        frames = sys._current_frames()
        frames[threading.get_ident()] = sys._getframe()
        now = clocks.now()
        for thread in threads:
            run = thread.run
            if thread.block is not None:
                top = frames.get(thread.ident)
                self.settle(thread, run.unit(walk(top, thread.greenlet)) if run else None, now)
        del frames

    def flush(self) -> None:
        """Make the ended blocks events. They leave ``ended`` only once recorded: ``busy`` is
        read without the lock, and resolving source lines lets other threads run meanwhile."""
        ended = list(self.ended)
        for item in ended:
            event = item.block.event(item.end, item.queued, item.thread)
            for label in item.labels:
                label.guard.record(for_label(event, label))
        del self.ended[: len(ended)]

    def _collecting(self, thread: LoopThread) -> clocks.Collecting:
        ident, gc_log = thread.ident, self._gc
        return lambda start, end: gc_log.collecting(ident, start, end)
