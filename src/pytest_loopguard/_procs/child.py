"""A watched child's engine, and its blocks sent to the session.

Started by ``startup`` when the child first imports asyncio or trio (a child that never runs
an event loop never imports the engine). The child enters a ``LoopGuard`` with the session's
settings for the rest of its life; its blocks, and a word when a unit has held a loop for half
the threshold (so the session waits for the verdict before it ends a test phase), go to the
channel as datagrams, sent without ever waiting. Nothing here may break the child: every
failure leaves it running unwatched, with one line on its stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
from typing import Any

from .._base.events import BlockEvent
from .._core.guard import LoopGuard
from .channel import CHANNEL_ENV, SETTINGS_ENV
from .wire import Message, encode

_GUARD: ChildGuard | None = None
WORKER = "a worker of pid"  # completed by the session with the parent's command


class ChildGuard(LoopGuard):
    """A guard whose blocks leave the process as soon as the watchdog has made them events."""

    def __init__(self, path: str, settings: dict[str, Any]) -> None:
        super().__init__(
            float(settings.get("threshold", 0.1)),
            timeout=settings.get("timeout"),
            strict=bool(settings.get("strict", False)),
        )
        self.path, self.pid = path, os.getpid()
        self.lost = 0  # blocks a full channel refused, told with the next message that fits
        self.gone = False  # the session's end is closed: stop sending (it outlived it)

    def hello(self, said: str | None = None) -> bool:
        self.pid = os.getpid()
        return self._send(Message("hello", self.pid, command=said or command()), first=True)

    def record(self, event: BlockEvent) -> None:
        super().record(event)
        self._events.clear()  # sent, not kept: a server's life is long
        self._send(Message("block", self.pid, event=event))

    def busy(self, since: float) -> None:
        self._send(Message("busy", self.pid, since=since))

    def settled(self, counted: bool) -> None:
        if not counted:  # a counted one is sent as a block by the flush that follows
            self._send(Message("idle", self.pid))

    def _send(self, message: Message, first: bool = False) -> bool:
        if self.gone:
            return False
        if self.lost and message.kind != "hello":
            if not self._raw(encode(Message("lost", self.pid, count=self.lost))):
                self.lost += message.kind == "block"
                return False
            self.lost = 0
        sent = self._raw(encode(message), first)
        if not sent and message.kind == "block":
            self.lost += 1
        return sent

    def _raw(self, data: bytes, first: bool = False) -> bool:
        # A socket a message, opened and closed on the sending thread: the watchdog runs on a
        # file table of its own, where a socket opened by another thread does not exist (and
        # messages are rare: only for units that held a loop for half the threshold).
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(data, self.path)
            return True
        except BlockingIOError:
            return False  # the session's buffer is full: counted, told later
        except OSError as error:
            self.gone = True
            if first:
                _say(f"cannot reach the session's channel ({error}); this process is not watched")
            return False

    def close(self) -> None:
        self.gone = True


def command() -> str:
    """The child's command as a person would type it: ``uvicorn app:app --port 8000``."""
    args = list(getattr(sys, "orig_argv", sys.argv))[1:]
    while args and args[0].startswith("-") and args[0] not in ("-c", "-m"):
        args = args[2:] if args[0] in ("-X", "-W") else args[1:]  # the interpreter's options
    if args[:1] == ["-c"] and "multiprocessing" in " ".join(args[1:2]):
        return f"{WORKER} {os.getppid()}"
    if args[:1] == ["-c"]:
        lines = " ".join(args[1:]).split("\n")
        text = "python -c " + "; ".join(line.strip() for line in lines if line.strip())
    elif args[:1] == ["-m"]:
        text = "python -m " + " ".join(args[1:])
    elif args:
        text = " ".join([os.path.basename(args[0]), *args[1:]])
    else:
        text = "python"
    return text if len(text) <= 100 else text[:97] + "..."


def start(forked: bool = False) -> None:
    """Called by ``startup`` once the process imports asyncio or trio: watch this process, or
    say why not. ``forked``: a fork of the pytest session itself (see ``forked_session``)."""
    global _GUARD
    path = os.environ.get(CHANNEL_ENV)
    if not path or _GUARD is not None:
        return
    if "_pytest" in sys.modules and not forked:
        return  # a pytest session: it watches itself with the plugin, or is not to be watched
    try:
        settings = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
        guard = ChildGuard(path, settings)
        command = f"a fork of the pytest session (pid {os.getppid()})" if forked else None
        if not guard.hello(command):
            return
        guard.__enter__()
    except Exception as error:  # never break the child: it runs, unwatched
        _say(f"could not start watching this process ({error!r})")
        return
    _GUARD = guard
    atexit.register(stop)
    if not forked:  # a fork's handlers are being run: not the time to add one
        os.register_at_fork(after_in_child=_forked)


def forked_session(session_guard: Any) -> None:
    """In a fork of a pytest session (``multiprocessing`` with the fork start method, running
    a server): no test runs here. The session's guard leaves, and the fork is watched as a
    child, its watchdog started with its first loop."""
    from .._core.engine import ENGINE

    try:
        ENGINE.after_fork(defer=True)
        if session_guard in ENGINE.subscribers.guards:
            ENGINE.subscribers.remove(session_guard)
        start(forked=True)
    except Exception as error:
        _say(f"could not watch this forked process ({error!r})")


def stop() -> None:
    """Stop watching: at exit (what ended meanwhile is sent first), or because a pytest
    session starts in this process and watches it itself."""
    global _GUARD
    guard, _GUARD = _GUARD, None
    if guard is None:
        return
    try:
        guard.events  # noqa: B018  # settles and sends what ended since the last look
        guard.__exit__(None, None, None)
    finally:
        guard.close()


def active() -> bool:
    return _GUARD is not None


def _forked() -> None:
    """A forked child (gunicorn's workers): the engine again, under the new pid."""
    guard = _GUARD
    if guard is None:
        return
    from .._core.engine import ENGINE

    try:
        ENGINE.after_fork()
        guard.hello(f"{WORKER} {os.getppid()}")
    except Exception as error:
        _say(f"could not watch this forked process ({error!r})")


def _say(text: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"pytest-loopguard (pid {os.getpid()}): {text}\n")
