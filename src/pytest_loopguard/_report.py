"""BlockEvent -> the text a user reads: where, how long, what it was doing, and the fix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._frames import FrameInfo
from ._monitor import BlockEvent

MAX_STACK_LINES = 10


class LoopBlockedError(Exception):
    """A test's code held the event loop for longer than the threshold.

    Raised by the pytest plugin after the test phase in which the block happened, never inside
    the code that blocked. ``events`` holds the blocks, worst first.
    """

    def __init__(self, message: str, events: Sequence[BlockEvent] = ()) -> None:
        super().__init__(message)
        self.events = tuple(events)

    def __reduce__(self) -> tuple[type[LoopBlockedError], tuple[str, tuple[BlockEvent, ...]]]:
        return (type(self), (str(self), self.events))


def worst_first(events: Sequence[BlockEvent]) -> list[BlockEvent]:
    return sorted(events, key=lambda e: e.duration, reverse=True)


def relative(filename: str, root: Path | None) -> str:
    """``filename`` relative to ``root`` when it lies below it, else as it is."""
    if root is None:
        return filename
    try:
        rel = os.path.relpath(filename, root)
    except ValueError:  # another drive on Windows
        return filename
    return filename if rel.startswith("..") else rel


def _where(frame: FrameInfo | None, root: Path | None) -> str:
    if frame is None:
        return "an unknown location (no Python frame was sampled)"
    return f"{relative(frame.filename, root)}:{frame.lineno} in {frame.function}"


def _during(event: BlockEvent) -> str:
    if event.fixture:
        during = f" (during {event.phase or 'setup'} of fixture '{event.fixture}')"
    elif event.phase in ("setup", "teardown"):
        during = f" (during {event.phase})"
    else:
        during = ""
    # A loop in a worker thread (a server the test starts, a blocking portal): say which, so
    # nobody looks for the block on the test's own loop.
    if event.thread and event.thread != "MainThread":
        during += f" (loop in thread '{event.thread}')"
    return during


def headline(event: BlockEvent, root: Path | None = None) -> str:
    """The one-line verdict, as in the test summary: duration, threshold, location."""
    if event.call is not None:
        times = f", {event.samples} times" if event.samples > 1 else ""
        return (
            f"blocking call {event.call} on the event loop at {_where(event.frame, root)}"
            f"{_during(event)} (strict mode: fails however short{times})"
        )
    if event.timed_out:
        return (
            f"event loop hung: a callback held it for {event.duration:.2f} s, past the hang "
            f"timeout, and was interrupted at {_where(event.frame, root)}{_during(event)}"
        )
    return (
        f"event loop blocked for {event.duration:.2f} s (threshold {event.threshold:.2f} s)"
        f" at {_where(event.frame, root)}{_during(event)}"
    )


def _cpu_line(event: BlockEvent) -> str:
    bound = event.cpu_bound
    if bound is None or event.cpu_time is None:
        line = f"wall {event.duration:.2f} s; thread CPU time unknown on this platform"
    else:
        kind = "CPU-bound" if bound else "waiting (not on the CPU)"
        line = f"wall {event.duration:.2f} s, CPU {event.cpu_time:.2f} s: {kind}"
    if event.cpu_wait >= 0.005:
        line += f" (and {event.cpu_wait:.2f} s more waiting for a CPU: a busy machine, not counted)"
    return line


def _stack_lines(event: BlockEvent, root: Path | None) -> list[str]:
    # Nested generator expressions sit on one line: show that line once.
    unique = [
        f for i, f in enumerate(event.stack) if i == 0 or f.location != event.stack[i - 1].location
    ]
    # A hang's dump keeps library frames too (where it waits matters): show more of it.
    frames = unique[-MAX_STACK_LINES:] if event.timed_out else unique[-MAX_STACK_LINES // 2 :]
    lines = ["stack while blocked (most recent call last):"]
    for frame in frames:
        lines.append(f"  {relative(frame.filename, root)}:{frame.lineno} in {frame.function}")
        if frame.line:
            lines.append(f"    {frame.line}")
    return lines


def describe(event: BlockEvent, root: Path | None = None, prefix: str = "") -> list[str]:
    """All lines for one block: verdict, the blocking source line, the fix, CPU, the stack."""
    lines = [prefix + headline(event, root)]
    if event.frame is not None and event.frame.line:
        lines.append(f"    {event.frame.line}")
    lines.append(f"fix: {event.hint.render()}")
    if event.call is None:
        lines.append(_cpu_line(event))
    lines.extend(_stack_lines(event, root))
    return lines


def render(events: Sequence[BlockEvent], root: Path | None = None) -> str:
    """The failure text for the blocks of one test phase, worst first."""
    ordered = worst_first(events)
    lines = describe(ordered[0], root, prefix="LoopBlockedError: ")
    if len(ordered) > 1:
        lines.append("")
        lines.append(f"{len(ordered) - 1} more block(s) of the event loop in this phase:")
        for event in ordered[1:]:
            lines.append("")
            lines.extend(describe(event, root))
    return "\n".join(lines)
