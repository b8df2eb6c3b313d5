"""The picklable vocabulary every other module speaks: a block, and the errors that carry blocks.

Plain frozen data and exception types only, so that a pytest-xdist worker can send them to the
controller; no module of the engine or of the plugin is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .frames import FrameInfo, Through


@dataclass(frozen=True)
class Hint:
    """What blocked, in words, and the async replacement (the seed's fix table in _hints)."""

    key: str
    cause: str
    fix: str

    def render(self) -> str:
        return f"{self.cause} — {self.fix}"


@dataclass(frozen=True)
class BlockEvent:
    """One callback that held the event loop for at least the threshold."""

    duration: float
    threshold: float
    cpu_time: float | None
    frame: FrameInfo | None
    stack: tuple[FrameInfo, ...]
    hint: Hint
    allowed: bool = False
    phase: str | None = None
    fixture: str | None = None
    thread: str = ""
    samples: int = 0
    # Every frame of the sample that located the block, innermost first (what allowlists match).
    through: tuple[Through, ...] = ()
    # Seconds the loop thread waited for a CPU on a loaded machine, left out of ``duration``.
    cpu_wait: float = 0.0
    # The block went past the guard's timeout: the loop thread was interrupted (a hang).
    timed_out: bool = False
    # Strict mode: the known blocking call made on the loop ("time.sleep()"); duration is 0.
    call: str | None = None
    # The loop thread was stopped in a debugger (pdb's prompt, an IDE's breakpoint) meanwhile.
    debugger: bool = False
    # CPU seconds the process's other threads used meanwhile (None: not measured): the loop
    # thread waiting while they work is "waiting on native work", not sleeping.
    other_cpu: float | None = None
    # The event loop it held: "asyncio", "uvloop" or "trio" (its fixes fit that backend).
    backend: str = "asyncio"
    # A block in a child process the session watched: "pid 4242: uvicorn app:app".
    process: str | None = None

    @property
    def cpu_bound(self) -> bool | None:
        """True when the loop thread was mostly on the CPU, None when that is unknown."""
        if self.cpu_time is None or self.duration <= 0:
            return None
        return self.cpu_time >= 0.5 * self.duration


class LoopguardError(Exception):
    """Base of the errors pytest-loopguard raises; each one's message carries its fix."""


class LoopBlockedError(LoopguardError):
    """A test's code held the event loop for longer than the threshold.

    Raised by the pytest plugin after the test phase in which the block happened, never inside
    the code that blocked. ``events`` holds the blocks, worst first.
    """

    def __init__(self, message: str, events: Sequence[BlockEvent] = ()) -> None:
        super().__init__(message)
        self.events = tuple(events)

    def __reduce__(self) -> tuple[type[LoopBlockedError], tuple[str, tuple[BlockEvent, ...]]]:
        return (type(self), (str(self), self.events))


class LoopHangError(BaseException):
    """Raised inside a callback that held the loop past the guard's ``timeout``.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in the code under test
    cannot swallow it and hang again; pytest reports it as the test's failure.
    """

    BARE = "the event loop was held past loop_block_timeout; the callback was interrupted"

    def __init__(self, event: BlockEvent | None = None, message: str = BARE) -> None:
        # No event when raised asynchronously in another thread (Python makes it bare).
        super().__init__(*(() if event is None else (event, message)))
        self.event, self.message = event, message

    def __str__(self) -> str:
        return self.message
