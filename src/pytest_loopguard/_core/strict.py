"""Strict mode, all of its rules: known blocking calls made on a loop thread, however short.

Where the stdlib raises an audit event (``time.sleep`` from 3.13, socket connect and DNS,
``open``, subprocesses) a process-wide audit hook sees it; audit hooks cannot be removed, so it
returns at once unless a strict guard is active. Elsewhere a few Python-level methods are
wrapped while a strict lease is held (a session, or a lone strict LoopGuard), and restored
after. Nothing raises in the caller: each call is recorded by the strict guards (``CallLog``),
and the plugin fails the test after the phase.
"""

from __future__ import annotations

import concurrent.futures
import queue
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, Protocol

from .._base import hints
from .._base.events import BlockEvent, Hint
from .._base.frames import FrameFilter, Sample, Stack, first_user, resolve, sample

# Audit event -> (the call as a user reads it, its hint, whether its arguments say it blocks).
_AUDITED: dict[str, tuple[str, Hint, Callable[[tuple[Any, ...]], bool]]] = {
    "time.sleep": ("time.sleep()", hints.SLEEP, lambda a: bool(a) and a[0] > 0),  # 3.13+
    "socket.connect": ("socket.connect()", hints.SOCKET, lambda a: _blocking_socket(a[0])),
    "socket.getaddrinfo": ("socket.getaddrinfo()", hints.DNS, lambda a: True),
    "socket.gethostbyname": ("socket.gethostbyname()", hints.DNS, lambda a: True),
    "socket.gethostbyaddr": ("socket.gethostbyaddr()", hints.DNS, lambda a: True),
    "open": ("open()", hints.FILE, lambda a: True),
    "subprocess.Popen": ("subprocess.Popen()", hints.SUBPROCESS, lambda a: True),
    "os.system": ("os.system()", hints.SUBPROCESS, lambda a: True),
}

# Calls made from inside these modules are their own business on the loop, wherever they are on
# the stack: first imports, this package reading source files for a report, and mimetypes
# reading its database once, on the first guess_type() (httpx's multipart encoder calls it).
EXEMPT_MODULES = ("importlib", "pytest_loopguard", "linecache", "tokenize", "mimetypes")
# Calls these make before any user frame: the loops' own socket, thread and subprocess
# machinery. Not further out: a pure-Python ``Task.__step`` (Python 3.10's asyncio.Runner
# backport) sits under every test coroutine.
EXEMPT_CALLERS = ("asyncio", "trio", "anyio")

Recorder = Callable[[str, Hint, Any], None]


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
        self._leases = 0
        self._patched: list[tuple[Any, str, Any]] = []  # (owner, name, what its __dict__ had)
        self._busy = threading.local()

    def acquire(self) -> None:
        """Install the wrappers (and, once per process, the audit hook) for a strict lease."""
        with self._lock:
            self._leases += 1
            if self._leases > 1:
                return
            if not self._hooked:
                sys.addaudithook(self._audit)
                self._hooked = True
            self._wrap_all()

    def release(self) -> None:
        with self._lock:
            self._leases -= 1
            if self._leases == 0:
                self._unwrap_all()

    def add(self, recorder: Recorder) -> None:
        with self._lock:
            self.recorders = (*self.recorders, recorder)

    def remove(self, recorder: Recorder) -> None:
        with self._lock:
            self.recorders = tuple(r for r in self.recorders if r != recorder)  # bound methods: ==

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

    def hit(self, call: str, hint: Hint, frame: Any) -> bool:
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

    def _wrap(self, owner: Any, name: str, call: str, hint: Hint, blocks: Any) -> None:
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


def _wrapped() -> list[tuple[Any, str, str, Hint, Any]]:
    """What has no audit event: thread waits, futures, and I/O on blocking sockets."""
    table: list[tuple[Any, str, str, Hint, Any]] = [
        (concurrent.futures.Future, "result", "Future.result()", hints.FUTURE, _not_done),
        (threading.Event, "wait", "threading.Event.wait()", hints.LOCK, _event_unset),
        (threading.Condition, "wait", "threading.Condition.wait()", hints.LOCK, _waits),
        (threading.Thread, "join", "threading.Thread.join()", hints.LOCK, _waits),
        (queue.Queue, "get", "queue.Queue.get()", hints.LOCK, _queue_empty),
    ]
    for name in ("recv", "recv_into", "recvfrom", "send", "sendall", "accept"):
        table.append((socket.socket, name, f"socket.{name}()", hints.SOCKET, _sock_blocks))
    if sys.version_info < (3, 13):  # time.sleep has no audit event before 3.13
        table.append((time, "sleep", "time.sleep()", hints.SLEEP, lambda s: s > 0))
    return table


HUB = _Hub()


# -- what one strict guard records ---------------------------------------------------------


class Watched(Protocol):
    """What a call log needs to know of its guard and of the loops running now."""

    phase: str | None
    fixture: str | None
    threshold: float

    def allowing(self, ident: int) -> bool: ...

    def unit_here(self, frame: FrameType) -> tuple[str, Stack, str] | None:
        """(thread name, the unit's stack from ``frame``, the loop's backend) when ``frame``
        runs in a unit of work of this guard's on this thread's loop; None elsewhere."""


@dataclass(frozen=True)
class _Call:
    """A blocking call seen for the first time at one line, in one phase."""

    key: tuple[str, str | None, CodeType, int]  # call, phase, code, line
    hint: Hint
    found: Sample
    allowed: bool
    thread: str
    fixture: str | None
    backend: str


class CallLog:
    """A strict guard's record of the known blocking calls made on its loops."""

    def __init__(self, guard: Watched, user_filter: FrameFilter, lock: threading.Lock) -> None:
        self._guard, self._filter, self._lock = guard, user_filter, lock
        self._counts: Counter[tuple[str, str | None, CodeType, int]] = Counter()
        # Not yet made events: that reads source files, not while the caller is on the loop.
        self.pending: list[_Call] = []

    def record(self, call: str, hint: Hint, frame: FrameType) -> None:
        """The hub's recorder: a known blocking call from ``frame``, on the caller's thread."""
        if exempt(frame):
            return  # asyncio/threading internals (checked first: cheap)
        here = self._guard.unit_here(frame)
        if here is None or exempt_stack(here[1], self._filter):
            return  # a worker thread, the loop outside any unit, or a unit not the guard's
        thread, stack, backend = here
        found = sample(stack, first_user(stack, self._filter), self._filter)
        guard = self._guard
        allowed = guard.allowing(threading.get_ident())
        with self._lock:
            key = (call, guard.phase, found.top[0], found.top[1])
            self._counts[key] += 1
            if self._counts[key] == 1:
                call_seen = _Call(key, hint, found, allowed, thread, guard.fixture, backend)
                self.pending.append(call_seen)

    def drain(self, into: list[BlockEvent]) -> None:
        """Add the calls recorded since the last time to ``into`` as events (the caller holds
        the lock). They leave ``pending`` only once added: it is read without the lock."""
        calls = list(self.pending)
        into.extend(self._event(c) for c in calls)
        del self.pending[: len(calls)]

    def _event(self, recorded: _Call) -> BlockEvent:
        call, phase, _, _ = recorded.key
        return BlockEvent(
            duration=0.0,
            threshold=self._guard.threshold,
            cpu_time=None,
            frame=resolve(recorded.found.top),
            stack=tuple(resolve(f) for f in recorded.found.users),
            hint=hints.for_backend(recorded.hint, recorded.backend),
            allowed=recorded.allowed,
            phase=phase,
            fixture=recorded.fixture,
            thread=recorded.thread,
            samples=self._counts[recorded.key],
            through=recorded.found.through,
            call=call,
            backend=recorded.backend,
        )


def _module_root(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".", 1)[0]


def exempt(frame: FrameType) -> bool:
    """Whether a blocking call made right from ``frame`` is the machinery's, not the test's."""
    root = _module_root(frame)
    # Thread.start() waits for the new thread to say it runs: the cost of starting a thread.
    if root == "threading" and frame.f_code.co_name == "start":
        return True
    return root in EXEMPT_MODULES or root in EXEMPT_CALLERS


def exempt_stack(stack: Stack, user_filter: FrameFilter) -> bool:
    """Whether a blocking call with this stack (innermost first) is none of the test's."""
    user_seen = False
    for frame, _ in stack:
        if _module_root(frame) in EXEMPT_MODULES:
            return True
        if not user_seen and exempt(frame):
            return True  # made by asyncio or threading internals, not by user code
        user_seen = user_seen or user_filter.is_user(frame)
    return False
