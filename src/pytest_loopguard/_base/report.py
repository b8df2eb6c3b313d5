"""Every text a user reads: the verdict, where, how long, the stack, the fix — in the failure,
in warnings, in the run's header and in the end-of-run summary."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .events import BlockEvent, LoopBlockedError, LoopguardError, LoopHangError
from .frames import FrameInfo

MAX_STACK_LINES = 10


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


def over(duration: float, threshold: float) -> str:
    """``0.35 s (threshold 0.10 s)``, with as many digits (two to four) as it takes for the
    duration to read as more than the threshold: never "0.10 s (threshold 0.10 s)"."""
    for digits in (2, 3, 4):
        shown, limit = f"{duration:.{digits}f}", f"{threshold:.{digits}f}"
        if float(shown) > float(limit):
            break
    return f"{shown} s (threshold {limit} s)"


def location(frame: FrameInfo | None, root: Path | None) -> str:
    """``file:line in function`` of a frame, relative to ``root``."""
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
    if event.process:  # a child process the session watched: which one, and its command
        during += f" (in process {event.process})"
    return during


def headline(event: BlockEvent, root: Path | None = None) -> str:
    """The one-line verdict, as in the test summary: duration, threshold, location."""
    if event.call is not None:
        times = f", {event.samples} times" if event.samples > 1 else ""
        return (
            f"blocking call {event.call} on the event loop at {location(event.frame, root)}"
            f"{_during(event)} (strict mode: fails however short{times})"
        )
    if event.timed_out:  # the hang timeout is wall time: a busy machine's wait counts in it
        return (
            f"event loop hung: a callback held it for {event.duration + event.cpu_wait:.2f} s, "
            f"past the hang timeout, and was interrupted at {location(event.frame, root)}"
            f"{_during(event)}"
        )
    return (
        f"event loop blocked for {over(event.duration, event.threshold)}"
        f" at {location(event.frame, root)}{_during(event)}"
    )


def _cpu_line(event: BlockEvent) -> str:
    bound = event.cpu_bound
    if bound is None or event.cpu_time is None:
        line = f"wall {event.duration:.2f} s; thread CPU time unknown on this platform"
    else:
        line = f"wall {event.duration:.2f} s, CPU {event.cpu_time:.2f} s: {_kind(event, bound)}"
    if event.cpu_wait >= 0.005:
        line += f" (and {event.cpu_wait:.2f} s more waiting for a CPU: a busy machine, not counted)"
    return line


def _kind(event: BlockEvent, cpu_bound: bool) -> str:
    others = event.other_cpu
    if cpu_bound:
        return "CPU-bound"
    if others is not None and others >= 0.5 * event.duration:
        # The loop thread waited while other threads worked (argon2's lanes, a thread pool).
        return f"waiting on native work ({others:.2f} s of CPU in other threads)"
    return "waiting (not on the CPU)"


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


def blocked_error(events: Sequence[BlockEvent], root: Path | None) -> LoopBlockedError:
    """The error a failing phase raises: its message is the whole report."""
    return LoopBlockedError(render(events, root), worst_first(events))


def warning_text(event: BlockEvent, root: Path | None, fallback: str) -> tuple[str, str, int]:
    """(message, file, line) of the PytestWarning for one block in warn mode, attributed to the
    blocking line so that pytest's warnings summary points at the user's code (else to
    ``fallback``, the test's id)."""
    text = "\n".join(describe(event, root))
    where = event.frame
    if where is None:
        return text, fallback, 0
    return text, relative(where.filename, root), where.lineno


def hang_error(
    events: Sequence[BlockEvent], error: LoopHangError, root: Path | None
) -> LoopBlockedError | LoopHangError:
    """A hang shows like any block, with the whole stack the hang guard took."""
    hangs = [e for e in events if e.timed_out]
    if not hangs and error.event is not None:
        hangs = [error.event]
    return blocked_error(hangs, root) if hangs else error


def header(
    threshold: float,
    source: str,
    debug: bool,
    timeout: float | None,
    strict: bool,
    debugger: str | None = None,
    tracer: str | None = None,
) -> str:
    """The one line the run's header shows, so a CI log says what was in force."""
    shown_timeout = "off" if timeout is None else f"{timeout:g}s"
    line = (
        f"loopguard: threshold={threshold:g}s ({source}), loop-debug={_on(debug)}, "
        f"timeout={shown_timeout}, strict={_on(strict)}"
    )
    if debugger:
        line += f" — a debugger ({debugger}) drives this run: blocks are recorded, not failed"
    elif tracer:
        line += (
            f" — a tracer ({tracer}) is active: CPU-bound code runs several times slower under "
            "it, so a block near the threshold can flip (for coverage runs, see 'Coverage and "
            "other tracers' in the docs' CI page)"
        )
    return line


def _on(flag: bool) -> str:
    return "on" if flag else "off"


@dataclass(frozen=True)
class Failure:
    """One of our errors as a test's failure: the whole text, its first line (the message a
    summary or a CI annotation shows), and where to point (the blocking line)."""

    text: str
    message: str
    path: str
    lineno: int


def failure(error: LoopguardError, root: Path | None, fallback: tuple[str, int]) -> Failure:
    """How one of our errors shows as a test's failure: the verdict and the fix, nothing else
    (SQLAlchemy's or pluggy's frames would bury them), pointing at its line (else ``fallback``,
    the test's own)."""
    if isinstance(error, LoopBlockedError) and error.events:
        event = error.events[0]
        message = f"LoopBlockedError: {headline(event, root)}"
        return Failure(str(error), message, *_point(event.frame, root, fallback))
    text = f"{type(error).__name__}: {error}"
    where = getattr(error, "where", None)  # the SQLAlchemy guards' errors say where
    return Failure(text, text.splitlines()[0], *_point(where, root, fallback))


def _point(
    frame: FrameInfo | None, root: Path | None, fallback: tuple[str, int]
) -> tuple[str, int]:
    if frame is None:
        return fallback
    return relative(frame.filename, root), frame.lineno


OURS = ("LoopBlockedError", "LazyLoadError", "DetachedAccessError", "SyncEngineOnLoopError")


Block = Mapping[str, object]  # one block as the JSON report has it


def frame_data(frame: FrameInfo, root: Path | None) -> dict[str, object]:
    file = relative(frame.filename, root)
    return {"file": file, "line": frame.lineno, "function": frame.function, "source": frame.line}


def as_data(event: BlockEvent, root: Path | None) -> dict[str, object]:
    """One block as the JSON report (and the runner's) describes it, without its test."""
    return {
        "phase": event.phase,
        "fixture": event.fixture,
        "duration": round(event.duration, 4),
        "cpu_time": None if event.cpu_time is None else round(event.cpu_time, 4),
        "cpu_wait": round(event.cpu_wait, 4),  # runnable, waiting for a CPU: left out of duration
        "threshold": event.threshold,
        "location": None if event.frame is None else frame_data(event.frame, root),
        "stack": [frame_data(f, root) for f in event.stack],
        "hint": {"key": event.hint.key, "cause": event.hint.cause, "fix": event.hint.fix},
        "call": event.call,
        "backend": event.backend,
        "process": event.process,  # a watched child's "pid N: command", else null
    }


def _block_location(block: Block) -> str:
    where = block["location"]
    if not isinstance(where, Mapping):
        return "an unknown location"
    return f"{where['file']}:{where['line']} in {where['function']}"


def summary_lines(
    blocks: Sequence[Block], allowed: int, shown: int = 10, known: int = 0
) -> list[str]:
    """The end-of-run section's lines: counts, then the worst ``shown`` blocks."""
    tests = len({b["nodeid"] for b in blocks} - {""})  # "": outside any test
    lines = [f"{len(blocks)} block(s) in {tests} test(s); {allowed} allowed block(s) not counted"]
    if known:
        lines[0] += f"; {known} known block(s) in the baseline not counted"
    for block in sorted(blocks, key=lambda b: -float(str(b["duration"])))[:shown]:
        phase = f"  [{block['phase']}]" if block["phase"] else ""
        if block["fixture"]:
            phase = f"  [{block['phase']} of {block['fixture']}]"
        duration = float(str(block["duration"]))
        where = _block_location(block)
        who = block["nodeid"] or "(outside any test)"
        process = f"  (in process {block['process']})" if block.get("process") else ""
        lines.append(f"{duration:6.2f} s  {where}{phase}  {who}{process}")
    return lines


def annotation(block: Block) -> str:
    """One block as a GitHub Actions workflow command: ``::error`` when it failed its test,
    ``::warning`` in warn mode; shown on the run's page and in the diff, at its line."""
    kind = "error" if block["verdict"] == "failed" else "warning"
    where = block["location"]
    hint = block["hint"]
    assert isinstance(hint, Mapping)
    if block["call"]:
        what = f"blocking call {block['call']} on the event loop"
    else:
        duration, threshold = float(str(block["duration"])), float(str(block["threshold"]))
        what = f"event loop blocked for {over(duration, threshold)}"
    who = f"{block['nodeid']} ({block['phase']})" if block["nodeid"] else "no test"
    if block.get("process"):
        who += f", in process {block['process']}"
    text = f"{what} in {who}\nfix: {hint['cause']} — {hint['fix']}"
    place = ""
    if isinstance(where, Mapping):
        place = f"file={_property(str(where['file']))},line={where['line']},"
    return f"::{kind} {place}title=pytest-loopguard::{_data(text)}"


def workflow_command(kind: str, file: str, line: int, text: str) -> str:
    """A GitHub Actions ``::error`` or ``::warning`` at ``file``'s ``line``."""
    return f"::{kind} file={_property(file)},line={line},title=pytest-loopguard::{_data(text)}"


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
