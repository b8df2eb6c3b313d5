"""What a test creates and leaves behind, recorded at the user's line that created it.

Five session-lived wrappers, each doing nothing but a check of ``owner`` between tests:

- ``BaseEventLoop.create_task`` (``asyncio.create_task``, ``ensure_future``, ``TaskGroup``'s
  tasks all go through it): a task the user's code created, and where. Only when the first
  frame outside the standard library is the user's: a library's own tasks (httpx, anyio,
  Starlette's, pytest-asyncio's) are its business.
- ``asyncio.Runner.close`` (``asyncio.run``, pytest-asyncio's loops): the test's tasks still
  pending when their loop is shut down, which cancels them without a word.
- ``BaseEventLoop.call_exception_handler``: "Task exception was never retrieved", which the loop
  only logs, for a task the user's code created.
- ``warnings._warn_unawaited_coroutine``, which CPython calls when a coroutine that never ran is
  destroyed: the frame running then is where its last reference was dropped — for
  ``send_email(to)`` without ``await``, the very line. Only then: tracking every coroutine's
  origin (``sys.set_coroutine_origin_tracking_depth``) would cost every coroutine.
- ``threading.Thread.start``: a thread the user's code started (directly, or through a
  ``concurrent.futures`` executor), except the loop's own default executor's.

uvloop's loop is written in C: its ``create_task`` and ``call_exception_handler`` cannot be
wrapped, so on uvloop only coroutines and threads are checked. Trio's nurseries cannot leak a
task; coroutines and threads are checked there too.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

from .._base.frames import FrameFilter, RawFrame, is_stdlib, raw

TASK, EXCEPTION, COROUTINE, THREAD = "task", "exception", "coroutine", "thread"
KINDS = (TASK, EXCEPTION, COROUTINE, THREAD)

FIXES = {
    TASK: (
        "await it, or create it in an `async with asyncio.TaskGroup() as tg:` block; to fire "
        "and forget, keep a reference (a module-level set) and add a done callback that logs "
        "its exception — the loop keeps only a weak reference to a task"
    ),
    EXCEPTION: (
        "await the task where it is created, or keep a reference and add a done callback that "
        "logs: `task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or "
        'log.error("failed", exc_info=t.exception()))`'
    ),
    COROUTINE: "`await` the call (or pass it to `asyncio.create_task` and keep the task)",
    THREAD: (
        "`join()` it before the test ends — `with ThreadPoolExecutor() as pool:` joins its "
        "threads — or run the work with `await asyncio.to_thread(...)`"
    ),
}

# The installed recorders, innermost last: only that one records. A pytest session run inside
# another one's test (pytester, a plugin's own suite) is its own, never its parent's.
_STACK: list[Lifecycle] = []
# Where a loop's default executor starts its threads (uvloop's ``run_in_executor`` is C: its
# ``to_thread`` still passes through asyncio's): the loop shuts that executor down as it closes.
_LOOP_EXECUTOR: frozenset[CodeType] = frozenset(
    {asyncio.BaseEventLoop.run_in_executor.__code__, asyncio.to_thread.__code__}
)
_GRACE = 0.1  # seconds a thread still running at the test's end gets to finish


@dataclass(frozen=True)
class Finding:
    """One lifecycle bug: what it was, the user's line that created it, and whose it is."""

    kind: str
    what: str  # "task send_email()", "coroutine send_email()", "thread 'worker' (serve)"
    where: RawFrame
    owner: object  # the label the plugin gave the test it was created in (its node id)
    detail: str = ""  # the traceback of a task's exception

    @property
    def fix(self) -> str:
        return FIXES[self.kind]


@dataclass
class _Made:
    ref: weakref.ref[Any]
    where: RawFrame
    owner: object
    what: str


class Lifecycle:
    """The wrappers, and what they recorded for the test that runs now."""

    def __init__(self) -> None:
        self.owner: object = None  # the running test's label; nothing is recorded without one
        self.in_call = False  # the test's body runs (tasks and threads made now are its own)
        self._tasks: dict[int, _Made] = {}  # by id of the task
        self._threads: list[_Made] = []
        self._found: list[Finding] = []
        self._user = FrameFilter()
        self._undo: list[Callable[[], None]] = []

    # -- the plugin's side --------------------------------------------------------------------

    def install(self) -> None:
        _STACK.append(self)
        self._wrap(asyncio.BaseEventLoop, "create_task", self._wrapped_create_task)
        self._wrap(asyncio.BaseEventLoop, "call_exception_handler", self._wrapped_handler)
        self._wrap(threading.Thread, "start", self._wrapped_start)
        runner = getattr(asyncio, "Runner", None)  # Python 3.11+
        if runner is not None:
            self._wrap(runner, "close", self._wrapped_close)
        if callable(getattr(warnings, "_warn_unawaited_coroutine", None)):
            self._wrap(warnings, "_warn_unawaited_coroutine", self._wrapped_unawaited)

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if self in _STACK:
            _STACK.remove(self)
        self._tasks.clear()
        self._threads.clear()
        self._found.clear()
        self.owner, self.in_call = None, False

    def busy(self) -> bool:
        """Whether anything is recorded (else the checks below have nothing to do)."""
        return bool(self._tasks or self._threads or self._found)

    def pending(self) -> list[Finding]:
        """The tasks the test's body created that are still pending as it ends."""
        found = []
        for key, made in list(self._tasks.items()):
            task = made.ref()
            if made.owner == self.owner and task is not None and not task.done():
                found.append(Finding(TASK, made.what, made.where, made.owner))
                del self._tasks[key]
        return found

    def running(self) -> list[Finding]:
        """The non-daemon threads the test's body started that still run as it ends (each
        given a moment to finish), and forget the test's tasks and threads."""
        found, deadline = [], time.monotonic() + _GRACE
        for made in self._threads:
            thread = made.ref()
            if thread is None or thread.daemon or made.owner != self.owner:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                found.append(Finding(THREAD, made.what, made.where, made.owner))
        self._threads.clear()
        self._tasks = {k: m for k, m in self._tasks.items() if m.owner != self.owner}
        return found

    def take(self) -> list[Finding]:
        """Exceptions never retrieved and coroutines never awaited, as they were found."""
        found, self._found = self._found, []
        return found

    # -- the wrappers ---------------------------------------------------------------------------

    def _wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name]
        wrapper = make(original)
        wrapper.__wrapped__ = original
        setattr(owner, name, wrapper)

        def undo() -> None:
            if owner.__dict__.get(name) is wrapper:  # else whoever wrapped it after us stays
                setattr(owner, name, original)

        self._undo.append(undo)

    def _wrapped_create_task(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def create_task(loop: Any, coro: Any, *args: Any, **kwargs: Any) -> Any:
            task = original(loop, coro, *args, **kwargs)
            # Only the test's body's: a fixture's tasks are its own, and the runner's shutdown
            # (two tasks for every async test) must cost nothing.
            if self.in_call and _STACK[-1] is self:
                self._task_made(task, coro)
            return task

        return create_task

    def _task_made(self, task: Any, coro: Any) -> None:
        where = self._creator(sys._getframe(2))
        if where is not None:
            made = _Made(weakref.ref(task), where, self.owner, f"task {_name(coro)}")
            self._tasks[id(task)] = made

    def _wrapped_close(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def close(runner: Any) -> None:
            if self.owner is not None and self._tasks and _STACK[-1] is self:
                # Private, read only: ``get_loop()`` would make a loop for a runner that has none.
                self._shutting(getattr(runner, "_loop", None))
            original(runner)

        return close

    def _shutting(self, loop: Any) -> None:
        """``loop`` is about to cancel every task it still has: the test's are left pending."""
        if loop is None or loop.is_closed():
            return
        for key, made in list(self._tasks.items()):
            task = made.ref()
            if task is not None and not task.done() and task.get_loop() is loop:
                self._found.append(Finding(TASK, made.what, made.where, made.owner))
                del self._tasks[key]

    def _wrapped_handler(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def call_exception_handler(loop: Any, context: dict[str, Any]) -> None:
            if self.owner is not None and _STACK[-1] is self:
                self._unhandled(context)
            original(loop, context)

        return call_exception_handler

    def _unhandled(self, context: dict[str, Any]) -> None:
        future, error = context.get("future"), context.get("exception")
        if error is None or "never retrieved" not in str(context.get("message", "")):
            return
        made = self._tasks.pop(id(future), None)
        if made is None or made.ref() not in (None, future):
            return  # not a task the user's code made (or another object at its address)
        what = f"{made.what} ({type(error).__name__}: {error})"
        detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._found.append(Finding(EXCEPTION, what, made.where, made.owner, detail.rstrip()))

    def _wrapped_unawaited(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _warn_unawaited_coroutine(coro: Any) -> None:
            if self.owner is not None and _STACK[-1] is self:
                self._unawaited(coro)
            if getattr(coro, "cr_origin", None) is not None:
                original(coro)  # origin tracking is on: its lines, as Python words them
                return
            # Python's own warning, at the same place: ``original`` would point one frame
            # too deep (``stacklevel=2`` of it is this wrapper).
            qualname = getattr(coro, "__qualname__", type(coro).__name__)
            warnings.warn(
                f"coroutine '{qualname}' was never awaited", RuntimeWarning, 2, source=coro
            )

        return _warn_unawaited_coroutine

    def _unawaited(self, coro: Any) -> None:
        try:
            frame = sys._getframe(2)  # what ran when its last reference went: that line
        except ValueError:
            return
        if self._user.is_user(frame):
            where = raw(frame, frame.f_lineno or 0)
            self._found.append(Finding(COROUTINE, f"coroutine {_name(coro)}", where, self.owner))

    def _wrapped_start(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def start(thread: threading.Thread) -> None:
            original(thread)
            if self.in_call and _STACK[-1] is self:
                self._thread_started(thread)

        return start

    def _thread_started(self, thread: threading.Thread) -> None:
        where = self._creator(sys._getframe(2), owned_by_loop=True)
        if where is not None:
            # Private, read only: a Thread keeps its target there, and names it best.
            target = getattr(getattr(thread, "_target", None), "__qualname__", None)
            what = f"thread {thread.name!r}" + (f" (target {target})" if target else "")
            self._threads.append(_Made(weakref.ref(thread), where, self.owner, what))

    def _creator(self, frame: FrameType | None, owned_by_loop: bool = False) -> RawFrame | None:
        """The user's line that made something, when the first frame out of the standard
        library is the user's; None when a library made it (or, ``owned_by_loop``, the loop's
        default executor: the loop shuts it down when it closes)."""
        is_user = self._user.is_user
        while frame is not None:
            if is_user(frame):
                return raw(frame, frame.f_lineno or 0)
            if owned_by_loop and frame.f_code in _LOOP_EXECUTOR:
                return None
            if not is_stdlib(frame.f_code.co_filename):
                return None
            frame = frame.f_back
        return None


def _name(coro: Any) -> str:
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"{name}()"
