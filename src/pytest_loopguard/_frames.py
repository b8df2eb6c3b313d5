"""Which frames are the user's: everything but the stdlib, installed packages and test runners."""

from __future__ import annotations

import linecache
import os
import site
import sysconfig
from collections.abc import Container
from dataclasses import dataclass
from types import CodeType, FrameType

# Runner and plugin packages can live outside site-packages (editable installs), so they are
# also skipped by module name.
_RUNNER_MODULES = ("pytest", "_pytest", "pluggy", "pytest_asyncio", "pytest_loopguard", "anyio")


@dataclass(frozen=True)
class FrameInfo:
    """One frame of a sampled stack, resolved to text (picklable, unlike a frame)."""

    filename: str
    lineno: int
    function: str
    module: str
    line: str

    @property
    def location(self) -> str:
        return f"{self.filename}:{self.lineno}"


def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    found.update(getattr(site, "getsitepackages", list)())
    user_site = getattr(site, "getusersitepackages", lambda: "")()
    if user_site:
        found.add(user_site)
    # Both spellings, so a frame's file name can be compared without touching the disk.
    spelled = {os.path.abspath(p) for p in found if p} | {os.path.realpath(p) for p in found if p}
    return tuple(sorted(os.path.join(p, "") for p in spelled))


_LIBRARY_PREFIXES = _library_prefixes()


class FrameFilter:
    """Decides, once per code object, whether a frame belongs to the user's code."""

    def __init__(self) -> None:
        self._cache: dict[CodeType, bool] = {}

    def is_user(self, frame: FrameType) -> bool:
        code = frame.f_code
        verdict = self._cache.get(code)
        if verdict is None:
            module = str(frame.f_globals.get("__name__", ""))
            verdict = self._cache[code] = _is_user(code.co_filename, module)
        return verdict


def _is_user(filename: str, module: str) -> bool:
    if filename.startswith("<"):
        return False
    if module.split(".", 1)[0] in _RUNNER_MODULES:
        return False
    return not os.path.abspath(filename).startswith(_LIBRARY_PREFIXES)


# A frame as the watchdog keeps it: no file is read while sampling (see resolve).
RawFrame = tuple[CodeType, int, str]


def raw(frame: FrameType, lineno: int) -> RawFrame:
    return frame.f_code, lineno, str(frame.f_globals.get("__name__", ""))


def resolve(frame: RawFrame) -> FrameInfo:
    """A sampled frame with its source line. Reads the file, so never call it while sampling:
    file I/O drops the GIL, and a busy loop thread then keeps the watchdog waiting for it."""
    code, lineno, module = frame
    line = linecache.getline(code.co_filename, lineno).strip()
    return FrameInfo(code.co_filename, lineno, code.co_name, module, line)


def describe(frame: FrameType, lineno: int) -> FrameInfo:
    """Resolve a live frame (at the line it was sampled on) to a FrameInfo."""
    return resolve(raw(frame, lineno))


def current_stack(top: FrameType | None, stops: Container[CodeType]) -> list[tuple[FrameType, int]]:
    """Frames from ``top`` down to (not including) the first running one of ``stops``."""
    stack: list[tuple[FrameType, int]] = []
    frame = top
    while frame is not None and frame.f_code not in stops:
        stack.append((frame, frame.f_lineno or 0))
        frame = frame.f_back
    return stack
