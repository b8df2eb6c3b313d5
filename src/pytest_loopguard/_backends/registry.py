"""Which threads run which loops: the session-lived patches of the loops' entry points.

Every stdlib loop (``BaseEventLoop`` and its subclasses, nest_asyncio's patched ones included)
announces itself through ``asyncio.events._set_running_loop`` when it starts and stops running:
that one module attribute is wrapped, whatever loop classes exist or are defined later. Loops
written in C (uvloop) call their own copy of it, taken when they were imported, so their class's
``run_forever`` is wrapped instead — now if imported already, or by an import hook the moment
they are imported. Trio's entry points are wrapped the same way (``_backend_trio``). The engine
hears of each start and stop through a ``Listener``.
"""

from __future__ import annotations

import asyncio.events
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, ModuleType
from typing import Any, Protocol

from .._base import clocks
from .asyncio import AsyncioRun
from .base import LoopRun
from .trio import TrioRun, instrument, run_loop_code, with_instrument
from .uvloop import ImportWatch, NativeRun

# (module, class) of the event loops implemented in C that we know how to watch.
NATIVE: tuple[tuple[str, str], ...] = (("uvloop", "Loop"), ("winloop", "Loop"))
# (module, attribute) of trio's public entry points, which take instruments.
TRIO_ENTRIES: tuple[tuple[str, str], ...] = (("trio", "run"), ("trio.lowlevel", "start_guest_run"))


@dataclass(eq=False)
class LoopThread:
    """A thread that runs event loops, and what the watchdog last saw of it."""

    ident: int
    name: str
    native_id: int | None
    cpu_clock: clocks.CpuClock | None
    main: bool = False  # the main thread: its record stays for the session
    cpu_tried: bool = False
    runs: list[LoopRun] = field(default_factory=list)  # the loops it runs now, innermost last
    last_poll: float = 0.0  # when the watchdog last looked (or the loop started)
    cpu_at_poll: float | None = None
    queue: clocks.RunQueue = field(default_factory=clocks.RunQueue)  # its wait for a CPU
    block: Any = None  # the unit of work the watchdog saw running (a _block.Block)
    beat_ran: float = float("-inf")  # when a beat or tick last ran on its loop
    restore_debug: list[Callable[[], None]] = field(default_factory=list)
    greenlet: Any = None  # the greenlet running on it now, kept by a trace (see _greenlets)
    tracer: Any = None

    @classmethod
    def current(cls) -> LoopThread:
        thread = threading.current_thread()
        native = getattr(thread, "native_id", None)
        ident = thread.ident or threading.get_ident()
        main = thread is threading.main_thread()
        return cls(ident, thread.name, native, None, main=main)

    @property
    def run(self) -> LoopRun | None:
        return self.runs[-1] if self.runs else None

    def beat(self) -> None:
        """Runs on the loop's thread, so only while no unit holds the loop (or a unit runs the
        loop itself, nested, and so let go of it). Lock-free on purpose: plain attribute
        stores, and a tick must never wait for the watchdog."""
        now = clocks.now()
        self.beat_ran = now
        block = self.block
        if block is not None:
            block.beaten(now)

    def opening(self) -> tuple[float, float | None, float]:
        """For a block opened now: when the thread was last seen free (a look or a tick), its
        CPU time then, and when that was read."""
        return max(self.last_poll, self.beat_ran), self.cpu_at_poll, self.last_poll

    def forget(self) -> None:
        for run in self.runs:
            run.close()
        self.runs.clear()
        self.queue.close()


class Listener(Protocol):
    """What the registry tells (the engine)."""

    def loop_started(self, thread: LoopThread, run: LoopRun) -> None: ...

    def loop_stopping(self, thread: LoopThread, run: LoopRun) -> None: ...

    def thread_done(self, thread: LoopThread) -> None: ...

    def trio_run_starting(self) -> None: ...

    def tick_period(self) -> float: ...


@dataclass(frozen=True)
class _Patch:
    owner: Any
    name: str
    own: object  # what the owner's __dict__ had before, None if it inherited the attribute
    ours: object


class Registry:
    """The loops running now, by thread; installed once for a session (or a lone LoopGuard)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.threads: dict[int, LoopThread] = {}
        self.active = 0  # how many threads run a loop now
        self._patches: list[_Patch] = []
        self._watch: ImportWatch | None = None
        self._trio_code: Any = None  # the code of trio's run loop, once trio is patched

    @property
    def installed(self) -> bool:
        return bool(self._patches)

    def leftovers(self) -> list[str]:
        left = [f"{p.owner.__name__}.{p.name} patched" for p in self._patches]
        if self._watch is not None or any(isinstance(f, ImportWatch) for f in sys.meta_path):
            left.append("the import hook")
        if self.threads:
            left.append(f"{len(self.threads)} loop thread record(s)")
        return left

    def running(self) -> list[LoopThread]:
        return [t for t in tuple(self.threads.values()) if t.runs]

    def install(self) -> None:
        try:
            self._set(asyncio.events, "_set_running_loop", self._hook(asyncio.events))
            for module, cls in NATIVE:
                if module in sys.modules:
                    self._patch_native(sys.modules[module], cls)
            if "trio" in sys.modules:
                self._patch_trio(sys.modules["trio"])
            self._watch = ImportWatch({*(m for m, _ in NATIVE), "trio"}, self._imported)
            sys.meta_path.insert(0, self._watch)
        except BaseException:
            self.uninstall()  # all or nothing
            raise

    def uninstall(self) -> None:
        if self._watch is not None and self._watch in sys.meta_path:
            sys.meta_path.remove(self._watch)
        self._watch = None
        for patch in reversed(self._patches):
            if patch.owner.__dict__.get(patch.name) is not patch.ours:
                continue  # replaced since by the test or a library: theirs stays
            if patch.own is None:
                delattr(patch.owner, patch.name)
            else:
                setattr(patch.owner, patch.name, patch.own)
        self._patches.clear()
        self._trio_code = None
        for thread in tuple(self.threads.values()):
            thread.forget()
        self.threads.clear()
        self.active = 0

    def _set(self, owner: Any, name: str, ours: object) -> None:
        self._patches.append(_Patch(owner, name, owner.__dict__.get(name), ours))
        setattr(owner, name, ours)

    def _hook(self, events: ModuleType) -> Callable[[Any], None]:
        original = events._set_running_loop
        threads, get_ident, announce = self.threads, threading.get_ident, self.announce

        def _set_running_loop(loop: Any) -> None:
            original(loop)
            # Twice every loop run (pytest-asyncio makes a few a test): the common case, one
            # loop starting or stopping on a thread, is decided here without another call.
            thread = threads.get(get_ident())
            runs = thread.runs if thread is not None else None
            if loop is None and runs and len(runs) == 1 and type(runs[0]) is AsyncioRun:
                self._pop(thread)  # type: ignore[arg-type]
            elif loop is not None and not runs:
                self._push(thread, AsyncioRun(loop))
            elif loop is None or runs[-1].loop is not loop:  # type: ignore[index]
                announce(loop)

        _set_running_loop.__wrapped__ = original  # type: ignore[attr-defined]
        return _set_running_loop

    def _imported(self, module: ModuleType) -> None:
        if module.__name__ == "trio":
            self._patch_trio(module)
        for name, cls in NATIVE:
            if module.__name__ == name:
                self._patch_native(module, cls)

    def _patch_trio(self, trio: ModuleType) -> None:
        code = run_loop_code(trio)
        if code is None or self._trio_code is not None:
            return  # a trio whose run loop we do not know: left unwatched, never broken
        self._trio_code, ours = code, instrument(trio, self)
        for name, attribute in TRIO_ENTRIES:
            owner = sys.modules.get(name)
            original = getattr(owner, attribute, None)
            if owner is not None and callable(original):
                self._set(owner, attribute, with_instrument(original, ours))

    def _patch_native(self, module: ModuleType, cls_name: str) -> None:
        cls = getattr(module, cls_name, None)
        if not isinstance(cls, type) or any(p.owner is cls for p in self._patches):
            return
        original: Callable[..., Any] = getattr(cls, "run_forever")  # noqa: B009
        enter, leave = self.enter_native, self.leave

        def run_forever(loop: Any, *args: Any) -> Any:
            # The loop runs its callbacks from C right above this frame: the unit's anchor.
            entered = enter(loop, sys._getframe())
            try:
                return original(loop, *args)
            finally:
                if entered:
                    leave(loop)

        run_forever.__wrapped__ = original  # type: ignore[attr-defined]
        self._set(cls, "run_forever", run_forever)

    # -- on the loop's thread -------------------------------------------------------------

    def announce(self, loop: Any) -> None:
        """``_set_running_loop(loop)``: this thread now runs ``loop``, or none (None)."""
        thread = self.threads.get(threading.get_ident())
        runs = thread.runs if thread is not None else None
        if loop is None:
            # No asyncio loop runs here now: the asyncio runs on top stop (a trio run under
            # them goes on).
            while runs and isinstance(runs[-1], AsyncioRun):
                self._pop(thread)  # type: ignore[arg-type]
        elif not runs:
            self._push(thread, AsyncioRun(loop))
        elif runs[-1].loop is not loop:
            # Back in an outer run (nest_asyncio restores it), or a new loop nested in this one.
            if any(r.loop is loop for r in runs):
                self._pop_to(thread, loop)  # type: ignore[arg-type]
            else:
                self._push(thread, AsyncioRun(loop))

    def enter_native(self, loop: Any, base: FrameType) -> bool:
        thread = self._here()
        if any(r.loop is loop for r in thread.runs):
            return False  # a nested call of the same loop's entry: one run
        self._push(thread, NativeRun(loop, base, self.listener.tick_period(), thread.beat))
        return True

    def enter_trio(self, token: object) -> None:
        """A trio run starts on this thread (``token`` is its ``TrioToken``): each token is
        new, so it cannot be running here already."""
        thread = self._here()
        if self._trio_code is not None:
            self.listener.trio_run_starting()  # before the watchdog can see the run
            self._push(thread, TrioRun(token, self._trio_code, thread.run))

    def leave(self, loop: Any) -> None:
        thread = self.threads.get(threading.get_ident())
        if thread is not None and any(r.loop is loop for r in thread.runs):
            self._pop_to(thread, loop)
            self._pop(thread)

    def adopt(self, loop: Any) -> LoopThread:
        """A loop that was running before we were installed, on this thread: watch it now."""
        thread = self.threads.get(threading.get_ident())
        if thread is None or not any(r.loop is loop for r in thread.runs):
            thread = self._push(thread, AsyncioRun(loop))
        return thread

    def _here(self) -> LoopThread:
        ident = threading.get_ident()
        thread = self.threads.get(ident)
        if thread is None:
            thread = self.threads[ident] = LoopThread.current()
        return thread

    def _push(self, thread: LoopThread | None, run: LoopRun) -> LoopThread:
        if thread is None:
            thread = self._here()
        thread.runs.append(run)
        if len(thread.runs) == 1:
            self.active += 1
        self.listener.loop_started(thread, run)
        return thread

    def _pop_to(self, thread: LoopThread, loop: Any) -> None:
        """Stop the runs above the innermost run of ``loop`` (all of them for None)."""
        while thread.runs and thread.runs[-1].loop is not loop:
            self._pop(thread)

    def _pop(self, thread: LoopThread) -> None:
        run = thread.runs[-1]
        self.listener.loop_stopping(thread, run)
        thread.runs.pop()
        run.close()
        if thread.runs:
            return
        self.active -= 1
        if not thread.main:
            self.listener.thread_done(thread)
            self.threads.pop(thread.ident, None)  # a worker thread's record goes with its loop
            thread.queue.close()  # here, in the loop threads' file table
