"""AsyncSession guards: lazy loads, sync engines on the loop, detached reads — caught early.

The only module that imports SQLAlchemy (install ``pytest-loopguard[sqlalchemy]``), with its
``_sqlalchemy`` package; it knows nothing of pytest: the plugin's fixtures drive it. It works on
SQLAlchemy 2.0 and 2.1 alike.

Which hooks, chosen by what they cost every query (callgrind, bench/sqlalchemy_overhead.py's
workload on asyncpg): any ``ConnectionEvents`` listener on ``Engine`` (``before_cursor_execute``,
``engine_connect``) switches every connection to SQLAlchemy's event path, +5% of a query even
when the listener does nothing, and ``do_orm_execute`` builds an ``ORMExecuteState`` per
statement, +4.7%. So: the dialect's ``do_execute`` (a loop over its listeners, right before the
driver), the pool's ``checkout`` and ``checkin``, the session's ``after_transaction_create`` (once
per transaction), and ``greenlet_spawn`` wrapped in the AsyncSession modules (see
``_sqlalchemy.sessions``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import sqlalchemy
from greenlet import getcurrent
from sqlalchemy import event
from sqlalchemy.engine import AdaptedConnection, Dialect, Engine
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.orm import InstrumentedAttribute, RelationshipProperty, Session, SessionTransaction
from sqlalchemy.pool import Pool

from ._base.events import LoopguardError
from ._base.frames import FrameFilter, FrameInfo, describe
from ._sqlalchemy.nplusone import NPlusOne, QueryCounter
from ._sqlalchemy.nplusone import message as nplusone_message
from ._sqlalchemy.sessions import (
    Checkout,
    Checkouts,
    ConcurrentSessionError,
    SessionOwners,
    leak_message,
    watch_made,
    watch_spawns,
)
from ._sqlalchemy.strict import DetachedAccessError, StrictSessionFactory

__all__ = [
    "ConcurrentSessionError",
    "DetachedAccessError",
    "LazyLoadError",
    "SQLAlchemyGuard",
    "StrictSessionFactory",
    "SyncEngineOnLoopError",
    "leak_message",
    "nplusone_message",
    "render",
]

_ATTRIBUTE_GET = InstrumentedAttribute.__get__.__code__


class LazyLoadError(MissingGreenlet, LoopguardError):
    """A lazy load on an AsyncSession object, stopped before any SQL was sent.

    Subclasses ``MissingGreenlet`` (what SQLAlchemy would have raised), so existing ``except``
    clauses keep working.
    """

    code = None  # type: ignore[assignment]  # our message has the fix; no generic link


class SyncEngineOnLoopError(RuntimeError, LoopguardError):
    """A sync ``Engine`` was about to execute SQL on the event-loop thread."""


@dataclass(frozen=True)
class Violation:
    """One mistake a guard caught, with the error it raised (kept to tell if it was swallowed)."""

    kind: str
    message: str
    where: FrameInfo | None
    error: BaseException


def _in_greenlet() -> bool:
    """Whether SQLAlchemy's asyncio bridge is running us (then sync IO is awaited for real)."""
    return bool(getattr(getcurrent(), "__sqlalchemy_greenlet_provider__", False))


def _access_frames() -> tuple[FrameType | None, FrameType | None]:
    """The ``InstrumentedAttribute.__get__`` frame that led here, and the user frame above it."""
    frame: FrameType | None = sys._getframe(2)
    getter = None
    user_filter = FrameFilter()
    while frame is not None:
        if getter is None and frame.f_code is _ATTRIBUTE_GET:
            getter = frame
        elif user_filter.is_user(frame):
            return getter, frame
        frame = frame.f_back
    return getter, None


def _identity(instance: object) -> str:
    state = sqlalchemy.inspect(instance)
    keys = state.mapper.primary_key
    ident = state.identity or ()
    pairs = ", ".join(f"{col.key}={value!r}" for col, value in zip(keys, ident, strict=False))
    return f"{type(instance).__name__}({pairs})"


def _user_location(frame: FrameType | None, root: str | None) -> tuple[FrameInfo | None, str]:
    if frame is None:
        return None, "an unknown line"
    info = describe(frame, frame.f_lineno or 0)
    return info, f"{_relative(info.filename, root)}:{info.lineno} in {info.function}"


def _relative(filename: str, root: str | None) -> str:
    if root is None:
        return filename
    rel = os.path.relpath(filename, root)
    return filename if rel.startswith("..") else rel


def _lazy_message(attr: Any, instance: object, relationship: bool, at: str) -> str:
    model, key = type(instance).__name__, attr.key if attr is not None else "?"
    var = model.lower()
    if relationship:
        return (
            f"lazy load of {model}.{key} on {_identity(instance)} at {at}: an AsyncSession "
            f"cannot load a relationship on attribute access (MissingGreenlet)\n"
            f"fix: load it in the query — `select({model}).options(selectinload({model}.{key}))`"
            f' — or `await {var}.awaitable_attrs.{key}`, or `relationship(..., lazy="selectin")`'
        )
    return (
        f"{model}.{key} on {_identity(instance)} was expired (by `await session.commit()` or "
        f"`session.expire()`) and reading it at {at} would load it without await "
        f"(MissingGreenlet)\n"
        f"fix: `async_sessionmaker(..., expire_on_commit=False)`, or "
        f"`await session.refresh({var})` before reading it"
    )


class SQLAlchemyGuard:
    """While active: lazy loads on AsyncSession objects raise LazyLoadError before any SQL, a
    sync Engine executing on the event-loop thread raises SyncEngineOnLoopError, and a second
    task using an AsyncSession while another task's operation on it is in flight raises
    ConcurrentSessionError. Every violation is also kept in ``violations``, so a caller can fail
    even when the app swallowed the error; connections taken and never given back are in
    ``leaks`` once it is left.
    """

    def __init__(self, root: str | None = None, nplusone: int | None = None) -> None:
        self.root = root
        self.violations: list[Violation] = []
        self.leaks: list[Checkout] = []
        self.nplusone: list[NPlusOne] = []  # once left: SELECTs run ``nplusone`` times or more
        self._queries = QueryCounter(nplusone) if nplusone else None
        self._owners, self._checkouts = SessionOwners(root), Checkouts()
        self._shared: set[int] = set()  # ids of the sessions two tasks used at once
        self._unwatch: Callable[[], None] = lambda: None
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = [
            (Dialect, "do_execute", self._on_execute),
            (Dialect, "do_execute_no_params", self._on_execute_no_params),
            (Dialect, "handle_error", self._on_error),
            (Session, "after_transaction_create", self._on_transaction),
            (Pool, "checkout", self._on_checkout),
            (Pool, "checkin", self._checkouts.on_checkin),
        ]

    def __enter__(self) -> SQLAlchemyGuard:
        added = []
        try:
            for target, name, fn in self._listeners:
                event.listen(target, name, fn)
                added.append((target, name, fn))
        except BaseException:
            for target, name, fn in added:
                event.remove(target, name, fn)
            raise
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

        stops = [watch_made(AsyncSession, self._checkouts.on_session)]
        stops.append(watch_made(AsyncConnection, self._checkouts.on_connection))
        stops.append(watch_spawns(self._starting))

        def unwatch() -> None:
            for stop in reversed(stops):
                stop()

        self._unwatch = unwatch
        return self

    def __exit__(self, *exc: object) -> None:
        self._unwatch()
        for target, name, fn in self._listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        taken = list(self._checkouts.open.values())
        self._checkouts.open.clear()
        for checkout in taken:
            checkout.close()
        # A session two tasks used at once keeps the first task's connection when the second
        # one's error ends the test: that follows from the ConcurrentSessionError, reported
        # already, and is not a second problem.
        self.leaks = [c for c in taken if c.session is None or c.session not in self._shared]
        self.nplusone = [] if self._queries is None else self._queries.found()

    def _record(self, kind: str, message: str, where: FrameInfo | None, error: Exception) -> None:
        error.where = where  # type: ignore[attr-defined]  # the failure points at it
        self.violations.append(Violation(kind, message, where, error))

    def _starting(self, session: Session, operation: Any, here: FrameType | None) -> None:
        """An AsyncSession operation on ``session`` starts: fails when another task's is in
        flight."""
        __tracebackhide__ = True
        message = self._owners.starting(session, operation, here)
        if message is not None:
            self._shared.add(id(session))
            error = ConcurrentSessionError(message)
            self._record("concurrent session", message, None, error)
            raise error

    def _on_execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        # Every statement of every engine passes here, right before its driver: the common,
        # legitimate case (an AsyncSession's, run by SQLAlchemy's greenlet) must return after a
        # few cheap checks. Returning None lets the dialect execute it as usual.
        __tracebackhide__ = True
        greenlet = getcurrent()
        if getattr(greenlet, "__sqlalchemy_greenlet_provider__", False):  # _in_greenlet()
            if self._queries is not None:
                self._queries.count(statement, context, greenlet)
        elif asyncio._get_running_loop() is not None:
            self._off_the_bridge(context.dialect)

    def _on_execute_no_params(self, cursor: Any, statement: str, context: Any) -> None:
        __tracebackhide__ = True
        self._on_execute(cursor, statement, None, context)

    def _on_transaction(self, session: Session, transaction: SessionTransaction) -> None:
        """A session begins a transaction: before it takes a connection, which for an
        AsyncSession outside its greenlet (an attribute read after ``commit`` expired it) would
        fail in the driver with no word of which attribute."""
        __tracebackhide__ = True
        if _in_greenlet() or asyncio._get_running_loop() is None:
            return
        self._off_the_bridge(_dialect_of(session))

    def _on_error(self, context: Any) -> BaseException | None:
        """SQLAlchemy failed a statement: a ``MissingGreenlet`` from a driver that awaits before
        ``do_execute`` (aiosqlite makes its cursor so on 2.1) becomes our lazy-load error when
        an attribute read is behind it. The await never ran: still no SQL was sent."""
        error = context.original_exception
        if isinstance(error, MissingGreenlet) and not isinstance(error, LazyLoadError):
            return self._lazy_load(context.dialect)
        return None

    def _off_the_bridge(self, dialect: Any) -> None:
        __tracebackhide__ = True
        error = self._lazy_load(dialect)
        if error is not None:
            raise error

    def _lazy_load(self, dialect: Any) -> LazyLoadError | None:
        """An async engine's SQL about to run on the loop's thread outside AsyncSession's
        greenlet: when an attribute read is behind it, a lazy load — recorded, and its error
        returned to be raised before any SQL. (Anything else is left to SQLAlchemy, which
        raises MissingGreenlet.)"""
        if not getattr(dialect, "is_async", False) or _in_greenlet():
            return None  # a sync Session in sync code may lazy-load
        getter, user = _access_frames()
        if getter is None:
            return None
        attr = getter.f_locals.get("self")
        instance = getter.f_locals.get("instance")
        relationship = isinstance(getattr(attr, "property", None), RelationshipProperty)
        info, at = _user_location(user, self.root)
        message = _lazy_message(attr, instance, relationship, at)
        error = LazyLoadError(message)
        self._record("lazy load", message, info, error)
        return error

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        __tracebackhide__ = True
        if not isinstance(dbapi_connection, AdaptedConnection):
            self._sync_checkout()
        self._checkouts.on_checkout(dbapi_connection, record, proxy)

    def _sync_checkout(self) -> None:
        """A sync engine's pool gives a connection: on the event loop's thread, its connect and
        every query block the loop. (A sync engine run inside ``run_sync`` counts too: the
        greenlet runs on the loop's thread.)"""
        __tracebackhide__ = True
        if asyncio._get_running_loop() is None:
            return
        _, user = _access_frames()
        info, at = _user_location(user, self.root)
        url = _engine_url()
        message = (
            f"sync Engine {url} used on the event-loop thread at {at}: its connect and every "
            f"query block the loop\n"
            f'fix: `create_async_engine("postgresql+asyncpg://...")` (or "sqlite+aiosqlite://") '
            f"with AsyncSession, or run the sync code in `await asyncio.to_thread(...)`"
        )
        error = SyncEngineOnLoopError(message)
        self._record("sync engine", message, info, error)
        # Raised in the pool's checkout, which gives the connection back (invalidated).
        raise error


def _dialect_of(session: Session) -> Any:
    try:
        return session.get_bind().dialect
    except Exception:  # a session bound per mapper: which engine is not known yet
        return None


def _engine_url() -> str:
    """The URL of the Engine whose connect is on the stack (read only for a violation)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        owner = frame.f_locals.get("self")
        engine = owner if isinstance(owner, Engine) else getattr(owner, "engine", None)
        if isinstance(engine, Engine):
            return engine.url.render_as_string(hide_password=True)
        frame = frame.f_back
    return "(unknown URL)"


def render(violations: list[Violation]) -> str:
    """The teardown failure text listing every violation, in order."""
    lines = [f"pytest-loopguard caught {len(violations)} SQLAlchemy mistake(s) in this test:"]
    for violation in violations:
        name = type(violation.error).__name__
        lines.append(f"{name}: {violation.message}")
    return "\n".join(lines)
