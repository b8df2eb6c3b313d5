"""Which frames are the user's: everything but the stdlib, installed packages and test runners."""

from __future__ import annotations

import linecache
import os
import site
import sysconfig
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
    return tuple(sorted(os.path.join(os.path.realpath(p), "") for p in found if p))


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
    return not os.path.realpath(filename).startswith(_LIBRARY_PREFIXES)


def describe(frame: FrameType, lineno: int) -> FrameInfo:
    """Resolve a frame (at the line it was sampled on) to a FrameInfo."""
    code = frame.f_code
    filename = code.co_filename
    return FrameInfo(
        filename=filename,
        lineno=lineno,
        function=code.co_name,
        module=str(frame.f_globals.get("__name__", "")),
        line=linecache.getline(filename, lineno).strip(),
    )


def current_stack(top: FrameType | None, stop: CodeType) -> list[tuple[FrameType, int]]:
    """Frames from ``top`` down to (not including) the frame running ``stop``, innermost first."""
    stack: list[tuple[FrameType, int]] = []
    frame = top
    while frame is not None and frame.f_code is not stop:
        stack.append((frame, frame.f_lineno or 0))
        frame = frame.f_back
    return stack
