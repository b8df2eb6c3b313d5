"""Our text on pytest's own report types, so that every consumer finds the verdict.

pytest-github-actions-annotate-failures, IDE test runners, ``--tb=line`` and JUnit's
``<failure message=...>`` read a failure's crash location and traceback entries; a plain
object with a ``toterminal`` gave them nothing. pytest has no public type for these, so the
narrowest private ones are used: ``ReprExceptionInfo`` with one ``ReprEntry`` at the blocking
line, and a ``ReprFileLocation`` for the crash.
"""

from __future__ import annotations

from typing import Any

from _pytest._code.code import (
    ExceptionChainRepr,
    ReprEntry,
    ReprExceptionInfo,
    ReprFileLocation,
    ReprTraceback,
)

from .._base.report import OURS, Failure


class _Ours(ReprExceptionInfo):
    """Shown in the terminal as exactly our text: no plugin or pluggy frames in it."""

    def toterminal(self, tw: Any) -> None:
        for line in self.reprtraceback.reprentries[0].lines:
            tw.line(line, red=line.startswith(OURS), bold=True)


def failure_repr(failure: Failure) -> ReprExceptionInfo:
    """The failure as a report's ``longrepr``: its lines travel to an xdist controller too."""
    crash = ReprFileLocation(failure.path, failure.lineno, failure.message)
    entry = ReprEntry(failure.text.splitlines(), None, None, crash, "short")
    return _Ours(reprtraceback=ReprTraceback([entry], None, "short"), reprcrash=crash)


def leading(longrepr: object, text: str, path: str, lineno: int) -> ExceptionChainRepr | None:
    """``longrepr`` (pytest's own failure) led by our verdict ``text``, which is also the crash
    line of the short summary; None when it is not a traceback we can put ours in front of."""
    if not isinstance(longrepr, ExceptionChainRepr):
        return None
    crash = ReprFileLocation(path, lineno, text.splitlines()[0])
    entry = ReprEntry([f"E   {line}" for line in text.splitlines()], None, None, None, "short")
    ours = (ReprTraceback([entry], None, "short"), crash, _WHAT_FOLLOWS)
    led = ExceptionChainRepr([ours, *longrepr.chain])
    led.reprcrash = crash  # what the summary line and --tb=line show
    for name, content, sep in longrepr.sections:
        led.addsection(name, content, sep)
    return led


_WHAT_FOLLOWS = "What the test saw (pytest-loopguard's verdict above says where it came from):"
