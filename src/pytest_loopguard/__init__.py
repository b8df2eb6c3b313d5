"""pytest-loopguard: fail async tests that block the asyncio event loop, at the blocking line.

The engine works without pytest::

    with pytest_loopguard.LoopGuard(threshold=0.1) as guard:
        asyncio.run(main())
    for event in guard.events:
        print(pytest_loopguard.render([event]))
"""

from __future__ import annotations

from ._base.events import BlockEvent, Hint, LoopBlockedError, LoopguardError, LoopHangError
from ._base.frames import FrameInfo
from ._core.guard import LoopGuard

__version__ = "0.1.0.dev0"

# The SQLAlchemy guards' exceptions, imported on first use so that importing this package never
# imports SQLAlchemy.
_FROM_SQLALCHEMY = ("DetachedAccessError", "LazyLoadError", "SyncEngineOnLoopError")


def __getattr__(name: str) -> object:
    if name in _FROM_SQLALCHEMY:
        from . import sqlalchemy

        return getattr(sqlalchemy, name)
    if name == "render":  # the text layer, imported when first needed
        from ._base.report import render

        return render
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlockEvent",
    "DetachedAccessError",
    "FrameInfo",
    "Hint",
    "LazyLoadError",
    "LoopBlockedError",
    "LoopGuard",
    "LoopHangError",
    "LoopguardError",
    "SyncEngineOnLoopError",
    "__version__",
    "render",
]
