"""The hang interrupt: delivers a LoopHangError into a loop thread stuck in one unit of work.

The main thread gets a real signal: it wakes a wait in C (a lock, ``Future.result()``) with
EINTR, and the handler raises. Another thread gets an asynchronous exception, which fires at its
next Python instruction (not inside a wait in C: documented). The handler is installed once for
a session (or a lone LoopGuard with a timeout) and does nothing unless a hang is pending.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from .._backends.base import LoopRun
from .._base.events import BlockEvent, LoopHangError
from .._base.greenlets import here, walk
from .._base.report import render

SIGNAL = getattr(signal, "SIGUSR2", None)


class HangInterrupt:
    """The SIGUSR2 handler, installed by the first lease that wants it and removed by the last."""

    def __init__(self) -> None:
        self._leases = 0
        self._installed = False
        self._previous: Any = None
        self._pending: tuple[LoopRun, object, LoopHangError] | None = None

    def acquire(self) -> None:
        self._leases += 1
        if self._leases > 1 or SIGNAL is None:
            return
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(SIGNAL)
            signal.signal(SIGNAL, self._handle)
            self._installed = True

    def release(self) -> None:
        self._leases -= 1
        if self._leases > 0 or not self._installed:
            return
        self._installed = False
        if signal.getsignal(SIGNAL) == self._handle:  # type: ignore[arg-type]
            signal.signal(SIGNAL, self._previous or signal.SIG_DFL)  # type: ignore[arg-type]

    @property
    def installed(self) -> bool:
        return self._installed

    def fire(self, ident: int, run: LoopRun, unit: object, event: BlockEvent) -> None:
        """Interrupt thread ``ident``, still inside ``unit`` of ``run``, with ``event``."""
        if ident == threading.main_thread().ident and self._installed:
            self._pending = (run, unit, LoopHangError(event, render([event])))
            signal.pthread_kill(ident, SIGNAL)  # type: ignore[arg-type]
        else:
            _raise_in_thread(ident, LoopHangError)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        pending, self._pending = self._pending, None
        # Only inside the unit that hung: if it ended meanwhile, raising would hit whatever
        # runs now (the loop, pytest).
        if pending is not None and pending[0].unit(walk(frame, here())) is pending[1]:
            raise pending[2]


def _raise_in_thread(ident: int, exc: type[BaseException]) -> None:
    import ctypes

    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc))
