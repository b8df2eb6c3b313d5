"""AsyncSession guards: lazy loads, sync engines on the loop, detached reads — caught early.

The only module that imports SQLAlchemy (install ``pytest-loopguard[sqlalchemy]``). It uses public
events only (``do_orm_execute``, ``engine_connect``, ``persistent_to_detached``), so it
works on SQLAlchemy 2.0 and 2.1 alike, and knows nothing of pytest: the plugin's fixtures drive it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from types import FrameType
from typing import Any

import sqlalchemy
from greenlet import getcurrent
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.orm import InstrumentedAttribute, ORMExecuteState, Session
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
            (Session, "do_orm_execute", self._on_orm_execute),
            (Session, "before_flush", lambda session, *_: self._starting(session)),
            (Session, "before_commit", self._starting),
            # Once per connection, not per statement: cheaper, and it stops the sync engine
            # before it even connects from the loop thread.
            (Engine, "engine_connect", self._on_connect),
            (Pool, "checkout", self._checkouts.on_checkout),
            (Pool, "checkin", self._checkouts.on_checkin),
        ]
        if self._queries is not None:
            self._listeners.append((Engine, "before_cursor_execute", self._queries.cursor))

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

    def _starting(self, session: Session) -> None:
        """An operation on ``session`` starts: fails when another task's is in flight."""
        __tracebackhide__ = True
        message = self._owners.starting(session)
        if message is not None:
            self._shared.add(id(session))
            error = ConcurrentSessionError(message)
            self._record("concurrent session", message, None, error)
            raise error

    def _on_orm_execute(self, state: ORMExecuteState) -> None:
        __tracebackhide__ = True
        # Every statement of every AsyncSession passes here: the common, legitimate case (run
        # by SQLAlchemy's greenlet) must return after a few cheap checks.
        if _in_greenlet():
            self._starting(state.session)
            if self._queries is not None:
                self._queries.orm(state)
            return
        if not (state.is_relationship_load or state.is_column_load):
            return
        if not getattr(state.session.get_bind().dialect, "is_async", False):
            return  # a sync Session in sync code may lazy-load
        getter, user = _access_frames()
        attr = getter.f_locals.get("self") if getter is not None else None
        instance = getter.f_locals.get("instance") if getter is not None else None
        if instance is None and state.lazy_loaded_from is not None:
            instance = state.lazy_loaded_from.obj()
        info, at = _user_location(user, self.root)
        message = _lazy_message(attr, instance, state.is_relationship_load, at)
        error = LazyLoadError(message)
        self._record("lazy load", message, info, error)
        raise error

    def _on_connect(self, conn: Any) -> None:
        __tracebackhide__ = True
        if getattr(conn.dialect, "is_async", False) or asyncio._get_running_loop() is None:
            return
        _, user = _access_frames()
        info, at = _user_location(user, self.root)
        url = conn.engine.url.render_as_string(hide_password=True)
        message = (
            f"sync Engine {url} used on the event-loop thread at {at}: its connect and every "
            f"query block the loop\n"
            f'fix: `create_async_engine("postgresql+asyncpg://...")` (or "sqlite+aiosqlite://") '
            f"with AsyncSession, or run the sync code in `await asyncio.to_thread(...)`"
        )
        error = SyncEngineOnLoopError(message)
        self._record("sync engine", message, info, error)
        # Raised inside the Connection's constructor, after it took a connection from the
        # pool: give that back, or it would only be reclaimed by the garbage collector.
        with suppress(Exception):
            conn.close()
        raise error


def render(violations: list[Violation]) -> str:
    """The teardown failure text listing every violation, in order."""
    lines = [f"pytest-loopguard caught {len(violations)} SQLAlchemy mistake(s) in this test:"]
    for violation in violations:
        name = type(violation.error).__name__
        lines.append(f"{name}: {violation.message}")
    return "\n".join(lines)
