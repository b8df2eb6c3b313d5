"""N+1 through awaits: the same SELECT run N times from one line of the test's code.

``await user.awaitable_attrs.posts`` or ``await session.get(Post, id)`` in a loop sends one
query per item. The dialect's ``do_execute`` event sees each statement as SQL text, the same
string for the same statement shape whatever its parameters; counted by (text, the user's line),
for the SELECTs an ORM session sends (Core work on a connection, such as the per-table checks of
``metadata.create_all``, is not counted). The compiled ORM statement and the execution's load
options say what the ORM was doing: a lazy load of ``User.posts``, a ``get`` of ``Post``, or an
eager loader's batched follow-up query (selectinload sends one per 500 parents, by design: never
counted). Only single executions count: a flush's INSERTs, and ``executemany``, are not N+1. What
runs between two SELECTs — autoflush's UPDATEs and INSERTs — neither counts nor hides them:
``for id in ids: (await session.get(P, id)).stock += 1`` is an N+1.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from types import FrameType
from typing import Any

from .._base.frames import FrameFilter, FrameInfo, RawFrame, raw, resolve
from .._base.greenlets import walk
from .sessions import place


@dataclass(frozen=True)
class NPlusOne:
    """A SELECT run ``count`` times from one line."""

    taken: RawFrame
    count: int
    what: str | None  # "User.posts" (a relationship) or "Post" (an entity), when known
    lazy: bool  # lazy loads of a relationship (else one query per ``get`` or ``execute``)

    @property
    def where(self) -> FrameInfo:
        return resolve(self.taken)

    def fix(self) -> str:
        if self.lazy and self.what:
            model, _, key = self.what.partition(".")
            return (
                f"load them in the first query: `select({model}).options(selectinload("
                f'{self.what}))`, or `relationship(..., lazy="selectin")` on {model}.{key}'
            )
        entity = self.what or "Model"
        return (
            f"one query for all of them: `select({entity}).where({entity}.id.in_(ids))` "
            "instead of one per item"
        )


class QueryCounter:
    """Counts SELECTs by statement and user line while the guard is active. Runs for every
    statement: the ORM's state is only kept, and read once per (statement, line)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._counts: Counter[tuple[str, int, int]] = Counter()
        # The first time each (statement, line) ran: the line, what the ORM loaded, and
        # whether it was an eager loader's follow-up (never an N+1).
        self._first: dict[tuple[str, int, int], tuple[RawFrame, str | None, bool, bool]] = {}
        self._user = FrameFilter()
        # By compiled statement (SQLAlchemy caches one per statement shape): its ORM SELECT
        # (None when it is not one) and its text. Kept for the guard's life, as in that cache.
        self._orm: dict[Any, tuple[Any, str]] = {}

    def count(self, statement: str, context: Any, greenlet: Any) -> None:
        """A statement about to run in ``greenlet``, AsyncSession's (the dialect's
        ``do_execute``): count an ORM SELECT against the line that ran it."""
        compiled = context.compiled
        seen = self._orm.get(compiled)
        if seen is None:
            # The statement's text once a compiled statement, interned: the same string object
            # each time, whose hash is kept (a query's text is long, and a new string each
            # execution would be hashed three times a query).
            seen = self._orm[compiled] = (_orm_select(compiled), sys.intern(statement))
        orm, text = seen
        if orm is None:
            return
        user = self._user_frame(greenlet)
        if user is None:
            return
        # The call site: the code by id (hashing a code object hashes its bytecode; ``_first``
        # keeps it alive) and the instruction's offset (``f_lineno`` decodes the line table
        # from the function's start: microseconds in a long test); the line once, the first time.
        key = (text, id(user.f_code), user.f_lasti)
        self._counts[key] += 1
        if key not in self._first:
            line = user.f_lineno or 0
            self._first[key] = (raw(user, line), *_described(orm, context.execution_options))

    def _user_frame(self, greenlet: Any) -> FrameType | None:
        """The first user frame out from the statement. Inside AsyncSession's bridge it is
        above the greenlet: start from the frame that spawned it (``greenlet_spawn``), not
        from the twenty-odd SQLAlchemy frames inside."""
        parent: Any = getattr(greenlet, "parent", None)
        top: FrameType | None = getattr(parent, "gr_frame", None)
        is_user = self._user.is_user
        if top is not None and parent.parent is None:
            # The common case, a loop in a thread's main greenlet: plain frames (no ``walk``).
            while top is not None and not is_user(top):
                top = top.f_back
            return top
        frames = walk(top, parent) if top is not None else walk(sys._getframe(2), greenlet)
        return next((frame for frame in frames if is_user(frame)), None)

    def found(self) -> list[NPlusOne]:
        """Every (statement, line) run at least ``threshold`` times, most first."""
        return [
            NPlusOne(first[0], count, first[1], first[2])
            for key, count in self._counts.most_common()
            if count >= self.threshold and not (first := self._first[key])[3]
        ]


def _orm_select(compiled: Any) -> Any:
    """The ORM SELECT ``compiled`` was compiled from, or None. Only what an ORM session sends
    counts: schema checks (``metadata.create_all`` asks once per table), migrations and other
    Core work on a connection are not an N+1. An ORM statement is one SQLAlchemy routes to the
    ORM's compiler (its propagated attributes say so; private, and so on 2.0 and 2.1 alike)."""
    statement = getattr(compiled, "statement", None)
    if not getattr(statement, "is_select", False):
        return None
    plugin = getattr(statement, "_propagate_attrs", {}).get("compile_state_plugin")
    return statement if plugin == "orm" else None


def _described(statement: Any, options: Any) -> tuple[str | None, bool, bool]:
    """What an ORM SELECT loads: (``Model.relationship``, lazy, eager) — a lazy load, or an
    eager loader's batched follow-up (selectinload) — else (``Model``, False, False). Read as
    SQLAlchemy's ``ORMExecuteState`` reads it: the path the statement was compiled along (the
    root path for a query of its own) and the load options it runs with."""
    path = getattr(getattr(statement, "_compile_options", None), "_current_path", None)
    lazy_from = getattr(options.get("_sa_orm_load_options"), "_lazy_loaded_from", None)
    if path is not None and not path.is_root and lazy_from is None:
        return None, False, True
    if lazy_from is not None:
        for element in reversed(tuple(getattr(path, "path", ()))):
            parent = getattr(element, "parent", None)
            if getattr(element, "direction", None) is not None and parent is not None:
                return f"{parent.class_.__name__}.{element.key}", True, False
        return None, True, False
    subject = getattr(statement, "_propagate_attrs", {}).get("plugin_subject")
    entity = getattr(subject, "class_", None)
    return (entity.__name__ if entity is not None else None), False, False


def message(found: NPlusOne, root: str | None, strict: bool) -> str:
    """The warning (or, under strict, failure) text for one N+1."""
    where = place(found.where, root)
    kind = "lazy loads" if found.lazy else "loads"
    what = f" ({kind} of {found.what})" if found.what else ""
    return (
        f"N+1 queries: the same SELECT ran {found.count} times from {where}{what}: one round "
        f"trip to the database per item\nfix: {found.fix()}"
        + ("" if strict else "\n(a warning; loop_block_strict makes it a failure)")
    )
