"""The startup hook: run by the ``.pth`` line (see ``pth``) in every Python process that starts
while a session watches, from its file (importing this package would import the engine).

Standard library only, and next to nothing at start-up: it waits, with a finder on
``sys.meta_path``, for the process to import asyncio or trio, and only then starts the engine
(``child.start``). A command-line tool the tests run, which never runs an event loop, pays a
dictionary lookup and this file's compilation; a server pays the engine's import with its own.
"""

import os
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

_WANTED = ("asyncio", "trio")
MARK = "pytest_loopguard_startup"  # the finder's flag: a session in this process removes it


def _start() -> None:
    try:
        from pytest_loopguard._procs.child import start

        start()
    except Exception as error:  # never break the child: it runs, unwatched
        sys.stderr.write(f"pytest-loopguard (pid {os.getpid()}): not watched ({error!r})\n")


class _Loader:
    """The real loader of asyncio (or trio), then the engine once the module is complete."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)  # resources, source, and the rest: the real one's


class _Finder:
    pytest_loopguard_startup = True

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name not in _WANTED:
            return None
        _remove()  # once: the engine covers both, and never for its own imports
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)  # type: ignore[assignment]  # duck-typed Loader
        return spec


def _remove() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, MARK, False)]


def main() -> None:
    if any(name in sys.modules for name in _WANTED):
        _start()  # another start-up hook imported it already
    elif not any(getattr(f, MARK, False) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


main()
