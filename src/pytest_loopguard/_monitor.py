"""The engine: finds callbacks that hold an asyncio loop too long, and where they were stuck.

Nothing runs per callback. While a guard is active, ``BaseEventLoop.run_forever`` is wrapped so
the guard learns which threads run loops; a watchdog thread looks at those threads' stacks every
half threshold. The ``Handle._run`` frame on a loop thread's stack *is* the running callback:
seeing the same frame object on two looks means the same callback still holds the loop. Once one
has held it for half the threshold, the watchdog looks every few milliseconds and counts the
user-code lines it finds, so the report names the line the loop was stuck on.

Looks are rare on purpose: each one takes the GIL from a busy loop thread, and on a loaded
machine that hand-off costs far more than the look itself (bench/ measures it).
No pytest import here: the plugin and ``with LoopGuard(): asyncio.run(main())`` share this code.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from types import CodeType, FrameType, TracebackType
from typing import Any

from . import _hints, _strict
from ._frames import FrameFilter, FrameInfo, RawFrame, current_stack, describe, raw, resolve

# Captured at import so that a test patching time.perf_counter cannot skew a verdict.
_clock = time.perf_counter
_monotonic = time.monotonic
_RUN_CODE: CodeType = asyncio.events.Handle._run.__code__
_IMPORT_MACHINERY = "<frozen importlib._bootstrap"


@dataclass(frozen=True)
class BlockEvent:
    """One callback that held the event loop for at least the threshold."""

    duration: float
    threshold: float
    cpu_time: float | None
    frame: FrameInfo | None
    stack: tuple[FrameInfo, ...]
    hint: _hints.Hint
    allowed: bool = False
    phase: str | None = None
    fixture: str | None = None
    thread: str = ""
    samples: int = 0
    # Every frame of the sample that located the block, innermost first: (module, function, file).
    through: tuple[tuple[str, str, str], ...] = ()
    # Seconds the loop thread waited for a CPU on a loaded machine, left out of ``duration``.
    cpu_wait: float = 0.0
    # The block went past the guard's timeout: the loop thread was interrupted (a hang).
    timed_out: bool = False
    # Strict mode: the known blocking call made on the loop ("time.sleep()"); duration is 0.
    call: str | None = None

    @property
    def cpu_bound(self) -> bool | None:
        """True when the loop thread was mostly on the CPU, None when that is unknown."""
        if self.cpu_time is None or self.duration <= 0:
            return None
        return self.cpu_time >= 0.5 * self.duration


def _cpu_clock(ident: int) -> Callable[[], float] | None:
    """A reader of another thread's CPU time, where the platform offers one."""
    try:
        clock_id = time.pthread_getcpuclockid(ident)
        time.clock_gettime(clock_id)
    except (AttributeError, OSError):
        return None
    return lambda: time.clock_gettime(clock_id)


def _read(clock: Callable[[], float] | None) -> float | None:
    if clock is None:
        return None
    try:
        return clock()
    except OSError:  # the thread has ended
        return None


Through = tuple[str, str, str]  # module, function, file of one frame
# One resolved sample: the blocking user frame, the user stack, the modules that frame called,
# and every frame of it (what allowlists match).
_Sample = tuple[RawFrame, tuple[RawFrame, ...], tuple[str, ...], tuple[Through, ...]]


@dataclass
class _Block:
    """A callback seen on a loop thread: grows while the same ``Handle._run`` frame stays."""

    run_frame: FrameType
    start: float
    last_seen: float
    cpu_first: float | None
    cpu_last: float | None
    phase: str | None
    fixture: str | None
    allowed: bool = False
    armed: bool = False
    cpu_since: float = 0.0
    # The thread's run-queue wait so far, read from the time the block armed (queued_since):
    # reading /proc drops the GIL, which costs a busy loop a GIL hand-off, so not on every look.
    queued_first: float | None = None
    queued_last: float | None = None
    queued_since: float = 0.0
    opened: float = 0.0  # when the watchdog first saw it
    importing: float = 0.0  # seconds of the block spent in first imports
    hung: bool = False  # reported and interrupted as a hang already
    # Running already when this guard took its loop over: it began before the test did, so
    # it is not the test's to answer for (nor to interrupt).
    inherited: bool = False
    needs_beat: bool = False  # uvloop: only a tick or heartbeat tells one callback from the next
    beat: float | None = None  # when the heartbeat that proves this block over was posted
    ended_by: float | None = None  # when a heartbeat first ran after that: the block was over
    counts: Counter[tuple[CodeType, int]] = field(default_factory=Counter)
    examples: dict[tuple[CodeType, int], _Sample] = field(default_factory=dict)


@dataclass
class _Watched:
    """A thread that is running a loop, and the callback it was last seen in."""

    ident: int
    name: str
    cpu_clock: Callable[[], float] | None
    last_poll: float
    cpu_at_poll: float | None = None
    queue_clock: _RunQueueClock | None = None
    # Opened on the first block that arms, not per loop start (an open and a close a run).
    native_id: int | None = None
    depth: int = 1
    block: _Block | None = None
    loops: list[Any] = field(default_factory=list)  # the loops it runs, innermost last
    tickers: list[_Ticker] = field(default_factory=list)  # one per uvloop loop it runs
    beat_ran: float = -math.inf  # when a heartbeat last ran on this thread's loop
    # The callback it was in when this guard took its loop over (_Registry.add): not ours.
    inherited: FrameType | None = None
    loop_debug: list[tuple[asyncio.AbstractEventLoop, bool, float]] = field(default_factory=list)


class _Ticker:
    """On a uvloop loop, a callback every few milliseconds that notes when the loop was free.

    uvloop keeps no note of when its current batch of callbacks began that another thread can
    read, and a busy uvloop loop can keep the watchdog from the GIL for a long time (it drops
    the GIL on every iteration, so the watchdog's wait never times out). The last tick bounds
    the start of any callback seen afterwards, whatever the watchdog missed.
    """

    def __init__(
        self, loop: Any, period: float, beat: Callable[[], None], *, threadsafe: bool = False
    ) -> None:
        self._loop, self._period, self._beat = loop, period, beat
        self._stopped = False
        schedule = loop.call_soon_threadsafe if threadsafe else loop.call_soon
        self._handle = schedule(self._tick)

    def _tick(self) -> None:
        self._beat()
        if not self._stopped:
            self._handle = self._loop.call_later(self._period, self._tick)

    def stop(self) -> None:
        """Called on the loop's thread: cancel the next tick."""
        self._stopped = True
        self._handle.cancel()

    def retire(self) -> None:
        """Called from any thread (the guard ends, the loop runs on): the next tick is the last."""
        self._stopped = True


class LoopGuard:
    """Record every callback that holds an asyncio event loop for ``threshold`` seconds or more.

    ``with LoopGuard(threshold=0.1) as guard: asyncio.run(main())``, then read ``guard.events``.
    Works for loops started inside the ``with`` block in any thread, for the loop running in the
    current thread when the block is entered, and for loops that other threads started while an
    earlier guard was active and still run (taken over: the callback such a loop is in when the
    block is entered is not counted). ``debug=True`` also turns on asyncio's debug
    mode on those loops, with ``slow_callback_duration`` set to the threshold.
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
        self._threshold = float(threshold)
        self._timeout = timeout
        self._debug = debug
        self._hang: _HangInterrupt | None = None
        self._strict = strict
        # Strict mode: how often each (call, phase, code, line) was seen, and the ones not yet
        # made events (that reads source files: not while the caller is on the loop thread).
        self._calls: Counter[tuple[str, str | None, CodeType, int]] = Counter()
        self._new_calls: list[tuple[Any, ...]] = []
        self._cond = threading.Condition(threading.Lock())
        self._watched: dict[int, _Watched] = {}
        self._allow_depth: dict[int, int] = {}
        self._events: list[BlockEvent] = []
        # Blocks over but not yet made events: that reads source files, which drops the GIL,
        # so the watchdog does it only after sampling (see _poll).
        self._ended: list[tuple[_Watched, _Block, float, float]] = []
        self._phase: str | None = None
        self._fixture: str | None = None
        self._filter = FrameFilter()
        self._thread: threading.Thread | None = None
        self._active = False
        self._stopping = False
        # Recent collections per thread (a collection stalls only its own thread's loop). Tuples,
        # replaced rather than grown: a collection can start while a reader iterates them.
        self._gc_spans: dict[int, tuple[tuple[float, float], ...]] = {}
        self._gc_started: float | None = None

    @property
    def threshold(self) -> float:
        return self._threshold

    @property
    def events(self) -> list[BlockEvent]:
        """The blocks recorded so far, in the order they ended."""
        with self._cond:
            self._settle_caller()
            self._flush()
            return list(self._events)

    def _settle_caller(self) -> None:
        # A block that is no longer its thread's running callback has ended, even if the
        # watchdog has not looked since: the caller (the plugin, at the end of a test phase)
        # may have been woken by the very callback that ends it, on a server loop's thread.
        here, now = threading.get_ident(), _clock()
        frames = sys._current_frames()
        frames[here] = sys._getframe()
        for ident, watched in self._watched.items():
            self._beaten(watched, now)
            self._settle(watched, _find_run_frame(frames.get(ident)), now)
        del frames

    def close_ongoing(self) -> None:
        """End of a test phase: a callback still holding another thread's loop past the
        threshold is recorded now, in this phase; the rest of it is left out of later ones.

        A test that hands work to a server loop and does not wait for it would otherwise pass,
        and the next test be blamed for a block it did not start.
        """
        here, now = threading.get_ident(), _clock()
        with self._cond:
            self._settle_caller()
            for ident, watched in self._watched.items():
                block = watched.block
                if ident == here or block is None or not block.armed or block.inherited:
                    continue
                if now - block.start >= self._threshold:
                    self._close(watched, now)
                    watched.inherited = block.run_frame

    @property
    def context(self) -> tuple[str | None, str | None]:
        """The (phase, fixture) label that new blocks get."""
        return self._phase, self._fixture

    def set_context(self, phase: str | None = None, fixture: str | None = None) -> None:
        """Label the blocks that start from now on (the plugin passes its test phase here)."""
        with self._cond:
            if phase != self._phase:
                self._carry_over(phase, fixture)
            self._phase, self._fixture = phase, fixture

    def _carry_over(self, phase: str | None, fixture: str | None) -> None:
        # A callback on another thread's loop that began late in the last phase and is still
        # running: the phase it began in has had its verdict, so it counts in the new one.
        here = threading.get_ident()
        for ident, watched in self._watched.items():
            block = watched.block
            if ident != here and block is not None and not block.inherited:
                block.phase, block.fixture = phase, fixture

    def name_fixture(self, since: int, fixture: str) -> None:
        """Give ``fixture`` to the unnamed blocks recorded after the first ``since`` events."""
        with self._cond:
            self._flush()
            for i in range(since, len(self._events)):
                if self._events[i].fixture is None:
                    self._events[i] = replace(self._events[i], fixture=fixture)

    @contextmanager
    def allow(self) -> Iterator[None]:
        """Blocks of the current thread's loop inside this block are recorded as allowed."""
        ident = threading.get_ident()
        with self._cond:
            self._allow_depth[ident] = self._allow_depth.get(ident, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._allow_depth[ident] -= 1

    def __enter__(self) -> LoopGuard:
        if self._active:
            raise RuntimeError("this LoopGuard is already active")
        self._active, self._stopping = True, False
        gc.callbacks.append(self._on_gc)
        if self._timeout is not None:
            self._hang = _HangInterrupt.install()
        if self._strict:
            _strict.HUB.add(self._record_call)
        adopted = _REGISTRY.add(self)
        running = asyncio._get_running_loop()
        if running is not None and not any(loop is running for _, loop in adopted):
            self._loop_started(running)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _REGISTRY.remove(self)
        gc.callbacks.remove(self._on_gc)
        if self._strict:
            _strict.HUB.remove(self._record_call)
        if self._hang is not None:
            self._hang.uninstall()
            self._hang = None
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread.ident is not None:
            thread.join()
        with self._cond:
            for watched in self._watched.values():
                self._settle(watched, None, _clock())
                self._restore_debug(watched)
                for ticker in watched.tickers:
                    ticker.retire()
                if watched.queue_clock is not None:
                    watched.queue_clock.close()
            self._watched.clear()
        self._active = False

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # A garbage-collection pause stops the loop too, but no line of the test can fix it:
        # its time is left out of every verdict. Runs with the GIL held, so needs no lock.
        if phase == "start":
            self._gc_started = _clock()
        elif self._gc_started is not None:
            ident = threading.get_ident()
            recent = self._gc_spans.get(ident, ())[-255:]
            self._gc_spans[ident] = (*recent, (self._gc_started, _clock()))
            self._gc_started = None

    # -- called on the loop thread by the run_forever wrapper ----------------------------

    def _loop_started(self, loop: asyncio.AbstractEventLoop, ident: int | None = None) -> None:
        """``loop`` runs on thread ``ident``: the current one, or another one already running it
        when this guard became active (taken over, see ``_Registry.add``)."""
        here = threading.get_ident()
        ident = here if ident is None else ident
        with self._cond:
            if self._stopping:
                return
            watched = self._watched.get(ident)
            if watched is None:
                watched = self._new_watched(ident)
            else:
                watched.depth += 1
            # Debug mode is switched from the loop's own thread only (set_debug is not safe
            # from another one); a loop taken over keeps its setting.
            if self._debug and ident == here:
                self._apply_debug(watched, loop)
            watched.loops.append(loop)
            if not isinstance(loop, asyncio.BaseEventLoop):
                beat = partial(self._beat, watched)
                ticker = _Ticker(loop, self._tick_period(), beat, threadsafe=ident != here)
                watched.tickers.append(ticker)
            starting = self._thread is None
            if starting:
                self._thread = threading.Thread(
                    target=self._watch, name="pytest-loopguard-watchdog", daemon=True
                )
            thread = self._thread
        # Started outside the lock: a watchdog that wakes up to wait for a lock this thread still
        # holds costs a forced GIL hand-off, about as much as a thousand loop callbacks.
        if starting and thread is not None:
            thread.start()

    def _new_watched(self, ident: int) -> _Watched:
        if ident == threading.get_ident():
            thread: threading.Thread | None = threading.current_thread()
        else:
            thread = next((t for t in threading.enumerate() if t.ident == ident), None)
        name = thread.name if thread is not None else f"thread {ident}"
        native = getattr(thread, "native_id", None)
        clock = _cpu_clock(ident)
        watched = _Watched(ident, name, clock, _clock(), _read(clock))
        watched.native_id = native
        if ident != threading.get_ident():
            watched.inherited = _find_run_frame(sys._current_frames().get(ident))
        self._watched[ident] = watched
        return watched

    def _loop_stopped(self, loop: asyncio.AbstractEventLoop) -> None:
        ident = threading.get_ident()
        with self._cond:
            watched = self._watched.get(ident)
            if watched is None:
                return
            watched.depth -= 1
            if watched.loops and watched.loops[-1] is loop:
                watched.loops.pop()
                if not isinstance(loop, asyncio.BaseEventLoop) and watched.tickers:
                    watched.tickers.pop().stop()
            self._settle(watched, None, _clock())
            if watched.depth == 0:
                self._restore_debug(watched)
                del self._watched[ident]
                if watched.queue_clock is not None:
                    watched.queue_clock.close()

    def _apply_debug(self, watched: _Watched, loop: asyncio.AbstractEventLoop) -> None:
        slow = getattr(loop, "slow_callback_duration", 0.1)
        watched.loop_debug.append((loop, loop.get_debug(), slow))
        loop.set_debug(True)
        loop.slow_callback_duration = self._threshold

    @staticmethod
    def _restore_debug(watched: _Watched) -> None:
        for loop, debug, slow in reversed(watched.loop_debug):
            if not loop.is_closed():
                loop.set_debug(debug)
            loop.slow_callback_duration = slow
        watched.loop_debug.clear()

    # -- the watchdog --------------------------------------------------------------------

    def _watch(self) -> None:
        # A timed wait even with no loop running: waking this thread on every loop start would
        # cost a GIL hand-off each time, and pytest-asyncio starts loops several times a test.
        with self._cond:
            while not self._stopping:
                self._cond.wait(self._interval())
                if not self._stopping and self._watched:
                    self._poll()

    def _interval(self) -> float:
        # Look fast only while some callback has held its loop for half the threshold.
        if any(w.block is not None and w.block.armed for w in self._watched.values()):
            return min(max(self._threshold / 20, 0.001), 0.005)
        return min(max(self._threshold / 2, 0.001), 0.05)

    def _poll(self) -> None:
        frames = sys._current_frames()
        now = _clock()
        for watched in self._watched.values():
            top = frames.get(watched.ident)
            run_frame = _find_run_frame(top)
            self._beaten(watched, now)
            self._settle(watched, run_frame, now)
            if run_frame is not None:
                if watched.block is None:
                    watched.block = self._open(watched, run_frame, now)
                self._observe(watched, watched.block, top, now)
            watched.last_poll = now
        # Only once every thread is sampled: a loop thread given the GIL would move on from the
        # line its sample must name.
        for watched in self._watched.values():
            self._after_sampling(watched, frames.get(watched.ident), now)
        del frames
        self._flush()

    def _settle(self, watched: _Watched, run_frame: FrameType | None, now: float) -> None:
        """Close the block of ``watched`` if ``run_frame`` is no longer its callback."""
        block = watched.block
        if block is not None and block.run_frame is not run_frame:
            self._close(watched, now)

    def _beaten(self, watched: _Watched, now: float) -> None:
        """Close a block whose heartbeat has run: the loop got free in the meantime."""
        block = watched.block
        if block is not None and block.ended_by is not None:
            self._close(watched, now, ended_by=block.ended_by)

    def _open(self, watched: _Watched, run_frame: FrameType, now: float) -> _Block:
        # CPU time is counted from the previous look: a block first seen when it is nearly
        # over (C code kept this watchdog waiting for the GIL) still gets a meaningful share.
        cpu = watched.cpu_at_poll
        since = max(watched.last_poll, watched.beat_ran)
        start = _start_estimate(run_frame, since, now, self._tick_period())
        block = _Block(run_frame, start, now, cpu, cpu, self._phase, self._fixture)
        block.cpu_since, block.opened = watched.last_poll, now
        # The same coroutine frame runs every step of a task on uvloop, so seeing it twice does
        # not prove one callback held the loop; a tick run in between disproves it.
        block.needs_beat = _is_uvloop_callback(run_frame)
        block.inherited = run_frame is watched.inherited
        return block

    def _tick_period(self) -> float:
        return min(max(self._threshold / 10, 0.001), 0.01)

    def _post_beat(self, watched: _Watched, block: _Block, now: float) -> None:
        """Queue a callback behind ``block``: when it runs, the block is over."""
        block.beat = now
        # A closed loop (RuntimeError) is not running anything either.
        with suppress(RuntimeError, IndexError):
            watched.loops[-1].call_soon_threadsafe(self._beat, watched)

    @staticmethod
    def _beat(watched: _Watched) -> None:
        # Runs on the loop thread, so only when no callback holds the loop. Lock-free on
        # purpose: plain attribute stores, and a tick must never wait for the watchdog.
        now = _clock()
        watched.beat_ran = now
        block = watched.block
        if block is None or block.ended_by is not None:
            return
        # A beat posted behind the block, or on uvloop any tick run after it was seen: either
        # ran only once the callback let go of the loop.
        if block.beat is not None or (block.needs_beat and now > block.opened):
            block.ended_by = now

    def _observe(self, watched: _Watched, block: _Block, top: FrameType | None, now: float) -> None:
        since = now - max(block.last_seen if block.counts else block.start, block.start)
        block.last_seen = now
        block.armed = now - block.start >= self._threshold / 2
        if self._allow_depth.get(watched.ident, 0) > 0:
            block.allowed = True
        if self._sample(block, top):
            block.importing += since

    def _after_sampling(self, watched: _Watched, top: FrameType | None, now: float) -> None:
        """What may drop the GIL (a socket write, /proc, source files): after every sample."""
        block = watched.block
        watched.cpu_at_poll = cpu = _read(watched.cpu_clock)
        if block is None:
            return
        block.cpu_last = cpu
        if not block.armed:
            return  # the rest drops the GIL: only for a block that may get a verdict
        queued = _queued(watched)
        if block.queued_first is None:
            block.queued_first, block.queued_since = queued, now
        block.queued_last = queued
        if block.beat is None:
            # A late look must not stretch a block: the heartbeat runs right after the callback
            # and bounds its end even when a busy loop keeps this watchdog from the GIL.
            self._post_beat(watched, block, now)
        if block.hung or block.inherited or self._timeout is None:
            return
        if now - block.start >= self._timeout:
            self._interrupt(watched, block, top, now)

    def _interrupt(
        self, watched: _Watched, block: _Block, top: FrameType | None, now: float
    ) -> None:
        """A hang: record it with the whole stack now, then break the loop thread out of it."""
        block.hung = True
        full = tuple(describe(f, n) for f, n in current_stack(top, _ANCHORS))
        event = self._event(watched, block, now, 0.0)
        event = replace(event, stack=tuple(reversed(full)), timed_out=True)
        self._events.append(event)
        if self._hang is not None:
            self._hang.fire(watched.ident, block.run_frame, event)

    def _sample(self, block: _Block, top: FrameType | None) -> bool:
        """Count the line the loop thread is on; True when it is inside a first import."""
        stack = current_stack(top, _ANCHORS)
        user = next((i for i, (f, _) in enumerate(stack) if self._filter.is_user(f)), None)
        index = user if user is not None else 0
        if not stack:
            return False
        frame, lineno = stack[index]
        key = (frame.f_code, lineno)
        block.counts[key] += 1
        if key not in block.examples:
            block.examples[key] = self._resolve(stack, user)
        return any(f.f_code.co_filename.startswith(_IMPORT_MACHINERY) for f, _ in stack)

    def _resolve(self, stack: list[tuple[FrameType, int]], user: int | None) -> _Sample:
        # The user's frames make the trace; the modules the innermost of them called pick the hint.
        if user is None:
            return raw(*stack[0]), (), (), _through(stack)
        callees = tuple(str(f.f_globals.get("__name__", "")) for f, _ in reversed(stack[:user]))
        users = [raw(f, n) for f, n in stack[user:] if self._filter.is_user(f)]
        return users[0], tuple(reversed(users)), callees, _through(stack)

    def _close(self, watched: _Watched, now: float, ended_by: float | None = None) -> None:
        """End the block of ``watched``: it was last seen running, and is gone at ``now``."""
        block, watched.block = watched.block, None
        if block is not None and block.inherited:
            watched.inherited = None  # over: whatever runs next is the test's
        if block is None or not block.counts or not block.armed or block.hung or block.inherited:
            # Unarmed: it had run under half the threshold when last seen. A look that came
            # late proves nothing: a busy loop thread that releases the GIL around every
            # select() and takes it straight back can keep this watchdog waiting for it.
            return
        gone = now if ended_by is None else max(block.last_seen, min(now, ended_by))
        end = (block.last_seen + gone) / 2
        end -= self._collecting(watched.ident, block.start, end)
        # A first import runs once per process, not per request: the time the looks found it
        # importing is left out, like garbage collection (an import is not a bug to fix).
        end -= block.importing
        # Time spent waiting for a CPU is the machine's load: no line of the test can fix it.
        queued = _run_queue_wait(block, end - block.start)
        if end - queued - block.start >= self._threshold:
            self._ended.append((watched, block, end - queued, queued))

    def _flush(self) -> None:
        ended, self._ended = self._ended, []
        self._events.extend(self._event(w, b, end, queued) for w, b, end, queued in ended)
        calls, self._new_calls = self._new_calls, []
        self._events.extend(self._call_event(record) for record in calls)

    def _record_call(self, call: str, hint: _hints.Hint, frame: FrameType) -> None:
        """Strict mode: a known blocking call from ``frame``; counts only inside a callback."""
        watched = self._watched.get(threading.get_ident())
        if watched is None or _exempt(frame):
            return  # a worker thread, or asyncio/threading internals (checked first: cheap)
        run_frame = _find_run_frame(frame)
        if run_frame is None or run_frame is watched.inherited:
            return  # the loop thread outside any callback, or a callback not the test's
        stack = current_stack(frame, _ANCHORS)
        if self._exempt_stack(stack):
            return
        user = next((i for i, (f, _) in enumerate(stack) if self._filter.is_user(f)), None)
        top, users, _, through = self._resolve(stack, user)
        allowed = self._allow_depth.get(watched.ident, 0) > 0
        with self._cond:
            key = (call, self._phase, top[0], top[1])
            self._calls[key] += 1
            if self._calls[key] == 1:
                self._new_calls.append(
                    (key, hint, top, users, through, allowed, watched.name, self._fixture)
                )

    def _exempt_stack(self, stack: list[tuple[FrameType, int]]) -> bool:
        """Whether a blocking call with this stack (innermost first) is none of the test's."""
        user_seen = False
        for frame, _ in stack:
            if _module_root(frame) in _strict.EXEMPT_MODULES:
                return True
            if not user_seen and _exempt(frame):
                return True  # made by asyncio or threading internals, not by user code
            user_seen = user_seen or self._filter.is_user(frame)
        return False

    def _call_event(self, record: tuple[Any, ...]) -> BlockEvent:
        key, hint, top, users, through, allowed, thread, fixture = record
        return BlockEvent(
            duration=0.0,
            threshold=self._threshold,
            cpu_time=None,
            frame=resolve(top),
            stack=tuple(resolve(f) for f in users),
            hint=hint,
            allowed=allowed,
            phase=key[1],
            fixture=fixture,
            thread=thread,
            samples=self._calls[key],
            through=through,
            call=key[0],
        )

    def _collecting(self, ident: int, start: float, end: float) -> float:
        """Seconds of garbage collection on thread ``ident`` between ``start`` and ``end``."""
        spans = self._gc_spans.get(ident, ())
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)

    def _event(self, watched: _Watched, block: _Block, end: float, queued: float) -> BlockEvent:
        duration = end - block.start
        ((key, _),) = block.counts.most_common(1)
        top, users, callees, through = block.examples[key]
        frame, stack = resolve(top), tuple(resolve(f) for f in users)
        cpu_time = _cpu_time(block, duration + queued)
        ratio = None if cpu_time is None else cpu_time / duration
        hint = _hints.classify(frame.line if frame else "", callees, ratio)
        return BlockEvent(
            duration=duration,
            threshold=self._threshold,
            cpu_time=cpu_time,
            frame=frame,
            stack=stack,
            hint=hint,
            allowed=block.allowed,
            phase=block.phase,
            fixture=block.fixture,
            thread=watched.name,
            samples=sum(block.counts.values()),
            through=through,
            cpu_wait=queued,
        )


def _module_root(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".", 1)[0]


def _exempt(frame: FrameType) -> bool:
    """Whether a blocking call made right from ``frame`` is the machinery's, not the test's."""
    root = _module_root(frame)
    # Thread.start() waits for the new thread to say it runs: the cost of starting a thread.
    if root == "threading" and frame.f_code.co_name == "start":
        return True
    return root in _strict.EXEMPT_MODULES or root in _strict.EXEMPT_CALLERS


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class LoopHangError(BaseException):
    """Raised inside a callback that held the loop past the guard's ``timeout``.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in the code under test
    cannot swallow it and hang again; pytest reports it as the test's failure.
    """

    def __init__(self, event: BlockEvent | None = None) -> None:
        # No event when raised asynchronously in another thread (Python makes it bare).
        super().__init__(*(() if event is None else (event,)))
        self.event = event

    def __str__(self) -> str:
        if self.event is None:
            return "the event loop was held past loop_block_timeout; the callback was interrupted"
        from ._report import render  # the report module imports this one

        return render([self.event])


class _HangInterrupt:
    """Delivers a LoopHangError into a hung loop thread.

    The main thread gets a real signal: it wakes a wait in C (a lock, ``Future.result()``)
    with EINTR, and the handler raises. Another thread gets an asynchronous exception, which
    fires at its next Python instruction (not inside a wait in C: documented).
    """

    SIGNAL = getattr(signal, "SIGUSR2", None)

    def __init__(self, installed: bool, previous: Any = None) -> None:
        self._installed, self._previous = installed, previous
        self._pending: tuple[FrameType, BlockEvent] | None = None

    @classmethod
    def install(cls) -> _HangInterrupt:
        if cls.SIGNAL is None or threading.current_thread() is not threading.main_thread():
            return cls(False)
        hang = cls(True, signal.getsignal(cls.SIGNAL))
        signal.signal(cls.SIGNAL, hang._handle)
        return hang

    def uninstall(self) -> None:
        if self._installed and signal.getsignal(self.SIGNAL) == self._handle:  # type: ignore[arg-type]
            signal.signal(self.SIGNAL, self._previous or signal.SIG_DFL)  # type: ignore[arg-type]

    def fire(self, ident: int, run_frame: FrameType, event: BlockEvent) -> None:
        if ident == threading.main_thread().ident and self._installed:
            self._pending = (run_frame, event)
            signal.pthread_kill(ident, self.SIGNAL)  # type: ignore[arg-type]
        else:
            _raise_in_thread(ident, LoopHangError)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        pending, self._pending = self._pending, None
        # Only inside the callback that hung: if it ended meanwhile, raising would hit
        # whatever runs now (the loop, pytest).
        if pending is not None and _find_run_frame(frame) is pending[0]:
            raise LoopHangError(pending[1])


def _raise_in_thread(ident: int, exc: type[BaseException]) -> None:
    import ctypes

    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc))


class _RunQueueClock:
    """Linux: how long a thread has waited, runnable, for a CPU (``/proc/.../schedstat``).

    That time is the machine's load, not the test's code: a loaded CI runner can stretch a
    40 ms callback past the threshold while the thread sits in the run queue.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, native_id: int) -> _RunQueueClock | None:
        try:
            return cls(os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY))
        except (OSError, ValueError):
            return None

    def read(self) -> float | None:
        try:
            return int(os.pread(self._fd, 96, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        with suppress(OSError):
            os.close(self._fd)


def _queued(watched: _Watched) -> float | None:
    if watched.queue_clock is None and watched.native_id is not None:
        watched.queue_clock = _RunQueueClock.open(watched.native_id)
        watched.native_id = None  # one try
    clock = watched.queue_clock
    return None if clock is None else clock.read()


def _run_queue_wait(block: _Block, duration: float) -> float:
    """Seconds of the block the loop thread spent runnable but not running, scaled like CPU."""
    if block.queued_first is None or block.queued_last is None:
        return 0.0
    observed = block.last_seen - block.queued_since
    waited = max(block.queued_last - block.queued_first, 0.0)
    if observed <= 0:
        return min(waited, duration)
    return min(waited * duration / observed, duration)


def _cpu_time(block: _Block, duration: float) -> float | None:
    """CPU time over the whole block, scaled from the part of it that the watchdog observed."""
    if block.cpu_first is None or block.cpu_last is None:
        return None
    observed = block.last_seen - block.cpu_since
    used = max(block.cpu_last - block.cpu_first, 0.0)
    if observed <= 0:
        return used
    return min(used * duration / observed, duration)


def _through(stack: list[tuple[FrameType, int]]) -> tuple[Through, ...]:
    return tuple(
        (str(f.f_globals.get("__name__", "")), f.f_code.co_name, f.f_code.co_filename)
        for f, _ in stack
    )


def _start_estimate(run_frame: FrameType, since: float, now: float, tick: float) -> float:
    """When the callback first seen at ``now`` started: after ``since``, when the loop was seen
    running something else or free.

    The stdlib loop notes in ``_run_once`` when its current batch of callbacks began; a callback
    run in that batch cannot have started earlier, and usually started within microseconds.
    On uvloop, ``since`` is at most one ``tick`` old unless this callback held the loop.
    """
    if _is_uvloop_callback(run_frame):
        return since + min(now - since, tick) / 2
    batch = _batch_start(run_frame)
    if batch is not None and since <= batch <= now:
        return batch
    return (since + now) / 2


def _batch_start(run_frame: FrameType) -> float | None:
    caller = run_frame.f_back
    # By name: nest_asyncio's re-implementation of _run_once keeps the same ``end_time``.
    if caller is None or caller.f_code.co_name != "_run_once":
        return None
    end_time = caller.f_locals.get("end_time")
    if not isinstance(end_time, float):
        return None
    # end_time is on the loop's clock (time.monotonic); move it onto ours, with the offset
    # read back to back (an offset from an earlier ``now`` would shift it by the delay).
    return end_time + (_clock() - _monotonic())


def _is_uvloop_callback(run_frame: FrameType) -> bool:
    caller = run_frame.f_back
    return caller is not None and caller.f_code is _UV_ENTRY


def _find_run_frame(top: FrameType | None) -> FrameType | None:
    """The frame of the callback the loop thread is running, or None when it is not in one.

    On the stdlib loop that is the ``Handle._run`` frame, new for every callback. On uvloop it
    is the frame right above ``_run_uvloop``; a coroutine keeps that frame across its steps, so
    uvloop blocks are also checked with a heartbeat (see ``LoopGuard._beaten``).
    """
    above, frame = None, top
    while frame is not None:
        code = frame.f_code
        if code is _RUN_CODE:
            return frame
        if code is _UV_ENTRY:
            return above
        above, frame = frame, frame.f_back
    return None


class _Registry:
    """The process-wide patches of ``run_forever``, installed while at least one guard is active.

    The stdlib's ``BaseEventLoop`` is always patched; uvloop's ``Loop`` too when uvloop has been
    imported by then (conftest loop factories and policies import it at collection).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.guards: tuple[LoopGuard, ...] = ()
        # (class, method name, what it had in its own __dict__ or None, the wrapper we set)
        self._patched: list[tuple[type, str, object, object]] = []
        # (thread ident, loop) for each loop inside our wrapper, even after uninstalling: a
        # server loop that a module fixture started keeps running through later tests.
        self._running: list[tuple[int, Any]] = []

    def add(self, guard: LoopGuard) -> list[tuple[int, Any]]:
        """Make ``guard`` active; it takes over the loops already running, which are returned."""
        with self._lock:
            if not self.guards:
                self._install()
            self.guards = (*self.guards, guard)
            # Under the lock: a loop cannot stop between being listed and being taken over.
            for ident, loop in self._running:
                guard._loop_started(loop, ident)
            return list(self._running)

    def remove(self, guard: LoopGuard) -> None:
        with self._lock:
            self.guards = tuple(g for g in self.guards if g is not guard)
            if not self.guards:
                self._uninstall()

    @property
    def installed(self) -> bool:
        return bool(self._patched)

    @contextmanager
    def running(self, loop: Any) -> Iterator[None]:
        """Tell every active guard that this thread runs ``loop`` until the block ends."""
        entry = (threading.get_ident(), loop)
        guards = self._enter(entry)
        if guards is None:
            yield
            return
        for guard in guards:
            guard._loop_started(loop)
        try:
            yield
        finally:
            for guard in self._leave(entry, guards):
                guard._loop_stopped(loop)

    def _enter(self, entry: tuple[int, Any]) -> tuple[LoopGuard, ...] | None:
        """The guards to tell, or None when this thread already runs this loop in our wrapper:
        a nested run of it (nest_asyncio), or a subclass's run_forever calling its base's."""
        ident, loop = entry
        with self._lock:
            if any(i == ident and running is loop for i, running in self._running):
                return None
            self._running.append(entry)
            return self.guards

    def _leave(
        self, entry: tuple[int, Any], guards: tuple[LoopGuard, ...]
    ) -> tuple[LoopGuard, ...]:
        """The guards to tell that the loop stopped: also those that took it over since."""
        with self._lock:
            self._running.remove(entry)
            return (*guards, *(g for g in self.guards if g not in guards))

    def _install(self) -> None:
        try:
            for cls, name in _stdlib_entry_points():
                self._patch(cls, name, _run_stdlib)
            uvloop = sys.modules.get("uvloop")
            uv_class = getattr(uvloop, "Loop", None)
            if isinstance(uv_class, type):
                self._patch(uv_class, "run_forever", _run_uvloop)
        except BaseException:
            self._uninstall()  # all or nothing
            raise

    def _patch(self, cls: type, name: str, entry: Callable[..., Any]) -> None:
        own = cls.__dict__.get(name)
        original: Callable[..., Any] = getattr(cls, name)

        def run(loop: Any, *args: Any) -> Any:
            return entry(loop, original, *args)

        run.__name__ = run.__qualname__ = name
        run.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(cls, name, run)
        self._patched.append((cls, name, own, run))

    def _uninstall(self) -> None:
        for cls, name, own, ours in reversed(self._patched):
            if cls.__dict__.get(name) is not ours:
                continue  # replaced since by the test or a library: theirs stays
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
        self._patched.clear()


def _stdlib_entry_points() -> list[tuple[type, str]]:
    """Where stdlib-based loops start running callbacks: ``BaseEventLoop.run_forever``, and the
    ``run_forever``/``run_until_complete`` of any subclass that has its own.

    Windows' proactor loop has its own ``run_forever``; ``nest_asyncio.apply()`` sets both on
    the loop's class for good, and its ``run_until_complete`` never calls ``run_forever``:
    patching only the base would leave every later loop of that class unwatched.
    """
    found: list[tuple[type, str]] = [(asyncio.BaseEventLoop, "run_forever")]
    todo = list(asyncio.BaseEventLoop.__subclasses__())
    while todo:
        cls = todo.pop()
        for name in ("run_forever", "run_until_complete"):
            if name in cls.__dict__ and (cls, name) not in found:
                found.append((cls, name))
        todo.extend(cls.__subclasses__())
    return found


def _run_stdlib(loop: Any, original: Callable[..., Any], *args: Any) -> Any:
    with _REGISTRY.running(loop):
        return original(loop, *args)


def _run_uvloop(loop: Any, original: Callable[..., Any], *args: Any) -> Any:
    # uvloop runs callbacks from C: this frame is the Python frame right under each of them,
    # so the frame above it on a loop thread's stack is the running callback.
    with _REGISTRY.running(loop):
        return original(loop, *args)


_REGISTRY = _Registry()
_UV_ENTRY: CodeType = _run_uvloop.__code__
_ANCHORS = frozenset({_RUN_CODE, _UV_ENTRY})


def is_patched() -> bool:
    """Whether the engine's ``run_forever`` patch is in place (for leak checks)."""
    return _REGISTRY.installed
