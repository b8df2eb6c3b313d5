"""What a watched child sends: one JSON datagram a message, each with its pid.

``hello`` (a child started watching: its command), ``busy`` (a unit has held its loop for half
the threshold: the session waits for its verdict before it ends a test phase), ``idle`` (that
unit ended short of a block), ``block`` (it was one: the event) and ``lost`` (blocks a full
channel refused). Pure data: encoded and decoded here, sent and received elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from .._base.events import BlockEvent, Hint
from .._base.frames import FrameInfo

KINDS = ("hello", "busy", "idle", "block", "lost")


@dataclass(frozen=True)
class Message:
    kind: str
    pid: int
    command: str = ""  # hello: the child's command line
    since: float = 0.0  # busy: when the unit began (CLOCK_MONOTONIC, shared by processes)
    event: BlockEvent | None = None  # block
    count: int = 0  # lost


def encode(message: Message) -> bytes:
    data: dict[str, Any] = {"kind": message.kind, "pid": message.pid}
    if message.command:
        data["command"] = message.command
    if message.since:
        data["since"] = message.since
    if message.count:
        data["count"] = message.count
    if message.event is not None:
        data["event"] = asdict(message.event)
    return json.dumps(data, separators=(",", ":")).encode()


def decode(raw: bytes) -> Message | None:
    """The message, or None for anything that is not one (never raises: a datagram comes from
    a process the session does not control)."""
    try:
        data = json.loads(raw)
        kind, pid = data["kind"], data["pid"]
        if kind not in KINDS or not isinstance(pid, int):
            return None
        event = _event(data["event"]) if kind == "block" else None
        return Message(
            kind,
            pid,
            command=str(data.get("command", "")),
            since=float(data.get("since", 0.0)),
            event=event,
            count=int(data.get("count", 0)),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _frame(data: Any) -> FrameInfo:
    return FrameInfo(
        str(data["filename"]),
        int(data["lineno"]),
        str(data["function"]),
        str(data["module"]),
        str(data["line"]),
    )


_SCALARS = {f.name for f in fields(BlockEvent)} - {"frame", "stack", "hint", "through"}


def _event(data: Any) -> BlockEvent:
    frame = data.get("frame")
    return BlockEvent(
        frame=None if frame is None else _frame(frame),
        stack=tuple(_frame(f) for f in data["stack"]),
        hint=Hint(**{k: str(data["hint"][k]) for k in ("key", "cause", "fix")}),
        through=tuple((str(m), str(f), str(p)) for m, f, p in data.get("through", ())),
        **{k: data[k] for k in _SCALARS if k in data},
    )
