"""One unit of work's life on a loop thread: opened when first seen, observed, closed.

The watchdog opens a ``Block`` when it first sees a loop thread inside a unit of work (a
callback, a task step), and keeps it while it sees the same unit on later looks. Each look
counts the user line the thread is on. Once the unit is over, ``measure`` says how long it held
the loop, less what no line of the test can fix, and ``event`` turns it into a ``BlockEvent``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import CodeType
from typing import TYPE_CHECKING

from .._base import debugger, greenlets, hints
from .._base.events import BlockEvent
from .._base.frames import FrameFilter, Sample, Stack, first_user, resolve, sample

if TYPE_CHECKING:
    from .subscriber import Subscriber

_IMPORT_MACHINERY = "<frozen importlib._bootstrap"
_STARVED = 0.02  # a gap between the last look and the beat this long: the looks were kept away


@dataclass(frozen=True)
class Measured:
    """A block's end (less first imports and waiting for a CPU), the seconds it waited for a
    CPU, and the seconds of automatic garbage collections in it (all, and the longest few)."""

    end: float
    queued: float
    collected: float
    landed: float

    def counts(self, start: float, threshold: float) -> bool:
        """Whether the block reaches ``threshold``. Its collections count: a callback that
        allocates much sets off many, part of what it costs. The longest one or two may
        merely have landed in a short callback (a big heap makes a full collection long,
        whatever set it off): the block must reach the threshold without them."""
        took = self.end - start
        return took >= threshold and took - self.landed >= threshold


@dataclass(eq=False)
class Label:
    """What one guard makes of a block: the phase and fixture it began in, and whether the guard
    allowed it (``with guard.allow():`` was active on its thread while it ran)."""

    guard: Subscriber
    phase: str | None
    fixture: str | None
    allowed: bool = False


@dataclass(eq=False)
class Block:
    """A unit of work seen on a loop thread: grows while the same unit stays."""

    unit: object
    start: float
    last_seen: float
    cpu_first: float | None
    cpu_since: float  # when cpu_first was read
    opened: float  # when the watchdog first saw it
    # The guards it counts for. Empty for a unit that was already running when the only guard
    # took its loop over: it began before that guard's test did.
    labels: list[Label]
    needs_beat: bool = False
    backend: str = "asyncio"  # the loop's (``LoopRun.backend``): the fix depends on it
    cpu_last: float | None = None
    armed: bool = False  # ran for half the threshold: it may get a verdict
    # The thread's run-queue wait: first read (at queued_since) at the last look that saw the
    # unit unarmed, or before the unit began when the first look to see it armed it.
    queued_first: float | None = None
    queued_last: float | None = None
    queued_since: float = 0.0
    # From the look that armed it on (others_since): the process's CPU, the watchdog's own and
    # the loop thread's. What the other threads used tells "waiting on native work" (argon2's
    # lanes) from plain waiting.
    others: tuple[float, float, float] | None = None
    others_last: tuple[float, float, float] | None = None
    others_since: float = 0.0
    importing: float = 0.0  # seconds of the block spent in first imports
    _since: float = 0.0  # since the previous look (or the start), set by ``seen``
    hung: bool = False  # reported and interrupted as a hang already
    beat: float | None = None  # when the beat that proves this block over was posted
    ended_by: float | None = None  # when a beat or tick first ran after that: it was over
    counts: Counter[tuple[CodeType, int]] = field(default_factory=Counter)
    examples: dict[tuple[CodeType, int], Sample] = field(default_factory=dict)

    def beaten(self, now: float) -> None:
        """A beat or tick ran on the loop at ``now`` (on the loop's thread, lock-free)."""
        if self.ended_by is not None:
            return
        # A beat posted behind the block, or on a C loop any tick run after it was seen: either
        # ran only once the unit let go of the loop.
        if self.beat is not None or (self.needs_beat and now > self.opened):
            self.ended_by = now

    def seen(self, now: float, threshold: float) -> bool:
        """One more look found the unit still running; True when its stack is worth sampling:
        only once it has run for half the threshold. Most units a busy loop is seen in are
        over by the next look, and a sample is most of what a look costs the loop."""
        self._since = now - max(self.last_seen if self.counts else self.start, self.start)
        self.last_seen = now
        self.armed = now - self.start >= threshold / 2
        return self.armed

    def observe(self, stack: Stack, user: FrameFilter) -> None:
        """Count the line the loop thread is on, in ``stack`` (sampled right after ``seen``)."""
        if self._sample(stack, user):
            # A first import runs once per process, not per request: the time the looks found
            # it importing is left out, like garbage collection (an import is not a bug to fix).
            self.importing += self._since

    def _sample(self, stack: Stack, user_filter: FrameFilter) -> bool:
        """Count the line the loop thread is on; True when it is inside a first import."""
        if not stack:
            return False
        user = first_user(stack, user_filter)
        frame, lineno = stack[user if user is not None else 0]
        key = (frame.f_code, lineno)
        self.counts[key] += 1
        if key not in self.examples:
            self.examples[key] = sample(stack, user, user_filter)
        return any(f.f_code.co_filename.startswith(_IMPORT_MACHINERY) for f, _ in stack)

    @property
    def reportable(self) -> bool:
        # Unarmed: it had run under half the threshold when last seen. A look that came late
        # proves nothing: a busy loop thread that releases the GIL around every select() and
        # takes it straight back can keep the watchdog waiting for it.
        return bool(self.counts) and self.armed and not self.hung and bool(self.labels)

    def measure(
        self,
        now: float,
        ended_by: float | None,
        collecting: Callable[[float, float], tuple[float, float]],
    ) -> Measured:
        """How long the block held the loop, last seen running and gone at ``now``.

        Left out: first imports (once per process, not a line to fix) and time the thread spent
        runnable but waiting for a CPU (the machine's load). Automatic garbage collection counts
        in the duration, but not towards the threshold (see ``Measured.counts``).
        """
        gone = now if ended_by is None else max(self.last_seen, min(now, ended_by))
        end = (self.last_seen + gone) / 2
        if ended_by is not None and gone - self.last_seen > _STARVED:
            # The looks were kept away (C code held the GIL): the beat, which ran right after
            # the unit let go of the loop, is a far better end than halfway to it.
            end = gone
        end -= self.importing
        queued = self.queue_wait(end)
        collected, landed = collecting(self.start, end)
        # Collections are timed on the wall clock: on a loaded machine they waited for a CPU
        # like the rest of the block, and are excused at the block's own rate, not in full.
        own = 1.0 - queued / (end - self.start) if end > self.start else 1.0
        return Measured(end - queued, queued, collected * own, landed * own)

    def queue_wait(self, end: float) -> float:
        """Seconds of the block up to ``end`` that its thread spent waiting for a CPU."""
        return _run_queue_wait(self, end - self.start)

    def event(self, end: float, queued: float, thread: str) -> BlockEvent:
        """The block as an event, for no guard in particular (see ``for_label``)."""
        duration = end - self.start
        ((key, _),) = self.counts.most_common(1)
        found = self.examples[key]
        frame, stack = resolve(found.top), tuple(resolve(f) for f in found.users)
        cpu_time = _cpu_time(self, duration + queued)
        ratio = None if cpu_time is None else cpu_time / duration
        bridged = greenlets.bridged(found.through)
        debugged = any(debugger.in_stack(e.through) for e in self.examples.values())
        hint = hints.classify(frame.line if frame else "", found.callees, ratio, bridged=bridged)
        hint = hints.for_backend(hint, self.backend)
        return BlockEvent(
            duration=duration,
            threshold=0.0,
            cpu_time=cpu_time,
            other_cpu=_other_cpu(self, duration + queued),
            frame=frame,
            stack=stack,
            hint=hint,
            thread=thread,
            samples=sum(self.counts.values()),
            through=found.through,
            cpu_wait=queued,
            debugger=debugged,
            backend=self.backend,
        )


def for_label(event: BlockEvent, label: Label) -> BlockEvent:
    """``event`` as the guard of ``label`` records it."""
    return replace(
        event,
        threshold=label.guard.threshold,
        allowed=label.allowed,
        phase=label.phase,
        fixture=label.fixture,
    )


def _run_queue_wait(block: Block, duration: float) -> float:
    """Seconds of the block the loop thread spent runnable but not running, scaled like CPU."""
    if block.queued_first is None or block.queued_last is None:
        return 0.0
    observed = block.last_seen - block.queued_since
    waited = max(block.queued_last - block.queued_first, 0.0)
    if observed <= 0:
        return min(waited, duration)
    return min(waited * duration / observed, duration)


def _other_cpu(block: Block, duration: float) -> float | None:
    """CPU time other threads (not the watchdog) used during the block, scaled like CPU."""
    if block.others is None or block.others_last is None:
        return None
    process, watchdog, loop = (b - a for a, b in zip(block.others, block.others_last, strict=True))
    observed = block.last_seen - block.others_since
    used = max(process - watchdog - loop, 0.0)
    return used if observed <= 0 else used * duration / observed


def _cpu_time(block: Block, duration: float) -> float | None:
    """CPU time over the whole block, scaled from the part of it that the watchdog observed."""
    if block.cpu_first is None or block.cpu_last is None:
        return None
    observed = block.last_seen - block.cpu_since
    used = max(block.cpu_last - block.cpu_first, 0.0)
    if observed <= 0:
        return used
    return min(used * duration / observed, duration)
