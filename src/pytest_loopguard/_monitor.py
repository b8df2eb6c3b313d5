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
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import CodeType, FrameType, TracebackType

from . import _hints
from ._frames import FrameFilter, FrameInfo, RawFrame, current_stack, raw, resolve

# Captured at import so that a test patching time.perf_counter cannot skew a verdict.
_clock = time.perf_counter
_monotonic = time.monotonic
_RUN_CODE: CodeType = asyncio.events.Handle._run.__code__
_IMPORT_MACHINERY = "<frozen importlib._bootstrap"
_RUN_ONCE_CODE: CodeType = asyncio.BaseEventLoop._run_once.__code__  # type: ignore[attr-defined]


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
    importing: float = 0.0  # seconds of the block spent in first imports
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
    depth: int = 1
    block: _Block | None = None
    loop_debug: list[tuple[asyncio.AbstractEventLoop, bool, float]] = field(default_factory=list)


class LoopGuard:
    """Record every callback that holds an asyncio event loop for ``threshold`` seconds or more.

    ``with LoopGuard(threshold=0.1) as guard: asyncio.run(main())``, then read ``guard.events``.
    Works for loops started inside the ``with`` block in any thread, and for the loop running
    in the current thread when the block is entered. ``debug=True`` also turns on asyncio's debug
    mode on those loops, with ``slow_callback_duration`` set to the threshold.
    """

    def __init__(self, threshold: float = 0.1, *, debug: bool = False) -> None:
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a finite number of seconds > 0, got {threshold!r}")
        self._threshold = float(threshold)
        self._debug = debug
        self._cond = threading.Condition(threading.Lock())
        self._watched: dict[int, _Watched] = {}
        self._allow_depth: dict[int, int] = {}
        self._events: list[BlockEvent] = []
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
            return list(self._events)

    def _settle_caller(self) -> None:
        # Asked from a loop callback: a block of this thread that is not the running callback
        # has ended, even if the watchdog has not looked since.
        watched = self._watched.get(threading.get_ident())
        if watched is not None:
            self._settle(watched, _find_run_frame(sys._getframe()), _clock())

    @property
    def context(self) -> tuple[str | None, str | None]:
        """The (phase, fixture) label that new blocks get."""
        return self._phase, self._fixture

    def set_context(self, phase: str | None = None, fixture: str | None = None) -> None:
        """Label the blocks that start from now on (the plugin passes its test phase here)."""
        with self._cond:
            self._phase, self._fixture = phase, fixture

    def name_fixture(self, since: int, fixture: str) -> None:
        """Give ``fixture`` to the unnamed blocks recorded after the first ``since`` events."""
        with self._cond:
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
        _REGISTRY.add(self)
        running = asyncio._get_running_loop()
        if running is not None:
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

    def _loop_started(self, loop: asyncio.AbstractEventLoop) -> None:
        ident = threading.get_ident()
        with self._cond:
            if self._stopping:
                return
            watched = self._watched.get(ident)
            if watched is None:
                name = threading.current_thread().name
                clock = _cpu_clock(ident)
                watched = _Watched(ident, name, clock, _clock(), _read(clock))
                self._watched[ident] = watched
            else:
                watched.depth += 1
            if self._debug:
                self._apply_debug(watched, loop)
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

    def _loop_stopped(self, loop: asyncio.AbstractEventLoop) -> None:
        ident = threading.get_ident()
        with self._cond:
            watched = self._watched.get(ident)
            if watched is None:
                return
            watched.depth -= 1
            self._settle(watched, None, _clock())
            if watched.depth == 0:
                self._restore_debug(watched)
                del self._watched[ident]

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
            self._settle(watched, run_frame, now)
            if run_frame is not None:
                if watched.block is None:
                    watched.block = self._open(watched, run_frame, now)
                self._observe(watched, watched.block, top, now)
            watched.last_poll = now
            watched.cpu_at_poll = _read(watched.cpu_clock)
        del frames

    def _settle(self, watched: _Watched, run_frame: FrameType | None, now: float) -> None:
        """Close the block of ``watched`` if ``run_frame`` is no longer its callback."""
        block = watched.block
        if block is not None and block.run_frame is not run_frame:
            self._close(watched, now)

    def _open(self, watched: _Watched, run_frame: FrameType, now: float) -> _Block:
        # CPU time is counted from the previous look: a block first seen when it is nearly
        # over (C code kept this watchdog waiting for the GIL) still gets a meaningful share.
        cpu = watched.cpu_at_poll
        start = _start_estimate(run_frame, watched.last_poll, now)
        block = _Block(run_frame, start, now, cpu, cpu, self._phase, self._fixture)
        block.cpu_since = watched.last_poll
        return block

    def _observe(self, watched: _Watched, block: _Block, top: FrameType | None, now: float) -> None:
        since = now - max(block.last_seen if block.counts else block.start, block.start)
        block.last_seen = now
        block.armed = now - block.start >= self._threshold / 2
        block.cpu_last = _read(watched.cpu_clock)
        if self._allow_depth.get(watched.ident, 0) > 0:
            block.allowed = True
        if self._sample(block, top):
            block.importing += since

    def _sample(self, block: _Block, top: FrameType | None) -> bool:
        """Count the line the loop thread is on; True when it is inside a first import."""
        stack = current_stack(top, _RUN_CODE)
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

    def _close(self, watched: _Watched, now: float) -> None:
        """End the block of ``watched``: it was last seen running, and is gone at ``now``."""
        block, watched.block = watched.block, None
        if block is None or not block.counts or not block.armed:
            # Unarmed: it had run under half the threshold when last seen. A look that came
            # late proves nothing: a busy loop thread that releases the GIL around every
            # select() and takes it straight back can keep this watchdog waiting for it.
            return
        end = (block.last_seen + now) / 2
        end -= self._collecting(watched.ident, block.start, end)
        # A first import runs once per process, not per request: the time the looks found it
        # importing is left out, like garbage collection (an import is not a bug to fix).
        end -= block.importing
        if end - block.start >= self._threshold:
            self._events.append(self._event(watched, block, end))

    def _collecting(self, ident: int, start: float, end: float) -> float:
        """Seconds of garbage collection on thread ``ident`` between ``start`` and ``end``."""
        spans = self._gc_spans.get(ident, ())
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)

    def _event(self, watched: _Watched, block: _Block, end: float) -> BlockEvent:
        duration = end - block.start
        ((key, _),) = block.counts.most_common(1)
        top, users, callees, through = block.examples[key]
        frame, stack = resolve(top), tuple(resolve(f) for f in users)
        cpu_time = _cpu_time(block, duration)
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
        )


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


def _start_estimate(run_frame: FrameType, last_poll: float, now: float) -> float:
    """When the callback first seen at ``now`` started: after ``last_poll``, which did not see it.

    The stdlib loop notes in ``_run_once`` when its current batch of callbacks began; a callback
    run in that batch cannot have started earlier, and usually started within microseconds.
    """
    batch = _batch_start(run_frame, now)
    if batch is not None and last_poll <= batch <= now:
        return batch
    return (last_poll + now) / 2


def _batch_start(run_frame: FrameType, now: float) -> float | None:
    caller = run_frame.f_back
    if caller is None or caller.f_code is not _RUN_ONCE_CODE:
        return None
    end_time = caller.f_locals.get("end_time")
    if not isinstance(end_time, float):
        return None
    # end_time is on the loop's clock (time.monotonic); move it onto ours.
    return end_time + (now - _monotonic())


def _find_run_frame(top: FrameType | None) -> FrameType | None:
    frame = top
    while frame is not None:
        if frame.f_code is _RUN_CODE:
            return frame
        frame = frame.f_back
    return None


class _Registry:
    """The process-wide patch of ``run_forever``, installed while at least one guard is active."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._guards: tuple[LoopGuard, ...] = ()
        self._original: Callable[[asyncio.BaseEventLoop], None] | None = None

    def add(self, guard: LoopGuard) -> None:
        with self._lock:
            if not self._guards:
                self._install()
            self._guards = (*self._guards, guard)

    def remove(self, guard: LoopGuard) -> None:
        with self._lock:
            self._guards = tuple(g for g in self._guards if g is not guard)
            if not self._guards:
                self._uninstall()

    @property
    def installed(self) -> bool:
        return self._original is not None

    def _install(self) -> None:
        original = asyncio.BaseEventLoop.run_forever
        registry = self

        def run_forever(loop: asyncio.BaseEventLoop) -> None:
            guards = registry._guards
            for guard in guards:
                guard._loop_started(loop)
            try:
                original(loop)
            finally:
                for guard in guards:
                    guard._loop_stopped(loop)

        run_forever.__wrapped__ = original  # type: ignore[attr-defined]
        self._original = original
        asyncio.BaseEventLoop.run_forever = run_forever  # type: ignore[method-assign,assignment]

    def _uninstall(self) -> None:
        if self._original is not None:
            asyncio.BaseEventLoop.run_forever = self._original  # type: ignore[method-assign,assignment]
            self._original = None


_REGISTRY = _Registry()


def is_patched() -> bool:
    """Whether the engine's ``run_forever`` patch is in place (for leak checks)."""
    return _REGISTRY.installed
