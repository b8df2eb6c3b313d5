"""The startup hook's ``.pth`` file, put in place for one session and removed after it.

As coverage.py does for its subprocess support: a ``.pth`` file in the environment's
site-packages holds one line that Python's ``site`` runs at every start-up, and that line does
nothing but a dictionary lookup unless the environment names a channel. Each session writes its
own file (named by its pid, so concurrent sessions and xdist workers never remove each other's)
and removes it when it ends; a file whose session was killed is inert, and the next session
sweeps it.
"""

from __future__ import annotations

import contextlib
import os
import sysconfig
from pathlib import Path

from .channel import CHANNEL_ENV

PREFIX = "pytest-loopguard-subprocess-"
STARTUP = str(Path(__file__).with_name("startup.py"))
# Compiled from its file, in a namespace of its own: importing it as a module would import
# this package, and with it the engine. Read with os.read, not open(): one line cannot close a
# file object, and an unclosed one is a ResourceWarning in every child run with -W error.
_READ = f"(lambda f: (os.read(f, 1 << 20), os.close(f))[0])(os.open({STARTUP!r}, os.O_RDONLY))"
LINE = (
    f"import os; '{CHANNEL_ENV}' in os.environ and exec(compile({_READ}, {STARTUP!r}, 'exec'), "
    "{'__name__': 'pytest_loopguard_startup'})\n"
)


def site_dir() -> Path:
    """Where this interpreter's ``site`` reads ``.pth`` files (and where this package is)."""
    return Path(sysconfig.get_paths()["purelib"])


def install(directory: Path | None = None) -> Path | None:
    """Write this process's file; None when the directory is not writable (children then run
    unwatched: a system Python's site-packages, a read-only image)."""
    directory = directory or site_dir()
    _sweep(directory)
    path = directory / f"{PREFIX}{os.getpid()}.pth"
    temporary = directory / f".{path.name}.tmp"
    try:
        temporary.write_text(LINE)
        os.replace(temporary, path)  # never half a line for a process starting meanwhile
    except OSError:
        temporary.unlink(missing_ok=True)
        return None
    return path


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _sweep(directory: Path) -> None:
    """Remove the files of sessions that are gone (killed before they could)."""
    try:
        found = list(directory.glob(f"{PREFIX}*.pth"))
    except OSError:
        return
    for path in found:
        pid = path.stem[len(PREFIX) :]
        if pid.isdigit() and not _alive(int(pid)):
            remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
