"""The watchdog's own file table (Linux), so that a second thread costs the loops nothing.

Linux takes a reference on the file behind every descriptor a system call uses (``epoll_wait``,
``send``, ``read``) only when another thread shares the caller's file table. Any second thread
shares it, and a loop that polls on every iteration (uvloop, or asyncio with callbacks ready)
ran 3-8% slower for one idle thread alone. The watchdog needs none of the loops' descriptors
(``LoopRun.post`` wakes no loop), so its thread takes a table of its own: a copy, in which it
closes every descriptor but stdio at once. Copies left open would keep a socket or pipe alive
after the code that owns it closes it. What the watchdog opens itself (``/proc`` readings,
source files for a report) lives and closes in its own table.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from functools import cache

_CLONE_FILES = 0x400  # <linux/sched.h>
_ABOVE_STDIO = 3  # 0, 1, 2 are kept: a traceback of the watchdog's still reaches stderr


Unshare = Callable[[int], None]


def detach(unshare: Unshare | None) -> bool:
    """On the calling thread: stop sharing the process's file table. False where it cannot
    (not Linux, or a seccomp profile refuses ``unshare``): the thread shares it, as any does."""
    if unshare is None:
        return False
    # First: a signal handled on this thread would write to the wake-up descriptor's number
    # (``signal.set_wakeup_fd``) in this table, where it means nothing. Blocked here, a signal
    # sent to the process goes to a thread on the process's table.
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        unshare(_CLONE_FILES)
    except OSError:
        return False
    _close_copies()
    return True


@cache
def unshare_call() -> Unshare | None:
    """The ``unshare`` system call, where there is one; looked up on the caller's thread (an
    import on the watchdog's could run alongside the main thread's)."""
    if not sys.platform.startswith("linux"):
        return None
    if hasattr(os, "unshare"):  # Python 3.12+
        return os.unshare  # type: ignore[no-any-return,unused-ignore]
    try:
        import ctypes

        libc_unshare = ctypes.CDLL(None, use_errno=True).unshare
    except (ImportError, OSError, AttributeError):
        return None

    def unshare(flags: int) -> None:
        if libc_unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare")

    return unshare


def _close_copies() -> None:
    """Close this thread's copies of the descriptors above stdio (only its own table's)."""
    try:
        # The calling thread's table, not the process leader's (``/proc/self``).
        names = os.listdir("/proc/thread-self/fd")
    except OSError:
        os.closerange(_ABOVE_STDIO, os.sysconf("SC_OPEN_MAX"))
        return
    for name in names:
        if name.isdigit() and int(name) >= _ABOVE_STDIO:
            with suppress(OSError):  # the listing's own descriptor, closed already
                os.close(int(name))
