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
    # Both spellings, so a frame's file name can be compared without touching the disk.
    spelled = {os.path.abspath(p) for p in found if p} | {os.path.realpath(p) for p in found if p}
    return tuple(sorted(os.path.join(p, "") for p in spelled))


_LIBRARY_PREFIXES = _library_prefixes()


def _stdlib_prefixes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    paths = sysconfig.get_paths()
    lib = {paths[key] for key in ("stdlib", "platstdlib") if key in paths}
    packages = {paths[key] for key in ("purelib", "platlib") if key in paths}
    packages.update(getattr(site, "getsitepackages", list)())

    def spelled(found: set[str]) -> tuple[str, ...]:
        both = {os.path.abspath(p) for p in found if p} | {os.path.realpath(p) for p in found if p}
        return tuple(sorted(os.path.join(p, "") for p in both))

    return spelled(lib), spelled(packages)


_STDLIB, _SITE = _stdlib_prefixes()


def is_stdlib(filename: str) -> bool:
    """Whether ``filename`` is the standard library's (site-packages, inside it, is not)."""
    return filename.startswith(_STDLIB) and not filename.startswith(_SITE)


class FrameFilter:
    """Decides, once per code object, whether a frame belongs to the user's code."""

    def __init__(self) -> None:
        # By id, with the code kept (so that its id cannot go to another): hashing a code
        # object hashes its bytecode and constants, ~0.5 µs a lookup, and this runs for every
        # frame a guard walks (the N+1 counter walks a few for every query).
        self._cache: dict[int, tuple[CodeType, bool]] = {}

    def is_user(self, frame: FrameType) -> bool:
        code = frame.f_code
        known = self._cache.get(id(code))
        if known is None:
            module = str(frame.f_globals.get("__name__", ""))
            known = self._cache[id(code)] = (code, _is_user(code.co_filename, module))
        return known[1]


def _is_user(filename: str, module: str) -> bool:
    if filename.startswith("<"):
        return False
    if module.split(".", 1)[0] in _RUNNER_MODULES:
        return False
    path = os.path.abspath(filename)
    if path.startswith(_LIBRARY_PREFIXES):
        return False
    # Installed elsewhere: another environment's or Bazel's site-packages, or a folder on
    # PYTHONPATH that ``pip install --target`` filled (its .dist-info lists the file).
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not _installed(path, module)


def in_project(filename: str, module: str, root: str) -> bool:
    """Whether a frame is the project's own code: the user's (see ``_is_user``) and in a file
    under ``root`` (a folder path ending in the separator)."""
    return os.path.abspath(filename).startswith(root) and _is_user(filename, module)


def _installed(path: str, module: str) -> bool:
    """Whether ``path`` is a file of a distribution installed beside its top-level package: a
    ``*.dist-info/RECORD`` in the folder that holds the package lists it. (An editable install
    of the project under test lists no source file: it stays the user's.)"""
    if not module or module == "__main__":
        return False
    depth = module.count(".") + 1 + (os.path.basename(path) == "__init__.py")
    parts = path.split(os.sep)
    if len(parts) <= depth:
        return False
    folder = os.sep.join(parts[:-depth])
    relative = "/".join(parts[-depth:])
    return relative in _recorded(folder)


_RECORDED: dict[str, frozenset[str]] = {}


def _recorded(folder: str) -> frozenset[str]:
    """The files the ``.dist-info`` folders in ``folder`` list, read once a folder."""
    found = _RECORDED.get(folder)
    if found is None:
        names: set[str] = set()
        try:
            infos = [e for e in os.listdir(folder) if e.endswith(".dist-info")]
        except OSError:
            infos = []
        for info in infos:
            try:
                with open(os.path.join(folder, info, "RECORD"), encoding="utf-8") as record:
                    names.update(line.split(",", 1)[0] for line in record)
            except (OSError, UnicodeDecodeError):
                continue
        found = _RECORDED[folder] = frozenset(names)
    return found


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


Stack = list[tuple[FrameType, int]]  # frames innermost first, each at the line it was on
Through = tuple[str, str, str]  # module, function, file of one frame


@dataclass(frozen=True)
class Sample:
    """One sampled stack, kept raw: the blocking user frame, the user frames (outermost
    first), the modules that frame called into (outermost first), and every frame of it."""

    top: RawFrame
    users: tuple[RawFrame, ...]
    callees: tuple[str, ...]
    through: tuple[Through, ...]


def first_user(stack: Stack, user_filter: FrameFilter) -> int | None:
    return next((i for i, (f, _) in enumerate(stack) if user_filter.is_user(f)), None)


def sample(stack: Stack, user: int | None, user_filter: FrameFilter) -> Sample:
    """The user's frames make the trace; the modules the innermost of them called pick the hint."""
    through = tuple(
        (str(f.f_globals.get("__name__", "")), f.f_code.co_name, f.f_code.co_filename)
        for f, _ in stack
    )
    if user is None:
        return Sample(raw(*stack[0]), (), (), through)
    callees = tuple(str(f.f_globals.get("__name__", "")) for f, _ in reversed(stack[:user]))
    users = [raw(f, n) for f, n in stack[user:] if user_filter.is_user(f)]
    return Sample(users[0], tuple(reversed(users)), callees, through)
