"""Strict mode: known blocking calls made on a loop thread, however short.

Where the stdlib raises an audit event (``time.sleep`` from 3.13, socket connect and DNS,
``open``, subprocesses) a process-wide audit hook sees it; audit hooks cannot be removed, so it
returns at once unless a strict guard is active. Elsewhere a few Python-level methods are
wrapped while a strict guard is active, and restored after. Nothing raises in the caller: each
call is recorded, and the plugin fails the test after the phase.
"""

from __future__ import annotations

import concurrent.futures
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _hints

# Audit event -> (the call as a user reads it, its hint, whether its arguments say it blocks).
_AUDITED: dict[str, tuple[str, _hints.Hint, Callable[[tuple[Any, ...]], bool]]] = {
    "time.sleep": ("time.sleep()", _hints.SLEEP, lambda a: bool(a) and a[0] > 0),  # 3.13+
    "socket.connect": ("socket.connect()", _hints.SOCKET, lambda a: _blocking_socket(a[0])),
    "socket.getaddrinfo": ("socket.getaddrinfo()", _hints.DNS, lambda a: True),
    "socket.gethostbyname": ("socket.gethostbyname()", _hints.DNS, lambda a: True),
    "socket.gethostbyaddr": ("socket.gethostbyaddr()", _hints.DNS, lambda a: True),
    "open": ("open()", _hints.FILE, lambda a: True),
    "subprocess.Popen": ("subprocess.Popen()", _hints.SUBPROCESS, lambda a: True),
    "os.system": ("os.system()", _hints.SUBPROCESS, lambda a: True),
}

# Calls made from inside these modules are their own business on the loop, wherever they are on
# the stack: first imports, this package reading source files for a report, and mimetypes
# reading its database once, on the first guess_type() (httpx's multipart encoder calls it).
EXEMPT_MODULES = ("importlib", "pytest_loopguard", "linecache", "tokenize", "mimetypes")
# Calls these make before any user frame: asyncio's own socket and subprocess machinery. Not
# further out: a pure-Python ``Task.__step`` (Python 3.10's asyncio.Runner backport) sits under
# every test coroutine.
EXEMPT_CALLERS = ("asyncio",)

Recorder = Callable[[str, _hints.Hint, Any], None]


def _blocking_socket(sock: Any) -> bool:
    try:
        return bool(sock.gettimeout() != 0.0)
    except (AttributeError, OSError):
        return False


class _Hub:
    """The audit hook and the wrappers, shared by every strict guard in the process."""

    def __init__(self) -> None:
        self.recorders: tuple[Recorder, ...] = ()
        self._lock = threading.Lock()
        self._hooked = False
        self._patched: list[tuple[Any, str, Any]] = []  # (owner, name, what its __dict__ had)
        self._busy = threading.local()

    def add(self, recorder: Recorder) -> None:
        with self._lock:
            if not self._hooked:
                sys.addaudithook(self._audit)
                self._hooked = True
            if not self.recorders:
                self._wrap_all()
            self.recorders = (*self.recorders, recorder)

    def remove(self, recorder: Recorder) -> None:
        with self._lock:
            self.recorders = tuple(r for r in self.recorders if r != recorder)  # bound methods: ==
            if not self.recorders:
                self._unwrap_all()

    @property
    def patched(self) -> bool:
        return bool(self._patched)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        entry = _AUDITED.get(event)
        if entry is None or not self.recorders:
            return
        call, hint, blocks = entry
        if blocks(args):
            self.hit(call, hint, sys._getframe(1))

    def hit(self, call: str, hint: _hints.Hint, frame: Any) -> bool:
        """A known blocking call was made from ``frame``: let every strict guard record it."""
        if getattr(self._busy, "on", False):
            return False  # made inside a call already recorded, or by a recorder itself
        self._busy.on = True
        try:
            for record in self.recorders:
                record(call, hint, frame)
        finally:
            self._busy.on = False
        return True

    def _wrap_all(self) -> None:
        try:
            for owner, name, call, hint, blocks in _wrapped():
                self._wrap(owner, name, call, hint, blocks)
        except BaseException:
            self._unwrap_all()  # all or nothing
            raise

    def _wrap(self, owner: Any, name: str, call: str, hint: _hints.Hint, blocks: Any) -> None:
        original = getattr(owner, name)
        hub = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if hub.recorders and blocks(*args, **kwargs) and hub.hit(call, hint, sys._getframe(1)):
                # Future.result() waits in Condition.wait(): report the outer call only.
                hub._busy.on = True
                try:
                    return original(*args, **kwargs)
                finally:
                    hub._busy.on = False
            return original(*args, **kwargs)

        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        self._patched.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, wrapper)

    def _unwrap_all(self) -> None:
        for owner, name, own in reversed(self._patched):
            if own is None:
                delattr(owner, name)
            else:
                setattr(owner, name, own)
        self._patched.clear()


def _not_done(future: Any, timeout: float | None = None) -> bool:
    return timeout != 0 and not future.done()


def _event_unset(event: Any, timeout: float | None = None) -> bool:
    return timeout != 0 and not event.is_set()


def _waits(_self: Any, timeout: float | None = None, *_: Any) -> bool:
    return timeout != 0


def _queue_empty(q: Any, block: bool = True, timeout: float | None = None) -> bool:
    return bool(block) and timeout != 0 and q.empty()


def _sock_blocks(sock: Any, *_: Any, **__: Any) -> bool:
    return _blocking_socket(sock)


def _wrapped() -> list[tuple[Any, str, str, _hints.Hint, Any]]:
    """What has no audit event: thread waits, futures, and I/O on blocking sockets."""
    table: list[tuple[Any, str, str, _hints.Hint, Any]] = [
        (concurrent.futures.Future, "result", "Future.result()", _hints.FUTURE, _not_done),
        (threading.Event, "wait", "threading.Event.wait()", _hints.LOCK, _event_unset),
        (threading.Condition, "wait", "threading.Condition.wait()", _hints.LOCK, _waits),
        (threading.Thread, "join", "threading.Thread.join()", _hints.LOCK, _waits),
        (queue.Queue, "get", "queue.Queue.get()", _hints.LOCK, _queue_empty),
    ]
    for name in ("recv", "recv_into", "recvfrom", "send", "sendall", "accept"):
        table.append((socket.socket, name, f"socket.{name}()", _hints.SOCKET, _sock_blocks))
    if sys.version_info < (3, 13):  # time.sleep has no audit event before 3.13
        table.append((time, "sleep", "time.sleep()", _hints.SLEEP, lambda s: s > 0))
    return table


HUB = _Hub()
