"""Whether a debugger is driving the code: then a held loop is someone reading a prompt.

pdb (``breakpoint()``, pytest's ``--pdb``/``--trace``) and IDE debuggers (pydevd, which
debugpy, PyCharm and VS Code use) set a trace function; on Python 3.12+ an IDE may register a
``sys.monitoring`` tool instead. Coverage also traces, but is not a debugger: only known
debugger modules count (the way pytest-timeout tells them apart).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

_ROOTS = ("pdb", "bdb", "pydevd", "_pydevd", "_pydev", "pydev", "debugpy")


def is_debugger_module(module: str) -> bool:
    """Whether ``module`` (a dotted name) belongs to a known debugger."""
    return any(part.startswith(_ROOTS) for part in module.split("."))


def _tracer_module(tracer: Any) -> str:
    owner = getattr(tracer, "__self__", tracer)
    return str(getattr(tracer, "__module__", None) or type(owner).__module__ or "")


def attached() -> str | None:
    """The debugger tracing this process, by name, or None: this thread's trace function, the
    one new threads get, and (3.12+) the ``sys.monitoring`` debugger tool."""
    for tracer in (sys.gettrace(), getattr(threading, "gettrace", lambda: None)()):
        if tracer is not None and is_debugger_module(_tracer_module(tracer)):
            return _tracer_module(tracer).split(".")[0]
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None:
        tool = monitoring.get_tool(monitoring.DEBUGGER_ID)
        if tool:
            return str(tool)
    return None


def in_stack(through: Iterable[tuple[str, str, str]]) -> bool:
    """Whether a sampled stack (module, function, file of each frame) ran in a debugger: the
    loop thread was stopped at its prompt."""
    return any(is_debugger_module(module) for module, _, _ in through)


def in_frames(frames: Iterable[FrameType]) -> bool:
    """Whether a live stack runs in a debugger (the hang guard must not interrupt a prompt)."""
    return any(is_debugger_module(str(f.f_globals.get("__name__", ""))) for f in frames)


def tracer() -> str | None:
    """The tracer that is not a debugger active in this process (coverage), by module name."""
    for tracing in (sys.gettrace(), getattr(threading, "gettrace", lambda: None)()):
        if tracing is not None and not is_debugger_module(_tracer_module(tracing)):
            return _tracer_module(tracing).split(".")[0] or "a trace function"
    monitoring = getattr(sys, "monitoring", None)
    for tool in range(6) if monitoring is not None else ():
        name = monitoring.get_tool(tool)  # type: ignore[union-attr]
        if name and tool != monitoring.DEBUGGER_ID and "profil" not in str(name):  # type: ignore[union-attr]
            return str(name).split(".")[0]  # coverage registers as "coverage.py" (3.14)
    return None
