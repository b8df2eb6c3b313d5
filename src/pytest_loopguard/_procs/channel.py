"""The session's end of the channel: a Unix datagram socket in a private directory.

Why datagrams: each block is one message that arrives whole or not at all, a child never waits
for the session (it sends without blocking and counts what a full socket refused), a child
killed mid-send loses only that message, and there is no connection to accept, track or leak.
The directory is the caller's own (mode 0700), so no other user can send to it; ``close``
removes both.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from contextlib import suppress

from .._core.filetable import Unshare, detach, unshare_call
from .wire import Message, decode

CHANNEL_ENV = "PYTEST_LOOPGUARD_CHANNEL"  # the socket's path: the startup hook's trigger
SETTINGS_ENV = "PYTEST_LOOPGUARD_CHILD"  # the engine's settings, as JSON
_BUFFER = 4 * 1024 * 1024  # a flood of blocks waits here for the reader, not in the children
_MAX = 1024 * 1024  # the largest datagram read (a block with its stack is a few kB)


class Channel:
    """Receives the children's messages on a thread of its own and hands each to ``deliver``
    (on that thread). ``close`` stops the thread, then removes the socket and its directory.

    The thread runs on a file table of its own, as the watchdog does (``_core.filetable``):
    one blocked in ``recv`` on the process's table would make every loop iteration of every
    test pay the kernel's reference on the files it polls. So the socket is made, read and
    closed on that thread, in its table; nothing of it is in the process's.
    """

    def __init__(self, deliver: Callable[[Message], None]) -> None:
        self._deliver = deliver
        self.directory = tempfile.mkdtemp(prefix="pytest-loopguard-")
        self.path = os.path.join(self.directory, "s")
        self._closing = False
        self._failed: OSError | None = None
        ready = threading.Event()
        unshare = unshare_call()  # looked up here: an import on the thread could race
        self._thread = threading.Thread(
            target=self._run, args=(unshare, ready), name="pytest-loopguard-channel", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._failed is not None:
            self._thread.join()
            shutil.rmtree(self.directory, ignore_errors=True)
            raise self._failed

    def _run(self, unshare: Unshare | None, ready: threading.Event) -> None:
        try:
            with suppress(Exception):  # where it cannot, the thread shares the table
                detach(unshare)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
                sock.bind(self.path)
            except OSError:
                sock.close()
                raise
        except OSError as error:
            self._failed = error
            return
        finally:
            ready.set()
        with sock:
            self._read(sock)

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                raw = sock.recv(_MAX)
            except OSError:
                return
            if self._closing and raw == b"":
                return
            message = decode(raw)
            if message is not None:
                # A bug of ours with one message must not end the reader: the rest still count.
                with suppress(Exception):
                    self._deliver(message)

    def close(self) -> None:
        """Stop reading (what is already queued is read first), remove the socket."""
        if self._closing:
            return
        self._closing = True
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker, suppress(OSError):
            waker.sendto(b"", self.path)  # after every datagram already queued
        self._thread.join(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)
