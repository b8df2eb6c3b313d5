"""Code that runs on a loop thread inside a greenlet, such as SQLAlchemy's asyncio layer.

``AsyncSession`` runs the sync ORM in a greenlet on the loop thread: its event hooks
(``before_flush``...), the functions given to ``run_sync``, type decorators, result processing.
A greenlet's stack ends at its own first frame; the loop's callback that switched into it waits,
suspended, in the parent greenlet's stack (``gr_frame``). ``walk`` crosses that boundary.

The watchdog needs to know which greenlet runs on another thread now, which greenlet offers no
way to ask: a trace function on each loop thread (``greenlet.settrace``, called on every switch
of that thread) keeps it on the thread's record. Only while the thread runs a loop, and only
where greenlet is imported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

Tracer = Callable[[str, tuple[Any, Any]], Any]


class Holder(Protocol):
    """What the tracer writes to: a loop thread's record."""

    greenlet: Any  # the greenlet running on the thread now, None for the thread's main one


def walk(top: FrameType | None, current: Any = None) -> Iterator[FrameType]:
    """Frames from ``top`` outwards, through the greenlets that ``current`` (the greenlet
    running ``top``, None for a thread's main one) was switched to from."""
    frame, running = top, current
    while frame is not None:
        yield frame
        frame = frame.f_back
        while frame is None and running is not None:
            running = running.parent
            frame = None if running is None else running.gr_frame


def here() -> Any:
    """The greenlet running on this thread, when it is not the thread's main one."""
    module = sys.modules.get("greenlet")
    current = module.getcurrent() if module is not None else None
    return current if current is not None and current.parent is not None else None


def trace(holder: Holder) -> Tracer | None:
    """Keep ``holder.greenlet`` current on this thread; returns the trace function it replaced
    (pass it to ``untrace``), or None where greenlet is not imported."""
    module = sys.modules.get("greenlet")
    if module is None:
        return None
    previous: Tracer | None = None

    def switched(event: str, args: tuple[Any, Any]) -> Any:
        # On every switch of the thread: a store, and the previous tracer's turn.
        target = args[1]
        holder.greenlet = target if target.parent is not None else None
        if previous is not None:
            return previous(event, args)
        return None

    previous = module.settrace(switched)
    switched.previous = previous  # type: ignore[attr-defined]
    return switched


def untrace(tracer: Tracer | None) -> None:
    """Undo ``trace`` on this thread (unless someone replaced it since)."""
    module = sys.modules.get("greenlet")
    if tracer is not None and module is not None and module.gettrace() is tracer:
        module.settrace(tracer.previous)  # type: ignore[attr-defined]


def bridged(through: tuple[tuple[str, str, str], ...]) -> bool:
    """Whether a sampled stack (innermost first) ran in SQLAlchemy's sync bridge."""
    return any(
        function == "greenlet_spawn" and module.startswith("sqlalchemy.util")
        for module, function, _ in through
    )
