"""Two traps of an AsyncSession's life: one session in two tasks at once, and connections a test
checks out and never gives back. Public SQLAlchemy events only; nothing of pytest.

*Concurrent use.* Every AsyncSession operation (``execute``, ``get``, ``commit``,
``awaitable_attrs``, ``run_sync``...) runs its sync twin through SQLAlchemy's ``greenlet_spawn``,
whose coroutine it awaits from start to end. Wrapping that one name in the AsyncSession modules
(see ``watch_spawns``) hands over each operation's coroutine as it is made; it is in flight
until that coroutine has finished. A second task starting one while another task's is in
flight shares the session. Decided at the second task's call, before the
driver or the pool sees it, whatever the timing of the I/O — also while the first one is still
checking out its connection. (SQLAlchemy has no event for it: ``do_orm_execute``, the nearest,
builds an ``ORMExecuteState`` for every statement, +4.7% of an asyncpg query by callgrind.)

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
from sqlalchemy.orm import Session, SessionTransaction, object_session

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


CONCURRENT_FIX = (
    "fix: a session per task — `async with sessionmaker() as session:` inside each task — or "
    "run them one after the other (`await a(session)` then `await b(session)`, not "
    "`asyncio.gather`)"
)


class SessionOwners:
    """The operation last started on each session, and the task that started it."""

    def __init__(self, root: str | None) -> None:
        self._root = root
        # id(sync Session) -> (the operation's coroutine, its task): in flight until that
        # coroutine has finished (a finished one has no frame), however long it awaits. By id,
        # not weakly: this runs for every operation (an id reused by a later session finds a
        # finished coroutine: nothing in flight).
        self._last: dict[int, tuple[Any, Any]] = {}

    def starting(self, session: Any, operation: Any, here: FrameType | None) -> str | None:
        """``operation`` (a coroutine, not started yet) on ``session`` (a sync ``Session``) is
        about to be awaited at ``here``: the message of a ``ConcurrentSessionError`` when
        another task's operation is still in flight."""
        task = _current_task()
        last = self._last.get(id(session))
        if last is not None and last[0].cr_frame is not None and last[1] is not task:
            return self._message(last[1], task, here)
        self._last[id(session)] = (operation, task)
        return None

    def _message(
        self, first: asyncio.Task[Any] | None, second: asyncio.Task[Any] | None, top: Any
    ) -> str:
        here = _first_user(list(walk(top, getcurrent())))
        there = _first_user(_task_frames(first))
        return (
            f"one AsyncSession used by two tasks at once: {_name(second)} started an operation "
            f"at {self._at(here)} while the one {_name(first)} started at {self._at(there)} "
            f"was still in flight (an AsyncSession is not safe for concurrent use: SQLAlchemy "
            f"fails, or not, depending on timing)\n{CONCURRENT_FIX}"
        )

    def _at(self, frame: FrameType | None) -> str:
        return at(frame, self._root)


def _current_task() -> asyncio.Task[Any] | None:
    loop = asyncio._get_running_loop()  # None: a greenlet_spawn driven by hand
    return None if loop is None else asyncio.current_task(loop)


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


# The modules whose AsyncSession methods call ``greenlet_spawn`` by their own global name.
SPAWNING_MODULES = ("sqlalchemy.ext.asyncio.session", "sqlmodel.ext.asyncio.session")


def watch_spawns(starting: Callable[[Any, Any, FrameType | None], None]) -> Callable[[], None]:
    """Call ``starting(session, coroutine, frame)`` as every AsyncSession operation is made,
    before it is awaited (``starting`` may raise: then it never runs); returns how to stop. A
    wrapper of ``greenlet_spawn`` in the modules that call it (imported ones only): a plain
    function handing back SQLAlchemy's own coroutine, so no await passes through it (an
    ``async def`` around it cost asyncpg 1.4% a query: each of a query's awaits crossed it)."""
    stops = []
    for name in SPAWNING_MODULES:
        module = sys.modules.get(name)
        original = getattr(module, "greenlet_spawn", None)
        if module is not None and original is not None:
            stops.append(_wrap_spawn(module, original, starting))

    def stop() -> None:
        for undo in reversed(stops):
            undo()

    return stop


def _wrap_spawn(
    module: Any,
    original: Callable[..., Any],
    starting: Callable[[Any, Any, FrameType | None], None],
) -> Callable[[], None]:
    def greenlet_spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        operation = original(fn, *args, **kwargs)
        session = _session_of(fn, args)
        if session is not None:
            try:
                starting(session, operation, sys._getframe(1))
            except BaseException:
                operation.close()  # it never runs: no "never awaited" warning for it
                raise
        return operation

    greenlet_spawn.__wrapped__ = original  # type: ignore[attr-defined]
    module.greenlet_spawn = greenlet_spawn

    def stop() -> None:
        if module.greenlet_spawn is greenlet_spawn:  # else whoever wrapped it after us stays
            module.greenlet_spawn = original

    return stop


_WAYS_OUT = frozenset({"close", "rollback", "reset", "invalidate"})


def _session_of(fn: Any, args: tuple[Any, ...]) -> Any:
    """The sync Session an AsyncSession operation works on: the owner of the bound method it
    runs (a Session's, or a SessionTransaction's), the first argument of ``run_sync``, or the
    instance whose attribute ``awaitable_attrs`` loads. None for the ways out (``close``,
    ``rollback``...), which must always run: SQLAlchemy runs ``async with``'s close in a task
    of its own, shielded, while the task that failed a ``gather`` may still be in flight."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, Session):
        return None if fn.__name__ in _WAYS_OUT else owner
    if isinstance(owner, SessionTransaction):
        return None if fn.__name__ in _WAYS_OUT else owner.session
    if args and isinstance(args[0], Session):
        return args[0]
    if fn is getattr and args:
        with suppress(Exception):  # not a mapped instance: no session to share
            return object_session(args[0])
    return None


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
