"""Strict sessions (``loopguard_sessionmaker``): a detached object's attributes refuse reads.

A loaded attribute of a detached object is stale and an unloaded one raises
``DetachedInstanceError`` far from the cause; the strict class fails at the read, naming it.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import DetachedInstanceError

from .._base.events import LoopguardError
from .._base.frames import FrameFilter
from .sessions import at


class DetachedAccessError(DetachedInstanceError, LoopguardError):
    """An attribute of an object read after its strict session closed or expunged it."""

    code = None  # type: ignore[assignment]


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

        # Not mapped: SQLAlchemy finds the object's state through its instance dict. Made by
        # ``type.__new__`` of the model's own metaclass, which does not run that metaclass:
        # SQLModel's would build a pydantic model of it (and fail on its relationships).
        namespace = {"__getattribute__": __getattribute__}
        strict = type.__new__(type(cls), cls.__name__, (cls,), namespace)
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
    where = at(user, root or os.getcwd())
    return (
        f"{model}.{name} read at {where} after its session closed or expunged it: a loaded value "
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
