"""Two traps of an AsyncSession's life: one session in two tasks at once, and connections a test
checks out and never gives back. Public SQLAlchemy events only; nothing of pytest.

*Concurrent use.* AsyncSession runs each operation in a new greenlet on the loop thread; the
greenlet lives while the operation awaits its driver. So at the start of any operation
(``do_orm_execute``, ``before_flush``, ``before_commit``) the session's previous operation is
still in flight exactly when its greenlet is alive — and if another task started it, two tasks
share the session. Decided at the second task's call, whatever the timing of the I/O.

*Leaks.* The pool's ``checkout`` and ``checkin`` events: a connection taken while the guard is
active, by an AsyncSession or AsyncConnection made while it was active, and not given back by
its end is a leak, also one the garbage collector reclaimed meanwhile (the pool then detaches it
without a checkin). A session or connection made before — by a fixture of wider scope, at
import, by an app's lifespan — is not the test's, whenever it first takes a connection: it is
neither reported nor closed.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from greenlet import getcurrent
from sqlalchemy.exc import InvalidRequestError

from .._base.events import LoopguardError
from .._base.frames import FrameFilter, FrameInfo, RawFrame, describe, raw, resolve
from .._base.greenlets import walk
from .._base.report import relative


class ConcurrentSessionError(InvalidRequestError, LoopguardError):
    """A task used an AsyncSession while another task's operation on it was in flight.

    Subclasses ``InvalidRequestError`` (what SQLAlchemy raises when it notices), so existing
    ``except`` clauses keep working.
    """

    code = None  # our message has the fix; no generic link


class _Operation:
    """The last operation on a session: updated in place (this runs for every statement)."""

    __slots__ = ("greenlet", "task")

    def __init__(self, task: asyncio.Task[Any] | None, greenlet: Any) -> None:
        self.task = task
        self.greenlet = greenlet  # alive while the operation awaits its driver


CONCURRENT_FIX = (
    "fix: a session per task — `async with sessionmaker() as session:` inside each task — or "
    "run them one after the other (`await a(session)` then `await b(session)`, not "
    "`asyncio.gather`)"
)


class SessionOwners:
    """The operation in flight on each session, and who started it."""

    def __init__(self, root: str | None) -> None:
        self._root = root
        self._operations: weakref.WeakKeyDictionary[Any, _Operation] = weakref.WeakKeyDictionary()

    def starting(self, session: Any) -> str | None:
        """An operation on ``session`` (a sync ``Session``) starts here: the message of a
        ``ConcurrentSessionError`` when another task's operation is still in flight."""
        greenlet = getcurrent()
        if not getattr(greenlet, "__sqlalchemy_greenlet_provider__", False):
            return None  # a sync session in sync code: not AsyncSession's bridge
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        previous = self._operations.get(session)
        if previous is None:
            self._operations[session] = _Operation(task, greenlet)
            return None
        if previous.task is not task:
            if not previous.greenlet.dead:
                return self._message(previous.task, task)
            previous.task = task
        previous.greenlet = greenlet
        return None

    def _message(self, first: asyncio.Task[Any] | None, second: asyncio.Task[Any] | None) -> str:
        here = _first_user(list(walk(sys._getframe(2), getcurrent())))
        there = _first_user(_task_frames(first))
        return (
            f"one AsyncSession used by two tasks at once: {_name(second)} started an operation "
            f"at {self._at(here)} while the one {_name(first)} started at {self._at(there)} "
            f"was still in flight (an AsyncSession is not safe for concurrent use: SQLAlchemy "
            f"fails, or not, depending on timing)\n{CONCURRENT_FIX}"
        )

    def _at(self, frame: FrameType | None) -> str:
        return at(frame, self._root)


def _name(task: asyncio.Task[Any] | None) -> str:
    return "a task" if task is None else f"task {task.get_name()!r}"


def _task_frames(task: asyncio.Task[Any] | None) -> list[FrameType]:
    """A suspended task's frames, innermost first, through the awaitables it waits on."""
    frames: list[FrameType] = []
    awaited: Any = None if task is None else task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return frames[::-1]


def _first_user(frames: list[FrameType]) -> FrameType | None:
    user = FrameFilter()
    return next((f for f in frames if user.is_user(f)), None)


def at(frame: FrameType | None, root: str | None) -> str:
    """``file:line in function`` of ``frame``, relative to ``root``."""
    if frame is None:
        return "an unknown line"
    info = describe(frame, frame.f_lineno or 0)
    return place(info, root)


def place(info: FrameInfo, root: str | None) -> str:
    path = relative(info.filename, None if root is None else Path(root))
    return f"{path}:{info.lineno} in {info.function}"


@dataclass(frozen=True)
class Checkout:
    """A connection taken from a pool while the guard was active."""

    taken: RawFrame | None  # the user's line that took it (read from its file once leaked)
    by: str  # "AsyncSession" or "AsyncConnection"
    entry: Any  # a weak reference to the pool's ``ConnectionPoolEntry``
    created: RawFrame | None = None  # where the AsyncSession was made, when it was one
    session: int | None = None  # id of that session's sync Session
    loop: Any = None  # the event loop it was taken on (None: a sync engine's)

    @property
    def where(self) -> FrameInfo | None:
        return None if self.taken is None else resolve(self.taken)

    @property
    def made(self) -> FrameInfo | None:
        return None if self.created is None else resolve(self.created)

    def close(self) -> None:
        """End the leaked connection: on PostgreSQL it may hold locks in an open transaction,
        and the next test's DDL would wait for them until the garbage collector happened to
        collect it."""
        entry = self.entry()
        if entry is None:
            return
        if self.loop is not None:
            _hang_up(entry.driver_connection)
        with suppress(Exception):  # already gone with its loop, say: it holds nothing either
            entry.invalidate()


def _hang_up(driver: Any) -> None:
    """End an async driver's server session without its event loop, which pytest-asyncio has
    usually closed by the time a test's guard ends. SQLAlchemy's terminate needs the loop for
    psycopg (asyncpg's writes its goodbye at once, aiosqlite's stops its thread), so psycopg's is
    ended here, synchronously: libpq's ``finish``."""
    pgconn = getattr(driver, "pgconn", None)
    if pgconn is not None:
        with suppress(Exception):
            pgconn.finish()


class Checkouts:
    """The connections taken while active and not yet given back, and where each
    AsyncSession made meanwhile was created (where its ``async with`` belongs)."""

    def __init__(self) -> None:
        self.open: dict[int, Checkout] = {}  # by id of the pool's connection record
        # The sync Sessions of the AsyncSessions made while active, and where each was made.
        self.created: weakref.WeakKeyDictionary[Any, RawFrame | None] = weakref.WeakKeyDictionary()
        # The AsyncConnections made while active, by id: not a WeakSet, whose lookups compare
        # with ``==``, which an AsyncConnection not yet started answers by raising.
        self.connections: dict[int, weakref.ref[Any]] = {}
        self._user = FrameFilter()

    def on_session(self, session: Any) -> None:
        """An AsyncSession was just made (see ``watch_made``): the test's; note the line."""
        user = self._first_user(sys._getframe(2), None)
        self.created[session.sync_session] = None if user is None else raw(user, user.f_lineno or 0)

    def on_connection(self, connection: Any) -> None:
        """An AsyncConnection was just made (see ``watch_made``): the test's."""
        key, known = id(connection), self.connections

        def forget(_: weakref.ref[Any]) -> None:
            known.pop(key, None)

        known[key] = weakref.ref(connection, forget)

    def on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # Once per checkout (per session or connection, not per query): the frames up to the
        # first user one, kept raw, and the session taking it (a SessionTransaction's).
        if id(record) in self.open:
            return
        session, connection, user = None, None, None
        for frame in walk(sys._getframe(1), getcurrent()):
            if self._user.is_user(frame):
                user = raw(frame, frame.f_lineno or 0)
                break
            if session is None and frame.f_code.co_name == "_connection_for_bind":
                session = getattr(frame.f_locals.get("self"), "session", None)
            elif connection is None and frame.f_code.co_name == "start":
                connection = _async_connection(frame.f_locals.get("self"))
        # Whose is it? A session or connection made before the guard began (a wider fixture's,
        # the app's) is not the test's, whenever it first checks out: never reported or closed.
        if session is not None and session not in self.created:
            return
        if session is None and connection is not None and id(connection) not in self.connections:
            return
        by = "AsyncConnection" if session is None else "AsyncSession"
        made = None if session is None else self.created.get(session)
        owner = None if session is None else id(session)
        loop = asyncio._get_running_loop()
        self.open[id(record)] = Checkout(user, by, weakref.ref(record), made, owner, loop)

    def _first_user(self, top: FrameType | None, greenlet: Any) -> FrameType | None:
        return next((f for f in walk(top, greenlet) if self._user.is_user(f)), None)

    def on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        self.open.pop(id(record), None)


def _async_connection(candidate: Any) -> Any:
    from sqlalchemy.ext.asyncio import AsyncConnection

    return candidate if isinstance(candidate, AsyncConnection) else None


def watch_made(cls: type, made: Callable[[Any], None]) -> Callable[[], None]:
    """Tell ``made`` of every ``cls`` (AsyncSession, AsyncConnection) made from now on;
    returns how to stop. (A wrapper of ``cls.__init__``: SQLAlchemy has no event for it.)"""
    original = cls.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made(self)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]

    def stop() -> None:
        if cls.__dict__.get("__init__") is __init__:  # else theirs stays
            cls.__init__ = original  # type: ignore[misc]

    return stop


def leak_message(leaks: list[Checkout], root: str | None) -> str:
    """The teardown failure for connections a test never gave back."""
    lines = [f"{len(leaks)} database connection(s) taken by this test and never given back:"]
    for leak in leaks:
        where = "an unknown line" if leak.where is None else place(leak.where, root)
        made = "" if leak.made is None else f" created at {place(leak.made, root)}"
        lines.append(f"  an {leak.by}{made} took a connection at {where}")
    lines.append(
        "fix: close what you open — `async with sessionmaker() as session:` / "
        "`async with engine.connect() as conn:` around its use (or `await session.close()` in "
        "a `finally`); an unclosed one is reclaimed only by the garbage collector, if at all "
        '("non-checked-in connection" warnings later, "idle in transaction" on PostgreSQL). '
        "pytest-loopguard closed it, so that its locks do not hang the next test."
    )
    return "\n".join(lines)
