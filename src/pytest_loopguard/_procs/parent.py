"""The watching side, for the pytest session and for the runner: the channel, the ``.pth``
file, the environment that points children at them, and what each child is doing.

``Parent`` knows nothing of tests: blocks go to ``on_block`` (on the channel's thread) with the
child's process named on them. ``wait`` is what the plugin calls as a test phase ends: while a
child has said a unit holds its loop, its verdict is still to come.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._base.events import BlockEvent
from . import pth
from .channel import CHANNEL_ENV, SETTINGS_ENV, Channel
from .child import WORKER
from .wire import Message

OnBlock = Callable[[BlockEvent, float | None], None]  # the event, when its unit began if told


class Parent:
    """Watches the children of this process (and theirs) from ``start`` to ``stop``."""

    def __init__(self, settings: dict[str, Any], on_block: OnBlock) -> None:
        self.settings, self.on_block = settings, on_block
        self.commands: dict[int, str] = {}  # pid -> command, for every child that said hello
        self.lost = 0  # blocks children could not send (the channel was full)
        self.busy: dict[int, float] = {}  # pid -> when its unit began: a verdict is coming
        self._cond = threading.Condition()
        self._channel: Channel | None = None
        self._pth: Path | None = None
        self._saved: dict[str, str | None] = {}

    def start(self, env: dict[str, str] | None = None) -> bool:
        """Open the channel and put the hook in place; point ``env`` (default: this process's
        environment, restored by ``stop``) at them. False when children cannot be watched."""
        self._pth = pth.install()
        if self._pth is None:
            return False
        self._channel = Channel(self._deliver)
        values = {CHANNEL_ENV: self._channel.path, SETTINGS_ENV: json.dumps(self.settings)}
        if env is None:
            self._saved = {k: os.environ.get(k) for k in values}
            os.environ.update(values)
        else:
            env.update(values)
        return True

    def stop(self) -> None:
        """Put everything back: the environment, the file, the channel (read to its end)."""
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved = {}
        if self._pth is not None:
            pth.remove(self._pth)
            self._pth = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        with self._cond:
            self.busy.clear()
            self._cond.notify_all()

    def wait(self, limit: float) -> None:
        """Until no child is in the middle of a unit that may be a block (each one's verdict
        has come), a child that said so has died, or ``limit`` seconds have passed."""
        deadline = time.monotonic() + limit
        with self._cond:
            while self.busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.busy.clear()  # given up on: a verdict that comes later still counts
                    return
                self._cond.wait(min(left, 0.05))
                for pid in [p for p in self.busy if not _running(p)]:
                    del self.busy[pid]  # killed mid-block: no verdict will come

    def _deliver(self, message: Message) -> None:
        pid = message.pid
        if message.kind == "hello":
            self.commands[pid] = self._named(message.command)
            return
        if message.kind == "lost":
            self.lost += message.count
            return
        if message.kind == "block" and message.event is not None:
            # Delivered before the child counts as idle: a phase waiting on it must see it.
            process = f"pid {pid}: {self.commands.get(pid, 'python')}"
            self.on_block(replace(message.event, process=process), self.busy.get(pid))
        with self._cond:
            if message.kind == "busy":
                self.busy[pid] = message.since
            else:
                self.busy.pop(pid, None)
                self._cond.notify_all()

    def _named(self, command: str) -> str:
        """A worker says only its parent's pid: add the parent's command when it was watched."""
        head, _, parent = command.rpartition(" ")
        if head == WORKER and parent.isdigit() and int(parent) in self.commands:
            return f"{command} ({self.commands[int(parent)]})"
        return command


def stop_inherited() -> None:
    """This process was started watched, and now watches itself (a pytest session in it):
    the startup hook's finder goes, and the engine it started stops."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "pytest_loopguard_startup", 0)]
    child = sys.modules.get(f"{__package__}.child")
    if child is not None:
        child.stop()


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, killed and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True
