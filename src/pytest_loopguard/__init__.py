"""pytest-loopguard: fail async tests that block the asyncio event loop, at the blocking line.

The engine works without pytest::

    with pytest_loopguard.LoopGuard(threshold=0.1) as guard:
        asyncio.run(main())
    for event in guard.events:
        print(pytest_loopguard.render([event]))
"""

from __future__ import annotations

from ._frames import FrameInfo
from ._hints import Hint
from ._monitor import BlockEvent, LoopGuard
from ._report import LoopBlockedError, render

__version__ = "0.1.0.dev0"

__all__ = [
    "BlockEvent",
    "FrameInfo",
    "Hint",
    "LoopBlockedError",
    "LoopGuard",
    "__version__",
    "render",
]
