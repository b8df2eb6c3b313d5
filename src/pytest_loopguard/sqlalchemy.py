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
from dataclasses import dataclass
from types import FrameType
from typing import Any

import sqlalchemy
from greenlet import getcurrent
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute, ORMExecuteState, Session, sessionmaker
from sqlalchemy.orm.exc import DetachedInstanceError

from ._events import LoopguardError
from ._frames import FrameFilter, FrameInfo, describe

_ATTRIBUTE_GET = InstrumentedAttribute.__get__.__code__


class LazyLoadError(MissingGreenlet, LoopguardError):
    """A lazy load on an AsyncSession object, stopped before any SQL was sent.

    Subclasses ``MissingGreenlet`` (what SQLAlchemy would have raised), so existing ``except``
    clauses keep working.
    """

    code = None  # type: ignore[assignment]  # our message has the fix; no generic link


class SyncEngineOnLoopError(RuntimeError, LoopguardError):
    """A sync ``Engine`` was about to execute SQL on the event-loop thread."""


class DetachedAccessError(DetachedInstanceError, LoopguardError):
    """An attribute of an object read after its strict session closed or expunged it."""

    code = None  # type: ignore[assignment]


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
    """While active: lazy loads on AsyncSession objects raise LazyLoadError before any SQL, and a
    sync Engine executing on the event-loop thread raises SyncEngineOnLoopError. Every violation
    is also kept in ``violations``, so a caller can fail even when the app swallowed the error.
    """

    def __init__(self, root: str | None = None) -> None:
        self.root = root
        self.violations: list[Violation] = []
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = [
            (Session, "do_orm_execute", self._on_orm_execute),
            # Once per connection, not per statement: cheaper, and it stops the sync engine
            # before it even connects from the loop thread.
            (Engine, "engine_connect", self._on_connect),
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
        return self

    def __exit__(self, *exc: object) -> None:
        for target, name, fn in self._listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

    def _record(self, kind: str, message: str, where: FrameInfo | None, error: Exception) -> None:
        error.where = where  # type: ignore[attr-defined]  # the failure points at it
        self.violations.append(Violation(kind, message, where, error))

    def _on_orm_execute(self, state: ORMExecuteState) -> None:
        __tracebackhide__ = True
        # Every statement of every AsyncSession passes here: the common, legitimate case (run
        # by SQLAlchemy's greenlet) must return after one cheap check.
        if _in_greenlet() or not (state.is_relationship_load or state.is_column_load):
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
        raise error


def render(violations: list[Violation]) -> str:
    """The teardown failure text listing every violation, in order."""
    lines = [f"pytest-loopguard caught {len(violations)} SQLAlchemy mistake(s) in this test:"]
    for violation in violations:
        name = type(violation.error).__name__
        lines.append(f"{name}: {violation.message}")
    return "\n".join(lines)


# -- strict sessions ---------------------------------------------------------------------------

_STRICT_CLASSES: dict[type, type] = {}
_ROOT_KEY = "pytest_loopguard.root"  # where message paths start, kept on the object's state


def _strict_class(cls: type) -> type:
    """A subclass of ``cls`` whose mapped attributes raise DetachedAccessError when read."""
    strict = _STRICT_CLASSES.get(cls)
    if strict is None:
        keys: frozenset[str] = frozenset(sqlalchemy.inspect(cls).attrs.keys())

        def __getattribute__(self: Any, name: str) -> Any:
            if name in keys:
                user = _first_user_frame(sys._getframe(1))
                state = object.__getattribute__(self, "_sa_instance_state")
                root = state.info.get(_ROOT_KEY)
                raise DetachedAccessError(_detached_message(self, name, user, root))
            return object.__getattribute__(self, name)

        # Not mapped: SQLAlchemy finds the object's state through its instance dict.
        strict = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__})
        strict.__module__ = cls.__module__
        _STRICT_CLASSES[cls] = strict
    return strict


def _first_user_frame(frame: FrameType | None) -> FrameType | None:
    user_filter = FrameFilter()
    while frame is not None and not user_filter.is_user(frame):
        frame = frame.f_back
    return frame


def _detached_message(instance: object, name: str, user: FrameType | None, root: str | None) -> str:
    model = type(instance).__name__
    _, at = _user_location(user, root or os.getcwd())
    return (
        f"{model}.{name} read at {at} after its session closed or expunged it: a loaded value "
        f"is stale, an unloaded one raises DetachedInstanceError\n"
        f"fix: use it inside `async with session:`, or load what you need first "
        f"(`expire_on_commit=False`, selectinload) and return plain data"
    )


def _make_strict(instance: object, root: str | None) -> None:
    cls = type(instance)
    if cls not in _STRICT_CLASSES.values():
        sqlalchemy.inspect(instance).info[_ROOT_KEY] = root
        object.__setattr__(instance, "__class__", _strict_class(cls))


def _on_attach(session: Session, instance: object) -> None:
    cls = type(instance)
    if cls in _STRICT_CLASSES.values():
        object.__setattr__(instance, "__class__", cls.__mro__[1])


class StrictSessionFactory:
    """Makes sessions like ``factory`` does, whose objects refuse to be read once detached."""

    def __init__(self, factory: Any, root: str | None = None) -> None:
        __tracebackhide__ = True
        if not isinstance(factory, (async_sessionmaker, sessionmaker)):
            raise TypeError(
                "loopguard_sessionmaker() expects an async_sessionmaker (or a sessionmaker), "
                f"got {type(factory).__name__}: {factory!r}"
            )
        self.factory, self.root = factory, root
        self.sessions: list[Session] = []
        self._listeners = (
            ("persistent_to_detached", self._on_detach),
            ("detached_to_persistent", _on_attach),
        )

    def _on_detach(self, session: Session, instance: object) -> None:
        _make_strict(instance, self.root)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        session = self.factory(*args, **kwargs)
        sync = session.sync_session if isinstance(session, AsyncSession) else session
        for name, fn in self._listeners:
            event.listen(sync, name, fn)
        self.sessions.append(sync)
        return session

    def begin(self) -> Any:
        """Like ``async_sessionmaker.begin()``: a session with a transaction begun."""
        return self().begin()

    def close(self) -> None:
        """Remove the listeners from every session this factory made."""
        for sync in self.sessions:
            for name, fn in self._listeners:
                if event.contains(sync, name, fn):
                    event.remove(sync, name, fn)
        self.sessions.clear()
