"""An ORM attribute that was not loaded when a response was serialised: the verdict that leads the
test's failure, from the error pydantic or FastAPI raised.

FastAPI's ``response_model`` and pydantic's ``model_validate(obj, from_attributes=True)`` read
every field of an ORM object. An unloaded relationship (or an attribute expired by a commit)
then fails inside pydantic, which keeps only the text of what SQLAlchemy (or our guard) raised,
in a ``get_attribute_error`` of its ``ValidationError`` or FastAPI's ``ResponseValidationError``.
The test sees a validation error that names neither the attribute nor the fix; this module
reads those errors and says both. Duck-typed: neither FastAPI nor pydantic is imported.

An open session does not help an ``AsyncSession``: it never loads on attribute access, and
FastAPI (checked on 0.165) already serialises inside a ``yield`` dependency's session. So the
fix is always to load it before returning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from .frames import FrameFilter
from .hints import chain
from .report import relative

# What pydantic keeps of the error an attribute read raised, by its class name.
_UNLOADED = ("LazyLoadError", "MissingGreenlet", "DetachedInstanceError", "DetachedAccessError")
_CLASS_IN_TEXT = re.compile(r"<(\w+) at 0x")

_LOAD_FIX = (
    "fix: load it in the query — `select({cls}).options(selectinload({cls}.{attr}))` — or "
    "`await {obj}.awaitable_attrs.{attr}` before returning, or `relationship(..., "
    'lazy="selectin")`; keeping the session open does not help: an AsyncSession never loads '
    "on attribute access"
)
_EXPIRED_FIX = (
    "fix: `async_sessionmaker(..., expire_on_commit=False)`, or `await session.refresh({obj})` "
    "after the commit, before the session closes"
)


def unloaded_attribute(error: BaseException, root: Path | None) -> str | None:
    """The verdict for an ORM attribute a serialisation could not read, if ``error`` (or what
    it wraps) is one; else None."""
    for candidate in chain(error):
        for item in _errors(candidate):
            verdict = _verdict(candidate, item, root)
            if verdict is not None:
                return verdict
    return None


def _errors(error: BaseException) -> Iterable[Mapping[str, Any]]:
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return ()
    try:
        found = errors()
    except Exception:  # not pydantic's or FastAPI's: some other ``errors`` method
        return ()
    return [item for item in found if isinstance(item, Mapping)] if isinstance(found, list) else ()


def _verdict(error: BaseException, item: Mapping[str, Any], root: Path | None) -> str | None:
    if item.get("type") != "get_attribute_error":
        return None
    context = item.get("ctx")
    text = str(context.get("error", "")) if isinstance(context, Mapping) else ""
    kind = text.split(":", 1)[0]
    if kind not in _UNLOADED:
        return None
    loc = item.get("loc") or ("?",)
    attr, cls = str(loc[-1]), _class_name(item.get("input"), text)
    expired = "attribute refresh operation" in text
    what = "expired (by a commit) and its session closed" if expired else _cause(kind)
    lines = [
        f"{cls}.{attr} was not loaded when {_reader(error, root)}: {what}",
        (_EXPIRED_FIX if expired else _LOAD_FIX).format(cls=cls, attr=attr, obj=cls.lower()),
    ]
    if kind != "LazyLoadError":  # ours names the test's line, not the route's: left out
        lines.append(f"(SQLAlchemy said: {text.splitlines()[0]})")
    return "\n".join(lines)


def _class_name(obj: object, text: str) -> str:
    if obj is not None and not isinstance(obj, str | int | float | dict | list):
        return type(obj).__name__
    found = _CLASS_IN_TEXT.search(text)
    return found.group(1) if found else "the object"


def _cause(kind: str) -> str:
    if kind.startswith("Detached"):
        return "the session that loaded it was closed before it was read"
    return "an AsyncSession cannot load a relationship on attribute access (MissingGreenlet)"


def _reader(error: BaseException, root: Path | None) -> str:
    """Who read the attribute: FastAPI for a route's ``response_model`` (it names the route),
    else the user's ``model_validate`` call."""
    endpoint = getattr(error, "endpoint_ctx", None)
    if isinstance(endpoint, Mapping) and endpoint.get("function"):
        where = ""
        if endpoint.get("file"):
            where = f" at {relative(str(endpoint['file']), root)}:{endpoint.get('line', '?')}"
        path = f" ({endpoint['path']})" if endpoint.get("path") else ""
        route = f"the route {endpoint['function']}{where}{path}"
        return f"FastAPI read it to serialise the response of {route}"
    if type(error).__name__ == "ResponseValidationError":
        return "FastAPI read it to serialise a route's response"
    model = getattr(error, "title", None)
    call = f"{model}.model_validate" if isinstance(model, str) else "a pydantic model"
    return f"{call} read it at {_user_line(error.__traceback__, root)}"


def _user_line(tb: TracebackType | None, root: Path | None) -> str:
    """The innermost user line in a traceback: where the model was validated."""
    user, found = FrameFilter(), "an unknown line"
    while tb is not None:
        if user.is_user(tb.tb_frame):
            code = tb.tb_frame.f_code
            found = f"{relative(code.co_filename, root)}:{tb.tb_lineno} in {code.co_name}"
        tb = tb.tb_next
    return found
